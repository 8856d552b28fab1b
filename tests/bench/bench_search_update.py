"""Benchmark: writing the search snapshot after a few photos changed, from the snapshot
before (rows of unchanged contents copied) against from the state alone (not part of
the test run).

    python tests/bench/bench_search_update.py [--photos 1000000] [--changed 0.01]

Fills a state database (bench_catalog.fill: 512-dim embeddings), writes its snapshot,
then adds `--changed` x N photos and writes the next snapshot both ways, side by side,
each twice. Prints the seconds of each and checks the two files are the same.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon.durable import sqlite_uri
from imageclust_daemon.published import search
from imageclust_daemon.state.store import Store
from tests.bench.bench_catalog import MODEL, fill


def planned(state: Path, folder: Path) -> search.Plan:
    with closing(sqlite3.connect(sqlite_uri(state, mode="ro"), uri=True)) as conn:
        rows = conn.execute(
            "SELECT content_hash, 0 FROM published_embeddings WHERE model_id = ? "
            "ORDER BY content_hash",
            (MODEL,),
        )
        return search.plan(rows, folder, "catalog.sqlite", MODEL)


def written(state: Path, folder: Path, previous: Path | None) -> tuple[Path, float]:
    folder.mkdir(parents=True, exist_ok=True)
    plan = planned(state, folder)
    started = time.perf_counter()
    with closing(sqlite3.connect(sqlite_uri(state, mode="ro"), uri=True)) as conn:
        search.write(plan, conn, folder, "catalog.sqlite", threading.Event(), previous)
    return folder / plan.name, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--photos", type=int, default=1_000_000)
    p.add_argument("--changed", type=float, default=0.01)
    p.add_argument("--dir", type=Path, default=None)
    args = p.parse_args()
    n, more = args.photos, int(args.photos * args.changed)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        state = Path(tmp) / "state.sqlite"
        with Store.open(state) as store:
            fill(store, n)
            store.checkpoint()
        before, seconds = written(state, Path(tmp) / "before", None)
        print(
            f"{n:,} photos: the first snapshot "
            f"({before.stat().st_size / 1e9:.2f} GB) {seconds:.1f} s"
        )
        with Store.open(state) as store:
            fill(store, n + more)  # the first n again, unchanged, and `more` new
            store.checkpoint()
        for attempt in (1, 2):
            kept, t_kept = written(state, Path(tmp) / f"kept{attempt}", before)
            whole, t_whole = written(state, Path(tmp) / f"whole{attempt}", None)
            same = kept.read_bytes() == whole.read_bytes()
            print(
                f"after {more:,} new ({args.changed:.0%}): from the snapshot before "
                f"{t_kept:.1f} s, from the state alone {t_whole:.1f} s "
                f"({t_kept / t_whole:.2f}x); same file: {same}"
            )


if __name__ == "__main__":
    main()
