"""Benchmark: events (moments, days out, trips) on generated lives with their true events.

    python tests/bench/bench_events.py [--lives 20] [--seed 0] [--years 2]
    python tests/bench/bench_events.py --cli [--years 1]    # through `imageclust index`
    python tests/bench/bench_events.py --stitch 50          # 50 lives as one library: timings

Each life (`tests/life.py`) is two years of one person's photos: moments in town, days
out, two events on one day (at two places, or at one place showing different things),
trips of three to ten days (some over two cities), a move to another city in some
lives, photos without GPS (events shot on a camera without it, and phones without a
fix), and folders that cut across events. It prints, per life and over all of them:

- ARI of the events against the true ones (target: at least 0.90), and the precision
  and recall of the boundaries (in time order, where one event ends and the next
  begins);
- the share of events whose kind (moment, day, trip) is the true event's;
- the replay: the life imported as a phone syncs, every evening, the photos of the
  day, through `events.settle`, then a late import of a held-back month's photos. Of
  the events with no new photo on the day's import, it counts those cut apart (must
  be 0) and those grown (a trip that goes on, day by day); and the ARI of the events
  so grown against the true ones and against a cut of the whole life at once.

`--cli` renders one life as JPEGs with EXIF capture times and GPS (scenes drawn by
`tests/photos.photo_like`, one per scene of the life), indexes it with the real
`imageclust index` and the tiny CLIP-contract model, and scores the published
catalog's `events` and `photos.event_id` against the truth.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon.grouping import events
from tests import life
from tests.metrics import adjusted_rand_index


def shots_of(photos: list[life.LifePhoto], x: np.ndarray | None) -> events.Shots:
    return events.Shots(
        [p.taken_at for p in photos],
        np.array([np.nan if p.lat is None else p.lat for p in photos]),
        np.array([np.nan if p.lon is None else p.lon for p in photos]),
        x,
    )


def labels_of(found: list[events.Event], n: int) -> np.ndarray:
    labels = np.full(n, -1, dtype=np.int64)
    for e, event in enumerate(found):
        labels[list(event.rows)] = e
    return labels


def score(truth: np.ndarray, found: np.ndarray) -> tuple[float, float, float]:
    """ARI, and the boundaries' precision and recall (photos in time order)."""
    true_cuts, found_cuts = life.boundaries(truth), life.boundaries(found)
    hits = len(true_cuts & found_cuts)
    return (
        adjusted_rand_index(truth, found),
        hits / max(len(found_cuts), 1),
        hits / max(len(true_cuts), 1),
    )


def replay(photos: list[life.LifePhoto], x: np.ndarray, rng: np.random.Generator) -> dict:
    """Import the life evening by evening, then a held-back month late. Of the events
    with no new photo on their days, count those cut apart (never allowed) and those
    grown (joined by the photos that continue them, or merged into the event that does:
    a trip imported day by day)."""
    n = len(photos)
    days = np.array([events.day_of(p.taken_at) for p in photos])
    months = sorted({(p.taken_at.year, p.taken_at.month) for p in photos})
    late_month = months[int(rng.integers(1, max(len(months) - 1, 2)))]
    late = np.array([(p.taken_at.year, p.taken_at.month) == late_month for p in photos])
    labels = np.full(n, events.NEW, dtype=np.int64)
    known = np.zeros(n, dtype=bool)
    next_id, steps, split, grown = 1, 0, 0, 0
    order = [d for d in sorted(set(days[~late].tolist()))] + [None]
    seconds = 0.0
    for day in order:
        arrive = late if day is None else (days == day) & ~late
        if not arrive.any():
            continue
        known |= arrive
        idx = np.flatnonzero(known)
        sub = [photos[i] for i in idx]
        before = labels[idx].copy()
        started = time.perf_counter()
        fresh = events.find_events(shots_of(sub, x[idx]))
        after, _ = events.settle(shots_of(sub, x[idx]), fresh, before, next_id)
        seconds += time.perf_counter() - started
        next_id = max(next_id, int(after.max()) + 1)
        new_days = set(days[idx][before == events.NEW].tolist())
        for eid in set(before[before != events.NEW].tolist()):
            was = before == eid
            if set(days[idx][was].tolist()) & new_days:
                continue  # an event of the new photos' days: it may change
            if len(set(after[was].tolist())) > 1:
                split += 1  # never: an earlier event is never cut apart
            elif int(after[was][0]) != eid or (after == eid).sum() != was.sum():
                grown += 1  # joined by the photos that continue it (a trip goes on)
        labels[idx] = after
        steps += 1
    truth = np.array([p.event for p in photos])
    whole = labels_of(events.find_events(shots_of(photos, x)), n)
    return {
        "steps": steps,
        "split": split,
        "grown": grown,
        "ari": adjusted_rand_index(truth, labels),
        "ari_vs_whole": adjusted_rand_index(whole, labels),
        "seconds": seconds,
    }


def bench_lives(n_lives: int, seed: int, years: float) -> None:
    rows = []
    print("life  photos  true  found   ARI   prec  recall  kinds | replay: steps  split  grown"
          "   ARI  vs-whole")  # fmt: skip
    for k in range(n_lives):
        s = seed + k
        photos = life.generate(s, years)
        x = life.embeddings(photos, seed=s)
        truth = np.array([p.event for p in photos])
        started = time.perf_counter()
        found = events.find_events(shots_of(photos, x))
        seconds = time.perf_counter() - started
        labels = labels_of(found, len(photos))
        ari, precision, recall = score(truth, labels)
        kind_of = {p.event: p.kind for p in photos}
        kinds = sum(kind_of[int(truth[e.rows[0]])] == e.kind for e in found) / max(len(found), 1)
        r = replay(photos, x, np.random.default_rng(s))
        rows.append((ari, precision, recall, kinds, r["split"], r["ari"], seconds, r["grown"]))
        print(
            f"{s:4d}  {len(photos):6d}  {len(set(truth.tolist())):4d}  {len(found):5d}  "
            f"{ari:5.3f}  {precision:5.3f}  {recall:5.3f}  {kinds:5.3f} | {r['steps']:5d}  "
            f"{r['split']:5d}  {r['grown']:5d}  {r['ari']:5.3f}  {r['ari_vs_whole']:5.3f}"
        )
    a = np.array(rows)
    print(
        f"\nover {n_lives} lives: ARI mean {a[:, 0].mean():.3f} (min {a[:, 0].min():.3f}, "
        f"target >= 0.90); boundaries precision {a[:, 1].mean():.3f}, recall "
        f"{a[:, 2].mean():.3f}; kinds right {a[:, 3].mean():.3f}; replayed: events without a "
        f"new photo on their days cut apart {int(a[:, 4].sum())} (must be 0), grown "
        f"{int(a[:, 7].sum())}; ARI mean "
        f"{a[:, 5].mean():.3f}; a cut of a whole life took {a[:, 6].mean() * 1000:.0f} ms on "
        f"average"
    )


def bench_scale(n_lives: int, seed: int, years: float) -> None:
    """`n_lives` lives one after another, as one library: how long a cut and an update
    take at that size."""
    from dataclasses import replace

    photos: list[life.LifePhoto] = []
    for k in range(n_lives):
        shift = timedelta(days=round(366 * years + 30) * k)
        photos += [replace(p, taken_at=p.taken_at + shift) for p in life.generate(seed + k, years)]
    photos.sort(key=lambda p: p.taken_at)
    shots = shots_of(photos, life.embeddings(photos, dim=32))
    started = time.perf_counter()
    found = events.find_events(shots)
    cut = time.perf_counter() - started
    labels = labels_of(found, len(photos))
    before = labels.copy()
    before[-100:] = events.NEW
    started = time.perf_counter()
    events.settle(shots, events.find_events(shots), before, int(labels.max()) + 1)
    update = time.perf_counter() - started
    # As the daemon updates: only the photos within the months around the new ones.
    started = time.perf_counter()
    near = np.flatnonzero(events.near_new(shots.times, before == events.NEW))
    part = events.Shots([shots.times[i] for i in near], shots.lat[near], shots.lon[near],
                        shots.x, near)  # fmt: skip
    events.settle(part, events.find_events(part), before[near], int(labels.max()) + 1)
    windowed = time.perf_counter() - started
    print(
        f"{len(photos)} photos, {len(found)} events: the cut {cut:.1f} s; an update after "
        f"100 new photos (cut and settle): of the whole library {update:.1f} s, of the "
        f"{len(near)} photos within {events.NEAR_NEW_DAYS} days of them (as "
        f"`update_events` does) {windowed:.2f} s"
    )


def bench_cli(seed: int, years: float, work: Path) -> None:
    from PIL import Image

    from tests import photos as photo_tools
    from tests.conftest import write_config
    from tests.onnx_models import build_tiny_clip

    shots = life.generate(seed, years)
    root = work / "Photos"
    rng = np.random.default_rng(seed)
    looks: dict[int, Image.Image] = {}
    paths = []
    started = time.perf_counter()
    for i, p in enumerate(shots):
        if p.scene not in looks:
            looks[p.scene] = photo_tools.photo_like(int(rng.integers(1 << 30)), size=(160, 120))
        img = looks[p.scene].rotate(float(rng.uniform(-4, 4)))  # the same scene, another shot
        folder = root / p.folder
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"IMG_{i:05d}.jpg"
        gps = None if p.lat is None or p.lon is None else (p.lat, p.lon)
        photo_tools.save_jpeg(img, path, taken_at=p.taken_at.strftime("%Y:%m:%d %H:%M:%S"), gps=gps)
        paths.append(path)
    print(f"{len(shots)} photos rendered in {time.perf_counter() - started:.0f} s")
    config = write_config(
        work / "imageclust.toml",
        library={"roots": [str(root)]},
        storage={"data_dir": str(work / "data")},
        model={"path": str(build_tiny_clip(work / "tiny.onnx"))},
        ollama={"host": "http://127.0.0.1:9", "attempts": 1},  # nothing there: offline titles
    )
    env = dict(os.environ)
    started = time.perf_counter()
    command = [sys.executable, "-m", "imageclust_daemon", "--config", str(config), "index"]
    subprocess.run(
        [*command, "--no-progress", str(root)], check=True, env=env, stdout=subprocess.DEVNULL
    )
    print(f"indexed, grouped and published in {time.perf_counter() - started:.0f} s")
    catalog = work / "data" / "catalog.sqlite"
    conn = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
    event_of = {
        os.path.basename(path): eid
        for path, eid in conn.execute("SELECT path, event_id FROM photos")
    }
    kinds = dict(conn.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
    titles = [t for (t,) in conn.execute("SELECT title FROM events ORDER BY started_at")]
    conn.close()
    found = np.array([event_of.get(path.name) or -1 for path in paths])
    truth = np.array([p.event for p in shots])
    ari, precision, recall = score(truth, found)
    print(
        f"catalog: {len(titles)} events ({kinds}), {len(set(truth.tolist()))} true; "
        f"ARI {ari:.3f}, boundaries precision {precision:.3f}, recall {recall:.3f}; "
        f"titles unique: {len(set(titles)) == len(titles)}"
    )
    for title in titles[:12]:
        print(f"  {title}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lives", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--years", type=float, default=2.0)
    parser.add_argument("--cli", action="store_true", help="one life through imageclust index")
    parser.add_argument("--stitch", type=int, help="this many lives as one library: timings")
    parser.add_argument("--work", type=Path, help="folder for --cli (default: a temp folder)")
    args = parser.parse_args()
    if args.cli:
        if args.work:
            bench_cli(args.seed, args.years, args.work)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                bench_cli(args.seed, args.years, Path(tmp))
        return
    if args.stitch:
        bench_scale(args.stitch, args.seed, args.years)
        return
    bench_lives(args.lives, args.seed, args.years)


if __name__ == "__main__":
    main()
