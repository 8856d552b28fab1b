"""The published catalog: a small read-only SQLite snapshot that any program can query.

Built from the state database into a temporary file beside the destination, in
one transaction that reads one consistent snapshot of the state (WAL), then
fsynced, made read-only (0444) and renamed over the old catalog, and the folder
fsynced. A reader holding the old file keeps reading the old inode; a new
connection sees the new one; nobody ever sees half a catalog, and no reader can
block a publish. Rollback journal (never WAL), so any reader, even with
`immutable=1`, is safe.

Paths: `path` is the file's path as text: exactly the path for every name that
is valid UTF-8; for a name that is not, each undecodable byte is written as
`\\xNN`. `path_bytes` holds every path's exact bytes, so `CAST(path_bytes AS ...)`
or reading the BLOB round-trips any name. In the contrived case where that escaped
form reads exactly like another file's path (a real name spelled with backslashes),
it gets " (2)", " (3)", ... appended, so `path` stays a key and a publish never fails.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from imageclust_daemon.durable import fsync_dir, process_alive
from imageclust_daemon.durable import sqlite_uri as uri
from imageclust_daemon.errors import DatabaseError, ImageclustError, QueryRefused
from imageclust_daemon.grouping import label, places
from imageclust_daemon.index import pairs
from imageclust_daemon.published import search
from imageclust_daemon.published.reader import open_catalog, reading
from imageclust_daemon.state.migrate import statements
from imageclust_daemon.state.store import EMBEDDED_BY, PHOTO_STATUS, READ_MMAP_BYTES, Store

# 2: photos.place and photos.format; full-text search (FTS5) over photos (path, place) and clusters
#    (title, catchy_phrase); catalog_info names the search snapshot.
# 3: photos.shown_as: the RAW of a RAW+JPEG pair is shown as (and grouped with) its JPEG.
# 4: events (moments, days out, trips) and photos.event_id; album titles unique.
# 5: photos.taken_at_source.
SCHEMA_VERSION = 5

SCHEMA = """
CREATE TABLE photos (
    path          TEXT PRIMARY KEY,        -- the path; undecodable bytes as \\xNN
    path_bytes    BLOB NOT NULL,           -- the exact bytes of the path
    content_hash  TEXT,                    -- BLAKE3 of the bytes (NULL if unreadable)
    size          INTEGER,
    width         INTEGER,                 -- as displayed (EXIF orientation applied)
    height        INTEGER,
    taken_at      TEXT,                    -- ISO 8601, with offset when the camera wrote one
    lat           REAL,
    lon           REAL,
    place         TEXT,                    -- the nearest named place ("Paris, France")
    format        TEXT,                    -- as its bytes say: JPEG, HEIF, PNG, DNG, CR3, ...
    shown_as      TEXT,                    -- the photo this file is: its content_hash, or for
                                           -- the RAW of a RAW+JPEG pair the JPEG's
    cluster_id    INTEGER,                 -- NULL when in no group (a pair's RAW: its JPEG's)
    event_id      INTEGER,                 -- NULL without a capture time (a pair's RAW: its JPEG's)
    status        TEXT NOT NULL CHECK (status IN ('indexed', 'pending', 'failed')),
    error         TEXT,                    -- why, when status is 'failed'
    offline       INTEGER NOT NULL DEFAULT 0,  -- 1: its folder is unreachable right now
    taken_at_source TEXT                   -- which record gave taken_at: exif, xmp, iptc,
                                           -- exif-modified (the file's last change) or raw
);
CREATE TABLE clusters (
    id            INTEGER PRIMARY KEY,     -- stable across runs, never reused
    title         TEXT,
    catchy_phrase TEXT,
    size          INTEGER NOT NULL,        -- distinct photos (duplicates count once)
    label_source  TEXT,                    -- 'ollama' or 'fallback'
    updated_at    TEXT NOT NULL            -- ISO 8601 UTC: membership or title last changed
);
CREATE TABLE cluster_members (
    cluster_id    INTEGER NOT NULL,
    content_hash  TEXT NOT NULL,
    rank          INTEGER NOT NULL,        -- 0 = closest to the group's centroid
    PRIMARY KEY (cluster_id, content_hash)
) WITHOUT ROWID;
CREATE TABLE events (
    id            INTEGER PRIMARY KEY,     -- stable: an event no new photo touches keeps its id
    title         TEXT NOT NULL,           -- where and when, unique across events
    started_at    TEXT NOT NULL,           -- capture time of its first photo, as EXIF has it
    ended_at      TEXT NOT NULL,           -- of its last photo
    place         TEXT,                    -- where most of its positioned photos were taken
    lat           REAL,
    lon           REAL,
    size          INTEGER NOT NULL,        -- distinct photos
    kind          TEXT NOT NULL CHECK (kind IN ('moment', 'day', 'trip'))
);
CREATE TABLE catalog_info (
    key           TEXT PRIMARY KEY,
    value         TEXT
);
CREATE VIEW cluster_photos AS
    SELECT c.id AS cluster_id, c.title AS title, p.path AS path, m.rank AS rank,
           m.rank < 3 AS representative
    FROM clusters c
    JOIN cluster_members m ON m.cluster_id = c.id
    JOIN photos p ON p.shown_as = m.content_hash;
"""

INDEXES = """
CREATE INDEX photos_by_cluster ON photos(cluster_id);
CREATE INDEX photos_by_event ON photos(event_id);
CREATE INDEX photos_by_hash ON photos(content_hash);
CREATE INDEX photos_by_photo ON photos(shown_as);
CREATE INDEX photos_by_date ON photos(taken_at);
CREATE INDEX photos_by_status ON photos(status);
"""


BUILD_CACHE_KB = 256 << 10  # 256 MB per database, for the build only


def text_path(raw: bytes) -> str:
    """The catalog's text form of a path: exact when valid UTF-8, else bytes as \\xNN."""
    return raw.decode("utf-8", "backslashreplace")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def escaped_texts(escaped: list[bytes], exact: Callable[[str], bool]) -> dict[bytes, str]:
    """Distinct text forms for the paths that are not valid UTF-8 (`escaped`, sorted).

    `exact(text)` says whether some valid UTF-8 path reads `text`. An escaped form that
    collides with it, or with an earlier escaped one, gets " (2)", " (3)", ... appended.
    """
    texts: dict[bytes, str] = {}
    used: set[str] = set()
    for raw in escaped:
        base = text = text_path(raw)
        n = 1
        while text in used or exact(text):
            n += 1
            text = f"{base} ({n})"
        used.add(text)
        texts[raw] = text
    return texts


@dataclass(frozen=True)
class PublishReport:
    path: Path
    photos: int
    clusters: int
    bytes: int
    seconds: float
    unchanged: bool = False  # built from these very inputs before: left as it was


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or 0, UTC).isoformat(timespec="seconds")


def publish(
    state_db: Path,
    dest: Path,
    *,
    model_id: str | None,
    daemon_version: str,
    pair_raw_jpeg: bool = True,
) -> PublishReport:
    """Build the catalog from `state_db` and swap it in at `dest` atomically; where the
    catalog there was built from the very same inputs (`inputs`), leave it as it is."""
    started = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(dest)
    settings = _settings(model_id, daemon_version, pair_raw_jpeg)
    built = _built_from(dest)
    if built is not None and built == inputs(state_db, settings):
        with reading(dest) as conn:
            photos = conn.execute("SELECT count(*) FROM photos").fetchone()[0]
            clusters = conn.execute("SELECT count(*) FROM clusters").fetchone()[0]
        return PublishReport(
            dest, photos, clusters, dest.stat().st_size, time.monotonic() - started, True
        )
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    before = search.named_snapshot(dest)
    try:
        snapshot = _build(
            state_db,
            tmp,
            dest,
            model_id=model_id,
            daemon_version=daemon_version,
            pair_raw_jpeg=pair_raw_jpeg,
            settings=settings,
        )
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot publish the catalog to {dest}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    # A reader that opened the catalog before the swap may still open the snapshot it names.
    search.remove_unnamed(dest.parent, dest.name, {snapshot} | ({before} if before else set()))
    with reading(dest) as conn:
        photos = conn.execute("SELECT count(*) FROM photos").fetchone()[0]
        clusters = conn.execute("SELECT count(*) FROM clusters").fetchone()[0]
    return PublishReport(dest, photos, clusters, dest.stat().st_size, time.monotonic() - started)


def _settings(model_id: str | None, daemon_version: str, pair_raw_jpeg: bool) -> str:
    """What besides the state a catalog's content depends on."""
    return f"schema {SCHEMA_VERSION}; model {model_id or ''}; imageclust {daemon_version}; " + (
        f"pairs {int(pair_raw_jpeg)}"
    )


def inputs(state_db: Path, settings: str) -> str | None:
    """The inputs a catalog built now would have: the state's published version (moved
    by every write the catalog would show, state migration 12) and the settings; None
    where the state cannot tell (a database before that migration)."""
    try:
        conn = sqlite3.connect(uri(state_db, mode="ro"), uri=True)
        try:
            row = conn.execute("SELECT version FROM published_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return f"{row[0]}; {settings}" if row else None


def _built_from(dest: Path) -> str | None:
    """The inputs the catalog at `dest` was built from, where it is whole: readable, and
    the search snapshot it names there, whole, and the one it was built with."""
    try:
        with reading(dest) as conn:
            info = dict(conn.execute("SELECT key, value FROM catalog_info"))
    except (OSError, sqlite3.Error, ImageclustError):
        return None
    snapshot = info.get("search_snapshot")
    if not snapshot:
        return None
    try:
        if search.read(dest.parent / snapshot).token != info.get("search_token"):
            return None
    except search.SearchError:
        return None
    return info.get("inputs")


def remove_dead_temps(dest: Path) -> list[Path]:
    """Remove the temporary catalogs (``.<name>.<pid>.tmp``) and search snapshots
    (``.<name>.<pid>.search.tmp``) that processes now dead left
    beside `dest` when they were killed mid-publish; those of a live process stay."""
    removed: list[Path] = []
    prefix = f".{dest.name}."
    try:
        names = os.listdir(dest.parent)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid_text = name[len(prefix) : -len(".tmp")].removesuffix(".search")
        if not (pid_text.isascii() and pid_text.isdigit() and len(pid_text) <= 9):
            continue  # not one of ours (PIDs fit in 9 digits: Linux's limit is 4,194,304)
        pid = int(pid_text)
        if pid == os.getpid() or process_alive(pid):
            continue
        try:
            (dest.parent / name).unlink()
        except OSError:
            continue
        removed.append(dest.parent / name)
    return removed


def _build(
    state_db: Path,
    tmp: Path,
    dest: Path,
    *,
    model_id: str | None,
    daemon_version: str,
    pair_raw_jpeg: bool,
    settings: str,
) -> str:
    """Build the catalog in `tmp` and its search snapshot beside `dest`; returns the
    snapshot's file name."""
    conn = sqlite3.connect(uri(tmp), uri=True, isolation_level=None)
    try:
        conn.create_function("is_utf8", 1, _is_utf8, deterministic=True)
        conn.execute("PRAGMA journal_mode = OFF")  # a private temp file: no journal needed
        conn.execute("PRAGMA synchronous = OFF")  # fsynced once, before the rename
        # Sorts for the indexes in memory, and a page cache that holds them (SQLite's
        # default is 2 MB).
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute(f"PRAGMA cache_size = -{BUILD_CACHE_KB}")
        conn.execute("ATTACH ? AS state", (uri(state_db, mode="ro"),))
        conn.execute(f"PRAGMA state.cache_size = -{BUILD_CACHE_KB}")
        conn.execute(f"PRAGMA state.mmap_size = {READ_MMAP_BYTES}")
        conn.execute("BEGIN")  # one read snapshot of the state for the whole build
        for statement in statements(SCHEMA):
            conn.execute(statement)
        version = conn.execute("SELECT version FROM state.published_version").fetchone()
        built_from = f"{version[0]}; {settings}" if version else ""
        # The state is read through its published_* views (migration 9), never its tables.
        conn.execute(
            "INSERT INTO cluster_members (cluster_id, content_hash, rank) "
            "SELECT cluster_id, content_hash, rank FROM state.published_album_members"
        )
        # before photos are joined to it: without it that join is quadratic (580 s at 100k)
        conn.execute("CREATE INDEX members_by_hash ON cluster_members(content_hash)")
        conn.execute(
            "INSERT INTO clusters (id, title, catchy_phrase, size, label_source, updated_at) "
            "SELECT id, title, catchy_phrase, size, label_source, updated_at "
            "FROM state.published_albums"
        )
        _distinct_album_titles(conn, state_db)
        conn.execute(
            "INSERT INTO events (id, title, started_at, ended_at, place, lat, lon, size, kind) "
            "SELECT id, title, started_at, ended_at, place, lat, lon, size, kind "
            "FROM state.published_events"
        )
        escaped = [
            raw
            for (raw,) in conn.execute(
                "SELECT path FROM state.published_files WHERE NOT is_utf8(path) ORDER BY path"
            )
        ]
        texts = escaped_texts(escaped, lambda text: _is_live(conn, text.encode()))
        shown = pairs.find(conn, model_id, schema="state") if pair_raw_jpeg else {}
        cancel = threading.Event()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot") as pool:
            # The search snapshot is written on another thread, beside the rest of the
            # build: at 1M photos it is 2 GB, read and written in ~15 s.
            early = pool.submit(_write_snapshot, state_db, shown, dest, model_id, cancel)
            try:
                _fill_photos(conn, texts, shown, model_id)
                snapshot = search.plan(search.catalog_rows(conn), dest.parent, dest.name, model_id)
                _finish(
                    conn,
                    snapshot,
                    model_id=model_id,
                    daemon_version=daemon_version,
                    built_from=built_from,
                )
                written = early.result()
            except BaseException:
                cancel.set()
                raise
        if written.token != snapshot.token:
            # The state database changed between the two reads (no writer runs beside a
            # publish, so not expected): the snapshot the catalog names, written now.
            with closing(_open_state(state_db)) as state:
                search.write(snapshot, state, dest.parent, dest.name, cancel, _previous(dest))
    finally:
        conn.close()
    return snapshot.name


def _fill_photos(
    conn: sqlite3.Connection, texts: dict[bytes, str], shown: dict[str, str], model_id: str | None
) -> None:
    """The catalog's photos: every live file of the state database (attached as `state`)."""
    conn.create_function(
        "text_path", 1, lambda raw: texts.get(raw) or raw.decode(), deterministic=True
    )
    text_sql = "text_path(p.path)" if texts else "CAST(p.path AS TEXT)"  # all UTF-8
    conn.create_function(
        "shown_as", 1, lambda h: shown.get(h, h) if h is not None else None, deterministic=True
    )
    shown_sql = "shown_as(p.content_hash)" if shown else "p.content_hash"
    named = _places(conn)
    conn.create_function("place_of", 2, lambda lat, lon: named.get((lat, lon)), deterministic=True)
    conn.execute(
        "INSERT INTO photos (path, path_bytes, content_hash, size, width, height, taken_at, "
        "lat, lon, place, format, shown_as, cluster_id, event_id, status, error, offline, "
        "taken_at_source) "
        # (a function call only where it can answer: few paths are not UTF-8, few
        # photos have a position, few are a RAW shown by its JPEG)
        f"SELECT {text_sql}, p.path, p.content_hash, p.size, p.width, p.height, "
        "p.taken_at, p.lat, p.lon, "
        "CASE WHEN p.lat IS NULL THEN NULL ELSE place_of(p.lat, p.lon) END, p.format, "
        f"{shown_sql}, m.cluster_id, v.event_id, {PHOTO_STATUS}, "
        "p.error, p.offline, p.taken_at_source FROM state.published_files p "
        + EMBEDDED_BY.format(schema="state.")
        + f"LEFT JOIN cluster_members m ON m.content_hash = {shown_sql} "
        f"LEFT JOIN state.published_event_members v ON v.content_hash = {shown_sql} "
        "ORDER BY p.path",
        (model_id,),
    )


def _distinct_album_titles(conn: sqlite3.Connection, state_db: Path) -> None:
    """No two albums of the catalog share a title: those that would read the same get
    what tells them apart (`label.distinct_titles`); the state keeps each album's own."""
    titles = dict(conn.execute("SELECT id, title FROM clusters WHERE title IS NOT NULL"))
    clashing = {i for ids in label.clashing(titles) for i in ids}
    if not clashing:
        return
    with closing(_open_state(state_db)) as state:
        store = Store(state, state_db)
        facts = {i: store.group_facts(i) for i in sorted(clashing)}
    places_of = {}
    for i, f in facts.items():
        where = label.agreed_position(f)
        place = places.nearest_place(*where) if where else None
        places_of[i] = place.city if place else None
    shown = label.distinct_titles(titles, facts, places_of, now=datetime.now())
    conn.executemany(
        "UPDATE clusters SET title = ? WHERE id = ?",
        [(title, i) for i, title in shown.items() if title != titles[i]],
    )


def _open_state(state_db: Path) -> sqlite3.Connection:
    """A read-only connection of its own to the state database, for reading all of it."""
    state = sqlite3.connect(uri(state_db, mode="ro"), uri=True, isolation_level=None)
    state.execute(f"PRAGMA mmap_size = {READ_MMAP_BYTES}")
    return state


def _write_snapshot(
    state_db: Path, shown: dict[str, str], dest: Path, model_id: str | None, cancel: threading.Event
) -> search.Plan:
    """The search snapshot of the catalog being built at `dest`, from a read of its own of
    the state database: the contents of the live files that will be 'indexed' in the
    catalog, less the RAWs shown as their JPEG."""
    with closing(_open_state(state_db)) as state:
        state.execute("BEGIN")  # the rows and their embeddings from one read
        found = state.execute(
            "SELECT p.content_hash, min(p.offline) FROM published_files p "
            + EMBEDDED_BY.format(schema="")
            + f"WHERE {PHOTO_STATUS} = 'indexed' "
            "GROUP BY p.content_hash ORDER BY p.content_hash",
            (model_id,),
        )
        rows = ((h, away) for h, away in found if shown.get(h, h) == h)
        snapshot = search.plan(rows, dest.parent, dest.name, model_id)
        search.write(snapshot, state, dest.parent, dest.name, cancel, _previous(dest))
        return snapshot


def _previous(dest: Path) -> Path | None:
    """The search snapshot the catalog at `dest` names now, to write the next one from."""
    name = search.named_snapshot(dest)
    return dest.parent / name if name else None


def _finish(
    conn: sqlite3.Connection,
    snapshot: search.Plan,
    *,
    model_id: str | None,
    daemon_version: str,
    built_from: str,
) -> None:
    """The build's rest once `photos` is filled: its indexes, catalog_info, the commit,
    and the full-text indexes."""
    for statement in statements(INDEXES):
        conn.execute(statement)
    info = {
        "schema_version": str(SCHEMA_VERSION),
        "generated_at": _iso(time.time()),
        "model": model_id or "",
        "daemon_version": daemon_version,
        "search_snapshot": snapshot.name,
        "search_token": snapshot.token,
        "inputs": built_from,  # the state's published version and the settings
    }
    conn.executemany("INSERT INTO catalog_info (key, value) VALUES (?, ?)", info.items())
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")
    conn.execute("DETACH state")
    _full_text(conn)


def _places(conn: sqlite3.Connection) -> dict[tuple[float, float], str]:
    """The nearest named place of every position the live photos were taken at."""
    points = conn.execute("SELECT lat, lon FROM state.published_positions").fetchall()
    found = places.nearest_places([(float(a), float(b)) for a, b in points])
    return {(a, b): str(p) for (a, b), p in zip(points, found, strict=True) if p is not None}


def _full_text(conn: sqlite3.Connection) -> None:
    """FTS5 indexes, built with sqlite-utils the way Datasette looks for them (a
    `<table>_fts` table with content=<table>): Datasette shows a search box by itself,
    and SQL tools can `... WHERE rowid IN (SELECT rowid FROM photos_fts WHERE
    photos_fts MATCH 'beach')`. No triggers: the catalog is never written after."""
    import sqlite_utils  # (imported when used: 70 ms at every CLI start)

    db = sqlite_utils.Database(conn)
    db["photos"].enable_fts(["path", "place"])  # type: ignore[union-attr]
    db["clusters"].enable_fts(["title", "catchy_phrase"])  # type: ignore[union-attr]
    db["events"].enable_fts(["title", "place"])  # type: ignore[union-attr]


def _is_live(conn: sqlite3.Connection, raw: bytes) -> bool:
    found = conn.execute("SELECT 1 FROM state.published_files WHERE path = ?", (raw,)).fetchone()
    return found is not None


# -- read-only queries ---------------------------------------------------------------------------

# What a query may do: read tables and call functions. Everything else (writes, ATTACH,
# PRAGMA, transactions, temp tables) is refused by the authorizer, whatever
# `PRAGMA query_only` says (a consumer could switch that off; the authorizer it cannot).
_ALLOWED = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}
_TICKS = 10_000  # progress handler period in VM instructions: ~1 ms


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[object, ...]]


@dataclass(frozen=True)
class QueryStream:
    """An open query's columns and its rows, produced one at a time as they are read."""

    columns: list[str]
    rows: Iterator[tuple[object, ...]]


@dataclass(frozen=True)
class QueryLimits:
    """Where `imageclust query` stops a result (exit 2): rows, bytes of values, one value.

    Rows are streamed, so none of these is about memory on the way out; they stop a
    runaway (an endless recursive CTE, a cross join of the photos with themselves)
    before it fills a disk or a terminal. `value_bytes` is SQLite's own length limit:
    `zeroblob(1000000000)` fails at once instead of allocating a gigabyte.
    """

    seconds: float = 30.0
    rows: int = 10_000_000  # a 1M-photo library's photos, ten times over
    bytes: int = 1_000_000_000  # of values, as they are counted in _size
    value_bytes: int = 32 << 20  # no path, title or catalog value comes near it
    heap_bytes: int = 1 << 30  # SQLite's own memory (sorts, DISTINCT, recursive UNIONs)


# Pragmas that only describe the schema, allowed without an argument to set
# (`SELECT * FROM pragma_table_info('photos')`); every other pragma is refused.
_SCHEMA_PRAGMAS = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "user_version",
    # Read by FTS5 itself when a query opens photos_fts or clusters_fts (no argument: it
    # only tells whether the file changed).
    "data_version",
}


def _authorize(action: int, arg1: object, arg2: object, *rest: object) -> int:
    if action in _ALLOWED:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master":
        # Asked while a pragma_* table is prepared, with no write in the query. A real
        # UPDATE of sqlite_master still fails: it needs writable_schema (refused), and
        # the file is open read-only with query_only on.
        return sqlite3.SQLITE_OK
    name = str(arg1).lower()
    # user_version with an argument would set it; the others' argument names a table
    describes = name in _SCHEMA_PRAGMAS and (
        arg2 is None or name not in ("user_version", "data_version")
    )
    allowed = action == sqlite3.SQLITE_PRAGMA and describes
    return sqlite3.SQLITE_OK if allowed else sqlite3.SQLITE_DENY


def query(catalog: Path, sql: str, *, timeout: float = 30.0) -> QueryResult:
    """Run one read-only statement against the catalog and return every row (for small
    results; `open_query` streams). Refusals raise QueryRefused."""
    with open_query(catalog, sql, QueryLimits(seconds=timeout)) as result:
        return QueryResult(result.columns, list(result.rows))


@contextmanager
def open_query(
    catalog: Path, sql: str, limits: QueryLimits = QueryLimits()
) -> Iterator[QueryStream]:
    """Run one read-only statement against the catalog; its rows stream as they are read.

    Refusals (a write, several statements, past a limit of `limits`) raise QueryRefused,
    also while the rows are iterated; a damaged catalog raises DatabaseError saying the
    next publish rebuilds it.
    """
    if catalog.exists() and not catalog.is_file():
        raise DatabaseError(f"{catalog} is not a file: set catalog.path to a file name")
    if not catalog.is_file():
        raise DatabaseError(f"no catalog at {catalog} yet: run `imageclust index` first")
    text = sql.strip()
    if not text:
        raise QueryRefused("empty query")
    conn = open_catalog(catalog)
    try:
        conn.execute("PRAGMA query_only = ON")
        # SQLite's heap limit is per process: only `imageclust query` runs this.
        conn.execute(f"PRAGMA hard_heap_limit = {int(limits.heap_bytes)}")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.value_bytes)
        conn.set_authorizer(_authorize)
        clock = _SqliteClock(limits.seconds)
        conn.set_progress_handler(clock.expired, _TICKS)
        with _translated(catalog, limits), clock:
            cursor = conn.execute(text)
            columns = [d[0] for d in cursor.description or []]
        yield QueryStream(columns, _rows(cursor, catalog, limits, clock))
    finally:
        conn.close()


def _rows(
    cursor: sqlite3.Cursor, catalog: Path, limits: QueryLimits, clock: _SqliteClock
) -> Iterator[tuple[object, ...]]:
    count = size = 0
    with _translated(catalog, limits):
        while True:
            with clock:
                row = cursor.fetchone()  # one at a time: memory holds one row, not a batch
            if row is None:
                return
            count += 1
            size += sum(_size(v) for v in row)
            if count > limits.rows:
                raise QueryRefused(
                    f"stopped after {limits.rows:,} rows (--max-rows raises the limit)"
                )
            if size > limits.bytes:
                raise QueryRefused(
                    f"stopped after {limits.bytes:,} bytes of values (--max-bytes raises the limit)"
                )
            yield row


class _SqliteClock:
    """Time spent inside SQLite, against the query's budget: the progress handler stops a
    query past it, while the time a slow reader (a pager, a pipe) takes does not count."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds
        self._deadline = math.inf
        self._started = 0.0

    def expired(self) -> int:
        return int(time.monotonic() > self._deadline)

    def __enter__(self) -> None:
        self._started = time.monotonic()
        self._deadline = self._started + self.left

    def __exit__(self, *exc: object) -> None:
        self.left -= time.monotonic() - self._started
        self._deadline = math.inf


def _size(value: object) -> int:
    if isinstance(value, str | bytes):
        return len(value)
    return 8


@contextmanager
def _translated(catalog: Path, limits: QueryLimits) -> Iterator[None]:
    """SQLite's errors while preparing or stepping, as what a person can act on."""
    try:
        yield
    except sqlite3.ProgrammingError as exc:  # "You can only execute one statement at a time."
        raise QueryRefused(f"one statement only: {exc}") from None
    except sqlite3.DatabaseError as exc:
        message = str(exc)
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise DatabaseError(
                f"the catalog {catalog} is damaged ({message}); the next publish "
                "rebuilds it (`imageclust index`, or the daemon within a minute)"
            ) from None
        if "not authorized" in message or "readonly" in message or "read-only" in message:
            raise QueryRefused(
                f"the catalog is read-only; only SELECT is allowed ({message})"
            ) from None
        if "interrupted" in message:
            raise QueryRefused(
                f"query took longer than {limits.seconds:g} s and was stopped"
            ) from None
        if "too big" in message:
            raise QueryRefused(
                f"a value is longer than {limits.value_bytes >> 20} MB ({message})"
            ) from None
        if code == sqlite3.SQLITE_NOMEM:
            raise QueryRefused(
                f"the query needs more than {limits.heap_bytes >> 20} MB of memory ({message})"
            ) from None
        raise QueryRefused(message) from None
    except MemoryError:
        raise QueryRefused("the result does not fit in memory") from None
