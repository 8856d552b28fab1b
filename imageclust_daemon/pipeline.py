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

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import blake3
import numpy as np

from imageclust_daemon import cluster, decode, scan
from imageclust_daemon.embed import Embedder, file_sha256, model_id, model_io, open_session
from imageclust_daemon.errors import DecodeError, ModelNotFoundError
from imageclust_daemon.records import (
    ClusterRun,
    ContentRow,
    FileRow,
    FileStat,
    GroupRow,
    IndexReport,
    KnownFile,
    ModelSpec,
    Preprocessing,
    display_path,
)
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


def plan(scanned: Iterable[FileStat], known: dict[bytes, KnownFile]) -> Plan:
    """Sort the scanned files by the work they need. No I/O."""
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
    gone = [p for p, k in known.items() if k.live and p not in seen]
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
    return Plan(unchanged, to_read, known_again, moved, gone)


# -- read, hash, decode (worker threads) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """One file after a worker read it: its hash, and pixels when its content needs embedding."""

    file: FileRow
    content: ContentRow | None = None
    pixels: np.ndarray | None = None
    bytes_read: int = 0
    vanished: bool = False


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


def read_file(path: bytes) -> tuple[FileStat, bytes]:
    """The file's bytes and its signature as of this read (it may have changed since the scan)."""
    with open(path, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        data = f.read()
    return FileStat(path, len(data), st.st_mtime_ns, st.st_ino, st.st_dev), data


def prepare(stat: FileStat, claims: Claims, spec: Preprocessing) -> Prepared:
    try:
        current, data = read_file(stat.path)
    except FileNotFoundError:
        return Prepared(FileRow(stat, None, "vanished while being indexed"), vanished=True)
    except OSError as exc:
        return Prepared(FileRow(stat, None, f"cannot read: {exc.strerror or exc}"))
    content_hash = blake3.blake3(data).hexdigest()
    row = FileRow(current, content_hash)
    if not claims.claim(content_hash):
        return Prepared(row, ContentRow(content_hash, len(data)), bytes_read=len(data))
    try:
        decoded = decode.decode(data, spec, path=display_path(stat.path))
    except DecodeError as exc:
        content = ContentRow(content_hash, len(data), decoded=True, error=exc.reason)
        return Prepared(row, content, bytes_read=len(data))
    content = ContentRow(content_hash, len(data), decoded=True, meta=decoded.meta)
    return Prepared(row, content, decoded.pixels, bytes_read=len(data))


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
    embedder: Embedder,
    spec: ModelSpec,
    model: str,
    excluder: scan.Excluder = scan.NO_EXCLUDES,
    workers: int = 0,
    batch_size: int = 16,
    progress: Progress | None = None,
    on_scan_error: scan.OnError = scan._ignore,
) -> IndexReport:
    """Scan `roots`, read what changed, embed what is new, forget nothing. Returns the counts."""
    started = time.monotonic()
    roots = [os.path.abspath(r) for r in roots]
    extensions = scan.image_extensions(enable_heif())
    scanned = {f.path: f for f in scan.walk_all(roots, extensions, excluder, on_scan_error)}
    work = plan(scanned.values(), store.files_under(roots))

    if work.known_again:
        store.record([], work.known_again, [], model)
    gone = store.mark_gone(work.gone) if work.gone else 0

    settled = store.settled_hashes(model)
    to_read = list(work.to_read)
    queued = {f.path for f in to_read}
    for path in store.pending_contents(model, roots).values():
        if path in scanned and path not in queued:
            to_read.append(scanned[path])  # content seen before but never embedded (model change)

    report = IndexReport(
        scanned=len(scanned), unchanged=work.unchanged, moved=work.moved, gone=gone
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
    with ThreadPoolExecutor(threads, thread_name_prefix="imageclust-read") as pool:
        work_fn = lambda f: prepare(f, claims, spec.preprocessing)  # noqa: E731
        for item in ordered_map(pool, work_fn, to_read, ahead=2 * batch_size + threads):
            done += 1
            if item.vanished:
                vanished.append(item.file.stat.path)
            elif item.file.error:
                counts["failed"] += 1
                batch.files.append(item.file)
                log.warning("%s: %s", display_path(item.file.stat.path), item.file.error)
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


def recluster(
    store: Store, model: str, *, min_size: int, max_size: int, force: bool = False
) -> ClusterRun:
    """Regroup the live library's distinct contents; keep ids; flag new and changed groups.

    Does nothing (and says so: `skipped`) when the model, the limits and the set of
    contents are those of the last run.
    """
    started, wall = time.monotonic(), time.time()
    hashes, x = store.live_embeddings(model)
    digest = _digest([model, str(min_size), str(max_size), *hashes])
    last = store.last_cluster_run()
    if last is not None and last.input_digest == digest and not force:
        return replace(last, skipped=True)
    result = cluster.cluster(x, min_size, max_size)
    labels = result.labels
    members: list[list[int]] = [[] for _ in range(result.n_clusters)]
    for i, label in enumerate(labels.tolist()):
        if label >= 0:
            members[label].append(i)
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


# -- model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    path: Path
    id: str
    embedder: Embedder


def model_id_of(spec: ModelSpec, path: Path, store: Store) -> str:
    """Name plus the file's sha256, the digest cached under the file's stat (350 MB to hash)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelNotFoundError(str(path), spec.name) from None
    raw = os.fsencode(path.resolve())
    digest = store.cached_sha256(raw, st.st_size, st.st_mtime_ns)
    if digest is None:
        digest = file_sha256(path)
        store.remember_sha256(raw, st.st_size, st.st_mtime_ns, digest)
    return model_id(spec.name, digest)


def load_model(spec: ModelSpec, path: Path, store: Store, *, threads: int = 0) -> LoadedModel:
    """Open the ONNX file and check its contract."""
    identity = model_id_of(spec, path, store)
    session = open_session(path, threads=threads)
    io = model_io(
        session,
        path=str(path),
        image_size=spec.preprocessing.crop,
        output_name=spec.output_name,
    )
    return LoadedModel(spec, path, identity, Embedder(session, io))


_heif_lock = threading.Lock()


def enable_heif() -> bool:
    """Register pillow-heif's opener once, if installed; True when HEIC/HEIF can be read."""
    with _heif_lock:
        if not scan.heif_available():
            return False
        import pillow_heif

        pillow_heif.register_heif_opener()
        return True
