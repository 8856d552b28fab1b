"""The first index on a Dask cluster: a real `LocalCluster(processes=True)` with two
worker processes on 127.0.0.1 (tests/dask_cluster.py), driven through the real
`imageclust index --dask` command. What it records must be what a local index records;
unreachable schedulers, refused workers and killed workers lose nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imageclust_daemon.index import dask_index, pipeline
from imageclust_daemon.model import manifest, models
from imageclust_daemon.records import FileRow, FileStat
from imageclust_daemon.state.store import Store
from tests import photos
from tests.conftest import run_cli, write_config
from tests.dask_cluster import LocalDask
from tests.dng import Preview, dng_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dask() -> Iterator[LocalDask]:
    cluster = LocalDask(workers=2)
    try:
        yield cluster
    finally:
        cluster.close()


def _config(base: Path, name: str, root: Path, model: Path, **extra: dict[str, object]) -> Path:
    return write_config(
        base / f"{name}.toml",
        library={"roots": [str(root)]},
        storage={"data_dir": str(base / name)},
        model={"path": str(model), "batch_size": 4},
        **extra,
    )


def _library(root: Path) -> None:
    """Photos of three scenes, a copy, a RAW, a HEIC, and files that fail for each reason."""
    root.mkdir()
    for scene in range(3):
        for shot in range(5):
            img = photos.photo_like(10 * scene + shot, scene=scene)
            photos.save_jpeg(img, root / f"scene{scene}_{shot}.jpg")
    shutil.copyfile(root / "scene0_0.jpg", root / "copy of scene0_0.jpg")
    img = photos.photo_like(40, scene=1)
    (root / "IMG_0040.DNG").write_bytes(dng_bytes(img, preview=Preview(img.resize((320, 240)))))
    photos.save_heic(photos.photo_like(41, scene=2), root / "IMG_0041.HEIC")
    photos.write_corrupt_jpeg(root / "corrupt.jpg")
    photos.write_truncated_jpeg(root / "truncated.jpg")
    photos.write_text_as_jpg(root / "notes.jpg")
    (root / "empty.jpg").write_bytes(b"")


def _recorded(data_dir: Path) -> tuple[list[tuple[object, ...]], dict[str, np.ndarray]]:
    conn = sqlite3.connect(f"file:{data_dir / 'state.sqlite'}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT f.path, f.size, f.content_hash, f.error, f.state, c.width, c.height, "
            "c.taken_at, c.lat, c.lon, c.format, c.error FROM files f "
            "LEFT JOIN contents c ON c.hash = f.content_hash ORDER BY f.path"
        ).fetchall()
        vectors = {
            h: np.frombuffer(v, dtype="<f4")
            for h, v in conn.execute("SELECT content_hash, vector FROM embeddings")
        }
    finally:
        conn.close()
    return rows, vectors


def _index(config: Path, *extra: str) -> dict[str, object]:
    result = run_cli("--config", str(config), "index", "--no-group", "--json", *extra)
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_a_dask_index_records_exactly_what_a_local_index_records(
    tmp_path: Path, tiny_model: Path, dask: LocalDask
) -> None:
    root = tmp_path / "Photos"
    _library(root)
    here = _config(tmp_path, "local", root, tiny_model)
    there = _config(tmp_path, "dask", root, tiny_model)
    local = _index(here)
    remote = _index(there, "--dask", dask.address)
    for key in ("scanned", "hashed", "embedded", "reused", "failed", "left"):
        assert remote[key] == local[key], key
    assert remote["failed"] == 4 and remote["left"] == 0
    rows_here, vectors_here = _recorded(tmp_path / "local")
    rows_there, vectors_there = _recorded(tmp_path / "dask")
    assert rows_there == rows_here, "same files, hashes, metadata, failures and reasons"
    assert vectors_there.keys() == vectors_here.keys()
    for content_hash, vector in vectors_here.items():
        np.testing.assert_allclose(vectors_there[content_hash], vector, atol=1e-5)

    # Idempotent: nothing is read again. A copy of a photo already embedded is hashed on
    # its worker and never decoded or embedded again; a new photo is.
    again = _index(there, "--dask", dask.address)
    assert again["hashed"] == 0 and again["embedded"] == 0
    shutil.copyfile(root / "scene1_1.jpg", root / "another copy.jpg")
    photos.save_jpeg(photos.photo_like(99, scene=0), root / "new.jpg")
    more = _index(there, "--dask", dask.address)
    assert (more["hashed"], more["embedded"], more["reused"]) == (2, 1, 1)


def test_an_unreachable_scheduler_is_a_clear_error_that_changes_nothing(
    tmp_path: Path, tiny_model: Path
) -> None:
    root = tmp_path / "Photos"
    root.mkdir()
    photos.save_jpeg(photos.photo_like(1), root / "a.jpg")
    config = _config(
        tmp_path,
        "data",
        root,
        tiny_model,
        index={"dask_scheduler": "tcp://127.0.0.1:1", "dask_connect_timeout": 1.0},
    )
    result = run_cli("--config", str(config), "index", "--no-progress")
    assert result.returncode == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
    rows, _ = _recorded(tmp_path / "data")
    assert rows == [], "nothing was recorded"
    # The local index finishes the job: the same command without a scheduler.
    config = _config(tmp_path, "data", root, tiny_model)
    assert _index(config)["embedded"] == 1


_POISON = """
from imageclust_daemon.index import dask_index

def poison(path):
    st = os.stat(path)
    dask_index._digests[(path, st.st_size, st.st_mtime_ns)] = "0" * 64

workers = sorted(client.scheduler_info()["workers"])
client.run(poison, {path!r}, workers=workers[:{count}])
result = workers[:{count}]
"""


def test_a_worker_whose_model_differs_is_given_no_photos(tmp_path: Path, tiny_model: Path) -> None:
    root = tmp_path / "Photos"
    _library(root)
    cluster = LocalDask(workers=2)
    try:
        # One worker's model file "differs" (its checksum, as that worker computes it).
        refused = cluster.run(_POISON.format(path=str(tiny_model), count=1))
        config = _config(tmp_path, "one", root, tiny_model)
        result = run_cli("--config", str(config), "index", "--no-group", "--dask", cluster.address)
        assert result.returncode == 0, result.stderr
        assert f"dask worker {refused[0]} is given no photos" in result.stderr  # type: ignore[index]
        assert "has sha256 0000000000000000..." in result.stderr
        rows, vectors = _recorded(tmp_path / "one")
        assert len(rows) == 22 and len(vectors) == 17, "the other worker did all of it"

        cluster.run(_POISON.format(path=str(tiny_model), count=2))
        config = _config(tmp_path, "none", root, tiny_model)
        result = run_cli("--config", str(config), "index", "--dask", cluster.address)
        assert result.returncode == 1
        assert "no worker has the model file" in result.stderr
        assert _recorded(tmp_path / "none")[0] == [], "refused before anything is written"
    finally:
        cluster.close()


def _many(root: Path, n: int) -> None:
    """n distinct 1600x1200 JPEGs: 8 pictures, each file with its own bytes after the
    end-of-image marker (so each is hashed, decoded and embedded on its own)."""
    root.mkdir()
    pictures = [
        photos.jpeg_bytes(photos.photo_like(i, size=(1600, 1200), scene=i)) for i in range(8)
    ]
    for i in range(n):
        (root / f"IMG_{i:04d}.jpg").write_bytes(pictures[i % 8] + i.to_bytes(4, "big"))


def _count(data_dir: Path, sql: str) -> int:
    try:
        conn = sqlite3.connect(f"file:{data_dir / 'state.sqlite'}?mode=ro", uri=True)
        try:
            return int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0  # not created yet, or mid-migration


def _index_killing_a_worker(
    tmp_path: Path, root: Path, tiny_model: Path, cluster: LocalDask, pid: int, wait: float
) -> tuple[Path, dict[str, Any], str]:
    """`index --dask` on `cluster`, the worker of `pid` SIGKILLed once the first batch is
    recorded; it must end within `wait` seconds with exit 0: (config, report, stderr)."""
    config = _config(tmp_path, "data", root, tiny_model)
    command = [sys.executable, "-m", "imageclust_daemon", "--config", str(config)]
    run = subprocess.Popen(
        [*command, "index", "--no-group", "--json", "--dask", cluster.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while _count(tmp_path / "data", "SELECT count(*) FROM files") == 0:
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.02)
    assert run.poll() is None, "the run ended before a worker could be killed"
    os.kill(pid, signal.SIGKILL)  # mid-run: it holds shards being read and queued
    killed = time.monotonic()
    out, err = run.communicate(timeout=wait)
    assert time.monotonic() - killed < wait
    assert run.returncode == 0, err
    return config, json.loads(out), err


def test_a_worker_killed_mid_run_loses_nothing(tmp_path: Path, tiny_model: Path) -> None:
    root = tmp_path / "Photos"
    n = 600
    _many(root, n)
    cluster = LocalDask(workers=2)
    try:
        victim, pid = sorted(cluster.worker_pids().items())[0]
        _, report, _ = _index_killing_a_worker(tmp_path, root, tiny_model, cluster, pid, 300)
        assert report["embedded"] == n and report["left"] == 0 and report["failed"] == 0
        assert _count(tmp_path / "data", "SELECT count(*) FROM embeddings") == n
        assert victim not in cluster.worker_pids() or cluster.worker_pids()[victim] != pid
    finally:
        cluster.close()


def test_the_only_worker_killed_mid_run_ends_the_run_with_what_was_done(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Before: with its only worker killed (its nanny starts another, at a new address the
    shards are not bound to), `index --dask` never returned. Now it ends once no worker
    of the run has been seen for WORKERLESS_SECONDS, keeping what was committed, and a
    local run finishes the rest."""
    root = tmp_path / "Photos"
    n = 600
    _many(root, n)
    cluster = LocalDask(workers=1)
    try:
        [(_, pid)] = cluster.worker_pids().items()
        wait = dask_index.WORKERLESS_SECONDS + 120
        config, report, err = _index_killing_a_worker(
            tmp_path, root, tiny_model, cluster, pid, wait
        )
        assert 0 < report["embedded"] < n and report["left"] > 0, report
        assert "every worker this run started with is gone" in err
    finally:
        cluster.close()
    assert _index(config)["embedded"] == n - report["embedded"]  # the rest, here


def test_a_file_a_worker_cannot_find_is_left_when_it_is_here_and_gone_when_it_is_not(
    tmp_path: Path, tiny_model: Path
) -> None:
    here = tmp_path / "here.jpg"
    photos.save_jpeg(photos.photo_like(1), here)
    gone = tmp_path / "gone.jpg"
    with Store.open(tmp_path / "s.sqlite") as store:
        loaded = models.load_model(manifest.load_manifest()["clip-vit-b32"], tiny_model, store)
        batches = pipeline.Batches(store, loaded, 4)
        results = [
            pipeline.Prepared(FileRow(FileStat(os.fsencode(p), 1, 1, 1, 1), None), vanished=True)
            for p in (here, gone)
        ]
        dask_index.Cluster._record(results, batches)
        assert batches.tally.left == [os.fsencode(here)], "not found there: not its fault"
        assert batches.tally.vanished == [os.fsencode(gone)]
