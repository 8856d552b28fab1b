"""Benchmark: what the state database costs a photo, before and after its 16 KB pages
(state/pages.py), and the one-time rewrite's time (not part of the test run).

    python tests/bench/bench_store.py [--photos 100000 1000000] [--dir DIR]

Fills a state database as imageclust made them before (4 KB pages) through the real
store (bench_catalog.fill: files, contents, 512-dim embeddings), then opens it as a
writer does now, which rewrites it once. Prints, before and after: bytes a photo in
the whole database and in the embeddings (table and index, from SQLite's dbstat), and
the time to read every embedding; and the rewrite's time.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon.state import pages
from imageclust_daemon.state.store import Store
from tests.bench.bench_catalog import fill


def measured(path: Path, n: int) -> str:
    with closing(sqlite3.connect(path)) as conn:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        embeddings = conn.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name IN ('embeddings', 'embeddings_by_model')"
        ).fetchone()[0]
        started = time.perf_counter()
        read = sum(1 for _ in conn.execute("SELECT vector FROM embeddings"))
        seconds = time.perf_counter() - started
    assert read == n
    return (
        f"{page // 1024:>2} KB pages: {path.stat().st_size / n:6.0f} B a photo "
        f"({path.stat().st_size / 1e9:.2f} GB), embeddings {embeddings / n:5.0f} B a photo; "
        f"every embedding read in {seconds:.2f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--photos", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dir", type=Path, default=None, help="where (needs ~3x 4.7 KB a photo)")
    args = p.parse_args()
    for n in args.photos:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            state = Path(tmp) / "state.sqlite"
            small = pages.PAGE_SIZE
            pages.PAGE_SIZE = 4096  # as made before
            try:
                with Store.open(state) as store:
                    fill(store, n)
                    store.checkpoint()
            finally:
                pages.PAGE_SIZE = small
            print(f"{n:>9} photos, before: {measured(state, n)}")
            started = time.perf_counter()
            with Store.open(state):  # a writer's open: rewritten once
                pass
            rewrite = time.perf_counter() - started
            print(f"{n:>9} photos, after:  {measured(state, n)}; the rewrite took {rewrite:.1f} s")


if __name__ == "__main__":
    main()
