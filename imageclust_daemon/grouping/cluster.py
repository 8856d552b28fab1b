"""Size-constrained Ward clustering, albums that stay put, stable identities. Pure: no I/O.

Albums over time (`regroup`)
----------------------------
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

How photos become groups (a full cut)
-------------------------------------
1. **Canonical order.** Rows are sorted by fixed random projections first, and
   labels are mapped back at the end, so the result is deterministic and does
   not depend on the order of the rows (only identical rows tie, and those are
   interchangeable).
2. **The Ward tree.** Up to `EXACT_MAX` points, exact Ward agglomeration (the
   nearest-neighbour-chain algorithm with Lance-Williams updates, on a dense
   float64 matrix: 6,000 points = 288 MB). Beyond it, two stages: k-means
   (`MICRO_CLUSTERS` centres, fixed iterations, seeded on the canonical order)
   summarises the points, then weighted Ward builds the tree over the
   centres, each carrying its member count. Ward's merge cost between groups
   A and B is 2|A||B|/(|A|+|B|) * ||c_A - c_B||^2, so a weighted centre
   merges exactly as its members would if they sat on the centre.
   Past `PARTITION_MIN` (150,000) points the two stages cannot hold: with groups
   of at most max_size, micro-clusters must be cut to max_size points, and 1M
   photos would make a 33,000-leaf Ward stage (a 9 GB matrix). The library is
   then cut into coarse cells of about `PARTITION_TARGET` points first: k-means
   centres fitted on a sample taken in canonical order, those centres grouped
   into cells, each point given the cell of its nearest centre (an album sits
   in one or two fine centres, so few are cut: assigning points to the coarse
   centres directly cut 1,438 of 1,666 planted groups, this way 31). Each cell
   grows its own tree at the whole library's leaf granularity and the steps
   below run cell by cell.
3. **The cut** (`stable_cut`, see "Choosing the groups"). Each subtree either
   becomes one group, if its size is within [min_size, max_size], or is split into
   the best cuts of its two children (dynamic programming over the tree): the groups
   that persist longest.
4. **Points left over.** A subtree smaller than min_size whose parent is not a
   group cannot be a group on its own; each such point joins
   the group most of its 5 nearest grouped neighbours are in (similarity
   weighted) that still has room (the nearest centroid when there are too many
   to compare: a group is often not round). If every group is full, the rest
   are taken in dendrogram leaf order (neighbours stay together) and cut into
   as many new groups as the limits allow.
5. **Polish** (automatic count only: a count asked for stays a cut of the
   tree). Hartigan's moves under the limits: a point moves to another group
   when that lowers the within-group sum of squares, as long as both groups
   stay within [min_size, max_size]; rounds repeat while the total falls.
   It compares every point with every group, so it is skipped past
   POLISH_MAX_WORK (about 10,000 photos at the default limits).
6. **Photos that fit no group.** A photo farther from its group's centre
   (the centre of the group's closer half) than 2.5 times the group's median
   distance stays ungrouped, at most 2% of the photos, never taking a group
   below min_size: a one-off shot among albums then stays out instead of
   making one impure. Otherwise a point is `-1` only when every group is full
   and fewer than min_size points are left.

Choosing the groups
-------------------
A group persists from the height at which it forms (its top merge) to the height at
which it joins its sibling; its persistence is its size times the log of that ratio
(beyond PERSIST_NOISE, the scatter of the ratio inside one blob), and the cut keeps the
groups with the most persistence in all (`stable_cut`, as HDBSCAN keeps its most
stable clusters). The root is taken to join a sibling SIGNIFICANT_JUMP times above its
own height: the library is one group only when no split in it stands out. Each part of
the library is cut at its own height, not all at one.

The count used to be read off one global cut height, at the largest relative jump in
merge height among the counts the limits allow. On real features the sorted merge
heights fall smoothly: the largest jumps were 1.02-1.06 (a jump of 1.5 stands out on
generated scenes), so the count was set by noise, and on objects seen from several
sides it cut sides apart. Measured (EfficientNet-Lite0, 1,140 photos of 114
photographs, `tests/tools/real_features_check.py`), ARI against the photographs,
relative jump -> persistence: camera shots at 5-30, 0.776 -> 0.862 (96 -> 109 groups),
at 3-12, 0.905 -> 0.906; objects seen from 2-3 sides (`--shots sides`) at 5-30,
0.641 -> 0.687, at 3-12, 0.600 -> 0.726 (226 -> 192 groups; 0.615 before the
leftover and outlier steps, which cost 0.01-0.02 there and are kept: they keep
one-off shots out of albums). Generated scenes (`tests/tools/grouping_check.py`,
100 seeds a case): the right count in every seed as before.

With `n_clusters=k` a price `lam` per group is searched so the cut of the tree at
height sqrt(2*lam) (least within-group sum of squares plus `lam` a group, fewest
points outside groups first: `cut_tree`) has k groups; under size limits the count is
not monotone in the price, so the nearest cut is then moved along the tree
(`_to_count`: merge the lowest sibling pair that fits, or split the highest group
whose halves can be groups) to exactly k, or as near as the limits allow. With
min_size=1 and max_size>=n this is SciPy's `fcluster(linkage(X, "ward"), k, "maxclust")`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from imageclust_daemon.records import Baseline

# Exact Ward keeps an n x n float64 matrix: 6,000 points = 288 MB and ~2 s here.
EXACT_MAX = 6000
# Two-stage: k-means centres summarising the points. 3,000 keeps the Ward
# stage at 72 MB and < 1 s, and each centre at ~33 points for 100k photos,
# well below any useful min_size.
MICRO_CLUSTERS = 3000
KMEANS_ITERATIONS = 8
_CHUNK = 8192  # rows per distance block in k-means: 8192 x 3000 float32 = 98 MB
# Past this many points, the library is first partitioned by a coarse k-means into
# blocks of about PARTITION_TARGET points, each grouped on its own by the method above.
# The two-stage method alone cannot go much further: with groups of at most max_size, a
# micro-cluster must be cut to max_size points, so its Ward stage has n / max_size leaves
# (1M photos at 30: 33,000 leaves, a 9 GB matrix). Albums are far tighter than the coarse
# cells, so few straddle a boundary.
PARTITION_MIN = 150_000
PARTITION_TARGET = 100_000
COARSE_SAMPLE = 100_000  # points the fine centres are fitted on (in canonical order)
COARSE_ITERATIONS = 10
# The whole library (the root) is taken to join a sibling this many times above its own
# height: it is one group only when no split in it stands out by as much. One blob
# (generated, 10-150 points, 32-512 dims, 240 cases) gave jumps of 1.08 (median) to 1.49
# (20 points spread over the whole sphere); distinct scenes 2-9; 11 real albums plus 8
# one-off photographs (6 of them textures, a loose group of their own), 1.65: at 2.0
# that library was one album.
SIGNIFICANT_JUMP = 1.5
# Heights near zero (duplicates, near-identical bursts) are floored at this quantile of
# the merge heights before ratios are taken: a group formed at height ~0 would persist
# for ever.
RATIO_FLOOR_QUANTILE = 0.1
# A group's persistence counts only beyond this (log) ratio of the height at which it
# joins its sibling to the height at which it formed. Inside one blob of photos Ward's
# merge heights stay about level: generated blobs of 40-200 points in 512 dimensions
# gave ratios of 1.03-1.04 (median), 1.08 at the 90th percentile, 1.12 at most. Counted,
# that noise decided how often a blob too big for max_size was cut again (generated
# scenes at 5-30: ARI 0.74, with the margin 0.83, as the fixed price gave).
PERSIST_NOISE = math.log(1.1)


class Cancelled(Exception):
    """The caller asked to stop (a daemon shutting down); nothing was computed."""


Cancel = Callable[[], bool]  # polled between steps: True = stop now


def never() -> bool:
    """The Cancel of a clustering nobody stops."""
    return False


_CANCEL_EVERY = 256  # Ward merges between two polls: ~0.1 s at 6,000 points


@dataclass(frozen=True)
class Tree:
    """A Ward dendrogram in SciPy's linkage layout, over weighted leaves.

    `merges[i] = (a, b, height, size)`; node `n_leaves + i` is merge i.
    """

    merges: np.ndarray  # float64 [n_leaves - 1, 4]
    weights: np.ndarray  # float64 [n_leaves]: points in each leaf
    # float64 [n_leaves]: the height at which each leaf's own points would have formed it
    # (a weighted leaf's: the RMS of its points' Ward merges, sqrt(2*SSE/(w-1)), since a
    # group's merges square-sum to twice its SSE); None: the leaves are points (height 0)
    formed: np.ndarray | None = None

    @property
    def n_leaves(self) -> int:
        return int(self.weights.shape[0])


@dataclass(frozen=True)
class Clustering:
    labels: np.ndarray  # int64 [n]; -1 = in no group
    n_clusters: int
    unclustered_fraction: float
    method: str  # "exact", "two-stage" or "partitioned"


# -- the Ward tree --------------------------------------------------------------------------


def ward_tree(
    points: np.ndarray, weights: np.ndarray | None = None, cancelled: Cancel = never
) -> Tree:
    """Ward agglomeration of (weighted) points by the nearest-neighbour chain. O(m^2) memory."""
    c = np.asarray(points, dtype=np.float64)
    m = c.shape[0]
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if m == 0:
        return Tree(np.empty((0, 4)), w)
    sq = np.einsum("ij,ij->i", c, c)
    # One m x m matrix, filled in place row block by row block: written as one
    # expression it made four temporaries (5,000 leaves: 1 GB instead of 200 MB).
    d = c @ c.T
    rows = 256  # a block's temporaries: 256 x 5,000 x 8 bytes = 10 MB
    for start in range(0, m, rows):
        block = d[start : start + rows]
        block *= -2.0
        block += sq[start : start + rows, None]
        block += sq[None, :]
        np.maximum(block, 0.0, out=block)
        wb = w[start : start + rows, None]
        block *= 2.0 * wb * w[None, :] / (wb + w[None, :])
    np.fill_diagonal(d, np.inf)

    size = w.copy()
    node = np.arange(m)  # the tree node each active slot currently holds
    raw: list[tuple[int, int, float, float]] = []
    chain: list[int] = []
    active = np.ones(m, dtype=bool)
    for step in range(m - 1):
        if step % _CANCEL_EVERY == 0 and cancelled():
            raise Cancelled
        if not chain:
            chain.append(int(np.flatnonzero(active)[0]))
        while True:
            a = chain[-1]
            row = d[a]
            b = int(np.argmin(row))
            if len(chain) > 1 and row[chain[-2]] <= row[b]:
                b = chain[-2]  # prefer the chain's previous element on ties: guarantees progress
                break
            chain.append(b)
        chain.pop()
        chain.pop()
        dist = d[a, b]
        lo, hi = (a, b) if a < b else (b, a)
        sa, sb = size[a], size[b]
        sk = size
        merged = ((sk + sa) * d[a] + (sk + sb) * d[b] - sk * dist) / (sk + sa + sb)
        d[lo] = merged
        d[:, lo] = merged
        d[hi] = np.inf
        d[:, hi] = np.inf
        d[lo, lo] = np.inf
        active[hi] = False
        raw.append((int(node[a]), int(node[b]), math.sqrt(max(dist, 0.0)), sa + sb))
        size[lo] = sa + sb
        size[hi] = 0.0
        node[lo] = m + len(raw) - 1  # provisional id: renumbered below, after sorting
    return Tree(_renumber(raw, m), w)


def _renumber(raw: list[tuple[int, int, float, float]], m: int) -> np.ndarray:
    """Sort merges by height (stable) and give nodes SciPy's ids (n + position)."""
    order = sorted(range(len(raw)), key=lambda i: raw[i][2])
    new_id: dict[int, int] = {}
    out = np.empty((len(raw), 4))
    for pos, i in enumerate(order):
        a, b, height, count = raw[i]
        a, b = new_id.get(a, a), new_id.get(b, b)
        out[pos] = (min(a, b), max(a, b), height, count)
        new_id[m + i] = m + pos
    return out


# -- the cut --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cut:
    groups: list[int]  # tree nodes that are groups
    orphans: list[int]  # tree nodes whose points are in no group (before reassignment)


def _subtree_sse(tree: Tree) -> np.ndarray:
    """Ward within-group sum of squares of every node (leaves 0): sum of height^2/2 below it."""
    m = tree.n_leaves
    sse = np.zeros(2 * m - 1)
    for i, (a, b, h, _) in enumerate(tree.merges):
        sse[m + i] = sse[int(a)] + sse[int(b)] + h * h / 2.0
    return sse


def _node_sizes(tree: Tree) -> np.ndarray:
    return np.concatenate([tree.weights, tree.merges[:, 3]])


def cut_tree(
    tree: Tree, min_size: int, max_size: int, lam: float, *, free_outliers: bool = True
) -> _Cut:
    """Best cut under the size limits: fewest points outside groups, then least SSE + lam/group.

    Outliers do not count as points outside groups: a subtree smaller than min_size
    that joins the rest only above the cut height (sqrt(2*lam)) is left out for
    `_adopt_orphans`. Counting it would keep its whole branch in one group, merging
    every album with it (one odd photo made a library of 4 albums into 1). With
    `free_outliers` False every point counts (a count asked for: low prices would
    otherwise leave most points out, to be adopted by too few groups).
    """
    m = tree.n_leaves
    if m == 0:
        return _Cut([], [])
    sizes = _node_sizes(tree)
    sse = _subtree_sse(tree)
    cut_height = math.sqrt(2.0 * lam)
    total = 2 * m - 1
    orphans = np.zeros(total)
    cost = np.zeros(total)
    whole = np.zeros(total, dtype=bool)
    for v in range(total):
        fits = min_size <= sizes[v] <= max_size
        if v < m:
            whole[v] = fits
            orphans[v], cost[v] = (0.0, lam) if fits else (sizes[v], 0.0)
            continue
        a, b = (int(x) for x in tree.merges[v - m, :2])
        above = free_outliers and tree.merges[v - m, 2] > cut_height
        left_out = [0.0 if above and sizes[c] < min_size else orphans[c] for c in (a, b)]
        split = (left_out[0] + left_out[1], cost[a] + cost[b])
        if fits and (0.0, sse[v] + lam) <= split:
            whole[v], orphans[v], cost[v] = True, 0.0, sse[v] + lam
        else:
            orphans[v], cost[v] = split
    return _collect(tree, whole)


def _collect(tree: Tree, whole: np.ndarray) -> _Cut:
    """The cut a dynamic programme chose: from the root down, the nodes it keeps whole are
    groups; the leaves it reaches without one are left over."""
    m = tree.n_leaves
    groups, left = [], []
    stack = [2 * m - 2]
    while stack:
        v = stack.pop()
        if whole[v]:
            groups.append(v)
        elif v < m:
            left.append(v)
        else:
            stack.extend(int(c) for c in tree.merges[v - m, :2])
    return _Cut(sorted(groups), sorted(left))


def _to_count(tree: Tree, cut: _Cut, k: int, min_size: int, max_size: int) -> _Cut:
    """The cut moved along the tree to exactly k groups, or as near as the limits allow.

    Under size limits the group count is not monotone in the price (a higher price can
    split an oversized group into more), so no price may give k. From the nearest cut:
    while too many, merge the two sibling groups whose union fits max_size and whose
    merge is lowest; while too few, split the group whose two halves can each be a group
    and whose split is highest. Each step is the one the dendrogram itself would take.
    """
    m = tree.n_leaves
    sizes = _node_sizes(tree)
    parent = np.full(2 * m - 1, -1, dtype=np.int64)
    for i, (a, b, _, _) in enumerate(tree.merges):
        parent[int(a)] = parent[int(b)] = m + i
    groups = set(cut.groups)
    while len(groups) > k:
        best: tuple[float, int] | None = None
        for g in groups:
            p = int(parent[g])
            if p < 0 or sizes[p] > max_size:
                continue
            a, b = (int(x) for x in tree.merges[p - m, :2])
            if a in groups and b in groups:
                height = float(tree.merges[p - m, 2])
                if best is None or (height, p) < best:
                    best = (height, p)
        if best is None:
            break
        p = best[1]
        a, b = (int(x) for x in tree.merges[p - m, :2])
        groups -= {a, b}
        groups.add(p)
    while len(groups) < k:
        best = None
        for g in groups:
            if g < m:
                continue
            a, b = (int(x) for x in tree.merges[g - m, :2])
            if sizes[a] >= min_size and sizes[b] >= min_size:
                height = float(tree.merges[g - m, 2])
                if best is None or (-height, g) < best:
                    best = (-height, g)
        if best is None:
            break
        g = best[1]
        groups.discard(g)
        groups.update(int(x) for x in tree.merges[g - m, :2])
    return _Cut(sorted(groups), cut.orphans)


def stable_cut(tree: Tree, min_size: int, max_size: int) -> _Cut:
    """The groups that persist longest, under the size limits (see "Choosing the groups").

    A node's persistence is its size times log(the height at which it joins its sibling /
    the height at which it formed): how long, as the cut height rises, it stays a group of
    its own, weighted by the photos it holds. Dynamic programming over the tree keeps, at
    every node within the limits, the node whole or the best cuts of its two children,
    whichever persists more (ties: whole). Heights near zero are floored at the
    RATIO_FLOOR_QUANTILE of the merge heights; the root is taken to join a sibling
    SIGNIFICANT_JUMP times above its own height, so the whole library is one group only
    when no split in it stands out. A weighted leaf (a k-means centre of the two-stage
    method) formed at `tree.formed`.
    """
    m = tree.n_leaves
    if m == 0:
        return _Cut([], [])
    sizes = _node_sizes(tree)
    total = 2 * m - 1
    height = np.concatenate([np.zeros(m), tree.merges[:, 2]])
    joins = np.empty(total)
    for a, b, h, _ in tree.merges:
        joins[int(a)] = joins[int(b)] = h
    joins[total - 1] = SIGNIFICANT_JUMP * height[total - 1]
    floor = 1e-12
    if m > 1:
        floor = max(float(np.quantile(tree.merges[:, 2], RATIO_FLOOR_QUANTILE)), floor)
    formed = height.copy()
    if tree.formed is not None:  # leaves with their own heights: the floor stays below them
        formed[:m] = tree.formed
        spread = tree.formed[tree.formed > 0]
        floor = min(floor, float(spread.min())) if spread.size else floor
    persistence = sizes * np.maximum(
        np.log(np.maximum(joins, floor)) - np.log(np.maximum(formed, floor)) - PERSIST_NOISE, 0.0
    )
    value = np.zeros(total)
    whole = np.zeros(total, dtype=bool)
    for v in range(total):
        fits = min_size <= sizes[v] <= max_size
        if v < m:
            whole[v] = fits
            value[v] = persistence[v] if fits else 0.0
            continue
        a, b = (int(c) for c in tree.merges[v - m, :2])
        split = value[a] + value[b]
        if fits and persistence[v] >= split:
            whole[v], value[v] = True, persistence[v]
        else:
            value[v] = split
    return _collect(tree, whole)


def _leaves(tree: Tree, node: int) -> list[int]:
    m = tree.n_leaves
    out, stack = [], [node]
    while stack:
        v = stack.pop()
        if v < m:
            out.append(v)
        else:
            stack.extend(int(x) for x in tree.merges[v - m, :2])
    return out


def _leaf_order(tree: Tree) -> np.ndarray:
    """Leaves left to right as the dendrogram draws them: neighbours in the tree sit together."""
    m = tree.n_leaves
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(_leaves(tree, 2 * m - 2)[::-1], dtype=np.int64)


def _leaf_labels(tree: Tree, cut: _Cut) -> np.ndarray:
    labels = np.full(tree.n_leaves, -1, dtype=np.int64)
    for g, node in enumerate(cut.groups):
        labels[_leaves(tree, node)] = g
    return labels


def choose_price(tree: Tree, min_size: int, max_size: int, n_clusters: int) -> float:
    """The per-group price `lam` (a dendrogram height h as h^2/2) whose cut under the
    limits has `n_clusters` groups, or as near as the limits allow."""
    heights = np.sort(tree.merges[:, 2])[::-1]  # heights[j]: undoing merges 0..j gives j+2 groups
    if heights.size == 0:
        return 0.0
    return _price_for_count(tree, min_size, max_size, n_clusters, heights)


def _price_between(heights: np.ndarray, k: int) -> float:
    """A price that keeps the k-1 highest merges undone and all lower ones done."""
    if k <= 1:
        return float(heights[0]) ** 2  # above every merge: one group
    above = float(heights[k - 2])
    below = float(heights[k - 1]) if k - 1 < heights.size else 0.0
    threshold = math.sqrt(above * below) if below > 0 else above / 2.0
    return threshold * threshold / 2.0


def _price_for_count(
    tree: Tree, min_size: int, max_size: int, k: int, heights: np.ndarray
) -> float:
    """Search the price (over the tree's own merge heights) whose cut has k groups, or nearest."""
    candidates = [_price_between(heights, j) for j in range(1, heights.size + 2)]
    lo, hi = 0, len(candidates) - 1  # candidates[j] aims at j+1 groups; fewer groups as price rises
    best, best_err = candidates[0], math.inf
    while lo <= hi:
        mid = (lo + hi) // 2
        count = len(cut_tree(tree, min_size, max_size, candidates[mid]).groups)
        err = abs(count - k)
        if err < best_err:
            best, best_err = candidates[mid], err
        if count == k:
            return candidates[mid]
        if count < k:
            lo = mid + 1
        else:
            hi = mid - 1
    return best


# -- the two-stage summary ------------------------------------------------------------------


def _kmeans(x: np.ndarray, k: int, iterations: int, cancelled: Cancel = never) -> np.ndarray:
    """Lloyd's k-means, seeded on the (canonical) row order; returns each row's centre."""
    from scipy import sparse  # (imported when used: 0.2 s at every CLI start)

    n = x.shape[0]
    rng = np.random.default_rng(0)
    centres = x[np.sort(rng.choice(n, size=k, replace=False))].astype(np.float32)
    assign = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        if cancelled():
            raise Cancelled
        half_sq = 0.5 * np.einsum("ij,ij->i", centres, centres)
        for start in range(0, n, _CHUNK):
            block = x[start : start + _CHUNK] @ centres.T
            block -= half_sq
            assign[start : start + _CHUNK] = np.argmax(block, axis=1)
        onehot = sparse.csr_matrix(
            (np.ones(n, dtype=np.float32), (assign, np.arange(n))), shape=(k, n)
        )
        counts = np.asarray(onehot.sum(axis=1)).ravel()
        sums = np.asarray(onehot @ x)
        alive = counts > 0
        centres[alive] = sums[alive] / counts[alive, None]
    return assign


def _split_oversize(x: np.ndarray, assign: np.ndarray, max_size: int) -> np.ndarray:
    """Cut any centre with more than max_size members into equal runs along the canonical order."""
    assign = assign.copy()
    next_label = int(assign.max()) + 1
    counts = np.bincount(assign)
    for label in np.flatnonzero(counts > max_size):
        members = np.flatnonzero(assign == label)  # ascending = canonical order
        parts = math.ceil(len(members) / max_size)
        for chunk in np.array_split(members, parts)[1:]:
            assign[chunk] = next_label
            next_label += 1
    return assign


# -- the whole method -----------------------------------------------------------------------


def canonical_order(x: np.ndarray) -> np.ndarray:
    """A row order that depends only on the rows' values (three fixed random projections)."""
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    proj = np.random.default_rng(12345).standard_normal((x.shape[1], 3))
    keys = np.empty((x.shape[0], 3))
    for start in range(0, x.shape[0], _CHUNK):  # float64 a block at a time, not a copy of x
        keys[start : start + _CHUNK] = np.asarray(x[start : start + _CHUNK], np.float64) @ proj
    return np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))


def _normalized(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return out


def _group_sums(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 sum of the rows of each group 0..k-1 (label -1 ignored) and the group sizes."""
    from scipy import sparse

    keep = labels >= 0
    onehot = sparse.csr_matrix(
        (np.ones(int(keep.sum()), dtype=x.dtype), (labels[keep], np.flatnonzero(keep))),
        shape=(k, x.shape[0]),
    )
    # in the input's precision: a float64 copy of 100k x 512 points would cost 400 MB
    sums = np.asarray(onehot @ x).astype(np.float64)
    counts = np.bincount(labels[keep], minlength=k).astype(np.int64)
    return sums, counts


def _centroids(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalized centroid of each group 0..k-1 and the group sizes."""
    sums, counts = _group_sums(x, labels, k)
    return _normalized(sums), counts


def _adopt_orphans(x: np.ndarray, labels: np.ndarray, max_size: int) -> np.ndarray:
    """Each point outside a group joins the nearest group (cosine to centroid) with room."""
    orphans = np.flatnonzero(labels < 0)
    k = int(labels.max()) + 1 if labels.size else 0
    if orphans.size == 0 or k == 0:
        return labels
    labels = labels.copy()
    centres, counts = _centroids(x, labels, k)
    sims = x[orphans].astype(np.float64) @ centres.T
    votes = (
        _neighbour_votes(x, labels, orphans, k)
        if orphans.size * labels.size <= NEIGHBOUR_MAX_WORK
        else None
    )
    room = counts < max_size
    # most confident first, so a full group turns away its weakest candidates
    for i in np.argsort(-sims.max(axis=1), kind="stable"):
        if not room.any():
            break
        options = np.full(k, -np.inf)
        if votes is not None:
            options = np.where(room, votes[i], -np.inf)
        if not options.max() > 0:  # no neighbour's group has room: the nearest centroid
            options = np.where(room, sims[i], -np.inf)
        g = int(np.argmax(options))
        labels[orphans[i]] = g
        counts[g] += 1
        room[g] = counts[g] < max_size
    return labels


# Hartigan-style moves after the cut: at most this many rounds (each round moves every
# point that lowers the within-group sum of squares; 2-3 rounds settle on real data).
POLISH_ROUNDS = 8
# The polish compares every point with every group: skipped past this many
# point x group x dimension products (about 10,000 photos at 5-30 limits; 100k photos
# in 4,500 groups x 512 would be 230e9).
POLISH_MAX_WORK = 4e9
# A photo farther from its group's centre than this many times the group's median
# distance, and nearer to no other group, is left ungrouped rather than make the group
# impure; at most OUTLIER_SHARE of the photos, the farthest first.
OUTLIER_FACTOR = 2.5
OUTLIER_SHARE = 0.02


def polish(
    x: np.ndarray,
    labels: np.ndarray,
    min_size: int,
    max_size: int,
    cancelled: Cancel = never,
) -> np.ndarray:
    """Move points between groups while the total within-group sum of squares falls and
    every group stays within [min_size, max_size] (Hartigan's moves, constrained).

    The tree's cut is greedy: a point that joined a branch early stays with it even when
    it sits closer to a neighbouring group at the end. Moving x from A to B changes the
    sum of squares by |B|/(|B|+1)·|x-m_B|² - |A|/(|A|-1)·|x-m_A|²; each round applies
    the moves with the largest gains first, one per point, and keeps the round only if
    the total fell. Deterministic: ties go to the lower index.
    """
    labels = labels.copy()
    k = int(labels.max()) + 1 if (labels >= 0).any() else 0
    grouped = np.flatnonzero(labels >= 0)
    if k < 2 or grouped.size * k * x.shape[1] > POLISH_MAX_WORK:
        return labels
    xg = x[grouped].astype(np.float64)
    sq = np.einsum("ij,ij->i", xg, xg)
    lab = labels[grouped]
    total = _sse(xg, sq, lab, k)
    for _ in range(POLISH_ROUNDS):
        if cancelled():
            raise Cancelled
        sums = np.zeros((k, x.shape[1]))
        np.add.at(sums, lab, xg)
        counts = np.bincount(lab, minlength=k).astype(np.float64)
        means = sums / counts[:, None]
        dist = sq[:, None] - 2.0 * (xg @ means.T) + np.einsum("ij,ij->i", means, means)[None, :]
        own = dist[np.arange(lab.size), lab]
        stay = counts[lab] / np.maximum(counts[lab] - 1.0, 1.0) * own
        move = counts[None, :] / (counts[None, :] + 1.0) * dist
        move[np.arange(lab.size), lab] = np.inf
        target = np.argmin(move, axis=1)
        gain = stay - move[np.arange(lab.size), target]
        trial = lab.copy()
        size = counts.astype(np.int64)
        moved = 0
        for i in np.lexsort((np.arange(lab.size), -gain)):
            if gain[i] <= 1e-12:
                break
            a, b = lab[i], target[i]
            if size[a] - 1 < min_size or size[b] + 1 > max_size:
                continue
            trial[i] = b
            size[a] -= 1
            size[b] += 1
            moved += 1
        if not moved:
            break
        after = _sse(xg, sq, trial, k)
        if after >= total - 1e-9:
            break
        lab, total = trial, after
    labels[grouped] = lab
    return labels


def _sse(x: np.ndarray, sq: np.ndarray, lab: np.ndarray, k: int) -> float:
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, lab, x)
    counts = np.bincount(lab, minlength=k).astype(np.float64)
    keep = counts > 0
    return float(sq.sum() - (np.einsum("ij,ij->i", sums[keep], sums[keep]) / counts[keep]).sum())


def holds(members: np.ndarray, photo: np.ndarray) -> bool:
    """Whether an album keeps `photo` as a full cut keeps its photos (`set_aside_outliers`):
    its distance to the centre of the album's closer half at most OUTLIER_FACTOR times the
    members' median distance to that centre."""
    xm = members.astype(np.float64)
    d = np.sqrt(((xm - xm.mean(axis=0)) ** 2).sum(axis=1))
    core = xm[d <= np.median(d)].mean(axis=0)
    spread = float(np.median(np.sqrt(((xm - core) ** 2).sum(axis=1))))
    return float(np.sqrt(((photo.astype(np.float64) - core) ** 2).sum())) <= OUTLIER_FACTOR * spread


def set_aside_outliers(x: np.ndarray, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Leave ungrouped (-1) the photos that fit no group well: farther from their group's
    centre than OUTLIER_FACTOR times the group's median distance; at most OUTLIER_SHARE
    of all photos, the farthest (relative to their group's spread) first; never below
    min_size in a group. A one-off shot among albums then stays out instead of making
    an album impure (the polish already moved it if another group fits it better)."""
    labels = labels.copy()
    k = int(labels.max()) + 1 if (labels >= 0).any() else 0
    budget = int(OUTLIER_SHARE * labels.size)
    if k == 0 or budget == 0:
        return labels
    sums, counts = _group_sums(x, labels, k)
    grouped = np.flatnonzero(labels >= 0)
    lab = labels[grouped]
    # The centre of each group's closer half: a few far photos pull a small group's mean
    # (and its median distance) towards themselves, and would hide.
    dist = _distances(x, grouped, lab, sums / np.maximum(counts, 1)[:, None])
    median = _group_medians(dist, lab, k)
    core = np.full(labels.size, -1, dtype=np.int64)
    closer = dist <= median[lab]
    core[grouped[closer]] = lab[closer]
    core_sums, core_counts = _group_sums(x, core, k)
    dist = _distances(x, grouped, lab, core_sums / np.maximum(core_counts, 1)[:, None])
    median = _group_medians(dist, lab, k)
    ratio = dist / np.maximum(median[lab], 1e-12)
    size = counts.copy()
    for i in np.lexsort((grouped, -ratio)):
        if budget == 0 or ratio[i] <= OUTLIER_FACTOR:
            break
        g = lab[i]
        if size[g] - 1 < min_size:
            continue
        labels[grouped[i]] = -1
        size[g] -= 1
        budget -= 1
    return labels


# Leftovers join the group most of their nearest grouped neighbours are in (a group is
# often not round: its centroid can sit nearer another group's edge than its own).
NEIGHBOURS = 5
# Leftovers x points compared at once (float32: 80 MB); beyond it, the nearest centroid.
NEIGHBOUR_MAX_WORK = 2e7


def _neighbour_votes(x: np.ndarray, labels: np.ndarray, orphans: np.ndarray, k: int) -> np.ndarray:
    """[len(orphans), k]: each group's share of cosine similarity among an orphan's
    NEIGHBOURS nearest grouped points (ties broken by the similarity itself)."""
    grouped = np.flatnonzero(labels >= 0)
    sims = x[orphans] @ x[grouped].T
    take = min(NEIGHBOURS, grouped.size)
    nearest = np.argpartition(-sims, take - 1, axis=1)[:, :take]
    votes = np.zeros((orphans.size, k))
    rows = np.repeat(np.arange(orphans.size), take)
    np.add.at(votes, (rows, labels[grouped][nearest].ravel()), sims[rows, nearest.ravel()])
    return votes


def _group_medians(values: np.ndarray, lab: np.ndarray, k: int) -> np.ndarray:
    """The median of `values` within each group 0..k-1 (0 for an empty one), in one sort:
    a mask per group costs n x k (100k photos in 4,500 groups: 450 million comparisons)."""
    order = np.lexsort((values, lab))
    bounds = np.searchsorted(lab[order], np.arange(k + 1))
    out = np.zeros(k)
    for g in range(k):
        part = values[order[bounds[g] : bounds[g + 1]]]
        if part.size:
            mid = part.size // 2
            out[g] = part[mid] if part.size % 2 else (part[mid - 1] + part[mid]) / 2
    return out


def _distances(x: np.ndarray, rows: np.ndarray, lab: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each row's distance to its group's centre, in blocks (100k x 512 at once: 200 MB)."""
    centres32 = centres.astype(np.float32)
    out = np.empty(rows.size)
    for start in range(0, rows.size, _CHUNK):
        diff = x[rows[start : start + _CHUNK]] - centres32[lab[start : start + _CHUNK]]
        out[start : start + _CHUNK] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def _group_the_rest(
    labels: np.ndarray, leaf_rank: np.ndarray, min_size: int, max_size: int
) -> np.ndarray:
    """Cut the points still outside every group, in dendrogram order, into valid groups."""
    rest = np.flatnonzero(labels < 0)
    parts = len(rest) // min_size
    if parts == 0:
        return labels
    labels = labels.copy()
    rest = rest[np.argsort(leaf_rank[rest], kind="stable")]
    covered = min(len(rest), parts * max_size)
    first = int(labels.max()) + 1
    for i, chunk in enumerate(np.array_split(rest[:covered], parts)):
        labels[chunk] = first + i
    return labels


def _canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber groups 0..k-1 by first appearance."""
    out = np.full_like(labels, -1)
    seen: dict[int, int] = {}
    for i, label in enumerate(labels.tolist()):
        if label >= 0:
            out[i] = seen.setdefault(label, len(seen))
    return out


def cluster(
    x: np.ndarray,
    min_size: int,
    max_size: int,
    n_clusters: int | None = None,
    *,
    exact_max: int = EXACT_MAX,
    micro_clusters: int = MICRO_CLUSTERS,
    partition_min: int = PARTITION_MIN,
    cancelled: Cancel = never,
) -> Clustering:
    """Constrained Ward clustering with its diagnostics (see the module docstring).

    `cancelled` is polled between steps (each well under a second at 100k points);
    when it returns True, `Cancelled` is raised: a daemon can stop mid-recluster.
    """
    if min_size < 1 or max_size < min_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    if n_clusters is not None and n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    if n == 0:
        return Clustering(np.zeros(0, dtype=np.int64), 0, 0.0, "exact")
    if n > partition_min and n_clusters is None:
        return _partitioned(x, min_size, max_size, exact_max, micro_clusters, cancelled)
    order = canonical_order(x)
    xs = x[order]
    grown = _grow(xs, max_size, exact_max, micro_clusters, cancelled)
    cut = _cut(grown.tree, min_size, max_size, n_clusters)
    point_labels = _labels(xs, grown, cut, min_size, max_size, n_clusters is None, cancelled)
    labels = np.empty(n, dtype=np.int64)
    labels[order] = point_labels
    k = int(labels.max()) + 1 if (labels >= 0).any() else 0
    return Clustering(labels, k, float((labels < 0).mean()), grown.method)


@dataclass(frozen=True)
class _Grown:
    """A Ward tree over points in canonical order: over the points themselves, or over
    k-means centres (`leaf_of_point` maps each point to its leaf)."""

    tree: Tree
    leaf_of_point: np.ndarray
    method: str


def _grow(
    xs: np.ndarray, max_size: int, exact_max: int, micro_clusters: int, cancelled: Cancel
) -> _Grown:
    n = xs.shape[0]
    if n <= exact_max:
        return _Grown(ward_tree(xs, cancelled=cancelled), np.arange(n), "exact")
    assign = _split_oversize(
        xs, _kmeans(xs, min(micro_clusters, n), KMEANS_ITERATIONS, cancelled), max_size
    )
    used, leaf_of_point = np.unique(assign, return_inverse=True)
    sums, counts = _group_sums(xs, leaf_of_point, used.size)
    weights = counts.astype(np.float64)
    tree = ward_tree(sums / weights[:, None], weights, cancelled)
    squares = np.zeros(used.size)
    for start in range(0, n, _CHUNK):
        block = xs[start : start + _CHUNK].astype(np.float64)
        np.add.at(
            squares, leaf_of_point[start : start + _CHUNK], np.einsum("ij,ij->i", block, block)
        )
    sse = np.maximum(squares - np.einsum("ij,ij->i", sums, sums) / weights, 0.0)
    formed = np.sqrt(2.0 * sse / np.maximum(weights - 1.0, 1.0))
    return _Grown(replace(tree, formed=formed), leaf_of_point, "two-stage")


def _cut(tree: Tree, min_size: int, max_size: int, n_clusters: int | None) -> _Cut:
    """The groups of the tree: the most persistent (`stable_cut`), or those of a cut at the
    price that makes `n_clusters` of them."""
    if n_clusters is None:
        return stable_cut(tree, min_size, max_size)
    lam = choose_price(tree, min_size, max_size, n_clusters)
    cut = cut_tree(tree, min_size, max_size, lam, free_outliers=False)
    return _to_count(tree, cut, n_clusters, min_size, max_size)


def _labels(
    xs: np.ndarray,
    grown: _Grown,
    cut: _Cut,
    min_size: int,
    max_size: int,
    refine: bool,
    cancelled: Cancel,
) -> np.ndarray:
    """The points of a cut's groups, then the points left over placed and, with `refine`,
    the groups polished and the outliers set aside; labels numbered by first appearance.
    (A count asked for is a cut of the tree as it is: SciPy's, without limits.)"""
    tree, leaf_of_point = grown.tree, grown.leaf_of_point
    point_labels = _adopt_orphans(xs, _leaf_labels(tree, cut)[leaf_of_point], max_size)
    leaf_rank = np.empty(tree.n_leaves, dtype=np.int64)
    leaf_rank[_leaf_order(tree)] = np.arange(tree.n_leaves)
    point_labels = _group_the_rest(point_labels, leaf_rank[leaf_of_point], min_size, max_size)
    if refine:
        point_labels = polish(xs, point_labels, min_size, max_size, cancelled)
        point_labels = set_aside_outliers(xs, point_labels, min_size)
    return _canonical_labels(point_labels)


def _coarse_blocks(x: np.ndarray, order: np.ndarray, blocks: int, cancelled: Cancel) -> np.ndarray:
    """Each point's coarse cell, through fine cells: MICRO_CLUSTERS k-means centres fitted
    on a sample taken in canonical order (so the cells depend on the rows' values, not
    their order), those centres grouped into `blocks` cells, and each point given the cell
    of its nearest fine centre. An album sits in one or two fine cells, so it is rarely
    cut; assigning points to the coarse centres directly cut most of them (in 512
    dimensions a point is almost as near to every coarse centre). `order`: x's
    canonical order."""
    step = max(1, x.shape[0] // COARSE_SAMPLE)
    sample = x[order[::step]]
    fine = min(MICRO_CLUSTERS, sample.shape[0])
    centres, counts = _centroids(sample, _kmeans(sample, fine, KMEANS_ITERATIONS, cancelled), fine)
    del sample
    live = np.flatnonzero(counts > 0)
    centres32 = centres[live].astype(np.float32)
    cell_of_centre = _kmeans(centres32, min(blocks, live.size), COARSE_ITERATIONS, cancelled)
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], _CHUNK):
        if cancelled():
            raise Cancelled
        nearest = np.argmax(x[start : start + _CHUNK] @ centres32.T, axis=1)
        out[start : start + _CHUNK] = cell_of_centre[nearest]
    return out


def _partitioned(
    x: np.ndarray,
    min_size: int,
    max_size: int,
    exact_max: int,
    micro_clusters: int,
    cancelled: Cancel,
) -> Clustering:
    """`cluster` for a library past PARTITION_MIN: a Ward tree per coarse cell, all cut at
    one price (the cells' own choices' median, weighted by their points: one height
    across the library, as a single dendrogram's cut would be), then each cell's points
    placed as `cluster` places them."""
    n = x.shape[0]
    whole = canonical_order(x)
    cells = _coarse_blocks(x, whole, math.ceil(n / PARTITION_TARGET), cancelled)
    grown: list[tuple[np.ndarray, np.ndarray, _Grown, _Cut]] = []
    for cell in np.unique(cells):
        rows = np.flatnonzero(cells == cell)
        order = canonical_order(x[rows])
        xs = x[rows[order]]
        # Leaves as fine as the two-stage method makes them at the largest library it
        # takes alone (PARTITION_MIN points: 50 points a centre), not at this library's
        # size: at 1M, 333 points a centre cut into runs of max_size made groups of
        # arbitrary runs (ARI 0.18 against the truth, 0.47 at 100k).
        micro = max(1, round(micro_clusters * rows.size / min(n, PARTITION_MIN)))
        tree = _grow(xs, max_size, exact_max, micro, cancelled)
        grown.append((rows, order, tree, _cut(tree.tree, min_size, max_size, None)))
        del xs
    labels = np.full(n, -1, dtype=np.int64)
    k = 0
    for rows, order, tree, cut in grown:
        part = _labels(x[rows[order]], tree, cut, min_size, max_size, True, cancelled)
        grouped = part >= 0
        labels[rows[order][grouped]] = part[grouped] + k
        k += int(part.max()) + 1 if grouped.any() else 0
    # Numbered by first appearance in canonical order: the same rows, the same labels.
    labels[whole] = _canonical_labels(labels[whole])
    return Clustering(labels, k, float((labels < 0).mean()), "partitioned")


def constrained_ward(
    x: np.ndarray, min_size: int, max_size: int, n_clusters: int | None = None
) -> np.ndarray:
    """Labels of length n (-1 = unclustered); every group's size is within [min_size, max_size]."""
    return cluster(x, min_size, max_size, n_clusters).labels


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
            under = np.asarray(_leaves(tree, node))
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
    xn = _normalized(np.asarray(x, dtype=np.float64))
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
