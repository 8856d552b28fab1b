"""Thumbnails and previews for the gallery: made on demand, cached by content hash.

A picture is made from the original by `decode.thumbnail_jpeg` (the decode budget
and checks of indexing, a reduced-scale JPEG decode, EXIF orientation applied),
at most `workers` at once, and kept under `<data_dir>/thumbs/<size>/<hh>/<hash>.jpg`.
Keyed by content, a moved or duplicated photo shares its pictures; a picture never
changes for its key, so it is served as immutable. The cache is written atomically
(a temp file renamed into place) and pruned of contents the library forgot.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from imageclust_daemon.errors import DecodeError
from imageclust_daemon.index import sandbox
from imageclust_daemon.index.inflight import InFlight

SIZES = {"thumb": 256, "preview": 1280}
_HASH = re.compile(r"[0-9a-f]{64}")


class Unavailable(Exception):
    """No original of this content can be read now (gone, unreadable, not an image)."""


BROKEN_KEPT = 10_000  # pictures remembered as not makeable (then forgotten at once)


def _signature(paths: list[bytes]) -> tuple[object, ...]:
    """The files as they are now (size and modification time; None where not there)."""
    found: list[object] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found.append((path, None))
            continue
        found.append((path, st.st_size, st.st_mtime_ns))
    return tuple(found)


class ThumbCache:
    def __init__(self, root: Path, workers: int = 2, journal: InFlight | None = None) -> None:
        """`journal`: what the pictures are made under, so that a photo whose picture
        ended an earlier process is made in a child (`sandbox.picture`)."""
        self.root = root
        self.journal = journal
        self._slots = threading.BoundedSemaphore(workers)
        self._making: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()
        # Pictures that could not be made, with the files as they were then: asked again
        # for the same files unchanged, the answer is the same without decoding them again.
        self._broken: dict[tuple[str, str], tuple[tuple[object, ...], str]] = {}

    def path(self, content_hash: str, kind: str) -> Path:
        if not _HASH.fullmatch(content_hash) or kind not in SIZES:
            raise ValueError(f"not a content hash or picture kind: {content_hash!r} {kind!r}")
        return self.root / kind / content_hash[:2] / f"{content_hash}.jpg"

    def get(self, content_hash: str, kind: str, originals: Iterable[bytes]) -> Path:
        """The cached picture, made from the first of `originals` that reads as an image."""
        dest = self.path(content_hash, kind)
        if dest.is_file():
            return dest
        with self._lock:
            lock = self._making.setdefault((content_hash, kind), threading.Lock())
        paths = list(originals)
        files = _signature(paths)
        with lock:  # one maker per picture; the others wait for it and find it made
            if dest.is_file():
                return dest
            known = self._broken.get((content_hash, kind))
            if known is not None and known[0] == files:
                raise Unavailable(known[1])
            try:
                with self._slots:
                    data = self._make(paths, SIZES[kind])
            except Unavailable as exc:
                with self._lock:
                    if len(self._broken) >= BROKEN_KEPT:
                        self._broken.clear()
                    self._broken[(content_hash, kind)] = (files, str(exc))
                raise
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        with self._lock:
            self._making.pop((content_hash, kind), None)
        return dest

    def _make(self, paths: Iterable[bytes], size: int) -> bytes:
        reasons = []
        for raw in paths:
            shown = os.fsdecode(raw)
            try:
                return sandbox.picture(raw, size, self.journal, path=shown)
            except (OSError, DecodeError) as exc:
                reasons.append(f"{shown}: {getattr(exc, 'strerror', None) or exc}")
        raise Unavailable("; ".join(reasons) or "no file of the library has this content")

    def prune(self, keep: set[str]) -> int:
        """Delete the pictures of contents not in `keep`; returns how many."""
        removed = 0
        for kind in SIZES:
            folder = self.root / kind
            if not folder.is_dir():
                continue
            for sub in folder.iterdir():
                for item in sub.iterdir() if sub.is_dir() else ():
                    if item.name.startswith("."):  # a maker's temp file: only a dead one's
                        with contextlib.suppress(OSError):
                            if time.time() - item.stat().st_mtime > 3600:
                                item.unlink()
                        continue
                    if item.name.removesuffix(".jpg") not in keep:
                        with contextlib.suppress(OSError):
                            item.unlink()
                            removed += 1
        return removed
