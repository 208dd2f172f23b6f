"""Settings and rules: `followupd.yaml` in the home, `.env` beside it, then the environment.

Validated with pydantic models that forbid unknown keys, so a typo is an error and never
silently ignored. Every problem is reported as `FILE:LINE: key.path: what is wrong (fix)`,
the way a compiler would, and start-up stops with exit status 2.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from followupd.permissions import exposure
from followupd.timing import DURATION_HINT, Duration

CONFIG_NAME = "followupd.yaml"
EVENTS = ("referral.received", "referral.closed", "release.recorded", "visit.logged")

# Environment variable -> (key path in the YAML document, how to read the value).
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "FOLLOWUPD_DATABASE_URL": ("database", "url"),
    "FOLLOWUPD_DELIVERY": ("delivery", "backend"),
    "FOLLOWUPD_OUTBOX": ("delivery", "outbox"),
    "FOLLOWUPD_GOOGLE_TOKEN_FILE": ("google", "token_file"),
    "FOLLOWUPD_GOOGLE_SERVICE_ACCOUNT_FILE": ("google", "service_account_file"),
    "FOLLOWUPD_GOOGLE_SUBJECT": ("google", "subject"),
    "FOLLOWUPD_GOOGLE_API_ENDPOINT": ("google", "api_endpoint"),
    "FOLLOWUPD_LOG_LEVEL": ("logging", "level"),
    "FOLLOWUPD_LOG_FORMAT": ("logging", "format"),
}


class ConfigError(Exception):
    """A configuration a person must fix; `problems` are ready-to-print lines."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# --- value types -------------------------------------------------------------------------


def _duration(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError(
            "duration", "{value} is not a duration (" + DURATION_HINT + ")", {"value": repr(value)}
        )
    try:
        return Duration.parse(value)
    except ValueError:
        raise PydanticCustomError(
            "duration", '"{value}" is not a duration (' + DURATION_HINT + ")", {"value": value}
        ) from None


def _time_of_day(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, int) and 0 <= value < 24 * 60:  # YAML 1.1 reads 09:00 as sexagesimal
        return time(value // 60, value % 60)
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", str(value).strip())
    if not match:
        raise PydanticCustomError(
            "time_of_day",
            '"{value}" is not a time of day (try "09:00" or "16:30")',
            {"value": value},
        )
    return time(int(match.group(1)), int(match.group(2)))


def _zone(value: Any) -> str:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
        raise PydanticCustomError(
            "timezone",
            '"{value}" is not an IANA time zone (try "America/New_York" or "Europe/Berlin")',
            {"value": value},
        ) from None
    return str(value)


def _mail_domain(value: str | None) -> str | None:
    """A Message-ID domain: a host name (a non-ASCII one must have an IDNA form)."""
    if value is None:
        return None
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(f"postmaster@{value}", check_deliverability=False)
    except EmailNotValidError:
        raise PydanticCustomError(
            "mail_domain",
            '"{value}" is not a domain name (e.g. "reyes-therapy.example")',
            {"value": value},
        ) from None
    return value


DurationField = Annotated[Duration, BeforeValidator(_duration), PlainSerializer(str)]
TimeOfDay = Annotated[time, BeforeValidator(_time_of_day)]
TimeZoneName = Annotated[str, BeforeValidator(_zone)]


def normalize_specialty(name: str) -> str:
    """Specialties compare case- and punctuation-insensitively ("OB/GYN" == "ob-gyn")."""
    key = re.sub(r"[^a-z0-9]+", " ", name.casefold()).strip()
    return SPECIALTY_ALIASES.get(key, key)


SPECIALTY_ALIASES = {
    "internist": "internal medicine",
    "im": "internal medicine",
    "ob gyn": "obstetrics and gynecology",
    "obgyn": "obstetrics and gynecology",
    "ob": "obstetrics and gynecology",
    "gyn": "obstetrics and gynecology",
    "obstetrics gynecology": "obstetrics and gynecology",
    "family practice": "family medicine",
    "fp": "family medicine",
    "gp": "family medicine",
    "general practice": "family medicine",
    "peds": "pediatrics",
}


# --- the document ------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Practice(Strict):
    therapist: str = Field(min_length=1)
    credentials: str = ""
    practice_name: str = ""
    phone: str = ""
    email: EmailStr
    address: str = ""
    timezone: TimeZoneName = "America/New_York"
    calendar_id: str = "primary"
    mail_domain: str | None = None

    @field_validator("therapist", "credentials", "practice_name", "phone", "calendar_id")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(ch in value for ch in "\r\n"):
            raise PydanticCustomError("one_line", "must be a single line", {})
        return value.strip()

    @field_validator("mail_domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return _mail_domain(value)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def message_domain(self) -> str:
        return self.mail_domain or self.email.rsplit("@", 1)[1]


class Conditions(Strict):
    specialty: list[str] | None = None
    specialty_not: list[str] | None = None
    release: Literal["required", "any"] = "any"
    referral: Literal["open", "closed", "any"] = "any"


class Rule(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    event: Literal[EVENTS]  # type: ignore[valid-type]
    after: DurationField
    at: TimeOfDay | None = None
    make: Literal["draft", "reminder"]
    to: Literal["physician", "prescriber"] = "physician"
    template: str = Field(pattern=r"^[A-Za-z0-9_./-]+$")
    when: Conditions = Conditions()
    enabled: bool = True

    @field_validator("event", mode="before")
    @classmethod
    def _known_event(cls, value: Any) -> Any:
        if value not in EVENTS:
            raise PydanticCustomError(
                "event",
                '"{value}" is not an event (one of: {events})',
                {"value": value, "events": ", ".join(EVENTS)},
            )
        return value


class Database(Strict):
    url: str | None = None


class Delivery(Strict):
    backend: Literal["outbox", "google"] = "outbox"
    outbox: str = "outbox"


class Schedule(Strict):
    poll: DurationField = Duration(5, "minutes")
    sync: DurationField = Duration(15, "minutes")
    misfire_grace: DurationField = Duration(1, "hours")
    # How long a claim on a follow-up lasts: a replica that dies holding claims loses them
    # after this. Longer than a batch can take (google.timeout x max_attempts).
    lease: DurationField = Duration(5, "minutes")

    @field_validator("lease")
    @classmethod
    def _long_enough(cls, value: Duration) -> Duration:
        if value.as_timedelta().total_seconds() < 10:
            raise PydanticCustomError(
                "lease", "must be at least 10 seconds (a claim must outlast its batch)", {}
            )
        return value


class Quota(Strict):
    gmail_units_per_minute: int = Field(6000, gt=0)
    calendar_requests_per_minute: int = Field(600, gt=0)


class Google(Strict):
    token_file: str = "google-token.json"
    client_secrets_file: str = "client_secret.json"
    service_account_file: str | None = None
    subject: str | None = None
    api_endpoint: str | None = None
    read_scope: bool = False
    batch_size: int = Field(50, ge=1, le=100)
    timeout: float = Field(30.0, gt=0, le=600)
    max_attempts: int = Field(5, ge=1, le=20)
    quota: Quota = Quota()


class Therapist(Strict):
    """One therapist of a group practice: a mailbox, a calendar and their own signature.

    Anything left out is the practice's (`practice:`); credentials are per mailbox.
    """

    key: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")  # fits meta and claim columns
    name: str = Field(min_length=1)
    email: EmailStr
    credentials: str | None = None
    practice_name: str | None = None
    phone: str | None = None
    address: str | None = None
    calendar_id: str | None = None
    mail_domain: str | None = None
    # This mailbox's token from `followupd auth --therapist KEY` (default tokens/KEY.json),
    # or, with google.service_account_file, the mailbox to act for (default: email).
    token_file: str | None = None
    subject: str | None = None
    quota: Quota | None = None

    @field_validator("mail_domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return _mail_domain(value)

    @field_validator("name", "credentials", "practice_name", "phone", "calendar_id")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and any(ch in value for ch in "\r\n"):
            raise PydanticCustomError("one_line", "must be a single line", {})
        return value.strip() if value is not None else None

    def practice(self, base: Practice) -> Practice:
        """The practice settings as this therapist signs and files them."""
        changes = {"therapist": self.name, "email": self.email}
        for name in (
            "credentials",
            "practice_name",
            "phone",
            "address",
            "calendar_id",
            "mail_domain",
        ):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        return base.model_copy(update=changes)

    def google(self, base: Google) -> Google:
        """Google settings for this therapist's mailbox: own token or own subject, own quota."""
        changes: dict[str, Any] = {"quota": self.quota or base.quota}
        if base.service_account_file:
            changes["subject"] = self.subject or self.email
        else:
            changes["token_file"] = self.token_file or f"tokens/{self.key}.json"
        return base.model_copy(update=changes)


class Logging(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["logfmt", "json"] = "logfmt"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Config(Strict):
    practice: Practice
    database: Database = Database()
    delivery: Delivery = Delivery()
    schedule: Schedule = Schedule()
    google: Google = Google()
    logging: Logging = Logging()
    holidays: list[date] = []
    specialty_chain: dict[str, str] = {}
    therapists: list[Therapist] = []
    rules: list[Rule] = []

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        for items, what in ((self.rules, "rule name"), (self.therapists, "therapist key")):
            seen: set[str] = set()
            for item in items:
                name = item.name if isinstance(item, Rule) else item.key
                if name in seen:
                    raise PydanticCustomError(
                        "duplicate_name",
                        '{what} "{name}" is used twice (it must be unique)',
                        {"what": what, "name": name},
                    )
                seen.add(name)
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> Config:
        lease = self.schedule.lease.as_timedelta().total_seconds()
        if lease < 2 * self.google.timeout:
            raise PydanticCustomError(
                "lease",
                "schedule.lease ({lease} s) must be at least twice google.timeout "
                "({timeout} s): a claim must outlast the calls made under it",
                {"lease": f"{lease:.0f}", "timeout": f"{self.google.timeout:.0f}"},
            )
        return self

    def therapist(self, key: str | None) -> Therapist | None:
        """The configured therapist `key` (None: the practice's own therapist)."""
        if key is None:
            return None
        for therapist in self.therapists:
            if therapist.key == key:
                return therapist
        raise KeyError(key)

    def mailboxes(self) -> list[str | None]:
        """Whose mailboxes deliveries go to (None: the practice's own, `practice:`)."""
        return [t.key for t in self.therapists] or [None]

    def default_therapist(self) -> str | None:
        """Whose a row without a therapist is: the only one configured, else nobody's."""
        return self.therapists[0].key if len(self.therapists) == 1 else None

    def next_specialty(self, specialty: str | None) -> str | None:
        """Who to ask about next: after an internist, their favourite OB/GYN."""
        if not specialty:
            return None
        chain = {normalize_specialty(k): v for k, v in self.specialty_chain.items()}
        return chain.get(normalize_specialty(specialty))


# --- loading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """A validated configuration together with where its files live."""

    home: Path
    config_path: Path
    config: Config
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def database_url(self) -> str:
        url = self.config.database.url
        return url if url else f"sqlite:///{self.home / 'followupd.sqlite3'}"

    @property
    def outbox_dir(self) -> Path:
        return self.home / self.config.delivery.outbox

    @property
    def templates_dir(self) -> Path:
        return self.home / "templates"

    def path(self, name: str) -> Path:
        """A file named in the configuration, relative to the home."""
        return self.home / name

    def for_therapist(self, key: str | None) -> Settings:
        """These settings as one therapist's: their signature, mailbox, calendar and quota.

        Raises KeyError for a key the configuration does not list.
        """
        therapist = self.config.therapist(key)
        if therapist is None:
            return self
        config = self.config.model_copy(
            update={
                "practice": therapist.practice(self.config.practice),
                "google": therapist.google(self.config.google),
            }
        )
        return replace(self, config=config)


def resolve_home(home: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    return Path(home or environ.get("FOLLOWUPD_HOME") or ".").expanduser()


def load_environment(home: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment over `.env` in the home: the real environment always wins."""
    env_file = home / ".env"
    values = (
        {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        if env_file.is_file()
        else {}
    )
    values.update(os.environ if environ is None else environ)
    return values


def load(
    home: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read, merge and validate; raise ConfigError with lines a person can act on."""
    base_env = os.environ if environ is None else environ
    home_path = resolve_home(home, base_env)
    path = home_path / CONFIG_NAME
    shown = str(path)
    if not path.is_file():
        hint = (
            f"run `followupd init {home_path}` to write one"
            if home_path != Path(".")
            else "run `followupd init` to write one, or pass --home"
        )
        raise ConfigError([f"{shown}: no configuration file ({hint})"])
    exposed = private_files_problems(home_path)
    if exposed:
        raise ConfigError(exposed)
    env = load_environment(home_path, base_env)
    text = _read_text(path, shown)
    document, lines = _parse_yaml(text, shown)
    sources: dict[tuple[str, ...], str] = {}
    for var, key_path in ENV_OVERRIDES.items():
        if env.get(var):
            _set_path(document, key_path, env[var])
            sources[key_path] = var
    try:
        config = Config.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(explain(exc, shown, lines, sources)) from None
    return Settings(home=home_path, config_path=path, config=config, environ=env)


def private_files_problems(home: Path) -> list[str]:
    """Configuration and templates are code, `.env` is a secret: one line for each that other
    users may read or write, and for a home they may write (they could swap the files).

    The shipped default templates belong to the installation and are not checked here.
    """
    problems = [_home_exposure(home), exposure(home / CONFIG_NAME), exposure(home / ".env")]
    templates = home / "templates"
    problems.append(exposure(templates))
    if templates.is_dir():
        for folder, folders, files in os.walk(templates):
            folders.sort()
            for name in [*sorted(files), *folders]:
                problems.append(exposure(Path(folder) / name))
    return [problem for problem in problems if problem]


def _home_exposure(home: Path) -> str | None:
    """Why others could change what is in `home` (it may be readable: that is fine), or None."""
    try:
        mode = stat.S_IMODE(home.stat().st_mode)
    except OSError:
        return None
    if not mode & 0o022:
        return None
    line = f"{home}: writable by other users (mode {mode:04o}); "
    if mode & stat.S_ISVTX:  # a shared folder such as /tmp: chmod would break it for everyone
        return line + (
            "someone else could put files there; keep followupd's files in a folder "
            "of your own (--home DIR or FOLLOWUPD_HOME)"
        )
    return line + f"fix it with: chmod 700 {shlex.quote(str(home))}"


def _read_text(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{shown}: not UTF-8 text (save it as UTF-8)"]) from None
    except OSError as exc:
        raise ConfigError([f"{shown}: cannot read ({exc.strerror})"]) from None


ALIASES_REFUSED = (
    "YAML anchors and aliases (&name, *name) are not allowed in followupd.yaml; write the value out"
)
MAX_DEPTH = 64  # the configuration is a few levels deep; the composer recurses per level


class _Refused(yaml.MarkedYAMLError):
    """YAML that the configuration does not accept, reported as the problem at its mark."""

    def __init__(self, problem: str, mark: yaml.Mark | None):
        super().__init__(problem=problem, problem_mark=mark)


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader without anchors and aliases (an alias bomb expands 1 KB into gigabytes, a
    self-referencing alias never ends), without unbounded nesting, and with a value the
    constructor cannot read (2026-02-30, a number of 5000 digits) reported at its line."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(ALIASES_REFUSED, event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise _Refused(f"nested too deeply (more than {MAX_DEPTH} levels)", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            reason = str(exc).split(";")[0]
            raise _Refused(f"{str(node.value)[:40]!r}: {reason}", node.start_mark) from None


def _compose_and_construct(text: str) -> tuple[yaml.Node | None, Any]:
    """Compose once, and construct the document from that same node graph."""
    loader = ConfigLoader(text)  # the reader checks the characters here (YAMLError)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _parse_yaml(text: str, shown: str) -> tuple[dict[str, Any], dict[tuple, int]]:
    try:
        node, document = _compose_and_construct(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if problem == ALIASES_REFUSED:
            raise ConfigError([f"{shown}{where}: {problem}"]) from None
        raise ConfigError([f"{shown}{where}: not valid YAML: {problem}"]) from None
    if document is None:
        raise ConfigError([f"{shown}: the file is empty (start from `followupd init`)"])
    if not isinstance(document, dict):
        raise ConfigError(
            [f"{shown}: the top level must be a mapping of keys (practice:, rules:, ...)"]
        )
    lines: dict[tuple, int] = {}
    try:
        _index_lines(node, (), lines)
    except DuplicateKey as twice:
        raise ConfigError(
            [
                f"{shown}:{twice.again}: {format_path(twice.key)}: appears twice "
                f"(also on line {twice.first}; keep one)"
            ]
        ) from None
    return document, lines


class DuplicateKey(Exception):
    def __init__(self, key: tuple, first: int, again: int):
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


def _index_lines(node: yaml.Node | None, path: tuple, out: dict[tuple, int]) -> None:
    """Remember the line of every key so an error can point at it."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*path, key_node.value)
            if key in out:  # YAML would silently keep the last one
                raise DuplicateKey(key, out[key], key_node.start_mark.line + 1)
            out[key] = key_node.start_mark.line + 1
            _index_lines(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = (*path, index)
            out[key] = item.start_mark.line + 1
            _index_lines(item, key, out)


def _set_path(document: dict[str, Any], key_path: tuple[str, ...], value: str) -> None:
    target = document
    for key in key_path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[key_path[-1]] = value


def format_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def explain(
    exc: ValidationError,
    shown: str,
    lines: Mapping[tuple, int],
    sources: Mapping[tuple, str] | None = None,
) -> list[str]:
    """Turn pydantic's errors into `FILE:LINE: key: problem (fix)` lines."""
    problems: list[tuple[int, str]] = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if not str(part).startswith("function-"))
        loc = _drop_union_tags(loc)
        key = format_path(loc)
        message = _message(error, loc)
        origin = (sources or {}).get(tuple(str(p) for p in loc))
        if origin:
            problems.append((0, f"{origin} (overrides {key}): {message}"))
            continue
        line = _nearest_line(loc, lines)
        where = f"{shown}:{line}" if line else shown
        problems.append((line or 0, f"{where}: {key}: {message}" if key else f"{where}: {message}"))
    return [text for _, text in sorted(problems, key=lambda item: item[0])]


def _drop_union_tags(loc: tuple) -> tuple:
    return tuple(p for p in loc if not (isinstance(p, str) and p in ("str", "date", "time")))


def _nearest_line(loc: tuple, lines: Mapping[tuple, int]) -> int | None:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def _message(error: Mapping[str, Any], loc: tuple) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f'did you mean "{close[0]}"?' if close else f"known keys: {', '.join(known)}"
        return f"unknown key ({hint})"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{error['input']!r} is not allowed (use {expected})"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "name":
        return (
            f'"{error["input"]}" is not a rule name (lower-case letters, digits, "-" and "_", '
            f'e.g. "referral-acknowledgement")'
        )
    if kind == "value_error" and "email" in str(error.get("msg", "")).lower():
        return f'"{error["input"]}" is not an email address (e.g. "you@yourpractice.com")'
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if kind in (
        "int_parsing",
        "bool_parsing",
        "date_from_datetime_parsing",
        "date_parsing",
        "string_type",
        "int_type",
        "list_type",
        "dict_type",
        "model_type",
    ):
        return f"{error['input']!r}: {message[0].lower()}{message[1:]}"
    return message


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class that a key path points into (for "did you mean")."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part) if isinstance(model, type) else None
        if info is None:
            return None
        annotation = info.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            return None
    return model if isinstance(model, type) else None
