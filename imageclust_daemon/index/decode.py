"""Bytes of one photo -> what is displayed (metadata) and the model's input tensor.

Every failure becomes a `DecodeError` with a reason a person can act on; the
pipeline records it and goes on. Pillow's own failure modes are many
(OSError, SyntaxError, struct.error, ValueError, ...), so anything raised
while decoding is caught here and nowhere else.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imageclust_daemon import native_output
from imageclust_daemon.errors import DecodeError
from imageclust_daemon.index import camera_raw, exif, heif_thumbs, isobmff, scan
from imageclust_daemon.index.preprocess import model_input, to_rgb, wide_to_8bit
from imageclust_daemon.logs import DECODING
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


@dataclass(frozen=True, slots=True)
class DecodedPhoto:
    meta: PhotoMeta
    pixels: np.ndarray  # float32 [3, S, S]


def _metadata(image: Image.Image, width: int, height: int) -> PhotoMeta:
    kind = "JPEG" if image.format == "MPO" else image.format  # MPO: a JPEG with extra frames
    try:
        found = exif.facts(image.getexif())
    except Exception:  # broken EXIF must not cost the photo: metadata is optional
        found = exif.NO_FACTS
    if found.source != "exif":  # no EXIF original: XMP's or IPTC's, where there is one
        found = exif.with_xmp_and_iptc(found, _xmp(image), _iptc(image))
    return PhotoMeta(width, height, found.taken_at, found.lat, found.lon, kind, found.source)


def _xmp(image: Image.Image) -> Any:
    """The XMP packet as Pillow parses it (with defusedxml, a dependency: XMP is XML from
    an untrusted file, and defusedxml refuses entity expansion bombs)."""
    try:
        return image.getxmp() if hasattr(image, "getxmp") else {}
    except Exception:  # a broken packet must not cost the photo
        return {}


def _iptc(image: Image.Image) -> Any:
    from PIL import IptcImagePlugin

    if not isinstance(image, ImageFile.ImageFile):  # a picture made in memory: no IPTC
        return {}
    try:
        return IptcImagePlugin.getiptcinfo(image) or {}
    except Exception:
        return {}


_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the picture 90 degrees


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(exif.ORIENTATION, 1))
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
    cost = int(pixels * _bytes_per_pixel(image))
    if pixels > MAX_PIXELS:
        raise DecodeError(
            path,
            f"image is {width}x{height} ({pixels / 1e6:.0f} MP), over the "
            f"{MAX_PIXELS / 1e6:.0f} MP limit for one photo (decompression bomb?)",
        )
    if cost > DECODE_BYTES:
        raise DecodeError(
            path,
            f"image is {width}x{height} ({pixels / 1e6:.0f} MP, {cost / 1e6:.0f} MB to decode "
            f"as {image.format} {image.mode}), over the {DECODE_BYTES / 1e6:.0f} MB one "
            "photo may take to decode",
        )


# What a pixel costs besides the decoded image, where the decode or the first conversion
# needs more than the image itself; scaled so that each kind peaks where an RGBA PNG at the
# limit does. Measured with `imageclust index` on 9400x9400 files (peak RSS of the whole
# process): RGBA PNG 761 MB, palette PNG with transparency 845 MB and 16-bit grey PNG
# 850 MB (converted at full size before they can be averaged down), lossless WebP
# 1,434 MB (libwebp's own buffers). With these costs the last three stop at ~80, ~80 and
# ~45 MP, where they peak below 0.8 GB as the RGBA PNG does.
_CONVERTED_BYTES = 4.5
_FORMAT_BYTES = {"WEBP": 8.0}


def _bytes_per_pixel(image: Image.Image) -> float:
    if image.format in _FORMAT_BYTES:
        return _FORMAT_BYTES[image.format]
    keyed = image.info.get("transparency") is not None
    if image.mode not in _REDUCIBLE or (keyed and image.mode not in ("RGBA", "LA")):
        return _CONVERTED_BYTES
    return _PIXEL_BYTES.get(image.mode, 4)


def check_scans(data: bytes | BinaryIO, *, path: str = "") -> None:
    """Refuse a JPEG with more scans than any encoder writes: decoding time grows with
    each. Counting the start-of-scan markers is exact: inside entropy-coded data every
    0xFF byte is followed by 0x00 (byte stuffing), so 0xFFDA only ever starts a scan.
    A sequential JPEG whose first scan holds every component (what cameras write) is
    not counted (2.8 ms of a 12 MP photo's ~45): libjpeg stops such a file at a second
    scan ("broken data stream") without decoding it."""
    if _one_scan(_head(data)):
        return
    scans = data.count(b"\xff\xda") if isinstance(data, bytes) else _count_scans(data)
    if scans > MAX_JPEG_SCANS:
        raise DecodeError(
            path,
            f"a JPEG of {scans} scans (encoders write about 10): over the {MAX_JPEG_SCANS} "
            "imageclust decodes, as decoding time grows with each",
        )


def _count_scans(f: BinaryIO) -> int:
    """The start-of-scan markers of the file `f`, counted as it is read in chunks (a file
    too large to hold), up to one past the limit; `f` is left where it was."""
    at, count, last = f.tell(), 0, b""
    f.seek(0)
    while count <= MAX_JPEG_SCANS and (chunk := f.read(1 << 20)):
        count += (last + chunk).count(b"\xff\xda")  # `last`: a marker split by the chunks
        last = chunk[-1:]
    f.seek(at)
    return count


# Sensor data takes at least this many bits a pixel in any camera's RAW: lossless
# compression keeps 6-12, the lossy kinds (Canon's C-RAW, Sony's compressed ARW) 3-8. A
# RAW far smaller than that for its sensor lost its image data (a copy cut short, a
# sample with it removed): LibRaw would "decode" zeros or noise.
MIN_RAW_BITS = 0.5


# A picture of one flat colour takes little room in a JPEG: Pillow's at quality 100,
# 4:4:4, 0.22 bits a pixel of scan data at 12 MP. A JPEG that decodes to one colour
# while its scan data holds more than this, past 1 KiB, lost its image data: a JPEG
# whose scan was wiped decodes to flat grey, with its bytes all there. (Other formats
# fail to decode such damage: PNG and WebP check their data, HEIF items cut short are
# told by `check_items`.) What follows the image (a Motion Photo's video, an MPO's
# second picture) is not counted.
MIN_FLAT_BITS = 0.5
_FLAT_ALLOWANCE = 1 << 10


def check_items(data: bytes | BinaryIO, *, path: str = "") -> None:
    """Refuse a HEIF or AVIF whose items' data runs past the end of the file (see
    `isobmff`): libheif decodes the missing tiles as a flat colour, without an error."""
    f = io.BytesIO(data) if isinstance(data, bytes) else data
    cut = isobmff.missing(f)
    if cut is not None:
        size, needed = cut
        raise DecodeError(
            path, f"{TRUNCATED} (it has {size:,} bytes; its image data runs to byte {needed:,})"
        )


def check_not_flat(
    image: Image.Image, data: bytes | BinaryIO, pixels: int, *, path: str = ""
) -> None:
    """Refuse a JPEG whose picture is one flat colour while its scan data holds far
    more than such a picture needs (`MIN_FLAT_BITS`). `image`: the decoded picture,
    reduced or not; `pixels`: the photo's full size."""
    # Cheapest first (a photo is told in ~20 us, its scan's length costs 2 ms at 12 MP):
    # 25 pixels, then every pixel, then the scan.
    if not isinstance(data, bytes) or pixels <= 0 or not _flat(_sampled(image)):
        return
    if not _flat(image.getextrema()):
        return
    scan = _scan_bytes(data)
    if scan is not None and 8 * (scan - _FLAT_ALLOWANCE) / pixels > MIN_FLAT_BITS:
        raise DecodeError(
            path,
            f"damaged: it decodes to one flat colour, where its {scan:,} bytes of image data "
            "hold far more than one colour needs",
        )


def _sampled(image: Image.Image) -> list[tuple[float, float]]:
    """Each band's (min, max) over a 5x5 grid of the image's pixels."""
    w, h = image.size
    points = [
        image.getpixel((x * (w - 1) // 4, y * (h - 1) // 4)) for x in range(5) for y in range(5)
    ]
    rows = [p if isinstance(p, tuple) else (p,) for p in points]
    return [(min(band), max(band)) for band in zip(*rows, strict=True)]


def _flat(extrema: Any) -> bool:
    """Whether each band's (min, max) lie within one level."""
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    return all(float(high) - float(low) <= 1 for low, high in bands)


def _scan_bytes(data: bytes) -> int | None:
    """The bytes from a JPEG's first scan to its end of image (EOI), or None where its
    markers cannot be walked. Inside scan data every 0xFF is followed by 0x00 or a
    restart marker, so the first 0xFFD9 after the scan starts is its end."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF or marker in _STANDALONE:
            at += 1 if marker == 0xFF else 2
            continue
        if marker == 0xDA:
            end = data.find(b"\xff\xd9", at)
            return (end if end > 0 else len(data)) - at
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


# Start-of-frame markers of sequential (baseline and extended) Huffman JPEG.
_SEQUENTIAL = {0xC0, 0xC1}
# Markers without a length: TEM, RST0-7, SOI (and EOI, where the walk stops).
_STANDALONE = {0x01, *range(0xD0, 0xD9)}


def _one_scan(data: bytes) -> bool:
    """Whether the markers before the first scan say a single-scan sequential JPEG: its
    frame is SOF0 or SOF1 and its first scan holds all of the frame's components.
    False on anything else or anything unexpected."""
    at, components = 2, None
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return False
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if length < 2 or at + 2 + length > len(data):
            return False
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame
            if marker not in _SEQUENTIAL or components is not None or length < 8:
                return False
            components = data[at + 9]
        elif marker == 0xDA:  # the first scan
            return components is not None and length >= 3 and data[at + 4] == components
        at += 2 + length
    return False


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
    heif_thumbnails: str = "fidelity",
) -> DecodedPhoto:
    """Decode fully (a truncated file passes `verify()` but fails here) and preprocess.

    `data` is the file's bytes, or the open file for one too large to hold in memory.
    `reduced_decode`: let a large JPEG decode at a reduced scale (see below); False gives
    exactly CLIP's reference path. `heif_thumbnails`: when a HEIF's embedded thumbnail
    stands for the full decode (`HEIF_THUMBNAIL_SCALE`; the `index.heif_thumbnails`
    setting). MemoryError is left to the caller: it says nothing about the photo.
    """
    scale = HEIF_THUMBNAIL_SCALE[heif_thumbnails]  # an unknown name is a caller's bug
    if isinstance(data, bytes) and not data:
        raise DecodeError(path, "empty file (0 bytes)")
    token = DECODING.set(path)
    try:
        with native_output.reading(path):
            return _decode(
                data, spec, path=path, reduced_decode=reduced_decode, heif_thumbnail_scale=scale
            )
    finally:
        DECODING.reset(token)


# The shorter side a HEIF's embedded thumbnail needs to stand for the full decode, in
# multiples of the model's resize, for each `index.heif_thumbnails` (0: none does). Real
# features (EfficientNet-Lite0) of 16 real photographs made into HEIC by heif-enc keep a
# cosine to the full decode's of median 0.9927 (min 0.9745) with 640-px thumbnails
# (shorter side 480, 2x); with 480-px ones 0.9850, and with the 320-px ones phones store
# (shorter 240, 1x) 0.9646, and 0.93-0.96 on an iPhone's and a Galaxy's own
# (tests/tools/heif_fidelity_check.py). "fidelity" keeps the 2x reserve `reduced` keeps
# for every other format; "speed" takes the phones' own.
HEIF_THUMBNAIL_SCALE = {"fidelity": 2, "speed": 1, "never": 0}


def _decode(
    data: bytes | BinaryIO,
    spec: Preprocessing,
    *,
    path: str,
    reduced_decode: bool,
    heif_thumbnail_scale: int,
) -> DecodedPhoto:
    head = _head(data)
    kind = camera_raw.sniff(head, path)
    if kind is not None:
        try:
            with _reasons(path):
                return _decode_raw(data, kind, spec, path=path)
        except camera_raw.NotRaw:  # a TIFF that is no camera's RAW: read as a TIFF
            pass
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    sniffed = sniff_format(head[:64])
    if sniffed in ("HEIF", "AVIF"):
        check_items(data, path=path)
    with (
        _reasons(path, kind, sniffed, data),
        _opened(source, sniffed) as image,
    ):
        # JPEG decodes at 1/2, 1/4 or 1/8 scale in the DCT for a fraction of the cost, kept
        # at >= 1.5x the resize target so the bicubic resize still does the final
        # filtering. A 12 MP photo decodes at 1/8: 39 -> 30 ms and its resize 7 -> 3 ms
        # against 1/4 (the 2x of before; other formats are still averaged down, by
        # `reduced`, to 2x). Differs from the full-size path by <= 0.05 (mean
        # <= 0.005) in normalized units (tests/test_decode.py). On 33 real images (Debian's
        # wallpapers and OpenCV's samples, shorter side 1080-4096) the features of a real
        # model (EfficientNet-Lite0, ImageNet) keep a cosine to the full-size decode's of
        # 0.990-0.9999, median 0.9986 (at 2x: 0.9925-1.0, median 0.9994; a re-encode at
        # JPEG quality 85: 0.988-1.0, median 0.9993).
        target = 2 * spec.resize_shortest
        width, height = image.size
        # A HEIF's embedded thumbnail stands for the full decode where it is a scaled copy
        # whose shorter side reaches HEIF_THUMBNAIL_SCALE resizes.
        thumb = None
        if reduced_decode and heif_thumbnail_scale:
            shortest = heif_thumbnail_scale * spec.resize_shortest
            thumb = _heif_thumbnail(image, data, shortest, 0, path=path)
        if thumb is None and width * height > MAX_PIXELS:
            # too large to decode in full (a phone's 200 MP mode): a thumbnail that
            # reaches the model's input is better than no photo at all
            thumb = _heif_thumbnail(image, data, spec.resize_shortest, 0, path=path)
        if thumb is None:
            _load(image, data, _draft_target(spec) if reduced_decode else None, path=path)
        orientation = _orientation(image)
        shown = (height, width) if orientation in _SWAPS_AXES else (width, height)
        meta = _metadata(image, *shown)
        small = (
            thumb if thumb is not None else (reduced(image, target) if reduced_decode else image)
        )
        if image.format in ("JPEG", "MPO"):
            check_not_flat(small, data, width * height, path=path)
        # exif_transpose copies the image even when there is nothing to turn
        upright = _oriented(small) if orientation != 1 else small
        pixels = model_input(upright, spec)
    return DecodedPhoto(meta, pixels)


def _opened(source: BinaryIO, sniffed: str | None) -> Image.Image:
    """The image opened (its header read, nothing decoded). A HEIF whose header passes
    Pillow's pixel limit is opened all the same: it may be read through its thumbnail
    (the decode budget still applies to whatever is decoded)."""
    try:
        return Image.open(source, formats=allowed_formats())
    except Image.DecompressionBombError:
        if sniffed != "HEIF" or "HEIF" not in Image.OPEN:
            raise
        source.seek(0)
        factory = Image.OPEN["HEIF"][0]  # the plugin's own class: no size check at open
        return factory(source, "")


def _heif_thumbnail(
    image: Image.Image,
    data: bytes | BinaryIO,
    shortest: int,
    longest: int,
    *,
    path: str,
    largest: bool = False,
) -> Image.Image | None:
    """The HEIF's embedded thumbnail where it will do (`heif_thumbs.picture`), after the
    checks the full decode would pass but its size; None for any other photo."""
    if image.format != "HEIF" or not isinstance(data, bytes):
        return None
    check_shape(*image.size, path=path)
    check_layout(image, path=path)
    return heif_thumbs.picture(data, shortest, longest, largest=largest, max_pixels=MAX_PIXELS)


def _draft_target(spec: Preprocessing) -> int:
    """The shorter side a JPEG's reduced-scale decode keeps at least: 1.5x the resize's."""
    return (3 * spec.resize_shortest + 1) // 2


def _load(image: Image.Image, data: bytes | BinaryIO, target: int | None, *, path: str) -> None:
    """Decode an opened image within the budget: refuse what no photo looks like, then
    (a JPEG) decode at the smallest scale whose shorter side stays >= `target`."""
    check_shape(*image.size, path=path)
    check_layout(image, path=path)
    if image.format in ("JPEG", "MPO"):
        check_scans(data, path=path)
    if target is not None and image.format in ("JPEG", "MPO"):
        image.draft(None, (target, target))
    check_cost(image, path=path)
    try:
        image.load()
    except OSError as exc:
        compression = image.info.get("compression") if image.format == "TIFF" else None
        if compression and "decoder error" in str(exc):
            # libtiff's own codec failed: a codec this build lacks (libtiff says so on
            # stderr: native_output), or damaged data; which, Pillow does not tell
            named = str(compression).removeprefix("tiff_").replace("_", " ")
            raise DecodeError(
                path, f"cannot decode this TIFF's {named}-compressed image data ({exc})"
            ) from None
        raise


# Of a file too large to hold, what is read to tell a RAW by (signatures, and a TIFF's
# first IFD with its Make); a file held in memory is looked at whole, as a TIFF's first
# IFD may be anywhere in it.
_HEAD_BYTES = 1 << 20


def _head(data: bytes | BinaryIO) -> bytes:
    if isinstance(data, bytes):
        return data
    head = data.read(_HEAD_BYTES)
    data.seek(0)
    return head


def _decode_raw(
    data: bytes | BinaryIO, kind: str, spec: Preprocessing, *, path: str
) -> DecodedPhoto:
    with camera_raw.opened(data, kind, path=path) as shot:
        check_shape(shot.width, shot.height, path=path)
        found = shot.facts()
        meta = PhotoMeta(
            shot.width, shot.height, found.taken_at, found.lat, found.lon, kind, found.source
        )
        upright = _raw_picture(shot, spec.resize_shortest, path=path)
        return DecodedPhoto(meta, model_input(upright, spec))


def _raw_picture(shot: camera_raw.RawShot, shortest: int, *, path: str) -> Image.Image:
    """The RAW's picture, upright, its shorter side >= `shortest` where the photo has it
    (and not much more): the embedded preview when it is large enough, else the sensor's."""
    preview = shot.usable_preview(shortest)
    if preview is not None and preview.jpeg is not None:
        with Image.open(io.BytesIO(preview.jpeg), formats=["JPEG"]) as image:
            _load(image, preview.jpeg, 2 * shortest, path=path)
            return turned(reduced(image, 2 * shortest), shot.orientation)
    if preview is not None and preview.bitmap is not None:
        return turned(reduced(Image.fromarray(preview.bitmap), 2 * shortest), shot.orientation)
    if shot.sensor_pixels > MAX_PIXELS:
        raise DecodeError(
            path,
            f"a {shot.kind} of {shot.sensor_pixels / 1e6:.0f} MP and no usable preview: over "
            f"the {MAX_PIXELS / 1e6:.0f} MP limit for one photo",
        )
    bits = 8 * shot.file_bytes / max(shot.sensor_pixels, 1)
    if bits < MIN_RAW_BITS:
        raise DecodeError(
            path,
            f"no image data: the {shot.kind} has {shot.file_bytes:,} bytes for a "
            f"{shot.sensor_pixels / 1e6:.0f} MP sensor and no usable preview: its sensor data "
            "was removed or cut short",
        )
    sensor = shot.demosaic()  # LibRaw turned it
    if sensor.size and int(sensor.max()) - int(sensor.min()) <= 2:
        raise DecodeError(path, f"no image data: the {shot.kind}'s sensor data is blank")
    return reduced(Image.fromarray(sensor), 2 * shortest)


# The transpose that shows a picture stored with each EXIF orientation (as
# ImageOps.exif_transpose does), for pictures whose orientation is not in their own EXIF.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def turned(image: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


@contextmanager
def _reasons(
    path: str,
    refused: str | None = None,
    sniffed: str | None = None,
    data: bytes | BinaryIO | None = None,
) -> Iterator[None]:
    """Whatever a decoder raises -> a DecodeError with a reason a person can act on.
    `refused`: the RAW format the file looked like, which LibRaw did not read; `sniffed`:
    the format its first bytes say (`sniff_format`); `data`: the file, for libheif to
    say what is wrong with a HEIF that Pillow could not open."""
    try:
        yield
    except (DecodeError, camera_raw.NotRaw, MemoryError):
        raise
    except UnidentifiedImageError:
        reason = f"not an image in a format imageclust reads ({_formats()})"
        if sniffed is not None:  # its bytes say what it is: say that, not "not an image"
            reason = f"a damaged {sniffed}: its header is not one Pillow can read"
        if sniffed == "HEIF" and data is not None:  # Pillow hides libheif's words
            reason = _libheif_reason(data) or reason
        if refused is not None:
            reason = (
                f"neither a {refused} that LibRaw reads nor an image in a format imageclust "
                f"reads ({_formats()}): corrupt or truncated?"
            )
        raise DecodeError(path, reason) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # (the warning is raised when warnings are errors)
        # its header says more pixels than imageclust decodes: a crafted file, or a real
        # photo that large (a phone's 200 MP mode); which, the header cannot tell
        size = re.search(r"\((\d+) pixels\)", str(exc))
        much = f"{int(size.group(1)) / 1e6:,.0f} MP" if size else "more pixels"
        raise DecodeError(
            path,
            f"image of {much}, over the {MAX_PIXELS / 1e6:.0f} MP limit for one photo: a "
            "decompression bomb, or a photo larger than imageclust reads",
        ) from None
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        if sniffed == "HEIF" and (words := heif_reason(reason)) is not None:
            raise DecodeError(path, words) from None
        low = reason.lower()
        if "truncated" in low or "end of file" in low:  # Pillow: "... (N bytes not processed)"
            raise DecodeError(path, TRUNCATED) from None
        if "broken data stream" in low or "corrupt" in low:
            raise DecodeError(path, f"{DAMAGED} ({reason})") from None
        if sniffed is not None:
            raise DecodeError(
                path, f"a damaged {sniffed}: cannot decode its image data ({reason})"
            ) from None
        raise DecodeError(path, f"cannot decode: {reason}") from None


# libheif's errors read "<code>: <subcode>[: <detail>]" (libheif's error.cc,
# Error::get_error_string and error_struct); pi-heif raises them with that message. The
# code's words -> what the photo's failure says ({} is the rest of libheif's message).
_LIBHEIF = {
    "Invalid input": "a damaged HEIF: {}",
    "Usage error": "a damaged HEIF: {}",
    "Decoder plugin generated an error": "a damaged HEIF: its image data does not decode ({})",
    "Unsupported file-type": "a kind of HEIF that libheif does not read ({})",
    "Unsupported feature": "a HEIF using what this build of libheif does not read ({})",
    "Memory allocation error": "over libheif's memory and security limits ({})",
    "Color profile does not exist": "a HEIF whose colour profile is missing ({})",
    "Error while loading plugin": "libheif could not load its decoder ({})",
}
# libheif's subcode for data that ends early (heif_suberror_End_of_data)
_LIBHEIF_END = "Unexpected end of file"


def heif_reason(message: str) -> str | None:
    """A libheif error message in words for a person; None where it is not one."""
    code, _, rest = message.partition(": ")
    words = _LIBHEIF.get(code)
    if words is None:
        return None
    subcode, _, detail = rest.partition(": ")
    if subcode == _LIBHEIF_END:
        return f"{TRUNCATED} ({detail})" if detail else TRUNCATED
    said = detail if subcode == "Unspecified" and detail else rest
    return words.format(said or code)


def _libheif_reason(data: bytes | BinaryIO) -> str | None:
    """What libheif itself says of a HEIF Pillow could not open (Pillow turns the
    plugin's error into "cannot identify image file")."""
    plugin = scan.heif_plugin()
    if plugin is None:
        return None
    if not isinstance(data, bytes):
        data.seek(0)
    try:
        __import__(plugin).open_heif(data, convert_hdr_to_8bit=True)
    except Exception as exc:
        return heif_reason(str(exc))
    return None


def _formats() -> str:
    return ", ".join(f for f in allowed_formats() if f != "MPO") + " and camera RAWs"


TRUNCATED = "truncated: the file ends before its image data"
DAMAGED = "damaged: its image data is corrupt"

# The first bytes of each format imageclust reads (and of ISO BMFF's HEIF and AVIF, their
# "ftyp" brand at byte 4): what a file is, even when it is too damaged to open.
_MAGIC = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


def read_dates(data: bytes | BinaryIO, path: str = "") -> exif.Facts:
    """What a photo's metadata says of when it was taken (and where), read without
    decoding its pixels: a RAW's own structures, or what Pillow reads of its header."""
    head = _head(data)
    kind = camera_raw.sniff(head, path)
    if kind is not None:
        return camera_raw.raw_facts(head, kind)
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with Image.open(source, formats=allowed_formats()) as image:
            meta = _metadata(image, *image.size)
    except Exception:  # metadata is optional: a file Pillow cannot open has none here
        return exif.NO_FACTS
    return exif.Facts(meta.taken_at, meta.lat, meta.lon, meta.taken_at_source)


def format_of(data: bytes | BinaryIO, path: str = "") -> str | None:
    """What a file is by its bytes (a camera RAW's kind, or `sniff_format`'s), for the
    row of a photo that could not be decoded."""
    head = _head(data)
    return camera_raw.sniff(head, path) or sniff_format(head[:64])


def sniff_format(head: bytes) -> str | None:
    """The format a file's first bytes (a dozen or more) say, or None."""
    for at, magic, name in _MAGIC:
        if head[at : at + len(magic)] == magic:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AVIF_BRANDS:
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
    return None


def thumbnail_jpeg(
    data: bytes | BinaryIO, longest: int = 672, quality: int = 85, *, path: str = ""
) -> bytes:
    """A small upright JPEG of a photo, for the labeling LLM and the gallery (a few tens
    of KB, not megabytes); a RAW's from its preview where that is large enough. `data`:
    the photo's bytes, or its open file (`originals.contents`), read as the decoder asks."""
    try:
        with native_output.reading(path), _reasons(path):
            rgb = to_rgb(_picture(data, longest, path=path))
            rgb.thumbnail((longest, longest), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=quality)
            return out.getvalue()
    except DecodeError as exc:
        if exc.reason.startswith("cannot decode: "):
            exc = DecodeError(path, "cannot make a thumbnail: " + exc.reason[15:])
        raise exc from None


def _picture(data: bytes | BinaryIO, longest: int, *, path: str) -> Image.Image:
    """The photo upright, its longer side >= `longest` where the photo has it."""
    head = _head(data)
    kind = camera_raw.sniff(head, path)
    if kind is not None:
        try:
            with camera_raw.opened(data, kind, path=path) as shot:
                check_shape(shot.width, shot.height, path=path)
                # 2% short is as good (a 1280x850 preview for a 1280-pixel picture of a
                # 4310x2868 photo, which would want 851)
                wanted = longest * min(shot.width, shot.height) / max(shot.width, shot.height)
                return _raw_picture(shot, max(int(wanted * 0.98), 1), path=path)
        except camera_raw.NotRaw:
            pass
    if not isinstance(data, bytes):
        data.seek(0)
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    sniffed = sniff_format(head[:64])
    if sniffed in ("HEIF", "AVIF"):
        check_items(data, path=path)
    with (
        _reasons(path, kind, sniffed, data),
        _opened(source, sniffed) as image,
    ):
        thumb = _heif_thumbnail(image, data, 0, int(longest * 0.98), path=path)
        if thumb is None and image.size[0] * image.size[1] > MAX_PIXELS:
            thumb = _heif_thumbnail(image, data, 0, 0, path=path, largest=True)
        if thumb is not None:
            return _oriented(thumb)
        _load(image, data, longest, path=path)
        small = reduced(image, longest)  # bounded like indexing, before any copy
        return _oriented(small)


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
