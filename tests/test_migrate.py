"""Migrations: applied in order, atomically, recorded; a too-new database is never touched."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from imageclust_daemon import migrate
from imageclust_daemon.errors import DatabaseError, SchemaTooNewError
from imageclust_daemon.store import Store


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_fresh_database_gets_every_migration_recorded(tmp_path: Path) -> None:
    shipped = migrate.load_migrations()
    with Store.open(tmp_path / "s.sqlite") as store:
        rows = store.conn.execute(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        ).fetchall()
        assert [r[0] for r in rows] == [m.version for m in shipped]
        assert [r[2] for r in rows] == [m.checksum for m in shipped]
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_reopening_applies_nothing(tmp_path: Path) -> None:
    Store.open(tmp_path / "s.sqlite").close()
    conn = _connect(tmp_path / "s.sqlite")
    try:
        assert migrate.apply(conn, migrate.load_migrations()) == []
    finally:
        conn.close()


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    good = migrate.Migration(1, "one", "CREATE TABLE a (x INTEGER);")
    bad = migrate.Migration(
        2,
        "two",
        "ALTER TABLE a ADD COLUMN y INTEGER;\nCREATE TABLE a (x INTEGER);  -- fails: exists\n",
    )
    conn = _connect(tmp_path / "m.sqlite")
    try:
        with pytest.raises(sqlite3.OperationalError):
            migrate.apply(conn, [good, bad])
        columns = [r[1] for r in conn.execute("PRAGMA table_info(a)")]
        assert columns == ["x"], "the first half of the failed migration was rolled back"
        assert migrate.current_version(conn) == 1
        assert not conn.in_transaction
    finally:
        conn.close()


def test_a_newer_database_is_refused_and_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    Store.open(path).close()
    conn = _connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'from_the_future', 'x', 0)")
    conn.execute("PRAGMA journal_mode = DELETE")  # as a newer version might leave it
    conn.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(SchemaTooNewError) as info:
        Store.open(path)
    assert "999" in str(info.value) and "upgrade imageclust" in str(info.value)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert not Path(str(path) + "-wal").exists()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError, match="unusable"):
        Store.open(path)


def test_statement_splitting_keeps_triggers_whole() -> None:
    sql = (
        "CREATE TABLE t (x);\n-- a comment; with a semicolon\n"
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  UPDATE t SET x = 1;\n  SELECT 1;\nEND;\n"
    )
    parts = list(migrate.statements(sql))
    assert len(parts) == 2
    assert list(migrate.statements("CREATE TABLE a (x); CREATE TABLE b (y);\n")) == [
        "CREATE TABLE a (x);",
        "CREATE TABLE b (y);",
    ]
    assert parts[1].startswith("-- a comment") and parts[1].endswith("END;")


def test_shipped_migrations_are_numbered_and_each_applies_on_top_of_the_previous(
    tmp_path: Path,
) -> None:
    shipped = migrate.load_migrations()
    conn = _connect(tmp_path / "step.sqlite")
    try:
        for i in range(1, len(shipped) + 1):
            assert migrate.apply(conn, shipped[:i]) == [i]
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
