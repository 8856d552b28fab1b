"""Schema migrations: numbered SQL files applied in order, each in one transaction with its record.

`sqlite3.executescript()` commits any open transaction before it runs, so a
migration file is split into statements (`sqlite3.complete_statement`) and
each is executed inside one explicit `BEGIN IMMEDIATE ... COMMIT` together
with the row that records it: a failed migration leaves nothing behind.
A database whose newest recorded migration is beyond what this code ships is
refused before anything is written.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imageclust_daemon.errors import DatabaseError, SchemaTooNewError
from imageclust_daemon.resources import data_path

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_RECORD_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    applied_at  REAL NOT NULL
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def load_migrations(folder: Path | None = None) -> list[Migration]:
    """The shipped migrations, ordered; gaps or duplicate numbers are a packaging bug."""
    folder = folder or data_path("migrations")
    found = []
    for path in sorted(folder.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise DatabaseError(f"migration file name {path.name!r} is not NNNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise DatabaseError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


def statements(sql: str) -> Iterator[str]:
    """Split a script into complete statements (triggers' BEGIN...END kept whole).

    A statement can end only at a ";", so the text is cut at each ";" after which
    `sqlite3.complete_statement` agrees (semicolons in strings and comments do not count).
    """
    buffer = ""
    for piece in sql.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer[:-1].strip():  # not a lone ";" after the last statement
                yield buffer.strip()
            buffer = ""
    rest = buffer[:-1]  # the ";" added after the last piece
    if any(ln.strip() and not ln.strip().startswith("--") for ln in rest.splitlines()):
        raise DatabaseError(f"incomplete SQL statement at end of migration: {rest.strip()[:80]!r}")


def current_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def changed_since_applied(conn: sqlite3.Connection, migrations: list[Migration]) -> list[int]:
    """Versions whose shipped SQL differs from what was applied (an edited migration: a bug)."""
    if current_version(conn) == 0:
        return []
    recorded = dict(conn.execute("SELECT version, checksum FROM schema_migrations"))
    return [m.version for m in migrations if recorded.get(m.version, m.checksum) != m.checksum]


def apply(conn: sqlite3.Connection, migrations: list[Migration], *, path: str = "") -> list[int]:
    """Apply what is missing; return the versions applied. `conn` must be in autocommit mode."""
    if conn.isolation_level is not None:
        raise DatabaseError("migrations need a connection opened with isolation_level=None")
    supported = migrations[-1].version if migrations else 0
    found = current_version(conn)
    if found > supported:
        raise SchemaTooNewError(path, found, supported)
    applied = []
    for migration in migrations:
        if migration.version <= found:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_RECORD_TABLE)
            # Re-read under the write lock: another process may have migrated meanwhile.
            if current_version(conn) >= migration.version:
                conn.execute("ROLLBACK")
                continue
            for statement in statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                "VALUES (?, ?, ?, ?)",
                (migration.version, migration.name, migration.checksum, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
