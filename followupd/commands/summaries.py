"""Plain summaries: what `run --once`, `run --dry-run`, `import` and `demo` did, in a few
lines a person reads at the end of a command. Counts, rules and reasons; never a value.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from rich.table import Table

from followupd import config as configuration
from followupd.commands.common import out
from followupd.engine import Rehearsal, TickReport

# "no release of information on file for referral R-12" -> "... on file": grouped by cause.
_WHOSE = re.compile(r"\s+(?:for|of)\s+(?:referral|visit) \S+")


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def cause(reason: str) -> str:
    """A hold's or failure's reason without the referral or visit it names."""
    return _WHOSE.sub("", reason).strip()


def _by_cause(reasons: Iterable[str], limit: int = 4) -> str:
    counts = Counter(cause(r) for r in reasons)
    shown = [f"{why} ({n:,})" for why, n in counts.most_common(limit)]
    if len(counts) > limit:
        shown.append(f"{len(counts) - limit} more reasons")
    return "; ".join(shown)


def where_made(settings: configuration.Settings) -> str:
    if settings.config.delivery.backend == "outbox":
        return f"in {settings.outbox_dir}"
    return "as Gmail drafts and Calendar events"


def tick_lines(report: TickReport, settings: configuration.Settings) -> list[str]:
    """What one tick did: made, held and why, skipped as history, waiting, failed."""
    kinds = Counter(kind for _, kind, _ in report.delivered)
    made = [plural(kinds[k], k) for k in ("draft", "reminder") if kinds[k]]
    lines = [f"made {' and '.join(made)} {where_made(settings)}" if made else "made nothing"]
    held = [*report.planned_held, *(why for _, why in report.held)]
    if held:
        lines.append(f"held {len(held):,}: {_by_cause(held)}")
    if report.skipped:
        span = settings.config.history.cutoff
        lines.append(
            f"skipped {report.skipped:,} as history (events already more than {span} old when "
            "followupd learned of them make no note; `followupd status --state skipped` lists "
            "them)"
        )
    if report.waiting:
        lines.append(f"waiting {len(report.waiting):,}: {_by_cause(w for _, w in report.waiting)}")
    if report.withdrawn:
        lines.append(f"withdrawn {len(report.withdrawn):,}")
    if report.failed:
        lines.append(f"failed {len(report.failed):,}: {_by_cause(f for _, f in report.failed)}")
    return lines


def rehearsal_table(rehearsal: Rehearsal) -> Table:
    """By rule: what a run would make now, plan for later, hold and skip."""
    table = Table(title="dry run: nothing was written", title_justify="left")
    table.add_column("rule")
    table.add_column("makes")
    for bucket in ("now", "later", "held", "skipped"):
        table.add_column(bucket, justify="right")
    for rule in sorted(rehearsal.by_rule):
        counts = rehearsal.by_rule[rule]
        table.add_row(
            rule,
            rehearsal.kinds[rule],
            *(f"{counts[b]:,}" for b in ("now", "later", "held", "skipped")),
        )
    return table


def rehearsal_lines(rehearsal: Rehearsal, settings: configuration.Settings) -> list[str]:
    """The dry run's conclusion: what the next run would make, and whether it would ask."""
    now = [
        plural(rehearsal.total("now", kind), kind)
        for kind in ("draft", "reminder")
        if rehearsal.total("now", kind)
    ]
    lines = [f"a run now would make {' and '.join(now) if now else 'nothing'}"]
    if rehearsal.total("skipped"):
        lines.append(
            f"{rehearsal.total('skipped'):,} are history (events more than "
            f"{settings.config.history.cutoff} old when followupd learned of them): skipped, "
            "no note"
        )
    if rehearsal.burst:
        lines.append(
            f"that is more than history.confirm_over ({settings.config.history.confirm_over}) "
            "at once: a run waits for `followupd run --once --confirm`"
        )
    return lines


def print_rehearsal(rehearsal: Rehearsal, settings: configuration.Settings) -> None:
    """A dry run's table by rule, then its conclusion."""
    out.print(rehearsal_table(rehearsal))
    for line in rehearsal_lines(rehearsal, settings):
        out.print(line, markup=False)
