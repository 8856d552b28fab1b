"""Dev-only: how often the automatic group count is right, on generated scenes.

    python tests/tools/grouping_check.py [--seeds 100] [--limits 5-30,3-12]

Each case draws scenes as points on the unit sphere (512 dimensions, as CLIP's
embeddings are): a centre per scene, and its photos scattered around it with a
given RMS distance (the spread). A person sees one album per scene when scenes
are clearly apart, so the right count is the number of scenes. Cases:

- `two-close`: the issue's case: 6 scenes of 10, two of them 0.61 apart, each
  with a spread of 0.17 (min 3, max 20);
- `varied`: 3-10 scenes of 5-40 photos, spreads 0.10-0.25 (each scene's within
  0.8-1.2 of the case's), every two centres at least 3-3.6 spreads apart (min 5,
  max 200, the defaults);
- `varied-tight`: the same scenes at min 3, max 50;
- `with-odd`: `varied`, plus 1-4 one-off photos far from every scene (they must
  not change the count).

Prints, per case, the fraction of seeds whose count is right, and the mean ARI and
coverage; with `--limits`, each case at each of those limits instead of its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon.grouping.cluster import cluster
from tests.metrics import adjusted_rand_index

DIM = 512


def _unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return out


def _scatter(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float) -> np.ndarray:
    """n unit vectors whose RMS distance to `centre` is about `spread`."""
    noise = rng.standard_normal((n, DIM)) * (spread / np.sqrt(DIM))
    return _unit(centre[None, :] + noise)


def _centres(
    rng: np.random.Generator, k: int, apart: float, tries: int = 1000
) -> np.ndarray | None:
    """k unit centres, every two at least `apart` (chordal distance) from each other, drawn
    near a common direction so that some pairs are close (not all ~1.41 apart)."""
    base = _unit(rng.standard_normal(DIM))
    picked: list[np.ndarray] = []
    for _ in range(tries):
        c = _unit(base + rng.standard_normal(DIM) * rng.uniform(0.03, 0.09))
        if all(np.linalg.norm(c - p) >= apart for p in picked):
            picked.append(c)
            if len(picked) == k:
                return np.stack(picked)
    return None


Case = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, int, int]]


def two_close(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    spread = 0.17
    centres = _centres(rng, 5, apart=0.9)
    assert centres is not None
    twin = _unit(centres[0] + _unit(rng.standard_normal(DIM)) * 0.62)
    centres = np.vstack([centres, twin])  # 0.61 apart from scene 0, after normalizing
    x = np.vstack([_scatter(rng, c, 10, spread) for c in centres])
    truth = np.repeat(np.arange(6), 10)
    return x, truth, 3, 20


def _varied(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        k = int(rng.integers(3, 11))
        spread = float(rng.uniform(0.10, 0.25))
        centres = _centres(rng, k, apart=float(rng.uniform(3.0, 3.6)) * spread)
        if centres is not None:
            break
    sizes = rng.integers(5, 41, size=k)
    spreads = spread * rng.uniform(0.8, 1.2, size=k)
    x = np.vstack(
        [
            _scatter(rng, c, int(n), float(s))
            for c, n, s in zip(centres, sizes, spreads, strict=True)
        ]
    )
    return x, np.repeat(np.arange(k), sizes)


def varied(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    x, truth = _varied(rng)
    return x, truth, 5, 200


def varied_tight(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    x, truth = _varied(rng)
    return x, truth, 3, 50


def with_odd(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    x, truth = _varied(rng)
    odd = _unit(rng.standard_normal((int(rng.integers(1, 5)), DIM)))  # far from everything
    return np.vstack([x, odd]), np.concatenate([truth, -np.ones(len(odd), dtype=int)]), 5, 200


CASES: dict[str, Case] = {
    "two-close": two_close,
    "varied": varied,
    "varied-tight": varied_tight,
    "with-odd": with_odd,
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--case", choices=sorted(CASES), action="append")
    p.add_argument("--limits", help="min-max pairs to run every case at, e.g. 5-30,3-12")
    args = p.parse_args()
    limits: list[tuple[int, int] | None] = [None]
    if args.limits:
        limits = [(int(a), int(b)) for a, b in (pair.split("-") for pair in args.limits.split(","))]
    for name in args.case or list(CASES):
        for forced in limits:
            _report(name, forced, args.seeds)


def _report(name: str, forced: tuple[int, int] | None, seeds: int) -> None:
    right, aris, covered, odd_out = 0, [], [], []
    for seed in range(seeds):
        x, truth, lo, hi = CASES[name](np.random.default_rng(seed))
        lo, hi = forced or (lo, hi)
        result = cluster(x.astype(np.float32), lo, hi)
        right += result.n_clusters == int(truth.max()) + 1
        real = truth >= 0
        aris.append(adjusted_rand_index(truth[real], result.labels[real]))
        covered.append(float((result.labels[real] >= 0).mean()))
        if (~real).any():
            odd_out.append(float((result.labels[~real] < 0).mean()))
    print(
        f"{name:<13} {lo}-{hi:<4} right count {right / seeds:.2f}  mean ARI {np.mean(aris):.3f}"
        f"  coverage {np.mean(covered):.3f}"
        + (f"  one-offs left out {np.mean(odd_out):.2f}" if odd_out else "")
        + f"  ({seeds} seeds)"
    )


if __name__ == "__main__":
    main()
