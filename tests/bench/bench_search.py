"""Benchmark: search by words over a synthetic N-photo library (not part of the test run).

    python tests/bench/bench_search.py [--photos 100000] [--million] [--text-model T.onnx]

For each N: fills a state database through the real store (512-dim embeddings),
publishes it (timing the search snapshot's share of the publish), then measures,
in one run side by side:

- warm: the snapshot open and mapped, the text model loaded; one query's text
  embedding, ranking and the catalog lookup of the 20 best (median of 7);
- cold: the whole `imageclust search "..." --json` command in a new process;
- memory: a new process's peak RSS growth while it opens the snapshot and ranks,
  against the size of the embedding matrix.

`--million` also times ranking over a 1M x 512 snapshot written in the documented
format (2 GB in the temp dir). `--text-model`: a text tower to use (say one from
`tests/tools/make_text_model.py`, with CLIP's real architecture); the default is the
tests' tiny text tower, which costs next to nothing, so the figures are the search's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon import config as config_module
from imageclust_daemon.model import models
from imageclust_daemon.published import catalog, search
from imageclust_daemon.state.store import Store
from tests.bench.bench_catalog import MODEL, fill
from tests.clip_vocab import write_tokenizer_json
from tests.conftest import write_config
from tests.onnx_models import build_tiny_clip_text

QUERY = "a dog running on the beach at sunset"


def timed_publish(state: Path, dest: Path) -> tuple[float, float]:
    """(publish seconds, of which writing the snapshot)."""
    spent: list[float] = []
    write = search.write

    def measured(*args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return write(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - t0)

    search.write = measured  # type: ignore[assignment]
    try:
        report = catalog.publish(state, dest, model_id=MODEL, daemon_version="bench")
    finally:
        search.write = write  # type: ignore[assignment]
    return report.seconds, sum(spent)


def memory_probe(cfg_path: Path) -> tuple[float, float]:
    """In a new process: (resident memory grown while it opens the snapshot and ranks, MB
    (VmRSS after - before, the mapped matrix pages included); the matrix's MB)."""
    code = f"""
import sys, numpy as np
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from imageclust_daemon import config
from imageclust_daemon.published import search
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
cfg = config.load(__import__("pathlib").Path({str(cfg_path)!r}))
before = rss()
snap = search.open_for(cfg.catalog_path)
q = np.ones(snap.dim, np.float32) / np.sqrt(snap.dim)
search.hits(cfg.catalog_path, snap, search.rank(snap, q, 20))
print(rss() - before, snap.matrix.nbytes / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown, matrix = out.stdout.split()
    return float(grown), float(matrix)


def bench(n: int, text_model: Path | None, tmp: Path) -> None:
    state = tmp / "state.sqlite"
    with Store.open(state) as store:
        fill(store, n)
        store.checkpoint()
    data = tmp / "data"
    data.mkdir()
    (tmp / "state.sqlite").rename(data / "state.sqlite")
    publish_s, snapshot_s = timed_publish(data / "state.sqlite", data / "catalog.sqlite")
    text = text_model or build_tiny_clip_text(tmp / "text.onnx", dim=512, seed=1)
    cfg_path = write_config(
        tmp / "c.toml",
        storage={"data_dir": str(data)},
        model={"text_path": str(text), "tokenizer_path": str(write_tokenizer_json(tmp / "t.json"))},
    )
    cfg = config_module.load(cfg_path)
    snapshot = search.open_for(cfg.catalog_path)
    words = models.open_text_model(models.locate(cfg), vision_dim=snapshot.dim)
    warm = []
    for _ in range(7):
        t0 = time.perf_counter()
        query = words.embed([QUERY])[0]
        found = search.hits(cfg.catalog_path, snapshot, search.rank(snapshot, query, 20))
        warm.append(time.perf_counter() - t0)
    assert len(found) == 20
    cold = []
    for _ in range(3):
        t0 = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "imageclust_daemon",
                "--config",
                str(cfg_path),
                "search",
                QUERY,
                "--json",
            ],
            capture_output=True,
            text=True,
        )
        cold.append(time.perf_counter() - t0)
        assert result.returncode == 0 and len(json.loads(result.stdout)) == 20, result.stderr
    grown, matrix = memory_probe(cfg_path)
    print(
        f"{n:>8} photos: publish {publish_s:.2f} s (snapshot {snapshot_s:.2f} s, "
        f"{snapshot.path.stat().st_size / 1e6:.0f} MB); search warm "
        f"{statistics.median(warm) * 1000:.0f} ms, cold command {statistics.median(cold):.2f} s; "
        f"memory while searching +{grown:.0f} MB for a {matrix:.0f} MB matrix "
        f"({grown / matrix:.2f}x)"
    )


def write_snapshot(path: Path, n: int, dim: int, seed: int = 0, rows: int = 65_536) -> None:
    """A snapshot in the documented format (README, `search`), random unit rows."""
    rng = np.random.default_rng(seed)
    header = {"format": 1, "model": MODEL, "dim": dim, "count": n, "token": "bench"}
    align = lambda x: -(-x // 64) * 64  # noqa: E731
    probe = json.dumps({**header, "hashes_offset": 0, "flags_offset": 0, "matrix_offset": 0})
    hashes_at = align(12 + len(probe) + 64)
    flags_at = align(hashes_at + 32 * n)
    matrix_at = align(flags_at + n)
    header.update(hashes_offset=hashes_at, flags_offset=flags_at, matrix_offset=matrix_at)
    encoded = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(b"ICSEARCH" + struct.pack("<I", len(encoded)) + encoded)
        f.write(b"\0" * (hashes_at - f.tell()))
        f.write(np.arange(n, dtype=">u8").view(np.uint8).reshape(n, 8).repeat(4, axis=1).tobytes())
        f.write(b"\0" * (matrix_at - f.tell()))
        for start in range(0, n, rows):
            x = rng.standard_normal((min(rows, n - start), dim)).astype("<f4")
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            f.write(x.tobytes())


def bench_million(tmp: Path) -> None:
    path = tmp / "million.snapshot"
    write_snapshot(path, 1_000_000, 512)
    snapshot = search.read(path)
    query = np.asarray(snapshot.matrix[123], dtype=np.float32)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        top = search.rank(snapshot, query, 20)
        times.append(time.perf_counter() - t0)
    assert top[0][0] == 123
    print(
        f" 1000000 photos: ranking warm {statistics.median(times) * 1000:.0f} ms "
        f"(first, page cache filling: {times[0] * 1000:.0f} ms)"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--photos", type=int, nargs="+", default=[100_000])
    p.add_argument("--million", action="store_true")
    p.add_argument("--text-model", type=Path)
    args = p.parse_args()
    print(f"cores: {os.cpu_count()}")
    for n in args.photos:
        with tempfile.TemporaryDirectory() as tmp:
            bench(n, args.text_model, Path(tmp))
    if args.million:
        with tempfile.TemporaryDirectory() as tmp:
            bench_million(Path(tmp))


if __name__ == "__main__":
    main()
