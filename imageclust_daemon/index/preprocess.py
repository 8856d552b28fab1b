"""Pixels -> model input tensor: CLIP's reference preprocessing, as pure functions.

Matches transformers' CLIPImageProcessor (PIL backend) step for step: resize the
shortest side to `resize_shortest` with PIL bicubic (the long side truncated to
an int, as the reference does), center crop with the top-left offset rounded
down, scale to [0, 1], subtract the per-channel mean, divide by the std, NCHW.

Transparent images (alpha channel or a tRNS colour key) are composited onto
white, as transformers 5 does (older releases and OpenAI's CLIP dropped alpha
and showed whatever colour hid under transparent pixels, usually black).

One deliberate departure, for an input the reference gets wrong: 16-bit
images are scaled to 8 bits before conversion; `convert("RGB")` clips them,
so a normal 16-bit photo turns white.

No I/O, no logging: callers pass an already decoded PIL image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from imageclust_daemon.records import Preprocessing

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def resample_filter(name: str) -> Image.Resampling:
    try:
        return _RESAMPLE[name]
    except KeyError:
        raise ValueError(f"unknown resample filter {name!r}; one of {sorted(_RESAMPLE)}") from None


def wide_to_8bit(image: Image.Image) -> Image.Image:
    """Grey 16-bit ("I;16*"), 32-bit int ("I") or float ("F") to 8-bit "L": scaled, not clipped.

    float32, in place where possible: float64 temporaries made a 9400x9400 16-bit PNG
    cost 1.8 GB. (x / 257 maps 0..65535 onto 0..255 exactly at both ends.)
    """
    a = np.asarray(image)
    if image.mode in _SIXTEEN_BIT or (image.mode == "I" and a.size and int(a.max()) > 255):
        scaled = a.astype(np.float32)
        scaled /= np.float32(257.0)
    elif image.mode == "F" and a.size and float(np.nanmax(a)) <= 1.0:
        scaled = np.nan_to_num(a.astype(np.float32))
        scaled *= np.float32(255.0)
    else:
        scaled = np.nan_to_num(a.astype(np.float32))
    np.clip(scaled, 0, 255, out=scaled)
    np.rint(scaled, out=scaled)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: CMYK, YCbCr, LAB, palette, greyscale, 16-bit, alpha."""
    keyed = image.info.get("transparency") is not None  # a tRNS key: P, and L/RGB PNGs too
    if image.mode == "RGB" and not keyed:
        return image
    if image.mode in _SIXTEEN_BIT or image.mode in {"I", "F"}:
        return wide_to_8bit(image).convert("RGB")
    has_alpha = keyed or image.mode in {"RGBA", "LA", "La", "RGBa", "PA"}
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resized_size(width: int, height: int, shortest: int) -> tuple[int, int]:
    """(w, h) with the shortest side == `shortest`, long side int()-truncated like the reference."""
    if width <= height:
        return shortest, int(shortest * height / width)
    return int(shortest * width / height), shortest


# Resizing a whole image costs its resized size: 16 crops' worth (a 16:1 strip, 3.2 MB) is
# nothing; past it only the part that survives the crop is resampled (see resize_and_crop).
WHOLE_RESIZE_MAX = 16


def resize_and_crop(image: Image.Image, spec: Preprocessing) -> Image.Image:
    """Shortest side to spec.resize_shortest, then a centred spec.crop square (RGB in, RGB out).

    An image of ordinary shape is resized whole and cropped, exactly as the reference
    does. One whose resized size would pass WHOLE_RESIZE_MAX crops (a strip; a
    100000x1 PNG resized whole asks for ~20 GB) has only the part that survives the
    crop resampled (Pillow's `box`): each output pixel is centred at the same source
    position with the same filter width, so the picture is the same; Pillow's
    rounding between its two passes differs, by up to a few levels of 255.
    """
    w, h = resized_size(image.width, image.height, spec.resize_shortest)
    c = spec.crop
    top, left = (h - c) // 2, (w - c) // 2
    if w >= c and h >= c and w * h > WHOLE_RESIZE_MAX * c * c:
        sx, sy = image.width / w, image.height / h
        box = (left * sx, top * sy, (left + c) * sx, (top + c) * sy)
        return image.resize((c, c), resample=resample_filter(spec.resample), box=box)
    if (w, h) != image.size:
        image = image.resize((w, h), resample=resample_filter(spec.resample))
    if w < c or h < c:  # the reference pads with zeros before cropping; only for crop > resize
        canvas = Image.new("RGB", (max(w, c), max(h, c)))
        canvas.paste(image, ((max(w, c) - w) // 2, (max(h, c) - h) // 2))
        image, w, h = canvas, canvas.width, canvas.height
        top, left = (h - c) // 2, (w - c) // 2
    return image.crop((left, top, left + c, top + c))


def normalize(rgb: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """uint8 HWC -> float32 CHW, rescaled and normalized per channel."""
    x = rgb.astype(np.float32) * np.float32(spec.rescale)
    x -= np.asarray(spec.mean, dtype=np.float32)
    x /= np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def model_input(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """A decoded, orientation-corrected image -> float32 [3, crop, crop]."""
    cropped = resize_and_crop(to_rgb(image), spec)
    return normalize(np.asarray(cropped, dtype=np.uint8), spec)
