"""The state database's page size, and the one rewrite that brings an older one to it.

An embedding row is ~2.2 KB (a 512-dim float32 vector, its content hash and model id).
With SQLite's default 4 KB pages a WITHOUT ROWID table keeps ~1 KB of a row in the page
and spills the rest to an overflow page: 4.7 KB a photo for 2.2 KB of data. With 16 KB
pages seven rows fit a page whole: 2.3 KB a photo, and reading every embedding takes
half the time (tests/bench/bench_store.py). A new database takes 16 KB pages from its
start; an older one is rewritten once, by SQLite's VACUUM, when its writer opens it:

- atomic: VACUUM rebuilds the database in a temporary file and copies it back under a
  rollback journal, so a rewrite cut short (killed, power lost, disk full) leaves the
  database as it was, and the next open tries again;
- only when no other connection has it open (the switch out of WAL needs that), else
  left for a later open;
- only with room for it: the temporary copy and the journal take up to twice the
  database's size, in its own folder (not /tmp, which may be small).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)

PAGE_SIZE = 16384
# Free space a rewrite needs, as a multiple of the database's size (its temporary copy,
# at most its size, plus the rollback journal, at most its size), and a margin.
ROOM_FACTOR = 2.2


def prepare_new(conn: sqlite3.Connection) -> None:
    """Give an empty database the page size (before WAL is on: it fixes the size)."""
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")


def rewrite_if_small(conn: sqlite3.Connection, path: Path) -> bool:
    """Rewrite the database at `path`, open in WAL mode on `conn` (no transaction), with
    `PAGE_SIZE` pages where its pages are smaller; True when it was rewritten. Leaves it
    as it is, in WAL mode, where another connection has it open, the disk lacks room, or
    the rewrite fails."""
    if conn.execute("PRAGMA page_size").fetchone()[0] >= PAGE_SIZE:
        return False
    size = path.stat().st_size
    free = shutil.disk_usage(path.parent).free
    if free < ROOM_FACTOR * size:
        log.warning(
            "%s: not rewritten with %d KB pages (it would take %.1f GB, and %.1f GB of about "
            "%.1f GB needed is free); it works as it is, at about twice the size",
            path,
            PAGE_SIZE // 1024,
            size / 1e9,
            free / 1e9,
            ROOM_FACTOR * size / 1e9,
        )
        return False
    busy = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute("PRAGMA busy_timeout = 0")  # another connection: no wait, a later open
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    except sqlite3.OperationalError:  # "database is locked"
        mode = "wal"
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy)}")
    if str(mode).lower() != "delete":
        log.info("%s: another process has it open; its rewrite waits for a later open", path)
        return False
    started = time.monotonic()
    log.warning(
        "%s: rewriting it once with %d KB pages (%.1f GB; about half the size after)",
        path,
        PAGE_SIZE // 1024,
        size / 1e9,
    )
    try:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        # VACUUM's temporary copy in the database's own folder: the one place known to
        # hold a database this size (SQLite's deprecated but still supported pragma, which
        # sets its process-wide temporary folder; put back after)
        conn.execute(f"PRAGMA temp_store_directory = '{_quoted(path.parent)}'")
        try:
            conn.execute("VACUUM")
        finally:
            conn.execute("PRAGMA temp_store_directory = ''")
    except sqlite3.OperationalError as exc:  # disk full, I/O error: rolled back as it was
        log.warning(
            "%s: the rewrite with %d KB pages failed (%s); it works as it is",
            path,
            PAGE_SIZE // 1024,
            exc,
        )
        return False
    finally:
        conn.execute("PRAGMA journal_mode = WAL")
    log.warning(
        "%s: rewritten with %d KB pages in %.1f s: %.1f GB -> %.1f GB",
        path,
        PAGE_SIZE // 1024,
        time.monotonic() - started,
        size / 1e9,
        path.stat().st_size / 1e9,
    )
    return True


def _quoted(folder: Path) -> str:
    return str(folder).replace("'", "''")
