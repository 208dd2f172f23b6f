"""followupd: follow-up notes and outreach reminders for psychotherapists in private practice."""

__version__ = "0.1.0"
