"""The status tab of a Google Sheet source (`write_status: true`): what followupd did with
each referral read from the sheet, written back into the same spreadsheet.

The tab is named `followupd`, one row per referral read from the source (oldest received
first; one whose row has left the sheet stays while a note of it is still due or held, then
leaves the tab), after a header row:

    ref | received | <one column per rule> | why held

A rule's cell says where that note stands and since when: `due 2026-12-01`, `drafted
2026-11-24`, `reminded 2026-11-24`, `sent 2026-11-25` (the therapist sent the draft),
`held since 2026-11-24`, `failed 2026-11-24`... (dates in the practice's zone). `why held`
gives each held note's reason, followupd's own text (`no release of information on file for
referral R-12`). Refs, dates and states only: the rows are built from the store's
`status_lines`, which never selects a patient column.

Written with `valueInputOption=RAW`, so a ref like `=IMPORTXML(...)` stays text; the tab is
made when it is missing (a lost answer to that, retried into "already exists", is success),
its grid grown before a longer write, and rows left by a longer earlier write cleared. A
write is skipped when the rows are those last written (a digest in the source's state). A
failed write is recorded as the source's `status_error` and logged, never raised: the import
it follows is done and stays done.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from followupd.config import Settings, Source
from followupd.logs import Log
from followupd.models import State
from followupd.store import (
    NoteLine,
    StatusLine,
    Store,
    read_source_states,
    status_lines,
    write_source_state,
)

log = Log()

TAB = "followupd"
WHY = "why held"
PROBLEM = "status tab: "  # how a failed write is shown among the source's problems
AGAIN = "written again at the next read"


# --- the rows (pure) -------------------------------------------------------------------------


def _day(moment: datetime, zone: tzinfo) -> str:
    """A ledger time as the practice's calendar date (ISO: the same in every locale)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(zone).date().isoformat()


def cell(note: NoteLine, zone: tzinfo) -> str:
    """Where one note stands, in words a therapist reads at a glance, and since when."""
    since = _day(note.changed_at, zone)
    made = "reminded" if note.kind == "reminder" else "drafted"
    words = {
        State.planned: f"due {_day(note.due_at, zone)}",
        State.held: f"held since {since}",
        State.claimed: "being made",
        State.waiting: "being made (tried again soon)",
        State.done: f"{made} {since}",
        State.sent: f"sent {since}",
        State.deleted: f"deleted {since}",
        State.gone: f"left Drafts {since} (sent or deleted)",
        State.withdraw: "being withdrawn",
        State.withdrawing: "being withdrawn",
        State.withdrawn: f"withdrawn {since}",
        State.cancelled: f"cancelled {since}",
        State.skipped: "skipped (history)",
        State.failed: f"failed {since} (see followupd status)",
    }
    return words.get(note.state, note.state)


def why_held(line: StatusLine) -> str:
    """The held notes' reasons, each after its rule: followupd's own words, never a value."""
    return "; ".join(
        f"{note.rule}: {note.reason or 'held'}" for note in line.notes if note.state == State.held
    )


def columns(lines: list[StatusLine], rules: list[str]) -> list[str]:
    """The rules that have a note among these referrals: in followupd.yaml's order, then any
    rule no longer configured, by name."""
    used = {note.rule for line in lines for note in line.notes}
    return [r for r in rules if r in used] + sorted(used - set(rules))


PENDING = (State.planned, State.held)


def shown(line: StatusLine) -> bool:
    """A referral in the sheet, or gone from it with a note still due or held (the row says
    why it waits); gone with nothing waiting, it has nothing to tell."""
    return not line.gone or any(note.state in PENDING for note in line.notes)


def build_rows(lines: list[StatusLine], rules: list[str], zone: tzinfo) -> list[list[str]]:
    """The tab's rows: the header, then one row per referral (every cell text)."""
    lines = [line for line in lines if shown(line)]
    shown_rules = columns(lines, rules)
    rows = [["ref", "received", *shown_rules, WHY]]
    for line in lines:
        by_rule = {note.rule: cell(note, zone) for note in line.notes}
        rows.append(
            [
                line.ref,
                line.received_on.isoformat(),
                *(by_rule.get(rule, "") for rule in shown_rules),
                why_held(line),
            ]
        )
    return rows


def digest(spreadsheet: str, rows: list[list[str]]) -> str:
    """What was written where, in a few bytes: the next write is skipped when it matches."""
    text = json.dumps([spreadsheet, TAB, rows], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def padded(rows: list[list[str]], before: tuple[int, int]) -> list[list[str]]:
    """The rows as one rectangle that also covers what the last write left (`before`: its
    rows and columns): "" clears a cell, so one update leaves nothing stale."""
    tall = max(len(rows), before[0])
    wide = max(max(len(row) for row in rows), before[1])
    return [row + [""] * (wide - len(row)) for row in rows] + [[""] * wide] * (tall - len(rows))


# --- writing it --------------------------------------------------------------------------------


class StatusProblem(Exception):
    """The tab cannot be written now; the message says what to do, and names no value."""


@dataclass(frozen=True)
class Tab:
    """The status tab as Google describes it."""

    sheet_id: int
    title: str
    rows: int
    columns: int


def write_status(settings: Settings, store: Store, source: Source) -> None:
    """Bring the source's status tab in step with the ledger, after a read of the sheet;
    a failure is kept in the source's state and logged, never raised."""
    if source.table != "referrals":
        return  # refs are referrals': a visits source has no status tab
    with store.session() as session:
        lines = status_lines(session, source.name)
        state = read_source_states(session).get(source.name, {})
    rows = build_rows(
        lines, [rule.name for rule in settings.config.rules], settings.config.practice.zone
    )
    written = digest(source.spreadsheet or "", rows)
    if state.get("status_digest") == written and not state.get("status_error"):
        log.debug("status tab unchanged", source=source.name)
        return
    before = _written_before(state, source.spreadsheet or "")
    ours = state.get("status_sheet_id") if before is not None else None
    try:
        sheet_id = _write(settings, source.spreadsheet or "", rows, before, ours)
    except StatusProblem as exc:
        _remember(store, source, status_error=str(exc))
        log.warning("status tab not written", source=source.name, error=str(exc))
        return
    except Exception as exc:  # noqa: BLE001 -- the tab must never fail the read it follows
        why = f"followupd could not write it ({type(exc).__name__}); {AGAIN}"
        _remember(store, source, status_error=why)
        log.error("status tab not written", source=source.name, error=type(exc).__name__)
        return
    _remember(
        store,
        source,
        status_error=None,
        status_digest=written,
        status_spreadsheet=source.spreadsheet,
        status_sheet_id=sheet_id,
        status_rows=len(rows),
        status_columns=len(rows[0]),
        status_written=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    log.info("status tab written", source=source.name, rows=len(rows) - 1)


def _written_before(state: dict, spreadsheet: str) -> tuple[int, int] | None:
    """(rows, columns) the last write to this spreadsheet's tab covered; None: not known."""
    if state.get("status_spreadsheet") != spreadsheet or "status_rows" not in state:
        return None
    return int(state["status_rows"]), int(state["status_columns"])


def _remember(store: Store, source: Source, **status: Any) -> None:
    """Keep the write's outcome in the source's state; a failure also among its problems,
    which `followupd sources` shows."""
    with store.session() as session:
        state = read_source_states(session).get(source.name, {})
        problems = [p for p in state.get("problems", []) if not p.startswith(PROBLEM)]
        if status.get("status_error"):
            problems.append(PROBLEM + status["status_error"])
        state.update(status, problems=problems)
        write_source_state(session, source.name, state)


def _write(
    settings: Settings,
    spreadsheet: str,
    rows: list[list[str]],
    before: tuple[int, int] | None,
    ours: int | None = None,
) -> int:
    """Make the tab if need be, grow its grid, and write the rows over what was there; the
    tab's id. A tab of that name followupd did not make (`ours`) is never written over."""
    from followupd.delivery.googleapi import (
        CredentialsProblem,
        Transport,
        build_service,
        load_credentials,
    )

    google = settings.config.google
    try:
        credentials, token = load_credentials(settings)
    except CredentialsProblem as exc:
        raise StatusProblem(str(exc)) from None
    transport = Transport(credentials, google.timeout)
    try:
        sheets = build_service("sheets", "v4", transport, google.api_endpoint).spreadsheets()
        writer = _Writer(sheets, spreadsheet, bool(google.service_account_file), settings)
        tab = writer.find_tab()
        if tab is None:
            tab, before = writer.add_tab(), (0, 0)
        elif ours is None or tab.sheet_id != ours:  # someone's own tab: never cleared
            raise StatusProblem(
                f"the spreadsheet has a tab named {TAB} that followupd did not make: rename "
                "or delete that tab, and followupd makes its own at the next read"
            )
        grid = padded(rows, before)
        writer.grow(tab, len(grid), len(grid[0]))
        writer.update(tab, grid)
        return tab.sheet_id
    finally:
        if token is not None:
            token.save_if_refreshed()
        transport.close()


def _quoted(title: str) -> str:
    """A tab title as A1 notation quotes it."""
    return "'" + title.replace("'", "''") + "'"


class _Writer:
    """The Sheets calls of one status write, each sent once (followupd's transport never
    re-sends), their failures turned into what the person can do."""

    def __init__(self, sheets: Any, spreadsheet: str, service_account: bool, settings: Settings):
        self.sheets = sheets
        self.spreadsheet = spreadsheet
        self.service_account = service_account
        self.settings = settings

    def find_tab(self) -> Tab | None:
        """The status tab (titles are unique regardless of case), or None."""
        fields = "sheets.properties(sheetId,title,gridProperties(rowCount,columnCount))"
        answer = self._send(self.sheets.get(spreadsheetId=self.spreadsheet, fields=fields))
        for sheet in answer.get("sheets", []):
            properties = sheet.get("properties", {})
            if str(properties.get("title", "")).casefold() == TAB.casefold():
                return _tab(properties)
        return None

    def add_tab(self) -> Tab:
        """Add the tab; an answer lost on the way is asked once more, and "already exists"
        then means the first request did it (a tab's title is its identity)."""
        try:
            answer = self._add()
        except _NoAnswer:
            answer = self._add()
        if answer is not None:
            return _tab(answer["replies"][0]["addSheet"]["properties"])
        found = self.find_tab()
        if found is None:
            raise StatusProblem(f"the tab {TAB} could not be made; {AGAIN}")
        return found

    def _add(self) -> dict | None:
        """One addSheet: its answer, or None when the tab already exists."""
        body = {"requests": [{"addSheet": {"properties": {"title": TAB}}}]}
        request = self.sheets.batchUpdate(spreadsheetId=self.spreadsheet, body=body)
        return self._send(request, adding=True)

    def clear(self, tab: Tab) -> None:
        """Empty the whole tab (what an earlier write left there is not known)."""
        self._send(
            self.sheets.values().clear(
                spreadsheetId=self.spreadsheet, range=_quoted(tab.title), body={}
            )
        )

    def grow(self, tab: Tab, rows: int, columns: int) -> None:
        """Add rows and columns to the grid when the write needs more than it has (Google
        refuses a write past the grid)."""
        more = [
            {"appendDimension": {"sheetId": tab.sheet_id, "dimension": dimension, "length": n}}
            for dimension, n in (("ROWS", rows - tab.rows), ("COLUMNS", columns - tab.columns))
            if n > 0
        ]
        if more:
            body = {"requests": more}
            self._send(self.sheets.batchUpdate(spreadsheetId=self.spreadsheet, body=body))

    def update(self, tab: Tab, grid: list[list[str]]) -> None:
        """Write the rows from A1 as they are (RAW: text stays text, never a formula)."""
        self._send(
            self.sheets.values().update(
                spreadsheetId=self.spreadsheet,
                range=f"{_quoted(tab.title)}!A1",
                valueInputOption="RAW",
                body={"majorDimension": "ROWS", "values": grid},
            )
        )

    def _send(self, request: Any, adding: bool = False) -> Any:
        """One call's answer; a StatusProblem saying what to do (or, for `adding`, None for
        "already exists" and _NoAnswer for a lost answer)."""
        from googleapiclient.errors import HttpError

        from followupd.delivery.googleapi import CLASSIFIED, call, classify
        from followupd.sources import sheets_pace

        kind = "read" if request.method == "GET" else "write"  # Google counts them apart
        sheets_pace(self.settings, kind).take(1)
        try:
            return call(request)
        except HttpError as exc:
            if adding and exc.resp.status == 400 and "already exists" in str(exc.reason):
                return None
            raise StatusProblem(self._refused(exc)) from None
        except CLASSIFIED as exc:
            failure = classify(exc)
            if adding and failure.in_flight:
                raise _NoAnswer(f"{failure.reason}; {AGAIN}") from None
            raise StatusProblem(f"{failure.reason}; {AGAIN}") from None

    def _refused(self, exc: Any) -> str:
        """Google's refusal, as what the person who keeps the sheet can do about it."""
        status = exc.resp.status
        text = f"{exc.reason} {exc.resp.get('www-authenticate', '')}".lower()
        if status == 403 and "insufficient" in text:
            if self.service_account:
                return (
                    "write_status needs the spreadsheets scope: grant it to the service "
                    "account's client id in the Admin console (domain-wide delegation)"
                )
            return (
                "run `followupd auth` again: write_status needs the spreadsheets scope (read "
                "and write), and the sign-in allows reading only"
            )
        if status == 429 or (status == 403 and "rate" in text):
            return f"Google asked to slow down; {AGAIN}"
        if status == 403:
            return (
                "no edit access: share the spreadsheet with the Google account followupd "
                f"signs in as, as an editor (write_status keeps a tab named {TAB} in it)"
            )
        if status == 404:
            return "no such spreadsheet: check the id in followupd.yaml"
        if status >= 500:
            return f"Google answered {status}; {AGAIN}"
        return f"Google refused the write ({status}: {str(exc.reason)[:200]})"


class _NoAnswer(StatusProblem):
    """A call whose answer was lost: Google may have done it."""


def _tab(properties: dict) -> Tab:
    """A tab from Google's SheetProperties (its id and grid are what a write needs)."""
    grid = properties.get("gridProperties", {})
    return Tab(
        int(properties.get("sheetId", 0)),
        str(properties.get("title", TAB)),
        int(grid.get("rowCount", 0)),
        int(grid.get("columnCount", 0)),
    )
