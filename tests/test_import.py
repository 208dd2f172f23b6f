"""CSV import: what a practice's spreadsheet export does, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io

import pytest
import sqlalchemy as sa

from conftest import SAMPLE, SAMPLE_PATIENT_VALUES
from followupd.models import Physician, Referral, Release, Visit
from followupd.records import REFERRAL_COLUMNS
from followupd.store import Store


def referral_row(ref: str, /, **changes: str) -> dict[str, str]:
    row = {
        "ref": ref,
        "received_on": "2026-11-16",
        "physician": "Dr. Miriam Okafor",
        "physician_email": "m.okafor@lakeside-im.example",
        "physician_fax": "",
        "specialty": "internal medicine",
        "practice": "Lakeside Internal Medicine",
        "client_name": "Harriet Vandermolen",
        "client_dob": "1970-05-04",
        "presenting_problem": "Insomnia with nightmares",
        "treatment_focus": "CBT-I",
        "release_on_file": "yes",
        "closed_on": "",
        "closing_summary": "",
    }
    row.update(changes)
    return row


def write_csv(path, rows, columns=REFERRAL_COLUMNS):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def referrals(db_url):
    store = Store(db_url)
    try:
        with store.session() as session:
            return {r.ref: r for r in session.execute(sa.select(Referral)).scalars()}
    finally:
        store.close()


def test_sample_file_imports(cli, db_url):
    ran = cli("import", "referrals", str(SAMPLE / "referrals.csv"))
    assert ran.code == 0, ran.stderr
    assert "added 3, updated 0, unchanged 0, rejected 0" in ran.stdout
    rows = referrals(db_url)
    assert rows["R-101"].release_on_file is True and rows["R-101"].release_on is not None
    assert rows["R-102"].release_on_file is False and rows["R-102"].release_on is None
    assert str(rows["R-103"].closed_on) == "2026-11-13"
    assert rows["R-101"].physician_id == rows["R-103"].physician_id  # one physician, not two


def test_same_file_twice_adds_nothing_and_a_changed_row_updates(cli, db_url, tmp_path):
    rows = [referral_row(f"R-{i}") for i in range(5)]
    path = write_csv(tmp_path / "r.csv", rows)
    assert "added 5, updated 0, unchanged 0" in cli("import", "referrals", str(path)).stdout
    second = cli("import", "referrals", str(path))
    assert "added 0, updated 0, unchanged 5, rejected 0" in second.stdout
    rows[2]["treatment_focus"] = "Imagery rehearsal therapy"
    write_csv(path, rows)
    third = cli("import", "referrals", str(path))
    assert "added 0, updated 1, unchanged 4, rejected 0" in third.stdout
    stored = referrals(db_url)
    assert len(stored) == 5
    assert stored["R-2"].treatment_focus == "Imagery rehearsal therapy"


def test_missing_required_column_refuses_the_whole_file(cli, db_url, tmp_path):
    columns = [c for c in REFERRAL_COLUMNS if c != "received_on"]
    path = write_csv(tmp_path / "r.csv", [referral_row("R-1")], columns)
    ran = cli("import", "referrals", str(path))
    assert ran.code == 1
    assert "received_on" in ran.stderr and "missing" in ran.stderr
    assert referrals(db_url) == {}


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("received_on", "16/11/2026", "is not a date"),
        ("received_on", "2026-02-30", "is not a calendar date"),
        ("release_on_file", "perhaps", "must be yes or no"),
        ("physician_email", "okafor at lakeside", "is not an email address"),
        ("client_name", "Harriet\nVandermolen", "line break"),
        ("ref", "", "is empty"),
        ("client_dob", "2030-01-01", "not a plausible birth date"),
    ],
)
def test_bad_row_is_rejected_by_line_and_column_and_the_rest_go_in(
    cli, db_url, tmp_path, column, value, expected
):
    rows = [referral_row("R-1"), referral_row("R-2", **{column: value}), referral_row("R-3")]
    path = write_csv(tmp_path / "r.csv", rows)
    ran = cli("import", "referrals", str(path))
    assert ran.code == 1
    assert f"line 3, column {column}: " in ran.stderr  # header is line 1
    assert expected in ran.stderr
    assert "added 2, updated 0, unchanged 0, rejected 1" in ran.stdout
    for patient_value in ("Harriet", "Vandermolen", "1970-05-04", "Insomnia", value):
        if patient_value and len(patient_value) > 3:
            assert patient_value not in ran.stderr + ran.stdout
    assert set(referrals(db_url)) == {"R-1", "R-3"}


def test_line_numbers_count_quoted_line_breaks(cli, db_url, tmp_path):
    rows = [
        referral_row("R-1", presenting_problem="Line one\nline two\nline three"),
        referral_row("R-2", received_on="yesterday"),
    ]
    path = write_csv(tmp_path / "r.csv", rows)
    ran = cli("import", "referrals", str(path))
    assert "line 5, column received_on" in ran.stderr


def test_not_utf8_is_refused_before_anything_is_written(cli, db_url, tmp_path):
    good = write_csv(tmp_path / "r.csv", [referral_row("R-1"), referral_row("R-2")])
    data = good.read_bytes() + "R-3,2026-11-16,Dr. Müller,,,,,Zoë,,,,no,,\n".encode("cp1252")
    good.write_bytes(data)
    ran = cli("import", "referrals", str(good))
    assert ran.code == 1
    assert "not UTF-8" in ran.stderr and "line 4" in ran.stderr
    assert referrals(db_url) == {}


def test_excel_utf8_with_bom_imports(cli, db_url, tmp_path):
    path = write_csv(tmp_path / "r.csv", [referral_row("R-1", client_name="Zoë Ångström")])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    ran = cli("import", "referrals", str(path))
    assert ran.code == 0, ran.stderr
    assert referrals(db_url)["R-1"].client_name == "Zoë Ångström"


def test_empty_file_and_header_only(cli, db_url, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    ran = cli("import", "referrals", str(empty))
    assert ran.code == 1 and "empty" in ran.stderr
    header_only = write_csv(tmp_path / "header.csv", [])
    ran = cli("import", "referrals", str(header_only))
    assert ran.code == 0
    assert "added 0, updated 0, unchanged 0, rejected 0" in ran.stdout


def test_missing_file_is_a_clear_message(cli, db_url, tmp_path):
    ran = cli("import", "referrals", str(tmp_path / "nope.csv"))
    assert ran.code == 1 and "no such file" in ran.stderr


def test_standard_input(cli, db_url):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REFERRAL_COLUMNS)
    writer.writeheader()
    writer.writerow(referral_row("R-9"))
    ran = cli("import", "referrals", "-", input=buffer.getvalue())
    assert ran.code == 0, ran.stderr
    assert "added 1" in ran.stdout


def test_unknown_columns_are_named_and_ignored(cli, db_url, tmp_path):
    columns = [*REFERRAL_COLUMNS, "insurance"]
    rows = [dict(referral_row("R-1"), insurance="Blue Plan 123")]
    ran = cli("import", "referrals", str(write_csv(tmp_path / "r.csv", rows, columns)))
    assert ran.code == 0
    assert "ignored columns" in ran.stderr and "insurance" in ran.stderr


def test_a_column_absent_from_the_file_is_left_alone(cli, db_url, tmp_path):
    cli("import", "referrals", str(write_csv(tmp_path / "a.csv", [referral_row("R-1")])))
    partial = [c for c in REFERRAL_COLUMNS if c not in ("presenting_problem", "client_dob")]
    ran = cli(
        "import", "referrals", str(write_csv(tmp_path / "b.csv", [referral_row("R-1")], partial))
    )
    assert "unchanged 1" in ran.stdout
    row = referrals(db_url)["R-1"]
    assert row.presenting_problem == "Insomnia with nightmares"
    assert str(row.client_dob) == "1970-05-04"


def test_release_revoked_on_reimport_is_kept_in_its_history(cli, db_url, tmp_path):
    cli("import", "referrals", str(write_csv(tmp_path / "a.csv", [referral_row("R-1")])))
    signed = referrals(db_url)["R-1"].release_on
    assert signed is not None
    ran = cli(
        "import",
        "referrals",
        str(write_csv(tmp_path / "b.csv", [referral_row("R-1", release_on_file="no")])),
    )
    assert (
        "updated 1" in ran.stdout and "line 2: the release for the physician revoked" in ran.stdout
    )
    row = referrals(db_url)["R-1"]
    assert row.release_on_file is False and row.release_on == signed  # recorded, then revoked
    store = Store(db_url)
    with store.session() as session:
        [release] = session.execute(sa.select(Release)).scalars()
    store.close()
    assert (release.granted_by, release.revoked_by) == ("import", "import")
    assert release.revoked_on is not None


def test_many_rows_span_batches_and_stay_idempotent(cli, db_url, tmp_path):
    rows = [referral_row(f"R-{i:05d}", physician=f"Dr. P{i % 37}") for i in range(2500)]
    path = write_csv(tmp_path / "r.csv", rows)
    assert "added 2500" in cli("import", "referrals", str(path)).stdout
    assert "unchanged 2500" in cli("import", "referrals", str(path)).stdout
    store = Store(db_url)
    with store.session() as session:
        assert session.execute(sa.select(sa.func.count(Physician.id))).scalar() == 37
    store.close()


def test_visits_import_idempotently_by_date_practice_and_physician(cli, db_url, tmp_path):
    path = SAMPLE / "visits.csv"
    assert (
        "added 2, updated 0, unchanged 0, rejected 0" in cli("import", "visits", str(path)).stdout
    )
    assert "added 0, updated 0, unchanged 2" in cli("import", "visits", str(path)).stdout
    changed = tmp_path / "v.csv"
    changed.write_text(path.read_text().replace(",10,5,Met", ",20,5,Met"))
    assert "added 0, updated 1, unchanged 1" in cli("import", "visits", str(changed)).stdout
    store = Store(db_url)
    with store.session() as session:
        cards = sorted(v.cards_left for v in session.execute(sa.select(Visit)).scalars())
    store.close()
    assert cards == [10, 20]


def test_bad_visit_count_is_rejected(cli, db_url, tmp_path):
    path = tmp_path / "v.csv"
    path.write_text(
        "visited_on,practice,cards_left\n2026-11-02,Lakeside,ten\n2026-11-03,Lakeside,10\n"
    )
    ran = cli("import", "visits", str(path))
    assert ran.code == 1
    assert "line 2, column cards_left: must be a whole number" in ran.stderr
    assert "added 1" in ran.stdout


def test_sample_patient_values_never_reach_the_terminal(cli, db_url):
    ran = cli("import", "referrals", str(SAMPLE / "referrals.csv"))
    ran2 = cli("status", "--json")
    for value in SAMPLE_PATIENT_VALUES:
        assert value not in ran.stdout + ran.stderr + ran2.stdout + ran2.stderr


def test_progress_shows_on_a_terminal(home, db_url, tmp_path):
    """Run under a pseudo-terminal, as a person would; the bar goes to standard error."""
    import os
    import pty
    import subprocess
    import sys

    path = write_csv(tmp_path / "r.csv", [referral_row(f"R-{i}") for i in range(3000)])
    leader, follower = pty.openpty()
    env = {"PATH": os.environ["PATH"], "FOLLOWUPD_DATABASE_URL": db_url, "COLUMNS": "100"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "followupd", "--home", str(home), "import", "referrals", str(path)],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    out, _ = proc.communicate()
    os.close(leader)
    assert proc.returncode == 0
    assert b"importing" in shown
    assert b"added 3000" in out


# --- a spreadsheet saved with ';' or tabs between columns (issue 15) ---------------------------


def write_separated(path, rows, separator: str, bom: bool = False):
    """What Excel writes where a comma is the decimal mark (';'), or a tab-separated export;
    a value holding a comma stays one value."""
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=REFERRAL_COLUMNS, delimiter=separator)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("separator", "named"), [(";", "';'"), ("\t", "tabs")], ids=["semicolon", "tab"]
)
def test_a_file_separated_by_semicolons_or_tabs_is_read_and_says_so(
    cli, db_url, tmp_path, separator, named
):
    rows = [
        referral_row("R-1", practice="Lakeside, Internal Medicine"),
        referral_row("R-2", client_dob="not a date"),
    ]
    path = write_separated(tmp_path / "referrals.csv", rows, separator, bom=True)
    ran = cli("import", "referrals", str(path))
    assert ran.code == 1  # R-2's bad date, by line and column; R-1 went in
    assert f"note: the file separates columns with {named}; read that way" in ran.stdout
    assert "line 3, column client_dob" in ran.stderr
    assert "added 1, updated 0, unchanged 0, rejected 1" in ran.stdout
    assert set(referrals(db_url)) == {"R-1"}
    assert "Harriet" not in ran.stdout + ran.stderr


def test_a_comma_file_says_nothing_about_separators(cli, db_url, tmp_path):
    ran = cli("import", "referrals", str(write_csv(tmp_path / "r.csv", [referral_row("R-1")])))
    assert ran.code == 0 and "separates columns" not in ran.stdout + ran.stderr


def test_a_file_naming_no_column_says_which_separators_were_tried(cli, db_url, tmp_path):
    path = tmp_path / "referrals.csv"
    path.write_text("Harriet Vandermolen;1970-05-04;Insomnia\n")
    ran = cli("import", "referrals", str(path))
    assert ran.code == 1 and "line 1 is not a header row" in ran.stderr
    assert "commas, ';' or tabs" in ran.stderr and "Harriet" not in ran.stderr
