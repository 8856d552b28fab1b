"""The daemon's jobs: the model held only while there is work; failures retried, stops prompt."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imageclust_daemon import config
from imageclust_daemon.config import Config
from imageclust_daemon.index.watch import ChangeBuffer
from imageclust_daemon.model import manifest
from imageclust_daemon.service import jobs as jobs_module
from imageclust_daemon.service.daemon import Daemon
from imageclust_daemon.service.jobs import Jobs, LazyModel
from imageclust_daemon.state import store as store_module
from imageclust_daemon.state.store import Store
from tests import photos
from tests.conftest import REPO
from tests.library import scene_library


def test_the_session_opens_on_first_use_and_closes_when_idle(tiny_model: Path) -> None:
    spec = manifest.load_manifest()["clip-vit-b32"]
    model = LazyModel(spec, tiny_model, "tiny@sha256:x")
    assert not model.loaded
    out = model.embed(np.zeros((2, 3, 224, 224), np.float32))
    assert out.shape == (2, 32) and model.loaded
    model.release_if_idle(now=0.0, idle=300.0)  # used just now: kept
    assert model.loaded
    model.release_if_idle(now=float("inf"))
    assert not model.loaded
    assert model.embed(np.zeros((1, 3, 224, 224), np.float32)).shape == (1, 32)


# -- the jobs, on a real state database, model and library ----------------------------------


@pytest.fixture
def make_jobs(
    tmp_path: Path, tiny_model: Path
) -> Iterator[Callable[..., tuple[Config, Path, ChangeBuffer, Jobs]]]:
    made: list[Jobs] = []

    def make(**sections: dict[str, Any]) -> tuple[Config, Path, ChangeBuffer, Jobs]:
        root = tmp_path / "Photos"
        root.mkdir(exist_ok=True)
        doc: dict[str, dict[str, Any]] = {
            "library": {"roots": [str(root)], "settle_seconds": 0.0},
            "storage": {"data_dir": str(tmp_path / "data")},
            "model": {"path": str(tiny_model), "batch_size": 4},
            "schedule": {"recluster_seconds": 0, "publish_seconds": 0},
            "cluster": {"min_size": 3, "max_size": 40},
            "ollama": {"host": "http://127.0.0.1:9", "connect_timeout": 0.2},
        }
        for section, body in sections.items():
            doc.setdefault(section, {}).update(body)
        cfg = config.from_mapping(doc)
        Store.open(cfg.state_db_path).close()
        model = Daemon(lambda: cfg)._model(cfg)
        buffer = ChangeBuffer(0.0)
        jobs = Jobs(cfg, model, buffer, threading.Event(), lambda text: None)
        jobs.start(paused=True)  # jobs are scheduled; the tests run them by hand
        made.append(jobs)
        return cfg, root, buffer, jobs

    yield make
    for jobs in made:
        jobs.shutdown()


def _live(cfg: Config) -> set[str]:
    with Store.open(cfg.state_db_path) as store:
        rows = store.conn.execute("SELECT path FROM files WHERE state = 'live'").fetchall()
    return {os.path.basename(os.fsdecode(p)) for (p,) in rows}


@contextlib.contextmanager
def _database_locked(cfg: Config) -> Iterator[None]:
    """Another writer (a CLI `index`) holds the state database's write lock."""
    other = sqlite3.connect(cfg.state_db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_failed_ingest_or_first_rescan_is_retried_not_dropped(
    make_jobs: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 200)
    cfg, root, buffer, jobs = make_jobs()
    photos.save_jpeg(photos.photo_like(1), root / "before.jpg")
    with _database_locked(cfg):
        jobs._guarded("reconcile", jobs.reconcile)()  # fails: database is locked
    assert not jobs._started and buffer.rescan.is_set()
    retry = jobs.scheduler.get_job("retry")
    due = datetime.now().astimezone() + timedelta(seconds=jobs_module.RETRY_AFTER)
    assert abs((retry.next_run_time - due).total_seconds()) < 5, "a rescan is scheduled"
    jobs.ingest()  # the retry job is pending: ingest leaves the rescan to it
    assert _live(cfg) == set()
    retry.func()  # what the scheduler runs when the retry is due
    assert jobs._started and _live(cfg) == {"before.jpg"}
    assert jobs.scheduler.get_job("retry") is None, "a rescan that worked ends the retry"

    new = photos.save_jpeg(photos.photo_like(2), root / "new.jpg")
    buffer.touch(os.fsencode(new))
    assert buffer.take_settled() == []  # the first look notes its size and mtime
    with _database_locked(cfg):
        jobs._guarded("ingest", jobs.ingest)()  # takes the path from the buffer, then fails
    assert len(buffer) == 0 and buffer.rescan.is_set()
    jobs.scheduler.get_job("retry").func()  # the rescan it asked for finds the photo
    assert _live(cfg) == {"before.jpg", "new.jpg"}


def test_the_first_rescan_brings_the_first_regroup_forward(
    make_jobs: Callable[..., Any],
) -> None:
    """Albums appear as soon as the library is known, not a recluster interval later."""
    _, root, _, jobs = make_jobs(schedule={"recluster_seconds": 3600})
    scene_library(root, 2, 4)
    later = jobs.scheduler.get_job("regroup").next_run_time
    assert (later - datetime.now().astimezone()).total_seconds() > 3000
    jobs.reconcile()
    soon = jobs.scheduler.get_job("regroup").next_run_time
    assert (soon - datetime.now().astimezone()).total_seconds() < 5


def test_a_failed_regroup_or_publish_runs_again(
    make_jobs: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 200)
    cfg, root, _, jobs = make_jobs()
    scene_library(root, 2, 4)
    jobs.reconcile()
    with _database_locked(cfg):
        jobs._guarded("regroup", jobs.regroup)()
    cfg.catalog_path.mkdir()  # publish cannot rename the new catalog over a folder
    (cfg.catalog_path / "x").write_text("x")
    jobs._guarded("publish", jobs.publish)()
    assert jobs._dirty and jobs._publish_due and not cfg.catalog_path.is_file()
    shutil.rmtree(cfg.catalog_path)
    jobs.regroup()  # (stays dirty after: Ollama is away, so it asks again next time)
    jobs.publish()
    assert not jobs._publish_due
    conn = sqlite3.connect(f"file:{cfg.catalog_path}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT count(*) FROM clusters").fetchone() == (2,)
    finally:
        conn.close()


def test_regroup_waits_for_a_due_rescan_but_not_forever(
    make_jobs: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 200)
    cfg, root, buffer, jobs = make_jobs()
    scene_library(root, 2, 4)
    jobs.reconcile()
    buffer.request_rescan("test")
    jobs.regroup()
    assert jobs._dirty, "waits: the library is about to be rescanned"
    for _ in range(jobs_module.GIVE_UP_WAITING):
        with _database_locked(cfg):
            jobs._guarded("reconcile", jobs.reconcile)()
    assert buffer.rescan.is_set()
    jobs.regroup()  # rescans keep failing: group what is known rather than never
    with Store.open(cfg.state_db_path) as store:
        groups = store.conn.execute("SELECT count(*) FROM clusters").fetchone()[0]
    assert groups == 2


def test_stop_during_a_hung_ollama_request_ends_the_relabel_at_once(
    make_jobs: Callable[..., Any], fake_ollama: Any
) -> None:
    fake_ollama.default = "hang"
    fake_ollama.hang_seconds = 30
    _, root, _, jobs = make_jobs(
        ollama={"host": fake_ollama.url, "model": "llava", "timeout": 30.0, "attempts": 3},
        cluster={"min_size": 3, "max_size": 40},
    )
    scene_library(root, 4, 4)
    jobs.reconcile()
    worker = threading.Thread(target=jobs._guarded("regroup", jobs.regroup))
    worker.start()
    deadline = time.monotonic() + 20
    while not fake_ollama.generate_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_ollama.generate_requests(), "a title request is in flight"
    jobs.shutdown()  # what SIGTERM does: set stop, close the client
    # The request hangs for 30 s, up to 3 times: ended within 10 s, the stop cut it short.
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert len(fake_ollama.generate_requests()) == 1, "nothing more is asked after a stop"
    fake_ollama.stop()  # ends the hung request: its abandoned thread exits


def test_maintenance_runs_soon_after_a_start_and_a_reload_does_not_push_it_back(
    make_jobs: Callable[..., Any],
) -> None:
    cfg, _, _, jobs = make_jobs()
    first = jobs.scheduler.get_job("maintenance").next_run_time
    soon = datetime.now().astimezone() + timedelta(seconds=jobs_module.MAINTENANCE_AFTER_START)
    assert abs((first - soon).total_seconds()) < 5
    jobs.reload(cfg)
    assert jobs.scheduler.get_job("maintenance").next_run_time == first


def test_an_inotify_overflow_asks_for_a_rescan_at_any_log_level(tmp_path: Path) -> None:
    """watchdog only logs an overflow (a WARNING): `--log-level ERROR` must not hide it."""
    script = f"""
import logging, pathlib
from imageclust_daemon.logs import configure_logging
from imageclust_daemon.index.watch import ChangeBuffer, Watcher
configure_logging("ERROR")
buffer = ChangeBuffer(0.0)
watcher = Watcher([pathlib.Path({str(tmp_path)!r})], buffer)
watcher.start()
logging.getLogger("watchdog.observers.inotify_buffer").warning("Inotify queue overflowed")
logging.getLogger("imageclust_daemon.test").warning("hidden at ERROR")
watcher.stop()
print("rescan" if buffer.rescan.is_set() else "no rescan")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "rescan"
    # Only warnings are hidden: watchdog may log an ERROR of its own when an observer
    # stops right after it started ("queue_events() called when the thread is inactive").
    shown = [line for line in result.stderr.splitlines() if " ERROR " not in line]
    assert shown == [], "the ERROR level still hides warnings"


def test_a_stop_publishes_only_what_this_run_changed(make_jobs: Callable[..., Any]) -> None:
    """A stop publishes what changed since the last publish; a daemon stopped before it
    changed anything does not spend a publish (~22 s at 1M photos) on the same catalog."""
    cfg, root, _, first = make_jobs()
    scene_library(root, 2, 4)
    first.reconcile()
    first.shutdown()  # indexed, not yet published: the stop publishes it
    published = cfg.catalog_path.stat().st_ino
    _, _, _, second = make_jobs()
    second.reconcile()  # nothing changed
    second.shutdown()
    assert cfg.catalog_path.stat().st_ino == published, "published again for nothing"
    photos.save_jpeg(photos.photo_like(9, scene=1), root / "new.jpg")
    _, _, _, third = make_jobs()
    third.reconcile()
    third.shutdown()
    assert cfg.catalog_path.stat().st_ino != published
    conn = sqlite3.connect(f"file:{cfg.catalog_path}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT count(*) FROM photos").fetchone() == (9,)
    finally:
        conn.close()
