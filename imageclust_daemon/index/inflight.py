"""Which photos are being decoded right now, kept in a file, so that no photo can crash-loop.

A photo whose decoding kills the process (the OOM killer, a crash in a C decoder)
is never recorded as failed: the process is gone before it can. Without a trace,
every rerun and every service restart reads it again and dies again. So before
a content is decoded its hash is appended to ``<data_dir>/decoding.journal``
(``+hash``), and after, whatever the outcome, again (``-hash``). A hash started and
never ended was in flight when the process died.

The next run takes those as *suspects* and decodes each in a child process of
its own (`sandbox.decode_in_child`): a suspect that kills its child is recorded
as failed with the reason and the service goes on; an innocent one that merely
shared the moment (other decode threads were busy too) is decoded there fine.
So a bad photo costs the process once, and no innocent photo is lost for it.

Appends are single `os.write` calls on an O_APPEND descriptor, each line far
shorter than PIPE_BUF, so the decode threads never interleave within a line. No
fsync: a killed process's writes are in the kernel already; only a power cut
loses them, and then the photo is merely tried once more. Only the holder of
the library lock writes the journal.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from types import TracebackType

from imageclust_daemon.durable import process_alive

# Rewrite the file with only what is still open after this many appended lines, so a
# first index of a million photos does not leave a 130 MB journal behind.
COMPACT_EVERY = 8192


def read(path: Path) -> set[str]:
    """The hashes the journal at `path` leaves open: suspects not yet decoded, and
    contents started but never ended."""
    try:
        text = path.read_bytes().decode("ascii", "replace")
    except FileNotFoundError:
        return set()
    open_: set[str] = set()
    for line in text.splitlines():
        mark, digest = line[:1], line[1:].strip()
        if not digest:
            continue
        if mark in ("+", "!"):
            open_.add(digest)
        elif mark == "-":
            open_.discard(digest)
    return open_


class InFlight:
    """The journal of one indexing run. `suspects` are what earlier runs left open."""

    def __init__(self, path: Path, inherited: frozenset[str] = frozenset()) -> None:
        self.path = path
        self.suspects = frozenset(read(path)) | inherited
        self._lock = threading.Lock()
        self._open: set[str] = set(self.suspects)
        self._appended = 0
        self._fd = -1
        self._rewrite()

    def begin(self, content_hash: str) -> None:
        """`content_hash` is about to be decoded."""
        self._append("+", content_hash)

    def end(self, content_hash: str) -> None:
        """`content_hash` was decoded (or refused) and the process lived."""
        self._append("-", content_hash)

    def _append(self, mark: str, content_hash: str) -> None:
        with self._lock:
            if self._fd < 0:
                return
            if mark == "+":
                self._open.add(content_hash)
            else:
                self._open.discard(content_hash)
            os.write(self._fd, f"{mark}{content_hash}\n".encode("ascii"))
            self._appended += 1
            if self._appended >= COMPACT_EVERY:
                self._rewrite()

    def _rewrite(self) -> None:
        """Replace the file with the open hashes alone (as suspects), and append from there.

        Called with the lock held (or from __init__). The new file is complete before it
        replaces the old one, so a death mid-rewrite loses nothing.
        """
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes("".join(f"!{h}\n" for h in sorted(self._open)).encode("ascii"))
        os.replace(tmp, self.path)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        self._appended = 0

    def close(self) -> None:
        """Idempotent. What is still open stays in the file for the next run."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> InFlight:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def per_process(folder: Path, name: str) -> InFlight:
    """A journal of this process's own, `<name>.<pid>.journal` in `folder`, for work that
    several processes may do at once (the pictures of the gallery, of `serve` and of the
    daemon alike, and those sent to Ollama). Its suspects are what processes now dead
    left open in theirs; their files are removed once read."""
    inherited: set[str] = set()
    prefix, mine = f"{name}.", f"{name}.{os.getpid()}.journal"
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    for other in names:
        pid = other[len(prefix) : -len(".journal")]
        if not (other.startswith(prefix) and other.endswith(".journal") and pid.isdigit()):
            continue
        if other != mine and process_alive(int(pid)):
            continue
        inherited |= read(folder / other)
        if other != mine:
            with contextlib.suppress(OSError):
                (folder / other).unlink()
    return InFlight(folder / mine, frozenset(inherited))
