"""Settings and rules: `followupd.yaml` in the home, `.env` beside it, then the environment.

Validated with pydantic models that forbid unknown keys, so a typo is an error and never
silently ignored. Every problem is reported as `FILE:LINE: key.path: what is wrong (fix)`,
the way a compiler would, and start-up stops with exit status 2.

One module a concept: `schema` (the document's models and value types), `loading` (where
the settings come from, the YAML reader, the private-file checks) and `errors` (ConfigError
and the lines that explain a problem). The functions and classes below are the package's
interface, imported from `followupd.config`; constants (CONFIG_NAME, ENV_OVERRIDES, EVENTS,
...) stay in their own modules, where the code reads them.
"""

from __future__ import annotations

from followupd.config.errors import ConfigError, explain, format_path
from followupd.config.loading import (
    ConfigLoader,
    DuplicateKey,
    Settings,
    load,
    load_environment,
    private_files_problems,
    resolve_home,
)
from followupd.config.schema import (
    Conditions,
    Config,
    Database,
    Delivery,
    Events,
    Google,
    History,
    Holidays,
    Logging,
    Practice,
    Quota,
    Rule,
    Schedule,
    Source,
    Strict,
    Therapist,
    normalize_specialty,
)

__all__ = [
    "Conditions",
    "Config",
    "ConfigError",
    "ConfigLoader",
    "Database",
    "Delivery",
    "DuplicateKey",
    "Events",
    "Google",
    "History",
    "Holidays",
    "Logging",
    "Practice",
    "Quota",
    "Rule",
    "Schedule",
    "Settings",
    "Source",
    "Strict",
    "Therapist",
    "explain",
    "format_path",
    "load",
    "load_environment",
    "normalize_specialty",
    "private_files_problems",
    "resolve_home",
]
