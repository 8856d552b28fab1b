"""Albums that stay put: `albums.regroup` moves only what a change in the library demands."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imageclust_daemon.grouping.albums import (
    NEW,
    WAITING,
    Previous,
    Regrouping,
    album_fit,
    moved_points,
    regroup,
)
from imageclust_daemon.grouping.cluster import cluster
from imageclust_daemon.grouping.ward import stable_cut, ward_tree
from imageclust_daemon.records import Baseline
from tests.metrics import adjusted_rand_index
from tests.test_cluster import blobs, partition, sphere

MIN, MAX = 5, 30


def _unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
    return out


def _around(x: np.ndarray, truth: np.ndarray, subject: int, n: int, seed: int) -> np.ndarray:
    """n more photos of a subject of `blobs`, as spread as its others."""
    rng = np.random.default_rng(seed)
    own = x[truth == subject].astype(np.float64)
    centre = own.mean(axis=0)
    spread = np.sqrt(((own - centre) ** 2).sum(axis=1).mean() / x.shape[1])
    return _unit(centre + rng.standard_normal((n, x.shape[1])) * spread)


def _then(result: Regrouping, labels: np.ndarray | None = None) -> Previous:
    """The previous state a regroup's result leaves for the next run."""
    labels = result.labels if labels is None else labels
    prior = np.where(labels >= 0, labels, WAITING)
    next_id = int(max(labels.max(), max(result.baselines, default=-1))) + 1
    return Previous(prior.astype(np.int64), result.baselines, next_id)


def _add(previous: Previous, n: int) -> Previous:
    labels = np.concatenate([previous.labels, np.full(n, NEW, dtype=np.int64)])
    return Previous(labels, previous.baselines, previous.next_id)


def _library(seed: int = 1) -> tuple[np.ndarray, np.ndarray, Regrouping]:
    x, truth = blobs([12, 9, 15, 10, 8, 11, 14], d=64, seed=seed, spread=0.05)
    first = regroup(x, MIN, MAX)
    assert first.full == "first regroup" and first.method == "exact"
    return x, truth, first


def test_nothing_new_is_a_fixed_point() -> None:
    x, _, first = _library()
    again = regroup(x, MIN, MAX, _then(first))
    assert again.method == "incremental" and not again.full
    assert (again.labels == first.labels).all()
    assert again.moved == again.joined == again.formed == again.dissolved == 0
    assert not again.recut


def test_a_new_photo_of_a_known_subject_joins_its_album_and_moves_nobody() -> None:
    x, truth, first = _library()
    for subject in range(7):
        photo = _around(x, truth, subject, 1, seed=100 + subject)
        after = regroup(np.vstack([x, photo]), MIN, MAX, _add(_then(first), 1))
        old = first.labels[truth == subject]
        assert after.labels[-1] == np.bincount(old[old >= 0]).argmax()
        assert (after.labels[:-1] == first.labels).all()
        assert after.moved == 0 and after.joined == 1 and after.formed == 0


def test_photos_of_a_new_subject_become_a_new_album_and_move_nobody() -> None:
    x, _, first = _library()
    rng = np.random.default_rng(7)
    centre = _unit(rng.standard_normal(x.shape[1]))
    batch = _unit(centre + rng.standard_normal((8, x.shape[1])) * 0.05 / np.sqrt(x.shape[1]))
    after = regroup(np.vstack([x, batch]), MIN, MAX, _add(_then(first), len(batch)))
    assert (after.labels[: len(x)] == first.labels).all() and after.moved == 0
    new_ids = set(after.labels[len(x) :].tolist())
    assert len(new_ids) == 1 and new_ids.pop() not in set(first.labels.tolist())
    assert after.formed == 1


def test_a_one_off_photo_waits_instead_of_joining_an_album() -> None:
    x, _, first = _library()
    odd = _unit(np.random.default_rng(3).standard_normal((1, x.shape[1])))
    after = regroup(np.vstack([x, odd]), MIN, MAX, _add(_then(first), 1))
    assert after.labels[-1] == -1 and (after.labels[:-1] == first.labels).all()
    # waiting, it stays out of every album until photos like it arrive
    again = regroup(np.vstack([x, odd]), MIN, MAX, _then(after))
    assert again.labels[-1] == -1 and again.joined == 0


def test_waiting_photos_become_an_album_with_new_ones_like_them() -> None:
    x, _, first = _library()
    rng = np.random.default_rng(11)
    centre = _unit(rng.standard_normal(x.shape[1]))
    noise = 0.05 / np.sqrt(x.shape[1])
    early = _unit(centre + rng.standard_normal((3, x.shape[1])) * noise)
    step = regroup(np.vstack([x, early]), MIN, MAX, _add(_then(first), 3))
    assert (step.labels[len(x) :] == -1).all(), "three photos are too few for an album"
    later = _unit(centre + rng.standard_normal((4, x.shape[1])) * noise)
    both = np.vstack([x, early, later])
    after = regroup(both, MIN, MAX, _add(_then(step), 4))
    together = set(after.labels[len(x) :].tolist())
    assert len(together) == 1 and -1 not in together
    assert (after.labels[: len(x)] == first.labels).all()


def test_a_deleted_photo_leaves_its_album_and_nothing_else_moves() -> None:
    x, _, first = _library()
    for victim in (0, 20, 50):
        keep = np.arange(len(x)) != victim
        previous = _then(first)
        after = regroup(
            x[keep],
            MIN,
            MAX,
            Previous(previous.labels[keep], previous.baselines, previous.next_id),
        )
        assert (after.labels == first.labels[keep]).all()
        assert after.moved == 0 and not after.recut and after.dissolved == 0


def test_an_album_below_min_size_gives_its_photos_to_the_nearest_albums_with_room() -> None:
    x, truth, first = _library()
    small = int(first.labels[truth == 4][0])  # the 8-photo subject
    members = np.flatnonzero(first.labels == small)
    keep = np.ones(len(x), dtype=bool)
    keep[members[:4]] = False  # 4 photos left: below min_size 5
    previous = _then(first)
    after = regroup(
        x[keep], MIN, MAX, Previous(previous.labels[keep], previous.baselines, previous.next_id)
    )
    assert after.dissolved == 1 and small not in set(after.labels.tolist())
    others = first.labels[keep] != small
    assert (after.labels[others] == first.labels[keep][others]).all(), "only its photos move"
    assert after.moved == 4
    sizes = np.bincount(after.labels[after.labels >= 0])
    assert sizes[sizes > 0].min() >= MIN and sizes.max() <= MAX


def test_an_album_over_a_lowered_max_size_is_cut_again_and_keeps_its_id() -> None:
    x, _, first = _library()
    sizes = np.bincount(first.labels[first.labels >= 0])
    big = set(np.flatnonzero(sizes > 12).tolist())  # the subjects of 15 and 14 photos
    after = regroup(x, MIN, 12, _then(first))
    assert set(after.recut) == big and all("max_size" in why for why in after.recut.values())
    assert big <= set(after.labels.tolist()), "the largest part keeps the album's id"
    assert np.bincount(after.labels[after.labels >= 0]).max() <= 12
    untouched = ~np.isin(first.labels, list(big))
    assert (after.labels[untouched] == first.labels[untouched]).all()


def test_an_album_that_drifted_is_cut_again_alone_and_says_why() -> None:
    x, truth, first = _library()
    target = int(first.labels[truth == 0][0])
    baselines = dict(first.baselines)
    # As if it had been cut far tighter than it is: it has drifted past DRIFT_FACTOR.
    baselines[target] = Baseline(baselines[target].size, baselines[target].fit / 3)
    photo = _around(x, truth, 0, 1, seed=5)
    previous = _then(first)
    after = regroup(
        np.vstack([x, photo]),
        MIN,
        MAX,
        _add(Previous(previous.labels, baselines, previous.next_id), 1),
    )
    assert "drifted" in after.recut[target]
    others = first.labels != target
    assert (after.labels[: len(x)][others] == first.labels[others]).all()
    assert after.baselines[target].fit == pytest.approx(
        album_fit(np.vstack([x, photo])[after.labels == target])
    )


def test_a_full_album_sends_a_newcomer_elsewhere_or_lets_it_wait() -> None:
    x, truth, first = _library()
    photos = _around(x, truth, 2, 3, seed=9)  # the 15-photo subject, capped at 16
    after = regroup(np.vstack([x, photos]), MIN, 16, _add(_then(first), 3))
    sizes = np.bincount(after.labels[after.labels >= 0])
    assert sizes.max() <= 16
    assert (after.labels[: len(x)] == first.labels).all()


def test_a_full_regroup_when_asked_keeps_the_ids_of_unchanged_albums() -> None:
    x, _, first = _library()
    forced = regroup(x, MIN, MAX, _then(first), full="recluster --force")
    assert forced.full == "recluster --force" and forced.method == "exact"
    assert (forced.labels == first.labels).all() and forced.moved == 0


def test_a_library_that_doubled_is_cut_again_whole() -> None:
    x, truth = blobs([10] * 8, d=64, seed=4, spread=0.05)
    few = np.concatenate([np.flatnonzero(truth == s)[:5] for s in range(8)])
    first = regroup(x[few], MIN, MAX)
    rest = np.setdiff1d(np.arange(len(x)), few)
    after = regroup(np.vstack([x[few], x[rest]]), MIN, MAX, _add(_then(first), len(rest)))
    assert after.full == "the library doubled since its albums were cut"
    assert adjusted_rand_index(np.concatenate([truth[few], truth[rest]]), after.labels) > 0.95


def test_moved_counts_photos_no_longer_with_their_album() -> None:
    before = np.array([0, 0, 0, 1, 1, WAITING, NEW], dtype=np.int64)
    assert moved_points(before, np.array([7, 7, 7, 1, 1, -1, 7])).sum() == 0  # renamed: same
    split = moved_points(before, np.array([0, 0, 2, 1, 1, -1, 2]))
    assert split.tolist() == [True, True, True, False, False, False, False]
    # gaining photos (new, waiting, or another album's) moves no one of the receiving album
    assert moved_points(before, np.array([0, 0, 0, 0, 0, 0, 0])).sum() == 0
    # one left its album (and its two album-mates lost it)
    assert moved_points(before, np.array([0, 0, -1, 1, 1, 1, 1])).sum() == 3


# -- properties -----------------------------------------------------------------------------

libraries = st.builds(
    lambda sizes, seed: blobs(sizes, d=32, seed=seed, spread=0.08),
    sizes=st.lists(st.integers(5, 14), min_size=2, max_size=6),
    seed=st.integers(0, 10_000),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(library=libraries, extra=st.integers(1, 6), seed=st.integers(0, 1000))
def test_adding_photos_moves_no_photo_outside_the_albums_they_join(
    library: tuple[np.ndarray, np.ndarray], extra: int, seed: int
) -> None:
    x, _ = library
    first = regroup(x, 4, 20)
    more = sphere(extra, x.shape[1], seed) if seed % 2 else x[:extra] + 0.01
    after = regroup(np.vstack([x, _unit(more)]), 4, 20, _add(_then(first), extra))
    touched = set(after.labels[len(x) :].tolist()) | set(after.recut)
    for i, was in enumerate(first.labels.tolist()):
        if was >= 0 and was not in touched:
            assert after.labels[i] == was
    grouped = after.labels[after.labels >= 0]
    sizes = np.bincount(grouped)
    assert sizes[sizes > 0].min() >= 4 and sizes.max() <= 20


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(library=libraries, victim=st.integers(0, 10_000))
def test_removing_a_photo_moves_no_photo_outside_its_album(
    library: tuple[np.ndarray, np.ndarray], victim: int
) -> None:
    x, _ = library
    first = regroup(x, 4, 20)
    victim %= len(x)
    keep = np.arange(len(x)) != victim
    previous = _then(first)
    after = regroup(
        x[keep], 4, 20, Previous(previous.labels[keep], previous.baselines, previous.next_id)
    )
    album = first.labels[victim]
    for i, was in zip(np.flatnonzero(keep).tolist(), first.labels[keep].tolist(), strict=True):
        if was != album or album < 0:
            assert after.labels[keep[: i + 1].sum() - 1] == was


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(library=libraries, extra=st.integers(1, 8), seed=st.integers(0, 1000))
def test_a_regroup_does_not_depend_on_the_order_of_the_photos(
    library: tuple[np.ndarray, np.ndarray], extra: int, seed: int
) -> None:
    x, _ = library
    first = regroup(x, 4, 20)
    both = np.vstack([x, sphere(extra, x.shape[1], seed), x[:extra] + 0.02])
    previous = _add(_then(first), 2 * extra)
    after = regroup(_unit(both), 4, 20, previous)
    shuffle = np.random.default_rng(seed).permutation(len(both))
    shuffled = regroup(
        _unit(both)[shuffle],
        4,
        20,
        Previous(previous.labels[shuffle], previous.baselines, previous.next_id),
    )
    assert (shuffled.labels == after.labels[shuffle]).all()
    assert shuffled.moved == after.moved and shuffled.recut == after.recut


# -- the cut ---------------------------------------------------------------------------------


def test_a_blob_too_big_for_max_size_is_cut_in_as_few_groups_as_fit() -> None:
    x, _ = blobs([40], d=512, seed=2, spread=0.2)
    labels = cluster(x, 5, 30).labels
    assert len(set(labels[labels >= 0].tolist())) == 2


def test_objects_seen_from_two_sides_are_one_album_each_when_the_limits_allow() -> None:
    """Ten objects, each photographed from two sides (5 + 5 photos, the sides 0.5 apart
    and as spread as they are apart from each other, the objects ~1.4): one album an
    object at 3-12, not one a side."""
    rng = np.random.default_rng(0)
    d = 128
    objects = _unit(rng.standard_normal((10, d)))
    rows, truth = [], []
    for k, centre in enumerate(objects):
        for _ in range(2):
            face = _unit(centre + _unit(rng.standard_normal(d)) * 0.25)
            rows.append(_unit(face + rng.standard_normal((5, d)) * 0.15 / np.sqrt(d)))
            truth += [k] * 5
    labels = cluster(np.vstack(rows), 3, 12).labels
    assert partition(labels) == partition(np.array(truth))


def test_stable_cut_keeps_distinct_groups_and_one_blob_whole() -> None:
    x, _ = blobs([10, 10, 10], d=64, seed=0, spread=0.05)
    cut = stable_cut(ward_tree(x), 3, 100)
    assert len(cut.groups) == 3
    blob = sphere(30, 64, 1) * 0.05 + np.eye(64, dtype=np.float32)[0]
    assert len(stable_cut(ward_tree(_unit(blob)), 3, 100).groups) == 1


def test_more_new_photos_than_one_tree_takes_are_cut_in_parts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import imageclust_daemon.grouping.cluster as method

    x, truth, first = _library()
    known = np.vstack([_around(x, truth, s, 3, seed=40 + s) for s in range(7)])
    rng = np.random.default_rng(8)
    centre = _unit(rng.standard_normal(x.shape[1]))
    new = _unit(centre + rng.standard_normal((9, x.shape[1])) * 0.05 / np.sqrt(x.shape[1]))
    both = np.vstack([x, known, new])
    whole = regroup(both, MIN, MAX, _add(_then(first), len(known) + len(new)))
    monkeypatch.setattr(method, "EXACT_MAX", 20)  # one part would have 37 leaves
    parts = regroup(both, MIN, MAX, _add(_then(first), len(known) + len(new)))
    for result in (whole, parts):
        assert (result.labels[: len(x)] == first.labels).all() and result.moved == 0
        placed = result.labels[len(x) : len(x) + len(known)]
        expected = np.repeat([int(first.labels[truth == s][0]) for s in range(7)], 3)
        assert (placed == expected).mean() >= 0.95
        assert len(set(result.labels[len(x) + len(known) :].tolist())) == 1


def test_many_new_photos_in_overlapping_parts_keep_every_album_within_the_limits() -> None:
    """700 new photos (half of subjects the library knows, half of 36 new ones) among
    3,000 at limits 3-5: cut in many parts whose neighbourhoods overlap, a photo is placed
    once; every album stays within the limits; `joined` counts new photos in albums that
    existed."""
    rng = np.random.default_rng(16)
    k, d, s = 200, 32, 0.3
    centres = rng.standard_normal((k, d)).astype(np.float32)
    x = _unit(centres[np.repeat(np.arange(k), 15)] + s * rng.standard_normal((3000, d)))
    known = rng.integers(0, k, 350)
    extra = rng.standard_normal((36, d)).astype(np.float32)
    new = np.vstack([centres[known], extra[rng.integers(0, 36, 350)]])
    new = _unit(new + s * rng.standard_normal((700, d)))
    first = regroup(x, 3, 5)
    after = regroup(np.vstack([x, new]), 3, 5, _add(_then(first), 700))
    assert not after.full
    sizes = np.bincount(after.labels[after.labels >= 0])
    assert sizes[sizes > 0].min() >= 3 and sizes.max() <= 5
    existed = set(first.labels[first.labels >= 0].tolist())
    in_old = np.isin(after.labels[len(x) :], list(existed))
    assert after.joined == int(in_old.sum())
    assert (after.labels[: len(x)][first.labels >= 0] == first.labels[first.labels >= 0]).all()


def test_photos_waiting_in_no_album_are_not_growth() -> None:
    """Three albums of 10 and 31 one-off photos waiting: nothing changed, or one photo
    deleted, is not a library that doubled."""
    x, truth = blobs([10, 10, 10], d=64, seed=3, spread=0.05)
    odd = sphere(31, 64, 11)
    labels = np.concatenate([truth, np.full(31, WAITING)]).astype(np.int64)
    baselines = {a: Baseline(10, album_fit(x[truth == a])) for a in range(3)}
    both = np.vstack([x, odd])
    same = regroup(both, MIN, MAX, Previous(labels, baselines, 3))
    assert same.full == "" and same.moved == 0 and (same.labels[:30] == truth).all()
    keep = np.arange(1, len(both))
    less = regroup(both[keep], MIN, MAX, Previous(labels[keep], baselines, 3))
    assert less.full == "" and less.moved == 0


def test_a_recut_that_keeps_an_albums_members_still_stores_its_new_baseline() -> None:
    from dataclasses import replace

    from imageclust_daemon.grouping.regroup import album_rows

    x, _, first = _library()
    hashes = [f"{i:064x}" for i in range(len(x))]
    albums = {a: {hashes[i] for i in np.flatnonzero(first.labels == a)} for a in first.baselines}
    same = replace(first, full="")  # an incremental run that changed nothing
    rows, retired = album_rows(x, hashes, same, albums, dict(first.baselines))
    assert rows == [] and retired == []  # nothing to write
    aid = int(first.labels[0])
    recut = replace(same, baselines={**first.baselines, aid: Baseline(99, 0.5)})
    rows, _ = album_rows(x, hashes, recut, albums, dict(first.baselines))
    assert [(r.id, r.changed, r.cut_size) for r in rows] == [(aid, False, 99)]


def test_a_min_size_above_every_album_dissolves_them_all_and_places_their_photos_again() -> None:
    x, _, first = _library()
    after = regroup(x, 16, 40, _then(first))  # every album (8-15 photos) below 16
    assert after.dissolved == len(first.baselines) and not after.full
    sizes = np.bincount(after.labels[after.labels >= 0])
    assert sizes[sizes > 0].min() >= 16 and sizes.max() <= 40
    assert not set(after.labels.tolist()) & set(first.baselines), "no old album is left"
