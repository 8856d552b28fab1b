"""What the gallery shows, read from the published catalog (and the search snapshot).

A `Reader` holds one read-only connection, so one page sees one catalog however
often the daemon republishes meanwhile (a publish renames a new file over the old
one; an open connection keeps reading the old). Nothing here writes.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from imageclust_daemon.published import search
from imageclust_daemon.published.reader import open_catalog
from imageclust_daemon.state.store import count_statuses

ALBUMS_PER_PAGE = 60
PHOTOS_PER_PAGE = 200


class CatalogMissing(Exception):
    """No catalog has been published yet, or it cannot be read."""


@dataclass(frozen=True)
class Album:
    id: int
    title: str | None
    phrase: str | None
    size: int
    first: str | None  # capture times, ISO 8601
    last: str | None
    place: str | None
    covers: list[str]  # up to 4 content hashes, most typical first


@dataclass(frozen=True)
class Photo:
    content_hash: str
    paths: list[str]
    taken_at: str | None
    place: str | None
    size: int | None
    width: int | None
    height: int | None
    cluster_id: int | None
    title: str | None
    offline: bool


@dataclass(frozen=True)
class Status:
    counts: dict[str, int]
    albums: int
    info: dict[str, str]
    failed: list[tuple[str, str]]  # (path, reason), the first few
    failed_total: int
    offline_folders: list[tuple[str, int]]  # (folder, photos)


class Reader:
    """One read of the catalog at `path` (a context manager)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise CatalogMissing(f"no catalog at {path} yet: the first publish makes it")
        try:
            self.conn = open_catalog(path, any_thread=True)
            self.conn.execute("BEGIN")  # one snapshot of the file for the whole page
            self.conn.execute("SELECT 1 FROM catalog_info LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise CatalogMissing(f"{path}: cannot read the catalog: {exc}") from None

    def __enter__(self) -> Reader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.conn.close()

    # -- albums ----------------------------------------------------------------------------

    def album_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM clusters").fetchone()[0])

    def albums(
        self, order: str = "size", page: int = 0, ids: list[int] | None = None
    ) -> list[Album]:
        """A page of albums, biggest (`size`) or newest (`new`) first; or those `ids`."""
        if ids is None and order != "new":  # the page's ids first: dates for 60, not all
            ids = [
                i
                for (i,) in self.conn.execute(
                    "SELECT id FROM clusters ORDER BY size DESC, id LIMIT ? OFFSET ?",
                    (ALBUMS_PER_PAGE, ALBUMS_PER_PAGE * max(0, page)),
                )
            ]
        by = "c.size DESC, c.id" if order != "new" else "max(p.taken_at) DESC, c.id"
        where, params = "", []
        if ids is not None:
            where = f"WHERE c.id IN ({','.join('?' * len(ids))})"
            params = list(ids)
            limit = ""
        else:
            limit = f"LIMIT {ALBUMS_PER_PAGE} OFFSET {ALBUMS_PER_PAGE * max(0, page)}"
        rows = self.conn.execute(
            "SELECT c.id, c.title, c.catchy_phrase, c.size, min(p.taken_at), max(p.taken_at) "
            f"FROM clusters c LEFT JOIN photos p ON p.cluster_id = c.id {where} "
            f"GROUP BY c.id ORDER BY {by} {limit}",
            params,
        ).fetchall()
        chosen = [r[0] for r in rows]
        covers = self._covers(chosen)
        places = self._places(chosen)
        return [
            Album(i, t, ph, n, first, last, places.get(i), covers.get(i, []))
            for i, t, ph, n, first, last in rows
        ]

    def _covers(self, ids: list[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        if not ids:
            return out
        marks = ",".join("?" * len(ids))
        for cluster_id, content_hash in self.conn.execute(
            f"SELECT cluster_id, content_hash FROM cluster_members WHERE cluster_id IN ({marks}) "
            "AND rank < 4 ORDER BY cluster_id, rank",
            ids,
        ):
            out.setdefault(cluster_id, []).append(content_hash)
        return out

    def _places(self, ids: list[int]) -> dict[int, str]:
        """Each album's most frequent place, when most of its located photos share it."""
        if not ids:
            return {}
        counts: dict[int, Counter[str]] = {}
        marks = ",".join("?" * len(ids))
        for cluster_id, place, n in self.conn.execute(
            f"SELECT cluster_id, place, count(*) FROM photos WHERE cluster_id IN ({marks}) "
            "AND place IS NOT NULL GROUP BY cluster_id, place",
            ids,
        ):
            counts.setdefault(cluster_id, Counter())[place] = n
        out = {}
        for cluster_id, counter in counts.items():
            place, n = counter.most_common(1)[0]
            if n * 2 > sum(counter.values()):
                out[cluster_id] = place
        return out

    def album(self, cluster_id: int) -> Album | None:
        found = self.albums(ids=[cluster_id])
        return found[0] if found else None

    def album_photos(self, cluster_id: int, page: int = 0) -> list[str]:
        """A page of an album's distinct photos (content hashes), most typical first."""
        return [
            h
            for (h,) in self.conn.execute(
                "SELECT content_hash FROM cluster_members WHERE cluster_id = ? ORDER BY rank "
                "LIMIT ? OFFSET ?",
                (cluster_id, PHOTOS_PER_PAGE, PHOTOS_PER_PAGE * max(0, page)),
            )
        ]

    # -- photos ----------------------------------------------------------------------------

    def photo(self, content_hash: str) -> Photo | None:
        rows = self.conn.execute(
            "SELECT p.path, p.taken_at, p.place, p.size, p.width, p.height, p.cluster_id, "
            "c.title, p.offline FROM photos p LEFT JOIN clusters c ON c.id = p.cluster_id "
            "WHERE p.shown_as = ? AND p.status = 'indexed' "
            "ORDER BY p.content_hash != p.shown_as, p.path",  # its own files, then a pair's RAW
            (content_hash,),
        ).fetchall()
        if not rows:
            return None
        _, taken, place, size, width, height, cluster_id, title, _ = rows[0]
        offline = all(r[8] for r in rows)
        paths = [r[0] for r in rows]
        return Photo(
            content_hash, paths, taken, place, size, width, height, cluster_id, title, offline
        )

    def originals(self, content_hash: str) -> list[bytes]:
        """The exact paths of an indexed content, online ones first: only what the catalog
        lists is ever opened."""
        return [
            raw
            for (raw,) in self.conn.execute(
                "SELECT path_bytes FROM photos WHERE content_hash = ? AND status = 'indexed' "
                "ORDER BY offline, path",
                (content_hash,),
            )
        ]

    def title_matches(self, text: str, limit: int = 30) -> list[int]:
        """Albums whose title or phrase has every word of `text` (full-text index)."""
        words = [w for w in "".join(c if c.isalnum() else " " for c in text).split() if w]
        if not words:
            return []
        match = " ".join(f'"{w}"' for w in words)
        try:
            return [
                r[0]
                for r in self.conn.execute(
                    "SELECT rowid FROM clusters_fts WHERE clusters_fts MATCH ? ORDER BY rank "
                    "LIMIT ?",
                    (match, limit),
                )
            ]
        except sqlite3.Error:  # a catalog older than the full-text index
            return []

    # -- the library as a picture ----------------------------------------------------------

    def layout(self, snapshot: search.Snapshot) -> list[tuple[int, float, float, int, str | None]]:
        """Each album at the first two principal components of its photos' mean embedding:
        (id, x, y, size, title), x and y in [0, 1]."""
        rows = self.conn.execute(
            "SELECT m.cluster_id, m.content_hash FROM cluster_members m ORDER BY m.cluster_id"
        ).fetchall()
        if not rows or not len(snapshot):
            return []
        keys = snapshot.hashes.view(f"S{snapshot.hashes.shape[1]}").ravel()
        wanted = np.array([bytes.fromhex(h) for _, h in rows], dtype=keys.dtype)
        at = np.clip(np.searchsorted(keys, wanted), 0, len(snapshot) - 1)
        found = keys[at] == wanted
        ids = np.array([c for c, _ in rows])[found]
        vectors = np.asarray(snapshot.matrix[at[found]], dtype=np.float64)
        albums, index = np.unique(ids, return_inverse=True)
        centres = np.zeros((len(albums), snapshot.dim))
        np.add.at(centres, index, vectors)
        centres /= np.maximum(np.bincount(index)[:, None], 1)
        if len(albums) == 1:
            xy = np.full((1, 2), 0.5)
        else:
            centred = centres - centres.mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            xy = centred @ vt[:2].T
            span = xy.max(axis=0) - xy.min(axis=0)
            xy = (xy - xy.min(axis=0)) / np.where(span > 0, span, 1)
        info = {i: (n, t) for i, n, t in self.conn.execute("SELECT id, size, title FROM clusters")}
        out = []
        for album, (x, y) in zip(albums.tolist(), xy.tolist(), strict=True):
            size, title = info.get(album, (0, None))
            out.append((album, x, y, size, title))
        return out

    # -- status ----------------------------------------------------------------------------

    def status(self, shown: int = 100) -> Status:
        counts = count_statuses(self.conn, "SELECT content_hash, status, offline FROM photos")
        info = dict(self.conn.execute("SELECT key, value FROM catalog_info"))
        failed = self.conn.execute(
            "SELECT path, error FROM photos WHERE status = 'failed' ORDER BY path LIMIT ?",
            (shown,),
        ).fetchall()
        folders = Counter(
            os.path.dirname(p)
            for (p,) in self.conn.execute("SELECT path FROM photos WHERE offline")
        )
        return Status(
            {k: int(v) for k, v in counts.items()},
            self.album_count(),
            {k: str(v) for k, v in info.items()},
            [(str(p), str(e)) for p, e in failed],
            counts["failed_files"],
            folders.most_common(shown),
        )
