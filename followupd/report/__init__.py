"""`followupd report`: referrals by physician and practice, acknowledgement and closing-note
times, outreach visits against referrals, and what needs attention. Never a patient value.

- `figures`: the figures, computed from the store's SQL aggregates (`build`), and their
  definitions (the percentile, the 90-day windows, "quiet");
- `html`: the self-contained page (inline styles, charts as inline SVG drawn by pygal,
  which is imported only when a page is made).
"""

from followupd.report.figures import (
    Attention,
    NoteFigures,
    NoteLine,
    Options,
    Prospect,
    Report,
    Source,
    Spread,
    build,
    default_since,
    format_minutes,
    options_for,
    percentile,
    sparkline,
)

__all__ = [
    "Attention",
    "NoteFigures",
    "NoteLine",
    "Options",
    "Prospect",
    "Report",
    "Source",
    "Spread",
    "build",
    "default_since",
    "format_minutes",
    "options_for",
    "percentile",
    "sparkline",
]
