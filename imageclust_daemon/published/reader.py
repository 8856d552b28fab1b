"""The one way into a published catalog for everything that reads it: the gallery's
pages, `query`, `search` and `similar`, the organized view, the publish's own count.

A reader opens the catalog once per page or command and reads everything through that
connection: a publish swaps a new file in by rename, and a connection keeps reading the
file it opened, so one page never mixes two catalogs (its search snapshot included: the
catalog names it, and a publish keeps the snapshot a live reader may still open).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from imageclust_daemon.durable import sqlite_uri


def open_catalog(path: Path, *, any_thread: bool = False) -> sqlite3.Connection:
    """A read-only connection to the catalog at `path` (`mode=ro`: no file is created and
    the catalog is never written; a reader's own temp tables are its business).
    `any_thread`: the gallery hands it from the thread that opened it to the one that
    answers."""
    return sqlite3.connect(sqlite_uri(path, mode="ro"), uri=True, check_same_thread=not any_thread)


@contextlib.contextmanager
def reading(path: Path, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
    """`conn` (a read of the catalog a page already holds), or a connection of its own to
    the catalog at `path`, closed after."""
    if conn is not None:
        yield conn
        return
    own = open_catalog(path)
    try:
        yield own
    finally:
        own.close()
