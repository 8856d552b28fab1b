"""A minimal DNG writer, for tests: a real Bayer mosaic that LibRaw demosaics, with or
without an embedded preview (JPEG or 8-bit RGB), an orientation, a capture time and a
GPS position, laid out as DNG 1.4 says (Adobe's DNG Specification 1.4.0.0: IFD 0 is the
reduced-resolution preview with NewSubfileType 1, the raw CFA image is in a SubIFD with
PhotometricInterpretation 32803; without a preview IFD 0 is the raw image itself).

No camera wrote these files; they exist because no package here ships real camera RAW
files that decode (see tests/test_raw.py). What they test is imageclust's side: which
picture it takes, how it turns it, what metadata it reads.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

# TIFF field types (TIFF 6.0, section 2)
BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED, SRATIONAL = 1, 2, 3, 4, 5, 7, 10
_FORMAT = {BYTE: "B", ASCII: "B", SHORT: "H", LONG: "I", UNDEFINED: "B"}

# XYZ (D65) -> linear sRGB (IEC 61966-2-1): as DNG's ColorMatrix1 (XYZ -> camera), a
# "camera" whose raw channels are linear sRGB, so the demosaiced picture keeps its colours.
_XYZ_TO_SRGB = (
    (3.2406, -1.5372, -0.4986),
    (-0.9689, 1.8758, 0.0415),
    (0.0557, -0.2040, 1.0570),
)

Entry = tuple[int, int, object]  # tag, type, value(s)


def _rational(value: float) -> tuple[int, int]:
    f = Fraction(value).limit_denominator(1_000_000)
    return f.numerator, f.denominator


def _pack(kind: int, value: object) -> tuple[bytes, int]:
    """The bytes of one field's values, and their count."""
    if kind == ASCII:
        data = str(value).encode("ascii") + b"\x00"
        return data, len(data)
    values = list(value) if isinstance(value, list | tuple) else [value]
    if kind in (RATIONAL, SRATIONAL):
        code = "I" if kind == RATIONAL else "i"
        pairs = [_rational(float(v)) for v in values]
        return b"".join(struct.pack(f"<{code}{code}", n, d) for n, d in pairs), len(pairs)
    return struct.pack(f"<{len(values)}{_FORMAT[kind]}", *values), len(values)


class _Writer:
    """A little-endian TIFF written front to back: data first, then the IFDs that point to it."""

    def __init__(self) -> None:
        self.buf = bytearray(b"II*\x00\x00\x00\x00\x00")

    def blob(self, data: bytes) -> int:
        if len(self.buf) % 2:
            self.buf += b"\x00"
        offset = len(self.buf)
        self.buf += data
        return offset

    def ifd(self, entries: list[Entry]) -> int:
        if len(self.buf) % 2:
            self.buf += b"\x00"
        start = len(self.buf)
        entries = sorted(entries, key=lambda e: e[0])
        extra_at = start + 2 + 12 * len(entries) + 4
        head, extra = bytearray(struct.pack("<H", len(entries))), bytearray()
        for tag, kind, value in entries:
            data, count = _pack(kind, value)
            if len(data) <= 4:
                field = data.ljust(4, b"\x00")
            else:
                field = struct.pack("<I", extra_at + len(extra))
                extra += data + (b"\x00" if len(data) % 2 else b"")
            head += struct.pack("<HHI", tag, kind, count) + field
        head += b"\x00\x00\x00\x00"  # no next IFD
        self.buf += head + extra
        return start

    def finish(self, ifd0: int) -> bytes:
        self.buf[4:8] = struct.pack("<I", ifd0)
        return bytes(self.buf)


def _linear(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def bayer(img: Image.Image, white: int = 4095) -> np.ndarray:
    """An RGGB mosaic of `img` in linear light, uint16 with `white` as full scale."""
    rgb = _linear(np.asarray(img.convert("RGB")))
    h, w = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
    rgb = rgb[:h, :w]
    mosaic = np.empty((h, w), dtype=np.float64)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return np.round(mosaic * white).astype(np.uint16)


@dataclass(frozen=True)
class Preview:
    """The picture stored in IFD 0: a JPEG, or 8-bit RGB strips (`jpeg=False`)."""

    image: Image.Image
    jpeg: bool = True


def dng_bytes(
    img: Image.Image,
    *,
    preview: Preview | None = None,
    orientation: int = 1,
    taken_at: str | None = None,
    offset: str | None = None,
    gps: tuple[float, float] | None = None,
    make: str = "imageclust",
    model: str = "test DNG",
) -> bytes:
    """`img` as a DNG: its pixels as the raw mosaic (stored as the sensor saw them, so
    `orientation` is what a viewer applies), and `preview` (already in sensor
    orientation) in IFD 0."""
    w = _Writer()
    mosaic = bayer(img)
    height, width = mosaic.shape
    raw_at = w.blob(mosaic.astype("<u2").tobytes())
    raw_fields: list[Entry] = [
        (256, LONG, width),
        (257, LONG, height),
        (258, SHORT, 16),
        (259, SHORT, 1),  # uncompressed
        (262, SHORT, 32803),  # CFA
        (273, LONG, raw_at),
        (277, SHORT, 1),
        (278, LONG, height),
        (279, LONG, mosaic.size * 2),
        (284, SHORT, 1),
        (33421, SHORT, [2, 2]),  # CFARepeatPatternDim
        (33422, BYTE, [0, 1, 1, 2]),  # CFAPattern: RGGB
        (50714, LONG, 0),  # BlackLevel
        (50717, LONG, 4095),  # WhiteLevel
    ]
    ifd0: list[Entry] = [
        (271, ASCII, make),
        (272, ASCII, model),
        (274, SHORT, orientation),
        (50706, BYTE, [1, 4, 0, 0]),  # DNGVersion
        (50707, BYTE, [1, 1, 0, 0]),  # DNGBackwardVersion
        (50708, ASCII, f"{make} {model}"),  # UniqueCameraModel
        (50721, SRATIONAL, [v for row in _XYZ_TO_SRGB for v in row]),  # ColorMatrix1
        (50778, SHORT, 21),  # CalibrationIlluminant1: D65
        (50728, RATIONAL, [1.0, 1.0, 1.0]),  # AsShotNeutral
    ]
    if taken_at is not None:
        exif: list[Entry] = [(0x9003, ASCII, taken_at)]
        if offset is not None:
            exif.append((0x9011, ASCII, offset))
        ifd0.append((0x8769, LONG, w.ifd(exif)))
    if gps is not None:
        lat, lon = gps
        ifd0.append((0x8825, LONG, w.ifd(_gps_fields(lat, lon))))
    if preview is None:  # IFD 0 is the raw image
        ifd0 += [(254, LONG, 0), *raw_fields]
        return w.finish(w.ifd(ifd0))
    sub = w.ifd([(254, LONG, 0), *raw_fields])
    pw, ph = preview.image.size
    if preview.jpeg:
        out = io.BytesIO()
        preview.image.convert("RGB").save(out, format="JPEG", quality=90)
        data, compression, photometric = out.getvalue(), 7, 6
    else:
        data, compression, photometric = preview.image.convert("RGB").tobytes(), 1, 2
    at = w.blob(data)
    ifd0 += [
        (254, LONG, 1),  # a reduced-resolution image
        (256, LONG, pw),
        (257, LONG, ph),
        (258, SHORT, [8, 8, 8]),
        (259, SHORT, compression),
        (262, SHORT, photometric),
        (273, LONG, at),
        (277, SHORT, 3),
        (278, LONG, ph),
        (279, LONG, len(data)),
        (284, SHORT, 1),
        (330, LONG, sub),  # SubIFDs
    ]
    return w.finish(w.ifd(ifd0))


def _gps_fields(lat: float, lon: float) -> list[Entry]:
    def dms(value: float) -> list[float]:
        value = abs(value)
        d = int(value)
        m = int((value - d) * 60)
        s = (value - d - m / 60) * 3600
        return [d, m, round(s, 4)]

    return [
        (0, BYTE, [2, 3, 0, 0]),
        (1, ASCII, "N" if lat >= 0 else "S"),
        (2, RATIONAL, dms(lat)),
        (3, ASCII, "E" if lon >= 0 else "W"),
        (4, RATIONAL, dms(lon)),
    ]


def save_dng(img: Image.Image, path: str | Path, **kwargs: object) -> Path:
    Path(path).write_bytes(dng_bytes(img, **kwargs))  # type: ignore[arg-type]
    return Path(path)
