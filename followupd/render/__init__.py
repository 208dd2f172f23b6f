"""Templates to deliverables: a draft as checked RFC 5322 bytes, a reminder as plain fields.

One module a concept: `templates` (the sandboxed Jinja2 environment and its error reports
that never name a value), `context` (what a template may use), `headers` (the checked header
values and the read-back of a draft's bytes), `drafts` and `reminders` (the two
deliverables), and `errors` (RenderError: one follow-up fails, the rest go on).

The names below are the package's interface, imported from `followupd.render`: what the
engine and the commands use. The rest (the header checks, the template errors, constants
such as ENCODED_WORD) is reached in its own module, `followupd.render.headers.ENCODED_WORD`:
the code reads it there, so that is also where a test patches it.
"""

from __future__ import annotations

from followupd.render.context import context_for
from followupd.render.drafts import build_draft, draft_tag, message_id
from followupd.render.errors import RenderError
from followupd.render.reminders import build_reminder, event_id
from followupd.render.templates import Rendering, Templates

__all__ = [
    "RenderError",
    "Rendering",
    "Templates",
    "build_draft",
    "build_reminder",
    "context_for",
    "draft_tag",
    "event_id",
    "message_id",
]
