"""Bytes of one photo -> what is displayed (metadata) and the model's input tensor.

Every failure becomes a `DecodeError` with a reason a person can act on; the
pipeline records it and goes on. Pillow's own failure modes are many
(OSError, SyntaxError, struct.error, ValueError, ...), so anything raised
while decoding is caught here and nowhere else.
"""

from __future__ import annotations

import io
import threading
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imageclust_daemon import scan
from imageclust_daemon.errors import DecodeError
from imageclust_daemon.preprocess import model_input, to_rgb, wide_to_8bit
from imageclust_daemon.records import PhotoMeta, Preprocessing

# Pillow warns above this and raises at twice it; indexing decodes no more than this
# many pixels of one photo (~89 MP: a 12k x 7k panorama still passes). A JPEG counts
# at the scale it is decoded at (1/2, 1/4 or 1/8 of each side), so a 100 MP camera
# JPEG is read at 1/8 scale, 1.6 MP.
MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
# The most memory the decoded pixels of one photo may take: MAX_PIXELS at 4 bytes a
# pixel (how Pillow stores RGB, RGBA, CMYK, 32-bit and float pixels); with the
# reduction below, the conversions and the resize after it add little.
DECODE_BYTES = MAX_PIXELS * 4
# Wider or taller than this: refused. The centre crop would keep 1/40 of it, which is
# not the picture; and a 1-pixel strip is no photo (nor, after the crop, anything).
MAX_ASPECT = 40
# A progressive JPEG is a series of scans, each decoded over the whole image: cameras
# and encoders write about 10 (libjpeg's default script has 10). Repeating the last
# scan 2,000 times made a 2.4 MB file take 207 s to decode; past this it is refused.
MAX_JPEG_SCANS = 100
# The formats imageclust opens, whatever a file's name says: what cameras, phones and
# image tools write. Pillow knows ~40 more (BLP, DDS, EPS through Ghostscript, ...);
# each is decoder code that a crafted file could reach. HEIF/AVIF are opened when a
# plugin registers them.
FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
# Pillow's bytes per stored pixel by mode; every mode not listed takes 4.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Modes whose pixels can be averaged (Image.reduce); not palette indices or 16-bit.
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F"})

_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_DATETIME_ORIGINAL = 0x9003
_OFFSET_TIME_ORIGINAL = 0x9011
_DATETIME = 0x0132


DECODING: ContextVar[str] = ContextVar("imageclust_decoding", default="")
"""The photo this thread is decoding, so a library's warning can name it (see cli)."""


@dataclass(frozen=True, slots=True)
class DecodedPhoto:
    meta: PhotoMeta
    pixels: np.ndarray  # float32 [3, S, S]


def _ratio(value: Any) -> float:
    if isinstance(value, tuple) and len(value) == 2:  # (num, den) from some writers
        return float(Fraction(int(value[0]), int(value[1]))) if value[1] else 0.0
    return float(value)


def _gps_degrees(dms: Any, ref: Any) -> float | None:
    try:
        d, m, s = (_ratio(v) for v in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    degrees = d + m / 60 + s / 3600
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    if str(ref).strip().upper() in ("S", "W"):
        degrees = -degrees
    return degrees


def gps_position(gps: dict[int, Any]) -> tuple[float | None, float | None]:
    """(lat, lon) from an EXIF GPS IFD, or (None, None) when absent or out of range."""
    if 2 not in gps or 4 not in gps:
        return None, None
    lat = _gps_degrees(gps[2], gps.get(1, "N"))
    lon = _gps_degrees(gps[4], gps.get(3, "E"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None, None
    if lat == 0 and lon == 0:  # cameras without a fix often write zeros
        return None, None
    return round(lat, 7), round(lon, 7)


def capture_time(original: Any, offset: Any) -> str | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" (+ "+HH:MM" offset) -> ISO 8601, or None if unusable."""
    if isinstance(original, bytes):
        original = original.decode("ascii", "replace")
    if not isinstance(original, str):
        return None
    text = original.strip().rstrip("\x00")
    try:
        when = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    iso = when.isoformat()
    if isinstance(offset, bytes):
        offset = offset.decode("ascii", "replace")
    if isinstance(offset, str):
        offset = offset.strip().rstrip("\x00")
        if len(offset) == 6 and offset[0] in "+-" and offset[3] == ":":
            iso += offset
    return iso


def _metadata(image: Image.Image, width: int, height: int) -> PhotoMeta:
    kind = "JPEG" if image.format == "MPO" else image.format  # MPO: a JPEG with extra frames
    try:
        exif = image.getexif()
        sub = exif.get_ifd(_EXIF_IFD)
        taken = capture_time(
            sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME), sub.get(_OFFSET_TIME_ORIGINAL)
        )
        lat, lon = gps_position(dict(exif.get_ifd(_GPS_IFD)))
    except Exception:  # broken EXIF must not cost the photo: metadata is optional
        taken, lat, lon = None, None, None
    return PhotoMeta(width, height, taken, lat, lon, kind)


_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the picture 90 degrees


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # unreadable EXIF: as stored
        return 1


def _oriented(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken orientation tag: show the stored pixels
        return image


def allowed_formats() -> list[str]:
    """FORMATS that this Pillow (with its plugins) can open."""
    enable_heif()
    Image.init()
    return [f for f in FORMATS if f in Image.OPEN]


def check_shape(width: int, height: int, *, path: str = "") -> None:
    """Refuse an image whose header describes no photo: empty, or a strip."""
    if width < 1 or height < 1:
        raise DecodeError(path, f"image is {width}x{height}: no pixels")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise DecodeError(
            path,
            f"image is {width}x{height}, over {MAX_ASPECT}:1: not a photo (a strip, or a "
            "crafted file)",
        )


def check_cost(image: Image.Image, *, path: str = "") -> None:
    """Refuse an image whose pixels, as they will be decoded, pass the budget."""
    width, height = image.size
    pixels = width * height
    cost = pixels * _PIXEL_BYTES.get(image.mode, 4)
    if pixels > MAX_PIXELS or cost > DECODE_BYTES:
        raise DecodeError(
            path,
            f"image is {width}x{height} ({pixels / 1e6:.0f} MP, {cost / 1e6:.0f} MB to decode), "
            f"over the {MAX_PIXELS / 1e6:.0f} MP limit for one photo (decompression bomb?)",
        )


def check_scans(data: bytes, *, path: str = "") -> None:
    """Refuse a JPEG with more scans than any encoder writes: decoding time grows with
    each. Counting the start-of-scan markers is exact: inside entropy-coded data every
    0xFF byte is followed by 0x00 (byte stuffing), so 0xFFDA only ever starts a scan."""
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise DecodeError(
            path,
            f"a JPEG of {scans} scans (encoders write about 10): over the {MAX_JPEG_SCANS} "
            "imageclust decodes, as decoding time grows with each",
        )


def reduced(image: Image.Image, target: int) -> Image.Image:
    """A large image averaged down by a whole factor while its shortest side stays at least
    `target`, before the conversions copy it: what JPEG's reduced-scale decode does in the
    DCT, for every other format (a 50 MP PNG: 200 MB -> 2 MB). Palette and 16-bit images
    are first turned into a mode whose pixels can be averaged (once, at full size: the
    conversions after it then cost the reduced size)."""
    factor = min(image.size) // target
    if factor < 2:
        return image
    if image.mode not in _REDUCIBLE:
        image = to_averageable(image)
    return image.reduce(factor) if image.mode in _REDUCIBLE else image


def to_averageable(image: Image.Image) -> Image.Image:
    if image.mode in {"I;16", "I;16L", "I;16B", "I;16N"}:
        return wide_to_8bit(image)
    keyed = image.info.get("transparency") is not None
    if image.mode in {"P", "PA", "1", "LA", "La"} or keyed:
        return image.convert("RGBA" if keyed or "A" in image.mode else "RGB")
    return image


def check_layout(image: Image.Image, *, path: str = "") -> None:
    """Refuse what the header hides from the image size: a tile or strip larger than the
    image budget (a 64x64 TIFF with one 23168x23168 tile), or a progressive JPEG whose
    coefficient buffer (full size, not the reduced scale) passes it."""
    for tile in getattr(image, "tile", ()):
        x0, y0, x1, y1 = tile[1]
        area = (x1 - x0) * (y1 - y0)
        # Tiles inside the image are counted by check_cost; only one larger than it hides.
        if area > image.width * image.height and area * 4 > DECODE_BYTES:
            raise DecodeError(
                path,
                f"a {x1 - x0}x{y1 - y0} tile in a {image.width}x{image.height} image: over the "
                f"{DECODE_BYTES / 1e6:.0f} MB a photo may take to decode",
            )
    tags = getattr(image, "tag_v2", None)
    if image.format == "TIFF" and tags is not None:  # libtiff allocates a whole tile or strip
        if tags.get(322):  # TileWidth x TileLength
            width, rows = int(tags.get(322) or 0), int(tags.get(323) or 0)
        else:  # a strip: the image's width x RowsPerStrip (2**32-1, "all", by default)
            width = image.width
            rows = min(int(tags.get(278) or image.height), image.height)
        samples = int(tags.get(277) or 1)
        bits = tags.get(258) or (8,)
        depth = max(int(b) for b in bits) if isinstance(bits, tuple) else int(bits)
        chunk = width * rows * samples * max(depth, 8) // 8
        if chunk > DECODE_BYTES:
            raise DecodeError(
                path,
                f"a TIFF tile or strip of {width}x{rows} ({chunk / 1e6:.0f} MB) in a "
                f"{image.width}x{image.height} image: over the {DECODE_BYTES / 1e6:.0f} MB a "
                "photo may take to decode",
            )
    if image.format in ("JPEG", "MPO") and image.info.get("progressive"):
        width, height = image.size  # called before draft(): the full size
        full = width * height * len(image.getbands()) * 2  # 16-bit coefficients, whole image
        if full > DECODE_BYTES:
            raise DecodeError(
                path,
                f"a progressive JPEG of {width}x{height} needs {full / 1e6:.0f} MB to decode, "
                f"over the {DECODE_BYTES / 1e6:.0f} MB limit for one photo",
            )


def decode(
    data: bytes | BinaryIO,
    spec: Preprocessing,
    *,
    path: str = "",
    reduced_decode: bool = True,
) -> DecodedPhoto:
    """Decode fully (a truncated file passes `verify()` but fails here) and preprocess.

    `data` is the file's bytes, or the open file for one too large to hold in memory.
    `reduced_decode`: let a large JPEG decode at a reduced scale (see below); False gives
    exactly CLIP's reference path. MemoryError is left to the caller: it says nothing
    about the photo.
    """
    if isinstance(data, bytes) and not data:
        raise DecodeError(path, "empty file (0 bytes)")
    token = DECODING.set(path)
    try:
        return _decode(data, spec, path=path, reduced_decode=reduced_decode)
    finally:
        DECODING.reset(token)


def _decode(
    data: bytes | BinaryIO, spec: Preprocessing, *, path: str, reduced_decode: bool
) -> DecodedPhoto:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with Image.open(source, formats=allowed_formats()) as image:
            width, height = image.size
            check_shape(width, height, path=path)
            check_layout(image, path=path)
            if isinstance(data, bytes) and image.format in ("JPEG", "MPO"):
                check_scans(data, path=path)
            if reduced_decode and image.format in ("JPEG", "MPO"):
                # JPEG decodes at 1/2, 1/4 or 1/8 scale in the DCT for a fraction of the cost
                # (a 12 MP photo: 70 -> 32 ms), kept at >= 2x the resize target so the
                # bicubic resize still does the final filtering. Differs from the full-size
                # path by <= 0.05 (mean <= 0.005) in normalized units: tests/test_decode.py.
                target = 2 * spec.resize_shortest
                image.draft(None, (target, target))
            check_cost(image, path=path)
            image.load()
            orientation = _orientation(image)
            shown = (height, width) if orientation in _SWAPS_AXES else (width, height)
            meta = _metadata(image, *shown)
            small = reduced(image, 2 * spec.resize_shortest) if reduced_decode else image
            # exif_transpose copies the image even when there is nothing to turn
            upright = _oriented(small) if orientation != 1 else small
            pixels = model_input(upright, spec)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(
            path, f"not an image in a format imageclust reads ({_formats()})"
        ) from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(path, f"decompression bomb: {exc}") from None
    except Image.DecompressionBombWarning as exc:  # raised when warnings are errors
        raise DecodeError(path, f"decompression bomb: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason:
            reason = f"truncated or incomplete image data ({reason})"
        raise DecodeError(path, f"cannot decode: {reason}") from None
    return DecodedPhoto(meta, pixels)


def _formats() -> str:
    return ", ".join(f for f in allowed_formats() if f != "MPO")


def thumbnail_jpeg(data: bytes, longest: int = 672, quality: int = 85, *, path: str = "") -> bytes:
    """A small upright JPEG of a photo, for the labeling LLM (a few tens of KB, not megabytes)."""
    try:
        with Image.open(io.BytesIO(data), formats=allowed_formats()) as image:
            check_shape(*image.size, path=path)
            check_layout(image, path=path)
            if image.format in ("JPEG", "MPO"):
                check_scans(data, path=path)
            image.draft("RGB", (longest, longest))  # JPEG: decode at a reduced scale
            check_cost(image, path=path)
            small = reduced(image, longest)  # bounded like indexing, before any copy
            upright = _oriented(small)
            rgb = to_rgb(upright)
            rgb.thumbnail((longest, longest), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=quality)
            return out.getvalue()
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(path, f"cannot make a thumbnail: {exc or type(exc).__name__}") from None


_heif_lock = threading.Lock()
_heif: bool | None = None  # registered (True), unavailable (False), not tried yet (None)


def enable_heif() -> bool:
    """Register a HEIF opener once: pi-heif's (decode-only, a core dependency), else
    pillow-heif's if that is what is installed; True when HEIC/HEIF can be read."""
    global _heif
    with _heif_lock:
        if _heif is None:
            plugin = scan.heif_plugin()
            if plugin is not None:
                __import__(plugin).register_heif_opener()
            _heif = plugin is not None
        return _heif
