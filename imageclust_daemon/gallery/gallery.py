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
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType

from imageclust_daemon.grouping import label, places
from imageclust_daemon.published.reader import open_catalog
from imageclust_daemon.records import GroupFacts
from imageclust_daemon.state.store import count_statuses

ALBUMS_PER_PAGE = 60
PHOTOS_PER_PAGE = 200


def album_facts(facts: GroupFacts) -> tuple[str | None, str | None]:
    """(when, where) an album's card and page say: the title rules' own (`label.album_when`,
    `label.agreed_position`), so a card never states a date range or a place that most
    of its photos do not support."""
    when = label.album_when(facts, now=datetime.now())
    centre = label.agreed_position(facts)
    place = places.nearest_place(*centre) if centre is not None else None
    return when, str(place) if place is not None else None


def _tomorrow() -> str:
    """The first capture time no camera can mean yet (a day of time zones ahead)."""
    return (datetime.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")


class CatalogMissing(Exception):
    """No catalog has been published yet, or it cannot be read."""


@dataclass(frozen=True)
class Album:
    id: int
    title: str | None
    phrase: str | None
    size: int
    when: str | None  # as the title rules say it ("June 2024"): only what most photos support
    place: str | None  # where most of its photos were taken (label.agreed_position)
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
    event_id: int | None = None
    event_title: str | None = None
    format: str | None = None  # of the original shown (JPEG, HEIF, a RAW, ...)


@dataclass(frozen=True)
class Event:
    id: int
    title: str
    kind: str  # moment, day, trip
    started_at: str
    ended_at: str
    place: str | None
    size: int


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
        # newest: by the latest capture time a camera could mean (not a clock set to 2038)
        by = "c.size DESC, c.id" if order != "new" else "newest DESC, c.id"
        where, params = "", list[object]([_tomorrow()])
        if ids is not None:
            where = f"WHERE c.id IN ({','.join('?' * len(ids))})"
            params += list(ids)
            limit = ""
        else:
            limit = f"LIMIT {ALBUMS_PER_PAGE} OFFSET {ALBUMS_PER_PAGE * max(0, page)}"
        rows = self.conn.execute(
            "SELECT c.id, c.title, c.catchy_phrase, c.size, "
            "max(CASE WHEN p.taken_at >= '1826' AND p.taken_at < ? THEN p.taken_at END) "
            f"AS newest FROM clusters c LEFT JOIN photos p ON p.cluster_id = c.id {where} "
            f"GROUP BY c.id ORDER BY {by} {limit}",
            params,
        ).fetchall()
        chosen = [r[0] for r in rows]
        covers = self._covers(chosen)
        facts = self._facts(chosen)
        out = []
        for i, t, ph, n, _ in rows:
            when, place = album_facts(facts.get(i, GroupFacts(n)))
            out.append(Album(i, t, ph, n, when, place, covers.get(i, [])))
        return out

    def _facts(self, ids: list[int]) -> dict[int, GroupFacts]:
        """What the title rules read of each album: its size, capture times, positions."""
        if not ids:
            return {}
        taken: dict[int, list[str]] = {}
        where: dict[int, list[tuple[float, float]]] = {}
        marks = ",".join("?" * len(ids))
        for cluster_id, taken_at, lat, lon in self.conn.execute(
            "SELECT cluster_id, min(taken_at), min(lat), min(lon) FROM photos "
            f"WHERE cluster_id IN ({marks}) AND status = 'indexed' "
            "GROUP BY cluster_id, shown_as",  # a photo once, as the album counts it
            ids,
        ):
            if taken_at:
                taken.setdefault(cluster_id, []).append(taken_at)
            if lat is not None and lon is not None:
                where.setdefault(cluster_id, []).append((float(lat), float(lon)))
        sizes = dict(self.conn.execute(f"SELECT id, size FROM clusters WHERE id IN ({marks})", ids))
        return {
            i: GroupFacts(int(sizes.get(i, 0)), tuple(taken.get(i, ())), tuple(where.get(i, ())))
            for i in ids
        }

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
            "c.title, p.offline, p.event_id, e.title, p.format FROM photos p "
            "LEFT JOIN clusters c ON c.id = p.cluster_id LEFT JOIN events e ON e.id = p.event_id "
            "WHERE p.shown_as = ? AND p.status = 'indexed' "
            "ORDER BY p.content_hash != p.shown_as, p.path",  # its own files, then a pair's RAW
            (content_hash,),
        ).fetchall()
        if not rows:
            return None
        _, taken, place, size, width, height, cluster_id, title, _, event, named, kind = rows[0]
        offline = all(r[8] for r in rows)
        paths = [r[0] for r in rows]
        return Photo(
            content_hash,
            paths,
            taken,
            place,
            size,
            width,
            height,
            cluster_id,
            title,
            offline,
            event,
            named,
            kind,
        )

    def original_files(self, content_hash: str) -> list[tuple[bytes, str, str | None]]:
        """(exact path, path as text, format) of each file of an indexed content, online
        ones first."""
        return [
            (bytes(raw), str(text), kind)
            for raw, text, kind in self.conn.execute(
                "SELECT path_bytes, path, format FROM photos "
                "WHERE content_hash = ? AND status = 'indexed' ORDER BY offline, path",
                (content_hash,),
            )
        ]

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

    # -- sequences a photo is seen in ---------------------------------------------------------

    def album_sequence(self, cluster_id: int) -> list[str]:
        """An album's photos in the order its page shows them (most typical first)."""
        return [
            h
            for (h,) in self.conn.execute(
                "SELECT content_hash FROM cluster_members WHERE cluster_id = ? ORDER BY rank",
                (cluster_id,),
            )
        ]

    def event_sequence(self, event_id: int) -> list[str]:
        """An event's photos in time order (each shown once: a RAW by its JPEG)."""
        return [
            h
            for (h,) in self.conn.execute(
                "SELECT shown_as FROM photos WHERE event_id = ? AND status = 'indexed' "
                "GROUP BY shown_as ORDER BY min(taken_at), min(path)",
                (event_id,),
            )
        ]

    # -- events -----------------------------------------------------------------------------

    def events(self) -> list[Event]:
        """Every event, newest first."""
        rows = self.conn.execute(
            "SELECT id, title, kind, started_at, ended_at, place, size FROM events "
            "ORDER BY started_at DESC, id DESC"
        ).fetchall()
        return [Event(*row) for row in rows]

    def event(self, event_id: int) -> Event | None:
        row = self.conn.execute(
            "SELECT id, title, kind, started_at, ended_at, place, size FROM events WHERE id = ?",
            (event_id,),
        ).fetchone()
        return Event(*row) if row else None

    def event_covers(self, ids: list[int], per_event: int = 4) -> dict[int, list[str]]:
        """A few photos of each event, spread over its time."""
        out: dict[int, list[str]] = {}
        for event_id in ids:
            found = self.event_sequence(event_id)
            if len(found) > per_event:
                step = len(found) / per_event
                found = [found[int(i * step)] for i in range(per_event)]
            out[event_id] = found
        return out

    def positions(self) -> list[tuple[float, float, str, int | None]]:
        """Every indexed photo with a position: (lat, lon, content hash, event id)."""
        return [
            (float(lat), float(lon), h, e)
            for lat, lon, h, e in self.conn.execute(
                "SELECT min(lat), min(lon), shown_as, min(event_id) FROM photos "
                "WHERE status = 'indexed' AND lat IS NOT NULL AND lon IS NOT NULL "
                "GROUP BY shown_as"
            )
        ]

    def failed_photo(self, path: str) -> tuple[str, str | None] | None:
        """(path, why) of a photo of the library that failed at indexing."""
        row = self.conn.execute(
            "SELECT path, error FROM photos WHERE path = ? AND status = 'failed'", (path,)
        ).fetchone()
        return (str(row[0]), row[1]) if row else None

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
