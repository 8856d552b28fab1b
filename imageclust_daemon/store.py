"""The state database: the only module that writes it.

SQLite in WAL mode with foreign keys and a busy timeout. The connection runs
in autocommit mode (`isolation_level=None`) and every write path is one
explicit `BEGIN IMMEDIATE ... COMMIT` (`Store.transaction`): a deferred
transaction that reads then writes fails at once with "database is locked",
ignoring the busy timeout. Each batch of work is committed on its own and is
idempotent, so a crash redoes at most one batch.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from imageclust_daemon import migrate
from imageclust_daemon.errors import DatabaseError, SchemaTooNewError
from imageclust_daemon.records import (
    Baseline,
    ClusterRun,
    ContentRow,
    EventRow,
    FileRow,
    GroupFacts,
    GroupRow,
    KnownFile,
    Label,
    LabelJob,
)

log = logging.getLogger(__name__)

# For a bulk read of the whole state database (a publish): read through the page cache of
# the OS without a copy. Address space, not memory: the pages are the OS's to evict.
READ_MMAP_BYTES = 1 << 34
BUSY_TIMEOUT_MS = 10_000  # a concurrent `status` or catalog publish holds the lock for < 1 s


def _under(root: bytes) -> tuple[bytes, bytes]:
    """[low, high) BLOB range of every path strictly under `root` ("/" + 1 == "0")."""
    root = root.rstrip(b"/")
    return root + b"/", root + b"0"


# The columns a KnownFile is made of (a constant: no caller's text reaches the SQL).
_KNOWN = "size, mtime_ns, inode, device, content_hash, state, error, offline_since IS NOT NULL"


def _known_file(row: Sequence[Any]) -> KnownFile:
    size, mtime_ns, inode, device, content_hash, state, error, offline = row
    return KnownFile(
        (size, mtime_ns, inode, device), content_hash, state == "live", error, bool(offline)
    )


def vector_to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


# What `status` counts, in the order it prints them (the keys of Store.status).
STATUS_KEYS = (
    "files",
    "offline",
    "contents",
    "embedded",
    "pending",
    "failed",
    "undecodable",
    "unreadable",
    "clusters",
    "labeled",
)
# Status keys whose value is a mapping (format or kind -> files), {} before any index.
STATUS_MAPS = ("events", "formats", "skipped")


def _insert_run(conn: sqlite3.Connection, run: ClusterRun) -> int:
    """Record a regroup; its id."""
    run_id = conn.execute(
        "INSERT INTO cluster_runs (started_at, seconds, model_id, min_size, max_size, "
        "method, n_points, n_clusters, unclustered, new_clusters, changed_clusters, "
        "retired_clusters, input_digest, full_reason, joined, moved, dissolved, recut) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run.started_at,
            run.seconds,
            run.model_id,
            run.min_size,
            run.max_size,
            run.method,
            run.n_points,
            run.n_clusters,
            run.unclustered,
            run.new_clusters,
            run.changed_clusters,
            run.retired_clusters,
            run.input_digest,
            run.full_reason,
            run.joined,
            run.moved,
            run.dissolved,
            json.dumps({str(k): v for k, v in sorted(run.recut.items())}),
        ),
    ).lastrowid
    assert run_id is not None
    return int(run_id)


def _write_group(conn: sqlite3.Connection, g: GroupRow, run_id: int) -> None:
    """Store one group a regroup cut or changed, its members with it."""
    blob = vector_to_blob(g.centroid)
    if g.is_new:
        conn.execute(
            "INSERT INTO clusters (id, state, size, centroid, members_digest, "
            "created_run, changed_run, needs_label, cut_size, fit, subject) "
            "VALUES (?, 'active', ?, ?, ?, ?, ?, 1, ?, ?, ?)",
            (
                g.id,
                len(g.members),
                blob,
                g.members_digest,
                run_id,
                run_id,
                g.cut_size,
                g.fit,
                g.subject,
            ),
        )
    elif g.changed:
        conn.execute(
            "UPDATE clusters SET state = 'active', size = ?, centroid = ?, "
            "members_digest = ?, changed_run = ?, needs_label = 1, cut_size = ?, "
            "fit = ?, subject = ? WHERE id = ?",
            (
                len(g.members),
                blob,
                g.members_digest,
                run_id,
                g.cut_size,
                g.fit,
                g.subject,
                g.id,
            ),
        )
    else:  # same members: the label stays; the centroid may move with a new model
        conn.execute(
            "UPDATE clusters SET centroid = ?, cut_size = ?, fit = ?, "
            "subject = coalesce(?, subject) WHERE id = ?",
            (blob, g.cut_size, g.fit, g.subject, g.id),
        )
    conn.execute("DELETE FROM cluster_members WHERE cluster_id = ?", (g.id,))
    conn.executemany(
        "INSERT INTO cluster_members (cluster_id, content_hash, rank, similarity) "
        "VALUES (?, ?, ?, ?)",
        [(g.id, h, rank, sim) for h, rank, sim in g.members],
    )


class Store:
    """One connection to the state database, owned by one thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path

    @classmethod
    def open(
        cls,
        path: Path,
        migrations: list[migrate.Migration] | None = None,
        *,
        any_thread: bool = False,
    ) -> Store:
        """Open (creating if needed) and migrate the database at `path`.

        `any_thread`: the connection may be used from a thread other than the one that
        opened it (still by one thread at a time: the daemon's single writer).
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                path,
                isolation_level=None,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=not any_thread,
            )
        except (OSError, sqlite3.Error) as exc:
            raise DatabaseError(f"cannot open state database {path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Refuse a too-new schema before switching journal modes or writing anything.
            shipped = migrations if migrations is not None else migrate.load_migrations()
            found = migrate.current_version(conn)
            if shipped and found > shipped[-1].version:
                raise SchemaTooNewError(str(path), found, shipped[-1].version)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across app crashes
            conn.execute("PRAGMA foreign_keys = ON")
            migrate.apply(conn, shipped, path=str(path))
            edited = migrate.changed_since_applied(conn, shipped)
            if edited:
                log.warning("%s: migrations %s changed after they were applied", path, edited)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise DatabaseError(f"state database {path} is unusable: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    @classmethod
    def open_readonly(cls, path: Path, migrations: list[migrate.Migration] | None = None) -> Store:
        """Open the database at `path` to read only: no migration, no journal-mode switch, no
        write, no file created (a missing database is DatabaseError).

        For readers (`status`; search and the gallery later): they work beside the daemon
        and on a data dir they cannot write. `mode=ro` first; when SQLite cannot open it so
        (a WAL database whose shared-memory file it may not create: a copy, a read-only
        mount, another user's dir with no writer running), `immutable=1`, which is safe
        because then nobody writes it.
        """
        if not path.is_file():
            raise DatabaseError(f"no state database at {path} yet")
        last: sqlite3.Error | None = None
        for params in ("mode=ro", "immutable=1"):
            try:
                conn = sqlite3.connect(
                    f"{path.absolute().as_uri()}?{params}",
                    uri=True,
                    isolation_level=None,
                    timeout=BUSY_TIMEOUT_MS / 1000,
                )
                found = migrate.current_version(conn)
            except sqlite3.Error as exc:
                last = exc
                continue
            shipped = migrations if migrations is not None else migrate.load_migrations()
            newest = shipped[-1].version if shipped else 0
            if found > newest:
                conn.close()
                raise SchemaTooNewError(str(path), found, newest)
            if found < newest:
                conn.close()
                raise DatabaseError(
                    f"{path} was written by an older imageclust (schema {found}, this one "
                    f"needs {newest}): run `imageclust index` or the daemon once to upgrade it"
                )
            conn.execute("PRAGMA query_only = ON")
            return cls(conn, path)
        raise DatabaseError(f"cannot open state database {path} to read: {last}")

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DatabaseError("the state database is closed")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise DatabaseError(
                f"state database {self.path} is busy ({exc}); is another imageclust writing?"
            ) from None
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- files ---------------------------------------------------------------------------------

    def files_under(self, roots: Sequence[bytes]) -> dict[bytes, KnownFile]:
        """Everything remembered about paths under `roots` (live and gone)."""
        known: dict[bytes, KnownFile] = {}
        for root in roots:
            low, high = _under(root)
            for row in self.conn.execute(
                f"SELECT path, {_KNOWN} FROM files WHERE path >= ? AND path < ?", (low, high)
            ):
                known[row[0]] = _known_file(row[1:])
        return known

    def live_count_under(self, root: bytes) -> int:
        low, high = _under(root)
        row = self.conn.execute(
            "SELECT count(*) FROM files WHERE path >= ? AND path < ? AND state = 'live'",
            (low, high),
        ).fetchone()
        return int(row[0])

    def live_outside(self, roots: Sequence[bytes]) -> list[bytes]:
        """Live paths under none of `roots` (a root since removed from the config)."""
        inside = sorted(_under(root) for root in roots)
        out = []
        for (path,) in self.conn.execute("SELECT path FROM files WHERE state = 'live'"):
            if not any(low <= path < high for low, high in inside):
                out.append(path)
        return out

    def files_at(self, paths: Sequence[bytes]) -> dict[bytes, KnownFile]:
        """What is remembered of each path and of everything under it (if it is a folder)."""
        known = self.files_under(paths)
        for path in paths:
            row = self.conn.execute(f"SELECT {_KNOWN} FROM files WHERE path = ?", (path,))
            found = row.fetchone()
            if found:
                known[path] = _known_file(found)
        return known

    def departed(
        self, signatures: Iterable[tuple[int, int, int, int]]
    ) -> dict[tuple[int, int, int, int], str]:
        """Hashes of gone files with these (size, mtime_ns, inode, device): moves seen apart."""
        if not self.conn.execute("SELECT 1 FROM files WHERE state = 'gone' LIMIT 1").fetchone():
            return {}
        found = {}
        for size, mtime_ns, inode, device in signatures:
            row = self.conn.execute(
                "SELECT content_hash FROM files WHERE device = ? AND inode = ? AND size = ? "
                "AND mtime_ns = ? AND state = 'gone' AND content_hash IS NOT NULL "
                "AND error IS NULL LIMIT 1",
                (device, inode, size, mtime_ns),
            ).fetchone()
            if row:
                found[(size, mtime_ns, inode, device)] = row[0]
        return found

    def record(
        self,
        contents: Iterable[ContentRow],
        files: Iterable[FileRow],
        embeddings: Iterable[tuple[str, np.ndarray]],
        model_id: str,
    ) -> None:
        """Write one batch of work in one transaction: contents, then embeddings, then files."""
        now = time.time()
        with self.transaction() as conn:
            for c in contents:
                conn.execute(
                    "INSERT INTO contents (hash, size, created_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (hash) DO NOTHING",
                    (c.hash, c.size, now),
                )
                if c.decoded:
                    m = c.meta
                    conn.execute(
                        "UPDATE contents SET width = ?, height = ?, taken_at = ?, lat = ?, "
                        "lon = ?, format = ?, error = ? WHERE hash = ?",
                        (
                            m.width if m else None,
                            m.height if m else None,
                            m.taken_at if m else None,
                            m.lat if m else None,
                            m.lon if m else None,
                            m.format if m else None,
                            c.error,
                            c.hash,
                        ),
                    )
            conn.executemany(
                "INSERT OR REPLACE INTO embeddings "
                "(content_hash, model_id, dim, vector, created_at) VALUES (?, ?, ?, ?, ?)",
                [(h, model_id, int(v.shape[0]), vector_to_blob(v), now) for h, v in embeddings],
            )
            conn.executemany(
                "INSERT INTO files (path, size, mtime_ns, inode, device, content_hash, state, "
                "error, first_seen, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'live', ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, inode = excluded.inode, device = excluded.device, "
                "content_hash = excluded.content_hash, state = 'live', error = excluded.error, "
                "updated_at = excluded.updated_at, gone_at = NULL, offline_since = NULL",
                [
                    (f.stat.path, *f.stat.signature, f.content_hash, f.error, now, now)
                    for f in files
                ],
            )

    def mark_gone(self, paths: Iterable[bytes], reason: str | None = None) -> int:
        """Files no longer there: kept (their content may come back) but not live."""
        now = time.time()
        with self.transaction() as conn:
            cursor = conn.executemany(
                "UPDATE files SET state = 'gone', gone_at = ?, updated_at = ?, error = ? "
                "WHERE path = ? AND state = 'live'",
                [(now, now, reason, p) for p in paths],
            )
            return cursor.rowcount

    def set_offline(self, paths: Iterable[bytes], offline: bool) -> int:
        """Flag live files as offline (their folder is unreachable) or back online."""
        with self.transaction() as conn:
            if offline:
                cursor = conn.executemany(
                    "UPDATE files SET offline_since = ? WHERE path = ? AND state = 'live' "
                    "AND offline_since IS NULL",
                    [(time.time(), p) for p in paths],
                )
            else:
                cursor = conn.executemany(
                    "UPDATE files SET offline_since = NULL WHERE path = ?", [(p,) for p in paths]
                )
            return cursor.rowcount

    def collect_garbage(self, older_than_days: float) -> tuple[int, int]:
        """Forget files gone longer than that, then contents (and embeddings) no file has.

        Contents still in a group or an event, or waiting for a group, are kept until the
        next regroup drops them.
        Returns (file rows, contents) removed.
        """
        cutoff = time.time() - older_than_days * 86400
        with self.transaction() as conn:
            files = conn.execute(
                "DELETE FROM files WHERE state = 'gone' AND gone_at < ?", (cutoff,)
            ).rowcount
            contents = conn.execute(
                "DELETE FROM contents WHERE created_at < ? "
                "AND NOT EXISTS (SELECT 1 FROM files f WHERE f.content_hash = contents.hash) "
                "AND NOT EXISTS (SELECT 1 FROM cluster_members m "
                "WHERE m.content_hash = contents.hash) "
                "AND NOT EXISTS (SELECT 1 FROM cluster_waiting w "
                "WHERE w.content_hash = contents.hash) "
                "AND NOT EXISTS (SELECT 1 FROM event_members v "
                "WHERE v.content_hash = contents.hash)",
                (cutoff,),
            ).rowcount
        self.conn.execute("PRAGMA optimize")
        self.checkpoint()
        return files, contents

    def checkpoint(self) -> None:
        """Fold the WAL back into the database (readers can stop a checkpoint; it retries later)."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- contents and embeddings ---------------------------------------------------------------

    def settled_hashes(self, model_id: str) -> set[str]:
        """Contents that need no more work for this model: embedded, or known to be undecodable."""
        rows = self.conn.execute(
            "SELECT content_hash FROM embeddings WHERE model_id = ? "
            "UNION SELECT hash FROM contents WHERE error IS NOT NULL",
            (model_id,),
        )
        return {h for (h,) in rows}

    def pending_contents(self, model_id: str, roots: Sequence[bytes]) -> dict[str, bytes]:
        """Contents of live files under `roots` still without an embedding: hash -> one path."""
        pending: dict[str, bytes] = {}
        for root in roots:
            low, high = _under(root)
            for content_hash, path in self.conn.execute(
                "SELECT f.content_hash, min(f.path) FROM files f JOIN contents c "
                "ON c.hash = f.content_hash WHERE f.path >= ? AND f.path < ? "
                "AND f.state = 'live' AND c.error IS NULL AND NOT EXISTS ("
                "  SELECT 1 FROM embeddings e WHERE e.content_hash = f.content_hash "
                "  AND e.model_id = ?) GROUP BY f.content_hash",
                (low, high, model_id),
            ):
                pending.setdefault(content_hash, path)
        return pending

    def embedding(self, content_hash: str, model_id: str) -> np.ndarray | None:
        row = self.conn.execute(
            "SELECT vector FROM embeddings WHERE content_hash = ? AND model_id = ?",
            (content_hash, model_id),
        ).fetchone()
        return blob_to_vector(row[0]) if row else None

    def content_hashes(self) -> set[str]:
        """Every content the database knows (live, offline or gone but not yet forgotten)."""
        return {h for (h,) in self.conn.execute("SELECT hash FROM contents")}

    def live_embeddings(self, model_id: str) -> tuple[list[str], np.ndarray]:
        """Each distinct content of a live file with an embedding: (hashes, float32 [n, d])."""
        query = (
            "SELECT e.content_hash, e.vector FROM embeddings e WHERE e.model_id = ? AND EXISTS ("
            "  SELECT 1 FROM files f WHERE f.content_hash = e.content_hash AND f.state = 'live')"
            " ORDER BY e.content_hash"
        )
        # Straight into one array: a list of the blobs first doubled the peak (1M photos:
        # 2 GB of bytes objects beside the 2 GB matrix). This process is the one writer,
        # so the count holds; were it short, the array grows.
        (n,) = self.conn.execute(
            "SELECT count(*) FROM embeddings e WHERE e.model_id = ? AND EXISTS ("
            "  SELECT 1 FROM files f WHERE f.content_hash = e.content_hash AND f.state = 'live')",
            (model_id,),
        ).fetchone()
        hashes: list[str] = []
        x = np.zeros((0, 0), dtype=np.float32)
        for i, (content_hash, blob) in enumerate(self.conn.execute(query, (model_id,))):
            if i >= x.shape[0]:
                grown = np.empty((max(n, 2 * i, 1), len(blob) // 4), dtype=np.float32)
                if i:
                    grown[:i] = x[:i]
                x = grown
            x[i] = blob_to_vector(blob)
            hashes.append(content_hash)
        return hashes, x[: len(hashes)] if hashes else np.zeros((0, 0), dtype=np.float32)

    # -- clusters ------------------------------------------------------------------------------

    def active_clusters(self) -> dict[int, set[str]]:
        groups: dict[int, set[str]] = {}
        for cluster_id, content_hash in self.conn.execute(
            "SELECT m.cluster_id, m.content_hash FROM cluster_members m "
            "JOIN clusters c ON c.id = m.cluster_id WHERE c.state = 'active'"
        ):
            groups.setdefault(cluster_id, set()).add(content_hash)
        return groups

    def album_baselines(self) -> dict[int, Baseline]:
        """Each active album's size and fit when it was last cut (albums cut before these
        were kept have none)."""
        return {
            cid: Baseline(size, fit)
            for cid, size, fit in self.conn.execute(
                "SELECT id, cut_size, fit FROM clusters WHERE state = 'active' "
                "AND cut_size IS NOT NULL AND fit IS NOT NULL"
            )
        }

    def waiting_contents(self) -> set[str]:
        """The contents the last regroup saw and left in no album."""
        return {h for (h,) in self.conn.execute("SELECT content_hash FROM cluster_waiting")}

    def next_cluster_id(self) -> int:
        """An id above every id ever given, retired groups included: ids are never reused."""
        row = self.conn.execute("SELECT coalesce(max(id), 0) + 1 FROM clusters").fetchone()
        return int(row[0])

    def last_cluster_run(self) -> ClusterRun | None:
        cursor = self.conn.execute(
            "SELECT id AS run_id, model_id, min_size, max_size, input_digest, started_at, "
            "seconds, method, n_points, n_clusters, unclustered, new_clusters, "
            "changed_clusters, retired_clusters, full_reason, "
            "joined, moved, dissolved, recut FROM cluster_runs ORDER BY id DESC LIMIT 1"
        )
        row = cursor.fetchone()
        if row is None:
            return None
        fields = {d[0]: v for d, v in zip(cursor.description, row, strict=True)}
        fields["recut"] = {int(k): str(v) for k, v in json.loads(fields["recut"]).items()}
        return ClusterRun(**fields)

    def save_clustering(
        self,
        run: ClusterRun,
        groups: list[GroupRow],
        retired: list[int],
        waiting: Iterable[str],
    ) -> int:
        """Record a run in one transaction: the groups it cut or changed (others are left as
        they are), the groups it retired, and the contents left waiting; returns its id."""
        with self.transaction() as conn:
            run_id = _insert_run(conn, run)
            for g in groups:
                _write_group(conn, g, run_id)
            for cid in retired:
                conn.execute(
                    "UPDATE clusters SET state = 'retired', retired_run = ? WHERE id = ?",
                    (run_id, cid),
                )
                conn.execute("DELETE FROM cluster_members WHERE cluster_id = ?", (cid,))
            conn.execute("DELETE FROM cluster_waiting")
            conn.executemany(
                "INSERT INTO cluster_waiting (content_hash) VALUES (?)", ((h,) for h in waiting)
            )
        return run_id

    def subject_vectors(self, model_id: str, version: int) -> np.ndarray | None:
        row = self.conn.execute(
            "SELECT words, dim, vectors FROM subject_vectors WHERE model_id = ? AND version = ?",
            (model_id, version),
        ).fetchone()
        if row is None or len(row[2]) != 4 * row[0] * row[1]:
            return None
        return blob_to_vector(row[2]).reshape(row[0], row[1])

    def keep_subject_vectors(self, model_id: str, version: int, vectors: np.ndarray) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO subject_vectors (model_id, version, words, dim, vectors) "
                "VALUES (?, ?, ?, ?, ?)",
                (model_id, version, vectors.shape[0], vectors.shape[1], vector_to_blob(vectors)),
            )

    # -- events --------------------------------------------------------------------------------

    def dated_contents(self) -> list[tuple[str, str, float | None, float | None]]:
        """(hash, capture time, lat, lon) of each distinct content of a live file that has a
        capture time and decodes, in hash order."""
        return self.conn.execute(
            "SELECT c.hash, c.taken_at, c.lat, c.lon FROM contents c "
            "WHERE c.taken_at IS NOT NULL AND c.error IS NULL AND EXISTS "
            "(SELECT 1 FROM files f WHERE f.content_hash = c.hash AND f.state = 'live') "
            "ORDER BY c.hash"
        ).fetchall()

    def active_events(self) -> dict[int, tuple[EventRow, set[str]]]:
        """Each active event as stored, and its members."""
        members: dict[int, set[str]] = {}
        for content_hash, event_id in self.conn.execute(
            "SELECT content_hash, event_id FROM event_members"
        ):
            members.setdefault(event_id, set()).add(content_hash)
        found = {}
        for eid, kind, title, started, ended, place, city, lat, lon in self.conn.execute(
            "SELECT id, kind, title, started_at, ended_at, place, city, lat, lon FROM events "
            "WHERE state = 'active'"
        ):
            event = EventRow(eid, kind, title, started, ended, place, city, lat, lon, members=())
            found[eid] = (event, members.get(eid, set()))
        return found

    def has_events(self) -> bool:
        return self.conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None

    def next_event_id(self) -> int:
        """An id above every id ever given: ids are never reused."""
        return int(self.conn.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0])

    def save_events(self, changed: Sequence[EventRow], retired: Iterable[int]) -> None:
        """Write the events that are new or changed (members, kind, times or title) and
        retire those gone, in one transaction."""
        now = time.time()
        with self.transaction() as conn:
            for e in changed:
                conn.execute(
                    "INSERT INTO events (id, state, kind, title, started_at, ended_at, place, "
                    "city, lat, lon, size, created_at, updated_at) "
                    "VALUES (?, 'active', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET state = 'active', kind = excluded.kind, "
                    "title = excluded.title, started_at = excluded.started_at, "
                    "ended_at = excluded.ended_at, place = excluded.place, city = excluded.city, "
                    "lat = excluded.lat, lon = excluded.lon, size = excluded.size, "
                    "updated_at = excluded.updated_at",
                    (
                        e.id,
                        e.kind,
                        e.title,
                        e.started_at,
                        e.ended_at,
                        e.place,
                        e.city,
                        e.lat,
                        e.lon,
                        len(e.members),
                        now,
                        now,
                    ),
                )
                conn.execute("DELETE FROM event_members WHERE event_id = ?", (e.id,))
            for event_id in retired:
                conn.execute(
                    "UPDATE events SET state = 'retired', updated_at = ? WHERE id = ?",
                    (now, event_id),
                )
                conn.execute("DELETE FROM event_members WHERE event_id = ?", (event_id,))
            conn.executemany(
                "INSERT OR REPLACE INTO event_members (content_hash, event_id) VALUES (?, ?)",
                [(h, e.id) for e in changed for h in e.members],
            )

    # -- labels --------------------------------------------------------------------------------

    def label_jobs(self, *, everything: bool = False) -> list[LabelJob]:
        """Active groups needing a title: new or changed, or still on a fallback title."""
        jobs = []
        for cluster_id, digest, size, source, title, phrase, needs in self.conn.execute(
            "SELECT id, members_digest, size, label_source, title, catchy_phrase, "
            "needs_label OR title IS NULL "
            "FROM clusters WHERE state = 'active' "
            "AND (? OR needs_label = 1 OR label_source IS NOT 'ollama') ORDER BY id",
            (int(everything),),
        ).fetchall():
            reps = tuple(
                path
                for (path,) in self.conn.execute(
                    "SELECT (SELECT min(f.path) FROM files f WHERE f.content_hash = m.content_hash "
                    "AND f.state = 'live') FROM cluster_members m "
                    "WHERE m.cluster_id = ? AND m.rank < 3 ORDER BY m.rank",
                    (cluster_id,),
                )
                if path is not None
            )
            jobs.append(
                LabelJob(cluster_id, digest, size, reps, source, title, phrase, bool(needs))
            )
        return jobs

    def group_facts(self, cluster_id: int) -> GroupFacts:
        """Dates, positions and folders of a group's members, for the prompt and the fallback."""
        taken, positions = [], []
        size = 0
        for taken_at, lat, lon in self.conn.execute(
            "SELECT c.taken_at, c.lat, c.lon FROM cluster_members m JOIN contents c "
            "ON c.hash = m.content_hash WHERE m.cluster_id = ?",
            (cluster_id,),
        ):
            size += 1
            if taken_at:
                taken.append(taken_at)
            if lat is not None and lon is not None:
                positions.append((lat, lon))
        folders = [
            os.path.basename(os.path.dirname(path)).decode("utf-8", "replace")
            for (path,) in self.conn.execute(
                "SELECT min(f.path) FROM cluster_members m JOIN files f "
                "ON f.content_hash = m.content_hash AND f.state = 'live' "
                "WHERE m.cluster_id = ? GROUP BY m.content_hash",
                (cluster_id,),
            )
        ]
        (subject,) = self.conn.execute(
            "SELECT subject FROM clusters WHERE id = ?", (cluster_id,)
        ).fetchone() or (None,)
        return GroupFacts(size, tuple(sorted(taken)), tuple(positions), tuple(folders), subject)

    def cached_label(self, digest: str, llm_model: str, prompt_version: int) -> Label | None:
        row = self.conn.execute(
            "SELECT title, catchy_phrase FROM labels WHERE members_digest = ? AND llm_model = ? "
            "AND prompt_version = ?",
            (digest, llm_model, prompt_version),
        ).fetchone()
        return Label(row[0], row[1], "ollama") if row else None

    def save_label(self, job: LabelJob, label: Label, llm_model: str, prompt_version: int) -> None:
        """Give a group its title; an LLM title is also cached under the group's membership.

        A fallback title stays marked `label_source = 'fallback'`, so the LLM is asked
        again next cycle; `needs_label` is cleared either way (the title is current).
        """
        now = time.time()
        with self.transaction() as conn:
            if label.source == "ollama":
                conn.execute(
                    "INSERT OR REPLACE INTO labels (members_digest, llm_model, prompt_version, "
                    "title, catchy_phrase, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        job.members_digest,
                        llm_model,
                        prompt_version,
                        label.title,
                        label.catchy_phrase,
                        now,
                    ),
                )
            conn.execute(
                "UPDATE clusters SET title = ?, catchy_phrase = ?, label_source = ?, "
                "labeled_at = ?, needs_label = ? WHERE id = ? AND members_digest = ?",
                (
                    label.title,
                    label.catchy_phrase,
                    label.source,
                    now,
                    0,  # the title is current for this membership, whatever wrote it
                    job.cluster_id,
                    job.members_digest,
                ),
            )

    # -- models --------------------------------------------------------------------------------

    def cached_sha256(self, path: bytes, size: int, mtime_ns: int) -> str | None:
        row = self.conn.execute(
            "SELECT sha256 FROM model_files WHERE path = ? AND size = ? AND mtime_ns = ?",
            (path, size, mtime_ns),
        ).fetchone()
        return row[0] if row else None

    def remember_sha256(self, path: bytes, size: int, mtime_ns: int, sha256: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO model_files (path, size, mtime_ns, sha256) "
                "VALUES (?, ?, ?, ?)",
                (path, size, mtime_ns, sha256),
            )

    # -- status --------------------------------------------------------------------------------

    def status(self, model_id: str | None) -> dict[str, Any]:
        """Counts over live files; `model_id` None counts nothing as embedded."""
        one = self.conn.execute
        files = one("SELECT count(*) FROM files WHERE state = 'live'").fetchone()[0]
        contents = one(
            "SELECT count(DISTINCT content_hash) FROM files WHERE state = 'live'"
        ).fetchone()[0]
        embedded = one(
            "SELECT count(*) FROM (SELECT DISTINCT f.content_hash FROM files f JOIN embeddings e "
            "ON e.content_hash = f.content_hash WHERE f.state = 'live' AND e.model_id = ?)",
            (model_id,),
        ).fetchone()[0]
        undecodable = one(
            "SELECT count(*) FROM (SELECT DISTINCT f.content_hash FROM files f JOIN contents c "
            "ON c.hash = f.content_hash WHERE f.state = 'live' AND c.error IS NOT NULL)"
        ).fetchone()[0]
        unreadable = one(
            "SELECT count(*) FROM files WHERE state = 'live' AND content_hash IS NULL"
        ).fetchone()[0]
        offline = one(
            "SELECT count(*) FROM files WHERE state = 'live' AND offline_since IS NOT NULL"
        ).fetchone()[0]
        return {
            "files": files,
            "offline": offline,
            "contents": contents,
            "embedded": embedded,
            "pending": contents - embedded - undecodable,
            "failed": undecodable + unreadable,
            "undecodable": undecodable,
            "unreadable": unreadable,
            "clusters": one("SELECT count(*) FROM clusters WHERE state = 'active'").fetchone()[0],
            "labeled": one(
                "SELECT count(*) FROM clusters WHERE state = 'active' AND title IS NOT NULL"
            ).fetchone()[0],
            "events": dict(
                one(
                    "SELECT kind, count(*) FROM events WHERE state = 'active' GROUP BY kind "
                    "ORDER BY kind"
                ).fetchall()
            ),
            "formats": dict(
                one(
                    "SELECT c.format, count(*) FROM files f JOIN contents c "
                    "ON c.hash = f.content_hash WHERE f.state = 'live' AND c.format IS NOT NULL "
                    "GROUP BY c.format ORDER BY count(*) DESC, c.format"
                ).fetchall()
            ),
            "skipped": dict(one("SELECT kind, files FROM skipped_files ORDER BY kind").fetchall()),
        }

    def set_skipped(self, kinds: dict[str, int]) -> None:
        """What a full rescan saw and skipped by kind (videos, sidecars), replacing the last."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM skipped_files")
            conn.executemany(
                "INSERT INTO skipped_files (kind, files, counted_at) VALUES (?, ?, ?)",
                [(kind, n, time.time()) for kind, n in sorted(kinds.items())],
            )
