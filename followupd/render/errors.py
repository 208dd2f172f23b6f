"""A follow-up that cannot be rendered, and the one way any failure becomes its reason.

A reason is written on the follow-up's ledger row and shown by `status`, so it names the
template, the header or the step, never a value from the data: an exception's text may quote
the value that caused it (a name, a subject).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class RenderError(Exception):
    """A follow-up cannot be rendered; the message names template and variable, no values."""


@contextmanager
def step(what: str) -> Iterator[None]:
    """Any exception but a RenderError, raised while doing `what`, fails the follow-up as a
    RenderError naming the step and the exception's type. Never its text: an exception's
    text may quote the value that caused it (a name, a subject)."""
    try:
        yield
    except RenderError:
        raise
    except Exception as exc:  # noqa: BLE001 -- fails this one follow-up, by type only
        raise RenderError(f"{what} failed ({type(exc).__name__})") from None
