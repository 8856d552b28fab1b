"""Benchmark: replay a library's history through `imageclust index` and see what albums do.

    python tests/bench/bench_history.py [--subjects 100] [--views 10] [--limits 5-30]
    python tests/bench/bench_history.py --real x [--shots sides]   # real features (see below)

A library of `--subjects` subjects, `--views` photos each, lives through five steps, each
followed by the real `imageclust index` (which regroups, titles and publishes):

  index           every photo but those held back
  add 1           one photo of a known subject
  add new         every photo of 5% more subjects, new to the library
  delete 1        one photo, at random
  add known       5% more photos, of subjects already in the library

After each step it reads the published catalog and prints the photos that changed
album by co-membership (not by id: `moved`, photos in an album that are no longer with
every photo they were with; `grouped`, photos that waited in no album and are in one
now), the
albums whose members changed (and those whose title did: only those may), the ARI of
the albums against the subjects, and at the last step the share of the known subjects'
new photos placed in the album of their subject (where most of its other photos are).
Then `imageclust recluster --force` cuts the same library from scratch, for its ARI.
Targets (issue "Albums that stay put"): adding one photo moves no other photo; adding
5% new subjects moves at most 1% of the others; deleting one photo moves none; at
least 95% of the known subjects' photos join their subject's album; the final ARI
within 0.02 of the from-scratch cut.

Generated (default): photo-like scenes (`tests/photos.photo_like`, one scene a
subject) through the tiny CLIP-contract model of the tests. `--real DIR`: the real
photographs of `tests/tools/real_features_check.py` (DIR: the Debian packages
extracted; the opencv chessboards left out: 26 photographs no person tells apart),
shot as there (`--shots camera|sides`), through EfficientNet-Lite0 (its packages and
torch installed, as that script says; exported once into --work).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests import photos
from tests.conftest import write_config
from tests.metrics import adjusted_rand_index
from tests.onnx_models import build_tiny_clip

Shoot = Callable[[int, int], bytes]  # (subject, view) -> the JPEG of that photo


def generated(subjects: int) -> Shoot:
    def shoot(subject: int, view: int) -> bytes:
        img = photos.photo_like(1000 * subject + view, size=(320, 240), scene=subject)
        return photos.jpeg_bytes(img, quality=90)

    return shoot


def real(folder: Path, shots: str, views: int) -> tuple[Shoot, int]:
    from tests.tools import real_features_check as rfc

    subjects = [img for name, img in rfc.photographs(folder) if rfc.family(name) != "chessboard"]
    cache: dict[int, list[bytes]] = {}

    def shoot(subject: int, view: int) -> bytes:
        if subject not in cache:
            img = subjects[subject]
            cache[subject] = (
                rfc.shots(img, views, subject)
                if shots == "camera"
                else rfc.sides(img, views, 5000 + subject)
            )
        return cache[subject][view]

    return shoot, len(subjects)


class Library:
    """The photo folder, its config, and the CLI run against them."""

    def __init__(self, work: Path, config: Path) -> None:
        self.root = work / "library"
        self.config = config

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "imageclust_daemon", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"imageclust {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def index(self) -> dict[str, object]:
        out: dict[str, object] = json.loads(self.cli("index", "--no-progress", "--json"))
        return out

    def albums(self) -> tuple[dict[str, int], dict[int, str | None]]:
        """{path: album id or -1}, {album id: title} from the published catalog."""
        rows = json.loads(self.cli("query", "SELECT path, cluster_id FROM photos", "--json"))
        titles = json.loads(self.cli("query", "SELECT id, title FROM clusters", "--json"))
        return (
            {r["path"]: -1 if r["cluster_id"] is None else r["cluster_id"] for r in rows},
            {r["id"]: r["title"] for r in titles},
        )


def changes(before: dict[str, int], after: dict[str, int]) -> tuple[int, int, set[int], set[int]]:
    """(moved, grouped, albums whose members changed, albums gone) among the photos in both."""
    both = sorted(set(before) & set(after))
    mates_before: dict[int, set[str]] = {}
    mates_after: dict[int, set[str]] = {}
    for path in both:
        mates_before.setdefault(before[path], set()).add(path)
        mates_after.setdefault(after[path], set()).add(path)
    moved = grouped = 0
    for path in both:
        was, now = before[path], after[path]
        if was >= 0:  # moved: no longer with every photo it was with
            moved += now < 0 or not mates_before[was] <= mates_after[now]
        elif now >= 0:
            grouped += 1
    members_before = _members(before)
    members_after = _members(after)
    changed = {a for a, m in members_after.items() if members_before.get(a) != m}
    gone = set(members_before) - set(members_after)
    return moved, grouped, changed, gone


def _members(album_of: dict[str, int]) -> dict[int, frozenset[str]]:
    out: dict[int, set[str]] = {}
    for path, album in album_of.items():
        if album >= 0:
            out.setdefault(album, set()).add(path)
    return {a: frozenset(m) for a, m in out.items()}


def ari(album_of: dict[str, int], truth: dict[str, int]) -> float:
    paths = sorted(album_of)
    return adjusted_rand_index(
        np.array([truth[p] for p in paths]), np.array([album_of[p] for p in paths])
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--subjects", type=int, default=100)
    p.add_argument("--views", type=int, default=10)
    p.add_argument("--limits", default="5-30", help="cluster.min_size-max_size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real", type=Path, help="the Debian photo packages, extracted")
    p.add_argument("--shots", choices=("camera", "sides"), default="camera")
    p.add_argument("--work", type=Path, default=Path(tempfile.mkdtemp(prefix="history-")))
    args = p.parse_args()
    lo, hi = (int(v) for v in args.limits.split("-"))
    work: Path = args.work
    for stale in ("library", "data"):
        shutil.rmtree(work / stale, ignore_errors=True)
    if args.real:
        from tests.tools.real_photo_check import export

        shoot, n_subjects = real(args.real, args.shots, args.views)
        onnx = work / "efficientnet-lite0.onnx"
        if not onnx.exists():
            export(onnx)
        model = {"name": "efficientnet-lite0-imagenet", "path": str(onnx)}
        what = f"real photographs ({args.shots} shots), EfficientNet-Lite0 features"
    else:
        n_subjects = args.subjects
        shoot = generated(n_subjects)
        model = {"path": str(build_tiny_clip(work / "tiny.onnx"))}
        what = "generated scenes, the tests' tiny model"
    config = write_config(
        work / "imageclust.toml",
        library={"roots": [str(work / "library")]},
        storage={"data_dir": str(work / "data")},
        model=model,
        cluster={"min_size": lo, "max_size": hi},
        ollama={"host": "http://127.0.0.1:9", "attempts": 1},  # nothing there: offline titles
    )
    lib = Library(work, config)
    rng = np.random.default_rng(args.seed)
    photos_of = [(s, v) for s in range(n_subjects) for v in range(args.views)]
    new_subjects = set(rng.choice(n_subjects, max(1, round(0.05 * n_subjects)), False).tolist())
    known = [i for i, (s, _) in enumerate(photos_of) if s not in new_subjects]
    batch = set(rng.choice(known, round(0.05 * len(photos_of)), False).tolist())
    rest = [i for i in known if i not in batch]
    one = int(rng.choice(rest))
    initial = [i for i in rest if i != one]
    truth: dict[str, int] = {}

    def put(i: int) -> str:
        subject, view = photos_of[i]
        path = lib.root / f"subject {subject:03d}" / f"IMG_{view:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(shoot(subject, view))
        truth[str(path)] = subject
        return str(path)

    print(
        f"{len(photos_of)} photos of {n_subjects} subjects ({what}); limits {lo}-{hi}; "
        f"seed {args.seed}; work {work}"
    )
    print(
        f"{'step':<16}{'photos':>7}{'moved':>7}{'grouped':>8}{'albums changed':>16}"
        f"{'retitled':>9}{'ARI':>7}{'index s':>8}"
    )

    def add(ids: list[int]) -> Callable[[], None]:
        def step() -> None:
            for i in ids:
                put(i)

        return step

    fresh = [i for i, (s, _) in enumerate(photos_of) if s in new_subjects]
    steps: list[tuple[str, Callable[[], None]]] = [
        ("index", add(initial)),
        ("add 1", add([one])),
        ("add new", add(fresh)),
        ("delete 1", lambda: _delete(rng, truth)),
        ("add known", add(sorted(batch))),
    ]
    before: dict[str, int] = {}
    titles_before: dict[int, str | None] = {}
    results: dict[str, tuple[int, int, int]] = {}
    for name, step in steps:
        step()
        started = time.perf_counter()
        report = lib.index()
        seconds = time.perf_counter() - started
        grouping = report.get("groups")
        why = grouping.get("recut", {}) if isinstance(grouping, dict) else {}
        full = grouping.get("full_reason", "") if isinstance(grouping, dict) else ""
        dissolved = grouping.get("dissolved", 0) if isinstance(grouping, dict) else 0
        after, titles = lib.albums()
        moved, grouped, changed, gone = changes(before, after)
        retitled = {a for a in titles if a in titles_before and titles[a] != titles_before[a]}
        stray = retitled - changed
        score = ari(after, truth)
        results[name] = (moved, len(set(before) & set(after)), len(changed) + len(gone))
        print(
            f"{name:<16}{len(after):>7}{moved:>7}{grouped:>8}"
            f"{f'{len(changed)} (+{len(gone)} gone)':>16}{len(retitled):>9}{score:>7.3f}"
            f"{seconds:>8.1f}" + (f"  retitled though unchanged: {sorted(stray)}" if stray else "")
        )
        if full and name != "index":
            print(f"    the whole library was cut again: {full}")
        for album, reason in sorted(why.items()):
            print(f"    album {album} cut again: {reason}")
        if dissolved:
            print(f"    {dissolved} album(s) fell below cluster.min_size: photos placed again")
        before, titles_before = after, titles
    new_paths = [
        str(lib.root / f"subject {photos_of[i][0]:03d}" / f"IMG_{photos_of[i][1]:03d}.jpg")
        for i in sorted(batch)
    ]
    placed = _placed(before, truth, set(new_paths))
    waiting = sum(before[p] < 0 for p in new_paths)
    final = ari(before, truth)
    lib.cli("recluster", "--force", "--json")
    scratch, _ = lib.albums()
    from_scratch = ari(scratch, truth)
    print(
        f"known subjects' photos in an album of their subject: {placed:.1%} "
        f"(from scratch: {_placed(scratch, truth, set(new_paths)):.1%}), {waiting} in no "
        f"album; ARI at the end "
        f"{final:.3f}, from scratch {from_scratch:.3f} ({final - from_scratch:+.3f})"
    )
    checks = [
        ("adding one photo moves no other photo", results["add 1"][0] == 0),
        (
            "adding 5% new subjects moves <= 1% of the others",
            results["add new"][0] <= 0.01 * results["add new"][1],
        ),
        ("deleting one photo moves none", results["delete 1"][0] == 0),
        (">= 95% of known subjects' photos join their album", placed >= 0.95),
        ("final ARI within 0.02 of from scratch", final >= from_scratch - 0.02),
    ]
    for text, ok in checks:
        print(f"  {'met ' if ok else 'MISSED'}  {text}")


def _delete(rng: np.random.Generator, truth: dict[str, int]) -> None:
    victim = sorted(truth)[int(rng.integers(len(truth)))]
    os.remove(victim)
    del truth[victim]


def _placed(album_of: dict[str, int], truth: dict[str, int], new: set[str]) -> float:
    """Share of `new` photos in an album of their subject: the album holding most of the
    subject's other photos, or one whose other photos are most often of that subject (a
    subject seen from two sides may fill two albums; an album may hold two subjects)."""
    members: dict[int, list[str]] = {}
    for path, album in album_of.items():
        if album >= 0:
            members.setdefault(album, []).append(path)
    right = 0
    for path in new:
        album, subject = album_of[path], truth[path]
        if album < 0:
            continue
        mates = [truth[p] for p in members[album] if p != path]
        home = [album_of[p] for p in album_of if truth[p] == subject and p not in new]
        home = [a for a in home if a >= 0]
        if (home and album == max(set(home), key=home.count)) or (
            mates and max(set(mates), key=mates.count) == subject
        ):
            right += 1
    return right / len(new) if new else 1.0


if __name__ == "__main__":
    main()
