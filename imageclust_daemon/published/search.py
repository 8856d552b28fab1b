"""Search by words and by example: the published snapshot of embeddings, and ranking.

The catalog stays small: it holds no embeddings. Beside it, each publish leaves a
snapshot of the current model's embeddings of the library's indexed photos, one
row per distinct content (duplicates count once), and the catalog names it in
`catalog_info` (`search_snapshot`, `search_token`). The snapshot is written on a
thread of its own, from its own read of the state database, beside the catalog's
build; its rows are checked against the catalog's own indexed photos, and written
again from those when the two reads differ, so a catalog and the snapshot it names
always agree. The file's name carries a digest of what it holds (model, contents,
offline flags): a publish that changes none of that keeps the file it has, and a
reader that opened the old catalog still finds the old file (the one before is
kept until the next change).

The snapshot format (little-endian), so any program can read it:

    offset 0    8 bytes   b"ICSEARCH"
    offset 8    4 bytes   uint32: the length H of the JSON header
    offset 12   H bytes   UTF-8 JSON: {"format": 1, "model": model id, "dim": D,
                          "count": N, "token": the digest, "hashes_offset",
                          "flags_offset", "matrix_offset": byte offsets}
    hashes      N x 32    each row's content hash (BLAKE3, raw bytes; the catalog's
                          `photos.content_hash` is its hex)
    flags       N x 1     1: every path of that content is offline now
    matrix      N x D     float32, L2-normalized embeddings, row i = hashes[i]

Sections start at multiples of 64 bytes. Rows are sorted by content hash. A
score is the cosine similarity between the query's embedding and the photo's
(CLIP's own measure; for words against photos it is usually 0.15-0.35, higher
is closer).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, TypeVar

import blake3
import numpy as np

from imageclust_daemon.config import Config
from imageclust_daemon.errors import ImageclustError, UsageError
from imageclust_daemon.index import decode, originals
from imageclust_daemon.model import models
from imageclust_daemon.model.embed import file_sha256, model_id
from imageclust_daemon.published.reader import reading
from imageclust_daemon.state.store import Store

MAGIC = b"ICSEARCH"
FORMAT = 1
_ALIGN = 64
_HASH_BYTES = 32
# Rows multiplied at once when ranking: bounds the memory beyond the mapped matrix to
# this many scores' worth of temporaries (4 MB of float32 at 1M photos).
_CHUNK_ROWS = 65_536

T = TypeVar("T")


class SearchError(ImageclustError):
    """Search cannot answer: no snapshot, a stale or damaged one, or no text model."""


class Republished(SearchError):
    """The catalog being read was replaced by a publish, and the snapshot it names with
    it: nothing is wrong; the reader opens the catalog again (`retrying`)."""


# A publish writes the snapshot again: `index` publishes, and so does the daemon soon
# after each start (and after any change).
REPAIR = "the next publish writes it again: imageclust index, or restart the daemon"


@dataclass(frozen=True)
class Snapshot:
    """An opened snapshot: its rows' content hashes, offline flags and embeddings (mapped)."""

    path: Path
    model: str
    token: str
    hashes: np.ndarray  # uint8 [N, 32]
    offline: np.ndarray  # bool [N]
    matrix: np.ndarray  # float32 [N, D], memory-mapped

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def hash_at(self, row: int) -> str:
        return bytes(self.hashes[row]).hex()

    def row_of(self, content_hash: str) -> int | None:
        """The row of a content hash (binary search: rows are sorted), or None."""
        try:
            key = np.frombuffer(bytes.fromhex(content_hash), dtype=np.uint8)
        except ValueError:
            return None
        if key.shape != (_HASH_BYTES,) or not len(self):
            return None
        keys = self.hashes.view(f"S{_HASH_BYTES}").ravel()
        row = int(np.searchsorted(keys, key.tobytes()))
        return row if row < len(self) and keys[row] == key.tobytes() else None


# -- writing (inside a catalog publish) --------------------------------------------------------


_ROWS = (
    "SELECT p.content_hash, min(p.offline) FROM photos p WHERE p.status = 'indexed' "
    "AND p.shown_as = p.content_hash GROUP BY p.content_hash ORDER BY p.content_hash"
)


def snapshot_name(catalog_name: str, token: str) -> str:
    return f"{catalog_name}.search-{token[:32]}"


@dataclass(frozen=True)
class Plan:
    """What a snapshot holds, its digest and its name."""

    name: str  # the file's name
    token: str  # the digest of what it holds
    model_id: str | None
    hashes: bytes  # the rows' content hashes, 32 raw bytes each, sorted
    offline: bytes  # a byte a row: 1 if every path of that content is offline
    there: bool  # a file with this content is in place already: nothing to write

    def __len__(self) -> int:
        return len(self.offline)


def catalog_rows(conn: sqlite3.Connection) -> Iterator[tuple[str, int]]:
    """The snapshot's rows as the catalog being built on `conn` has them (its `photos`
    filled): (content hash, 1 if every path is offline), sorted by content hash."""
    return iter(conn.execute(_ROWS))


def plan(
    rows: Iterable[tuple[str, int]], folder: Path, catalog_name: str, model_id: str | None
) -> Plan:
    """The snapshot of `rows` (sorted by content hash): its token, its name, and whether
    a file with that content is in `folder` already."""
    hashes, offline = bytearray(), bytearray()
    rows = iter(rows)
    while run := list(itertools.islice(rows, 65_536)):  # whole runs: 0.2 us a row, not 0.7
        hashes += bytes.fromhex("".join(content_hash for content_hash, _ in run))
        offline += bytes(1 if away else 0 for _, away in run)
    if len(hashes) != len(offline) * _HASH_BYTES:
        raise SearchError("snapshot: a content hash is not 32 bytes of hex")
    digest = blake3.blake3(f"{FORMAT}\n{model_id or ''}\n".encode())
    digest.update(hashes)
    digest.update(offline)
    token = digest.hexdigest()
    name = snapshot_name(catalog_name, token)
    there = False
    if (folder / name).is_file():
        with contextlib.suppress(SearchError):  # damaged: written again
            there = read(folder / name).token == token
    return Plan(name, token, model_id, bytes(hashes), bytes(offline), there)


class Cancelled(Exception):
    """The build the snapshot belonged to failed; its file was not put in place."""


def write(
    plan: Plan,
    state: sqlite3.Connection,
    folder: Path,
    catalog_name: str,
    cancel: threading.Event,
    previous: Path | None = None,
) -> None:
    """Write the planned snapshot into `folder` unless it is there, the embeddings read
    on `state` (a connection to the state database: it may run on a thread of its own,
    beside the catalog's build; SQLite and file writes let go of the GIL). `previous`:
    the snapshot written before; where at most `KEEP_SHARE` of the rows are new to it,
    the others' embeddings are copied from it and only the new ones read from the state.
    A missing embedding is a SearchError. Stops with Cancelled, leaving nothing, once
    `cancel` is set."""
    if plan.there:
        return
    kept = _kept_rows(previous, plan)
    vectors = _vectors(state, plan) if kept is None else _merged(state, plan, *kept)
    tmp = folder / f".{catalog_name}.{os.getpid()}.search.tmp"
    try:
        with open(tmp, "wb") as out:
            _write_file(out, vectors, plan, cancel)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, folder / plan.name)
    finally:
        tmp.unlink(missing_ok=True)


_RUN = 4096  # rows read, checked and written at once (one write a row: 5.7 s at 1M)


def _vectors(state: sqlite3.Connection, plan: Plan) -> Iterator[np.ndarray]:
    """The embeddings of the plan's rows, in its order, in blocks of up to `_RUN` rows
    (float32 [k, D]): one pass over the model's embeddings in content-hash order, the
    rows' hashes picked out as they come."""
    if plan.model_id is None or not len(plan):
        return
    found = state.execute(
        "SELECT content_hash, vector FROM published_embeddings WHERE model_id = ? "
        "ORDER BY content_hash",
        (plan.model_id,),
    )
    every = plan.hashes.hex()
    for start in range(0, len(plan), _RUN):
        run: list[bytes] = []
        for row in range(start, min(len(plan), start + _RUN)):
            wanted = every[row * 2 * _HASH_BYTES : (row + 1) * 2 * _HASH_BYTES]
            vector = _seek(found, wanted)
            if vector is None:
                raise SearchError(f"snapshot: no embedding of {wanted} by {plan.model_id}")
            run.append(vector)
        yield _block(run, plan)


def _block(run: list[bytes], plan: Plan) -> np.ndarray:
    if len(run[0]) % 4 or any(len(blob) != len(run[0]) or not blob for blob in run):
        raise SearchError(
            f"embeddings of {plan.model_id} differ in length or are not whole float32 "
            "vectors; cannot snapshot"
        )
    return np.frombuffer(b"".join(run), dtype="<f4").reshape(len(run), -1)


# A snapshot is written from the one before it where at most this share of its rows is
# new to it: their embeddings are read one by one from the state, the others copied from
# the file before (tests/bench/bench_search_update.py measures both ways).
KEEP_SHARE = 0.1


def _kept_rows(previous: Path | None, plan: Plan) -> tuple[Snapshot, np.ndarray] | None:
    """The snapshot before and, for each of the plan's rows, its row there (-1 where new),
    where that snapshot is readable, of the same model, and at most `KEEP_SHARE` of the
    plan's rows are new to it; else None (the snapshot is written from the state)."""
    if previous is None or plan.model_id is None or not len(plan):
        return None
    try:
        before = read(previous)
    except SearchError:
        return None
    if before.model != plan.model_id or not len(before):
        return None
    keys = before.hashes.view(f"S{_HASH_BYTES}").ravel()
    wanted = np.frombuffer(plan.hashes, dtype=f"S{_HASH_BYTES}")
    rows = np.searchsorted(keys, wanted)
    rows[rows >= len(keys)] = 0
    found = keys[rows] == wanted
    if (len(plan) - int(found.sum())) > KEEP_SHARE * len(plan):
        return None
    return before, np.where(found, rows, -1)


def _merged(
    state: sqlite3.Connection, plan: Plan, before: Snapshot, rows: np.ndarray
) -> Iterator[np.ndarray]:
    """The embeddings of the plan's rows, in its order and in blocks like `_vectors`:
    copied from `before` where `rows` has its row there, else read from the state."""
    for start in range(0, len(plan), _RUN):
        where = rows[start : start + _RUN]
        block = np.empty((len(where), before.dim), dtype="<f4")
        kept = where >= 0
        block[kept] = before.matrix[where[kept]]
        for i in np.flatnonzero(~kept).tolist():
            row = start + i
            wanted = plan.hashes[row * _HASH_BYTES : (row + 1) * _HASH_BYTES].hex()
            found = state.execute(
                "SELECT vector FROM published_embeddings WHERE content_hash = ? AND model_id = ?",
                (wanted, plan.model_id),
            ).fetchone()
            if found is None:
                raise SearchError(f"snapshot: no embedding of {wanted} by {plan.model_id}")
            if len(found[0]) != 4 * before.dim:
                raise SearchError(
                    f"embeddings of {plan.model_id} differ in length; cannot snapshot"
                )
            block[i] = np.frombuffer(found[0], dtype="<f4")
        yield block


def _seek(found: Iterator[tuple[str, bytes]], wanted: str) -> bytes | None:
    """The vector of `wanted` from `found` (sorted by hash), moved past it; None if absent."""
    for content_hash, vector in found:
        if content_hash == wanted:
            return vector
        if content_hash > wanted:
            return None
    return None


def _write_file(
    out: IO[bytes], blocks: Iterator[np.ndarray], plan: Plan, cancel: threading.Event
) -> None:
    first = next(blocks, None)
    dim = int(first.shape[1]) if first is not None else 0
    n = len(plan) if first is not None else 0
    header = {
        "format": FORMAT,
        "model": plan.model_id or "",
        "dim": dim,
        "count": n,
        "token": plan.token,
    }
    # The offsets depend on the header's length, which depends on the offsets' digits:
    # reserve room for the largest offsets this file can have, then fill them in.
    reserve = {"hashes_offset": 10**15, "flags_offset": 10**15, "matrix_offset": 10**15}
    start = _aligned(12 + len(json.dumps({**header, **reserve}).encode()))
    hashes_at = start
    flags_at = _aligned(hashes_at + n * _HASH_BYTES)
    matrix_at = _aligned(flags_at + n)
    header.update(hashes_offset=hashes_at, flags_offset=flags_at, matrix_offset=matrix_at)
    encoded = json.dumps(header).encode()
    out.write(MAGIC + struct.pack("<I", len(encoded)) + encoded)
    _pad_to(out, hashes_at)
    if n:
        out.write(plan.hashes)
    _pad_to(out, flags_at)
    if n:
        out.write(plan.offline)
    _pad_to(out, matrix_at)
    for block in itertools.chain([first], blocks) if first is not None else ():
        if cancel.is_set():
            raise Cancelled
        if block.shape[1] != dim:
            raise SearchError(f"embeddings of {plan.model_id} differ in length; cannot snapshot")
        out.write(block.tobytes())


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _pad_to(out: IO[bytes], offset: int) -> None:
    out.write(b"\0" * (offset - out.tell()))


def remove_unnamed(folder: Path, catalog_name: str, keep: set[str]) -> None:
    """Remove the snapshots of `catalog_name` other than `keep` (best effort)."""
    prefix = f"{catalog_name}.search-"
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name not in keep:
            try:
                (folder / name).unlink()
            except OSError:
                continue


# -- reading -----------------------------------------------------------------------------------


def read(path: Path) -> Snapshot:
    """Open and check a snapshot file; SearchError saying what is wrong with it."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:8] != MAGIC:
                raise SearchError(f"{path}: not a search snapshot")
            (length,) = struct.unpack("<I", head[8:])
            header = json.loads(f.read(length).decode("utf-8"))
        size = path.stat().st_size
    except FileNotFoundError:
        raise SearchError(f"{path}: the search snapshot is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, struct.error) as exc:
        raise SearchError(f"{path}: cannot read the search snapshot: {exc}") from None
    try:
        n, dim = int(header["count"]), int(header["dim"])
        offsets = [int(header[k]) for k in ("hashes_offset", "flags_offset", "matrix_offset")]
        if header["format"] != FORMAT:
            raise SearchError(f"{path}: snapshot format {header['format']}, expected {FORMAT}")
        token, model = str(header["token"]), str(header["model"])
    except (KeyError, TypeError, ValueError):
        raise SearchError(f"{path}: the search snapshot's header is damaged") from None
    if n < 0 or dim < 0 or size != offsets[2] + n * dim * 4:
        raise SearchError(f"{path}: the search snapshot is truncated or damaged")
    if n == 0:
        empty = np.zeros((0, dim), dtype=np.float32)
        return Snapshot(path, model, token, np.zeros((0, 32), np.uint8), np.zeros(0, bool), empty)
    hashes = np.memmap(path, dtype=np.uint8, mode="r", offset=offsets[0], shape=(n, _HASH_BYTES))
    flags = np.memmap(path, dtype=np.uint8, mode="r", offset=offsets[1], shape=(n,))
    matrix = np.memmap(path, dtype="<f4", mode="r", offset=offsets[2], shape=(n, dim))
    return Snapshot(path, model, token, hashes, flags.astype(bool), matrix)


def open_for(catalog_path: Path, *, conn: sqlite3.Connection | None = None) -> Snapshot:
    """The snapshot the catalog at `catalog_path` names, checked to be the one it was
    published with. `conn`: a read of that catalog already open (a gallery page's, so
    the page reads one catalog even while a publish swaps in the next)."""

    if conn is None and not catalog_path.is_file():
        raise SearchError(
            f"no catalog at {catalog_path}: index the library first (imageclust index)"
        )
    try:
        with reading(catalog_path, conn) as db:
            info = dict(db.execute("SELECT key, value FROM catalog_info").fetchall())
    except sqlite3.Error as exc:
        raise SearchError(f"{catalog_path}: cannot read the catalog: {exc}") from None
    name, token = info.get("search_snapshot"), info.get("search_token")
    if not name or not token:
        raise SearchError(
            f"{catalog_path} has no search snapshot (published by an older imageclust); " + REPAIR
        )
    try:
        snapshot = read(catalog_path.parent / name)
    except SearchError as exc:
        if not (catalog_path.parent / name).exists() and named_snapshot(catalog_path) != name:
            # A publish (or two) since this read of the catalog began: its snapshot is
            # gone with it; the catalog now names another. Read the new one.
            raise Republished(f"{catalog_path} was published again while it was read") from None
        raise SearchError(f"{exc}; {REPAIR}") from None
    if snapshot.token != token:
        raise SearchError(
            f"{snapshot.path} is not the snapshot {catalog_path} was published with; {REPAIR}"
        )
    return snapshot


def retrying(read: Callable[[], T], tries: int = 3) -> T:
    """`read()`, again (with a new read of the catalog) when a publish replaced the
    catalog it was reading (`Republished`); the last try's error stands."""
    for _ in range(tries - 1):
        try:
            return read()
        except Republished:
            continue
    return read()


def named_snapshot(catalog_path: Path) -> str | None:
    """The snapshot the catalog at `catalog_path` names now (a fresh read); None when it
    cannot be read."""
    try:
        with reading(catalog_path) as db:
            row = db.execute(
                "SELECT value FROM catalog_info WHERE key = 'search_snapshot'"
            ).fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row and row[0] else None


# -- ranking -----------------------------------------------------------------------------------


def rank(
    snapshot: Snapshot, query: np.ndarray, limit: int, *, exclude: int | None = None
) -> list[tuple[int, float]]:
    """The `limit` rows most similar to `query` (L2-normalized [D]), best first, as
    (row, cosine similarity); `exclude`: a row left out (the example itself)."""
    n = len(snapshot)
    if query.shape != (snapshot.dim,):
        raise SearchError(
            f"the query has {query.shape[-1]} dimensions, the snapshot {snapshot.dim}: "
            "it was made with another model"
        )
    if n == 0 or limit <= 0:
        return []
    q = query.astype(np.float32)
    scores = np.empty(n, dtype=np.float32)
    for start in range(0, n, _CHUNK_ROWS):
        end = start + _CHUNK_ROWS
        np.matmul(snapshot.matrix[start:end], q, out=scores[start:end])
    if exclude is not None:
        scores[exclude] = -np.inf
    k = min(limit, n - (exclude is not None))
    if k <= 0:
        return []
    top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    top = top[np.lexsort((top, -scores[top]))]  # best first; ties by row, so stable
    return [(int(r), float(scores[r])) for r in top if np.isfinite(scores[r])]


@dataclass(frozen=True)
class Hit:
    """One distinct photo found: its score, every path it lives at, its album."""

    score: float
    content_hash: str
    paths: list[str]
    cluster_id: int | None
    title: str | None
    offline: bool


def hits(
    catalog_path: Path,
    snapshot: Snapshot,
    ranked: list[tuple[int, float]],
    *,
    conn: sqlite3.Connection | None = None,
) -> list[Hit]:
    """The ranked rows as the catalog describes them, in rank order (`conn`: as in
    `open_for`)."""

    wanted = {snapshot.hash_at(row): (row, score) for row, score in ranked}
    found: dict[str, tuple[list[str], int | None, str | None]] = {}
    try:
        with reading(catalog_path, conn) as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (hash TEXT PRIMARY KEY)")
            db.execute("DELETE FROM temp.wanted")
            db.executemany("INSERT INTO temp.wanted VALUES (?)", [(h,) for h in wanted])
            # A photo's own files first, then the RAW of a RAW+JPEG pair it shows.
            for content_hash, path, cluster_id, title in db.execute(
                "SELECT p.shown_as, p.path, p.cluster_id, c.title FROM photos p "
                "JOIN temp.wanted w ON w.hash = p.shown_as "
                "LEFT JOIN clusters c ON c.id = p.cluster_id "
                "WHERE p.status = 'indexed' ORDER BY p.content_hash != p.shown_as, p.path"
            ):
                paths, _, _ = found.setdefault(content_hash, ([], cluster_id, title))
                paths.append(path)
    except sqlite3.Error as exc:
        raise SearchError(f"{catalog_path}: cannot read the catalog: {exc}") from None
    out = []
    for content_hash, (row, score) in wanted.items():
        if content_hash not in found:
            continue  # (cannot happen with a matching snapshot; never show a pathless hit)
        paths, cluster_id, title = found[content_hash]
        out.append(Hit(score, content_hash, paths, cluster_id, title, bool(snapshot.offline[row])))
    return out


# -- the two ways in ---------------------------------------------------------------------------


WordsModel = Callable[[models.Located, int], models.TextModel]  # (files, vision dim) -> model


def open_words(cfg: Config) -> WordsModel:
    """Opens the configured text model for a vision dimension, each time it is called."""

    def opener(located: models.Located, dim: int) -> models.TextModel:
        return models.open_text_model(
            located, vision_dim=dim, threads=cfg.model.threads, providers=cfg.model.providers
        )

    return opener


def by_words(
    cfg: Config,
    text: str,
    limit: int,
    *,
    words: WordsModel | None = None,
    conn: sqlite3.Connection | None = None,
) -> list[Hit]:
    """The photos whose embedding is closest to `text`'s, best first. `words`: how the
    text model is had (default: opened now; the gallery keeps one loaded); `conn`: as in
    `open_for`."""
    if not text.strip():
        raise UsageError('nothing to search for: give some words, e.g. "dog on a beach"')
    snapshot = open_for(cfg.catalog_path, conn=conn)
    if not len(snapshot):
        return []
    located = models.locate(cfg)
    name = snapshot.model.partition("@")[0]
    if name != located.spec.name:
        raise SearchError(
            f"the catalog was made with {name}, the config names {located.spec.name}: "
            "index the library with it first (imageclust index)"
        )
    query = (words or open_words(cfg))(located, snapshot.dim).embed([text])[0]
    return hits(cfg.catalog_path, snapshot, rank(snapshot, query, limit), conn=conn)


def like_row(
    catalog_path: Path,
    snapshot: Snapshot,
    row: int,
    limit: int,
    *,
    conn: sqlite3.Connection | None = None,
) -> list[Hit]:
    """The photos most like the snapshot's `row`, that photo left out."""
    query = np.asarray(snapshot.matrix[row], dtype=np.float32)
    return hits(catalog_path, snapshot, rank(snapshot, query, limit, exclude=row), conn=conn)


def by_example(cfg: Config, path: Path, limit: int) -> list[Hit]:
    """The photos most like the image at `path`: a photo of the library (its own
    embedding; it is left out of the answer) or any image file (embedded now)."""
    snapshot = open_for(cfg.catalog_path)
    try:
        with originals.opened(path) as (f, _):
            digest = blake3.blake3()
            while chunk := f.read(originals.CHUNK):
                digest.update(chunk)
            row = snapshot.row_of(_shown_as(cfg.catalog_path, digest.hexdigest()))
            if row is not None:
                return like_row(cfg.catalog_path, snapshot, row, limit)
            if not len(snapshot):
                return []
            f.seek(0)
            query = _embed_image(cfg, f, str(path), snapshot.model)
    except IsADirectoryError:
        raise UsageError(f"PATH {path}: a folder, not an image") from None
    except originals.NotAFile as exc:  # a folder, a FIFO, a device such as /dev/zero
        raise UsageError(f"PATH {path}: {exc.strerror}, not an image") from None
    except FileNotFoundError:
        raise UsageError(f"PATH {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"PATH {path}: cannot read it: {exc.strerror or exc}") from None
    return hits(cfg.catalog_path, snapshot, rank(snapshot, query, limit))


def _shown_as(catalog_path: Path, content_hash: str) -> str:
    """The photo a content is in the catalog: itself, or the JPEG that shows a paired RAW."""

    try:
        with reading(catalog_path) as conn:
            found = conn.execute(
                "SELECT shown_as FROM photos WHERE content_hash = ? LIMIT 1", (content_hash,)
            ).fetchone()
    except sqlite3.Error as exc:
        raise SearchError(f"{catalog_path}: cannot read the catalog: {exc}") from None
    return str(found[0]) if found and found[0] else content_hash


def _embed_image(cfg: Config, data: BinaryIO, shown: str, snapshot_model: str) -> np.ndarray:
    located = models.locate(cfg)
    spec, vision = located.spec, located.vision_path
    if not vision.is_file():
        raise SearchError(f"the vision model is not at {vision}: imageclust models download")
    if cfg.state_db_path.is_file():
        with Store.open_readonly(cfg.state_db_path) as store:
            identity = models.model_id_of(spec, vision, store, remember=False)
    else:
        identity = model_id(spec.name, file_sha256(vision))
    if identity != snapshot_model:
        raise SearchError(
            f"the catalog was made with {snapshot_model}, the configured model is {identity}: "
            "index the library with it first (imageclust index)"
        )
    decoded = decode.decode(data, spec.preprocessing, path=shown)
    embedder = models.open_embedder(
        spec, vision, threads=cfg.model.threads, providers=cfg.model.providers
    )
    return np.asarray(embedder.embed(decoded.pixels[None])[0], dtype=np.float32)
