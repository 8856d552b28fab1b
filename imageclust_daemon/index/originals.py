"""Opening a photo's original to read it: the one way, for every path that reads one
(hash and decode, the gallery's thumbnails and previews, the pictures sent to Ollama,
`similar`).

An original is opened without blocking (a FIFO swapped in for a photo would block a
reader forever; O_NONBLOCK makes its open return, and the type check refuses it, as it
refuses a device such as /dev/zero that would read forever). A file up to
`WHOLE_READ_MAX` is read into memory once; a larger one is left open and read as the
decoder asks (Pillow reads what the image needs; LibRaw reads a RAW from the file
itself), so a valid photo followed by gigabytes of anything costs its own size, never
the file's. The original is never written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

# A photo is read into memory once, then hashed and decoded from there. Past this size
# (a huge TIFF, a video renamed .jpg, a photo with gigabytes appended) it is hashed in
# chunks and decoded from the file, so memory stays bounded by workers x this.
WHOLE_READ_MAX = 64 << 20
CHUNK = 1 << 20


class NotAFile(OSError):
    """The path is not a regular file (any more): a FIFO, a device, a socket, a folder."""

    def __init__(self, what: str = "not a regular file") -> None:
        super().__init__(errno.EINVAL, what)


def open_regular(path: bytes | str | os.PathLike[str]) -> tuple[BinaryIO, os.stat_result]:
    """The original at `path` open to read (unbuffered; the caller closes it) and its
    stat, taken from the open file (what is read is what was checked); NotAFile when it
    is not a regular file, OSError when it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    f = open(fd, "rb", buffering=0)  # noqa: SIM115 (returned open: the caller closes it)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise NotAFile("a folder")
        if not stat.S_ISREG(st.st_mode):
            raise NotAFile("not a regular file (a FIFO, a device or a socket)")
    except BaseException:
        f.close()
        raise
    return f, st


@contextlib.contextmanager
def opened(path: bytes | str | os.PathLike[str]) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """`open_regular`, closed after."""
    f, st = open_regular(path)
    with f:
        yield f, st


def contents(f: BinaryIO, st: os.stat_result) -> bytes | BinaryIO:
    """What a decoder is given: the bytes of a file up to WHOLE_READ_MAX, else the open
    file itself, at its start."""
    if st.st_size <= WHOLE_READ_MAX:
        parts, size = [], 0
        while size <= WHOLE_READ_MAX and (part := f.read(WHOLE_READ_MAX + 1 - size)):
            parts.append(part)
            size += len(part)
        if size <= WHOLE_READ_MAX:  # (a file that grew since its stat is read from the file)
            return b"".join(parts)
    f.seek(0)
    return f


@contextlib.contextmanager
def readable(path: bytes | str | os.PathLike[str]) -> Iterator[bytes | BinaryIO]:
    """`contents` of the original at `path`, for a decoder (a thumbnail, a preview)."""
    with opened(path) as (f, st):
        yield contents(f, st)
