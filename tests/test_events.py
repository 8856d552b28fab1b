"""Events: moments, days out and trips from the photos' own rhythm, places and contents;
stable as photos arrive; titled where and when, uniquely."""

from __future__ import annotations

import os
import sqlite3
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageclust_daemon.durable import sqlite_uri
from imageclust_daemon.grouping import events, label, regroup
from imageclust_daemon.grouping.places import Place
from imageclust_daemon.published import catalog, organize
from imageclust_daemon.records import ContentRow, FileRow, FileStat, PhotoMeta
from imageclust_daemon.state.store import Store
from tests import life
from tests.metrics import adjusted_rand_index

MODEL = "tiny@sha256:00"
HOME = (48.8566, 2.3522)  # Paris
AWAY = (37.3891, -5.9845)  # Seville


def _shots(rows: list[tuple[datetime, tuple[float, float] | None, int]], dim: int = 16):
    """Shots from (time, position, scene); a scene is a direction of the embedding."""
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(64, dim))
    x = np.array([directions[s] + rng.normal(scale=0.3, size=dim) for _, _, s in rows])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return events.Shots(
        [t for t, _, _ in rows],
        np.array([p[0] if p else np.nan for _, p, _ in rows]),
        np.array([p[1] if p else np.nan for _, p, _ in rows]),
        x,
    )


def _burst(start: datetime, minutes: int, n: int, where: tuple[float, float] | None, scene: int):
    step = minutes * 60 / max(n - 1, 1)
    return [(start + timedelta(seconds=i * step), where, scene) for i in range(n)]


def _labels(found: list[events.Event], n: int) -> np.ndarray:
    labels = np.full(n, -1)
    for e, event in enumerate(found):
        labels[list(event.rows)] = e
    return labels


def _home_life() -> list[tuple[datetime, tuple[float, float] | None, int]]:
    """Weekly moments at home for half a year: home is learned from them."""
    rows = []
    for week in range(26):
        rows += _burst(datetime(2021, 1, 3, 15) + timedelta(weeks=week), 40, 6, HOME, week % 5)
    return rows


def test_a_day_with_two_places_hours_apart_is_two_events_and_a_trip_is_one() -> None:
    rows = _home_life()
    # 11 June: a morning market, an evening dinner 6 km away.
    rows += _burst(datetime(2021, 6, 12, 9), 60, 10, (48.86, 2.35), 40)
    rows += _burst(datetime(2021, 6, 12, 19), 60, 10, (48.90, 2.30), 41)
    # 3-7 May: Seville, two sessions a day, a camera without GPS for one of them.
    for day in range(5):
        morning = datetime(2021, 5, 3, 10) + timedelta(days=day)
        rows += _burst(morning, 90, 12, AWAY, 50 + day)
        rows += _burst(morning + timedelta(hours=6), 60, 8, None, 55 + day)
    rows.sort(key=lambda r: r[0])
    shots = _shots(rows)
    found = events.find_events(shots)
    by_start = {shots.times[e.rows[0]]: e for e in found}
    trip = by_start[datetime(2021, 5, 3, 10)]
    assert trip.kind == events.TRIP and len(trip.rows) == 5 * 20
    assert by_start[datetime(2021, 6, 12, 9)].rows != by_start[datetime(2021, 6, 12, 19)].rows
    assert len(found) == 26 + 2 + 1


def test_sessions_of_one_day_at_one_place_split_only_when_they_show_other_things() -> None:
    rows = _home_life()
    rows += _burst(datetime(2021, 7, 10, 9), 60, 10, HOME, 40)
    rows += _burst(datetime(2021, 7, 10, 16), 60, 10, HOME, 41)  # hours later, another scene
    rows += _burst(datetime(2021, 7, 17, 9), 60, 10, HOME, 42)
    rows += _burst(datetime(2021, 7, 17, 16), 60, 10, HOME, 42)  # hours later, the same
    rows.sort(key=lambda r: r[0])
    shots = _shots(rows)
    starts = {shots.times[e.rows[0]] for e in events.find_events(shots)}
    assert datetime(2021, 7, 10, 16) in starts
    assert datetime(2021, 7, 17, 16) not in starts


def test_a_burst_then_a_pause_is_one_moment_not_a_fixed_gap() -> None:
    """Photos seconds apart, then 40 minutes of nothing, then more: one moment, because
    the gap is long only next to bursts; a week apart, two."""
    rows = _burst(datetime(2021, 3, 1, 12), 2, 20, None, 1)
    rows += _burst(datetime(2021, 3, 1, 12, 45), 2, 20, None, 1)
    rows += _burst(datetime(2021, 3, 8, 12), 2, 20, None, 1)
    found = events.find_events(_shots(rows))
    assert [len(e.rows) for e in found] == [40, 20]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generated_lives_are_cut_as_they_were_lived(seed: int) -> None:
    photos = life.generate(seed)
    x = life.embeddings(photos, seed=seed)
    shots = events.Shots(
        [p.taken_at for p in photos],
        np.array([np.nan if p.lat is None else p.lat for p in photos]),
        np.array([np.nan if p.lon is None else p.lon for p in photos]),
        x,
    )
    truth = np.array([p.event for p in photos])
    found = _labels(events.find_events(shots), len(photos))
    assert adjusted_rand_index(truth, found) >= 0.9


def _life_shots(seed: int) -> tuple[list[life.LifePhoto], events.Shots]:
    photos = life.generate(seed, years=1)
    x = life.embeddings(photos, seed=seed)
    return photos, events.Shots(
        [p.taken_at for p in photos],
        np.array([np.nan if p.lat is None else p.lat for p in photos]),
        np.array([np.nan if p.lon is None else p.lon for p in photos]),
        x,
    )


def _subset(shots: events.Shots, idx: np.ndarray) -> events.Shots:
    return events.Shots([shots.times[i] for i in idx], shots.lat[idx], shots.lon[idx], shots.x, idx)


def _settle(shots: events.Shots, before: np.ndarray, next_id: int) -> np.ndarray:
    labels, _ = events.settle(shots, events.find_events(shots), before, next_id)
    return labels


@pytest.mark.parametrize("seed", [3, 4])
def test_a_late_import_changes_only_the_events_of_its_own_days(seed: int) -> None:
    """Old photos imported late (half of six days' photos) may extend, join or split the
    events of their own days; every other photo stays in the event it was in."""
    photos, shots = _life_shots(seed)
    rng = np.random.default_rng(seed)
    days = np.array([events.day_of(t) for t in shots.times])
    late_days = np.isin(days, rng.choice(sorted(set(days.tolist())), 6, replace=False))
    late = late_days & (rng.random(len(days)) < 0.5)
    early = np.flatnonzero(~late)
    first = _settle(_subset(shots, early), np.full(len(early), events.NEW), 1)
    before = np.full(len(photos), events.NEW)
    before[early] = first
    after = _settle(shots, before, int(first.max()) + 1)
    on_late_days = set(after[late_days].tolist()) | set(before[late_days].tolist())
    for i in early:
        if int(after[i]) not in on_late_days:
            assert after[i] == before[i], "a photo far from the late days changed event"
    kept = set(first.tolist()) - on_late_days
    assert kept and all(
        set(np.flatnonzero(after == e)) == set(np.flatnonzero(before == e)) for e in kept
    )
    assert (after != events.NEW).all()


def test_new_days_add_events_and_leave_the_earlier_ones_as_they_were() -> None:
    photos, shots = _life_shots(5)
    n = len(photos)
    cut = n * 3 // 4
    while events.day_of(shots.times[cut]) == events.day_of(shots.times[cut - 1]):
        cut += 1  # whole days: the new photos are of new days
    idx = np.arange(cut)
    first = _settle(_subset(shots, idx), np.full(cut, events.NEW), 1)
    before = np.concatenate([first, np.full(n - cut, events.NEW)])
    after = _settle(shots, before, int(first.max()) + 1)
    last = int(first[-1])  # the latest event may go on (a trip, as the phone syncs daily)
    for eid in set(first.tolist()) - {last}:
        assert set(np.flatnonzero(after == eid)) == set(np.flatnonzero(first == eid)), eid
    assert set(np.flatnonzero(after == last)) >= set(np.flatnonzero(first == last))
    assert len(set(after[cut:].tolist()) - set(first.tolist())) >= 1


def test_nothing_new_settles_to_what_was() -> None:
    _, shots = _life_shots(6)
    first = _settle(shots, np.full(len(shots), events.NEW), 1)
    again = _settle(shots, first, int(first.max()) + 1)
    assert (again == first).all()


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(range(40))))
def test_the_cut_does_not_depend_on_the_order_photos_are_given_in(order: list[int]) -> None:
    rows = _burst(datetime(2021, 3, 1, 12), 30, 20, HOME, 1)
    rows += _burst(datetime(2021, 3, 9, 18), 30, 20, HOME, 2)
    shots = _shots(rows)
    shuffled = _subset(shots, np.array(order))
    found = _labels(events.find_events(shuffled), 40)
    truth = np.array([0] * 20 + [1] * 20)[order]
    assert adjusted_rand_index(truth, found) == 1.0


# -- titles --------------------------------------------------------------------------------------


def test_event_titles_say_where_and_when_and_are_unique() -> None:
    facts = [
        label.EventFacts(
            1, date(2021, 6, 11), date(2021, 6, 11), datetime(2021, 6, 11, 9), "Paris"
        ),
        label.EventFacts(
            2, date(2021, 6, 11), date(2021, 6, 11), datetime(2021, 6, 11, 19), "Paris"
        ),
        label.EventFacts(
            3, date(2022, 5, 3), date(2022, 5, 7), datetime(2022, 5, 3, 10), "Seville"
        ),
        label.EventFacts(4, date(2021, 12, 30), date(2022, 1, 2), datetime(2021, 12, 30), None),
        label.EventFacts(5, date(2022, 5, 28), date(2022, 6, 2), datetime(2022, 5, 28), None),
        label.EventFacts(
            6, date(2021, 6, 11), date(2021, 6, 11), datetime(2021, 6, 11, 10), "Paris"
        ),
    ]
    titles = label.event_titles(facts)
    assert titles[3] == "Seville, 3–7 May 2022"
    assert titles[4] == "30 December 2021 – 2 January 2022"
    assert titles[5] == "28 May – 2 June 2022"
    assert titles[2] == "Paris, 11 June 2021, 19:00"  # two mornings there: the hour tells
    assert titles[1] == "Paris, 11 June 2021, 09:00"
    assert len({t.casefold() for t in titles.values()}) == len(titles)
    assert label.event_titles(facts[:2]) == {
        1: "Paris, 11 June 2021, morning",
        2: "Paris, 11 June 2021, evening",
    }


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["Beach", "beach", "Dogs", "2020–2021", "Beach, Brighton"]),
                min_size=1, max_size=12))  # fmt: skip
def test_album_titles_are_unique_whatever_they_were(titles: list[str]) -> None:
    given_titles = dict(enumerate(titles, start=1))
    facts = {
        i: label.GroupFacts(10, subject="dog" if i % 3 == 0 else None, folders=("Trips",) * 10)
        for i in given_titles
    }
    places = {i: ("Brighton" if i % 2 else "Seville") for i in given_titles}
    shown = label.distinct_titles(given_titles, facts, places)
    assert len({t.casefold() for t in shown.values()}) == len(shown)
    assert all(shown[i].startswith(t) for i, t in given_titles.items())
    assert not any(t.endswith(")") for t in shown.values()), "never a bare (2)"


def test_albums_that_read_alike_are_told_apart_by_what_differs() -> None:
    facts = {
        1: label.GroupFacts(10, taken_at=("2019-06-02T10:00:00",) * 10),
        2: label.GroupFacts(10, taken_at=("2021-03-02T10:00:00",) * 10),
        3: label.GroupFacts(10, subject="dog"),
    }
    shown = label.distinct_titles({1: "Beach", 2: "Beach", 3: "Cats"}, facts, {})
    assert shown == {1: "Beach, June 2019", 2: "Beach, March 2021", 3: "Cats"}
    by_place = label.distinct_titles({1: "Beach", 2: "Beach"}, facts, {1: "Brighton", 2: "Seville"})
    assert by_place == {1: "Beach, Brighton", 2: "Beach, Seville"}


def test_most_photos_means_more_than_half_8_of_17_is_not_most() -> None:
    january = tuple(f"2022-01-{d:02d}T12:00:00" for d in range(3, 11))  # 8 photos
    months = [(19, 3), (19, 7), (20, 2), (20, 9), (21, 4), (21, 8), (23, 5), (23, 6), (24, 1)]
    spread = tuple(f"20{y}-0{m}-15T12:00:00" for y, m in months)
    facts = label.GroupFacts(17, taken_at=tuple(sorted(january + spread)))
    assert label.album_when(facts) != "January 2022"
    assert label.album_when(label.GroupFacts(17, taken_at=january)) is None  # 8 of 17 dated
    nine = (*january, "2022-01-20T12:00:00")
    assert label.album_when(label.GroupFacts(17, taken_at=nine)) == "January 2022"
    # The middle 80% must still hold more than half of the album: 9 of 17 dated, the
    # trim would leave 7.
    wide = tuple(sorted((*january[:7], "2018-01-05T12:00:00", "2024-09-05T12:00:00")))
    assert label.album_when(label.GroupFacts(17, taken_at=wide)) == "2018–2024"


# -- through the store, the catalog and the organized view -----------------------------------------


def _record(store: Store, rows: list[tuple[str, str | None, tuple[float, float] | None]]) -> None:
    contents, files, vectors = [], [], []
    for i, (name, taken, where) in enumerate(rows):
        h = f"{i:064x}"
        meta = PhotoMeta(
            4, 3, taken, where[0] if where else None, where[1] if where else None, "JPEG"
        )
        contents.append(ContentRow(h, 10, decoded=True, meta=meta))
        files.append(FileRow(FileStat(f"/lib/{name}".encode(), 10, 1_000, i + 1, 7), h))
        v = np.zeros(8, dtype=np.float32)
        v[i % 8] = 1.0
        vectors.append((h, v))
    store.record(contents, files, vectors, MODEL)


def _paris(lat: float, lon: float) -> Place:
    return Place("Paris" if lat > 45 else "Seville", "France" if lat > 45 else "Spain")


def test_events_are_stored_published_and_linked_in_the_organized_view(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    rows = [
        (f"a{i}.jpg", f"2021-06-11T09:{i:02d}:00", HOME) for i in range(5)
    ] + [
        (f"b{i}.jpg", f"2021-06-11T19:{i:02d}:00", (48.90, 2.30)) for i in range(5)
    ] + [
        (f"t{d}{i}.jpg", f"2022-05-0{3 + d}T1{i}:00:00", AWAY) for d in range(3) for i in range(4)
    ] + [("undated.jpg", None, None), ("unset-clock.jpg", "2000-01-01T00:00:00", None),
         ("year-one.jpg", "0001-01-01T03:00:00", None)]  # fmt: skip
    # A photo at home every week of the spring between: home is where most weeks are.
    start = datetime(2022, 1, 2, 12)
    rows += [
        (f"h{w}.jpg", f"{start + timedelta(weeks=w):%Y-%m-%dT%H:%M:%S}", HOME) for w in range(16)
    ]
    with Store.open(state) as store:
        _record(store, rows)
        hashes, x = store.live_embeddings(MODEL)
        report = regroup.update_events(store, hashes, x, place_of=_paris, now=datetime(2026, 1, 1))
        assert (report.dated, report.events, report.new) == (38, 19, 19)
        again = regroup.update_events(store, hashes, x, place_of=_paris)
        assert not again.touched, "nothing new: nothing written"
    catalog.publish(state, tmp_path / "catalog.sqlite", model_id=MODEL, daemon_version="t")
    conn = sqlite3.connect(sqlite_uri(tmp_path / "catalog.sqlite", mode="ro"), uri=True)
    found = conn.execute(
        "SELECT title, kind, size, place FROM events WHERE started_at LIKE '2021-06%' "
        "OR kind = 'trip' ORDER BY started_at"
    ).fetchall()
    assert found == [
        ("Paris, 11 June 2021, morning", "moment", 5, "Paris, France"),
        ("Paris, 11 June 2021, evening", "moment", 5, "Paris, France"),
        ("Seville, 3–5 May 2022", "trip", 12, "Seville, Spain"),
    ]
    no_event = {p for (p,) in conn.execute("SELECT path FROM photos WHERE event_id IS NULL")}
    assert no_event == {"/lib/undated.jpg", "/lib/unset-clock.jpg", "/lib/year-one.jpg"}
    conn.close()
    view = tmp_path / "Organized"
    organize.build(organize.groups_from_catalog(tmp_path / "catalog.sqlite"), view)
    trip = view / "Events" / "2022" / "2022-05-03 Seville, 3–5 May 2022"
    assert sorted(os.listdir(trip)) == sorted(f"t{d}{i}.jpg" for d in range(3) for i in range(4))
    assert os.readlink(trip / "t00.jpg") == "/lib/t00.jpg"
    assert len(os.listdir(view / "Events" / "2021")) == 2

    # A late photo of the trip's second day joins the trip; the June events keep their ids.
    with Store.open(state) as store:
        ids_before = {e.title: i for i, (e, _) in store.active_events().items()}
        _record(store, [*rows, ("late.jpg", "2022-05-04T20:00:00", None)])
        hashes, x = store.live_embeddings(MODEL)
        report = regroup.update_events(store, hashes, x, place_of=_paris)
        assert (report.new, report.changed, report.retired) == (0, 1, 0)
        after = {e.title: (i, len(m)) for i, (e, m) in store.active_events().items()}
    assert after["Seville, 3–5 May 2022"] == (ids_before["Seville, 3–5 May 2022"], 13)
    assert after["Paris, 11 June 2021, morning"][0] == ids_before["Paris, 11 June 2021, morning"]


def test_an_album_titled_events_does_not_take_the_events_folder(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    groups = [
        organize.Group(1, "Events", (os.fsencode(photo),)),
        organize.Group(2, "Paris, 11 June 2021", (os.fsencode(photo),), day="2021-06-11"),
    ]
    view = tmp_path / "Organized"
    assert organize.build(groups, view) == 2
    assert sorted(os.listdir(view)) == ["Events", "Events (album)"]
    assert os.listdir(view / "Events" / "2021") == ["2021-06-11 Paris, 11 June 2021"]


def test_a_stale_gps_fix_does_not_make_a_moment_three() -> None:
    rows = _home_life()
    moment = _burst(datetime(2021, 7, 3, 14), 40, 21, HOME, 7)
    moment[10] = (moment[10][0], (HOME[0] + 0.09, HOME[1]), 7)  # one fix 10 km off
    rows += moment
    rows.sort(key=lambda r: r[0])
    shots = _shots(rows)
    (event,) = [e for e in events.find_events(shots) if shots.times[e.rows[0]].month == 7]
    assert len(event.rows) == 21


def test_a_weekend_across_the_180th_meridian_is_not_a_trip() -> None:
    taveuni = (-16.85, 179.99)
    rows = [
        (t, (taveuni[0], taveuni[1] - 0.002), s)
        for t, _, s in _burst(datetime(2021, 1, 3, 15), 40, 6, None, 1)
    ]
    for week in range(1, 20):
        start = datetime(2021, 1, 3, 15) + timedelta(weeks=week)
        rows += [(t, taveuni, s) for t, _, s in _burst(start, 40, 6, None, week % 5)]
    for day in range(2):  # a weekend whose photos fall either side of the meridian
        start = datetime(2021, 6, 5, 10) + timedelta(days=day)
        rows += [
            (t, (taveuni[0], 179.995 if i % 2 else -179.995), 9)
            for i, (t, _, _) in enumerate(_burst(start, 60, 10, None, 9))
        ]
    rows.sort(key=lambda r: r[0])
    shots = _shots(rows)
    assert all(e.kind != events.TRIP for e in events.find_events(shots))


def test_days_in_a_row_at_a_place_with_no_home_yet_are_not_a_trip() -> None:
    """Ten days at home, GPS on, are the first photos of a library: no place has weeks of
    photos yet, and the rhythm alone calls a trip only photos without any position."""
    rows = []
    for day in range(10):
        rows += _burst(datetime(2021, 3, 1, 18) + timedelta(days=day), 30, 5, HOME, day)
    found = events.find_events(_shots(rows))
    assert len(found) == 10 and all(e.kind != events.TRIP for e in found)
    unlocated = [(t, None, s) for t, _, s in rows]
    (trip,) = events.find_events(_shots(unlocated))
    assert trip.kind == events.TRIP


def test_a_year_one_clock_is_no_date_and_breaks_nothing() -> None:
    assert label.plausible_day("0001-01-01T03:00:00") is None
    assert label.plausible_day("1826-06-01T12:00:00") is not None


def test_a_trip_that_lost_its_later_days_is_a_day(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    home = [(f"h{w}.jpg", f"{datetime(2022, 1, 2, 12) + timedelta(weeks=w):%Y-%m-%dT%H:%M:%S}",
             HOME) for w in range(16)]  # fmt: skip
    trip = [
        (f"t{d}{i}.jpg", f"2022-05-0{3 + d}T1{i}:00:00", AWAY) for d in range(3) for i in range(4)
    ]
    with Store.open(state) as store:
        _record(store, home + trip)
        hashes, x = store.live_embeddings(MODEL)
        regroup.update_events(store, hashes, x, place_of=_paris)
        ((before, _),) = [v for v in store.active_events().values() if v[0].kind == "trip"]
        store.mark_gone([f"/lib/t{d}{i}.jpg".encode() for d in (1, 2) for i in range(4)])
        hashes, x = store.live_embeddings(MODEL)
        report = regroup.update_events(store, hashes, x, place_of=_paris)
        assert (report.changed, report.new, report.retired) == (1, 0, 0)
        after, members = store.active_events()[before.id]
    assert (after.kind, after.title, len(members)) == ("day", "Seville, 3 May 2022", 4)
