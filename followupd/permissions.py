"""Files that hold secrets or code stay their owner's: refused when others may read or change
them, the way ssh refuses a private key that others can read.

Configuration and templates are code (a template can reach every value it is given), `.env`
and token files are secrets; the fix is always one `chmod`, and the message says which.
"""

from __future__ import annotations

import os
import shlex
import stat
import tempfile
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def exposure(path: Path) -> str | None:
    """Why `path` is not private (group or other users may read or write it), or None."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(info.st_mode)
    open_bits = mode & 0o077
    if not open_bits:
        return None
    readable, writable = open_bits & 0o044, open_bits & 0o022
    how = (
        "readable and writable" if readable and writable else "writable" if writable else "readable"
    )
    directory = stat.S_ISDIR(info.st_mode)
    fix = f"chmod {PRIVATE_DIR if directory else PRIVATE_FILE:o} {shlex.quote(str(path))}"
    return f"{path}: {how} by other users (mode {mode:04o}); fix it with: {fix}"


def write_private(path: Path, data: bytes | str, *, exist_ok: bool = True) -> None:
    """Atomically replace `path` with `data`, mode 0600 whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp creates it 0600
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, PRIVATE_FILE)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) if missing; the folder itself ends up 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)
