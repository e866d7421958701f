"""Files written so a crash leaves the previous version: temp file beside the target + os.replace, and the
temp files of a killed process removed by the next run.

Every temp file is named `.<target name>.<pid>.tmp<suffix>` (the leading dot hides it from BI folder
listings, the pid says whose it is). A process killed with SIGKILL cannot clean up after itself, so
each writer calls `remove_stale_temp_files` on the folder it writes to: a temp file whose process is
gone belongs to no one and is deleted; one of a live process (a concurrent writer) is left alone.
"""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lookalike_cli.errors import LookalikeError

TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp(\.[\w.]*)?$")

# What the OS says when a write does not fit: no space, a quota, or a file-size limit (ulimit -f).
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# The same, as DuckDB and dbt print them (DuckDB raises IOException with the strerror text).
DISK_FULL_MESSAGES = ("no space left on device", "file too large", "disk quota exceeded")


def temp_path(path: Path, suffix: str = "") -> Path:
    """Where to write `path` before moving it in: beside it (same filesystem, so os.replace is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files in `folder` whose writing process no longer exists; returns what was deleted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        match = TEMP_NAME.match(path.name)
        if match and path.is_file() and not process_alive(int(match.group(1))):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:  # another run cleaned it first
                pass
    return removed


@contextmanager
def replaced(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temp path to write; on success it replaces `path` in one step, on any failure it is deleted
    and `path` is as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    """A small file (a manifest) written whole or not at all: a kill mid-write leaves the old one."""
    with replaced(path) as tmp:
        tmp.write_text(text)


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return any(text in str(exc).lower() for text in DISK_FULL_MESSAGES)


def disk_full_error(exc: BaseException, what: str | Path | None = None) -> LookalikeError:
    """One line for a write that did not fit, naming the file when known."""
    target = what or getattr(exc, "filename", None)
    where = f" writing {target}" if target else ""
    reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc).splitlines()[0]
    return LookalikeError(f"Out of disk space{where} ({reason}). Nothing was replaced: the previous tables and files "
                          "are intact. Free some space (or raise the file-size limit) and run the command again.")
