"""The state database: the only code that reads or writes its tables (with `groups`).

SQLite in WAL mode with foreign keys and a busy timeout. The connection runs
in autocommit mode (`isolation_level=None`) and every write path is one
explicit `BEGIN IMMEDIATE ... COMMIT` (`Store.transaction`): a deferred
transaction that reads then writes fails at once with "database is locked",
ignoring the busy timeout. Each batch of work is committed on its own and is
idempotent, so a crash redoes at most one batch.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imageclust_daemon.errors import DatabaseError, SchemaTooNewError
from imageclust_daemon.records import (
    ContentRow,
    FileRow,
    KnownFile,
)
from imageclust_daemon.state import migrate, pages
from imageclust_daemon.state.groups import GroupTables, blob_to_vector, vector_to_blob

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
# A live file's one status under a model, for `status` and the published catalog alike:
# `PHOTO_STATUS` of a row `p` of the `published_files` view joined `EMBEDDED_BY` the
# model (the join's one parameter; `schema`: "" or "state."). A join, not EXISTS: the
# join reads the small index of embeddings, EXISTS their rows (0.28 s against 0.96 s for
# 100k photos).
EMBEDDED_BY = (
    "LEFT JOIN {schema}published_embeddings e "
    "ON e.content_hash = p.content_hash AND e.model_id = ? "
)
PHOTO_STATUS = (
    "CASE WHEN p.error IS NOT NULL THEN 'failed' "
    "WHEN e.content_hash IS NOT NULL THEN 'indexed' ELSE 'pending' END"
)


def count_statuses(
    conn: sqlite3.Connection, rows: str, params: Sequence[Any] = ()
) -> dict[str, int]:
    """What `status` counts of the rows (content hash, status, offline) that the SQL `rows`
    gives: `files` and the `offline` ones; `contents`, the `indexed` and `pending` ones;
    `failed` = `undecodable` contents (a damaged photo copied twice is one failure) +
    `unreadable` files (no content to count by); and the `failed_files`. The one
    definition for `imageclust status` (over the state) and the gallery's status page
    (over the catalog's photos). One scan, in content order (0.22 s at 100k photos)."""
    out = dict.fromkeys(
        ("files", "offline", "contents", "indexed", "pending", "undecodable", "unreadable"), 0
    )
    out["failed_files"] = 0
    found = conn.execute(
        f"WITH counted(h, s, away) AS ({rows}), "
        "per AS (SELECT h, s, count(*) AS n, sum(away) AS away FROM counted GROUP BY h, s) "
        "SELECT s, h IS NULL, count(h), sum(n), sum(away) FROM per GROUP BY s, h IS NULL",
        tuple(params),
    )
    for status, no_content, contents, files, away in found:
        out["files"] += files
        out["offline"] += away
        out["contents"] += contents
        if status == "failed":
            out["unreadable" if no_content else "undecodable"] += files if no_content else contents
            out["failed_files"] += files
        elif status in ("indexed", "pending"):
            out[status] += contents
    out["failed"] = out["undecodable"] + out["unreadable"]
    return out


# Status keys whose value is a mapping (format or kind -> files), {} before any index.
STATUS_MAPS = ("events", "formats", "skipped")


class Store(GroupTables):
    """The state database: one connection, owned by one thread (`Connection`), with the
    group tables' methods (`GroupTables`) and those of files, contents and status."""

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
            pages.prepare_new(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across app crashes
            conn.execute("PRAGMA foreign_keys = ON")
            migrate.apply(conn, shipped, path=str(path))
            pages.rewrite_if_small(conn, path)
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
                        "UPDATE contents SET width = ?, height = ?, taken_at = ?, "
                        "taken_at_source = ?, lat = ?, lon = ?, format = ?, error = ?, "
                        "dates_read = 1 WHERE hash = ?",
                        (
                            m.width if m else None,
                            m.height if m else None,
                            m.taken_at if m else None,
                            m.taken_at_source if m and m.taken_at else None,
                            m.lat if m else None,
                            m.lon if m else None,
                            m.format if m else c.format,
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

    def dates_unread(self, limit: int) -> list[tuple[str, bytes]]:
        """Contents that decode but whose metadata has not been read for a capture time by
        the current readers (indexed before them), with a live path each: at most `limit`."""
        return [
            (str(h), bytes(p))
            for h, p in self.conn.execute(
                "SELECT c.hash, (SELECT min(f.path) FROM files f WHERE f.content_hash = c.hash "
                "AND f.state = 'live' AND f.offline_since IS NULL) AS path FROM contents c "
                "WHERE c.dates_read = 0 AND c.error IS NULL AND path IS NOT NULL LIMIT ?",
                (limit,),
            )
        ]

    def set_dates(self, found: Iterable[tuple[str, str | None, str | None]]) -> int:
        """Record what the metadata of these contents says: (hash, capture time or None,
        its source); each is marked read. Returns how many got a capture time."""
        rows = list(found)
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE contents SET taken_at = coalesce(?, taken_at), "
                "taken_at_source = CASE WHEN ? IS NULL THEN taken_at_source ELSE ? END, "
                "dates_read = 1 WHERE hash = ?",
                [(taken, taken, source, h) for h, taken, source in rows],
            )
        return sum(1 for _, taken, _ in rows if taken is not None)

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
        """Counts over live files; `model_id` None counts nothing as embedded. `pending`
        and `failed` are counted by `count_statuses`, as the gallery's status page counts
        the published catalog."""
        one = self.conn.execute
        counted = count_statuses(
            self.conn,
            f"SELECT p.content_hash, {PHOTO_STATUS}, p.offline FROM published_files p "
            + EMBEDDED_BY.format(schema=""),
            (model_id,),
        )
        return {
            "files": counted["files"],
            "offline": counted["offline"],
            "contents": counted["contents"],
            "embedded": counted["indexed"],
            "pending": counted["pending"],
            "failed": counted["failed"],
            "undecodable": counted["undecodable"],
            "unreadable": counted["unreadable"],
            "clusters": one("SELECT count(*) FROM published_albums").fetchone()[0],
            "labeled": one(
                "SELECT count(*) FROM published_albums WHERE title IS NOT NULL"
            ).fetchone()[0],
            "events": dict(
                one(
                    "SELECT kind, count(*) FROM published_events GROUP BY kind ORDER BY kind"
                ).fetchall()
            ),
            "formats": dict(
                one(
                    "SELECT format, count(*) FROM published_files WHERE format IS NOT NULL "
                    "GROUP BY format ORDER BY count(*) DESC, format"
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
