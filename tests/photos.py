"""Test photographs, generated with Pillow + numpy and deterministic by seed.

`photo_like` renders smooth colour gradients with a few soft-edged shapes and
mild sensor-like noise; photos of one `scene` share its composition and palette
and differ by seed only as two shots of one subject would (a small shift in
colour and exposure, a different crop/zoom, fresh noise), so a clustering test
can recover the scenes.

The writers below produce the files a photo library really holds: EXIF
orientation, capture time and GPS; CMYK, 16-bit, palette, alpha, animated and
less common formats; and broken files (empty, truncated, mislabelled, a
decompression bomb, a corrupt body).
"""

from __future__ import annotations

import colorsys
import io
import struct
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin

PathLike = str | Path

_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_DATETIME_ORIGINAL = 0x9003
_OFFSET_TIME_ORIGINAL = 0x9011

# The transpose that *undoes* each EXIF orientation's display transform:
# ImageOps.exif_transpose applies {2: FLIP_LR, 3: ROT_180, 4: FLIP_TB, 5: TRANSPOSE,
# 6: ROT_270, 7: TRANSVERSE, 8: ROT_90}; all are their own inverse but 6 and 8.
_INVERSE_OF_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}

# Hue step between consecutive scenes: the golden ratio's fractional part keeps the
# first scenes' base hues at least 0.14 of the colour wheel apart.
_SCENE_HUE_STEP = 0.6180339887


# --- photo-like images -------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


@dataclass(frozen=True)
class _Shape:
    centre: tuple[float, float]
    radii: tuple[float, float]
    angle: float
    colour: np.ndarray  # RGB in [0, 1]
    softness: float  # width of the blurred edge, in units of the radius


@dataclass(frozen=True)
class _Scene:
    corners: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # TL, TR, BL, BR colours
    shapes: tuple[_Shape, ...]
    texture: tuple[float, float, float]  # diagonal stripes: frequency, phase, amplitude


def _scene(rng: np.random.Generator, base_hue: float) -> _Scene:
    """Composition of a scene: 4 corner colours around a base hue, and 3-6 soft shapes."""

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    c00, c10, c01, c11 = (
        _hsv(base_hue + u(-0.06, 0.06), u(0.45, 0.9), u(0.35, 0.95)) for _ in range(4)
    )
    shapes = []
    for _ in range(int(rng.integers(3, 7))):
        # Shapes take the complementary hue or a neighbour of the base, never a random one,
        # so the scene's palette stays its own.
        hue = base_hue + (0.5 if rng.random() < 0.5 else u(-0.15, 0.15))
        shapes.append(
            _Shape(
                centre=(u(0.1, 0.9), u(0.1, 0.9)),
                radii=(u(0.06, 0.3), u(0.06, 0.3)),
                angle=u(0, np.pi),
                colour=_hsv(hue, u(0.4, 1.0), u(0.3, 1.0)),
                softness=u(0.03, 0.15),
            )
        )
    return _Scene((c00, c10, c01, c11), tuple(shapes), (u(3, 12), u(0, 2 * np.pi), u(0.01, 0.04)))


def _render(
    scene: _Scene,
    size: tuple[int, int],
    view: tuple[float, float, float],
    gain: np.ndarray,
    jitter: np.ndarray,
    noise_sigma: float,
    rng: np.random.Generator,
) -> Image.Image:
    width, height = size
    zoom, ox, oy = view  # the visible fraction of the scene and its top-left corner
    # The smooth part is rendered at half resolution and upscaled; only the noise is
    # per pixel. float32 throughout (Python floats for scalars, which NumPy 2 would
    # otherwise promote to float64): 640x480 takes ~35 ms instead of ~100 ms.
    w, h = max(1, (width + 1) // 2), max(1, (height + 1) // 2)
    u = (ox + zoom * (np.arange(w) + 0.5) / w).astype(np.float32)
    v = (oy + zoom * (np.arange(h) + 0.5) / h).astype(np.float32)
    uu, vv = np.meshgrid(u, v)
    c00, c10, c01, c11 = scene.corners
    top = (1 - uu)[..., None] * c00 + uu[..., None] * c10
    bottom = (1 - uu)[..., None] * c01 + uu[..., None] * c11
    pixels = (1 - vv)[..., None] * top + vv[..., None] * bottom
    freq, phase, amp = scene.texture
    pixels += (amp * np.sin((2 * np.pi * freq) * (uu + 0.5 * vv) + phase))[..., None]
    for i, shape in enumerate(scene.shapes):
        cx, cy = (float(c + j) for c, j in zip(shape.centre, jitter[i % len(jitter)], strict=True))
        rx, ry = shape.radii
        ca, sa = float(np.cos(shape.angle)), float(np.sin(shape.angle))
        du, dv = uu - cx, vv - cy
        d = np.hypot((ca * du + sa * dv) / rx, (ca * dv - sa * du) / ry)
        # A logistic edge, 1 inside and 0 outside: a blurred shape, analytically.
        alpha = (0.5 - 0.5 * np.tanh((d - 1.0) / (2 * shape.softness)))[..., None]
        pixels += alpha * (shape.colour - pixels)
    pixels *= gain * np.float32(255.0)
    smooth = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    full = np.asarray(smooth.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    full += rng.standard_normal(size=full.shape, dtype=np.float32) * np.float32(noise_sigma)
    return Image.fromarray(np.clip(np.rint(full), 0, 255).astype(np.uint8))


def photo_like(
    seed: int, size: tuple[int, int] | None = None, scene: int | None = None
) -> Image.Image:
    """A deterministic RGB photo-like image of `size` (width, height).

    Without `scene`, the seed picks everything (640x480 unless `size` is given).
    With `scene`, the scene number fixes the composition and palette (scenes get base
    hues spread round the colour wheel) and the seed varies only the shot: colour tint
    and exposure within a few percent, an 80-100% crop of the scene, shapes moved by ~1%
    of the frame, fresh noise, and (unless `size` is given) a size within 10% of 640x480.
    """
    if scene is None:
        rng = np.random.default_rng([seed, 0])
        composition = _scene(rng, float(rng.random()))
        shot = rng
    else:
        composition = _scene(np.random.default_rng([scene, 1]), scene * _SCENE_HUE_STEP + 0.05)
        shot = np.random.default_rng([scene, seed, 2])
    if size is None:
        size = (640, 480)
        if scene is not None:
            size = (int(640 * shot.uniform(0.9, 1.1)), int(480 * shot.uniform(0.9, 1.1)))
    if scene is None:
        view, gain, jitter = (1.0, 0.0, 0.0), np.ones(3, np.float32), np.zeros((1, 2))
    else:
        zoom = float(shot.uniform(0.8, 1.0))
        view = (zoom, float(shot.uniform(0, 1 - zoom)), float(shot.uniform(0, 1 - zoom)))
        # Per-channel tint ~3% and exposure ~4%, as white balance and metering vary.
        gain = ((1 + shot.normal(0, 0.03, size=3)) * (1 + shot.normal(0, 0.04))).astype(np.float32)
        jitter = shot.normal(0.0, 0.01, size=(6, 2))
    return _render(composition, size, view, gain, jitter, float(shot.uniform(1.5, 4.0)), shot)


# --- EXIF ----------------------------------------------------------------------------------


def _dms(value: float) -> tuple[TiffImagePlugin.IFDRational, ...]:
    """Degrees as EXIF (degrees, minutes, seconds) rationals, seconds to 1/10000."""
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = Fraction(round((value - degrees - minutes / 60) * 3600 * 10000), 10000)
    return (
        TiffImagePlugin.IFDRational(degrees, 1),
        TiffImagePlugin.IFDRational(minutes, 1),
        TiffImagePlugin.IFDRational(seconds.numerator, seconds.denominator),
    )


def make_exif(
    *,
    orientation: int | None = None,
    taken_at: str | None = None,
    offset: str | None = None,
    gps: tuple[float, float] | None = None,
) -> Image.Exif:
    """EXIF with Orientation (IFD0), DateTimeOriginal/OffsetTimeOriginal (Exif IFD), GPS IFD."""
    exif = Image.Exif()
    if orientation is not None:
        exif[_ORIENTATION] = orientation
    sub: dict[int, object] = {}
    if taken_at is not None:
        sub[_DATETIME_ORIGINAL] = taken_at
    if offset is not None:
        sub[_OFFSET_TIME_ORIGINAL] = offset
    if sub:
        exif[_EXIF_IFD] = sub
    if gps is not None:
        lat, lon = gps
        exif[_GPS_IFD] = {
            0: b"\x02\x03\x00\x00",  # GPSVersionID 2.3
            1: "S" if lat < 0 else "N",
            2: _dms(lat),
            3: "W" if lon < 0 else "E",
            4: _dms(lon),
        }
    return exif


def save_jpeg(
    img: Image.Image,
    path: PathLike,
    *,
    quality: int = 90,
    orientation: int | None = None,
    taken_at: str | None = None,
    offset: str | None = None,
    gps: tuple[float, float] | None = None,
) -> Path:
    """Write `img` as a JPEG with the given EXIF tags ("YYYY:MM:DD HH:MM:SS", "+02:00")."""
    exif = make_exif(orientation=orientation, taken_at=taken_at, offset=offset, gps=gps)
    img.convert("RGB").save(path, "JPEG", quality=quality, exif=exif)
    return Path(path)


def jpeg_bytes(img: Image.Image, *, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def rotated_for_orientation(img: Image.Image, orientation: int) -> Image.Image:
    """The pixels to store so that a viewer applying EXIF `orientation` displays `img`."""
    if orientation == 1:
        return img.copy()
    return img.transpose(_INVERSE_OF_ORIENTATION[orientation])


# --- odd formats ---------------------------------------------------------------------------


def save_cmyk_jpeg(img: Image.Image, path: PathLike, *, quality: int = 92) -> Path:
    img.convert("RGB").convert("CMYK").save(path, "JPEG", quality=quality)
    return Path(path)


def png16_from(img: Image.Image) -> Image.Image:
    """A 16-bit greyscale ('I;16') image whose values are the 8-bit grey ones times 257."""
    grey = np.asarray(img.convert("L"), dtype=np.uint16) * np.uint16(257)
    out = Image.fromarray(grey)
    assert out.mode == "I;16", out.mode
    return out


def save_png16(img: Image.Image, path: PathLike) -> Path:
    png16_from(img).save(path, "PNG")
    return Path(path)


def palette_from(img: Image.Image, *, transparency: bool = True) -> Image.Image:
    """A 'P' image; with `transparency`, its left quarter is index 255, marked transparent.

    Index 255 is black in the palette, so a reader that drops transparency shows black there.
    """
    pal = img.convert("RGB").quantize(colors=255)
    palette = [*(pal.getpalette() or []), *[0] * 768][:765]
    pal.putpalette([*palette, 0, 0, 0])
    if transparency:
        pal.paste(255, (0, 0, pal.width // 4, pal.height))
        pal.info["transparency"] = 255
    return pal


def save_palette_png(img: Image.Image, path: PathLike, *, transparency: bool = True) -> Path:
    pal = palette_from(img, transparency=transparency)
    if transparency:
        pal.save(path, "PNG", transparency=255)
    else:
        pal.save(path, "PNG")
    return Path(path)


def rgba_from(img: Image.Image) -> Image.Image:
    """RGBA with the left quarter fully transparent (black underneath) and the rest opaque."""
    rgba = img.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, rgba.width // 4, rgba.height))
    return rgba


def save_rgba_png(img: Image.Image, path: PathLike) -> Path:
    rgba_from(img).save(path, "PNG")
    return Path(path)


def save_animated_gif(img: Image.Image, path: PathLike, *, frames: int = 2) -> Path:
    """An animated GIF of `frames` (at least 2): `img`, its colour negative, `img`, ..."""
    rgb = img.convert("RGB")
    negative = ImageOps.invert(rgb)
    seq = [rgb if i % 2 == 0 else negative for i in range(max(2, frames))]
    seq[0].save(path, "GIF", save_all=True, append_images=seq[1:], duration=100, loop=0)
    return Path(path)


def save_webp(img: Image.Image, path: PathLike, *, quality: int = 85) -> Path:
    img.convert("RGB").save(path, "WEBP", quality=quality)
    return Path(path)


def save_bmp(img: Image.Image, path: PathLike) -> Path:
    img.convert("RGB").save(path, "BMP")
    return Path(path)


def save_tiff(img: Image.Image, path: PathLike, *, compression: str = "tiff_lzw") -> Path:
    img.convert("RGB").save(path, "TIFF", compression=compression)
    return Path(path)


def save_grey_jpeg(img: Image.Image, path: PathLike, *, quality: int = 90) -> Path:
    img.convert("L").save(path, "JPEG", quality=quality)
    return Path(path)


# --- bad files -----------------------------------------------------------------------------


def write_empty(path: PathLike) -> Path:
    Path(path).write_bytes(b"")
    return Path(path)


def write_truncated_jpeg(path: PathLike, seed: int = 0) -> Path:
    """A valid JPEG of a photo, cut after about half its bytes (no EOI marker)."""
    data = jpeg_bytes(photo_like(seed, size=(320, 240)))
    Path(path).write_bytes(data[: len(data) // 2])
    return Path(path)


def write_text_as_jpg(path: PathLike) -> Path:
    Path(path).write_text("These are my holiday notes, not a photo.\n" * 20, encoding="utf-8")
    return Path(path)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb_bytes(width: int = 60000, height: int = 60000) -> bytes:
    """A valid-looking greyscale PNG whose IHDR claims width x height; a few hundred bytes.

    The IDAT holds two zero-filled rows: enough to look real, far from the claim.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    idat = zlib.compress(b"\x00" * ((width + 1) * 2), 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def write_png_bomb(path: PathLike, width: int = 60000, height: int = 60000) -> Path:
    Path(path).write_bytes(png_bomb_bytes(width, height))
    return Path(path)


def write_corrupt_jpeg(path: PathLike, seed: int = 0) -> Path:
    """A real JPEG's headers (SOI .. SOS: tables, frame, scan) followed by garbage and EOI."""
    data = jpeg_bytes(photo_like(seed, size=(320, 240)))
    sos = data.index(b"\xff\xda")
    header_end = sos + 2 + struct.unpack(">H", data[sos + 2 : sos + 4])[0]
    garbage = np.random.default_rng(7).integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    Path(path).write_bytes(data[:header_end] + garbage + b"\xff\xd9")
    return Path(path)


def save_heic(
    img: Image.Image,
    path: PathLike,
    *,
    quality: int = 90,
    orientation: int | None = None,
    taken_at: str | None = None,
    offset: str | None = None,
    gps: tuple[float, float] | None = None,
    thumbnails: tuple[int, ...] = (),
) -> Path:
    """Write `img` as HEIC with the given EXIF tags, with pillow-heif's encoder (a test
    dependency: imageclust itself only decodes, with pi-heif). Its opener is not
    registered, so what reads the file in the tests is imageclust's own. `thumbnails`:
    the longer sides of the thumbnails stored beside the image, as phones store one."""
    import pillow_heif

    exif = make_exif(orientation=orientation, taken_at=taken_at, offset=offset, gps=gps)
    heif = pillow_heif.from_pillow(img.convert("RGB"))
    if thumbnails:
        heif[0].info["thumbnails"] = list(thumbnails)
    heif.save(str(path), quality=quality, exif=exif.tobytes())
    return Path(path)
