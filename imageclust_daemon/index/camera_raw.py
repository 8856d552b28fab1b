"""Camera RAW files through LibRaw (rawpy): what a file's leading bytes say it is, which
picture to take from it, turned as the camera says, and when and where it was taken.

Which picture: the camera's own embedded preview (a JPEG, or an RGB bitmap) when its
shorter side reaches what the caller needs and its shape is the photo's, else a
half-size demosaic of the sensor data (each 2x2 Bayer block becomes one pixel: no
interpolation, a quarter of the pixels). A preview is decoded by the caller, with the
same budget as any JPEG.

Every failure is a `DecodeError`, except `NotRaw`: a TIFF that LibRaw does not take for
a camera's RAW (a scan, an export), which the caller then reads as a TIFF.
"""

from __future__ import annotations

import errno
import io
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import rawpy
from PIL import Image

from imageclust_daemon.errors import DecodeError
from imageclust_daemon.index import exif, scan

# What a file starts with -> its RAW format, for the formats with a signature of their
# own. The offsets and strings are those LibRaw's identify() tests (libraw_datastream /
# identify.cpp: "FUJIFILM", "IIRO"/"IIRS"/"MMOR", "IIU\0", "HEAPCCDR" at 6, "\0MRM",
# "FOVb", ISO BMFF brand "crx ").
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"FUJIFILMCCD-RAW", "RAF"),
    (0, b"IIRO", "ORF"),
    (0, b"IIRS", "ORF"),
    (0, b"MMOR", "ORF"),
    (0, b"IIU\x00", "RW2"),  # Panasonic, and Leica's RWL
    (4, b"ftypcrx ", "CR3"),
    (6, b"HEAPCCDR", "CRW"),
    (0, b"\x00MRM", "MRW"),
    (0, b"FOVb", "X3F"),
)
_TIFF = (b"II*\x00", b"MM\x00*")
# Makers whose TIFF-structured RAW has one name (EXIF Make, upper case, first word).
_MAKER_FORMATS = {
    "NIKON": "NEF",
    "SONY": "ARW",
    "PENTAX": "PEF",
    "RICOH": "PEF",
    "SAMSUNG": "SRW",
    "HASSELBLAD": "3FR",
    "PHASE": "IIQ",
    "LEAF": "MOS",
    "MAMIYA": "MEF",
    "EPSON": "ERF",
    "KODAK": "DCR",
}
_DNG_VERSION = 50706
_MAKE = 271
# LibRaw's flip (0 none, 3 180°, 5 90° CCW, 6 90° CW; 1, 2, 4, 7 mirrored) -> the EXIF
# orientation it came from: LibRaw maps orientation o to flip_map[o - 1] with
# flip_map = {0, 1, 3, 2, 4, 6, 7, 5} (libraw tiff.cpp); this is its inverse.
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 3: 3, 2: 4, 4: 5, 6: 6, 7: 7, 5: 8}


class NotRaw(Exception):
    """A TIFF-structured file that LibRaw does not read as a RAW: read it as a TIFF."""


def _ifd0(head: bytes) -> Image.Exif | None:
    try:
        tags = Image.Exif()
        tags.load(head)
        return tags
    except Exception:
        return None


def sniff(head: bytes, name: str = "") -> str | None:
    """The RAW format `head` (a file's first bytes, a few KB or more) shows; None when the
    bytes are not a RAW's. A TIFF-structured file is a RAW candidate when IFD 0 has a
    DNG version, a CR2 marker, a camera maker's name, or when the file is named as a RAW;
    LibRaw has the last word (`NotRaw`)."""
    for at, magic, kind in _SIGNATURES:
        if head[at : at + len(magic)] == magic:
            return kind
    if head[:4] not in _TIFF:
        return None
    if head[8:10] == b"CR":
        return "CR2"
    tags = _ifd0(head)
    if tags is not None and _DNG_VERSION in tags:
        return "DNG"
    make = str(tags.get(_MAKE, "")).strip("\x00 ").upper() if tags is not None else ""
    maker = make.split(" ")[0] if make else ""
    named = any(name.lower().endswith(ext.decode()) for ext in scan.RAW_EXTENSIONS)
    if maker in _MAKER_FORMATS:
        return _MAKER_FORMATS[maker]
    return "RAW" if named else None


@dataclass(frozen=True)
class Preview:
    """The camera's embedded picture, as stored (not yet turned)."""

    jpeg: bytes | None  # JPEG bytes, or
    bitmap: np.ndarray | None  # uint8 [H, W, 3]
    width: int
    height: int


class RawShot:
    """One opened RAW: its size as displayed, its orientation, its preview, its sensor data."""

    def __init__(
        self, raw: rawpy.RawPy, data: bytes, kind: str, path: str, file_bytes: int = 0
    ) -> None:
        self._raw, self._data, self.kind, self._path = raw, data, kind, path
        self.file_bytes = file_bytes or len(data)  # the whole file's size
        sizes = raw.sizes
        self.flip = int(sizes.flip)
        self.orientation = _FLIP_TO_ORIENTATION.get(self.flip, 1)
        w, h = int(sizes.width), int(sizes.height)
        self.width, self.height = (h, w) if self.flip & 4 else (w, h)  # as displayed
        self.sensor_pixels = int(sizes.raw_width) * int(sizes.raw_height)
        self._preview: Preview | bool | None = False  # not looked for yet

    def preview(self) -> Preview | None:
        """The largest embedded picture LibRaw finds, or None; None too when the file
        holds a bitmap preview over MAX_PREVIEW_PIXELS (LibRaw would decode it whole)."""
        if self._preview is False:
            too_big = _largest_bitmap_preview(self._data) > MAX_PREVIEW_PIXELS
            self._preview = None if too_big else _preview(self._raw)
        return self._preview if isinstance(self._preview, Preview) else None

    def usable_preview(self, shortest: int) -> Preview | None:
        """The preview, if its shorter side is at least `shortest` and its shape is the
        photo's (to 2%: a letterboxed or cropped preview is another picture)."""
        p = self.preview()
        if p is None or min(p.width, p.height) < shortest:
            return None
        sensor = sorted((self.width, self.height))
        stored = sorted((p.width, p.height))
        if abs(stored[0] / stored[1] - sensor[0] / sensor[1]) > 0.02 * sensor[0] / sensor[1]:
            return None
        return p

    def demosaic(self) -> np.ndarray:
        """A half-size demosaic, upright (LibRaw applies the flip): uint8 [H, W, 3] sRGB,
        white balanced as shot."""
        try:
            return self._raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
        except rawpy.LibRawError as exc:
            raise DecodeError(self._path, libraw_reason(exc, self.kind, "sensor data")) from None

    def facts(self) -> exif.Facts:
        """Capture time and position: from the RAW's own EXIF, else its preview's, else
        (time only) what LibRaw read."""
        found = raw_facts(self._data, self.kind)
        preview = self.preview()
        if (
            preview is not None
            and preview.jpeg is not None
            and (found.taken_at is None or found.lat is None)
        ):
            found = found.or_else(_jpeg_facts(preview.jpeg))
        if found.taken_at is None:
            found = found.or_else(exif.Facts(_libraw_time(self._raw), source="raw"))
        return found


# A bitmap (uncompressed) preview LibRaw would unpack whole into memory: past this, the
# preview is not used (a DNG whose 144 MP bitmap preview took 2.24 GB). Cameras store
# previews of a few MP; the same limit as a photo's pixels.
MAX_PREVIEW_PIXELS = 89_478_485
_TIFF_SHORT, _TIFF_LONG = 3, 4


def _largest_bitmap_preview(head: bytes) -> int:
    """The pixels of the largest uncompressed reduced-resolution image (NewSubfileType
    bit 0: a preview, as DNG and TIFF-based RAWs mark them) in a TIFF-structured RAW's
    IFD 0 and SubIFDs, read from `head`; 0 when there is none or the structure cannot be
    read."""
    if head[:4] not in _TIFF or len(head) < 8:
        return 0
    order = "<" if head[:2] == b"II" else ">"

    def ifd(at: int) -> dict[int, tuple[int, int, int]]:
        """tag -> (type, count, value or offset) of the IFD at `at`."""
        found: dict[int, tuple[int, int, int]] = {}
        if not 8 <= at <= len(head) - 2:
            return found
        (n,) = struct.unpack(order + "H", head[at : at + 2])
        for i in range(min(n, 512)):
            entry = head[at + 2 + 12 * i : at + 14 + 12 * i]
            if len(entry) < 12:
                break
            tag, kind, count = struct.unpack(order + "HHI", entry[:8])
            fmt = "H" if kind == _TIFF_SHORT and count == 1 else "I"
            (value,) = struct.unpack(order + fmt, entry[8:10] if fmt == "H" else entry[8:12])
            found[tag] = (kind, count, value)
        return found

    (first,) = struct.unpack(order + "I", head[4:8])
    top = ifd(first)
    subs: list[int] = []
    if 330 in top:  # SubIFDs: one offset inline, or where the list of them is
        _, count, value = top[330]
        if count == 1:
            subs = [value]
        else:
            raw = head[value : value + 4 * min(count, 64)]
            subs = list(struct.unpack(order + f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    largest = 0
    for tags in [top, *(ifd(at) for at in subs)]:
        reduced = tags.get(254, (0, 0, 0))[2] & 1
        uncompressed = tags.get(259, (0, 0, 1))[2] == 1
        if reduced and uncompressed:
            largest = max(largest, tags.get(256, (0, 0, 0))[2] * tags.get(257, (0, 0, 0))[2])
    return largest


# LibRaw's failures in words a person can act on, by rawpy's class for each LibRaw error
# code (libraw_const.h, LibRaw_errors). LIBRAW_IO_ERROR is what LibRaw returns when its
# data ends early (a read past the end of the file), not a failing disk.
_LIBRAW_WORDS: tuple[tuple[type[Exception], str], ...] = (
    (rawpy.LibRawIOError, "truncated: the file ends before its image data"),
    (rawpy.LibRawDataError, "damaged: its image data is corrupt"),
    (rawpy.LibRawRequestForNonexistentImageError, "it holds no image LibRaw can open"),
    (rawpy.LibRawTooBigError, "its image is larger than LibRaw decodes"),
    (rawpy.LibRawCancelledByCallbackError, "its decode was cancelled"),
)


def libraw_reason(exc: Exception, kind: str, part: str) -> str:
    """Why LibRaw could not read a RAW's `part` ("file", "sensor data"), for a person.
    Memory LibRaw could not get says nothing of the photo: MemoryError (retried)."""
    if isinstance(exc, (rawpy.LibRawUnsufficientMemoryError, rawpy.LibRawMemPoolOverflowError)):
        raise MemoryError(f"LibRaw: {_why(exc)}") from None
    for cls, words in _LIBRAW_WORDS:
        if isinstance(exc, cls):
            return f"{words} (the {kind} {part}, as LibRaw reads it)"
    return f"LibRaw cannot read the {kind} {part}: {_why(exc)}"


def _why(exc: BaseException) -> str:
    text = exc.args[0] if exc.args else ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text) or type(exc).__name__


# Of a RAW read from its file (one too large to hold: over originals.WHOLE_READ_MAX), what
# is read for its EXIF: TIFF IFDs, a CR3's CMT boxes and a RAF's JPEG sit near the start.
FACTS_HEAD = 16 << 20


@contextmanager
def opened(data: bytes | BinaryIO, kind: str, *, path: str = "") -> Iterator[RawShot]:
    """The RAW in `data` (its bytes, or the open file, which LibRaw then reads as it needs
    to, never whole), opened: headers parsed, nothing decoded yet."""
    raw = rawpy.RawPy()
    try:
        if isinstance(data, bytes):
            head = data
        else:
            data.seek(0)
            head = data.read(FACTS_HEAD)
        try:
            if isinstance(data, bytes):
                raw.open_buffer(io.BytesIO(data))
            else:
                raw.open_file(_fd_path(data))
        except rawpy.LibRawFileUnsupportedError:
            if head[:4] in _TIFF and kind not in ("DNG", "CR2"):
                raise NotRaw from None
            raise DecodeError(
                path, f"not a {kind} file LibRaw can read (unsupported or corrupt)"
            ) from None
        except rawpy.LibRawError as exc:
            raise DecodeError(path, libraw_reason(exc, kind, "file")) from None
        size = len(data) if isinstance(data, bytes) else os.fstat(data.fileno()).st_size
        yield RawShot(raw, head, kind, path, size)
    finally:
        raw.close()


def _fd_path(f: BinaryIO) -> str:
    """A path that opens the very file `f` has open (not whatever is at its name now)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        candidate = f"{folder}/{f.fileno()}"
        if os.path.exists(candidate):
            return candidate
    raise OSError(errno.ENOTSUP, "cannot read a RAW this large from its file here")


def _preview(raw: rawpy.RawPy) -> Preview | None:
    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:  # none, an unsupported kind, or a broken one: demosaic instead
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        data = bytes(thumb.data)
        try:
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
                width, height = image.size
        except Exception:  # not a JPEG after all: as if there were none
            return None
        return Preview(data, None, width, height)
    bitmap = np.asarray(thumb.data)
    if bitmap.ndim != 3 or bitmap.shape[2] != 3 or bitmap.dtype != np.uint8:
        return None
    return Preview(None, bitmap, int(bitmap.shape[1]), int(bitmap.shape[0]))


def raw_facts(data: bytes, kind: str) -> exif.Facts:
    """EXIF from the RAW's own structures: its TIFF IFDs, a CR3's CMT boxes, or the JPEG
    a RAF carries (read without LibRaw: a file whose sensor data is damaged keeps them)."""
    if kind == "CR3":
        return _cr3_facts(data)
    if kind == "RAF":
        return _raf_facts(data)
    if data[:4] in _TIFF:
        tiff = data
    elif kind in ("ORF", "RW2"):  # TIFF with a maker's signature in place of 42
        tiff = (b"II*\x00" if data[:2] == b"II" else b"MM\x00*") + data[4:]
    else:
        return exif.NO_FACTS
    tags = _ifd0(tiff)
    return exif.facts(tags) if tags is not None else exif.NO_FACTS


def _cr3_facts(data: bytes) -> exif.Facts:
    """A CR3 keeps its EXIF IFD in a "CMT2" box and its GPS IFD in "CMT4" (each a TIFF of
    its own; see ExifTool's Canon CR3 notes), inside the first megabyte."""
    found = exif.NO_FACTS
    for box, read in (("CMT2", exif.exif_facts), ("CMT4", exif.gps_facts)):
        at = data.find(box.encode(), 0, 1 << 20)
        if at < 4:
            continue
        (size,) = struct.unpack(">I", data[at - 4 : at])
        tags = _ifd0(data[at + 4 : at - 4 + size])
        if tags is not None:
            found = found.or_else(read(tags))
    return found


def _raf_facts(data: bytes) -> exif.Facts:
    """A RAF's header gives the offset and length of its JPEG (big-endian, at byte 84;
    dcraw's identify() reads them there), whose EXIF is the shot's."""
    if len(data) < 92:
        return exif.NO_FACTS
    offset, length = struct.unpack(">II", data[84:92])
    if not 92 <= offset < len(data) or length < 4:
        return exif.NO_FACTS
    return _jpeg_facts(data[offset : offset + length])


def _jpeg_facts(data: bytes) -> exif.Facts:
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            return exif.facts(image.getexif())
    except Exception:
        return exif.NO_FACTS


def _libraw_time(raw: rawpy.RawPy) -> str | None:
    try:
        when = raw.other.timestamp
    except Exception:
        return None
    if when is None or when.year < 1990:  # 0 (1970) when the file has none
        return None
    return when.replace(microsecond=0, tzinfo=None).isoformat()
