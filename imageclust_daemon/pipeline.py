"""The composition root: every stage of indexing, listed in one place.

    scan (stat only) -> plan (pure: unchanged / moved / to read / gone)
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
import stat as statmod
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import blake3
import numpy as np

from imageclust_daemon import __version__, catalog, cluster, decode, label, organize, scan
from imageclust_daemon.embed import (
    BatchEmbedder,
    Embedder,
    file_sha256,
    model_id,
    model_io,
    open_session,
)
from imageclust_daemon.errors import (
    DecodeError,
    ModelNotFoundError,
    OllamaError,
    OllamaModelMissing,
    OllamaUnavailable,
)
from imageclust_daemon.inflight import InFlight
from imageclust_daemon.ollama import OllamaClient
from imageclust_daemon.places import Place, nearest_place
from imageclust_daemon.records import (
    ClusterRun,
    ContentRow,
    FileRow,
    FileStat,
    GroupRow,
    IndexReport,
    KnownFile,
    LabelJob,
    ModelSpec,
    Preprocessing,
    display_path,
)
from imageclust_daemon.sandbox import decode_in_child
from imageclust_daemon.store import Store

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


def under_any(path: bytes, folders: Collection[bytes]) -> bool:
    return any(path == f or path.startswith(f.rstrip(b"/") + b"/") for f in folders)


def under_set(path: bytes, folders: set[bytes]) -> bool:
    """`under_any` for many folders (absolute, no trailing slash): O(depth), not O(folders)."""
    while True:
        if path in folders:
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


# A full rescan that finds this many of a root's photos missing, and more than this
# share of them, keeps them offline: a flaky mount, not a purge (another photo manager
# once marked 68,811 photos deleted in 6.6 s). `index --forget-missing` accepts it.
MASS_LOSS_MIN = 50
MASS_LOSS_SHARE = 0.5


def _vanished(
    scanned: dict[bytes, FileStat],
    known: dict[bytes, KnownFile],
    roots: Sequence[bytes],
    excluder: scan.Excluder,
) -> list[bytes]:
    """Live photos not found, less those that moved (their signature was scanned
    elsewhere) and those the walk now leaves out (excluded, hidden): these vanished."""
    arrived = {f.signature for f in scanned.values()}
    out = []
    for path, k in known.items():
        if not k.live or path in scanned or k.signature in arrived:
            continue
        root = scan.root_of(path, roots)
        if root is not None and scan.skipped(path, root, excluder):
            continue
        out.append(path)
    return out


def mass_losses(
    missing: Sequence[bytes],
    roots: Sequence[bytes],
    live_under: Callable[[bytes], int],
    unreachable: set[bytes] | None = None,
) -> dict[bytes, tuple[int, int]]:
    """Roots that lost too many of their photos at once to believe it:
    root -> (photos vanished, photos it had). `live_under(root)` counts the latter."""
    unreachable = unreachable or set()
    lost: dict[bytes, tuple[int, int]] = {}
    if len(missing) < MASS_LOSS_MIN:
        return lost
    for root in roots:
        gone = sum(1 for p in missing if under_any(p, [root]) and not under_set(p, unreachable))
        if gone >= MASS_LOSS_MIN:
            live = live_under(root)
            if gone > MASS_LOSS_SHARE * live:
                lost[root] = (gone, live)
    return lost


def _live_under(known: dict[bytes, KnownFile], root: bytes) -> int:
    return sum(1 for p, k in known.items() if k.live and under_any(p, [root]))


def unmounted_folders(
    missing: Sequence[bytes],
    known: dict[bytes, KnownFile],
    roots: Sequence[bytes],
    mounted: set[int] | None = None,
) -> set[bytes]:
    """Folders under the roots where the filesystem missing photos lived on is unmounted.

    The photo's device is mounted nowhere now (`mounted`: the devices in
    /proc/self/mountinfo; None where there is no such list), and the deepest folder
    still there above it is on another device. Then the folder below that on the photo's
    path is the one unmounted (an automounter removed the mount point; a folder symlink
    into the drive dangles), or, when the photo's own folder is there, that folder if it
    is empty (the mount point a drive leaves). Without a list of mounts only a dangling
    symlink or an empty folder counts. A folder the user deleted from a mounted drive,
    or a folder of symlinks that lost one, is gone.
    """
    found: set[bytes] = set()
    above: dict[bytes, tuple[bytes, int] | None] = {}
    for path in missing:
        device = known[path].signature[3]
        if mounted is not None and device in mounted:
            continue  # its filesystem is mounted: the photo was deleted
        folder = os.path.dirname(path)
        if folder not in above:
            above[folder] = _deepest_existing(folder, roots)
        hit = above[folder]
        if hit is None or hit[1] == device:
            continue
        there = hit[0]
        if there != folder:  # the first folder on the way down that is not there
            child = there.rstrip(b"/") + b"/" + os.path.relpath(folder, there).split(b"/")[0]
            if mounted is not None or os.path.islink(child):
                found.add(child)
        elif _empty(there):
            found.add(there)
    for folder in sorted(found):
        log.warning(
            "%s: its drive or share is not mounted; its photos are kept offline",
            display_path(folder),
        )
    return found


def mounted_devices(mountinfo: str = "/proc/self/mountinfo") -> set[int] | None:
    """The st_dev of every mounted filesystem (Linux), from "major:minor" in mountinfo;
    no stat of a mount point, which could hang on a dead network share."""
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    devices = set()
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 2 and b":" in fields[2]:
            major, _, minor = fields[2].partition(b":")
            with contextlib.suppress(ValueError):
                devices.add(os.makedev(int(major), int(minor)))
    return devices or None


def _under_real_root(path: bytes, given: Sequence[bytes], real: Sequence[bytes]) -> bytes:
    """`path` under a root as configured (say ~/Pictures, a symlink), as stored: under the
    root's real path. Folders inside the root keep their own names, symlinks or not."""
    path = os.path.abspath(path)
    for root, real_root in zip(given, real, strict=True):
        if root != real_root and (path == root or path.startswith(root + b"/")):
            return real_root + path[len(root) :]
    return path


def _no_such_path(path: bytes) -> bool:
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:  # EACCES, EIO, ESTALE: there, but unreadable
        return False
    return False


def _empty(folder: bytes) -> bool:
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _deepest_existing(folder: bytes, roots: Sequence[bytes]) -> tuple[bytes, int] | None:
    """(folder, st_dev) of `folder` or its nearest existing parent, within the roots."""
    while under_any(folder, roots):
        try:
            return folder, os.stat(folder).st_dev  # (a dangling folder symlink: not there)
        except OSError:
            parent = os.path.dirname(folder)
            if parent == folder:
                return None
            folder = parent
    return None


def _some(names: Sequence[str], shown: int = 5) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


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
    offline = [p for p in missing if under_set(p, lost)] if lost else []
    gone = [p for p in missing if not under_set(p, lost)] if lost else missing
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


# A photo is read into memory once, then hashed and decoded from there. Past this
# size (a huge TIFF, a video renamed .jpg) it is hashed in chunks and decoded
# from the file instead, so memory stays bounded by workers x this, not by file size.
WHOLE_READ_MAX = 64 << 20
_HASH_CHUNK = 1 << 20


FUTURE_SLACK_NS = 2_000_000_000  # mtimes this far ahead of the clock still count as "now"


def prepare(
    stat: FileStat, claims: Claims, spec: Preprocessing, journal: InFlight | None = None
) -> Prepared:
    """Read, hash and (if its content is new) decode one file. Never raises for a bad file.

    With a `journal`, each decode is recorded before it starts and after it ends, and a
    content an earlier run left in flight (it may have killed that process) is decoded in
    a child process (`sandbox`), where a crash costs the child.
    """
    shown = display_path(stat.path)
    if stat.kind:  # never opened: a FIFO would block, a device could have side effects
        return Prepared(FileRow(stat, None, f"not a regular file ({stat.kind})"))
    try:
        # O_NONBLOCK: a FIFO swapped in since the scan must not block the worker forever.
        fd = os.open(stat.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return Prepared(FileRow(stat, None, "vanished while being indexed"), vanished=True)
    except OSError as exc:
        return Prepared(FileRow(stat, None, f"cannot read: {exc.strerror or exc}"))
    with open(fd, "rb", buffering=0) as f:
        try:
            st = os.fstat(fd)
            if not statmod.S_ISREG(st.st_mode):
                return Prepared(FileRow(stat, None, "not a regular file any more"))
            current = FileStat(stat.path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
            data: bytes | None = None
            if st.st_size <= WHOLE_READ_MAX:
                data = f.read()
                digest = blake3.blake3(data)
                size = len(data)
            else:
                digest, size = blake3.blake3(), 0
                while chunk := f.read(_HASH_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            return Prepared(FileRow(stat, None, f"cannot read: {exc.strerror or exc}"))
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
                decoded = decode_in_child(source, spec, path=shown)
            else:
                if data is None:
                    f.seek(0)
                decoded = decode.decode(data if data is not None else f, spec, path=shown)
        except DecodeError as exc:
            content = ContentRow(content_hash, size, decoded=True, error=exc.reason)
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


@dataclass
class _Batch:
    files: list[FileRow] = field(default_factory=list)
    contents: list[ContentRow] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)
    pixel_hashes: list[str] = field(default_factory=list)


def index(
    roots: Sequence[bytes],
    *,
    store: Store,
    embedder: BatchEmbedder,
    spec: ModelSpec,
    model: str,
    excluder: scan.Excluder = scan.NO_EXCLUDES,
    workers: int = 0,
    batch_size: int = 16,
    progress: Progress | None = None,
    on_scan_error: scan.OnError = scan.ignore_error,
    only: Sequence[bytes] | None = None,
    stop: threading.Event | None = None,
    settle_seconds: float = 0.0,
    on_defer: Callable[[list[bytes]], None] | None = None,
    whole_library: bool = False,
    forget_missing: bool = False,
    journal: Path | None = None,
) -> IndexReport:
    """Scan `roots`, read what changed, embed what is new, forget nothing. Returns the counts.

    `only`: look at just these paths under the roots (files, or folders walked whole),
    as the watcher reports them. `stop`: when set, finish the current batch and return.
    `settle_seconds`: a new or changed file modified more recently than this may still
    be being written; it is not read now but handed to `on_defer` (the daemon's watch
    buffer), so it is read once, complete. `whole_library`: `roots` are all of
    library.roots, so a photo under none of them (its root was removed from the
    config) has left the library and is gone. Photos not found are offline, not gone,
    when their folder cannot be read, their filesystem is no longer mounted, or too many
    vanished at once (`mass_losses`); `forget_missing` says they are gone all the same.
    `journal`: the file that records what is being decoded (`inflight`), so a photo that
    killed an earlier run is decoded in a child process instead of killing this one.
    """
    started = time.monotonic()
    given = [os.path.abspath(r).rstrip(b"/") or b"/" for r in roots]
    roots = [os.path.realpath(r) for r in roots]
    if only is not None:  # the watcher names paths under the roots as configured (symlinks)
        only = [_under_real_root(p, given, roots) for p in only]
    extensions = scan.image_extensions(enable_heif())
    unreachable: set[bytes] = set()
    unread: set[bytes] = set()  # paths, so a folder under two roots counts once
    if only is None:
        found = scan.walk_all(roots, extensions, excluder, on_scan_error, unreachable, unread)
        scanned = {f.path: f for f in found}
        known = store.files_under(roots)
        looked_at = roots
    else:
        found = scan.look_at(only, roots, extensions, excluder, on_scan_error, unreachable)
        scanned = {f.path: f for f in found}
        known = store.files_at(list(only))
        looked_at = [r for r in roots if under_any(r, only)]  # a root itself deleted (unmounted)
    unreachable = {u.rstrip(b"/") or b"/" for u in unreachable}
    needs_rescan = False
    if forget_missing:  # a root that is no longer there too; unreadable folders stay unknown
        unreachable = {u for u in unreachable if not _no_such_path(u)}
    else:
        missing = _vanished(scanned, known, roots, excluder)
        for root in looked_at:  # an empty root that lost photos is an unmounted drive
            if not any(under_any(p, [root]) for p in scanned) and any(
                under_any(p, [root]) for p in missing
            ):
                unreachable.add(root)
        unreachable |= unmounted_folders(missing, known, roots, mounted_devices())
        if only is None:
            lost = mass_losses(missing, roots, lambda r: _live_under(known, r), unreachable)
        else:  # measured against the whole root, not just the part the walk looked at
            lost = mass_losses(missing, roots, store.live_count_under, unreachable)
        for root, (gone, live) in lost.items():
            # A full rescan: a flaky mount, not a purge, until --forget-missing says so. A
            # watcher walk sees one side of a big move, or a share that lists empty for a
            # moment: kept for now, and a full rescan, which sees both sides, decides.
            log.warning(
                "%d of the %d photos under %s vanished at once: kept as offline, not deleted; %s",
                gone,
                live,
                display_path(root),
                "a full rescan checks them"
                if only is not None
                else "a mount problem? If you removed them: imageclust index --forget-missing",
            )
        unreachable |= set(lost)
        needs_rescan = only is not None and bool(lost)
    work = plan(scanned.values(), known, unreachable)
    if work.to_read:  # moved here from a path an earlier run already saw leave
        elsewhere = store.departed([f.signature for f in work.to_read])
        if elsewhere:
            again = [
                FileRow(f, elsewhere[f.signature]) for f in work.to_read if f.signature in elsewhere
            ]
            work = replace(
                work,
                to_read=[f for f in work.to_read if f.signature not in elsewhere],
                known_again=work.known_again + again,
                moved=work.moved + len(again),
            )
    if work.offline:
        log.warning(
            "%d photos are under folders that are missing, empty or unreadable (%s); "
            "kept as offline, not deleted",
            len(work.offline),
            _some(sorted(display_path(u) for u in unreachable)),
        )
        store.set_offline(work.offline, True)
    if work.online:
        store.set_offline(work.online, False)

    if work.known_again:
        store.record([], work.known_again, [], model)
    gone = store.mark_gone(work.gone) if work.gone else 0
    if whole_library and only is None and not any(r in unreachable for r in roots):
        # (not while a root is missing: a mistyped root would forget the real one's photos)
        left = store.live_outside(roots)
        if left:
            log.info("%d photos are no longer under library.roots: forgotten", len(left))
            gone += store.mark_gone(left)

    if settle_seconds > 0:
        # Modified within the last settle_seconds: may still be being written. A time in
        # the future (a camera's wrong clock, kept by `cp -p`) says nothing of the kind:
        # deferring it would defer it forever.
        now = time.time_ns()
        cutoff, future = now - int(settle_seconds * 1e9), now + FUTURE_SLACK_NS
        deferred = [f.path for f in work.to_read if cutoff < f.mtime_ns <= future]
        if deferred:
            put_off = set(deferred)
            work = replace(work, to_read=[f for f in work.to_read if f.path not in put_off])
            if on_defer is not None:
                on_defer(deferred)

    settled = store.settled_hashes(model)
    to_read = list(work.to_read)
    queued = {f.path for f in to_read}
    for path in store.pending_contents(model, roots).values():
        if path in scanned and path not in queued:
            to_read.append(scanned[path])  # content seen before but never embedded (model change)

    report = IndexReport(
        scanned=len(scanned),
        unchanged=work.unchanged,
        moved=work.moved,
        returned=len(work.known_again) - work.moved,
        gone=gone,
        offline=len(work.offline),
        went_offline=sum(1 for p in work.offline if not known[p].offline),
        came_online=len(work.online),
        needs_rescan=needs_rescan,
        heif_unread=len(unread),
    )
    claims = Claims(settled)
    batch = _Batch()
    vanished: list[bytes] = []
    counts = {"hashed": 0, "bytes": 0, "embedded": 0, "reused": 0, "failed": 0}

    def flush() -> None:
        vectors = embedder.embed(np.stack(batch.pixels)) if batch.pixels else np.empty((0, 0))
        store.record(
            batch.contents, batch.files, zip(batch.pixel_hashes, vectors, strict=True), model
        )
        counts["embedded"] += len(batch.pixels)
        batch.__init__()  # type: ignore[misc]

    threads = workers or min(4, os.cpu_count() or 1)
    done = 0
    in_flight = InFlight(journal) if journal is not None else None
    if in_flight is not None and in_flight.suspects:
        log.warning(
            "%d photo(s) were being decoded when an earlier run stopped without finishing "
            "(killed, out of memory, or a crash in a decoder): each is decoded alone in a "
            "child process, and one that kills it is recorded as failed",
            len(in_flight.suspects),
        )
    with (
        contextlib.ExitStack() as cleanup,
        ThreadPoolExecutor(threads, thread_name_prefix="imageclust-read") as pool,
    ):
        if in_flight is not None:
            cleanup.callback(in_flight.close)
        work_fn = lambda f: prepare(f, claims, spec.preprocessing, in_flight)  # noqa: E731
        for item in ordered_map(pool, work_fn, to_read, ahead=2 * batch_size + threads):
            if stop is not None and stop.is_set():
                pool.shutdown(wait=True, cancel_futures=True)
                break
            done += 1
            if item.vanished:
                vanished.append(item.file.stat.path)
            elif item.file.error:
                counts["failed"] += 1
                batch.files.append(item.file)
                log.warning("%s: %s", display_path(item.file.stat.path), item.file.error)
            elif item.retry:
                counts["failed"] += 1
                assert item.content is not None
                batch.contents.append(item.content)
                batch.files.append(item.file)
            else:
                counts["hashed"] += 1
                counts["bytes"] += item.bytes_read
                assert item.content is not None
                batch.contents.append(item.content)
                batch.files.append(item.file)
                if item.pixels is not None:
                    batch.pixels.append(item.pixels)
                    batch.pixel_hashes.append(item.content.hash)
                elif item.content.error:
                    counts["failed"] += 1
                    log.warning("%s: %s", display_path(item.file.stat.path), item.content.error)
                elif not item.content.decoded:
                    counts["reused"] += 1
            if len(batch.pixels) >= batch_size or len(batch.files) >= 512:
                flush()
            if progress:
                progress(done, len(to_read))
        flush()
    if vanished:
        gone += store.mark_gone(vanished, reason="vanished while being indexed")
    store.checkpoint()
    return replace(
        report,
        hashed=counts["hashed"],
        bytes_read=counts["bytes"],
        embedded=counts["embedded"],
        reused=counts["reused"],
        failed=counts["failed"],
        gone=gone,
        seconds=time.monotonic() - started,
    )


# -- recluster ---------------------------------------------------------------------------------


def _digest(parts: Iterable[str]) -> str:
    h = blake3.blake3()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


UNFINISHED_SHARE = 0.10  # recluster waits while more than this share of contents lacks embeddings


def recluster(
    store: Store,
    model: str,
    *,
    min_size: int,
    max_size: int,
    force: bool = False,
    stop: threading.Event | None = None,
) -> ClusterRun:
    """Regroup the live library's distinct contents; keep ids; flag new and changed groups.

    Does nothing (and says so: `skipped`) when the model, the limits and the set of
    contents are those of the last run.
    """
    started, wall = time.monotonic(), time.time()
    counts = store.status(model)
    if not force and counts["pending"] > UNFINISHED_SHARE * counts["contents"]:
        # Right after a model switch almost nothing has the new model's embedding yet:
        # grouping now would retire every group (and its title) for nothing.
        return ClusterRun(
            model,
            min_size,
            max_size,
            "",
            skipped=True,
            note=f"indexing unfinished: {counts['pending']} of {counts['contents']} photos "
            "still need an embedding; run `imageclust index` first (or --force)",
        )
    hashes, x = store.live_embeddings(model)
    digest = _digest([model, str(min_size), str(max_size), *hashes])
    last = store.last_cluster_run()
    if last is not None and last.input_digest == digest and not force:
        return replace(last, skipped=True, note=f"nothing changed since run #{last.run_id}")
    try:
        result = cluster.cluster(
            x, min_size, max_size, cancelled=stop.is_set if stop is not None else cluster.never
        )
    except cluster.Cancelled:
        return ClusterRun(model, min_size, max_size, digest, skipped=True, note="stopped")
    labels = result.labels
    members: list[list[int]] = [[] for _ in range(result.n_clusters)]
    for i, group in enumerate(labels.tolist()):
        if group >= 0:
            members[group].append(i)
    previous = store.active_clusters()
    ids = cluster.match_clusters(
        previous,
        [{hashes[i] for i in group} for group in members],
        next_id=store.next_cluster_id(),
    )
    ranks = cluster.rank_members(x, labels) if len(hashes) else np.zeros(0, dtype=np.int64)
    groups = []
    for gid, group in zip(ids, members, strict=True):
        idx = np.asarray(group)
        centre = x[idx].astype(np.float64).sum(axis=0)
        centre /= np.linalg.norm(centre) or 1.0
        sims = x[idx].astype(np.float64) @ centre
        member_hashes = sorted(hashes[i] for i in group)
        groups.append(
            GroupRow(
                id=gid,
                members=tuple(
                    (hashes[i], int(ranks[i]), float(s)) for i, s in zip(group, sims, strict=True)
                ),
                centroid=centre.astype(np.float32),
                members_digest=_digest(member_hashes),
                is_new=gid not in previous,
                changed=gid not in previous or previous[gid] != set(member_hashes),
            )
        )
    kept = set(ids)
    retired = sorted(gid for gid in previous if gid not in kept)
    run = ClusterRun(
        model_id=model,
        min_size=min_size,
        max_size=max_size,
        input_digest=digest,
        started_at=wall,
        seconds=time.monotonic() - started,
        method=result.method,
        n_points=len(hashes),
        n_clusters=result.n_clusters,
        unclustered=int((labels < 0).sum()),
        new_clusters=sum(g.is_new for g in groups),
        changed_clusters=sum(g.changed and not g.is_new for g in groups),
        retired_clusters=len(retired),
    )
    run_id = store.save_clustering(run, groups, retired)
    return replace(run, run_id=run_id)


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


def _thumbnails(job: LabelJob) -> list[bytes]:
    images = []
    for path in job.representatives:
        try:
            with open(path, "rb") as f:
                images.append(decode.thumbnail_jpeg(f.read(), path=display_path(path)))
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
) -> LabelReport:
    """Title every group that needs it; only those. Never blocked by Ollama being down.

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

    problem: str | None = None
    try:
        if not client.has_model():
            problem = (
                f"model {client.model!r} is not on the server (run: ollama pull {client.model})"
            )
    except OllamaError as exc:
        problem = str(exc)
    down = threading.Event()
    if problem:
        down.set()
        # Ollama is away: a group whose fallback title is current keeps it as it is; only
        # new and changed groups need one now (a library without an LLM stays cheap).
        waiting = [job for job in waiting if job.needs_label or everything]
    todo: list[tuple[LabelJob, label.GroupFacts, Place | None]] = []
    for job in waiting:
        facts = store.group_facts(job.cluster_id)
        where = label.agreed_position(facts)  # a place only when most photos agree on it
        todo.append((job, facts, place_of(*where) if where else None))

    def ask(
        job: LabelJob, facts: label.GroupFacts, place: Place | None
    ) -> tuple[label.Label | None, bool]:
        """(the label or None, whether Ollama was asked)."""
        if down.is_set():
            return None, False
        images = _thumbnails(job)
        if not images:
            return None, False
        prompt = label.build_prompt(facts, str(place) if place else None, len(images), now=now)
        try:
            return client.label(prompt, images), True
        except (OllamaUnavailable, OllamaModelMissing) as exc:
            down.set()  # it will not answer the next group either: stop asking this run
            log.warning("group %d: %s", job.cluster_id, exc)
        except OllamaError as exc:
            log.warning("group %d: %s", job.cluster_id, exc)
        return None, True

    requested = ollama = fallback = 0
    answers = abandonable_map(lambda item: ask(*item), todo, parallel, stop, "imageclust-label")
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
    if down.is_set() and problem is None:
        problem = "Ollama stopped answering; the remaining groups got fallback titles"
    return LabelReport(
        len(jobs), cached, requested, ollama, fallback, changed, problem, time.monotonic() - started
    )


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


def _differs(job: LabelJob, new: label.Label) -> bool:
    return (job.title, job.catchy_phrase, job.label_source) != (
        new.title,
        new.catchy_phrase,
        new.source,
    )


# -- publish ---------------------------------------------------------------------------------


def publish(
    state_db: Path, catalog_path: Path, *, model_id: str | None, organize_dir: Path | None
) -> catalog.PublishReport:
    """State -> catalog (atomic swap) -> organized folder of symlinks (if configured)."""
    report = catalog.publish(state_db, catalog_path, model_id=model_id, daemon_version=__version__)
    if organize_dir is not None:
        organize.build(organize.groups_from_catalog(catalog_path), organize_dir)
    return report


def refresh_view(catalog_path: Path, organize_dir: Path | None) -> bool:
    """Build the organized view from the published catalog when it is missing or older than
    the catalog (organize.dir set after the last publish); True when it was built."""
    if organize_dir is None or not catalog_path.is_file():
        return False
    if organize.is_current(organize_dir, catalog_path):
        return False
    organize.build(organize.groups_from_catalog(catalog_path), organize_dir)
    return True


# -- model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    path: Path
    id: str
    embedder: Embedder


def model_id_of(spec: ModelSpec, path: Path, store: Store, *, remember: bool = True) -> str:
    """Name plus the file's sha256, the digest cached under the file's stat (350 MB to hash).
    `remember` False: a reader's store, which reads the cache but never writes it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelNotFoundError(str(path), spec.name) from None
    raw = os.fsencode(path.resolve())
    digest = store.cached_sha256(raw, st.st_size, st.st_mtime_ns)
    if digest is None:
        digest = file_sha256(path)
        if remember:
            store.remember_sha256(raw, st.st_size, st.st_mtime_ns, digest)
    return model_id(spec.name, digest)


def open_embedder(
    spec: ModelSpec, path: Path, *, threads: int = 0, providers: Sequence[str] = ("cpu",)
) -> Embedder:
    """An ONNX Runtime session over `path` on the first of `providers` that starts, its
    contract checked."""
    session = open_session(path, threads=threads, providers=providers)
    io = model_io(
        session,
        path=str(path),
        image_size=spec.preprocessing.crop,
        output_name=spec.vision.output_name,
    )
    return Embedder(session, io)


def load_model(
    spec: ModelSpec,
    path: Path,
    store: Store,
    *,
    threads: int = 0,
    providers: Sequence[str] = ("cpu",),
) -> LoadedModel:
    """Name the model by its file's sha256, open it and check its contract."""
    identity = model_id_of(spec, path, store)
    embedder = open_embedder(spec, path, threads=threads, providers=providers)
    return LoadedModel(spec, path, identity, embedder)


_heif_lock = threading.Lock()


def enable_heif() -> bool:
    """Register pillow-heif's opener once, if installed; True when HEIC/HEIF can be read."""
    with _heif_lock:
        if not scan.heif_available():
            return False
        import pillow_heif

        pillow_heif.register_heif_opener()
        return True
