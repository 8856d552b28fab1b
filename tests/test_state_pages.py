"""The state database's 16 KB pages (state/pages.py): a new database has them; an older
one with 4 KB pages is rewritten once, whole and atomically, when its writer opens it,
and its embeddings then cost under 2.6 KB a photo (4.7 KB before)."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from imageclust_daemon.state import pages
from imageclust_daemon.state.store import Store
from tests.bench.bench_catalog import MODEL, fill

PHOTOS = 3000


def _page_size(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def _embedding_bytes(path: Path) -> int:
    """Bytes of pages the embeddings table and its index take (SQLite's dbstat)."""
    with closing(sqlite3.connect(path)) as conn:
        return int(
            conn.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN ('embeddings', 'embeddings_by_model')"
            ).fetchone()[0]
        )


def _vectors(path: Path) -> dict[str, bytes]:
    with closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT content_hash, vector FROM embeddings"))


@pytest.fixture
def old_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state database made as imageclust made them before: 4 KB pages."""
    path = tmp_path / "state.sqlite"
    with monkeypatch.context() as patched:
        patched.setattr(pages, "PAGE_SIZE", 4096)
        with Store.open(path) as store:
            fill(store, PHOTOS)
            store.checkpoint()
    assert _page_size(path) == 4096
    assert _embedding_bytes(path) / PHOTOS > 4500  # the 2 KB vectors spill to overflow pages
    return path


def test_a_new_state_database_has_16_kb_pages(tmp_path: Path) -> None:
    with Store.open(tmp_path / "state.sqlite"):
        pass
    assert _page_size(tmp_path / "state.sqlite") == 16384


def test_an_old_database_is_rewritten_once_with_all_it_held(
    old_state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = _vectors(old_state)
    caplog.set_level(logging.WARNING)
    with Store.open(old_state) as store:
        assert store.status(MODEL)["embedded"] == PHOTOS
    assert "rewritten with 16 KB pages" in caplog.text
    assert _page_size(old_state) == 16384
    assert _vectors(old_state) == before
    assert _embedding_bytes(old_state) / PHOTOS < 2600
    with closing(sqlite3.connect(old_state)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    caplog.clear()
    with Store.open(old_state):
        pass
    assert "rewrit" not in caplog.text  # once


def test_an_old_database_open_elsewhere_waits_for_a_later_open(old_state: Path) -> None:
    reader = sqlite3.connect(old_state)
    reader.execute("SELECT count(*) FROM embeddings").fetchone()
    try:
        with Store.open(old_state) as store:  # still works as it is
            assert store.status(MODEL)["embedded"] == PHOTOS
        assert _page_size(old_state) == 4096
    finally:
        reader.close()
    with Store.open(old_state):
        pass
    assert _page_size(old_state) == 16384


def test_without_room_for_the_rewrite_it_is_left_as_it_is(
    old_state: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pages, "ROOM_FACTOR", 1e12)
    caplog.set_level(logging.WARNING)
    with Store.open(old_state) as store:
        assert store.status(MODEL)["embedded"] == PHOTOS
    assert "not rewritten with 16 KB pages" in caplog.text
    assert _page_size(old_state) == 4096


def test_a_rewrite_that_fails_leaves_the_database_as_it_was(
    old_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VACUUM that fails (here: its temporary folder is not a folder, as a full disk
    fails it) is rolled back by SQLite: the database as it was, and usable."""
    before = _vectors(old_state)
    monkeypatch.setattr(pages, "_quoted", lambda folder: str(folder / "no such folder"))
    with Store.open(old_state) as store:
        assert store.status(MODEL)["embedded"] == PHOTOS
    assert _page_size(old_state) == 4096
    assert _vectors(old_state) == before
    vector = np.frombuffer(next(iter(before.values())), dtype=np.float32)
    assert vector.shape == (512,)
