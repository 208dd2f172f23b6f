"""Log lines to standard error: one event per line, logfmt by default or JSON.

Callers pass ids (follow-up, referral ref, rule), never patient fields: `log.info("delivered",
follow_up=12, rule="closing-note")`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "followupd"


class _Formatter(logging.Formatter):
    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        return out


class LogfmtFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt(value)}" for key, value in self.fields(record).items())


class JsonFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), default=str, ensure_ascii=False)


def _logfmt(value: Any) -> str:
    text = "" if value is None else str(value)
    if text and not any(ch in text for ch in ' ="\\\n\r\t'):
        return text
    return json.dumps(text, ensure_ascii=False)


class Log:
    """`log.info("event", key=value, ...)`: structured fields instead of prose."""

    def __init__(self, name: str = LOGGER_NAME):
        self.logger = logging.getLogger(name)

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, event, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is logged, not when set up (a test
    runner or a re-exec may have swapped it since)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup(level: str = "INFO", fmt: str = "logfmt", stream=None) -> None:
    """Send followupd's log to `stream` (standard error) in the chosen format."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    for name, at in ((LOGGER_NAME, level), ("apscheduler", "WARNING")):
        logger = logging.getLogger(name)  # APScheduler logs every job run at INFO: too much
        logger.handlers[:] = [handler]
        logger.setLevel(at)
        logger.propagate = False
