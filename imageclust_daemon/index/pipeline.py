"""Indexing, stage by stage; `index()` is the list of them:

    look (stat only) -> presence (what missing photos mean: `presence`)
      -> plan (pure: unchanged / moved / to read / gone) -> apply the plan
      -> read + hash + decode + preprocess  (thread pool, bounded, ahead of inference)
      -> batched ONNX embedding             (this thread; ORT releases the GIL)
      -> store, one transaction per batch   (this thread: the only writer)

A file whose (size, mtime_ns, inode, device) is unchanged is not opened. A
file at a new path with the signature of a file that disappeared is a move:
its hash is reused without reading. A file that is read and whose content
already has an embedding (a copy, a duplicate) costs a hash, not an
inference. Each batch is committed on its own and is idempotent, so an
interrupted run loses at most one batch; contents left without an embedding
are picked up by the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import blake3
import numpy as np

from imageclust_daemon.config import Config
from imageclust_daemon.errors import DecodeError, of_this_process
from imageclust_daemon.index import decode, exif, originals, presence, scan
from imageclust_daemon.index.inflight import InFlight
from imageclust_daemon.index.sandbox import decode_in_child
from imageclust_daemon.records import (
    ContentRow,
    FileRow,
    FileStat,
    IndexReport,
    KnownFile,
    ModelSpec,
    Preprocessing,
    display_path,
)
from imageclust_daemon.state.store import Store

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (files done, files to do)

T = TypeVar("T")
R = TypeVar("R")


# -- plan (pure) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a scan found, compared with what the database remembers."""

    unchanged: int
    to_read: list[FileStat]
    known_again: list[FileRow]  # moved or back at the same path: hash known without reading
    moved: int
    gone: list[bytes]
    offline: list[bytes]  # not seen, but under a folder that could not be read: not gone
    online: list[bytes]  # seen again after being offline


def plan(
    scanned: Iterable[FileStat],
    known: dict[bytes, KnownFile],
    unreachable: Collection[bytes] = (),
) -> Plan:
    """Sort the scanned files by the work they need. No I/O.

    Files under an `unreachable` folder (missing root, unmounted drive, listing
    error) that were not seen are offline, not gone.
    """
    seen: set[bytes] = set()
    fresh: list[FileStat] = []
    known_again: list[FileRow] = []
    unchanged = 0
    for f in scanned:
        seen.add(f.path)
        k = known.get(f.path)
        if k is not None and k.signature == f.signature and k.content_hash and not k.error:
            if k.live:
                unchanged += 1
            else:
                known_again.append(FileRow(f, k.content_hash))
        else:
            fresh.append(f)
    missing = [p for p, k in known.items() if k.live and p not in seen]
    lost = {u.rstrip(b"/") or b"/" for u in unreachable}
    offline = [p for p in missing if scan.under_set(p, lost)] if lost else []
    gone = [p for p in missing if not scan.under_set(p, lost)] if lost else missing
    online = [p for p in seen if p in known and known[p].offline]
    # A path that left and a path that arrived with the same (size, mtime, inode, device):
    # a rename or a move within one filesystem. Reuse the hash; read nothing.
    departed = {
        k.signature: k.content_hash
        for p, k in known.items()
        if p not in seen and k.content_hash and not k.error
    }
    to_read: list[FileStat] = []
    moved = 0
    for f in fresh:
        content_hash = departed.get(f.signature)
        if content_hash:
            known_again.append(FileRow(f, content_hash))
            moved += 1
        else:
            to_read.append(f)
    return Plan(unchanged, to_read, known_again, moved, gone, offline, online)


# -- read, hash, decode (worker threads) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """One file after a worker read it: its hash, and pixels when its content needs embedding."""

    file: FileRow
    content: ContentRow | None = None
    pixels: np.ndarray | None = None
    vector: np.ndarray | None = None  # the pixels' embedding, when a worker computed it
    bytes_read: int = 0
    vanished: bool = False
    retry: bool = False  # a passing failure (memory, I/O while decoding): left pending


class Claims:
    """Which contents a worker has taken on this run, so duplicates are decoded once."""

    def __init__(self, settled: set[str]) -> None:
        self._taken = set(settled)
        self._lock = threading.Lock()

    def claim(self, content_hash: str) -> bool:
        with self._lock:
            if content_hash in self._taken:
                return False
            self._taken.add(content_hash)
            return True

    def release(self, content_hash: str) -> None:
        with self._lock:
            self._taken.discard(content_hash)


FUTURE_SLACK_NS = 2_000_000_000  # mtimes this far ahead of the clock still count as "now"


def prepare(
    stat: FileStat,
    claims: Claims,
    spec: Preprocessing,
    journal: InFlight | None = None,
    *,
    heif_thumbnails: str = "fidelity",
) -> Prepared:
    """Read, hash and (if its content is new) decode one file. Never raises for a bad file.
    `heif_thumbnails`: `decode.decode`'s, the `index.heif_thumbnails` setting.

    With a `journal`, each decode is recorded before it starts and after it ends, and a
    content an earlier run left in flight (it may have killed that process) is decoded in
    a child process (`sandbox`), where a crash costs the child.
    """
    shown = display_path(stat.path)
    if stat.kind:  # never opened: a FIFO would block, a device could have side effects
        return Prepared(FileRow(stat, None, f"not a regular file ({stat.kind})"))
    try:
        with originals.opened(stat.path) as (f, st):
            return _read_and_decode(stat, f, st, claims, spec, journal, shown, heif_thumbnails)
    except originals.NotAFile:
        return Prepared(FileRow(stat, None, "not a regular file any more"))
    except FileNotFoundError:
        return Prepared(FileRow(stat, None, "vanished while being indexed"), vanished=True)
    except OSError as exc:
        if of_this_process(exc):  # out of descriptors: says nothing of the photo
            raise
        return Prepared(FileRow(stat, None, f"cannot read: {exc.strerror or exc}"))


def _read_and_decode(
    stat: FileStat,
    f: BinaryIO,
    st: os.stat_result,
    claims: Claims,
    spec: Preprocessing,
    journal: InFlight | None,
    shown: str,
    heif_thumbnails: str,
) -> Prepared:
    """`prepare` of the open original `f`: OSError while reading is the caller's."""
    current = FileStat(stat.path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    read = originals.contents(f, st)
    data = read if isinstance(read, bytes) else None
    if data is not None:
        digest = blake3.blake3(data)
        size = len(data)
    else:
        digest, size = blake3.blake3(), 0
        while chunk := f.read(originals.CHUNK):
            digest.update(chunk)
            size += len(chunk)
    content_hash = digest.hexdigest()
    current = replace(current, size=size)
    row = FileRow(current, content_hash)
    if not claims.claim(content_hash):
        return Prepared(row, ContentRow(content_hash, size), bytes_read=size)
    try:
        if journal is not None:
            journal.begin(content_hash)
        if journal is not None and content_hash in journal.suspects:
            log.warning("%s: decoding it alone in a child process (see the log above)", shown)
            source = data if data is not None else os.fsdecode(stat.path)
            decoded = decode_in_child(source, spec, path=shown, heif_thumbnails=heif_thumbnails)
        else:
            if data is None:
                f.seek(0)
            decoded = decode.decode(
                data if data is not None else f, spec, path=shown, heif_thumbnails=heif_thumbnails
            )
    except DecodeError as exc:  # (its format still recorded: what its bytes say it is)
        kind = decode.format_of(data if data is not None else f, shown)
        content = ContentRow(content_hash, size, decoded=True, error=exc.reason, format=kind)
        return Prepared(row, content, bytes_read=size)
    except (MemoryError, OSError) as exc:
        # Not a property of the content: leave it pending, so the next run retries it.
        claims.release(content_hash)
        reason = "not enough memory" if isinstance(exc, MemoryError) else exc.strerror
        log.warning("%s: cannot decode now (%s); will retry next run", shown, reason)
        return Prepared(row, ContentRow(content_hash, size), bytes_read=size, retry=True)
    finally:
        if journal is not None:
            journal.end(content_hash)  # reached only if the process lived through it
    content = ContentRow(content_hash, size, decoded=True, meta=decoded.meta)
    return Prepared(row, content, decoded.pixels, bytes_read=size)


DATES_PER_RUN = 20_000  # metadata reads (headers only, a few ms each) a run spends at most


def refresh_dates(
    store: Store, *, limit: int = DATES_PER_RUN, stop: threading.Event | None = None
) -> int:
    """Read the capture time of contents indexed before the current metadata readers
    (XMP, IPTC, and the source of each), from their headers alone (no decode, no new
    embedding); each is read once. Returns how many have a capture time."""
    found: list[tuple[str, str | None, str | None]] = []
    for content_hash, path in store.dates_unread(limit):
        if stop is not None and stop.is_set():
            break
        facts = exif.NO_FACTS
        try:
            with originals.readable(path) as data:
                facts = decode.read_dates(data, display_path(path))
        except OSError as exc:
            if of_this_process(exc):
                raise
            continue  # unreadable now: tried again next run
        found.append((content_hash, facts.taken_at, facts.source))
    dated = store.set_dates(found) if found else 0
    if dated:
        log.info("read the capture times of %d photos indexed before (EXIF, XMP, IPTC)", dated)
    return dated


def ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int
) -> Iterator[R]:
    """pool.map with at most `ahead` items in flight, so memory stays bounded."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# -- the run -----------------------------------------------------------------------------------


class IndexModel(Protocol):
    """The model an index embeds with: its manifest entry, its identity, its embedding."""

    @property
    def spec(self) -> ModelSpec: ...
    @property
    def id(self) -> str: ...
    def embed(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class IndexOptions:
    """How to index, from the config: the same for `imageclust index` and the daemon."""

    excluder: scan.Excluder = scan.NO_EXCLUDES
    workers: int = 0  # read/decode threads; 0 = automatic
    batch_size: int = 16
    # A new or changed file modified more recently than this may still be being written:
    # it is not read now but handed to `on_defer` (the daemon's watch buffer).
    settle_seconds: float = 0.0
    # The file that records what is being decoded (`inflight`), so a photo that killed an
    # earlier run is decoded in a child process instead of killing this one.
    journal: Path | None = None
    heif_thumbnails: str = "fidelity"  # decode.HEIF_THUMBNAIL_SCALE

    @classmethod
    def from_config(cls, cfg: Config, *, settle: bool = False) -> IndexOptions:
        return cls(
            excluder=scan.Excluder(cfg.library.exclude),
            workers=cfg.index.workers,
            batch_size=cfg.model.batch_size,
            settle_seconds=cfg.library.settle_seconds if settle else 0.0,
            journal=cfg.journal_path,
            heif_thumbnails=cfg.index.heif_thumbnails,
        )


@dataclass(frozen=True)
class Looked:
    """What a walk saw: the files found, and what the database knew of those paths."""

    roots: list[bytes]  # real paths
    partial: bool  # only the paths a watcher reported were looked at
    looked_at: list[bytes]  # the roots the walk covered
    scanned: dict[bytes, FileStat]
    known: dict[bytes, KnownFile]
    unreachable: set[bytes]  # folders that could not be listed
    heif_unread: int  # .heic/.heif files this install cannot read
    skipped: dict[str, int] | None  # videos and sidecars by kind (a full walk only)


def look(
    roots: Sequence[bytes],
    only: Sequence[bytes] | None,
    store: Store,
    excluder: scan.Excluder,
    on_scan_error: scan.OnError,
    stop: threading.Event | None = None,
) -> Looked | None:
    """Walk the roots (or just `only` under them) and fetch what the database knows there.
    None if `stop` was set during the walk: what it saw is not the library."""
    given = [os.path.abspath(r).rstrip(b"/") or b"/" for r in roots]
    real = [os.path.realpath(r) for r in roots]
    extensions = scan.image_extensions(decode.enable_heif())
    unreachable: set[bytes] = set()
    unread: set[bytes] = set()  # paths, so a folder under two roots counts once
    skipped: dict[bytes, str] = {}
    if only is None:
        found = scan.walk_all(
            real, extensions, excluder, on_scan_error, unreachable, unread, skipped
        )
        scanned = _until_stopped(found, stop)
        if scanned is None:
            return None
        kinds = dict(Counter(skipped.values()))
        known = store.files_under(real)
        return Looked(real, False, real, scanned, known, unreachable, len(unread), kinds)
    # The watcher names paths under the roots as configured (symlinks): as stored.
    paths = [presence.under_real_root(p, given, real) for p in only]
    found = scan.look_at(paths, real, extensions, excluder, on_scan_error, unreachable)
    scanned = {f.path: f for f in found}
    looked_at = [r for r in real if scan.under_any(r, paths)]  # a root itself deleted
    return Looked(real, True, looked_at, scanned, store.files_at(paths), unreachable, 0, None)


def _until_stopped(
    found: Iterable[FileStat], stop: threading.Event | None
) -> dict[bytes, FileStat] | None:
    """The files found by path; None as soon as `stop` is set (a walk of 1M files takes
    ~30 s: a daemon asked to stop does not wait for it)."""
    scanned: dict[bytes, FileStat] = {}
    for f in found:
        if stop is not None and stop.is_set():
            return None
        scanned[f.path] = f
    return scanned


def plan_with_moves(seen: Looked, unreachable: Collection[bytes], store: Store) -> Plan:
    """`plan`, then files to read that match a path an earlier run saw leave: moved here."""
    work = plan(seen.scanned.values(), seen.known, unreachable)
    if not work.to_read:
        return work
    elsewhere = store.departed([f.signature for f in work.to_read])
    if not elsewhere:
        return work
    again = [FileRow(f, elsewhere[f.signature]) for f in work.to_read if f.signature in elsewhere]
    return replace(
        work,
        to_read=[f for f in work.to_read if f.signature not in elsewhere],
        known_again=work.known_again + again,
        moved=work.moved + len(again),
    )


def apply_presence(
    work: Plan,
    seen: Looked,
    unreachable: set[bytes],
    store: Store,
    model_id: str,
    *,
    whole_library: bool,
) -> int:
    """Record what the plan says of files not read: offline, online, back, moved, gone.
    Returns how many are gone. `whole_library`: the roots are all of library.roots, so a
    photo under none of them (its root was removed from the config) has left the library."""
    if work.offline:
        presence.warn_offline(len(work.offline), unreachable)
        store.set_offline(work.offline, True)
    if work.online:
        store.set_offline(work.online, False)
    if work.known_again:
        store.record([], work.known_again, [], model_id)
    gone = store.mark_gone(work.gone) if work.gone else 0
    # (not while a root is missing: a mistyped root would forget the real one's photos)
    if whole_library and not seen.partial and not any(r in unreachable for r in seen.roots):
        left = store.live_outside(seen.roots)
        if left:
            log.info("%d photos are no longer under library.roots: forgotten", len(left))
            gone += store.mark_gone(left)
    return gone


def defer_unsettled(
    to_read: list[FileStat], settle_seconds: float, on_defer: Callable[[list[bytes]], None] | None
) -> list[FileStat]:
    """The files to read now: those modified within `settle_seconds` may still be being
    written, and go to `on_defer` instead. A time in the future (a camera's wrong clock,
    kept by `cp -p`) says nothing of the kind: deferring it would defer it forever."""
    if settle_seconds <= 0:
        return to_read
    now = time.time_ns()
    cutoff, future = now - int(settle_seconds * 1e9), now + FUTURE_SLACK_NS
    deferred = [f.path for f in to_read if cutoff < f.mtime_ns <= future]
    if not deferred:
        return to_read
    if on_defer is not None:
        on_defer(deferred)
    put_off = set(deferred)
    return [f for f in to_read if f.path not in put_off]


def with_pending(to_read: list[FileStat], seen: Looked, store: Store, model: str) -> list[FileStat]:
    """Add the files whose content was seen before but never embedded by `model` (a model
    change, an interrupted run)."""
    out = list(to_read)
    queued = {f.path for f in to_read}
    for path in store.pending_contents(model, seen.roots).values():
        if path in seen.scanned and path not in queued:
            out.append(seen.scanned[path])
    return out


@dataclass
class Tally:
    """What reading and embedding did."""

    hashed: int = 0
    bytes_read: int = 0
    embedded: int = 0
    reused: int = 0
    failed: int = 0
    vanished: list[bytes] = field(default_factory=list)
    # Files a cluster was given and did not finish (workers lost, refused, or the file not
    # reachable there): not recorded, so the next index reads them.
    left: list[bytes] = field(default_factory=list)


class Batches:
    """Prepared files gathered into batches: embedded together, stored in one transaction."""

    def __init__(self, store: Store, model: IndexModel, batch_size: int) -> None:
        self.store, self.model, self.batch_size = store, model, batch_size
        self.tally = Tally()
        self._files: list[FileRow] = []
        self._contents: list[ContentRow] = []
        self._pixels: list[np.ndarray] = []
        self._pixel_hashes: list[str] = []
        self._vectors: list[np.ndarray] = []  # embedded elsewhere (a Dask worker)
        self._vector_hashes: list[str] = []

    def add(self, item: Prepared) -> None:
        tally = self.tally
        if item.vanished:
            tally.vanished.append(item.file.stat.path)
            return
        self._files.append(item.file)
        if item.file.error:
            tally.failed += 1
            log.warning("%s: %s", display_path(item.file.stat.path), item.file.error)
        else:
            assert item.content is not None
            self._contents.append(item.content)
            self._count(item, item.content)
        if len(self._pixels) >= self.batch_size or len(self._files) >= 512:
            self.flush()

    def _count(self, item: Prepared, content: ContentRow) -> None:
        tally = self.tally
        if item.retry:
            tally.failed += 1
            return
        tally.hashed += 1
        tally.bytes_read += item.bytes_read
        if item.pixels is not None:
            self._pixels.append(item.pixels)
            self._pixel_hashes.append(content.hash)
        elif item.vector is not None:
            self._vectors.append(item.vector)
            self._vector_hashes.append(content.hash)
        elif content.error:
            tally.failed += 1
            log.warning("%s: %s", display_path(item.file.stat.path), content.error)
        elif not content.decoded:
            tally.reused += 1

    def flush(self) -> None:
        vectors = self.model.embed(np.stack(self._pixels)) if self._pixels else np.empty((0, 0))
        embedded = [
            *zip(self._pixel_hashes, vectors, strict=True),
            *zip(self._vector_hashes, self._vectors, strict=True),
        ]
        self.store.record(self._contents, self._files, embedded, self.model.id)
        self.tally.embedded += len(embedded)
        self._files, self._contents, self._pixels, self._pixel_hashes = [], [], [], []
        self._vectors, self._vector_hashes = [], []


def read_and_embed(
    to_read: list[FileStat],
    *,
    store: Store,
    model: IndexModel,
    options: IndexOptions,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> Tally:
    """Read, hash and decode on a thread pool, ahead of inference; embed in batches on this
    thread; store each batch in one transaction. `stop`: finish the batch and return."""
    claims = Claims(store.settled_hashes(model.id))
    batches = Batches(store, model, options.batch_size)
    threads = options.workers or min(4, os.cpu_count() or 1)
    journal = InFlight(options.journal) if options.journal is not None else None
    if journal is not None and journal.suspects:
        log.warning(
            "%d photo(s) were being decoded when an earlier run stopped without finishing "
            "(killed, out of memory, or a crash in a decoder): each is decoded alone in a "
            "child process, and one that kills it is recorded as failed",
            len(journal.suspects),
        )
    preprocessing = model.spec.preprocessing
    with (
        contextlib.ExitStack() as cleanup,
        ThreadPoolExecutor(threads, thread_name_prefix="imageclust-read") as pool,
    ):
        if journal is not None:
            cleanup.callback(journal.close)
        work_fn = lambda f: prepare(  # noqa: E731
            f, claims, preprocessing, journal, heif_thumbnails=options.heif_thumbnails
        )
        ahead = 2 * options.batch_size + threads
        for done, item in enumerate(ordered_map(pool, work_fn, to_read, ahead), start=1):
            if stop is not None and stop.is_set():
                pool.shutdown(wait=True, cancel_futures=True)
                break
            batches.add(item)
            if progress:
                progress(done, len(to_read))
        batches.flush()
    return batches.tally


class Reader(Protocol):
    """What reads, hashes, decodes and embeds the files to read: `read_and_embed` here, or
    `dask_index.Cluster.read_and_embed` on a Dask cluster."""

    def __call__(
        self,
        to_read: list[FileStat],
        *,
        store: Store,
        model: IndexModel,
        options: IndexOptions,
        stop: threading.Event | None = None,
        progress: Progress | None = None,
    ) -> Tally: ...


def index(
    roots: Sequence[bytes],
    *,
    store: Store,
    model: IndexModel,
    options: IndexOptions = IndexOptions(),
    reader: Reader = read_and_embed,
    only: Sequence[bytes] | None = None,
    whole_library: bool = False,
    forget_missing: bool = False,
    progress: Progress | None = None,
    on_scan_error: scan.OnError = scan.ignore_error,
    on_defer: Callable[[list[bytes]], None] | None = None,
    stop: threading.Event | None = None,
) -> IndexReport:
    """Scan `roots`, read what changed, embed what is new, forget nothing. Returns the counts.

    `only`: look at just these paths under the roots (files, or folders walked whole),
    as the watcher reports them. `whole_library`: `roots` are all of library.roots.
    Photos not found are offline, not gone, when `presence` says so; `forget_missing`
    says they are gone all the same. `on_defer` receives the files not settled yet
    (`IndexOptions.settle_seconds`). `stop`: when set, finish the current batch and return.
    """
    started = time.monotonic()
    seen = look(roots, only, store, options.excluder, on_scan_error, stop)
    if seen is None:  # stopped during the walk: nothing was learnt, nothing is changed
        return IndexReport(stopped=True, seconds=time.monotonic() - started)
    judged = presence.assess(
        seen.scanned,
        seen.known,
        seen.roots,
        looked_at=seen.looked_at,
        unreachable=seen.unreachable,
        excluder=options.excluder,
        partial=seen.partial,
        live_count_under=store.live_count_under,
        forget_missing=forget_missing,
    )
    work = plan_with_moves(seen, judged.unreachable, store)
    gone = apply_presence(
        work, seen, judged.unreachable, store, model.id, whole_library=whole_library
    )
    to_read = defer_unsettled(work.to_read, options.settle_seconds, on_defer)
    to_read = with_pending(to_read, seen, store, model.id)
    tally = reader(to_read, store=store, model=model, options=options, stop=stop, progress=progress)
    if tally.vanished:
        gone += store.mark_gone(tally.vanished, reason="vanished while being indexed")
    if not (stop is not None and stop.is_set()):
        refresh_dates(store, stop=stop)
    if seen.skipped is not None and whole_library:
        store.set_skipped(seen.skipped)
    store.checkpoint()
    return IndexReport(
        scanned=len(seen.scanned),
        unchanged=work.unchanged,
        moved=work.moved,
        returned=len(work.known_again) - work.moved,
        hashed=tally.hashed,
        bytes_read=tally.bytes_read,
        embedded=tally.embedded,
        reused=tally.reused,
        failed=tally.failed,
        gone=gone,
        offline=len(work.offline),
        went_offline=sum(1 for p in work.offline if not seen.known[p].offline),
        came_online=len(work.online),
        needs_rescan=judged.needs_rescan,
        heif_unread=seen.heif_unread,
        skipped=seen.skipped or {},
        left=len(tally.left),
        seconds=time.monotonic() - started,
    )
