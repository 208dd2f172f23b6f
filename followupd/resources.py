"""Where the shipped defaults live: `config/` and `templates/` of the source tree, packaged
into the wheel as `followupd/_defaults/` (an editable install reads the source tree)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _defaults(name: str) -> Path:
    packaged = _PACKAGE / "_defaults" / name
    return packaged if packaged.is_dir() else _PACKAGE.parent / name


def default_config_dir() -> Path:
    return _defaults("config")


def default_templates_dir() -> Path:
    return _defaults("templates")
