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
import multiprocessing
import signal
from multiprocessing.connection import Connection
from typing import Any

from imageclust_daemon.errors import DecodeError
from imageclust_daemon.records import Preprocessing

# A child may use this much address space: a bounded decode needs well under 1 GB
# (an 88 MP RGBA PNG peaks at ~0.8 GB RSS for the whole `index` process); the
# interpreter, numpy and Pillow reserve a few hundred MB of it before any photo.
CHILD_ADDRESS_SPACE = 3 << 30
CHILD_SECONDS = 120.0  # the slowest legitimate decode here takes ~2 s (an 89 MP PNG)


def _child(conn: Connection, data: bytes | str, spec: Preprocessing, path: str) -> None:
    import resource

    from imageclust_daemon import decode

    # A lower limit already set by the parent's environment stays (setrlimit refuses).
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))
    try:
        if isinstance(data, str):
            with open(data, "rb") as f:
                result: Any = decode.decode(f, spec, path=path)
        else:
            result = decode.decode(data, spec, path=path)
    except DecodeError as exc:
        result = ("refused", exc.reason)
    except MemoryError:
        result = ("refused", f"decoding it needs more than {CHILD_ADDRESS_SPACE >> 30} GB")
    except OSError as exc:
        result = ("refused", f"cannot read: {exc.strerror or exc}")
    conn.send(result)
    conn.close()


def decode_in_child(
    data: bytes | str, spec: Preprocessing, *, path: str, seconds: float = CHILD_SECONDS
) -> Any:
    """`decode.decode(data, spec)` in a child process: its DecodedPhoto, or DecodeError when
    the photo is refused, the child dies (a signal, an exit) or runs past `seconds`.
    `data` is the file's bytes, or its path for a file too large to pass whole."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_child, args=(send, data, spec, path), name="imageclust-decode", daemon=True
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
        raise DecodeError(
            path, f"decoding it killed the decoder ({_how(child.exitcode)}); not retried"
        )
    if isinstance(result, tuple):
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
