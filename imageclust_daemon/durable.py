"""Making a rename survive a power cut: one helper, for every file swapped into place.

A file written to a temporary name, fsynced and renamed over the old one is complete
for every reader at once; the rename itself is only durable once the folder holding
it is fsynced too. Used by the catalog publish and the model download. And which of the
files a writer named after its pid outlive it (`process_alive`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.parse import quote


def fsync_dir(directory: Path) -> None:
    """fsync `directory`, so a rename in it survives a power cut.

    Best effort: some filesystems (and platforms) cannot open or fsync a folder; the
    rename has already happened and every reader sees the new file, so that failure
    only costs durability across a power cut, and is not an error.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def sqlite_uri(path: Path, **params: str) -> str:
    """A SQLite URI for `path` (any characters) with query parameters such as mode=ro."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{quote(os.fspath(path.resolve()))}" + (f"?{query}" if query else "")


def process_alive(pid: int) -> bool:
    """Whether a process of this `pid` runs: what a file named after its writer's pid (a
    temporary catalog, a journal) may be removed by (never one a live process writes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's, or not a pid
        return True
    return True
