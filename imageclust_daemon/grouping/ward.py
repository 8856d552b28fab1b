"""The Ward tree of a set of points and its cut into groups within the size limits.
Pure: no I/O. (The method as a whole, and how the groups are chosen: `cluster`.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
class Cut:
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
) -> Cut:
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
        return Cut([], [])
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


def _collect(tree: Tree, whole: np.ndarray) -> Cut:
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
    return Cut(sorted(groups), sorted(left))


def to_count(tree: Tree, cut: Cut, k: int, min_size: int, max_size: int) -> Cut:
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
    return Cut(sorted(groups), cut.orphans)


def stable_cut(tree: Tree, min_size: int, max_size: int) -> Cut:
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
        return Cut([], [])
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


def leaves(tree: Tree, node: int) -> list[int]:
    m = tree.n_leaves
    out, stack = [], [node]
    while stack:
        v = stack.pop()
        if v < m:
            out.append(v)
        else:
            stack.extend(int(x) for x in tree.merges[v - m, :2])
    return out


def leaf_order(tree: Tree) -> np.ndarray:
    """Leaves left to right as the dendrogram draws them: neighbours in the tree sit together."""
    m = tree.n_leaves
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(leaves(tree, 2 * m - 2)[::-1], dtype=np.int64)


def leaf_labels(tree: Tree, cut: Cut) -> np.ndarray:
    labels = np.full(tree.n_leaves, -1, dtype=np.int64)
    for g, node in enumerate(cut.groups):
        labels[leaves(tree, node)] = g
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
