"""A configuration a person must fix: every problem as `FILE:LINE: key.path: what is wrong
(fix)`, the way a compiler would report it, and start-up stops with exit status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from followupd.config.schema import Config


class ConfigError(Exception):
    """A configuration a person must fix; `problems` are ready-to-print lines."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


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
        if error["type"] != "extra_forbidden":  # an unknown key may well be named "date"
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
