"""A Google Sheet source: one read of a 5,000-row intake sheet through the Sheets API (the
test server, tests/google_server.py) and its upsert, against the floor of parsing the same
JSON answer; then the same read again, every row unchanged (what each `every` costs).

The floor is `json.loads` of the exact bytes the server answers for that range: what any
reader of the sheet must at least do. The figures show what the HTTP round trip, the
discovery-built client, the date reading and the one intake path add to it.
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bench.common import ROOT, Row
from bench.delivery import TOKEN, _google_server

ROWS_FULL = 5_000
ROWS_QUICK = 1_000
FLOOR_REPEATS = 5
SHEET_ID = "1BenchSheetAbCdEfGhIjKlMnOpQrStUv"
HEADER = ["Referral #", "Date received", "physician", "physician_email", "Client", "release"]
SOURCE = f"""  - name: intake-sheet
    kind: google_sheet
    table: referrals
    spreadsheet: {SHEET_ID}
    range: "Referrals!A1:F"
    every: 5 minutes
    columns:
      ref: "Referral #"
      received_on: "Date received"
      client_name: "Client"
      release_on_file: "release"
"""


def sheet_rows(count: int) -> list[list[Any]]:
    """Synthetic rows only; received dates are date cells, shown as en_US writes them."""
    first = date(2025, 1, 1)
    return [HEADER] + [
        [
            f"S-{i:05d}",
            first + timedelta(days=i % 600),
            f"Dr. Test {i % 300}",
            f"dr{i % 300}@clinic.example",
            f"Test Client {i}",
            "yes" if i % 2 else "no",
        ]
        for i in range(1, count + 1)
    ]


def _home(scratch: Path, server: Any) -> Any:
    from followupd import config as configuration

    text = (ROOT / "config" / "followupd.yaml").read_text(encoding="utf-8")
    if "\nsources: []\n" not in text:
        raise RuntimeError("the shipped followupd.yaml no longer has `sources: []`")
    text = text.replace("\nsources: []\n", "\nsources:\n" + SOURCE, 1)
    (scratch / "followupd.yaml").write_text(text, encoding="utf-8")
    (scratch / "google-token.json").write_text(json.dumps(TOKEN), encoding="utf-8")
    return configuration.load(
        scratch,
        environ={
            "FOLLOWUPD_GOOGLE_API_ENDPOINT": server.sheets_endpoint,
            "FOLLOWUPD_DATABASE_URL": f"sqlite:///{scratch}/followupd.sqlite3",
        },
    )


def _floor(server: Any, rows: int) -> float:
    """Best of a few json.loads over the answer's own bytes (fetched once, untimed)."""
    url = (
        f"{server.sheets_endpoint.rstrip('/')}/v4/spreadsheets/{SHEET_ID}/values/"
        "Referrals!A1:F?majorDimension=ROWS&valueRenderOption=FORMATTED_VALUE"
    )
    request = urllib.request.Request(url, headers={"Authorization": "Bearer test-token"})
    with urllib.request.urlopen(request) as answer:  # the local test server
        body = answer.read()
    best = float("inf")
    for _ in range(FLOOR_REPEATS):
        start = time.perf_counter()
        parsed = json.loads(body)
        best = min(best, time.perf_counter() - start)
    if len(parsed["values"]) != rows + 1:
        raise RuntimeError(f"the floor read {len(parsed['values'])} rows, not {rows + 1}")
    return best


def _read(settings: Any, store: Any, expect: str, rows: int) -> float:
    """One read of the source as the daemon makes it; refuses to report a wrong result."""
    from followupd.sources import read_sheet

    source = settings.config.sources[0]
    start = time.perf_counter()
    done = read_sheet(settings, store, source)
    seconds = time.perf_counter() - start
    if done.error or not done.files:
        raise RuntimeError(f"the sheet read failed: {done.error}")
    counts = done.files[0].report.counts
    if getattr(counts, expect) != rows or counts.rejected:
        raise RuntimeError(f"expected {expect} {rows}, got {counts}")
    return seconds


def _row_to_draft(settings: Any, store: Any, server: Any) -> tuple[float, int]:
    """A referral row added to the sheet, then the daemon's next read and the tick it
    wakes: the seconds after the wait for that read (a row is drafted within one `every`
    plus this), and the drafts made (must be 1: the older rows are history)."""
    from followupd.engine import Engine
    from followupd.sources import read_sheet

    week_ago = date.today() - timedelta(days=7)
    row = ["S-NEW", week_ago, "Dr. Test 1", "dr1@clinic.example", "Test Client", "yes"]
    engine = Engine(settings, store)
    try:
        engine.tick()  # the sheet's rows planned (history, skipped): the daemon's steady state
        server.append_row(SHEET_ID, "Referrals", row)
        start = time.perf_counter()
        done = read_sheet(settings, store, settings.config.sources[0])
        report = engine.tick()
        seconds = time.perf_counter() - start
    finally:
        engine.close()
    if done.error:
        raise RuntimeError(f"the sheet read failed: {done.error}")
    return seconds, len(report.delivered)


def run(quick: bool) -> list[Row]:
    from followupd.store import Store

    rows = ROWS_QUICK if quick else ROWS_FULL
    server = _google_server().GoogleServer().start()
    try:
        server.put_sheet(SHEET_ID, "Referrals", sheet_rows(rows), locale="en_US")
        floor = _floor(server, rows)
        with tempfile.TemporaryDirectory(prefix="followupd-bench-") as scratch:
            settings = _home(Path(scratch), server)
            store = Store(settings.database_url)
            try:
                first = _read(settings, store, "added", rows)
                again = _read(settings, store, "unchanged", rows)
                latency, drafted = _row_to_draft(settings, store, server)
            finally:
                store.close()
    finally:
        server.stop()
    if drafted != 1:
        raise RuntimeError(f"the new row made {drafted} drafts, not 1")
    return [
        Row(f"sheet {rows:,} rows: first read + upsert", first, "s", floor, "s"),
        Row(f"sheet {rows:,} rows: read again, unchanged", again, "s", floor, "s"),
        Row(f"sheet {rows:,} rows: rows/s (first)", rows / first, "rows/s"),
        Row(f"sheet {rows:,} rows: new row read to draft (+ every)", latency, "s"),
    ]
