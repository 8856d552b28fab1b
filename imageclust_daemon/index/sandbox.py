"""Decode one photo in a child process, where its crash costs the child, not the service.

Used only for the photos an earlier run left in flight when it died
(`inflight`): most photos decode in the worker threads, at no cost; a suspect is
decoded here, once, in a fresh interpreter (spawned, not forked: a fork of a
multi-threaded process can deadlock) with an address-space cap, so a photo that
asks for more memory than it may gets a MemoryError there, and one that makes a
decoder crash kills only the child. Either way the parent gets a DecodeError
with the reason and goes on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

from imageclust_daemon.errors import DecodeError
from imageclust_daemon.index.inflight import InFlight
from imageclust_daemon.records import Preprocessing

log = logging.getLogger(__name__)

# A child may use this much address space: a bounded decode needs well under 1 GB
# (an 88 MP RGBA PNG peaks at ~0.8 GB RSS for the whole `index` process); the
# interpreter, numpy and Pillow reserve a few hundred MB of it before any photo.
CHILD_ADDRESS_SPACE = 3 << 30
CHILD_SECONDS = 120.0  # the slowest legitimate decode here takes ~2 s (an 89 MP PNG)


def _child(conn: Connection, job: tuple[Any, ...], path: str, log_level: str) -> None:
    """In the child: `job` is ("decode", bytes or file path, Preprocessing) or
    ("thumbnail", file path, longest side); its result (or why not) goes to `conn`."""
    import resource

    from imageclust_daemon import logs
    from imageclust_daemon.index import decode, originals

    logs.configure_logging(log_level)  # warnings as log lines, as in the parent
    decode.enable_heif()  # the parent's formats: HEIC must not fail for want of a plugin

    # A lower limit already set by the parent's environment stays (setrlimit refuses).
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))
    kind, data, arg = job
    try:
        if kind == "thumbnail":
            with originals.readable(data) as read:
                result: Any = decode.thumbnail_jpeg(read, arg, path=path)
        elif isinstance(data, str):
            spec, heif_thumbnails = arg
            with originals.readable(data) as read:  # never a FIFO, never the whole file
                result = decode.decode(read, spec, path=path, heif_thumbnails=heif_thumbnails)
        else:
            spec, heif_thumbnails = arg
            result = decode.decode(data, spec, path=path, heif_thumbnails=heif_thumbnails)
    except DecodeError as exc:
        result = ("refused", exc.reason)
    except MemoryError:
        result = ("refused", f"decoding it needs more than {CHILD_ADDRESS_SPACE >> 30} GB")
    except OSError as exc:
        result = ("retry", f"cannot read: {exc.strerror or exc}")
    conn.send(result)
    conn.close()


def decode_in_child(
    data: bytes | str,
    spec: Preprocessing,
    *,
    path: str,
    heif_thumbnails: str = "fidelity",
    seconds: float = CHILD_SECONDS,
) -> Any:
    """`decode.decode(data, spec)` in a child process: its DecodedPhoto, or DecodeError when
    the photo is refused, kills the child (a signal) or runs past `seconds`; OSError
    (retried next run) when the child fails for a reason that is not the photo's.
    `data` is the file's bytes, or its path for a file too large to pass whole."""
    with _one_at_a_time:
        return _in_child(("decode", data, (spec, heif_thumbnails)), path=path, seconds=seconds)


def thumbnail_in_child(
    original: str, longest: int, *, path: str, seconds: float = CHILD_SECONDS
) -> bytes:
    """`decode.thumbnail_jpeg` of the file at `original` in a child process, as
    `decode_in_child` decodes: for a picture whose making ended an earlier process."""
    with _one_at_a_time:
        made = _in_child(("thumbnail", original, longest), path=path, seconds=seconds)
    return bytes(made)


# One child at a time: two suspects decoding side by side could each take the blame
# for the other's death.
_one_at_a_time = threading.Lock()


def _in_child(job: tuple[Any, ...], *, path: str, seconds: float) -> Any:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    child = context.Process(
        target=_child,
        args=(send, job, path, level if isinstance(level, str) else "WARNING"),
        name="imageclust-decode",
        daemon=True,
    )
    child.start()
    send.close()
    try:
        if receive.poll(seconds):
            try:
                result = receive.recv()
            except EOFError:  # the child died before it could answer
                result = None
        else:
            child.kill()
            raise DecodeError(path, f"decoding it took longer than {seconds:g} s; not retried")
    finally:
        receive.close()
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join()
    if result is None:
        code = child.exitcode
        if code is not None and code < 0:  # a signal: the photo killed its decoder
            raise DecodeError(path, f"decoding it killed the decoder ({_how(code)}); not retried")
        # An exit without a signal (an import error after an upgrade, ...) says nothing
        # about the photo: it stays pending and is tried again.
        raise OSError(errno.EIO, f"the decoding child exited ({_how(code)})")
    if isinstance(result, tuple):
        if result[0] == "retry":
            raise OSError(errno.EIO, result[1])
        raise DecodeError(path, result[1])
    return result


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = ": out of memory?" if name == "SIGKILL" else ""
        return f"{name}{hint}"
    return f"exit code {code}"


def picture(original: bytes, longest: int, journal: InFlight | None, *, path: str) -> bytes:
    """A small upright JPEG of the photo at `original` (`decode.thumbnail_jpeg`, read
    through `originals`), its making journaled so that no picture can crash-loop a
    process: one whose making an earlier process never finished (it died in it) is
    made in a child process, where a crash costs the child (DecodeError)."""
    from imageclust_daemon.index import decode, originals

    key = hashlib.sha256(original).hexdigest()  # a path, not a content: pictures by file
    if journal is None:
        with originals.readable(original) as data:
            return decode.thumbnail_jpeg(data, longest, path=path)
    journal.begin(key)
    try:
        if key in journal.suspects:
            log.warning("%s: making its picture alone in a child process", path)
            return thumbnail_in_child(os.fsdecode(original), longest, path=path)
        with originals.readable(original) as data:
            return decode.thumbnail_jpeg(data, longest, path=path)
    finally:
        journal.end(key)  # reached only if the process lived through it
