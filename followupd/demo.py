"""`followupd demo`: a complete home on the embedded defaults, with made-up sample data.

The sample referrals and visits are dated relative to today so that notes are due now: some
with a release of information (their notes are drafted), one without (its note is held), one
whose physician has no email yet (held too), one closed, one with a separate prescriber and a
release naming that prescriber too (a release covers only the recipient it names). A physician's
first referral gets a thank-you, and a visit records a practice named in answer to the ask.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

from followupd.permissions import make_private_dir, write_private
from followupd.records import parse_referral, parse_visit
from followupd.resources import default_config_dir
from followupd.store import Directory, Store, upsert_referrals, upsert_visits

MARKER = ".followupd-demo"

# Made-up clients. Tests check that none of these values leaves the drafts.
SAMPLE_CLIENTS = (
    ("Avery Quinlan", "1984-03-09", "Panic attacks with avoidance of driving"),
    ("Jordan Pelletier", "1991-07-22", "Low mood and poor sleep after a job loss"),
    ("Casey Fairbanks", "1978-12-01", "Generalized worry affecting blood pressure control"),
    ("Morgan Tavares", "1966-05-30", "Grief after the death of a spouse"),
    ("Riley Achterberg", "2001-10-17", "Binge eating with shame and isolation"),
)


class DemoRefused(Exception):
    pass


def _referrals(today: date) -> list[dict[str, str]]:
    day = lambda n: (today - timedelta(days=n)).isoformat()  # noqa: E731
    okafor = {
        "physician": "Dr. Miriam Okafor",
        "physician_email": "m.okafor@lakeside-im.example",
        "specialty": "internal medicine",
        "practice": "Lakeside Internal Medicine",
    }
    brandt = {
        "physician": "Dr. Samuel Brandt",
        "physician_email": "sbrandt@northloop-fm.example",
        "specialty": "family medicine",
        "practice": "North Loop Family Medicine",
    }
    rows = [
        {
            "ref": "R-1001",
            "received_on": day(7),
            **okafor,
            "release_on_file": "yes",
            "treatment_focus": "CBT with interoceptive exposure",
        },
        {
            "ref": "R-1002",
            "received_on": day(3),
            **brandt,
            "release_on_file": "no",
            "treatment_focus": "Behavioral activation; sleep scheduling",
        },
        {
            "ref": "R-1003",
            "received_on": day(75),
            **okafor,
            "release_on_file": "yes",
            "release_on": day(70),
            "treatment_focus": "CBT for worry; applied relaxation",
            "closed_on": day(6),
            "closing_summary": "Eleven sessions; GAD-7 fell from 15 to 5. Relapse-prevention plan "
            "in place; no further treatment needed now.",
        },
        {
            "ref": "R-1004",
            "received_on": day(12),
            **brandt,
            "release_on_file": "yes",
            "release_on": day(10),
            "treatment_focus": "Grief-focused therapy",
            "prescriber": "Dr. Lena Marsh",
            "prescriber_email": "lmarsh@uptown-psych.example",
            "prescriber_release_on_file": "yes",
            "prescriber_release_on": day(9),
        },
        {
            "ref": "R-1005",
            "received_on": day(5),
            "physician": "Dr. Omar Haddad",
            "specialty": "internal medicine",
            "practice": "Riverside Clinic",
            "release_on_file": "yes",
            "treatment_focus": "CBT-E",
        },
    ]
    for row, (name, dob, problem) in zip(rows, SAMPLE_CLIENTS, strict=True):
        row.update(client_name=name, client_dob=dob, presenting_problem=problem)
    return rows


def _visits(today: date) -> list[dict[str, str]]:
    return [
        {
            "visited_on": (today - timedelta(days=9)).isoformat(),
            "practice": "Lakeside Internal Medicine",
            "physician": "Dr. Miriam Okafor",
            "specialty": "internal medicine",
            "business_manager": "Pat Lindqvist",
            "cards_left": "10",
            "handouts_left": "5",
            # her answer to "Who is your favorite practice to refer to?": a prospect
            "named_practice": "Harbor Family Medicine",
            "named_physician": "Dr. Priya Raman",
            "named_specialty": "family medicine",
        },
        {
            "visited_on": (today - timedelta(days=2)).isoformat(),
            "practice": "Cedar Women's Health",
            "physician": "Dr. Elena Ruiz",
            "specialty": "OB/GYN",
            "business_manager": "Morgan Ellis",
            "cards_left": "10",
            "handouts_left": "5",
        },
    ]


def prepare_home(home: Path) -> None:
    """A fresh demo home: refuses a folder that holds anything but an earlier demo. Its
    files are private whatever the umask (the configuration is code; drafts hold made-up
    patient details, as real ones would)."""
    if home.exists() and any(home.iterdir()):
        if not (home / MARKER).exists():
            raise DemoRefused(
                f"{home} exists and is not a followupd demo; name an empty or new folder"
            )
        shutil.rmtree(home)
    make_private_dir(home)
    write_private(home / MARKER, "made by `followupd demo`; safe to delete\n")
    write_private(home / "followupd.yaml", (default_config_dir() / "followupd.yaml").read_bytes())


def load_samples(store: Store, today: date) -> None:
    directory = Directory()
    with store.session() as session:
        upsert_referrals(
            session,
            [parse_referral(r) for r in _referrals(today)],
            directory,
            by="demo",
            today=today,
        )
        upsert_visits(session, [parse_visit(v) for v in _visits(today)], directory)
