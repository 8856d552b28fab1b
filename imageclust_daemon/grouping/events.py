"""Events: the library as a person lived it. Pure: arrays and plain data in, labels out.

Every photo with a plausible capture time belongs to one event: a moment (minutes to
hours), a day out, or a trip (days away from home). The boundaries come from the photos
themselves, in three steps (`find_events`):

1. **Sessions.** Photos in time order are cut where a gap is long for its neighbourhood:
   a gap at least `RHYTHM` times the geometric mean of the gaps around it (its
   `WINDOW` neighbours each side), as in PhotoTOC (Platt et al. 2003) and Cooper et
   al.'s temporal event clustering, and never at a gap under `MIN_GAP`: a burst of
   photos seconds apart followed by ten minutes of nothing is one moment. A gap of
   `HOURS_APART` or more always ends a session (step 3 decides whether the sessions
   either side of it are one event). A session
   never crosses the start of a day (`DAY_STARTS` o'clock: a party past midnight is
   the evening before). Consecutive photos taken more than `JUMP_KM` apart, faster
   than a person walks, are cut too (a change of place).
2. **Home and away.** Home is where photos are taken in the most weeks (`home_of`:
   positions within `HOME_KM` of one another count as one place), learned from the
   `HOME_MONTHS` each side of each session, so a person who moves house gets a new home.
   A session with a position farther than `HOME_KM` from home is away; one without a
   position is unknown. (A library whose first weeks are all a trip takes that place
   for home until weeks elsewhere outnumber them: those first events stay as cut.)
3. **Events.** A run of sessions away from home that spans a night is a trip: sessions
   without a position inside the run belong to it, and a gap of `TRIP_BREAK_DAYS` or
   more with no photo, or a whole day without photos between two places more than
   `AGREE_KM` apart, ends it. Photos with no position at all on `UNLOCATED_TRIP_DAYS`
   or more days in a row are a trip too, told by rhythm alone.
   Sessions away on one day are a day out. The other sessions of one day are one event
   unless they were taken at two places (centres farther apart than `PLACE_KM` and
   than their own spreads), or hours apart (`HOURS_APART`) and showing different
   things: their photos are less alike across the two sessions than the photos of a
   session are on average, halfway to two photos picked at random (`_content_apart`).

An event is a trip when it spans two days or more away from home, a day when it
lasts `DAY_HOURS` or more or is a day out, and a moment otherwise.

Events over time (`settle`): the events of days with no new photo are kept exactly
(a deleted photo leaves its event and nothing else moves). The days of new photos are
cut again, together with every event that has a photo on one of those days, and with
any event the fresh cut joins to them (a trip that goes on, photo by photo, as the
phone syncs each evening). So new photos of new days add events, and a late import
of old photos changes only the events of its own days.

Times are the cameras' local clock times, as EXIF writes them (a day is the day the
person lived, wherever they were).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

# A gap at least this many times the geometric mean of its neighbourhood's gaps ends a
# session: PhotoTOC's K = log(17), with its window of 10 gaps each side.
RHYTHM = 17.0
WINDOW = 10
MIN_GAP = 20 * 60.0  # seconds: a pause under 20 minutes never ends a session
DAY_STARTS = 4  # o'clock: photos before 4 am belong to the evening before
JUMP_KM = 5.0  # consecutive photos this far apart, faster than walking: two places
WALK_KMH = 6.0
HOME_KM = 30.0  # one place, for home and away: a city and its suburbs
HOME_CANDIDATES = 30  # the busiest ~10 km cells (most sessions) are tried as home
HOME_MONTHS = 6  # home is learned from the photos of this many months each side of a session
PLACE_KM = 1.0  # two sessions' centres farther apart than this (and their spreads): two places
HOURS_APART = 2.0  # sessions at least this far apart on one day are two events if unlike
DAY_HOURS = 3.0  # an event lasting this long (or a day out) is a day, not a moment
TRIP_BREAK_DAYS = 7.0  # a week with no photo ends a trip
UNLOCATED_TRIP_DAYS = 3  # photos on this many days in a row, none with a position: a trip
UNLOCATED_TRIP_MAX = 21
AGREE_KM = 50.0

MOMENT, DAY, TRIP = "moment", "day", "trip"


@dataclass(frozen=True, slots=True)
class Shots:
    """The photos to cut into events, in any order: capture times (naive local
    `datetime`s), positions (NaN where none) and embeddings: row `x_rows[i]` of `x` is
    photo i's (-1: it has none; `x_rows` None: row i)."""

    times: Sequence[datetime]
    lat: np.ndarray
    lon: np.ndarray
    x: np.ndarray | None = None
    x_rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.times)

    def embedding_rows(self) -> np.ndarray:
        """Each photo's row of `x`, -1 for none."""
        if self.x is None:
            return np.full(len(self), -1, dtype=np.int64)
        if self.x_rows is None:
            return np.arange(len(self), dtype=np.int64)
        return np.asarray(self.x_rows, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Event:
    rows: tuple[int, ...]  # indexes into the Shots, in time order
    kind: str  # MOMENT, DAY or TRIP
    started: datetime
    ended: datetime


@dataclass(slots=True)
class _Session:
    rows: list[int]  # in time order
    day: int  # the day it belongs to (day_of)
    start: float  # seconds
    end: float
    centre: tuple[float, float] | None
    spread: float  # km: median distance of its positions from its centre
    month: int  # of its first photo: year * 12 + month - 1
    away: bool | None = None  # None: no position


_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()


def day_of(when: datetime) -> int:
    """The day a person lived `when` in (a proleptic ordinal): days start at DAY_STARTS."""
    return (when - timedelta(hours=DAY_STARTS)).toordinal()


def _clock(times: Sequence[datetime]) -> tuple[np.ndarray, np.ndarray]:
    """Seconds since 1970 and `day_of` of each time, in arrays (one conversion, not a
    Python call per photo: 1M photos)."""
    stamps = np.array(times, dtype="datetime64[s]")
    seconds = stamps.astype(np.int64).astype(np.float64)
    shifted = (stamps - np.timedelta64(DAY_STARTS, "h")).astype("datetime64[D]")
    return seconds, shifted.astype(np.int64) + _EPOCH_ORDINAL


def km(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0 * 2 * math.asin(min(1.0, math.sqrt(h)))


def _km_pairs(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    out: np.ndarray = 6371.0 * 2 * np.arcsin(np.minimum(1.0, np.sqrt(h)))
    return out


def _km_many(lat: np.ndarray, lon: np.ndarray, at: tuple[float, float]) -> np.ndarray:
    return _km_pairs(lat, lon, np.full_like(lat, at[0]), np.full_like(lon, at[1]))


def find_events(shots: Shots) -> list[Event]:
    """The events of `shots`, in time order (see the module's docstring)."""
    if not len(shots):
        return []
    t, days = _clock(shots.times)
    order = np.argsort(t, kind="stable")
    sessions = _sessions(shots, t, days, order)
    _mark_away(sessions)
    apart = _content_apart(shots, sessions)
    events = []
    for group in _group(sessions, apart):
        rows = tuple(r for s in group for r in s.rows)
        first, last = shots.times[rows[0]], shots.times[rows[-1]]
        events.append(Event(rows, _kind(group), first, last))
    return events


def _sessions(shots: Shots, t: np.ndarray, days: np.ndarray, order: np.ndarray) -> list[_Session]:
    ts, ds = t[order], days[order]
    gaps = np.maximum(np.diff(ts), 1.0)
    cut = np.zeros(len(gaps), dtype=bool)
    if len(gaps):
        logs = np.log(gaps)
        sums = np.concatenate([[0.0], np.cumsum(logs)])
        lo = np.maximum(np.arange(len(gaps)) - WINDOW, 0)
        hi = np.minimum(np.arange(len(gaps)) + WINDOW + 1, len(gaps))
        local = (sums[hi] - sums[lo]) / (hi - lo)
        cut = (gaps >= MIN_GAP) & (logs >= math.log(RHYTHM) + local)
        cut |= gaps >= HOURS_APART * 3600.0  # long for any rhythm: whether it parts two
        # events is for their places and contents to say (`_same_event`)
        cut |= ds[1:] != ds[:-1]
        cut |= _jumps(shots.lat[order], shots.lon[order], ts)
    starts = np.concatenate([[0], np.flatnonzero(cut) + 1])
    ends = np.concatenate([starts[1:], [len(order)]])
    of_row = np.repeat(np.arange(len(starts)), ends - starts)
    centres, spreads = _centres(shots.lat[order], shots.lon[order], of_row, len(starts))
    first = [shots.times[i] for i in order[starts]]
    order_list = order.tolist()
    return [
        _Session(
            order_list[a:b],
            int(ds[a]),
            float(ts[a]),
            float(ts[b - 1]),
            None if np.isnan(centres[k, 0]) else (float(centres[k, 0]), float(centres[k, 1])),
            float(spreads[k]),
            first[k].year * 12 + first[k].month - 1,
        )
        for k, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True))
    ]


def _jumps(lat: np.ndarray, lon: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Gaps (between consecutive photos in time) across which the person travelled: two
    positioned photos more than JUMP_KM apart, farther than walking would take them.
    Where photos without a position lie between, the longest gap between them is cut. A
    position that jumps away and straight back (the photos either side of it within
    JUMP_KM of each other) is a stale fix, not a trip there and back."""
    cut = np.zeros(max(len(ts) - 1, 0), dtype=bool)
    located = np.flatnonzero(np.isfinite(lat) & np.isfinite(lon))
    if len(located) < 2:
        return cut
    a, b = located[:-1], located[1:]
    d = _km_pairs(lat[a], lon[a], lat[b], lon[b])
    hours = np.maximum(ts[b] - ts[a], 1.0) / 3600.0
    jump = (d > JUMP_KM) & (d / hours > WALK_KMH)
    if len(located) >= 3:  # b is a stale fix when a and the photo after b agree
        back = _km_pairs(lat[a[:-1]], lon[a[:-1]], lat[b[1:]], lon[b[1:]]) <= JUMP_KM
        stale = np.zeros(len(a), dtype=bool)
        stale[:-1] = jump[:-1] & jump[1:] & back
        jump &= ~stale & ~np.concatenate([[False], stale[:-1]])
    for k in np.flatnonzero(jump).tolist():
        first, last = int(a[k]), int(b[k])
        cut[first + int(np.argmax(np.diff(ts[first : last + 1])))] = True
    return cut


def _grouped_median(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """The median of `values` within each of `n` groups (NaN for an empty one), in one
    sort."""
    order = np.lexsort((values, groups))
    v, counts = values[order], np.bincount(groups, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full(n, np.nan)
    has = counts > 0
    lo, hi = starts[has] + (counts[has] - 1) // 2, starts[has] + counts[has] // 2
    out[has] = (v[lo] + v[hi]) / 2
    return out


def _centres(
    lat: np.ndarray, lon: np.ndarray, groups: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each group's centre (median latitude and longitude; NaN without a position) and
    spread (median distance from it). Longitude is taken on whichever side of the 180th
    meridian the group's photos lie closer together."""
    ok = np.isfinite(lat) & np.isfinite(lon)
    g, la, lo = groups[ok], lat[ok], lon[ok]
    centres = np.full((n, 2), np.nan)
    spreads = np.zeros(n)
    if not len(g):
        return centres, spreads
    centres[:, 0] = _grouped_median(la, g, n)
    wrapped = np.where(lo < 0, lo + 360.0, lo)  # the circle cut at 0 instead of at 180
    span = np.full(n, -np.inf)
    np.maximum.at(span, g, lo)
    low = np.full(n, np.inf)
    np.minimum.at(low, g, lo)
    span_wrapped = np.full(n, -np.inf)
    np.maximum.at(span_wrapped, g, wrapped)
    low_wrapped = np.full(n, np.inf)
    np.minimum.at(low_wrapped, g, wrapped)
    across = (span_wrapped - low_wrapped) < (span - low)
    plain, shifted = _grouped_median(lo, g, n), _grouped_median(wrapped, g, n)
    centres[:, 1] = np.where(across, np.where(shifted > 180.0, shifted - 360.0, shifted), plain)
    distance = _km_pairs(la, lo, centres[g, 0], centres[g, 1])
    spreads = np.nan_to_num(_grouped_median(distance, g, n))
    return centres, spreads


# -- home and away ----------------------------------------------------------------------------


def home_of(days: Sequence[tuple[int, tuple[float, float]]]) -> tuple[float, float] | None:
    """Where photos were taken in the most weeks: of the positions of (day, position)
    pairs, the one with the most distinct weeks within HOME_KM of it (weeks, not days:
    a fortnight away, photographed daily, must not outweigh months at home)."""
    if not days:
        return None
    points = np.array([p for _, p in days], dtype=np.float64)
    weeks = np.array([d // 7 for d, _ in days])
    # Candidates: the median position of each of the HOME_CANDIDATES busiest ~10 km cells.
    cells = np.floor(points * 10).astype(np.int64)
    _, cell_of, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    cell_of = cell_of.reshape(-1)
    busiest = np.argsort(-counts, kind="stable")[:HOME_CANDIDATES]
    lat_med = _grouped_median(points[:, 0], cell_of, len(counts))
    lon_med = _grouped_median(points[:, 1], cell_of, len(counts))
    best, best_weeks = None, -1
    for c in busiest.tolist():
        at = (float(lat_med[c]), float(lon_med[c]))
        n = len(np.unique(weeks[_km_many(points[:, 0], points[:, 1], at) <= HOME_KM]))
        if n > best_weeks:
            best, best_weeks = at, n
    return best


def _mark_away(sessions: list[_Session]) -> None:
    """Each located session's `away`: farther than HOME_KM from the home of the months
    around it (HOME_MONTHS each side)."""
    by_month: dict[int, list[tuple[int, tuple[float, float]]]] = {}
    for s in sessions:
        if s.centre is not None:
            by_month.setdefault(s.month, []).append((s.day, s.centre))
    homes = {}
    for m in by_month:
        stretch = [
            p for k in range(m - HOME_MONTHS, m + HOME_MONTHS + 1) for p in by_month.get(k, ())
        ]
        homes[m] = home_of(stretch)
    for s in sessions:
        home = homes.get(s.month)
        if s.centre is not None and home is not None:
            s.away = km(s.centre, home) > HOME_KM


# -- what the sessions show --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Likeness:
    means: dict[int, np.ndarray]  # session index -> mean embedding of its photos
    threshold: float  # mean similarity across two sessions below this: unlike


def _content_apart(shots: Shots, sessions: Sequence[_Session]) -> _Likeness | None:
    """How alike the photos of one session are (the mean similarity of two of its photos,
    over the library's sessions) and two photos picked at random; two sessions whose
    photos are, across them, less alike than halfway between show different things."""
    x, x_rows = shots.x, shots.embedding_rows()
    if x is None or not (x_rows >= 0).any():
        return None
    rows = np.array([r for s in sessions for r in s.rows], dtype=np.int64)
    session_of = np.repeat(np.arange(len(sessions)), [len(s.rows) for s in sessions])
    have = x_rows[rows] >= 0
    rows, session_of = rows[have], session_of[have]
    counts = np.bincount(session_of, minlength=len(sessions))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    present = np.flatnonzero(counts)
    # (rows are in session order: one reduceat sums each session's embeddings)
    totals = np.add.reduceat(x[x_rows[rows]].astype(np.float64), starts[present], axis=0)
    norms = np.einsum("ij,ij->i", totals, totals)
    n = counts[present].astype(np.float64)
    pairs = n >= 2  # mean pairwise similarity, from the sum: (|Σx|² - n) / (n² - n)
    within = (norms[pairs] - n[pairs]) / (n[pairs] ** 2 - n[pairs])
    with_x = np.flatnonzero(x_rows >= 0)
    if not len(within) or len(with_x) < 2:
        return None
    rng = np.random.default_rng(0)
    a, b = x_rows[rng.choice(with_x, 2000)], x_rows[rng.choice(with_x, 2000)]
    keep = a != b
    random = float(np.median(np.einsum("ij,ij->i", x[a[keep]], x[b[keep]]))) if keep.any() else 0
    same = float(np.median(within))
    if same <= random:
        return None  # the embeddings do not tell sessions apart: say nothing of content
    means = {int(k): totals[i] / n[i] for i, k in enumerate(present.tolist())}
    return _Likeness(means, (same + random) / 2)


def _unlike(likeness: _Likeness | None, a: int, b: int) -> bool:
    if likeness is None or a not in likeness.means or b not in likeness.means:
        return False
    return float(likeness.means[a] @ likeness.means[b]) < likeness.threshold


# -- sessions into events ----------------------------------------------------------------------


def _group(sessions: list[_Session], likeness: _Likeness | None) -> list[list[_Session]]:
    index = {id(s): i for i, s in enumerate(sessions)}
    trips = _trips(sessions)
    groups: list[list[_Session]] = []
    i = 0
    while i < len(sessions):
        if i in trips:
            end = trips[i]
            groups.append(sessions[i:end])
            i = end
            continue
        group = [sessions[i]]
        i += 1
        while i < len(sessions) and i not in trips and sessions[i].day == group[0].day:
            if not _same_event(group, sessions[i], likeness, index):
                break
            group.append(sessions[i])
            i += 1
        groups.append(group)
    return groups


def _same_event(
    group: list[_Session], nxt: _Session, likeness: _Likeness | None, index: dict[int, int]
) -> bool:
    """Whether `nxt` (same day, right after `group`) belongs to the same event."""
    located = [s for s in group if s.centre is not None]
    away = [s.away for s in group if s.away is not None]
    if nxt.away and away and all(away):
        return True  # a day out: away from home all day, wherever the day went
    last = group[-1]
    if nxt.centre is not None and located:
        prev = located[-1]
        assert prev.centre is not None
        if km(prev.centre, nxt.centre) > max(PLACE_KM, 2 * (prev.spread + nxt.spread)):
            return False
    if (nxt.start - last.end) / 3600.0 >= HOURS_APART:
        return not _unlike(likeness, index[id(last)], index[id(nxt)])
    return True


def _trips(sessions: list[_Session]) -> dict[int, int]:
    """{first session: one past the last} of each trip (see `_located_trips` and
    `_unlocated_trips`)."""
    trips = _located_trips(sessions)
    trips.update(_unlocated_trips(sessions, trips))
    return trips


def _located_trips(sessions: list[_Session]) -> dict[int, int]:
    """Runs of sessions away from home over two days or more: sessions without a
    position inside a run belong to it, and those on its first and last days."""
    trips: dict[int, int] = {}
    i = 0
    while i < len(sessions):
        if not sessions[i].away:
            i += 1
            continue
        last_away = j = i
        while j + 1 < len(sessions):
            s = sessions[j + 1]
            if s.away is False or _breaks(sessions[last_away], s, sessions[j]):
                break
            j += 1
            if s.away:
                last_away = j
        end = last_away + 1
        while end <= j and sessions[end].day == sessions[last_away].day:
            end += 1
        start = i
        while start - 1 >= 0 and sessions[start - 1].away is None:
            if sessions[start - 1].day != sessions[i].day or start - 1 in _ends(trips):
                break
            start -= 1
        if sessions[end - 1].day > sessions[start].day:
            trips[start] = end
        i = end
    return trips


def _unlocated_trips(sessions: list[_Session], trips: Mapping[int, int]) -> dict[int, int]:
    """Runs of sessions with no position at all on UNLOCATED_TRIP_DAYS or more days in a
    row (and at most UNLOCATED_TRIP_MAX): a camera without GPS on a trip, told by its
    rhythm alone, as at home few people photograph day after day."""
    inside = {k for start, end in trips.items() for k in range(start, end)}
    found: dict[int, int] = {}
    i = 0
    while i < len(sessions):
        if sessions[i].centre is not None or i in inside:
            i += 1
            continue
        j = i
        while (
            j + 1 < len(sessions)
            and j + 1 not in inside
            and sessions[j + 1].centre is None
            and sessions[j + 1].day - sessions[j].day <= 1
        ):
            j += 1
        days = sessions[j].day - sessions[i].day + 1
        if UNLOCATED_TRIP_DAYS <= days <= UNLOCATED_TRIP_MAX:
            found[i] = j + 1
        i = j + 1
    return found


def _ends(trips: Mapping[int, int]) -> set[int]:
    return {end - 1 for end in trips.values()}


def _breaks(last_away: _Session, s: _Session, prev: _Session) -> bool:
    """Whether the trip last away at `last_away` ends before `s` (right after `prev`):
    a week without photos, or a day without photos between two places."""
    if (s.start - prev.end) / 86400.0 >= TRIP_BREAK_DAYS:
        return True
    if s.centre is None or last_away.centre is None:
        return False
    return s.day - prev.day >= 2 and km(s.centre, last_away.centre) > AGREE_KM


def kind_left(kind: str, first: datetime, last: datetime) -> str:
    """The kind of an event that lost photos (and was not cut again): a trip whose photos
    now lie on one day is a day; nothing else can be told without cutting it again."""
    if kind == TRIP and day_of(first) == day_of(last):
        return DAY
    return kind


def _kind(group: Sequence[_Session]) -> str:
    if group[-1].day > group[0].day:
        return TRIP
    if any(s.away for s in group) or (group[-1].end - group[0].start) / 3600 >= DAY_HOURS:
        return DAY
    return MOMENT


# -- events over time --------------------------------------------------------------------------

NEW = -1


def _rows_by(labels: np.ndarray, wanted: np.ndarray) -> dict[int, np.ndarray]:
    """{label: the rows holding it} for the `wanted` labels, in one sort (not one scan of
    all rows per label: 100,000 events of 1M photos)."""
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    starts = np.searchsorted(ordered, wanted, side="left")
    ends = np.searchsorted(ordered, wanted, side="right")
    return {int(w): order[a:b] for w, a, b in zip(wanted.tolist(), starts, ends, strict=True)}


# Home is learned from HOME_MONTHS each side of a session: nothing farther from a new
# photo than this can change when it arrives.
NEAR_NEW_DAYS = 31 * (HOME_MONTHS + 1)


def near_new(times: Sequence[datetime], new: np.ndarray) -> np.ndarray:
    """Which photos were taken within NEAR_NEW_DAYS of a new photo."""
    _, days = _clock(times)
    new_days = np.unique(days[new])
    at = np.clip(np.searchsorted(new_days, days), 1, len(new_days)) - 1
    closest = np.minimum(
        np.abs(days - new_days[at]),
        np.abs(days - new_days[np.minimum(at + 1, len(new_days) - 1)]),
    )
    near: np.ndarray = closest <= NEAR_NEW_DAYS
    return near


def settle(
    shots: Shots, fresh: Sequence[Event], previous: np.ndarray, next_id: int
) -> tuple[np.ndarray, dict[int, str]]:
    """Each shot's event id, and the kind of each event cut again: `previous` (each
    shot's event id then, or NEW) where no new photo touches it, `fresh` (a cut of all
    the shots) on the days of new photos (see the module's docstring)."""
    n = len(shots)
    _, days = _clock(shots.times)
    fresh_of = np.empty(n, dtype=np.int64)
    for e, event in enumerate(fresh):
        fresh_of[list(event.rows)] = e
    old = previous != NEW
    # The window cut again: the days of new photos, every previous event with a photo on
    # one of them, every fresh event that reaches into the window, to a fixed point.
    window = np.isin(days, days[~old])
    while True:
        grown = window | (old & np.isin(previous, previous[window & old]))
        grown |= np.isin(fresh_of, fresh_of[grown])
        if (grown == window).all():
            break
        window = grown
    cut = np.unique(fresh_of[window])
    rows_of = _rows_by(fresh_of, cut)
    # A fresh event keeps the id of the previous event it shares most photos with (each
    # id once, the biggest overlap first); the others get new ids.
    overlaps = []
    for e in cut.tolist():
        had = previous[rows_of[e]]
        ids, counts = np.unique(had[had != NEW], return_counts=True)
        overlaps += [(-int(c), e, int(i)) for i, c in zip(ids, counts, strict=True)]
    given: dict[int, int] = {}
    taken: set[int] = set()
    for _, e, gid in sorted(overlaps):
        if e not in given and gid not in taken:
            given[e] = gid
            taken.add(gid)
    labels = previous.copy()
    kinds = {}
    for e in cut.tolist():
        if e not in given:
            given[e], next_id = next_id, next_id + 1
        labels[rows_of[e]] = given[e]
        kinds[given[e]] = fresh[e].kind
    return labels, kinds
