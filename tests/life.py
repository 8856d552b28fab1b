"""A generated life in photos, with its true events: for the events benchmark and tests.

Two years (by default) of one person's photos: a home city, and around it

- moments: an hour or two of photos somewhere in town (a birthday, a dinner);
- days out: a day at one place 40-150 km away or in town, in two to four sessions;
- two events on one day: a morning and an evening hours apart, at two places in town,
  or at one place showing different things (a market, then a dinner at home);
- trips: three to ten days 300-3000 km away, sometimes over two cities, two to four
  sessions a day, the first and last day partly travelling;
- a move to another city half way through some lives (home is then learned anew);
- photos without GPS: some events shot on a camera without it, and in every event a
  share of photos whose phone had no fix;
- folders that cut across events (one import folder a month, or a few big dumps).

Each photo has a scene (what it shows): the scenes of one event are its own, drawn
around a theme, so two events can look alike (two beach days) as in a real library.
`embeddings` turns scenes into unit vectors for the pure core; the end-to-end benchmark
renders scenes as images instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np


@dataclass(frozen=True, slots=True)
class LifePhoto:
    taken_at: datetime
    lat: float | None
    lon: float | None
    scene: int
    event: int  # the true event
    kind: str  # the true event's kind: moment, day or trip
    folder: str


def _offset(
    rng: np.random.Generator, at: tuple[float, float], lo_km: float, hi_km: float
) -> tuple[float, float]:
    d = rng.uniform(lo_km, hi_km)
    bearing = rng.uniform(0, 2 * math.pi)
    lat = at[0] + d / 111.0 * math.cos(bearing)
    lon = at[1] + d / (111.0 * max(math.cos(math.radians(at[0])), 0.2)) * math.sin(bearing)
    return max(min(lat, 80.0), -80.0), (lon + 180.0) % 360.0 - 180.0


class _Life:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.photos: list[LifePhoto] = []
        self.event = 0
        self.scene = 0

    def new_scene(self) -> int:
        self.scene += 1
        return self.scene

    def session(
        self,
        start: datetime,
        minutes: float,
        count: int,
        at: tuple[float, float],
        radius_km: float,
        scenes: list[int],
        kind: str,
        gps: float,
    ) -> datetime:
        """`count` photos over `minutes` from `start` near `at`; returns the last time."""
        rng = self.rng
        # Photos come in bursts: a few seconds apart, then minutes of nothing.
        offsets = np.sort(rng.uniform(0, minutes * 60, max(count // 3, 1)))
        times = []
        for o in offsets:
            for k in range(int(rng.integers(1, 6))):
                times.append(o + k * rng.uniform(1, 8))
        times = sorted(times)[:count]
        spot = _offset(rng, at, 0, radius_km)
        last = start
        for s in times:
            when = start + timedelta(seconds=float(s))
            if rng.random() < gps:
                lat, lon = _offset(rng, spot, 0, 0.05 + radius_km * 0.3)
                self.add(when, lat, lon, scenes, kind)
            else:
                self.add(when, None, None, scenes, kind)
            last = when
        return last

    def add(
        self,
        when: datetime,
        lat: float | None,
        lon: float | None,
        scenes: list[int],
        kind: str,
    ) -> None:
        scene = scenes[int(self.rng.integers(len(scenes)))]
        self.photos.append(LifePhoto(when, lat, lon, scene, self.event, kind, ""))


def generate(seed: int = 0, years: float = 2.0, *, moves: bool | None = None) -> list[LifePhoto]:
    """One life's photos, in time order, each with its true event (see the docstring)."""
    life = _Life(seed)
    rng = life.rng
    home = (float(rng.uniform(-45, 60)), float(rng.uniform(-120, 150)))
    moves = bool(rng.random() < 0.3) if moves is None else moves
    start = datetime(2018 + int(rng.integers(0, 5)), 1, 1) + timedelta(days=int(rng.integers(60)))
    end = start + timedelta(days=365 * years)
    moved = False
    day = start
    while day < end:
        if moves and not moved and day > start + (end - start) / 2:
            home, moved = _offset(rng, home, 400, 2000), True
        gps = 0.0 if rng.random() < 0.15 else float(rng.uniform(0.6, 0.95))  # camera or phone
        theme = [life.new_scene() for _ in range(int(rng.integers(1, 3)))]
        roll = rng.random()
        if roll < 0.45:  # a moment in town
            t = day + timedelta(hours=float(rng.uniform(9, 21)))
            life.session(t, rng.uniform(10, 120), int(rng.integers(4, 40)),
                         _offset(rng, home, 0, 12), 0.2, theme, "moment", gps)  # fmt: skip
            day += timedelta(days=int(rng.integers(1, 15)))
        elif roll < 0.65:  # a day out
            far = rng.random() < 0.6
            place = _offset(rng, home, 40, 150) if far else _offset(rng, home, 2, 15)
            t = day + timedelta(hours=float(rng.uniform(8.5, 11)))
            for _ in range(int(rng.integers(2, 5))):
                t = life.session(t, rng.uniform(20, 90), int(rng.integers(4, 25)), place, 0.5,
                                 theme, "day", gps)  # fmt: skip
                t += timedelta(minutes=float(rng.uniform(30, 120)))
            day += timedelta(days=int(rng.integers(2, 20)))
        elif roll < 0.80:  # two events on one day
            a = _offset(rng, home, 0, 12)
            t = day + timedelta(hours=float(rng.uniform(8.5, 11)))
            t = life.session(t, rng.uniform(20, 90), int(rng.integers(4, 25)), a, 0.2,
                             theme, "moment", gps)  # fmt: skip
            life.event += 1
            same_place = rng.random() < 0.4
            b = a if same_place else _offset(rng, a, 2, 8)
            other = [life.new_scene()]  # the evening shows something else
            t = t + timedelta(hours=float(rng.uniform(3, 7)))
            gps2 = gps if rng.random() < 0.7 else 0.0
            life.session(t, rng.uniform(20, 90), int(rng.integers(4, 25)), b, 0.2,
                         other, "moment", gps2)  # fmt: skip
            day += timedelta(days=int(rng.integers(1, 15)))
        else:  # a trip
            days = int(rng.integers(3, 11))
            city = _offset(rng, home, 300, 3000)
            second = _offset(rng, city, 100, 400) if rng.random() < 0.3 else None
            camera = rng.random() < 0.3  # some of the trip on a camera without GPS
            for d in range(days):
                where = second if second is not None and d >= days // 2 else city
                t = day + timedelta(days=d, hours=float(rng.uniform(8, 11)))
                if d == 0:
                    t += timedelta(hours=float(rng.uniform(3, 6)))  # arriving
                sessions = (
                    int(rng.integers(1, 3)) if d in (0, days - 1) else int(rng.integers(2, 5))
                )
                for _ in range(sessions):
                    scenes = [*theme, life.new_scene()]
                    share = gps * (0.5 if camera else 1.0)
                    t = life.session(t, rng.uniform(20, 120), int(rng.integers(3, 25)), where,
                                     8.0, scenes, "trip", share)  # fmt: skip
                    t += timedelta(minutes=float(rng.uniform(40, 180)))
            day += timedelta(days=days + int(rng.integers(2, 20)))
        life.event += 1
        day = datetime(day.year, day.month, day.day)
    photos = sorted(life.photos, key=lambda p: p.taken_at)
    return _foldered(photos, rng)


def _foldered(photos: list[LifePhoto], rng: np.random.Generator) -> list[LifePhoto]:
    """Folders that cut across events: an import folder a month, or a few big dumps."""
    from dataclasses import replace

    if rng.random() < 0.5:
        return [replace(p, folder=p.taken_at.strftime("%Y-%m")) for p in photos]
    cuts = np.sort(rng.choice(len(photos), size=min(5, len(photos)), replace=False))
    return [
        replace(p, folder=f"dump-{int(np.searchsorted(cuts, i, side='right'))}")
        for i, p in enumerate(photos)
    ]


def embeddings(photos: list[LifePhoto], dim: int = 64, seed: int = 0, noise: float = 0.8):
    """A unit vector per photo: its scene's direction plus noise (photos of one scene
    are alike; of two scenes, unrelated)."""
    rng = np.random.default_rng(seed)
    scenes = sorted({p.scene for p in photos})
    directions = {s: v for s, v in zip(scenes, rng.normal(size=(len(scenes), dim)), strict=True)}
    x = np.array([directions[p.scene] / math.sqrt(dim) for p in photos])
    x = x + rng.normal(scale=noise / math.sqrt(dim), size=x.shape)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def boundaries(labels: np.ndarray) -> set[int]:
    """Where, in time order, one event ends and the next begins (index of the first photo)."""
    return {i for i in range(1, len(labels)) if labels[i] != labels[i - 1]}
