"""Folder sources, second slice of issue 16: a file is noticed within seconds (inotify, through
watchdog) and imported exactly once, whatever stops followupd on the way.

The daemon tests read their folder every hour, so only an inotify event can bring a file in
quickly; the figure itself (seconds from saved to drafted) is in bench/folder.py. The crash
tests stop a read at each step of a file's way (mid-file, its last row in, recorded whole, its
report half-written, written, moved) and read again as a new process would.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_daemon import drafts, env_for, followupd, start_daemon, stop
from test_sources import FOLDER, add_source, drop, rows

from conftest import SAMPLE_PATIENT_VALUES, wait_for
from followupd import config as configuration
from followupd import folder_watch
from followupd.folder_watch import (
    CLOSED,
    QUIET_NS,
    SETTLE_NS,
    SETTLING,
    Arrivals,
    FolderWatch,
    plan_read,
)
from followupd.models import ImportedFile, Referral
from followupd.sources import CUT_SHORT, WRITTEN_SINCE, Watcher
from followupd.store import Store, read_source_states

HOURLY = FOLDER.replace("every: 1 second", "every: 1 hour")


def log_of(home: Path) -> str:
    return (home / "daemon.log").read_text()


def imported(folder: Path, name: str) -> list[Path]:
    return sorted((folder / "imported").glob(f"*-{name}")) if (folder / "imported").exists() else []


def started(home: Path, mode: str = "mode=inotify") -> bool:
    text = log_of(home)
    return "event=started" in text and mode in text


# --- the daemon ----------------------------------------------------------------------------


def test_a_csv_saved_renamed_or_moved_into_the_folder_is_drafted_without_waiting(
    home, db_url, tmp_path
):
    """`every: 1 hour`: only inotify can bring these in; a reload that adds a folder watches
    it too."""
    add_source(home, HOURLY)
    inbox = home / "inbox"
    daemon = start_daemon(home, env_for(db_url))
    try:
        assert wait_for(lambda: started(home), 30), log_of(home)
        shown = followupd(home, "sources", env=env_for(db_url)).stdout
        assert "exports: new files noticed by inotify" in shown
        (inbox / "monday.csv").write_text(rows("R-1"), encoding="utf-8")  # saved in place
        assert wait_for(lambda: len(drafts(home)) == 1, 30), log_of(home)
        drop(inbox, "tuesday.csv", rows("R-2"))  # written as .tuesday.csv.part, renamed
        assert wait_for(lambda: len(drafts(home)) == 2, 30), log_of(home)
        elsewhere = tmp_path / "wednesday.csv"  # moved in from another folder
        elsewhere.write_text(rows("R-3"), encoding="utf-8")
        os.replace(elsewhere, inbox / "wednesday.csv")
        assert wait_for(lambda: len(drafts(home)) == 3, 30), log_of(home)
        for name in ("monday.csv", "tuesday.csv", "wednesday.csv"):
            [moved] = imported(inbox, name)
            assert moved.with_name(moved.name + ".report.txt").exists()
        assert list(inbox.glob("*.csv")) == []

        config = home / "followupd.yaml"  # SIGHUP with a second folder: watched at once
        later = HOURLY.replace("name: exports", "name: later").replace("path: inbox", "path: in2")
        config.write_text(config.read_text().replace("\nsources:\n", "\nsources:\n" + later, 1))
        daemon.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "source=later mode=inotify" in log_of(home), 30), log_of(home)
        (home / "in2" / "thursday.csv").write_text(rows("R-4"), encoding="utf-8")
        assert wait_for(lambda: len(drafts(home)) == 4, 30), log_of(home)
        log = log_of(home)
        assert not any(value in log for value in SAMPLE_PATIENT_VALUES)
        skipped = [line for line in log.splitlines() if "read_source" in line]
        assert skipped == [], skipped  # no wake-up of a read was skipped by the scheduler
        code, _ = stop(daemon)
        assert code == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()


def test_a_file_still_being_written_waits_for_its_close(home, db_url):
    add_source(home, HOURLY)
    inbox = home / "inbox"
    inbox.mkdir()
    daemon = start_daemon(home, env_for(db_url))
    try:
        assert wait_for(lambda: started(home), 30), log_of(home)
        text = rows(*(f"W-{i}" for i in range(40)))
        half = text.index("W-20,")
        with (inbox / "export.csv").open("w", encoding="utf-8") as writing:
            writing.write(text[:half])  # the export's first half, the file still open
            writing.flush()
            (inbox / "b.csv").write_text(rows("B-1"), encoding="utf-8")
            assert wait_for(lambda: imported(inbox, "b.csv"), 30), log_of(home)
            # quiet long enough that looks alone would call it complete, then another read
            written = (inbox / "export.csv").stat().st_mtime_ns
            assert wait_for(lambda: time.time_ns() - written > SETTLE_NS + 500_000_000, 30)
            (inbox / "c.csv").write_text(rows("C-1"), encoding="utf-8")
            assert wait_for(lambda: imported(inbox, "c.csv"), 30), log_of(home)
            assert (inbox / "export.csv").exists() and not imported(inbox, "export.csv")
            writing.write(text[half:])
        [moved] = wait_for(lambda: imported(inbox, "export.csv"), 30) or [None]
        assert moved is not None, log_of(home)
        report = moved.with_name(moved.name + ".report.txt").read_text()
        assert report.startswith("referrals: added 40, updated 0, unchanged 0, rejected 0")
        code, _ = stop(daemon)
        assert code == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()


def test_with_inotify_off_a_folder_is_looked_at_every_every(home, db_url):
    add_source(home, FOLDER)  # every: 1 second
    daemon = start_daemon(home, env_for(db_url, FOLLOWUPD_FOLDER_WATCH="poll"))
    try:
        assert wait_for(lambda: started(home, "FOLLOWUPD_FOLDER_WATCH=poll"), 30), log_of(home)
        shown = followupd(home, "sources", env=env_for(db_url)).stdout
        assert "new files noticed by polling (FOLLOWUPD_FOLDER_WATCH=poll)" in shown
        drop(home / "inbox", "friday.csv", rows("R-5"))
        assert wait_for(lambda: drafts(home), 30), log_of(home)
        code, _ = stop(daemon)
        assert code == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()


class Kept(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_when_inotify_cannot_start_folders_are_polled_and_the_log_says_why_once(home, monkeypatch):
    def refuse():
        raise OSError(errno.EMFILE, "inotify instance limit reached")

    add_source(home, FOLDER + FOLDER.replace("name: exports", "name: more"))
    monkeypatch.setattr(folder_watch, "_observer", refuse)
    watch = FolderWatch(lambda name: None)
    logger, kept = logging.getLogger("followupd"), Kept()
    logger.addHandler(kept)
    # an earlier test in this process may have set the level (logs.setup): warnings pass
    level, disabled = logger.level, logger.disabled
    logger.setLevel(logging.INFO)
    logger.disabled = False
    try:
        watch.start(configuration.load(home, environ={}))
    finally:
        logger.removeHandler(kept)
        logger.setLevel(level)
        logger.disabled = disabled
    warnings = [r for r in kept.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].msg == "folders are polled: inotify cannot be used"
    assert watch.modes == {
        "exports": "polling: the inotify instance limit is reached (fs.inotify.max_user_instances)",
        "more": "polling: the inotify instance limit is reached (fs.inotify.max_user_instances)",
    }
    assert watch.events_for("exports") is None
    watch.stop()


def test_a_reload_watches_again_only_when_the_folders_changed(home):
    add_source(home, FOLDER)
    woken: list[str] = []
    watch = FolderWatch(woken.append)
    settings = configuration.load(home, environ={})
    watch.start(settings)
    first = watch.observer
    assert first is not None and watch.modes == {"exports": "inotify"}
    watch.restart(settings)
    assert watch.observer is first
    config = home / "followupd.yaml"
    config.write_text(config.read_text().replace("path: inbox", "path: other"))
    watch.restart(configuration.load(home, environ={}))
    assert watch.observer is not first and not first.is_alive()
    (home / "other" / "x.csv").write_text("ref\n", encoding="utf-8")
    assert wait_for(lambda: woken == ["exports"], 10)
    (home / "other" / "y.csv").write_text("ref\n", encoding="utf-8")  # woken, not yet read
    watch.reading("exports")
    (home / "other" / "z.csv").write_text("ref\n", encoding="utf-8")
    assert wait_for(lambda: woken == ["exports", "exports"], 10)
    watch.stop()
    assert watch.observer is None


# --- when a file counts as complete --------------------------------------------------------

NOW = 1_000 * SETTLE_NS


def test_a_closed_file_goes_at_once_and_one_being_written_holds_back_no_other(tmp_path):
    events = Arrivals()
    written = NOW - QUIET_NS  # closed after its last write a quiet second ago
    now = {"a.csv": (5, written - 10), "b.csv": (7, written - 5), "c.csv": (9, written - 1)}
    events.closed("b.csv", (7, written - 5))
    events.writing("a.csv")
    plan = plan_read(tmp_path, now, {}, [], events, at_ns=NOW)
    assert [step.name for step in plan.imports] == ["b.csv"]  # a: being written; c: unknown
    assert plan.waiting == 1
    events.closed("c.csv", (9, written - 1))
    plan = plan_read(tmp_path, now, {}, [], events, at_ns=NOW)
    assert [step.name for step in plan.imports] == ["b.csv", "c.csv"]
    assert events.verdict("b.csv", (8, NOW), NOW) != CLOSED  # changed since its close


def test_a_file_closed_moments_after_its_last_write_settles_first(tmp_path):
    """An export written in steps (a header, closed; rows appended, closed again) is not
    read after its first step: closed, it still waits until untouched for QUIET_NS, and a
    look again is asked for."""
    events = Arrivals()
    now = {"export.csv": (30, NOW - QUIET_NS // 20)}  # closed 50 ms after it was written
    events.closed("export.csv", now["export.csv"])
    plan = plan_read(tmp_path, now, {}, [], events, at_ns=NOW)
    assert plan.imports == [] and plan.waiting == 1
    assert events.verdict("export.csv", now["export.csv"], NOW) == SETTLING
    later = NOW + QUIET_NS
    [step] = plan_read(tmp_path, now, {}, [], events, at_ns=later).imports
    assert step.name == "export.csv"


def test_a_newer_complete_file_waits_for_an_older_one_not_judged_yet(tmp_path):
    """Oldest first, always: the older file may be an earlier export of the same rows."""
    events = Arrivals()
    now = {"old.csv": (5, NOW - 3 * SETTLE_NS), "new.csv": (7, NOW - QUIET_NS)}
    events.closed("new.csv", (7, NOW - QUIET_NS))
    plan = plan_read(tmp_path, now, {}, [], events, at_ns=NOW)  # old.csv: one look so far
    assert plan.imports == [] and plan.waiting == 2
    plan = plan_read(tmp_path, now, dict(now), [], events, at_ns=NOW)
    assert [step.name for step in plan.imports] == ["old.csv", "new.csv"]


def test_without_events_a_file_must_look_the_same_twice(tmp_path):
    now = {"a.csv": (5, NOW - SETTLE_NS)}
    assert plan_read(tmp_path, now, {}, [], None, at_ns=NOW).imports == []
    assert plan_read(tmp_path, now, {"a.csv": (4, NOW - SETTLE_NS)}, [], None, at_ns=NOW).waiting
    [step] = plan_read(tmp_path, now, dict(now), [], None, at_ns=NOW).imports
    assert step.name == "a.csv"


# --- exactly once, wherever a read stops ---------------------------------------------------


class Crash(BaseException):
    """A read stopped dead at this point, as by SIGKILL (nothing after it runs)."""


def crash(*_args, **_kwargs):
    raise Crash


def crash_mid_file(monkeypatch):
    """After the first batch of rows is committed."""
    from followupd import intake

    real, calls = intake._write, []

    def write(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(intake, "_write", write)


def crash_writing_the_report(monkeypatch):
    """Halfway through writing the report: its temporary file left behind."""
    from followupd import sources

    def half(path, _data, **_kw):
        (path.parent / f".{path.name}.x1y2.tmp").write_text("referrals: add")
        raise Crash

    monkeypatch.setattr(sources, "write_private", half)


def crash_before_the_move(monkeypatch):
    """The report written, the file not moved yet."""
    real = os.replace

    def replace(source, target):
        if str(source).endswith(".tmp"):
            return real(source, target)
        raise Crash

    monkeypatch.setattr(os, "replace", replace)


CRASHES = {
    "mid-file": crash_mid_file,
    "after its last row, before it is recorded whole": (
        lambda mp: mp.setattr("followupd.sources.finish_import", crash)
    ),
    "recorded whole, before its report": (
        lambda mp: mp.setattr("followupd.sources.write_private", crash)
    ),
    "its report half-written": crash_writing_the_report,
    "its report written, before the move": crash_before_the_move,
    "moved, before it is recorded moved": (
        lambda mp: mp.setattr("followupd.sources.close_imports", crash)
    ),
}
IMPORTED_AGAIN = {"mid-file", "after its last row, before it is recorded whole"}

PLAIN = "ref,received_on,physician,physician_email,client_name,treatment_focus\n"


def plain_rows(refs, focus: str) -> str:
    day = time.strftime("%Y-%m-%d")
    line = "{ref},{day},Dr. Ann Lee,ann@lee.example,Test Client,{focus}\n"
    return PLAIN + "".join(line.format(ref=ref, day=day, focus=focus) for ref in refs)


def save_old(folder: Path, name: str, text: str, age_s: int) -> Path:
    """A file saved `age_s` seconds ago (so two looks find it complete at once)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    then = time.time_ns() - age_s * 1_000_000_000
    os.utime(path, ns=(then, then))
    return path


def read_as_a_new_process(home: Path, db_url: str):
    """What a daemon started now reads: two looks at the folder, then the read."""
    settings = configuration.load(home, environ={"FOLLOWUPD_DATABASE_URL": db_url})
    store = Store(settings.database_url)
    [source] = settings.config.sources
    watcher = Watcher(settings, store)
    watcher.look_only(source)
    try:
        return watcher.read(source)
    finally:
        store.close()


@pytest.mark.parametrize("point", list(CRASHES))
def test_a_read_stopped_anywhere_imports_each_file_once(home, db_url, monkeypatch, point):
    add_source(home, FOLDER.split("    columns:")[0])
    inbox = home / "inbox"
    first = [f"R-{i}" for i in range(1500)]  # two batches: a crash can land between them
    save_old(inbox, "a.csv", plain_rows(first, "from a"), age_s=60)
    save_old(inbox, "b.csv", plain_rows(["R-1", "R-2"], "from b"), age_s=50)  # later: wins
    with monkeypatch.context() as patched:
        CRASHES[point](patched)
        with pytest.raises(Crash):
            read_as_a_new_process(home, db_url)
    again = read_as_a_new_process(home, db_url)

    moved_before = point == "moved, before it is recorded moved"  # a.csv: only its record
    assert [f.name for f in again.files] == (["b.csv"] if moved_before else ["a.csv", "b.csv"])
    assert not any(f.refused for f in again.files)
    assert list(inbox.glob("*.csv")) == [] and not (inbox / "rejected").exists()
    names = sorted(p.name for p in (inbox / "imported").iterdir())
    assert len(names) == 4 and not [n for n in names if n.startswith(".")], names
    [a] = imported(inbox, "a.csv")
    report = a.with_name(a.name + ".report.txt").read_text()
    if point in IMPORTED_AGAIN:  # cut short: imported again whole, and the report says so
        assert f"note: {CUT_SHORT}" in report
        assert "added 500, updated 0, unchanged 1000" in report or "unchanged 1500" in report
    else:  # recorded whole: moved with the report of its one import, never imported again
        assert report.startswith("referrals: added 1500, updated 0, unchanged 0, rejected 0")
    store = Store(db_url)
    with store.session() as session:
        focus = dict(session.execute(sa.select(Referral.ref, Referral.treatment_focus)).all())
        files = session.execute(sa.select(ImportedFile)).scalars().all()
        totals = read_source_states(session)["exports"]["totals"]
    store.close()
    assert len(focus) == 1500 and focus["R-1"] == focus["R-2"] == "from b"
    assert focus["R-3"] == "from a"
    assert sorted(f.name for f in files) == ["a.csv", "b.csv"]
    assert all(f.moved_at is not None for f in files)
    assert totals["files"] == 2  # each counted once, in the transaction that recorded it
    assert json.loads(files[0].report)["counts"]["rejected"] == 0


def test_a_file_refused_and_stopped_before_its_move_goes_to_rejected_once(
    home, db_url, monkeypatch
):
    add_source(home, FOLDER.split("    columns:")[0])
    save_old(home / "inbox", "notes.csv", "Avery Quinlan,1984-03-09\n", age_s=60)
    with monkeypatch.context() as patched:
        crash_before_the_move(patched)
        with pytest.raises(Crash):
            read_as_a_new_process(home, db_url)
    [outcome] = read_as_a_new_process(home, db_url).files
    assert outcome.refused.startswith("notes.csv: line 1 is not a header row")
    [moved] = (home / "inbox" / "rejected").glob("*-notes.csv")
    assert sorted(p.name for p in moved.parent.iterdir()) == [
        moved.name,
        moved.name + ".report.txt",
    ]
    assert "Avery" not in moved.with_name(moved.name + ".report.txt").read_text()


def test_a_file_changed_after_an_import_cut_short_is_imported_as_the_new_file(
    home, db_url, monkeypatch
):
    add_source(home, FOLDER.split("    columns:")[0])
    inbox = home / "inbox"
    save_old(inbox, "a.csv", plain_rows([f"R-{i}" for i in range(1500)], "first"), age_s=60)
    with monkeypatch.context() as patched:
        crash_mid_file(patched)
        with pytest.raises(Crash):
            read_as_a_new_process(home, db_url)
    save_old(inbox, "a.csv", plain_rows(["R-1"], "second"), age_s=30)
    [outcome] = read_as_a_new_process(home, db_url).files
    assert CUT_SHORT not in outcome.report.notices and outcome.report.counts.updated == 1
    store = Store(db_url)
    with store.session() as session:
        states = session.execute(sa.select(ImportedFile.state, ImportedFile.moved_at)).all()
    store.close()
    assert len(states) == 2 and all(moved is not None for _, moved in states)


def test_rows_appended_while_a_file_is_read_are_not_moved_away_unread(home, db_url, monkeypatch):
    """A writer still at it appends rows during the import: the file is not moved (that
    would take the new rows away unread); the next read imports all of it."""
    import followupd.sources as sources

    add_source(home, FOLDER.split("    columns:")[0])
    path = save_old(home / "inbox", "export.csv", plain_rows(["W-1", "W-2"], "first"), age_s=60)
    real = sources.import_csv

    def import_then_append(*args, **kwargs):
        report = real(*args, **kwargs)
        with path.open("a", encoding="utf-8") as more:
            more.write(plain_rows(["W-3"], "later").split("\n", 1)[1])
        return report

    monkeypatch.setattr(sources, "import_csv", import_then_append)
    [first] = read_as_a_new_process(home, db_url).files
    assert first.moved_to is None and path.exists()
    assert WRITTEN_SINCE in first.report.notices
    monkeypatch.setattr(sources, "import_csv", real)
    os.utime(path, ns=(time.time_ns() - 60 * 10**9,) * 2)  # untouched since, a minute ago
    [second] = read_as_a_new_process(home, db_url).files
    assert second.moved_to is not None and not path.exists()
    assert "added 1, updated 0, unchanged 2" in str(second.report.counts)
