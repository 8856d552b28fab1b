"""Watching the roots: watchdog observers feed a buffer of touched paths that must settle.

Events are hints, never the truth: a path an event names is looked at again
(stat) before anything is read, and a file is read only once its size and
mtime have stayed the same for `settle_seconds` (a slow copy is indexed once,
complete). Events are lost (inotify queue overflow, the daemon down, network
filesystems that send none), so the daemon also reconciles every root on a
schedule; an overflow asks for one at once.

An exception in a watchdog handler kills the observer thread silently, so the
handler catches everything, and `Watcher.healthy()` lets the daemon notice a
dead observer and restart it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)

# Names that are still being written or are editors' scratch files: ignored until
# renamed to their final name (the rename is an event of its own).
TEMPORARY = (
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "*.tmp",
    "*.temp",
    "*~",
    "#*#",
    "*.swp",
    "*.sb-*",
    "~$*",
    "*.!qB",
    "*.opdownload",
)

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "fuse.sshfs",
        "sshfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "fuse.rclone",
        "davfs",
        "fuse.davfs2",
        "webdav",
        "ncpfs",
        "afpfs",
    }
)


def is_temporary(name: str) -> bool:
    """Hidden files and the usual partial-download and atomic-save names."""
    return name.startswith(".") or any(fnmatch.fnmatch(name, p) for p in TEMPORARY)


def mount_type(path: Path, mounts: str = "/proc/mounts") -> str | None:
    """The filesystem type of the mount that holds `path` (Linux), or None if unknown."""
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            table = [line.split() for line in f]
    except OSError:
        return None
    real = os.path.realpath(path)
    best, kind = "", None
    for fields in table:
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


@dataclass
class _Pending:
    touched: float  # last event or change seen
    signature: tuple[int, int] | None = None  # (size, mtime_ns) at the last look


@dataclass
class ChangeBuffer:
    """Paths touched by events, waiting to settle. Fed by observer threads; thread-safe."""

    settle_seconds: float
    clock: Callable[[], float] = time.monotonic
    _pending: dict[bytes, _Pending] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    rescan: threading.Event = field(default_factory=threading.Event)  # a full rescan is due
    rescan_reason: str = ""  # why, for the log line when it runs

    def request_rescan(self, reason: str) -> None:
        """Ask for a full rescan of every root (events were lost, a root came back, ...)."""
        self.rescan_reason = reason
        self.rescan.set()

    def touch(self, path: bytes) -> None:
        with self._lock:
            entry = self._pending.get(path)
            if entry is None:
                self._pending[path] = _Pending(self.clock())
            else:
                entry.touched = self.clock()

    def touch_all(self, paths: Sequence[bytes]) -> None:
        for path in paths:
            self.touch(path)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def take_settled(self) -> list[bytes]:
        """Paths ready to look at: gone, folders, or files unchanged for `settle_seconds`."""
        now = self.clock()
        with self._lock:
            candidates = list(self._pending.items())
        ready = []
        for path, entry in candidates:
            try:
                st = os.stat(path)
            except OSError:
                ready.append(path)  # deleted or moved away: the index marks it gone
                continue
            if not stat.S_ISREG(st.st_mode):
                ready.append(path)
                continue
            signature = (st.st_size, st.st_mtime_ns)
            with self._lock:
                if signature != entry.signature:
                    entry.signature, entry.touched = signature, now
                elif now - entry.touched >= self.settle_seconds:
                    ready.append(path)
        with self._lock:
            for path in ready:
                latest = self._pending.get(path)
                if latest is not None and latest.touched <= now:  # not touched again meanwhile
                    del self._pending[path]
        return ready


# The events that say a file may have changed. Asked of the kernel by this list (watchdog
# builds the inotify mask from it): with every event, the daemon's own rescans made an
# IN_OPEN and an IN_CLOSE_NOWRITE for each folder they list, so at 1M photos in 10,000
# folders each rescan overflowed the 16,384-event queue, and the overflow asked for the
# next rescan: the daemon never came to rest.
CHANGE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,  # closed after writing
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


class _Handler(FileSystemEventHandler):
    def __init__(self, buffer: ChangeBuffer) -> None:
        self._buffer = buffer

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Never let an exception out: it would kill the observer thread silently.
        try:
            if event.event_type in ("opened", "closed_no_write"):
                return
            for raw in (event.src_path, getattr(event, "dest_path", "")):
                if not raw:
                    continue
                path = os.fsencode(raw)
                if not is_temporary(os.fsdecode(os.path.basename(path))):
                    self._buffer.touch(path)
        except Exception:
            log.exception("error handling a filesystem event; a reconcile will catch up")
            self._buffer.request_rescan("a file event could not be handled")


class _OverflowAlarm(logging.Handler):
    """watchdog only logs an inotify overflow; turn that log line into a rescan request."""

    def __init__(self, buffer: ChangeBuffer) -> None:
        super().__init__(logging.WARNING)
        self._buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._buffer.request_rescan("file events were lost (inotify queue overflow)")


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = folder.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Watcher:
    """Native observers where they work, polling where they cannot (network mounts, limits)."""

    def __init__(
        self,
        roots: Sequence[Path],
        buffer: ChangeBuffer,
        *,
        force_poll: bool = False,
        poll_seconds: float = 30.0,
    ) -> None:
        self.roots = list(roots)
        self._buffer = buffer
        self._force_poll = force_poll
        self._poll_seconds = poll_seconds
        self._observers: list[BaseObserver] = []
        self._watched: dict[Path, tuple[int, int] | None] = {}  # root -> (device, inode)
        self._alarm = _OverflowAlarm(buffer)
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            logging.getLogger("watchdog").addHandler(self._alarm)
            for root in self.roots:
                if not root.is_dir():
                    log.warning("%s: not there (unmounted?); will watch it once it is back", root)
                    continue
                kind = mount_type(root)
                use_poll = self._force_poll or kind in NETWORK_FILESYSTEMS
                if use_poll and not self._force_poll:
                    log.warning("%s is on %s: no change events there; polling it", root, kind)
                observer = None if use_poll else self._start_native(root)
                native = observer is not None
                if observer is None:
                    observer = self._start(PollingObserver(timeout=self._poll_seconds), root)
                self._observers.append(observer)
                # Polling looks at the path whatever folder is there now; and network
                # filesystems' inode numbers may not be stable. So only native roots.
                self._watched[root] = _identity(root) if native else None

    def _start(self, observer: BaseObserver, root: Path) -> BaseObserver:
        """One observer per root, so one that fails or dies takes no other root with it."""
        observer.schedule(
            _Handler(self._buffer), os.fspath(root), recursive=True, event_filter=CHANGE_EVENTS
        )
        observer.daemon = True
        observer.start()  # inotify adds its watches here, not in schedule()
        return observer

    def _start_native(self, root: Path) -> BaseObserver | None:
        observer = Observer()
        try:
            return self._start(observer, root)
        except OSError as exc:  # e.g. ENOSPC: the inotify watch limit
            observer.stop()
            log.warning(
                "%s: cannot watch natively (%s); polling it every %g s "
                "(raise fs.inotify.max_user_watches to fix)",
                root,
                exc,
                self._poll_seconds,
            )
            return None

    def healthy(self) -> bool:
        """Every observer and its emitter alive (an emitter ends when its root is deleted
        or unmounted, while the observer lives on), every root that exists watched, and
        every root watched natively still there."""
        with self._lock:
            for observer in self._observers:
                emitters = observer.emitters
                if not observer.is_alive() or not emitters:
                    return False
                if not all(e.is_alive() for e in emitters):
                    return False
            # A root renamed (or moved) away: inotify follows the folder to its new name,
            # its emitter lives on, and nothing says the root is gone; a restart and the
            # rescan that follows it see the root missing and keep its photos offline.
            if any(self._watched.get(r) is not None and not r.is_dir() for r in self.roots):
                return False
            # A root renamed away and made again: inotify follows the old folder (its
            # emitter lives on) and never sees the new one at the root's path.
            return all(
                r in self._watched and self._watched[r] in (None, _identity(r))
                for r in self.roots
                if r.is_dir()
            )

    def stop(self) -> None:
        """Stop and join every observer; idempotent."""
        with self._lock:
            observers, self._observers = self._observers, []
            self._watched = {}
            logging.getLogger("watchdog").removeHandler(self._alarm)
        for observer in observers:
            observer.stop()
        for observer in observers:
            observer.join(timeout=5)

    def restart(self, roots: Sequence[Path] | None = None) -> None:
        self.stop()
        if roots is not None:
            self.roots = list(roots)
        self.start()
