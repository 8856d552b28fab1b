"""Benchmark: the first index on a Dask cluster (not part of the test run).

    python tests/tools/make_vit_model.py /tmp/vit-b32.onnx        # once (needs torch)
    python tests/bench/bench_dask.py /tmp/vit-b32.onnx [--photos 120] [--records 50000]

Side by side in one run, on the same library of 12-MP JPEGs (bench_embed's):
  - `pipeline.index` on this machine;
  - the same through `dask_index.Cluster` on a LocalCluster(processes=True) of 1, then
    2 workers (one thread each; each worker's ONNX Runtime uses every core it sees);
and the single writer's ceiling: shards of 64 already-embedded files (file, content and
512-float embedding rows) committed one transaction each, as the cluster's results are.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon.index import dask_index, pipeline
from imageclust_daemon.model import manifest, models
from imageclust_daemon.records import ContentRow, FileRow, FileStat, PhotoMeta
from imageclust_daemon.state.store import Store
from tests.bench.bench_embed import ReaderFor, end_to_end, here, make_library


def on_dask(workers: int, model_path: Path) -> ReaderFor:
    """A LocalCluster(processes=True) of `workers` for the run, its Cluster as the reader."""

    @contextmanager
    def reader_for(loaded: models.LoadedModel) -> Iterator[pipeline.Reader]:
        from distributed import LocalCluster

        with LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster:
            client = dask_index.Cluster.connect(
                cluster.scheduler_address, model_path, loaded.id, timeout=10.0
            )
            try:
                client.ready_workers()  # each worker hashes the model file once, before timing
                yield client.read_and_embed
            finally:
                client.close()

    return reader_for


def index_rate(model_path: Path, library: Path, batch: int, workers: int) -> float:
    spec = manifest.load_manifest()["clip-vit-b32"]
    reader_for = on_dask(workers, model_path) if workers else here
    return end_to_end(model_path, library, spec, batch, reader_for)


def commit_rate(records: int, dim: int = 512, shard: int = 64) -> float:
    """Embeddings per second the one writer commits, shard by shard, as `_record` does."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((shard, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "s.sqlite") as store:
        started = time.perf_counter()
        for first in range(0, records, shard):
            files, contents, embedded = [], [], []
            for i in range(first, min(first + shard, records)):
                content_hash = f"{i:064x}"
                path = f"/photos/{i // 1000:05d}/IMG_{i:07d}.jpg".encode()
                files.append(FileRow(FileStat(path, 4_000_000, i, i, 1), content_hash))
                meta = PhotoMeta(4000, 3000, "2024-07-14T15:30:00", None, None, "JPEG")
                contents.append(ContentRow(content_hash, 4_000_000, decoded=True, meta=meta))
                embedded.append((content_hash, vectors[i % shard]))
            store.record(contents, files, embedded, "bench@sha256:" + "0" * 64)
        return records / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", type=Path)
    p.add_argument("--photos", type=int, default=120)
    p.add_argument("--library", type=Path, default=Path(tempfile.gettempdir()) / "bench-12mp")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--records", type=int, default=50_000)
    args = p.parse_args()
    make_library(args.library / str(args.photos), args.photos)
    library = args.library / str(args.photos)
    local = index_rate(args.model, library, args.batch, 0)
    one = index_rate(args.model, library, args.batch, 1)
    two = index_rate(args.model, library, args.batch, 2)
    writer = commit_rate(args.records)
    print(f"{args.photos} photos of 12 MP, {args.model.name}, {os.cpu_count()} cores")
    print(f"  local index                     {local:7.2f} photos/s")
    print(f"  dask, 1 worker                  {one:7.2f} photos/s  ({one / local:.2f} of local)")
    print(f"  dask, 2 workers (same 2 cores)  {two:7.2f} photos/s  ({two / local:.2f} of local)")
    print(f"  the writer commits              {writer:7.0f} embeddings/s ({args.records} records)")


if __name__ == "__main__":
    main()
