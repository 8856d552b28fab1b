"""Benchmark: constrained Ward at 10k / 50k / 100k points x 512 dims (not part of the test run).

    python tests/bench/bench_cluster.py [--sizes 10000 50000 100000] [--exact-n 6000]

Each size runs in its own process so peak RSS is that run's alone. Points are
drawn from a mixture on the unit sphere (random centres, groups of 20-150,
Gaussian noise then renormalized), like CLIP embeddings of photo events.
Prints wall time, peak RSS, ARI against the mixture's truth, the time of the incremental
regroups that follow (`albums.regroup` after one more photo, and after 1% more: what
the daemon does after a change), and at `--exact-n` (the largest n exact Ward handles
in memory here) the ARI of the two-stage method against exact Ward on the same points.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon.grouping.albums import (
    NEW,
    WAITING,
    Previous,
    album_fit,
    album_members,
    regroup,
)
from imageclust_daemon.grouping.cluster import EXACT_MAX, cluster
from imageclust_daemon.records import Baseline
from tests.metrics import adjusted_rand_index

# The config's defaults (cluster.min_size, cluster.max_size); --limits changes them.
MIN_SIZE, MAX_SIZE = 5, 30


def mixture(
    n: int, d: int = 512, seed: int = 0, noise: float = 0.035, extra: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """n points of the mixture, then `extra` more of the same groups (the first n are the
    same whatever `extra` is)."""
    rng = np.random.default_rng(seed)
    k = max(10, n // 60)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.integers(20, 150, size=k).astype(np.float64)
    truth = rng.choice(k, size=n, p=weights / weights.sum())
    x = np.empty((n + extra, d), dtype=np.float32)

    def draw(start: int, t: np.ndarray) -> None:
        block = centres[t] + rng.standard_normal((len(t), d), dtype=np.float32) * np.float32(noise)
        x[start : start + len(t)] = block / np.linalg.norm(block, axis=1, keepdims=True)

    for start in range(0, n, 10_000):  # in chunks: the data should cost ~n*d*4 bytes
        draw(start, truth[start : start + 10_000])
    if extra:
        more = rng.choice(k, size=extra, p=weights / weights.sum())
        draw(n, more)
        truth = np.concatenate([truth, more])
    return x, truth


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(n: int, exact_max: int, lo: int, hi: int) -> dict[str, object]:
    more = n // 100
    everything, all_truth = mixture(n, extra=more)
    x, truth = everything[:n], all_truth[:n]
    data_rss = peak_rss_mb()
    started = time.perf_counter()
    result = cluster(x, lo, hi, exact_max=exact_max)
    seconds = time.perf_counter() - started
    sizes = np.bincount(result.labels[result.labels >= 0])
    incremental = []
    if exact_max == EXACT_MAX:  # as the daemon regroups after a change
        labels = np.where(result.labels >= 0, result.labels, WAITING)
        baselines = {
            int(a): Baseline(len(idx), album_fit(x[idx]))
            for a, idx in album_members(labels).items()
        }
        for extra in (1, more):
            previous = Previous(
                np.concatenate([labels, np.full(extra, NEW)]), baselines, int(labels.max()) + 1
            )
            started = time.perf_counter()
            after = regroup(everything[: n + extra], lo, hi, previous)
            incremental.append((extra, round(time.perf_counter() - started, 2), after.moved))
    return {
        "n": n,
        "method": result.method,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "data_rss_mb": round(data_rss),
        "groups": result.n_clusters,
        "true_groups": int(truth.max() + 1),
        "ari_truth": round(adjusted_rand_index(truth, result.labels), 4),
        "unclustered": result.unclustered_fraction,
        "size_range": [int(sizes.min()), int(sizes.max())],
        "labels": result.labels.tolist() if n <= 20_000 else None,
        "incremental": incremental,
    }


def run_child(n: int, exact_max: int, lo: int, hi: int) -> dict[str, object]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--exact-max",
            str(exact_max),
            "--limits",
            f"{lo}-{hi}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    p.add_argument("--exact-n", type=int, default=EXACT_MAX)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--exact-max", type=int, default=EXACT_MAX, help=argparse.SUPPRESS)
    p.add_argument("--limits", default=f"{MIN_SIZE}-{MAX_SIZE}", help="min-max group size")
    args = p.parse_args()
    lo, hi = (int(v) for v in args.limits.split("-"))
    if args.one:
        print(json.dumps(one(args.one, args.exact_max, lo, hi)))
        return
    print(f"min_size={lo} max_size={hi}, 512 dims, mixture on the sphere")
    print(
        f"{'n':>7} {'method':>9} {'seconds':>8} {'peak RSS':>9} {'(data)':>7} {'groups':>7} "
        f"{'truth':>6} {'ARI':>6} {'unclustered':>11} {'sizes':>9}"
    )
    for n in args.sizes:
        r = run_child(n, EXACT_MAX, lo, hi)
        print(
            f"{r['n']:>7} {r['method']:>9} {r['seconds']:>8} {r['peak_rss_mb']:>6} MB "
            f"{r['data_rss_mb']:>4} MB {r['groups']:>7} {r['true_groups']:>6} {r['ari_truth']:>6} "
            f"{r['unclustered']:>11.4f} {r['size_range']!s:>9}"
        )
        for extra, seconds, moved in r["incremental"]:  # type: ignore[attr-defined]
            print(f"{'':>8}then {extra} more: incremental regroup {seconds} s, {moved} moved")
    n = args.exact_n
    exact = run_child(n, n, lo, hi)
    staged = run_child(n, 0, lo, hi)
    agreement = adjusted_rand_index(np.array(exact["labels"]), np.array(staged["labels"]))
    print(
        f"\nat n={n}: exact {exact['seconds']} s, {exact['peak_rss_mb']} MB, ARI truth "
        f"{exact['ari_truth']}; two-stage {staged['seconds']} s, {staged['peak_rss_mb']} MB, "
        f"ARI truth {staged['ari_truth']}; ARI two-stage vs exact = {agreement:.4f}"
    )


if __name__ == "__main__":
    main()
