"""What C libraries write to stderr while a photo is read, as log lines naming the photo.

LibRaw ("unknown file: data corrupted at 1378"), libtiff ("tempfile.tif: WEBP
compression support is not configured.") and libjpeg write to the process's stderr
(file descriptor 2) themselves; rawpy and Pillow offer no hook for it. So while a photo
is decoded (`reading`), descriptor 2 points at a file of this process's own in the data
folder, `stderr.<pid>.capture`, and when the decode ends what was written meanwhile is
read back: each line becomes a log line naming the photo or photos whose decode was
under way while it was written (their windows in the file are known by offset, so two
decodes at once are named both, never wrongly one), and a child process's log line goes
out as it was. During a long decode, what was written is handed on every 0.2 s.
Python's own writers (sys.stderr, the log handlers, a progress bar) are pointed at a
copy of the real descriptor 2 for the capture's duration: the file gets only what C
code writes, and a warning logged meanwhile is not mistaken for a library's.

A process that dies inside a decode leaves its last words in that file, not lost; the
next run that captures in the same folder logs them (the decoding journal names the
photo). Outside decodes, descriptor 2 is left as it was: a crash elsewhere prints as
ever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from imageclust_daemon.durable import process_alive

log = logging.getLogger("imageclust.libraries")

# A line our own formatter wrote (logs.configure_logging): "2026-12-07 06:01:02,345 INFO x: y"
_LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
_PATTERN = "stderr.*.capture"
FORWARD_SECONDS = 0.2


@dataclass
class _Window:
    photo: str
    start: int  # offset in the capture file
    end: int | None = None  # None while the decode runs


class Capture:
    """Descriptor 2 turned to `<folder>/stderr.<pid>.capture` during decodes. Python's
    own writers (sys.stderr, the log handlers on it, a progress bar made meanwhile) write
    to a copy of the real descriptor 2 for as long as the capture is on, so that only
    what C code (and a child process started meanwhile) writes lands in the file."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"stderr.{os.getpid()}.capture"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o600)
        self._reader = open(self.path, "rb")  # noqa: SIM115 (closed in close())
        self._real = os.dup(2)
        self._stream = open(  # noqa: SIM115 (closed in close())
            os.dup(self._real), "w", buffering=1, errors="backslashreplace"
        )
        self._restore = _python_writers_to(self._stream)
        self._lock = threading.Lock()
        self._windows: list[_Window] = []
        self._read = 0  # offset up to which lines were handed on
        self._pending = b""
        self._done = False
        # While a decode runs (one may take minutes, or hang), what C code writes is
        # handed on every FORWARD_SECONDS, not only at its end.
        self._closed = threading.Event()
        self._forwarder = threading.Thread(target=self._forward, name="native-output", daemon=True)
        self._forwarder.start()

    def enter(self, photo: str) -> _Window:
        with self._lock:
            if self._done:  # closed: a decode on a thread that outlived it
                return _Window(photo, 0, 0)
            if not self._open():
                os.dup2(self._fd, 2)
            window = _Window(photo, os.fstat(self._fd).st_size)
            self._windows.append(window)
            return window

    def leave(self, window: _Window) -> None:
        with self._lock:
            if self._done or window.end is not None:
                return
            window.end = os.fstat(self._fd).st_size
            if self._open():
                self._drain(final=False)
                return
            os.dup2(self._real, 2)
            self._drain(final=True)
            # nothing in flight and all handed on: the file starts again empty (a daemon
            # runs for months; a crash's leftovers are then only what was not handed on)
            os.ftruncate(self._fd, 0)
            self._reader.seek(0)
            self._read, self._pending, self._windows = 0, b"", []

    def _forward(self) -> None:
        while not self._closed.wait(FORWARD_SECONDS):
            self.hand_on()

    def hand_on(self) -> None:
        with self._lock:
            if not self._done and self._open():
                self._drain(final=False)

    def _open(self) -> bool:
        return any(w.end is None for w in self._windows)

    def _drain(self, *, final: bool) -> None:
        at = self._read - len(self._pending)  # where `data` starts in the file
        data = self._pending + self._reader.read()
        self._read = at + len(data)
        lines = data.split(b"\n")
        self._pending = b"" if final else lines.pop()
        for line in lines:
            start, at = at, at + len(line) + 1
            if line.strip():
                self._hand_on(line, start, at)
        unread = self._read - len(self._pending)
        self._windows = [w for w in self._windows if w.end is None or w.end > unread]

    def _hand_on(self, line: bytes, start: int, end: int) -> None:
        shown = line.rsplit(b"\r", 1)[-1]  # what a terminal shows of a line redrawn with \r
        if _LOG_LINE.match(shown):  # a child process's log line: as it was
            os.write(self._real, shown + b"\n")
            return
        text = shown.decode("utf-8", "replace")
        photos = sorted(
            {w.photo for w in self._windows if w.start < end and (w.end is None or w.end > start)}
        )
        if photos:  # a detail of that photo's reading, like Pillow's warnings (logs)
            log.info("%s: a library wrote: %s", " or ".join(photos), text)
        else:
            log.warning("a library wrote: %s", text)

    def close(self) -> None:
        self._closed.set()
        self._forwarder.join()
        with self._lock:
            if self._open():
                os.dup2(self._real, 2)
                for window in self._windows:
                    window.end = window.end or os.fstat(self._fd).st_size
            self._drain(final=True)
            self._done = True
            self._restore()
            self._stream.close()
            os.close(self._fd)
            os.close(self._real)
            self._reader.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def _writes_to_descriptor_2(stream: object) -> bool:
    fileno = getattr(stream, "fileno", None)
    try:
        return callable(fileno) and fileno() == 2
    except (OSError, ValueError):  # no descriptor (pytest's capture), or closed
        return False


def _python_writers_to(stream: TextIO) -> Callable[[], None]:
    """Point sys.stderr and the root logger's stream handlers that write to descriptor 2
    at `stream`; the function that puts them back."""
    before = sys.stderr
    handlers = [
        (handler, handler.stream)
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and _writes_to_descriptor_2(handler.stream)
    ]
    for handler, _ in handlers:
        handler.setStream(stream)
    if _writes_to_descriptor_2(sys.stderr):
        sys.stderr = stream

    def restore() -> None:
        for handler, old in handlers:
            if handler.stream is stream:
                handler.setStream(old)
        if sys.stderr is stream:
            sys.stderr = before

    return restore


_active: Capture | None = None


@contextlib.contextmanager
def captured(folder: Path) -> Iterator[Capture]:
    """Capture C libraries' stderr during decodes in this process, for its duration;
    first log what processes that died in a decode left in `folder`."""
    global _active
    leftovers(folder)
    capture = Capture(folder)
    _active = capture
    try:
        yield capture
    finally:
        _active = None
        capture.close()


@contextlib.contextmanager
def reading(photo: str) -> Iterator[None]:
    """A decode of `photo`: what C libraries write to stderr meanwhile names it. Does
    nothing where no capture is on (a test, a decode's child process, `similar`)."""
    capture = _active
    if capture is None:
        yield
        return
    window = capture.enter(photo)
    try:
        yield
    finally:
        capture.leave(window)


def hand_on() -> None:
    """Hand on what was captured so far now, not at the next tick: before a process ends
    without unwinding (os._exit, with a decode still running)."""
    capture = _active
    if capture is not None:
        capture.hand_on()


def leftovers(folder: Path) -> None:
    """Log, once, what a process that died during a decode had captured; remove it."""
    for path in sorted(folder.glob(_PATTERN)):
        pid = path.name.split(".")[1]
        if not pid.isdigit() or int(pid) == os.getpid() or process_alive(int(pid)):
            continue
        try:
            text = path.read_bytes()[-8192:].decode("utf-8", "replace")
            path.unlink()
        except OSError:
            continue
        for line in text.splitlines():
            if line.strip():
                log.warning("process %s ended during a decode; it had written: %s", pid, line)
