"""Migrations: applied in order, atomically, recorded; a too-new database is never touched."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from imageclust_daemon.errors import DatabaseError, SchemaTooNewError
from imageclust_daemon.state import migrate
from imageclust_daemon.state.store import Store


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


def test_albums_cut_before_migration_7_stay_put_at_the_next_regroup(tmp_path: Path) -> None:
    """Migration 7 (albums over time): the photos an older run left in no album wait (not
    one embedded after it); the albums it cut have no baseline yet; the first regroup
    after it is incremental: new photos join their album and nothing else moves."""
    from imageclust_daemon.grouping import regroup
    from imageclust_daemon.state.groups import vector_to_blob
    from tests.test_cluster import blobs

    path = tmp_path / "s.sqlite"
    conn = _connect(path)
    x, truth = blobs([8, 8, 8, 2], d=16, seed=5, spread=0.05)  # three albums, two odd ones
    model = "m@sha256:0"
    try:
        migrate.apply(conn, migrate.load_migrations()[:6])
        conn.execute(
            "INSERT INTO cluster_runs (id, started_at, seconds, model_id, min_size, max_size, "
            "method, n_points, n_clusters, unclustered, new_clusters, changed_clusters, "
            "retired_clusters, input_digest) VALUES (1, 0, 0, ?, 5, 30, 'exact', 26, 3, 2, "
            "3, 0, 0, 'old')",
            (model,),
        )
        for album in range(3):
            conn.execute(
                "INSERT INTO clusters (id, state, size, centroid, members_digest, created_run, "
                "changed_run) VALUES (?, 'active', 8, ?, 'd', 1, 1)",
                (10 + album, vector_to_blob(x[truth == album].mean(axis=0))),
            )
        for i, vector in enumerate(x):
            h = f"{i:064x}"
            conn.execute("INSERT INTO contents (hash, size, created_at) VALUES (?, 1, 0)", (h,))
            conn.execute(
                "INSERT INTO embeddings VALUES (?, ?, 16, ?, 0)", (h, model, vector_to_blob(vector))
            )
            conn.execute(
                "INSERT INTO files (path, size, mtime_ns, inode, device, content_hash, state, "
                "first_seen, updated_at) VALUES (?, 1, 0, ?, 0, ?, 'live', 0, 0)",
                (f"/p/{i}.jpg".encode(), i, h),
            )
            if truth[i] < 3:
                conn.execute(
                    "INSERT INTO cluster_members VALUES (?, ?, 0, 1.0)", (10 + int(truth[i]), h)
                )
        later = f"{98:064x}"  # embedded after the last run: new to the next one, not waiting
        vector = x[truth == 0].mean(axis=0)
        conn.execute("INSERT INTO contents (hash, size, created_at) VALUES (?, 1, 5)", (later,))
        conn.execute(
            "INSERT INTO embeddings VALUES (?, ?, 16, ?, 5)",
            (later, model, vector_to_blob(vector / np.linalg.norm(vector))),
        )
        conn.execute(
            "INSERT INTO files (path, size, mtime_ns, inode, device, content_hash, state, "
            "first_seen, updated_at) VALUES (?, 1, 0, 98, 0, ?, 'live', 5, 5)",
            (b"/p/later.jpg", later),
        )
    finally:
        conn.close()
    with Store.open(path) as store:
        assert store.waiting_contents() == {f"{i:064x}" for i in (24, 25)}
        assert store.album_baselines() == {}
        last = store.last_cluster_run()
        assert last is not None and last.full_reason == "" and last.recut == {}
        # one more photo of the second album
        extra = f"{99:064x}"
        vector = x[truth == 1].mean(axis=0)
        vector /= np.linalg.norm(vector)
        store.conn.execute(
            "INSERT INTO contents (hash, size, created_at) VALUES (?, 1, 0)", (extra,)
        )
        store.conn.execute(
            "INSERT INTO embeddings VALUES (?, ?, 16, ?, 0)", (extra, model, vector_to_blob(vector))
        )
        store.conn.execute(
            "INSERT INTO files (path, size, mtime_ns, inode, device, content_hash, state, "
            "first_seen, updated_at) VALUES (?, 1, 0, 99, 0, ?, 'live', 0, 0)",
            (b"/p/new.jpg", extra),
        )
        run = regroup.recluster(store, model, min_size=5, max_size=30)
        assert run.full_reason == "" and run.joined == 2 and run.moved == 0
        assert run.changed_clusters == 2 and run.new_clusters == 0 and run.retired_clusters == 0
        albums = store.active_clusters()
        assert set(albums) == {10, 11, 12} and extra in albums[11] and later in albums[10]
        assert store.waiting_contents() == {f"{i:064x}" for i in (24, 25)}
        assert set(store.album_baselines()) == {10, 11, 12}, "kept from now on"


def test_a_library_grouped_before_migration_8_gets_its_events_at_the_next_regroup(
    tmp_path: Path,
) -> None:
    """Migration 8 (events): nothing else changed since the last regroup, so the albums
    are left as they are, and the events are cut all the same; the organized view's and
    catalog's events come with the next publish."""
    from imageclust_daemon.grouping import regroup
    from imageclust_daemon.state.groups import vector_to_blob

    path = tmp_path / "s.sqlite"
    conn = _connect(path)
    model = "m@sha256:0"
    hashes = [f"{i:064x}" for i in range(6)]
    try:
        migrate.apply(conn, migrate.load_migrations()[:7])
        digest = regroup._digest([model, "5", "30", *hashes])
        conn.execute(
            "INSERT INTO cluster_runs (id, started_at, seconds, model_id, min_size, max_size, "
            "method, n_points, n_clusters, unclustered, new_clusters, changed_clusters, "
            "retired_clusters, input_digest) VALUES (1, 0, 0, ?, 5, 30, 'exact', 6, 0, 6, "
            "0, 0, 0, ?)",
            (model, digest),
        )
        for i, h in enumerate(hashes):
            day = 3 if i < 3 else 20  # two moments, weeks apart
            conn.execute(
                "INSERT INTO contents (hash, size, taken_at, created_at) VALUES (?, 1, ?, 0)",
                (h, f"2021-05-{day:02d}T10:0{i}:00"),
            )
            vector = np.eye(1, 16, i, dtype=np.float32)[0]
            conn.execute(
                "INSERT INTO embeddings VALUES (?, ?, 16, ?, 0)", (h, model, vector_to_blob(vector))
            )
            conn.execute(
                "INSERT INTO files (path, size, mtime_ns, inode, device, content_hash, state, "
                "first_seen, updated_at) VALUES (?, 1, 0, ?, 0, ?, 'live', 0, 0)",
                (f"/p/{i}.jpg".encode(), i, h),
            )
    finally:
        conn.close()
    with Store.open(path) as store:
        assert store.active_events() == {}
        run = regroup.recluster(store, model, min_size=5, max_size=30)
        assert run.skipped and "nothing changed" in run.note
        assert run.events is not None and (run.events.new, run.events.dated) == (2, 6)
        events = store.active_events()
        assert sorted(len(members) for _, members in events.values()) == [3, 3]
        assert sorted(e.title for e, _ in events.values()) == ["20 May 2021", "3 May 2021"]
