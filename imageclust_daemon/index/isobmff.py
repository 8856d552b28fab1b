"""Where a HEIF or AVIF file keeps its items' data, from its boxes alone (no decode).

A HEIF (HEIC, AVIF) is an ISO base media file: boxes of `size, type, body`. Its `meta`
box lists the items (the image, its tiles, the thumbnails, Exif) and its `iloc` box
(ItemLocationBox, ISO/IEC 14496-12 section 8.11.3, as libheif's `Box_iloc::parse` reads
it) says at which file offsets each item's bytes lie. A phone photo is a grid of tiles,
and libheif decodes a tile whose bytes are missing as a flat colour (green, for YCbCr
zeros) without an error: a photo cut short by an interrupted copy decodes "fine" with
its lower part green. Comparing the items' extents with the file's size tells it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

# The most of a `meta` box read into memory: a phone's is a few KB (a 200 MP photo's
# grid of 768 tiles: ~20 KB); past this the file is not looked at, not refused.
MAX_META_BYTES = 16 << 20
# Top-level boxes walked before giving up on finding `meta`.
MAX_BOXES = 64
# The boxes found at a HEIF's top level (ISO/IEC 14496-12 and 23008-12; `sefd` is
# Samsung's, after its `meta`): only their sizes are taken as what the file should hold.
TOP_LEVEL = frozenset(
    {b"ftyp", b"meta", b"mdat", b"free", b"skip", b"moov", b"moof", b"mfra", b"uuid"}
    | {b"idat", b"pdin", b"styp", b"sidx", b"sefd", b"mmpu", b"etyp", b"otyp"}
)


@dataclass(frozen=True)
class Extent:
    item: int
    offset: int  # in the file
    length: int


def _header(f: BinaryIO, at: int, end: int) -> tuple[bytes, int, int] | None:
    """The box at `at`: (type, body start, box end), None where none fits before `end`."""
    if at + 8 > end:
        return None
    f.seek(at)
    head = f.read(16)
    if len(head) < 8:
        return None
    size, kind = struct.unpack(">I4s", head[:8])
    body = at + 8
    if size == 1:  # a 64-bit size follows the type
        if len(head) < 16:
            return None
        size = struct.unpack(">Q", head[8:16])[0]
        body = at + 16
    elif size == 0:  # the box runs to the end of the file
        size = end - at
    if size < body - at:
        return None
    return kind, body, at + size


def _children(data: bytes, start: int) -> dict[bytes, bytes]:
    """The boxes inside a box body held in memory, by type (the first of each)."""
    found: dict[bytes, bytes] = {}
    at = start
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        body = at + 8
        if size == 1:
            if at + 16 > len(data):
                break
            size = struct.unpack(">Q", data[at + 8 : at + 16])[0]
            body = at + 16
        elif size == 0:
            size = len(data) - at
        if size < body - at:
            break
        found.setdefault(kind, data[body : at + size])
        at += size
    return found


def _uint(data: bytes, at: int, size: int) -> tuple[int, int]:
    if at + size > len(data):
        raise ValueError("iloc ends early")
    return (int.from_bytes(data[at : at + size], "big") if size else 0), at + size


def parse_iloc(box: bytes) -> list[Extent]:
    """The extents of the items stored at file offsets (construction method 0, this
    file), from an `iloc` box's body (its full-box header first). Items kept in `idat`
    or built from other items are left out: they hold no offset into the file."""
    if len(box) < 6:
        raise ValueError("iloc too short")
    version = box[0]
    if version > 2:
        raise ValueError(f"iloc version {version}")
    offset_size, length_size = box[4] >> 4, box[4] & 15
    base_offset_size, index_size = box[5] >> 4, (box[5] & 15 if version in (1, 2) else 0)
    id_size = 4 if version == 2 else 2
    count, at = _uint(box, 6, id_size)
    extents: list[Extent] = []
    for _ in range(count):
        item, at = _uint(box, at, id_size)
        method = 0
        if version in (1, 2):
            flags, at = _uint(box, at, 2)
            method = flags & 15
        reference, at = _uint(box, at, 2)
        base, at = _uint(box, at, base_offset_size)
        extent_count, at = _uint(box, at, 2)
        for _ in range(extent_count):
            _, at = _uint(box, at, index_size)
            offset, at = _uint(box, at, offset_size)
            length, at = _uint(box, at, length_size)
            # length 0: "the entire length of the source" (no claim to check)
            if method == 0 and reference == 0 and length:
                extents.append(Extent(item, base + offset, length))
    return extents


def _meta_extents(f: BinaryIO, body: int, box_end: int) -> list[Extent]:
    if box_end - body > MAX_META_BYTES:
        return []
    f.seek(body)
    meta = f.read(box_end - body)
    iloc = _children(meta, 4).get(b"iloc")  # meta is a full box: 4 bytes first
    if iloc is None:
        return []
    try:
        return parse_iloc(iloc)
    except ValueError:
        return []


def data_end(f: BinaryIO) -> int:
    """Where the file's data ends by its own account: the furthest end of its top-level
    boxes (each says its size) and of its items' extents (`iloc`). 0 where its boxes
    cannot be read (the decoder then says what is wrong)."""
    end = f.seek(0, 2)
    at, furthest = 0, 0
    for _ in range(MAX_BOXES):
        box = _header(f, at, end)
        if box is None:
            break
        kind, body, box_end = box
        if kind not in TOP_LEVEL:  # not a box a HEIF has at its top: junk, not a size
            break
        furthest = max(furthest, box_end)
        if kind == b"meta" and box_end <= end:
            for extent in _meta_extents(f, body, box_end):
                furthest = max(furthest, extent.offset + extent.length)
        if box_end >= end:
            break
        at = box_end
    return furthest


def missing(f: BinaryIO) -> tuple[int, int] | None:
    """(the file's size, where its data ends by its own account) where that is past the
    end of the file: a box or an item's data cut short; None where all is there or the
    boxes cannot tell."""
    where = f.tell()
    try:
        needed = data_end(f)
        size = f.seek(0, 2)
    finally:
        f.seek(where)
    return (size, needed) if needed > size else None
