"""Size-constrained Ward clustering of a whole library. Pure: no I/O.

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
(`to_count`: merge the lowest sibling pair that fits, or split the highest group
whose halves can be groups) to exactly k, or as near as the limits allow. With
min_size=1 and max_size>=n this is SciPy's `fcluster(linkage(X, "ward"), k, "maxclust")`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from imageclust_daemon.grouping.ward import (
    Cancel,
    Cancelled,
    Clustering,
    Cut,
    Tree,
    choose_price,
    cut_tree,
    leaf_labels,
    leaf_order,
    never,
    stable_cut,
    to_count,
    ward_tree,
)

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


def normalized(x: np.ndarray) -> np.ndarray:
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
    return normalized(sums), counts


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


def _cut(tree: Tree, min_size: int, max_size: int, n_clusters: int | None) -> Cut:
    """The groups of the tree: the most persistent (`stable_cut`), or those of a cut at the
    price that makes `n_clusters` of them."""
    if n_clusters is None:
        return stable_cut(tree, min_size, max_size)
    lam = choose_price(tree, min_size, max_size, n_clusters)
    cut = cut_tree(tree, min_size, max_size, lam, free_outliers=False)
    return to_count(tree, cut, n_clusters, min_size, max_size)


def _labels(
    xs: np.ndarray,
    grown: _Grown,
    cut: Cut,
    min_size: int,
    max_size: int,
    refine: bool,
    cancelled: Cancel,
) -> np.ndarray:
    """The points of a cut's groups, then the points left over placed and, with `refine`,
    the groups polished and the outliers set aside; labels numbered by first appearance.
    (A count asked for is a cut of the tree as it is: SciPy's, without limits.)"""
    tree, leaf_of_point = grown.tree, grown.leaf_of_point
    point_labels = _adopt_orphans(xs, leaf_labels(tree, cut)[leaf_of_point], max_size)
    leaf_rank = np.empty(tree.n_leaves, dtype=np.int64)
    leaf_rank[leaf_order(tree)] = np.arange(tree.n_leaves)
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
    grown: list[tuple[np.ndarray, np.ndarray, _Grown, Cut]] = []
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
