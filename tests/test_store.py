"""The state store: batches, idempotence, counts, vectors round-trip."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from imageclust_daemon.errors import DatabaseError
from imageclust_daemon.records import ContentRow, FileRow, FileStat, PhotoMeta
from imageclust_daemon.state.groups import blob_to_vector, vector_to_blob
from imageclust_daemon.state.store import Store

MODEL = "tiny@sha256:00"


def _stat(path: bytes, size: int = 10, inode: int = 1) -> FileStat:
    return FileStat(path, size, 1_000, inode, 7)


@given(arrays(np.float32, st.integers(1, 64), elements=st.floats(-1e6, 1e6, width=32)))
def test_vector_blob_round_trip(vector: np.ndarray) -> None:
    assert np.array_equal(blob_to_vector(vector_to_blob(vector)), vector)


def test_record_is_idempotent_and_counts_are_exact(tmp_path: Path) -> None:
    v = np.ones(4, dtype=np.float32) / 2
    contents = [
        ContentRow(
            "aa", 10, decoded=True, meta=PhotoMeta(3, 2, "2024-01-02T03:04:05", 1.5, 2.5, "JPEG")
        ),
        ContentRow("bb", 11, decoded=True, error="cannot decode: junk"),
    ]
    files = [
        FileRow(_stat(b"/r/a.jpg", inode=1), "aa"),
        FileRow(_stat(b"/r/copy.jpg", inode=2), "aa"),
        FileRow(_stat(b"/r/bad.jpg", inode=3), "bb"),
        FileRow(_stat(b"/r/locked.jpg", inode=4), None, "cannot read: Permission denied"),
    ]
    with Store.open(tmp_path / "s.sqlite") as store:
        for _ in range(2):  # a batch redone after a crash changes nothing
            store.record(contents, files, [("aa", v)], MODEL)
        assert store.status(MODEL) == {
            "files": 4,
            "offline": 0,
            "contents": 2,
            "embedded": 1,
            "pending": 0,
            "failed": 2,
            "undecodable": 1,
            "unreadable": 1,
            "clusters": 0,
            "labeled": 0,
            "events": {},
            "formats": {"JPEG": 2},
            "skipped": {},
        }
        assert np.array_equal(store.embedding("aa", MODEL), v)
        assert store.settled_hashes(MODEL) == {"aa", "bb"}
        assert store.settled_hashes("other-model") == {"bb"}
        row = store.conn.execute(
            "SELECT width, height, taken_at, lat, lon FROM contents WHERE hash = 'aa'"
        ).fetchone()
        assert row == (3, 2, "2024-01-02T03:04:05", 1.5, 2.5)


def test_status_and_the_gallery_count_a_failed_copy_alike(tmp_path: Path) -> None:
    """`imageclust status` (the state) and the gallery's status page (the published
    catalog) count the same way: a damaged photo copied twice is one failure of 2 files."""
    from imageclust_daemon.gallery.gallery import Reader
    from imageclust_daemon.published import catalog

    v = np.ones(4, dtype=np.float32) / 2
    aa, bb, cc = (c * 64 for c in "abc")  # content hashes are 64 hex digits
    contents = [
        ContentRow(aa, 10, decoded=True, meta=PhotoMeta(3, 2)),
        ContentRow(bb, 11, decoded=True, error="cannot decode: junk"),
        ContentRow(cc, 12),
    ]
    files = [
        FileRow(_stat(b"/r/a.jpg", inode=1), aa),
        FileRow(_stat(b"/r/copy.jpg", inode=2), aa),
        FileRow(_stat(b"/r/bad.jpg", inode=3), bb),
        FileRow(_stat(b"/r/bad copy.jpg", inode=4), bb),
        FileRow(_stat(b"/r/locked.jpg", inode=5), None, "cannot read: Permission denied"),
        FileRow(_stat(b"/r/waiting.jpg", inode=6), cc),
    ]
    state = tmp_path / "s.sqlite"
    with Store.open(state) as store:
        store.record(contents, files, [(aa, v)], MODEL)
        status = store.status(MODEL)
    counted = {k: status[k] for k in ("embedded", "pending", "failed", "unreadable")}
    assert counted == {"embedded": 1, "pending": 1, "failed": 2, "unreadable": 1}
    catalog.publish(state, tmp_path / "catalog.sqlite", model_id=MODEL, daemon_version="t")
    with Reader(tmp_path / "catalog.sqlite") as reader:
        shown = reader.status()
    assert (shown.counts["indexed"], shown.counts["pending"], shown.counts["failed"]) == (1, 1, 2)
    assert shown.failed_total == 3
    assert [path for path, _ in shown.failed] == ["/r/bad copy.jpg", "/r/bad.jpg", "/r/locked.jpg"]


def test_a_bare_content_row_does_not_wipe_metadata(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite") as store:
        store.record([ContentRow("aa", 10, decoded=True, meta=PhotoMeta(3, 2))], [], [], MODEL)
        store.record([ContentRow("aa", 10)], [FileRow(_stat(b"/r/dup.jpg"), "aa")], [], MODEL)
        assert store.conn.execute("SELECT width FROM contents").fetchone() == (3,)


def test_gone_files_leave_the_counts_and_pending_lists_only_live_files(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite") as store:
        store.record(
            [ContentRow("aa", 10), ContentRow("bb", 10)],
            [
                FileRow(_stat(b"/r/a.jpg", inode=1), "aa"),
                FileRow(_stat(b"/r/b.jpg", inode=2), "bb"),
            ],
            [],
            MODEL,
        )
        assert store.pending_contents(MODEL, [b"/r"]) == {"aa": b"/r/a.jpg", "bb": b"/r/b.jpg"}
        assert store.mark_gone([b"/r/b.jpg"]) == 1
        assert store.mark_gone([b"/r/b.jpg"]) == 0
        assert store.pending_contents(MODEL, [b"/r"]) == {"aa": b"/r/a.jpg"}
        assert store.pending_contents(MODEL, [b"/elsewhere"]) == {}
        status = store.status(MODEL)
        assert (status["files"], status["contents"], status["pending"]) == (1, 1, 1)
        known = store.files_under([b"/r"])
        assert set(known) == {b"/r/a.jpg", b"/r/b.jpg"}
        assert known[b"/r/a.jpg"].live and not known[b"/r/b.jpg"].live


def test_paths_under_a_root_exclude_siblings_with_the_same_prefix(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite") as store:
        store.record(
            [ContentRow("aa", 1)],
            [
                FileRow(_stat(b"/r/a.jpg", inode=1), "aa"),
                FileRow(_stat(b"/r2/a.jpg", inode=2), "aa"),
            ],
            [],
            MODEL,
        )
        assert set(store.files_under([b"/r"])) == {b"/r/a.jpg"}
        assert set(store.files_under([b"/r/"])) == {b"/r/a.jpg"}


def test_non_utf8_paths_round_trip(tmp_path: Path) -> None:
    raw = b"/r/caf\xe9\xff.jpg"
    with Store.open(tmp_path / "s.sqlite") as store:
        store.record([ContentRow("aa", 1)], [FileRow(_stat(raw), "aa")], [], MODEL)
        assert list(store.files_under([b"/r"])) == [raw]


def test_close_is_idempotent(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.sqlite")
    store.close()
    store.close()  # a second close is no error...
    with pytest.raises(DatabaseError, match="closed"):
        store.conn  # noqa: B018  ...and a closed store refuses to be used


def test_a_transaction_that_reads_then_writes_waits_for_another_writer(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE: with a plain (deferred) BEGIN, a read followed by a write fails at
    once ("database is locked") when another connection wrote in between; no busy wait
    can save it. Taking the write lock at BEGIN makes the other writer wait instead: it
    is refused while our transaction is open (a probe without a busy timeout shows it),
    and writes after our commit."""
    db = tmp_path / "state.sqlite"
    with Store.open(db) as store:
        read, refused, committed = threading.Event(), threading.Event(), threading.Event()
        errors: list[BaseException] = []

        def other_writer() -> None:
            read.wait(5)
            probe = sqlite3.connect(db, timeout=0, isolation_level=None)
            try:
                probe.execute("INSERT INTO model_files VALUES (x'01', 1, 1, 'other')")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc):
                    refused.set()  # our transaction holds the write lock since its BEGIN
            finally:
                probe.close()
            committed.wait(5)
            conn = sqlite3.connect(db, timeout=10, isolation_level=None)
            try:
                conn.execute("INSERT INTO model_files VALUES (x'01', 1, 1, 'other')")
            except BaseException as exc:
                errors.append(exc)
            finally:
                conn.close()

        thread = threading.Thread(target=other_writer)
        thread.start()
        with store.transaction() as conn:
            conn.execute("SELECT count(*) FROM model_files").fetchone()  # a read snapshot
            read.set()
            assert refused.wait(5), "the other writer got in during our transaction"
            conn.execute("INSERT INTO model_files VALUES (x'02', 2, 2, 'ours')")
        committed.set()
        thread.join(10)
        assert not errors
        rows = store.conn.execute("SELECT sha256 FROM model_files ORDER BY path").fetchall()
    assert rows == [("other",), ("ours",)]


def test_status_counts_are_the_keys_status_prints(tmp_path: Path) -> None:
    from imageclust_daemon.state.store import STATUS_KEYS, STATUS_MAPS

    with Store.open(tmp_path / "s.sqlite") as store:
        assert tuple(store.status(None)) == STATUS_KEYS + STATUS_MAPS
