"""Size-constrained Ward clustering, stable group identities and representatives. Pure: no I/O.

How photos become groups
------------------------
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
   grows its own tree at the whole library's leaf granularity, all trees are
   cut at one price (the cells' own choices' median, weighted by their points),
   and the steps below run cell by cell.
3. **The cut.** Each subtree either becomes one group, if its size is within
   [min_size, max_size], or is split into the best cuts of its two children
   (dynamic programming over the tree). The cost of a group is its Ward
   within-group sum of squares plus a price `lam` per group; a cut that leaves
   fewer points outside any group always wins first. For a Ward tree with no
   size limits this is exactly a cut of the dendrogram at height
   sqrt(2*lam), so the limits are met while following the data's own
   structure instead of overriding it.
4. **Points left over.** A subtree smaller than min_size whose parent is
   larger than max_size cannot be a group on its own; each such point joins
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

Measured (`tests/tools/real_features_check.py`: EfficientNet-Lite0 features of 114
real photographs from scikit-image, scikit-learn, opencv-doc and Debian's wallpaper
packages, 10 camera-like shots each), the previous version -> this one: at the
previous default limits (5-200), 11 groups (ARI 0.103 against the photographs; groups 0.342
pure by scene) -> 91 groups (ARI 0.660; 0.991 pure by scene: the chessboard
calibration shots and the stereo pairs of one scene are merged, as a person would);
at 3-12, ARI 0.904 -> 0.905 (purity 0.992 -> 0.993); at 3-30, 0.793 -> 0.776 (0.991
both); coverage 1.000 -> 0.998. The polish and the neighbour vote move these by about
0.01 either way; the relative jump is what makes albums at the defaults.

Choosing the number of groups
-----------------------------
With `n_clusters=k` the price `lam` is searched so the cut has k groups; under
size limits the count is not monotone in the price, so the nearest cut is then
moved along the tree (`_to_count`: merge the lowest sibling pair that fits, or
split the highest group whose halves can be groups) to exactly k, or as near as
the limits allow. With min_size=1 and max_size>=n this is SciPy's
`fcluster(linkage(X, "ward"), k, "maxclust")`. With `n_clusters=None`
k is read off the tree: among the cluster counts the limits allow
(ceil(n/max_size) .. n/min_size), the one before the largest *relative* jump
in merge height: the merge undone is the most times higher than the next
merge kept (groups far tighter inside than they are apart, at their own
scale). The largest absolute jump, used before, always favoured the coarsest
split, since the top merges are the highest: in a real library that is
"natural vs artificial", not albums; and two scenes 0.61 apart with a spread
of 0.17 each were merged, because the jump above them (1.94 -> 3.55) was
larger in absolute terms than the one that separates them (0.70 -> 1.94, x2.8).
On generated scenes (`tests/tools/grouping_check.py`, 100 seeds per case) the
right count went from 0.43 to 1.00 (that case), and from 0.99 to 1.00 (3-10
scenes of varied sizes and spreads, 3-3.6 spreads apart, at the default and
at tight limits, with and without one-off photos). Merge heights near zero
(duplicates) are floored at the 10th percentile of the counted heights, so
their ratios cannot win. Only merges that can change the number of groups count:
not a subtree smaller than min_size joining a larger one (outliers, or a
group's last points), nor merges inside such a subtree; otherwise a few odd
photos split the real jump and every album merges into one. When everything
fits in one group and no jump stands out (the undone merge less than
`SIGNIFICANT_JUMP` times the next one), the data is one group. Then the
limits split what is too big.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

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
# A split "stands out" when the merge it undoes is at least 1.5 times as high as every
# merge it keeps. One blob (generated, 10-150 points, 32-512 dims, 240 cases) gave
# ratios of 1.08 (median) to 1.49 (20 points spread over the whole sphere); distinct
# scenes 2-9; 11 real albums plus 8 one-off photographs (6 of them textures, a loose
# group of their own), 1.65: at 2.0 that library was one album.
SIGNIFICANT_JUMP = 1.5
# The lowest merges (duplicates, near-identical bursts) are floored at this quantile of
# the counted merge heights before ratios are taken: a merge at height ~0 would make any
# ratio above it win.
RATIO_FLOOR_QUANTILE = 0.1


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

    @property
    def n_leaves(self) -> int:
        return int(self.weights.shape[0])


@dataclass(frozen=True)
class Clustering:
    labels: np.ndarray  # int64 [n]; -1 = in no group
    n_clusters: int
    unclustered_fraction: float
    method: str  # "exact" or "two-stage"


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
    groups, left = [], []
    stack = [total - 1]
    while stack:
        v = stack.pop()
        if whole[v]:
            groups.append(v)
        elif v < m:
            left.append(v)
        else:
            stack.extend(int(x) for x in tree.merges[v - m, :2])
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


def choose_price(tree: Tree, n: int, min_size: int, max_size: int, n_clusters: int | None) -> float:
    """The per-group price `lam` (a dendrogram height h as h^2/2) that sets how many groups form."""
    heights = np.sort(tree.merges[:, 2])[::-1]  # heights[j]: undoing merges 0..j gives j+2 groups
    if heights.size == 0:
        return 0.0
    if n_clusters is None:
        heights = np.sort(tree.merges[_group_merges(tree, min_size), 2])[::-1]
        if heights.size == 0:
            return float(tree.merges[:, 2].max()) ** 2  # above every merge: one group
        k_lo = math.ceil(n / max_size)
        k_hi = min(heights.size + 1, n // max(min_size, 1))
        k = max(2, k_lo)
        if k_hi >= k:
            ks = np.arange(k, k_hi + 1)
            above = heights[ks - 2]
            below = np.concatenate([heights, [0.0]])[ks - 1]
            # The relative jump: how many times higher the merge undone is than the next
            # one kept. The absolute jump favours the coarsest split (the top merges are the
            # highest), which in a real library is "natural vs artificial", not albums.
            # Heights near zero (duplicates) are floored so their ratios cannot win.
            floor = max(float(np.quantile(heights, RATIO_FLOOR_QUANTILE)), 1e-12)
            k = int(ks[int(np.argmax(above / np.maximum(below, floor)))])
        if k - 2 >= heights.size:
            # The size limits want more groups than merges that count (ties, duplicates):
            # cut among all the merges instead; the limits split whatever is still too big.
            every = np.sort(tree.merges[:, 2])[::-1]
            return _price_between(every, min(k, every.size + 1))
        if k_lo <= 1 and heights[k - 2] < SIGNIFICANT_JUMP * _at(heights, k - 1):
            k = 1  # no split stands out and one group fits: the data is one group
        return _price_between(heights, k)
    return _price_for_count(tree, min_size, max_size, n_clusters, heights)


def _group_merges(tree: Tree, min_size: int) -> np.ndarray:
    """Which merges can change how many groups there are (a mask over `tree.merges`).

    Not those where a subtree too small to be a group joins one that can be (a group's
    last few points, or outliers), nor those inside such a small subtree (outliers
    pairing up far apart). Counted, a few outliers split the real jump in merge height
    into smaller ones, and hide it.
    """
    m = tree.n_leaves
    kids = tree.merges[:, :2].astype(np.int64)
    small = _node_sizes(tree)[kids] < min_size
    joins = small[:, 0] != small[:, 1]
    inside = np.zeros(2 * m - 1, dtype=bool)
    for j in range(m - 2, -1, -1):  # parents before their children
        a, b = kids[j]
        if inside[m + j]:
            inside[a] = inside[b] = True
        elif joins[j]:
            inside[a if small[j, 0] else b] = True
    counted: np.ndarray = ~joins & ~inside[m:]
    return counted


def _at(heights: np.ndarray, i: int) -> float:
    return float(heights[i]) if i < heights.size else 0.0


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
    lam = choose_price(grown.tree, n, min_size, max_size, n_clusters)
    point_labels = _labels(xs, grown, lam, min_size, max_size, n_clusters, cancelled)
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
    return _Grown(tree, leaf_of_point, "two-stage")


def _labels(
    xs: np.ndarray,
    grown: _Grown,
    lam: float,
    min_size: int,
    max_size: int,
    n_clusters: int | None,
    cancelled: Cancel,
) -> np.ndarray:
    """The tree cut at price `lam` under the limits, then the points left over placed, the
    groups polished and the outliers set aside; labels numbered by first appearance."""
    tree, leaf_of_point = grown.tree, grown.leaf_of_point
    cut = cut_tree(tree, min_size, max_size, lam)
    if n_clusters is not None:
        cut = _to_count(
            tree,
            cut_tree(tree, min_size, max_size, lam, free_outliers=False),
            n_clusters,
            min_size,
            max_size,
        )
    point_labels = _adopt_orphans(xs, _leaf_labels(tree, cut)[leaf_of_point], max_size)
    leaf_rank = np.empty(tree.n_leaves, dtype=np.int64)
    leaf_rank[_leaf_order(tree)] = np.arange(tree.n_leaves)
    point_labels = _group_the_rest(point_labels, leaf_rank[leaf_of_point], min_size, max_size)
    if n_clusters is None:  # a count asked for is a cut of the tree (SciPy's, without limits)
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
    grown: list[tuple[np.ndarray, np.ndarray, _Grown]] = []
    prices: list[tuple[float, int]] = []
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
        prices.append((choose_price(tree.tree, rows.size, min_size, max_size, None), rows.size))
        grown.append((rows, order, tree))
        del xs
    ranked = sorted(prices)
    half, seen = n / 2, 0
    lam = ranked[-1][0]
    for price, size in ranked:
        seen += size
        if seen >= half:
            lam = price
            break
    labels = np.full(n, -1, dtype=np.int64)
    k = 0
    for rows, order, tree in grown:
        part = _labels(x[rows[order]], tree, lam, min_size, max_size, None, cancelled)
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


# -- representatives and identities ---------------------------------------------------------


def representatives(x: np.ndarray, labels: np.ndarray, k: int = 3) -> dict[int, list[int]]:
    """For each group, the indices of its k members closest (cosine) to its normalized centroid."""
    labels = np.asarray(labels)
    groups = int(labels.max()) + 1 if labels.size and (labels >= 0).any() else 0
    if groups == 0:
        return {}
    xn = _normalized(np.asarray(x, dtype=np.float64))
    centres, _ = _centroids(xn, labels, groups)
    out: dict[int, list[int]] = {}
    for g in range(groups):
        members = np.flatnonzero(labels == g)
        sims = xn[members] @ centres[g]
        ranked = members[np.lexsort((members, -sims))]  # closest first; ties by index
        out[g] = ranked[:k].tolist()
    return out


def rank_members(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each point's rank (0 = closest) by cosine to its group's normalized centroid; -1 outside."""
    reps = representatives(x, labels, k=len(labels))
    rank = np.full(len(labels), -1, dtype=np.int64)
    for members in reps.values():
        rank[members] = np.arange(len(members))
    return rank


def jaccard(a: Collection[str], b: Collection[str]) -> float:
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 0.0


def match_clusters(
    previous: Mapping[int, Collection[str]],
    current: Sequence[Collection[str]],
    *,
    threshold: float = 0.5,
    next_id: int | None = None,
) -> list[int]:
    """An id for each current group: the previous group's id with the highest Jaccard overlap
    (at least `threshold`; each previous id used once; assignment maximizing the total overlap),
    else a fresh id above every id in `previous` and at least `next_id`."""
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
