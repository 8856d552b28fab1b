"""Regrouping: the library's contents into groups (recluster), and titles for the groups
that changed (relabel). Both read and write the state database only; the catalog is
published from it afterwards (`publish`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeVar

import blake3
import numpy as np

from imageclust_daemon.errors import (
    DecodeError,
    ImageclustError,
    OllamaError,
    OllamaModelMissing,
    OllamaUnavailable,
)
from imageclust_daemon.grouping import albums, events, label, subjects, ward
from imageclust_daemon.grouping.ollama import OllamaClient
from imageclust_daemon.grouping.places import Place, nearest_place
from imageclust_daemon.index import pairs, sandbox
from imageclust_daemon.index.inflight import InFlight
from imageclust_daemon.model import models
from imageclust_daemon.records import (
    Baseline,
    ClusterRun,
    EventReport,
    EventRow,
    GroupFacts,
    GroupRow,
    Label,
    LabelJob,
    display_path,
)
from imageclust_daemon.state.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


# -- recluster ---------------------------------------------------------------------------------


def _digest(parts: Iterable[str]) -> str:
    h = blake3.blake3()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _without(
    shown_elsewhere: dict[str, str], hashes: list[str], x: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """The contents that are photos of their own: not a RAW its JPEG shows."""
    if not shown_elsewhere:
        return hashes, x
    keep = [i for i, h in enumerate(hashes) if h not in shown_elsewhere]
    return [hashes[i] for i in keep], x[keep]


UNFINISHED_SHARE = 0.10  # recluster waits while more than this share of contents lacks embeddings


def recluster(
    store: Store,
    model: str,
    *,
    min_size: int,
    max_size: int,
    force: bool = False,
    stop: threading.Event | None = None,
    pair_raw_jpeg: bool = True,
    words: Callable[[int], np.ndarray | None] | None = None,
) -> ClusterRun:
    """Regroup the live library's distinct photos, moving only what the changes since the
    last run demand (`albums.regroup`); flag the new and changed albums. The whole library
    is cut again only when asked (`force`), on a new model, at the first run, or when the
    library doubled since its albums were cut. The RAW of a RAW+JPEG pair is its JPEG's
    photo, not one of its own (`pair_raw_jpeg`). `words`: the vocabulary's text vectors
    for the embeddings' dimension (`subject_words`), for what each album shows.

    Does nothing (and says so: `skipped`) when the model, the limits and the set of
    contents are those of the last run.
    """
    started, wall = time.monotonic(), time.time()
    unfinished = None if force else _unfinished(store, model)
    if unfinished:
        # Right after a model switch almost nothing has the new model's embedding yet:
        # grouping now would retire every group (and its title) for nothing.
        return ClusterRun(model, min_size, max_size, "", skipped=True, note=unfinished)
    hashes, x = store.live_embeddings(model)
    shown = pairs.find(store.conn, model) if pair_raw_jpeg else {}
    hashes, x = _without(shown, hashes, x)
    digest = _digest([model, str(min_size), str(max_size), *hashes])
    last = store.last_cluster_run()
    unchanged = last is not None and last.input_digest == digest
    # Events first, and even when the albums need nothing: a library upgraded to events
    # has none yet. Not when the photos are those of the last run and events exist (5 s
    # to find that nothing changed at 1M photos).
    dated = (
        EventReport()
        if unchanged and not force and store.has_events()
        else update_events(store, hashes, x, shown_elsewhere=shown)
    )
    if last is not None and unchanged and not force:
        return replace(
            last, skipped=True, note=f"nothing changed since run #{last.run_id}", events=dated
        )
    active = store.active_clusters()
    previous = _previous(store, hashes, active)
    full = "recluster --force" if force else ""
    if not full and last is not None and last.model_id != model and active:
        full = "a new model"
    try:
        result = albums.regroup(
            x,
            min_size,
            max_size,
            previous,
            full=full,
            cancelled=stop.is_set if stop is not None else ward.never,
        )
    except ward.Cancelled:
        return ClusterRun(
            model, min_size, max_size, digest, skipped=True, note="stopped", events=dated
        )
    vectors = words(x.shape[1]) if words is not None and len(x) else None
    groups, retired = album_rows(x, hashes, result, active, dict(previous.baselines), vectors)
    run = _run_record(
        ClusterRun(model, min_size, max_size, digest, started_at=wall, events=dated),
        result,
        groups,
        retired,
        seconds=time.monotonic() - started,
    )
    waiting = [hashes[i] for i in np.flatnonzero(result.labels < 0)]
    run_id = store.save_clustering(run, groups, retired, waiting)
    return replace(run, run_id=run_id)


def _run_record(
    run: ClusterRun,
    result: albums.Regrouping,
    groups: Sequence[GroupRow],
    retired: Sequence[int],
    *,
    seconds: float,
) -> ClusterRun:
    """What a regroup did, as its record: `run` (model, limits, digest, time) completed."""
    return replace(
        run,
        seconds=seconds,
        method=result.method,
        n_points=len(result.labels),
        n_clusters=len(np.unique(result.labels[result.labels >= 0])),
        unclustered=int((result.labels < 0).sum()),
        new_clusters=sum(g.is_new for g in groups),
        changed_clusters=sum(g.changed and not g.is_new for g in groups),
        retired_clusters=len(retired),
        full_reason=result.full,
        joined=result.joined,
        moved=result.moved,
        dissolved=result.dissolved,
        recut=result.recut,
    )


def _unfinished(store: Store, model: str) -> str | None:
    """Why the library cannot be grouped yet (too many photos without an embedding)."""
    counts = store.status(model)
    if counts["pending"] <= UNFINISHED_SHARE * counts["contents"]:
        return None
    return (
        f"indexing unfinished: {counts['pending']} of {counts['contents']} photos still "
        "need an embedding; run `imageclust index` first (or --force)"
    )


def describe(run: ClusterRun) -> str:
    """What a regroup did to the albums, in words: how many photos moved, and why."""

    def count(n: int, noun: str) -> str:
        return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

    summary = (
        f"{count(run.n_clusters, 'album')} ({run.new_clusters} new, "
        f"{run.changed_clusters} changed, {run.retired_clusters} retired)"
    )
    if run.full_reason:
        how = f"the whole library regrouped ({run.full_reason}): {count(run.moved, 'photo')} moved"
    else:
        how = f"{count(run.joined, 'new photo')} joined albums, {count(run.moved, 'photo')} moved"
    why = [f"album {cid} cut again: {reason}" for cid, reason in sorted(run.recut.items())]
    if run.dissolved:
        why.append(
            f"{count(run.dissolved, 'album')} fell below cluster.min_size, its photos placed again"
        )
    waiting = f"; {run.unclustered} in no album" if run.unclustered else ""
    said = f"{how}; {summary}{waiting}" + (f" ({'; '.join(why)})" if why else "")
    if run.events is not None and run.events.touched:
        said += f"; {describe_events(run.events)}"
    return said


def describe_events(report: EventReport) -> str:
    """ "12 events (2 new, 1 changed, 0 retired)"."""
    noun = "event" if report.events == 1 else "events"
    return (
        f"{report.events} {noun} ({report.new} new, {report.changed} changed, "
        f"{report.retired} retired)"
    )


def _previous(store: Store, hashes: list[str], active: dict[int, set[str]]) -> albums.Previous:
    """The last run's albums over today's contents: each content's album, WAITING or NEW
    (all NEW before the first run), and the first id never given."""
    album_of = {h: cid for cid, members in active.items() for h in members}
    waiting = store.waiting_contents()
    labels = np.array(
        [album_of.get(h, albums.WAITING if h in waiting else albums.NEW) for h in hashes],
        dtype=np.int64,
    )
    return albums.Previous(labels, store.album_baselines(), store.next_cluster_id())


def album_rows(
    x: np.ndarray,
    hashes: Sequence[str],
    result: albums.Regrouping,
    previous: dict[int, set[str]],
    baselines: dict[int, Baseline],
    words: np.ndarray | None = None,
) -> tuple[list[GroupRow], list[int]]:
    """The albums to store (all after a full regroup, whose centres may have moved with a
    new model; else those whose members or baseline changed: `baselines` are the stored
    ones) and the ids of those retired. `words`: the vocabulary's vectors, for each
    album's subject."""
    labels = result.labels
    members = albums.album_members(labels)
    groups = []
    for gid, idx in members.items():
        member_hashes = {hashes[i] for i in idx}
        changed = previous.get(gid) != member_hashes
        if not changed and not result.full and baselines.get(gid) == result.baselines[gid]:
            continue
        rank, sims, centre = albums.album_ranks(x[idx])
        groups.append(
            GroupRow(
                id=gid,
                members=tuple(
                    (hashes[i], int(r), float(sim))
                    for i, r, sim in zip(idx, rank, sims, strict=True)
                ),
                centroid=centre.astype(np.float32),
                members_digest=_digest(sorted(member_hashes)),
                is_new=gid not in previous,
                changed=changed,
                cut_size=result.baselines[gid].size,
                fit=result.baselines[gid].fit,
                subject=None
                if words is None
                else subjects.subject_of(x[idx], words, subjects.SUBJECTS),
            )
        )
    retired = sorted(gid for gid in previous if gid not in members)
    return groups, retired


def subject_words(
    store: Store, model_id: str, open_text: Callable[[int], models.TextModel]
) -> Callable[[int], np.ndarray | None]:
    """`recluster`'s `words`: the vocabulary's vectors for the model, from the store or
    embedded once by the text tower (`open_text(dim)`); None, said once a process in the
    log, when the model has no text tower here (albums then have no subject)."""

    def words(dim: int) -> np.ndarray | None:
        version = subjects.VOCABULARY_VERSION
        try:
            return subjects.word_vectors(
                lambda: store.subject_vectors(model_id, version),
                lambda texts: open_text(dim).embed(texts),
                lambda vectors: store.keep_subject_vectors(model_id, version, vectors),
            )
        except ImageclustError as exc:
            _say_once(f"albums get no subject words: {exc}")
            return None

    return words


_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.info("%s", message)


# -- events ------------------------------------------------------------------------------------


def update_events(
    store: Store,
    hashes: Sequence[str],
    x: np.ndarray,
    *,
    shown_elsewhere: Mapping[str, str] | None = None,
    place_of: Callable[[float, float], Place | None] = nearest_place,
    now: datetime | None = None,
) -> EventReport:
    """Cut the library's dated photos into events, keeping every event no new photo
    touches (`events.settle`), and title them; write only what changed. `hashes`/`x`: the
    embeddings at hand (what the photos show tells two sessions of one day apart);
    `shown_elsewhere`: the RAWs of RAW+JPEG pairs, which are their JPEG's photo.

    Only the photos within `events.NEAR_NEW_DAYS` of a new photo are cut again (home is learned
    from the months around a session; nothing farther can change), so an update after
    a day's photos costs the months around it, not the whole library."""
    started = time.monotonic()
    now = now or datetime.now()
    skip = shown_elsewhere or {}
    dated = []
    for content_hash, taken_at, lat, lon in store.dated_contents():
        when = label.plausible_day(taken_at, now)  # a clock never set has no event
        if when is not None and content_hash not in skip:
            dated.append((content_hash, when, taken_at, lat, lon))
    dated.sort(key=lambda d: (d[1], d[0]))
    previous = store.active_events()
    event_of = {h: eid for eid, (_, members) in previous.items() for h in members}
    keys = [d[0] for d in dated]
    before = np.array([event_of.get(h, events.NEW) for h in keys], dtype=np.int64)
    new = before == events.NEW
    if not new.any() and len(keys) == len(event_of):
        return EventReport(len(keys), len(previous), seconds=time.monotonic() - started)
    kinds = {eid: e.kind for eid, (e, _) in previous.items()}
    labels = before.copy()
    if new.any():
        row_of = {h: i for i, h in enumerate(hashes)}
        x_rows = np.array([row_of.get(h, -1) for h in keys], dtype=np.int64)
        times = [d[1] for d in dated]
        near = np.flatnonzero(
            events.near_new(times, new) if previous else np.ones(len(keys), dtype=bool)
        )
        shots = events.Shots(
            [times[i] for i in near],
            np.array([np.nan if dated[i][3] is None else dated[i][3] for i in near]),
            np.array([np.nan if dated[i][4] is None else dated[i][4] for i in near]),
            x if len(x) else None,
            x_rows[near],
        )
        fresh = events.find_events(shots)
        labels[near], cut_kinds = events.settle(shots, fresh, before[near], store.next_event_id())
        kinds.update(cut_kinds)
    rows_now = _event_rows(dated, labels, kinds, previous, place_of)
    changed = [r for r in rows_now if r.id not in previous or _event_differs(previous[r.id], r)]
    retired = sorted(set(previous) - {r.id for r in rows_now})
    if changed or retired:
        store.save_events(changed, retired)
    made = sum(r.id not in previous for r in changed)
    return EventReport(
        len(keys),
        len(rows_now),
        made,
        len(changed) - made,
        len(retired),
        time.monotonic() - started,
    )


def _event_rows(
    dated: Sequence[tuple[str, datetime, str, float | None, float | None]],
    labels: np.ndarray,
    kinds: Mapping[int, str],
    previous: Mapping[int, tuple[EventRow, set[str]]],
    place_of: Callable[[float, float], Place | None],
) -> list[EventRow]:
    """Every event as it is now, titled (titles are unique across all of them)."""
    members: dict[int, list[int]] = {}
    for i, eid in enumerate(labels.tolist()):
        members.setdefault(eid, []).append(i)
    facts, found = [], []
    for eid, idx in sorted(members.items()):
        hashes = tuple(dated[i][0] for i in idx)
        old = previous.get(eid)
        first, last = dated[idx[0]], dated[idx[-1]]
        kind = kinds[eid]
        if old is not None and old[1] == set(hashes):
            where = old[0].place, old[0].city, old[0].lat, old[0].lon  # as it was
        else:
            where = _event_place([(dated[i][3], dated[i][4]) for i in idx], place_of)
            if old is not None and kind == old[0].kind:  # lost photos, not cut again
                kind = events.kind_left(kind, first[1], last[1])
        place, city, lat, lon = where
        facts.append(label.EventFacts(eid, first[1].date(), last[1].date(), first[1], city))
        found.append((eid, kind, hashes, first[2], last[2], place, city, lat, lon))
    titles = label.event_titles(facts)
    return [
        EventRow(eid, kind, titles[eid], first, last, place, city, lat, lon, hashes)
        for eid, kind, hashes, first, last, place, city, lat, lon in found
    ]


def _event_place(
    positions: Sequence[tuple[float | None, float | None]],
    place_of: Callable[[float, float], Place | None],
) -> tuple[str | None, str | None, float | None, float | None]:
    """Where most of an event's positioned photos were taken (its photos without a
    position were taken at the same time, so with them): the place, its own name, and
    the position."""
    known = tuple((a, b) for a, b in positions if a is not None and b is not None)
    where = label.agreed_position(GroupFacts(len(known), positions=known))
    if where is None:
        return None, None, None, None
    place = place_of(*where)
    if place is None:
        return None, None, round(where[0], 6), round(where[1], 6)
    return str(place), place.city, round(where[0], 6), round(where[1], 6)


def _event_differs(old: tuple[EventRow, set[str]], new: EventRow) -> bool:
    row, members = old
    return members != set(new.members) or (
        row.kind,
        row.title,
        row.started_at,
        row.ended_at,
        row.place,
    ) != (new.kind, new.title, new.started_at, new.ended_at, new.place)


# -- relabel -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelReport:
    groups: int = 0  # groups that needed a title
    cached: int = 0  # titled from the cache: no request
    requested: int = 0  # groups sent to Ollama
    ollama: int = 0  # titled by Ollama this run
    fallback: int = 0  # titled from dates and places (Ollama is asked again next run)
    changed: int = 0  # groups whose title, phrase or source is not what it was
    problem: str | None = None  # why Ollama was not (fully) used
    seconds: float = 0.0


PICTURE_SIDE = 672  # the longer side of each picture sent to Ollama


def _thumbnails(job: LabelJob, journal: InFlight | None) -> list[bytes]:
    images = []
    for path in job.representatives:
        try:
            images.append(sandbox.picture(path, PICTURE_SIDE, journal, path=display_path(path)))
        except (OSError, DecodeError) as exc:
            log.warning("%s: not sent for labeling: %s", display_path(path), exc)
    return images


def relabel(
    store: Store,
    client: OllamaClient,
    *,
    everything: bool = False,
    parallel: int = 1,
    place_of: Callable[[float, float], Place | None] = nearest_place,
    stop: threading.Event | None = None,
    progress: Callable[[], None] | None = None,
    pictures: InFlight | None = None,
) -> LabelReport:
    """Title every group that needs it; only those. Never blocked by Ollama being down.
    `pictures`: the journal the pictures sent to Ollama are made under (no crash loop).

    Titles come from the label cache when the same membership was titled before,
    else from Ollama (at most `parallel` requests in flight), else from the
    photos' own dates and places. Once Ollama fails to answer at all, the rest of
    this run uses fallback titles without asking. `stop`: return at once, leaving
    the groups not yet answered for the next run. `progress`: called per group titled.
    """
    started = time.monotonic()
    now = datetime.now()  # capture times after it are a camera's wrong clock
    jobs = store.label_jobs(everything=everything)
    if not jobs:
        return LabelReport()
    llm, version = client.model, label.PROMPT_VERSION
    cached = changed = 0
    waiting: list[LabelJob] = []
    for job in jobs:
        hit = None if everything else store.cached_label(job.members_digest, llm, version)
        if hit is not None:
            store.save_label(job, hit, llm, version)
            cached += 1
            changed += _differs(job, hit)
        else:
            waiting.append(job)
    if not waiting:
        return LabelReport(len(jobs), cached, changed=changed, seconds=time.monotonic() - started)

    problem = _ollama_problem(client)
    asker = _Asker(client, now, pictures)
    if problem:
        asker.down.set()
        # Ollama is away: a group whose fallback title is current keeps it as it is; only
        # new and changed groups need one now (a library without an LLM stays cheap).
        waiting = [job for job in waiting if job.needs_label or everything]
    todo: list[tuple[LabelJob, GroupFacts, Place | None]] = []
    for job in waiting:
        facts = store.group_facts(job.cluster_id)
        where = label.agreed_position(facts)  # a place only when most photos agree on it
        todo.append((job, facts, place_of(*where) if where else None))

    requested = ollama = fallback = 0
    answers = abandonable_map(
        lambda item: asker.ask(*item), todo, parallel, stop, "imageclust-label"
    )
    for (job, facts, place), (answer, asked) in zip(todo, answers, strict=False):
        requested += asked
        if answer is None:
            answer = label.fallback_label(
                facts, place.city if place else None, job.cluster_id, now=now
            )
            fallback += 1
        else:
            ollama += 1
        store.save_label(job, answer, llm, version)
        changed += _differs(job, answer)
        if progress is not None:
            progress()
    if asker.down.is_set() and problem is None:
        problem = "Ollama stopped answering; the remaining groups got fallback titles"
    return LabelReport(
        len(jobs), cached, requested, ollama, fallback, changed, problem, time.monotonic() - started
    )


def _ollama_problem(client: OllamaClient) -> str | None:
    """Why Ollama cannot title groups now, or None when it has the model."""
    try:
        if not client.has_model():
            return f"model {client.model!r} is not on the server (run: ollama pull {client.model})"
    except OllamaError as exc:
        return str(exc)
    return None


class _Asker:
    """Asks Ollama for one group's label; once it fails to answer at all (`down`), the
    rest of the run is not asked."""

    def __init__(self, client: OllamaClient, now: datetime, pictures: InFlight | None) -> None:
        self.client, self.now, self.pictures = client, now, pictures
        self.down = threading.Event()

    def ask(
        self, job: LabelJob, facts: GroupFacts, place: Place | None
    ) -> tuple[Label | None, bool]:
        """(the label or None, whether Ollama was asked)."""
        if self.down.is_set():
            return None, False
        images = _thumbnails(job, self.pictures)
        if not images:
            return None, False
        where = str(place) if place else None
        prompt = label.build_prompt(facts, where, len(images), now=self.now)
        try:
            return self.client.label(prompt, images), True
        except (OllamaUnavailable, OllamaModelMissing) as exc:
            self.down.set()  # it will not answer the next group either: stop asking this run
            log.warning("group %d: %s", job.cluster_id, exc)
        except OllamaError as exc:
            log.warning("group %d: %s", job.cluster_id, exc)
        return None, True


def abandonable_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    stop: threading.Event | None,
    name: str,
) -> Iterator[R]:
    """fn over items on `workers` daemon threads, results in order.

    When `stop` is set the iteration ends at once. A thread still blocked in a request
    (an Ollama that hangs: its read timeout can be minutes) is abandoned with its
    result; daemon threads never hold up the process's exit, so SIGTERM stays prompt.
    """
    results: list[Future[R]] = [Future() for _ in items]
    todo = deque(range(len(items)))

    def work() -> None:
        while not (stop is not None and stop.is_set()):
            try:
                i = todo.popleft()
            except IndexError:
                return
            try:
                results[i].set_result(fn(items[i]))
            except BaseException as exc:  # re-raised in the caller's thread
                results[i].set_exception(exc)

    for n in range(min(workers, len(items))):
        threading.Thread(target=work, name=f"{name}-{n}", daemon=True).start()
    for result in results:
        while True:
            try:
                yield result.result(timeout=0.1)
                break
            except TimeoutError:
                if stop is not None and stop.is_set():
                    return


def _differs(job: LabelJob, new: Label) -> bool:
    return (job.title, job.catchy_phrase, job.label_source) != (
        new.title,
        new.catchy_phrase,
        new.source,
    )
