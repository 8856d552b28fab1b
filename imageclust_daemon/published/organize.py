"""The organized view: a folder with one sub-folder of symlinks per titled group, and
`Events/<year>/<YYYY-MM-DD title>/` with one per event.

`organize.dir` is a symlink to a versioned tree beside it (`.<name>.<stamp>`). A new
tree is built completely, then the symlink is swapped with one atomic rename, and
the old tree is removed. A file browser never sees a half-built folder. Only
symlinks are created; the photos themselves are never touched. A real folder
(not made by imageclust) at `organize.dir` is refused, never replaced.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageclust_daemon.errors import ImageclustError
from imageclust_daemon.published.reader import open_catalog

_NAME_MAX = 120  # bytes; well below every filesystem's 255
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


class OrganizeError(ImageclustError):
    """The organized folder cannot be built where configured."""


EVENTS = "Events"  # the folder of events, beside the albums' folders


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    title: str | None
    paths: tuple[bytes, ...]  # live files of the group's members
    day: str | None = None  # an event's first day, YYYY-MM-DD (None: an album)


def safe_name(title: str | None, fallback: str) -> str:
    """A folder name any filesystem accepts: no separators or control characters, not hidden."""
    name = _UNSAFE.sub(" ", title or "")
    name = re.sub(r"\s+", " ", name).strip().lstrip(".").strip()
    encoded = name.encode("utf-8")[:_NAME_MAX]
    name = encoded.decode("utf-8", "ignore").strip()
    return name or fallback


def _unique(name: bytes, taken: set[bytes]) -> bytes:
    """`name`, or `name (2)`, `name (3)`... before the extension; case-insensitively unique."""
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = stem + f" ({n})".encode() + ext
    taken.add(candidate.lower())
    return candidate


def build(groups: Sequence[Group], dest: Path) -> int:
    """Build the tree for `groups` and swap it in at `dest`; returns the number of links."""
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and not dest.is_symlink():
        raise OrganizeError(
            f"organize.dir {dest} is a real folder, not imageclust's view; "
            "choose a folder that does not exist yet"
        )
    previous = os.readlink(dest) if dest.is_symlink() else None
    tree_name = f".{dest.name}.{time.time_ns()}"
    tree = parent / tree_name
    tree.mkdir()
    links = 0
    try:
        folders: set[bytes] = {EVENTS.lower().encode()}
        by_year: dict[str, set[bytes]] = {}
        for group in groups:
            if group.day is None:
                under, taken = os.fsencode(tree), folders
                name = safe_name(group.title, f"Group {group.id}")
                if name.casefold() == EVENTS.casefold():
                    name += " (album)"  # beside the events' folder
            else:
                year = group.day[:4]
                under = os.path.join(os.fsencode(tree), EVENTS.encode(), year.encode())
                os.makedirs(under, exist_ok=True)
                taken = by_year.setdefault(year, set())
                name = safe_name(f"{group.day} {group.title or ''}", f"{group.day} {group.id}")
            folder = os.path.join(under, _unique(name.encode("utf-8"), taken))
            os.mkdir(folder)
            names: set[bytes] = set()
            for path in group.paths:
                link = os.path.join(folder, _unique(os.path.basename(path), names))
                os.symlink(path, link)
                links += 1
        staged = parent / f".{dest.name}.link"
        staged.unlink(missing_ok=True)
        os.symlink(tree_name, staged)
        os.replace(staged, dest)  # the one atomic step
    except BaseException:
        shutil.rmtree(tree, ignore_errors=True)
        raise
    if previous and os.path.basename(previous).startswith(f".{dest.name}."):
        shutil.rmtree(parent / os.path.basename(previous), ignore_errors=True)
    return links


def is_current(dest: Path, catalog: Path) -> bool:
    """Whether the view at `dest` exists and was built after the catalog was published."""
    try:
        built = os.lstat(dest).st_mtime_ns
        return dest.is_dir() and built >= os.stat(catalog).st_mtime_ns
    except OSError:
        return False


def groups_from_catalog(catalog: Path) -> list[Group]:
    """The titled groups and the events, and their files, as the published catalog has
    them."""
    conn = open_catalog(catalog)
    try:
        # One link per distinct photo: a duplicate (same content at two paths) is shown
        # once, as `clusters.size` counts it once: at its first path that is online.
        rows = conn.execute(
            "SELECT c.id, c.title, coalesce(p.content_hash, p.path), p.path_bytes "
            "FROM clusters c JOIN photos p ON p.cluster_id = c.id "
            "ORDER BY c.id, 3, p.offline, p.path_bytes"
        ).fetchall()
        event_rows = conn.execute(
            "SELECT e.id, e.title, coalesce(p.content_hash, p.path), p.path_bytes, "
            "substr(e.started_at, 1, 10) FROM events e JOIN photos p ON p.event_id = e.id "
            "ORDER BY e.started_at, e.id, 3, p.offline, p.path_bytes"
        ).fetchall()
    finally:
        conn.close()
    return _grouped(rows, None) + _grouped(event_rows, "event")


def _grouped(rows: list[tuple[Any, ...]], kind: str | None) -> list[Group]:
    groups: dict[int, tuple[str | None, list[bytes], str | None]] = {}
    shown: set[tuple[int, str]] = set()
    for group_id, title, content, path, *day in rows:
        if (group_id, content) in shown:
            continue
        shown.add((group_id, content))
        groups.setdefault(group_id, (title, [], day[0] if kind else None))[1].append(path)
    for _, paths, _ in groups.values():
        paths.sort()
    return [Group(gid, title, tuple(paths), day) for gid, (title, paths, day) in groups.items()]
