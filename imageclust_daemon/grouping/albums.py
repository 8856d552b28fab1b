"""Albums over time, and stable identities. Pure: no I/O.

A daemon runs for years: a change in the library moves only what it must. `regroup` is
a pure function of the photos' embeddings and the previous albums (`Previous`: each
photo's album, WAITING for a photo the last run saw and left in no album, NEW for one
it did not see; each album's `Baseline`, its size and fit when it was last cut).

- **New photos join what they belong to.** The new photos are cut together with what
  is near them: the NEARBY nearest photos in no album (new or waiting) and the
  ALBUM_PHOTOS nearest photos of the NEARBY nearest albums. The same cut as a full
  regroup (`stable_cut`) then decides: in a group mostly of album photos the new photos
  join the album most of them are in; a group mostly of photos in no album (new and
  waiting) is a new album when they are enough for one. A new photo left out joins the
  album most of its nearest album photos are in, as a full cut places its leftovers,
  else the next of those or the nearest album, when it lies within that album's own
  spread as a full cut keeps its photos (`holds`: within OUTLIER_FACTOR times the
  members' median distance to the centre of their closer half) and the album has room;
  photos no album holds wait. Albums never go over max_size. Waiting photos join no
  existing album: they become an album with new photos like them, so what a person
  saw stays as it was.
- **Deleted photos leave their album and nothing else moves.** An album that falls
  below min_size (photos deleted, or min_size raised) is dissolved and its photos are
  placed as new ones; an album over max_size (max_size lowered) is cut again.
- **Cut again, rarely, and only the part that drifted.** An album that gained photos
  and whose fit (its members' variance about their centre, unbiased: sum of squared
  distances / (n - 1)) is over DRIFT_FACTOR times its fit when last cut, and beyond what
  random subsets of its own photos give by chance (`drift`), is cut again,
  alone, by the full method; its largest part keeps its id. The whole library is cut
  again only when asked (`full`: `recluster --force`, a new model), at the first
  regroup, or when the library has GROWTH times the photos its albums were cut from
  (albums cut from a few photos of each subject cannot tell the subjects apart); ids
  then follow the most overlapping previous album (`match_clusters`).
- Every run says what it did (`Regrouping`): photos joined, albums formed, dissolved
  and cut again with the reason, and `moved`: photos in an album before that are no
  longer with all of that album's photos (`moved_points`).

Measured on real features (EfficientNet-Lite0: 1,140 photos of 114 photographs, shot as
`tests/tools/real_features_check.py` shoots them, camera shots and `--shots sides`)
through replayed histories (index 90%, add 1, add 5% of new subjects, delete 1, add 5%
of known subjects; 5 histories each, at 5-30 and at 3-12): adding photos moved no photo
of an album; deleting one moved none, but in one history of 20, where its album fell
below min_size and 2 of its photos went to other albums; the final ARI was at most 0.020
below that of a cut of the same library from scratch (0.019 above at best).
`tests/bench/bench_history.py` replays such a history through `imageclust index`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from imageclust_daemon.grouping.cluster import (
    NEIGHBOURS,
    canonical_order,
    cluster,
    holds,
    normalized,
)
from imageclust_daemon.grouping.ward import Cancel, Cancelled, leaves, never, stable_cut, ward_tree
from imageclust_daemon.records import Baseline

# -- albums over time -----------------------------------------------------------------------

NEW = -2  # in `Previous.labels`: a point the last run did not see (a photo added since)
WAITING = -1  # a point the last run saw and left in no album (it waits for others like it)

# An album that gained photos has drifted when its fit (the members' variance about their
# centre) is more than DRIFT_FACTOR times its fit when it was last cut, and more than
# DRIFT_LEVEL of what the album's own photos give by chance: the fit of all of them over
# that of DRIFT_DRAWS random subsets of its size at the cut. How much a fit varies by
# chance depends on the model and the album: an album's own photos split at random, 3/4
# as cut and 1/4 as added, gave ratios up to 1.22-1.31 (99th percentile) for albums of 8+
# real photos (EfficientNet-Lite0, 1280 dimensions), but 1.70 (2.38 at worst) with the
# tests' 32-dimension model, where 8 of 9 generated albums "drifted" at a fixed 1.5.
DRIFT_FACTOR = 1.3
DRIFT_LEVEL = 0.99
DRIFT_DRAWS = 200
# The whole library is cut again when it has this many times the photos its albums were
# cut from: a library indexed bit by bit, or one that grew for years from a few photos,
# first made its albums from a few photos of each subject, too few to tell them apart
# (grown from a fifth to all of 1,140 real photos in steps of 2%: ARI 0.16-0.30 against
# the truth without it, 0.57-0.70 with it, 0.69-0.86 from scratch). Full cuts stay rare:
# a library of 100 photos that grows to 100,000 is cut whole about ten times.
GROWTH = 2.0


@dataclass(frozen=True)
class Previous:
    """The albums as the last run left them: what makes a regroup incremental."""

    labels: np.ndarray  # int64 [n]: per point of x, its album id (>= 0), WAITING or NEW
    baselines: Mapping[int, Baseline]  # album id -> as last cut (missing: not known)
    next_id: int  # the lowest id a new album may take (ids are never reused)


@dataclass(frozen=True)
class Regrouping:
    """Albums after a regroup, and what the regroup did to them."""

    labels: np.ndarray  # int64 [n]: album id, or -1 (in no album: waiting)
    baselines: dict[int, Baseline]  # album id -> as last cut, for every album in `labels`
    method: str  # "incremental", or the full method: "exact", "two-stage", "partitioned"
    full: str  # why the whole library was cut ("" when incremental)
    joined: int  # photos new to the last run that joined an album that existed
    formed: int  # albums that did not exist before
    dissolved: int  # albums that fell below min_size; their photos were placed again
    recut: dict[int, str]  # album id (before the run) -> why it was cut again
    moved: int  # photos in an album before that are no longer with all of its photos
    #             still there (`moved_points`): what a person sees move


def regroup(
    x: np.ndarray,
    min_size: int,
    max_size: int,
    previous: Previous | None = None,
    *,
    full: str = "",
    cancelled: Cancel = never,
) -> Regrouping:
    """Albums for the points `x`, moving as little of `previous` as the changes demand.

    Incremental (see the module docstring, "Albums over time") unless `full` says why the
    whole library must be cut again, there is no album yet, or the photos in albums and
    the new ones are GROWTH times those the albums were cut from (their baselines' sizes:
    a library that doubled had its first albums cut from a small sample; photos waiting
    in no album do not count). A full cut gives each album the id of the previous album
    it overlaps most (`match_clusters`). Pure, deterministic, and independent of the
    order of the rows.
    """
    if min_size < 1 or max_size < min_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    x = np.asarray(x, dtype=np.float32)
    if previous is not None and previous.labels.shape != (x.shape[0],):
        raise ValueError("previous.labels must have one entry per point")
    grouped = 0 if previous is None else int((previous.labels >= 0).sum())
    if previous is None or not grouped:
        full = full or "first regroup"
    elif not full and grouped + (previous.labels == NEW).sum() >= GROWTH * _cut_from(previous):
        full = "the library doubled since its albums were cut"
    if full or previous is None:
        return _full_regroup(x, min_size, max_size, previous, full, cancelled)
    return _Incremental(x, min_size, max_size, previous, cancelled).run()


def _cut_from(previous: Previous) -> int:
    """How many photos the albums there are were cut from: their sizes when last cut (an
    album cut before baselines were kept: its size now)."""
    sizes = Counter(previous.labels[previous.labels >= 0].tolist())
    return sum(
        previous.baselines[a].size if a in previous.baselines else n for a, n in sizes.items()
    )


def drift(x: np.ndarray, was: Baseline) -> float | None:
    """How many times as spread an album's photos `x` are as when it was cut, if that is
    drift (see DRIFT_FACTOR), else None. Deterministic for rows in a fixed order."""
    n, k = x.shape[0], was.size
    if was.fit <= 0 or k < 2 or k >= n:
        return None
    ratio = album_fit(x) / was.fit
    if ratio <= DRIFT_FACTOR:
        return None
    rng = np.random.default_rng(n * 1_000_003 + k)
    chance = np.array(
        [album_fit(x[np.sort(rng.choice(n, k, replace=False))]) for _ in range(DRIFT_DRAWS)]
    )
    by_chance = album_fit(x) / np.maximum(chance, 1e-12)
    # as tight as the photos it was cut with, or tighter: how often, by chance (the subset
    # of those very photos is among the draws: a tolerance for the order of the sums)
    p = (1 + int((by_chance >= ratio * (1 - 1e-9)).sum())) / (1 + DRIFT_DRAWS)
    return ratio if p < 1 - DRIFT_LEVEL else None


def _baseline(x: np.ndarray) -> Baseline:
    return Baseline(x.shape[0], album_fit(x))


def album_fit(x: np.ndarray) -> float:
    """An album's fit: its members' variance about their centre, sum ||x_i - c||^2 / (n-1)
    (unbiased, so an album's fit does not fall as it grows; 0 for one photo)."""
    n = x.shape[0]
    if n < 2:
        return 0.0
    xd = x.astype(np.float64)
    c = xd.mean(axis=0)
    return float(((xd - c) ** 2).sum() / (n - 1))


def moved_points(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Which points were in an album before (`before` >= 0) and are no longer with every
    photo of that album that is still there: split from them, or in no album now. An album
    that gained photos (new, waiting, or a dissolved album's) or lost deleted ones moves
    nobody."""
    out = np.zeros(before.shape[0], dtype=bool)
    rows = np.flatnonzero(before >= 0)
    if not rows.size:
        return out
    b, a = before[rows], after[rows]
    _, b_ix = np.unique(b, return_inverse=True)
    _, a_ix = np.unique(a, return_inverse=True)
    pair = b_ix * (int(a_ix.max()) + 1) + a_ix
    _, pair_ix, pair_n = np.unique(pair, return_inverse=True, return_counts=True)
    together = pair_n[pair_ix]  # points sharing both the old and the new album
    out[rows] = (a < 0) | (together != np.bincount(b_ix)[b_ix])
    return out


def _full_regroup(
    x: np.ndarray,
    min_size: int,
    max_size: int,
    previous: Previous | None,
    reason: str,
    cancelled: Cancel,
) -> Regrouping:
    result = cluster(x, min_size, max_size, cancelled=cancelled)
    members = album_members(result.labels)
    before = previous.labels if previous is not None else np.full(x.shape[0], NEW, dtype=np.int64)
    old = {aid: set(idx) for aid, idx in album_members(before).items()}
    ordered = [members[g] for g in sorted(members)]  # numbered in canonical order
    ids = match_clusters(
        old,
        [set(idx) for idx in ordered],
        next_id=previous.next_id if previous is not None else 0,
    )
    labels = np.full(x.shape[0], -1, dtype=np.int64)
    for aid, idx in zip(ids, ordered, strict=True):
        labels[idx] = aid
    kept = set(ids) & set(old)
    baselines = {aid: _baseline(x[idx]) for aid, idx in zip(ids, ordered, strict=True)}
    return Regrouping(
        labels=labels,
        baselines=baselines,
        method=result.method,
        full=reason,
        joined=0,
        formed=len(ids) - len(kept),
        dissolved=0,
        recut={},
        moved=int(moved_points(before, labels).sum()),
    )


def album_members(labels: np.ndarray) -> dict[int, list[int]]:
    """Each label >= 0 -> its points, ascending."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    out: dict[int, list[int]] = {}
    start = int(np.searchsorted(sorted_labels, 0))
    bounds = np.flatnonzero(np.diff(sorted_labels[start:])) + start + 1
    for part in np.split(order[start:], bounds - start):
        if part.size:
            out[int(labels[part[0]])] = sorted(part.tolist())
    return out


class _Incremental:
    """One incremental regroup (see `regroup`); a class only to share its working state."""

    def __init__(
        self,
        x: np.ndarray,
        min_size: int,
        max_size: int,
        previous: Previous,
        cancelled: Cancel,
    ) -> None:
        self.x, self.min_size, self.max_size = x, min_size, max_size
        self.previous, self.cancelled = previous, cancelled
        self.labels = previous.labels.copy()
        self.fresh = self.labels == NEW  # to be placed: new photos, and those released
        self.labels[self.fresh] = WAITING
        self.rank = np.empty(x.shape[0], dtype=np.int64)  # canonical: breaks every tie
        self.rank[canonical_order(x)] = np.arange(x.shape[0])
        self.next_id = max(previous.next_id, int(self.labels.max()) + 1)
        self.baselines = dict(previous.baselines)
        self.recut: dict[int, str] = {}
        self.formed: list[int] = []
        self.dissolved = 0
        self.released = np.zeros(x.shape[0], dtype=bool)  # left out by a re-cut

    def run(self) -> Regrouping:
        self._dissolve_small()
        self._recut_oversize()
        for aid, idx in album_members(self.labels).items():
            if aid not in self.baselines:  # cut before baselines were kept: from now
                self.baselines[aid] = _baseline(self.x[idx])
        gained = self._place(self.fresh)
        self._recut_drifted(gained)
        self._place(self.released)  # what a re-cut left over, once more
        labels = self.labels
        labels[labels < 0] = -1
        alive = set(np.unique(labels[labels >= 0]).tolist())
        existed = np.unique(self.previous.labels[self.previous.labels >= 0])
        joined = (self.previous.labels == NEW) & np.isin(labels, existed)
        return Regrouping(
            labels=labels,
            baselines={a: b for a, b in self.baselines.items() if a in alive},
            method="incremental",
            full="",
            joined=int(joined.sum()),
            formed=len([a for a in self.formed if a in alive]),
            dissolved=self.dissolved,
            recut=self.recut,
            moved=int(moved_points(self.previous.labels, labels).sum()),
        )

    # -- the steps, in order ----------------------------------------------------------------

    def _dissolve_small(self) -> None:
        """An album below min_size (its photos deleted, or min_size raised) is dissolved;
        its photos are placed again as if new."""
        for idx in album_members(self.labels).values():
            if len(idx) < self.min_size:
                self.labels[idx] = WAITING
                self.fresh[idx] = True
                self.dissolved += 1

    def _recut_oversize(self) -> None:
        """An album over max_size (max_size lowered) is cut again, alone."""
        for aid, idx in album_members(self.labels).items():
            if len(idx) > self.max_size:
                self._recut(aid, np.asarray(idx), f"over max_size ({len(idx)} photos)")

    def _place(self, which: np.ndarray) -> set[int]:
        """Place the fresh photos among `which` (a mask); returns the albums that gained
        some.

        The same cut as a full regroup (`stable_cut` of an exact Ward tree), over the part
        of the library near them: the fresh photos, the NEARBY photos in no album (fresh or
        waiting) nearest to each, and its ALBUM_PHOTOS nearest photos of its NEARBY nearest
        albums. In each group of that cut mostly of album photos, the fresh photos join
        the album most of them are in (or the next with room); a group mostly of photos in
        no album (fresh and waiting) is a new album of those, when they are enough for one.
        The album photos themselves stay where they are. A fresh photo the cut leaves out
        is adopted by an album near it (`_adopt`), or waits. Many fresh photos are cut in
        parts of about PART_LEAVES photos with their neighbourhoods, in order of their
        nearest album.
        """
        fresh = np.flatnonzero(which & self.fresh & (self.labels == WAITING))
        if not fresh.size:
            return set()
        members = album_members(self.labels)
        centres, _, ids = self._centres(members)
        # in canonical order by nearest album: neighbours share their albums' photos, so a
        # part holds more of them
        first = _nearest(self.x[fresh], centres, 1)[:, 0] if ids.size else np.zeros(fresh.size)
        fresh = fresh[np.lexsort((self.rank[fresh], first))]
        unplaced = np.flatnonzero(self.labels == WAITING)  # fresh and waiting
        # Each fresh photo's nearest album photos, among those of its NEARBY nearest albums,
        # and its nearest photos in no album (itself among them), among those whose nearest
        # album is one of these: found once, near its albums (every photo in no album
        # against every fresh one: 8 of 35 s for 30,000 new photos among 100,000).
        if ids.size:
            albums_near = _nearest(self.x[fresh], centres, NEARBY)
            by_album: dict[int, list[int]] = {}
            nearest_album = _nearest(self.x[unplaced], centres, 1)[:, 0]
            for p, c in zip(unplaced.tolist(), nearest_album.tolist(), strict=True):
                by_album.setdefault(c, []).append(p)
            album_photos = self._nearest_of(
                fresh,
                [[p for c in row for p in members[int(ids[c])]] for row in albums_near],
                ALBUM_PHOTOS,
            )
            company = self._nearest_of(
                fresh,
                [[p for c in row for p in by_album.get(int(c), [])] for row in albums_near],
                NEARBY + 1,
            )
        else:  # every album dissolved: the photos in no album are all there is
            album_photos = [[] for _ in fresh]
            company = unplaced[_nearest(self.x[fresh], self.x[unplaced], NEARBY + 1)].tolist()
        sizes: dict[int, int] = {int(a): len(m) for a, m in members.items()}
        gained: set[int] = set()
        left: list[np.ndarray] = []
        photos: set[int] = set()
        for j, i in enumerate(fresh.tolist()):
            more = {i, *company[j], *album_photos[j]}
            if photos and len(photos | more) > PART_LEAVES:
                gained |= self._cut_part(photos, sizes, left)
                photos = set()
            photos |= more
        gained |= self._cut_part(photos, sizes, left)
        rest = np.concatenate(left) if left else np.zeros(0, dtype=np.int64)
        return gained | self._adopt(rest)

    def _nearest_of(self, rows: np.ndarray, among: list[list[int]], k: int) -> list[list[int]]:
        """For each photo of `rows`, its k nearest photos of its own list `among`, a block
        of photos at a time (about 64 MB of candidates)."""
        out: list[list[int]] = []
        longest = max((len(c) for c in among), default=0)
        if longest == 0:
            return [[] for _ in rows]
        block = max(1, (1 << 24) // (longest * self.x.shape[1]))
        take = min(k, longest)
        for start in range(0, rows.size, block):
            lists = among[start : start + block]
            idx = np.full((len(lists), longest), -1, dtype=np.int64)
            for r, c in enumerate(lists):
                idx[r, : len(c)] = c
            cand = self.x[np.maximum(idx, 0)].astype(np.float64)  # [block, longest, d]
            here = self.x[rows[start : start + block]].astype(np.float64)
            d = np.einsum("bld,bld->bl", cand, cand) - 2.0 * np.einsum("bld,bd->bl", cand, here)
            d[idx < 0] = np.inf
            nearest = np.argpartition(d, take - 1, axis=1)[:, :take] if take < longest else None
            for r in range(len(lists)):
                chosen = idx[r] if nearest is None else idx[r, nearest[r]]
                out.append(chosen[chosen >= 0].tolist())
        return out

    def _cut_part(
        self, photos: set[int], sizes: dict[int, int], left: list[np.ndarray]
    ) -> set[int]:
        """One cut of a part (see `_place`): its album photos, and its photos still in no
        album."""
        part = np.array(sorted(photos), dtype=np.int64)
        if not self.fresh[part].any():
            return set()
        return self._cut_nearby(part, sizes, left)

    def _cut_nearby(
        self, nearby: np.ndarray, sizes: dict[int, int], left: list[np.ndarray]
    ) -> set[int]:
        """One cut of the photos `nearby` (fresh, waiting and album photos); see `_place`.
        `sizes`: the albums' sizes, kept up to date."""
        nearby = nearby[np.argsort(self.rank[nearby], kind="stable")]  # canonical order
        tree = ward_tree(self.x[nearby], cancelled=self.cancelled)
        cut = stable_cut(tree, self.min_size, self.max_size)
        gained: set[int] = set()
        grouped = np.zeros(nearby.size, dtype=bool)
        for node in cut.groups:
            under = np.asarray(leaves(tree, node))
            grouped[under] = True
            rows = nearby[under]
            new = rows[self.fresh[rows]]
            if not new.size:
                continue
            held = Counter(int(a) for a in self.labels[rows] if a >= 0)
            unplaced = rows[self.labels[rows] < 0]  # new photos, and waiting ones
            if unplaced.size >= sum(held.values()):  # a group of photos in no album
                if unplaced.size >= self.min_size:
                    self._new_album(unplaced)
                    sizes[self.next_id - 1] = unplaced.size
                else:  # too few for an album: not an album's either (`_adopt` decides)
                    left.append(new)
                continue
            by_share = sorted(held, key=lambda a: (-held[a], a))
            for i in new[np.argsort(self.rank[new], kind="stable")]:
                # the cut put it with these albums' photos: the album most of them are in,
                # if it has room (no spread test here: the cut decided, as a full cut does)
                room = [a for a in by_share if sizes[a] < self.max_size]
                if not room:
                    left.append(np.array([i]))
                    continue
                self.labels[i] = room[0]
                self.fresh[i] = False
                sizes[room[0]] += 1
                gained.add(room[0])
        out = nearby[~grouped]
        left.append(out[self.fresh[out] & (self.labels[out] == WAITING)])
        return gained

    def _adopt(self, todo: np.ndarray) -> set[int]:
        """Each fresh photo of `todo` still in no album joins the album most of its
        NEIGHBOURS nearest album photos are in (similarity weighted, among the albums
        nearest to it), as a full cut places its leftovers, else the next of those, else
        the nearest album, that has room and keeps the photo as a full cut keeps its
        photos (`holds`). The rest wait."""
        todo = np.unique(todo)
        todo = todo[self.fresh[todo] & (self.labels[todo] == WAITING)]
        members = album_members(self.labels)
        if not todo.size or not members:
            return set()
        centres, sizes, ids = self._centres(members)
        counts = sizes.astype(np.int64)
        nearest = _nearest(self.x[todo], centres, NEARBY)
        gained: set[int] = set()
        for j in np.argsort(self.rank[todo], kind="stable"):
            photo = self.x[todo[j]]
            near = nearest[j]
            voters = np.concatenate([members[int(ids[c])] for c in near])
            album = np.concatenate([np.full(len(members[int(ids[c])]), c) for c in near])
            sims = self.x[voters].astype(np.float64) @ photo
            votes: dict[int, float] = {}
            for t in np.lexsort((voters, -sims))[:NEIGHBOURS]:
                votes[int(album[t])] = votes.get(int(album[t]), 0.0) + float(sims[t])
            by_vote = sorted(votes, key=lambda c: (-votes[c], c))
            for c in [*by_vote, *(int(c) for c in near if int(c) not in votes)]:
                if counts[c] < self.max_size and holds(self.x[members[int(ids[c])]], photo):
                    self.labels[todo[j]] = ids[c]
                    self.fresh[todo[j]] = False
                    counts[c] += 1
                    gained.add(int(ids[c]))
                    break
        return gained

    def _recut_drifted(self, gained: set[int]) -> None:
        """An album that gained photos and lost its fit (`drift`) is cut again, alone."""
        members = album_members(self.labels)
        for aid in sorted(gained):
            idx = members.get(aid)
            if idx is None:
                continue
            ordered = np.asarray(sorted(idx, key=lambda i: self.rank[i]))
            ratio = drift(self.x[ordered], self.baselines[aid])
            if ratio is not None:
                why = f"drifted: its photos {ratio:.2f}x as spread as when it was cut"
                self._recut(aid, ordered, why)

    # -- helpers ----------------------------------------------------------------------------

    def _centres(self, members: dict[int, list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The albums as they are now: centres (float64), sizes, ids (ascending)."""
        ids = np.array(sorted(members), dtype=np.int64)
        centres = np.zeros((ids.size, self.x.shape[1]))
        sizes = np.zeros(ids.size)
        for j, aid in enumerate(ids.tolist()):
            idx = members[aid]
            centres[j] = self.x[idx].astype(np.float64).mean(axis=0)
            sizes[j] = len(idx)
        return centres, sizes, ids

    def _new_album(self, rows: np.ndarray) -> None:
        aid = self.next_id
        self.next_id += 1
        self.labels[rows] = aid
        self.fresh[rows] = False
        self.baselines[aid] = _baseline(self.x[rows])
        self.formed.append(aid)

    def _recut(self, aid: int, idx: np.ndarray, why: str) -> None:
        """Cut one album's photos again at the library's price; the largest part keeps the
        album's id, the others are new albums, photos in no part are placed again."""
        if self.cancelled():
            raise Cancelled
        part = cluster(self.x[idx], self.min_size, self.max_size, cancelled=self.cancelled).labels
        self.recut[aid] = why
        pieces = [idx[part == p] for p in range(int(part.max()) + 1 if part.size else 0)]
        pieces = [p for p in pieces if p.size]
        pieces.sort(key=lambda p: (-p.size, int(self.rank[p].min())))
        left = idx[part < 0]
        self.labels[left] = WAITING
        self.fresh[left] = True
        self.released[left] = True
        for j, piece in enumerate(pieces):
            if j == 0:
                self.labels[piece] = aid
                self.baselines[aid] = _baseline(self.x[piece])
            else:
                self._new_album(piece)
        if not pieces:
            self.baselines.pop(aid, None)


# A fresh photo is cut with its NEARBY nearest photos in no album, and with the
# ALBUM_PHOTOS photos nearest to it among those of its NEARBY nearest albums: the rest of
# the library does not change where it goes (Ward's groups form among near neighbours).
# 1,000 new photos among 100,000 (tests/bench/bench_cluster.py): with whole albums 9.4 s,
# with 60 photos of them 2.3 s (the full cut: 14 s), and the same ARI at the end of 30
# replayed histories on real features (3 libraries, 5-30 and 3-12).
NEARBY = 5
ALBUM_PHOTOS = 60
# Many fresh photos are cut in parts of about this many photos with their neighbourhoods
# (parts of 3,000: 5.1 s for the above; of 400-1,000 the same). 30,000 new photos among
# 100,000 (256 dims) take 30 s, the full cut 10 s: most of it is one Ward merge a leaf in
# Python, ~25 leaves a new photo, and moving nobody is worth it for so rare an import.
PART_LEAVES = 1000


def _nearest(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """[len(a), min(k, len(b))]: indices of each row of a's k nearest rows of b (equal
    distances may fall either way), in blocks of about 64 MB of distances."""
    take = min(k, b.shape[0])
    out = np.zeros((a.shape[0], take), dtype=np.int64)
    if take == 0:
        return out
    b64 = b.astype(np.float64)
    b_sq = np.einsum("ij,ij->i", b64, b64)
    rows = max(1, (1 << 23) // b.shape[0])
    for start in range(0, a.shape[0], rows):
        a64 = a[start : start + rows].astype(np.float64)
        d = b_sq[None, :] - 2.0 * a64 @ b64.T  # + |a|^2, the same along each row
        if take < b.shape[0]:
            out[start : start + rows] = np.argpartition(d, take - 1, axis=1)[:, :take]
        else:
            out[start : start + rows] = np.argsort(d, axis=1, kind="stable")[:, :take]
    return out


# -- representatives and identities ---------------------------------------------------------


def album_ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One album's photos by cosine to its normalized centroid: each row's rank (0 = the
    most typical, ties by row), each row's cosine to the centre, and the centre."""
    xn = normalized(np.asarray(x, dtype=np.float64))
    centre = xn.sum(axis=0)
    centre /= np.linalg.norm(centre) or 1.0
    sims = xn @ centre
    rank = np.empty(x.shape[0], dtype=np.int64)
    rank[np.lexsort((np.arange(x.shape[0]), -sims))] = np.arange(x.shape[0])
    return rank, sims, centre


def jaccard(a: Collection[Hashable], b: Collection[Hashable]) -> float:
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 0.0


def match_clusters(
    previous: Mapping[int, Collection[Hashable]],
    current: Sequence[Collection[Hashable]],
    *,
    threshold: float = 0.5,
    next_id: int | None = None,
) -> list[int]:
    """An id for each current group: the previous group's id with the highest Jaccard overlap
    (at least `threshold`; each previous id used once; assignment maximizing the total overlap),
    else a fresh id above every id in `previous` and at least `next_id`."""
    from scipy.optimize import linear_sum_assignment

    owner = {member: gid for gid, members in previous.items() for member in members}
    prev_size = {gid: len(set(members)) for gid, members in previous.items()}
    pairs: dict[tuple[int, int], float] = {}
    for j, members in enumerate(current):
        unique = set(members)
        overlaps = Counter(owner[m] for m in unique if m in owner)
        for gid, inter in overlaps.items():
            score = inter / (prev_size[gid] + len(unique) - inter)
            if score >= threshold:
                pairs[(gid, j)] = score
    ids: list[int | None] = [None] * len(current)
    if pairs:
        rows = sorted({gid for gid, _ in pairs})
        cols = sorted({j for _, j in pairs})
        row_of = {gid: r for r, gid in enumerate(rows)}
        col_of = {j: c for c, j in enumerate(cols)}
        weight = np.zeros((len(rows), len(cols)))
        for (gid, j), score in pairs.items():
            weight[row_of[gid], col_of[j]] = score
        for r, c in zip(*linear_sum_assignment(weight, maximize=True), strict=True):
            if weight[r, c] > 0:
                ids[cols[c]] = rows[r]
    fresh = max([next_id or 0, *(gid + 1 for gid in previous)])
    out = []
    for assigned in ids:
        if assigned is None:
            assigned, fresh = fresh, fresh + 1
        out.append(assigned)
    return out
