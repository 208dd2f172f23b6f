"""The configuration document as pydantic models, and the value types its keys hold.

Every model forbids unknown keys, so a typo is an error and never silently ignored; a value
that does not parse is refused with what was expected (`"9am" is not a time of day (try
"09:00" ...)`), which `errors.explain` turns into a `FILE:LINE: key: problem` line.
"""

from __future__ import annotations

import re
from datetime import date, time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from followupd.records import REFERRAL_COLUMNS, VISIT_COLUMNS
from followupd.timing import DURATION_HINT, Duration

EVENTS = (
    "referral.received",
    "referral.closed",
    "release.recorded",
    "visit.logged",
    "physician.first_referral",
    "physician.quiet",
    "prospect.named",
    "note.unsent",
)
# Events that make a reminder only: nobody to address a draft to (a quiet physician is
# called or visited; a prospect is met; an unsent note is the therapist's own to send).
REMINDER_EVENTS = ("physician.quiet", "prospect.named", "note.unsent")
# Events whose notes can only go to the physician: `to: prescriber` is for referral events.
PHYSICIAN_EVENTS = ("physician.first_referral",)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


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


def _weekday(value: Any) -> str:
    """A day of the week: "monday", "Mon", "MONDAY"."""
    text = str(value).strip().casefold() if isinstance(value, str) else ""
    for day in WEEKDAYS:
        if len(text) >= 3 and day.startswith(text):
            return day
    raise PydanticCustomError(
        "weekday",
        '{value} is not a day of the week (try "monday" or "friday")',
        {"value": f'"{value}"' if isinstance(value, str) else repr(value)},
    )


DurationField = Annotated[Duration, BeforeValidator(_duration), PlainSerializer(str)]
Weekday = Annotated[str, BeforeValidator(_weekday)]
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
    """One rule: an event and what it makes, or (`to: me`) the weekly digest.

    `make` and `to` come first, so that the checks of `event`, `after` and `on` (which
    depend on them) can see them and name the key to fix.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    make: Literal["draft", "reminder"]
    # physician (the referring one, or the one met), prescriber, or me: a digest to the
    # therapist's own mailbox, made every week `on` a day, with refs and names only.
    to: Literal["physician", "prescriber", "me"] = "physician"
    event: Literal[EVENTS] | None = Field(None, validate_default=True)  # type: ignore[valid-type]
    after: DurationField | None = Field(None, validate_default=True)
    at: TimeOfDay | None = None
    template: str = Field(pattern=r"^[A-Za-z0-9_./-]+$")
    when: Conditions = Conditions()
    enabled: bool = True
    # A time landing on a weekend or holiday moves to the next business day (the default for
    # reminders: an office visit belongs on a day the office is open), or stays (`none`).
    roll: Literal["next_business_day", "none"] | None = None
    # A digest's day of the week (`on:` would be read by YAML as the word for true).
    day: Weekday | None = Field(None, validate_default=True)

    @property
    def rolls(self) -> bool:
        roll = self.roll or ("next_business_day" if self.make == "reminder" else "none")
        return roll == "next_business_day"

    @property
    def digest(self) -> bool:
        """A digest to the therapist's own mailbox (`to: me`), not a note about one event."""
        return self.to == "me"

    @field_validator("to")
    @classmethod
    def _me_is_a_draft(cls, value: str, info: ValidationInfo) -> str:
        if value == "me" and info.data.get("make") == "reminder":
            raise PydanticCustomError(
                "to_me", "to: me makes the digest, a draft to your own mailbox (make: draft)", {}
            )
        return value

    @field_validator("event", mode="before")
    @classmethod
    def _known_event(cls, value: Any) -> Any:
        if value is not None and value not in EVENTS:
            raise PydanticCustomError(
                "event",
                '"{value}" is not an event (one of: {events})',
                {"value": value, "events": ", ".join(EVENTS)},
            )
        return value

    @field_validator("event")
    @classmethod
    def _event_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "to" not in info.data:  # `to` is wrong already: that is the one to fix
            return value
        make, to = info.data.get("make"), info.data["to"]
        if to == "me":
            if value is not None:
                raise PydanticCustomError(
                    "event",
                    "a digest (to: me) follows no event: it is made every week on its day "
                    "(remove event:, give day: monday)",
                    {},
                )
            return value
        if value is None:
            raise PydanticCustomError("missing", "required key is missing", {})
        if value in REMINDER_EVENTS and make == "draft":
            raise PydanticCustomError(
                "event",
                "{event} makes a reminder on your calendar (make: reminder)",
                {"event": value},
            )
        if value in PHYSICIAN_EVENTS and to == "prescriber":
            raise PydanticCustomError(
                "event",
                "{event} notes go to the physician (to: prescriber is for referral events)",
                {"event": value},
            )
        return value

    @field_validator("after")
    @classmethod
    def _after_fits(cls, value: Duration | None, info: ValidationInfo) -> Duration | None:
        if "to" not in info.data:
            return value
        if info.data["to"] == "me":
            if value is not None:
                raise PydanticCustomError(
                    "after",
                    "a digest (to: me) has no offset: it is made on its day (day:) at its "
                    "time (at:); remove after:",
                    {},
                )
            return value
        if value is None:
            raise PydanticCustomError("missing", "required key is missing", {})
        return value

    @field_validator("day")
    @classmethod
    def _day_for_digests(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("to") == "me" and value is None:
            raise PydanticCustomError(
                "day", "a digest (to: me) needs its day of the week (e.g. day: monday)", {}
            )
        if info.data.get("to") not in (None, "me") and value is not None:
            raise PydanticCustomError(
                "day", "day: is the day of a digest (to: me); other rules follow an event", {}
            )
        return value

    @field_validator("when")
    @classmethod
    def _no_conditions_on_a_digest(cls, value: Conditions, info: ValidationInfo) -> Conditions:
        if info.data.get("to") == "me" and value != Conditions():
            raise PydanticCustomError(
                "when",
                "a digest (to: me) lists the whole practice and takes no conditions; remove when:",
                {},
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


# A therapist's own value for something `practice:` also says; left out, the practice's.
FromPractice = Annotated[str | None, Field(description="left out: the practice's")]


class Therapist(Strict):
    """One therapist of a group practice: a mailbox, a calendar and their own signature.

    Anything left out is the practice's (`practice:`); credentials are per mailbox.
    """

    key: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")  # fits meta and claim columns
    name: str = Field(min_length=1)
    email: EmailStr
    credentials: FromPractice = None
    practice_name: FromPractice = None
    phone: FromPractice = None
    address: FromPractice = None
    calendar_id: FromPractice = None
    mail_domain: FromPractice = None
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


class Holidays(Strict):
    """Days without business besides weekends: a country's public holidays (from the
    `holidays` package, every year) and the practice's own closed days.

    Whether the `holidays` package knows the country is checked when the engine starts and
    by `followupd check`: importing it here would slow every command by a tenth of a second.
    """

    country: str | None = Field(None, pattern=r"^[A-Za-z]{2,3}$")  # ISO 3166: US, CA, GB
    subdivision: str | None = Field(None, pattern=r"^[A-Za-z0-9-]{1,10}$")  # a state: MN
    closed: list[date] = []

    @field_validator("country", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        """`us` is US: the holidays package knows country codes in capitals only."""
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _country_first(self) -> Holidays:
        if self.country is None and self.subdivision is not None:
            raise PydanticCustomError("holidays", "a subdivision needs a country", {})
        return self


class History(Strict):
    """A practice's first import (or a watched sheet's first read) is its history: events
    older than `cutoff` when first planned are recorded as `skipped` and make no note, and
    more than `confirm_over` notes due at once wait for a person's yes
    (`followupd run --once --confirm`) instead of flooding Drafts."""

    cutoff: DurationField | None = Duration(14, "days")  # null: every event makes its notes
    confirm_over: int | None = Field(50, ge=1)  # null: never ask


class Events(Strict):
    """When the events that are spans of time begin: a physician who has referred before and
    sent nothing for `quiet_after` is quiet (physician.quiet); a draft still in Drafts
    `unsent_after` after it was made is unsent (note.unsent). The digest uses both."""

    quiet_after: DurationField = Duration(90, "days")
    unsent_after: DurationField = Duration(2, "business_days")

    @field_validator("quiet_after", "unsent_after")
    @classmethod
    def _whole_days(cls, value: Duration, info: ValidationInfo) -> Duration:
        hint = "90 days" if info.field_name == "quiet_after" else "2 business days"
        if value.is_elapsed or value.amount < 1:
            raise PydanticCustomError(
                "span",
                'is counted in days, business days, weeks or months, at least 1 (try "{hint}")',
                {"hint": hint},
            )
        return value


class Backup(Strict):
    """Backups the daemon makes of a SQLite database (`followupd backup` makes one by
    hand): every `every` into `path` (relative to the home), keeping the `keep` newest."""

    every: DurationField | None = None  # null: no scheduled backups
    keep: int = Field(7, ge=1)
    path: str = Field("backups", min_length=1)

    @field_validator("every")
    @classmethod
    def _elapsed(cls, value: Duration | None) -> Duration | None:
        if value is not None and value.unit == "business_days":
            raise PydanticCustomError(
                "backup_every",
                'a backup runs on elapsed time, not business days (try "1 day" or "12 hours")',
                {},
            )
        if value is not None and value.as_timedelta().total_seconds() < 1:
            raise PydanticCustomError("backup_every", "must be at least 1 second", {})
        return value


class ReportFile(Strict):
    """The HTML report the daemon rewrites (`followupd report --html FILE` makes one by
    hand): every `every` into `path` (relative to the home), readable by you only."""

    every: DurationField | None = None  # null: the daemon writes no report (the default)
    path: str = Field("report.html", min_length=1)

    @field_validator("every")
    @classmethod
    def _elapsed(cls, value: Duration | None) -> Duration | None:
        if value is not None and value.unit == "business_days":
            raise PydanticCustomError(
                "report_every",
                'the report is made on elapsed time, not business days (try "1 day" or "6 hours")',
                {},
            )
        if value is not None and value.as_timedelta().total_seconds() < 1:
            raise PydanticCustomError("report_every", "must be at least 1 second", {})
        return value


# How often each kind of source may be read at most, and is read by default. A folder is
# cheap to look at; a sheet is paced by Google's quota (about 60 reads a minute per user).
SOURCE_EVERY = {
    "folder": (Duration(1, "seconds"), Duration(5, "seconds")),
    "google_sheet": (Duration(1, "minutes"), Duration(5, "minutes")),
    "sql": (Duration(10, "seconds"), Duration(10, "minutes")),
}
# The keys each kind needs, and those only it may have.
SOURCE_KEYS = {
    "folder": ({"path"}, {"path"}),
    "google_sheet": ({"spreadsheet", "range"}, {"spreadsheet", "range", "write_status"}),
    "sql": ({"url", "query"}, {"url", "query", "changed_column"}),
}


class Source(Strict):
    """A table the practice already keeps, read on a schedule through the same validation
    and upsert as a CSV import: a Google Sheet, a folder of exports, an SQL query."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    kind: Literal["google_sheet", "folder", "sql"]
    table: Literal["referrals", "visits"]
    every: DurationField | None = None
    columns: dict[str, str] = {}  # our column -> their header
    path: str | None = None  # folder: relative to the home
    spreadsheet: str | None = None  # google_sheet: the id, or the sheet's URL
    range: str | None = None  # google_sheet: "Referrals!A1:Z", header row first
    write_status: bool = False
    url: str | None = None  # sql: any SQLAlchemy URL (from the environment)
    query: str | None = None
    changed_column: str | None = None

    @model_validator(mode="after")
    def _keys_of_its_kind(self) -> Source:
        needed, allowed = SOURCE_KEYS[self.kind]
        given = {k for k in SOURCE_KEYS_ALL if getattr(self, k) not in (None, False)}
        missing = sorted(needed - given)
        if missing:
            raise PydanticCustomError(
                "source",
                "a {kind} source needs {keys}",
                {"kind": self.kind, "keys": ", ".join(missing)},
            )
        foreign = sorted(given - allowed)
        if foreign:
            raise PydanticCustomError(
                "source",
                "{keys} is not a key of a {kind} source (it takes {allowed})",
                {
                    "keys": ", ".join(foreign),
                    "kind": self.kind,
                    "allowed": ", ".join(sorted(allowed)),
                },
            )
        return self

    @model_validator(mode="after")
    def _read_by_this_version(self) -> Source:
        if self.kind not in SOURCE_KINDS_READ:
            raise PydanticCustomError(
                "source",
                "kind {kind} is not read by this version of followupd yet (it reads {read} "
                "sources); import its rows with `followupd import` meanwhile",
                {"kind": self.kind, "read": ", ".join(SOURCE_KINDS_READ)},
            )
        return self

    @model_validator(mode="after")
    def _status_tab_is_not_read(self) -> Source:
        """write_status keeps a tab named followupd: it must not be the tab read."""
        tab = (self.range or "").rpartition("!")[0].strip("'")
        if self.write_status and tab.casefold() == "followupd":
            raise PydanticCustomError(
                "source",
                "range: the tab followupd is where write_status writes its status; read "
                "your referrals from another tab (rename it)",
                {},
            )
        return self

    @model_validator(mode="after")
    def _not_too_often(self) -> Source:
        least, _ = SOURCE_EVERY[self.kind]
        if self.every is not None and self.every.as_timedelta() < least.as_timedelta():
            raise PydanticCustomError(
                "source",
                "every: a {kind} source is read at most every {least}",
                {"kind": self.kind, "least": str(least)},
            )
        return self

    @field_validator("url")
    @classmethod
    def _credentials_from_the_environment(cls, url: str | None) -> str | None:
        """A database password never sits in followupd.yaml: `url: ${NAME}`, and NAME in
        `.env` or the environment. A URL without a password may be written out."""
        if url is None or ENV_REFERENCE.match(url):
            return url
        if re.match(r"^[^:/@\s]+://[^:/@\s]*:[^@\s]*@", url) or re.search(
            r"[?&;][^=&;]*(pass|pwd|secret|token)[^=&;]*=", url, re.I
        ):
            raise PydanticCustomError(
                "source_url",
                "holds a password: write url: ${NAME} and put the URL in .env as NAME "
                "(credentials only from the environment)",
                {},
            )
        return url

    @model_validator(mode="after")
    def _columns_are_ours(self) -> Source:
        """`columns:` maps followupd's columns of the table to the source's own headers."""
        ours = REFERRAL_COLUMNS if self.table == "referrals" else VISIT_COLUMNS
        unknown = sorted(set(self.columns) - set(ours))
        if unknown:
            raise PydanticCustomError(
                "source",
                "columns: {unknown} is not a column of {table} (they are: {ours})",
                {"unknown": ", ".join(unknown), "table": self.table, "ours": ", ".join(ours)},
            )
        theirs = [header.strip().casefold() for header in self.columns.values()]
        twice = sorted({h for h in theirs if theirs.count(h) > 1})
        if twice:
            raise PydanticCustomError(
                "source",
                'columns: their header "{header}" is mapped to two of our columns',
                {"header": twice[0]},
            )
        return self

    @field_validator("spreadsheet")
    @classmethod
    def _spreadsheet_id(cls, value: str | None) -> str | None:
        """The id, or the sheet's URL as the browser shows it (the id is taken from it)."""
        if value is None:
            return None
        found = re.search(r"/spreadsheets/d/([A-Za-z0-9_-]+)", value)
        spreadsheet = found.group(1) if found else value.strip()
        if not re.fullmatch(r"[A-Za-z0-9_-]{10,100}", spreadsheet):
            raise PydanticCustomError(
                "source", "is neither a spreadsheet id nor a Google Sheets URL", {}
            )
        return spreadsheet

    @property
    def interval(self) -> Duration:
        """How often it is read: `every`, or its kind's default."""
        return self.every or SOURCE_EVERY[self.kind][1]


SOURCE_KINDS_READ = ("folder", "sql", "google_sheet")
ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
SOURCE_KEYS_ALL = {"path", "spreadsheet", "range", "write_status", "url", "query", "changed_column"}


def _closed_days(value: Any) -> Any:
    """`holidays:` may be a plain list of dates: the practice's own closed days."""
    return {"closed": value} if isinstance(value, list) else value


class Config(Strict):
    practice: Practice
    database: Database = Database()
    delivery: Delivery = Delivery()
    schedule: Schedule = Schedule()
    google: Google = Google()
    logging: Logging = Logging()
    holidays: Annotated[Holidays, BeforeValidator(_closed_days)] = Holidays()
    history: History = History()
    events: Events = Events()
    backup: Backup = Backup()
    report: ReportFile = ReportFile()
    sources: list[Source] = []
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

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, sources: list[Source]) -> list[Source]:
        names = [source.name for source in sources]
        for name in names:
            if names.count(name) > 1:
                raise PydanticCustomError(
                    "duplicate_name",
                    'source name "{name}" is used twice (it must be unique)',
                    {"name": name},
                )
        return sources

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
