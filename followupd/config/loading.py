"""Loading: `followupd.yaml` in the home, `.env` beside it, then the environment.

The real environment wins over `.env`, and `.env` over the file (`ENV_OVERRIDES`). The YAML
is read without anchors and aliases and with the line of every key, so that a problem points
at its line; configuration, templates and `.env` that others may read or write are refused
with the `chmod` that fixes them.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from followupd.config.errors import ConfigError, explain, format_path
from followupd.config.schema import Config
from followupd.permissions import exposure

CONFIG_NAME = "followupd.yaml"

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
    values: dict[str, str] = {}
    if env_file.is_file():  # python-dotenv is imported only for a home that has one
        from dotenv import dotenv_values

        values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
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
    unusable = _unusable(path)
    if unusable:
        raise ConfigError([unusable])
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


def _unusable(path: Path) -> str | None:
    """Why the system cannot even look for `path` (a name too long, a folder not searchable),
    in one line with the path cut short; None when it can."""
    try:
        path.is_file()
    except OSError as exc:
        text = str(path)
        shown = text if len(text) <= 120 else f"{text[:60]}…{text[-60:]}"
        return f"{shown}: cannot be read ({exc.strerror or type(exc).__name__}); check --home"
    return None


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
    except _Refused as exc:  # our own refusals point at their node already
        mark = exc.problem_mark
        where = f":{mark.line + 1}" if mark else ""
        problem = exc.problem or ""
        if problem == ALIASES_REFUSED:
            raise ConfigError([f"{shown}{where}: {problem}"]) from None
        raise ConfigError([f"{shown}{where}: not valid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([_syntax_error(exc, text, shown)]) from None
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


KEY_VALUE = "expected `key: value` (a colon and a space after the key)"
MISALIGNED = "indented differently from the lines around it (line it up with them)"
# The parser's words for a line that does not fit the block it is in, in a person's words.
BLOCK_PROBLEMS = {
    "expected <block end>, but found '<block mapping start>'": MISALIGNED,
    "expected <block end>, but found '?'": MISALIGNED,
    "expected <block end>, but found '-'": MISALIGNED,
    "expected <block end>, but found '<block sequence start>'": MISALIGNED,
    "expected <block end>, but found '<scalar>'": "more text after a value (quote the whole value)",
}
Spot = tuple[int, int]  # (line, column), both from 0, as in a yaml.Mark


def _syntax_error(exc: yaml.YAMLError, text: str, shown: str) -> str:
    """`FILE:LINE: not valid YAML: what (column C)`, at the line where the mistake is: the
    parser notices some mistakes lines later (an unclosed quote, a line without `key: `)."""
    if isinstance(exc, yaml.reader.ReaderError):  # a control character; it has no mark
        line = text.count("\n", 0, exc.position)
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1)
        spot, what = (line, column), f"character #x{exc.character:04x} is not allowed"
    else:
        spot, what = _where_and_what(exc, text)
    if spot is None:
        return f"{shown}: not valid YAML: {what}"
    return f"{shown}:{spot[0] + 1}: not valid YAML: {what} (column {spot[1] + 1})"


def _spot(mark: yaml.Mark | None) -> Spot | None:
    return None if mark is None else (mark.line, mark.column)


def _where_and_what(exc: yaml.YAMLError, text: str) -> tuple[Spot | None, str]:
    """Where the actual mistake is, and what it is in words a person can act on."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context", None) or ""
    start = getattr(exc, "context_mark", None)
    if "'\\t'" in problem:
        return _spot(mark), "a tab character (indent with spaces only)"
    if start is not None and context == "while scanning a quoted scalar":
        return _spot(start), _unclosed_quote(text, start)
    if start is not None and context == "while scanning a simple key":
        return _spot(start), KEY_VALUE
    late = start is not None and mark is not None and mark.line > start.line
    if late and context.startswith("while parsing a flow"):
        bracket = text[start.index : start.index + 1]
        closing = {"[": "]", "{": "}"}.get(bracket, "")
        return _spot(start), f"the `{bracket}` opened here is never closed (add `{closing}`)"
    if mark is None:
        return None, problem
    return _after_the_last_value(text, mark, problem)


def _unclosed_quote(text: str, start: yaml.Mark) -> str:
    quote = text[start.index : start.index + 1]
    return f"the quote ({quote}) that opens this value is never closed"


def _after_the_last_value(text: str, mark: yaml.Mark, problem: str) -> tuple[Spot, str]:
    """A mistake the parser finds after a value: often that value is the mistake. A quoted
    value that runs over lines up to here lacks its closing quote; a plain one that fills its
    own line lacks its `key: `; a `:` may end a value run on into a line indented too far."""
    last = _last_value_before(text, mark)
    if last is not None and last.style in ('"', "'") and last.start_mark.line < mark.line:
        return _spot(last.start_mark), _unclosed_quote(text, last.start_mark)
    lines = text.splitlines()
    bare = last is not None and last.style is None and _starts_its_line(lines, last.start_mark)
    if problem == "mapping values are not allowed here":
        if last is None or last.start_mark.line == mark.line:
            return _spot(mark), "a value holds `: ` (put the value in quotes)"
        if bare:
            return _spot(last.start_mark), KEY_VALUE
        line = lines[mark.line] if mark.line < len(lines) else ""
        return (mark.line, _indent(line)), "indented further than the keys above (line them up)"
    what = BLOCK_PROBLEMS.get(problem, problem)
    if what == MISALIGNED and bare and last is not None and last.start_mark.line < mark.line:
        return _spot(last.start_mark), KEY_VALUE
    if what == MISALIGNED:
        return _misaligned(lines, mark.line), what
    return _spot(mark), what


def _starts_its_line(lines: list[str], mark: yaml.Mark) -> bool:
    """Whether a value is all its line holds: no `key: ` and no `- ` before it."""
    line = lines[mark.line] if mark.line < len(lines) else ""
    return mark.column == len(line) - len(line.lstrip(" "))


def _last_value_before(text: str, mark: yaml.Mark) -> yaml.ScalarToken | None:
    """The last value (not a key) the scanner reads before `mark`, where it or the parser
    stopped."""
    scanner = yaml.SafeLoader(text)
    tokens: list[yaml.Token] = []
    try:
        while scanner.check_token() and scanner.peek_token().start_mark.index < mark.index:
            tokens.append(scanner.get_token())
    except yaml.YAMLError:  # the scanner's own error: what it had read is still queued
        tokens += [t for t in scanner.tokens if t.start_mark.index < mark.index]
    finally:
        scanner.dispose()
    values = [
        token
        for before, token in zip([None, *tokens], tokens, strict=False)
        if isinstance(token, yaml.ScalarToken) and not isinstance(before, yaml.KeyToken)
    ]
    return values[-1] if values else None


def _misaligned(lines: list[str], line: int) -> Spot:
    """The line that does not line up: the one the parser stopped at, unless the line above
    it opens its block out of line with the lines after it (a first key misindented)."""
    content = [
        i for i, text in enumerate(lines) if text.strip() and not text.lstrip().startswith("#")
    ]
    at = content.index(line) if line in content else -1
    if at < 2 or at + 1 >= len(content):
        return line, _indent(lines[line]) if line < len(lines) else 0
    parent, above, below = (content[at - 2], content[at - 1], content[at + 1])
    here = _indent(lines[line])
    opens = _indent(lines[parent]) < _indent(lines[above]) != here
    if opens and _indent(lines[below]) == here:
        return above, _indent(lines[above])
    return line, here


def _indent(line: str) -> int:
    """Where a line's key or value starts, after its indentation and any `- ` markers."""
    stripped = line.lstrip(" ")
    while stripped.startswith("- "):
        stripped = stripped[2:].lstrip(" ")
    return len(line) - len(stripped)


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
