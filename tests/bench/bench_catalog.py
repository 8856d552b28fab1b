"""Benchmark: publish the catalog of a synthetic N-photo library (not part of the test run).

    python tests/bench/bench_catalog.py [--photos 10000 100000]

Fills a state database through the real store (files, contents with metadata,
512-dim embeddings, groups of ~60 with titles), then publishes it. Prints the
state database's size, the catalog's size and the publish time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon.grouping import regroup
from imageclust_daemon.grouping.label import Label
from imageclust_daemon.published import catalog
from imageclust_daemon.records import ContentRow, FileRow, FileStat, PhotoMeta
from imageclust_daemon.state.store import Store

MODEL = "clip-vit-b32@sha256:bench"


def fill(store: Store, n: int, dim: int = 512, batch: int = 2000) -> None:
    rng = np.random.default_rng(0)
    for start in range(0, n, batch):
        contents, files, vectors = [], [], []
        for i in range(start, min(n, start + batch)):
            h = f"{i:064x}"
            meta = PhotoMeta(
                4000, 3000, f"20{10 + i % 14}-0{1 + i % 9}-1{i % 9}T12:00:00", None, None
            )
            contents.append(ContentRow(h, 3_000_000 + i, decoded=True, meta=meta))
            path = f"/home/user/Pictures/{2010 + i % 14}/event {i // 60}/IMG_{i:06d}.JPG"
            files.append(FileRow(FileStat(path.encode(), 3_000_000 + i, i, i, 1), h))
            v = rng.standard_normal(dim).astype(np.float32)
            vectors.append((h, v / np.linalg.norm(v)))
        store.record(contents, files, vectors, MODEL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--photos", type=int, nargs="+", default=[10_000, 100_000])
    args = p.parse_args()
    print(
        f"{'photos':>8} {'state DB':>10} {'catalog':>9} {'ratio':>6} "
        f"{'recluster':>10} {'publish':>8}"
    )
    for n in args.photos:
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp) / "state.sqlite"
            with Store.open(state) as store:
                fill(store, n)
                t0 = time.perf_counter()
                run = regroup.recluster(store, MODEL, min_size=5, max_size=200)
                recluster_s = time.perf_counter() - t0
                for job in store.label_jobs():
                    store.save_label(
                        job, Label(f"Group {job.cluster_id}", "A phrase", "fallback"), "m", 1
                    )
                store.checkpoint()
            dest = Path(tmp) / "catalog.sqlite"
            report = catalog.publish(state, dest, model_id=MODEL, daemon_version="bench")
            size_state = state.stat().st_size
            print(
                f"{n:>8} {size_state / 1e6:>7.1f} MB {report.bytes / 1e6:>6.1f} MB "
                f"{size_state / report.bytes:>5.1f}x {recluster_s:>8.1f} s {report.seconds:>6.2f} s"
                f"   ({run.n_clusters} groups)"
            )


if __name__ == "__main__":
    main()
