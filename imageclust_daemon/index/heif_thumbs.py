"""A HEIF's embedded thumbnail, decoded alone, where it is a scaled copy of the photo
large enough for what is asked: phones and cameras store one (an iPhone 240x320, a
Galaxy 512 px, Sony 1616 and 320 px) beside the full image, a grid of HEVC tiles that
takes ~1.1 s to decode at 12 MP here against ~10 ms for the thumbnail.

pi-heif (and pillow-heif) only report the thumbnails' sizes, so libheif's own C API is
called through ctypes, on the very libheif that pi-heif bundles and has loaded
(`pi_heif.libs/libheif-*.so*`). The functions, their arguments and the enum values are
those of libheif's public header heif.h (the copy in pillow-heif 1.1.1's sdist, which
pi-heif 1.4.0's libheif 1.23.0 keeps): heif_context_alloc,
heif_context_read_from_memory_without_copy, heif_context_get_primary_image_handle,
heif_image_handle_get_{width,height,number_of_thumbnails,list_of_thumbnail_IDs,
thumbnail,has_alpha_channel}, heif_decode_image (which applies the item's rotation and
mirroring, as the full decode does), heif_image_get_plane_readonly; heif_colorspace_RGB
= 1, heif_chroma_interleaved_RGB = 10, heif_channel_interleaved = 10. Where that
library cannot be found or a call fails, the caller decodes the full image.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from imageclust_daemon.index import scan

_RGB, _INTERLEAVED_RGB, _INTERLEAVED = 1, 10, 10
# A thumbnail whose aspect ratio is within this of the photo's is a scaled copy of it
# (not a crop, nor a letterboxed or unrelated picture).
ASPECT_TOLERANCE = 0.02
_MAX_THUMBNAILS = 16


class _Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("subcode", ctypes.c_int), ("message", ctypes.c_char_p)]


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _library_path() -> str | None:
    """The libheif that the HEIF plugin in use bundles (an auditwheel-renamed copy)."""
    plugin = scan.heif_plugin()
    spec = importlib.util.find_spec(plugin) if plugin else None
    if spec is None or spec.origin is None or plugin is None:
        return None
    site = Path(spec.origin).parent.parent
    found = sorted(glob.glob(str(site / f"{plugin}.libs" / "libheif*.so*")))
    return found[0] if found else None


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        path = _library_path()
        if path is None:
            return None
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            return None
        p, ip = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        signatures = {
            "heif_context_alloc": ([], p),
            "heif_context_free": ([p], None),
            "heif_context_read_from_memory_without_copy": ([p, p, ctypes.c_size_t, p], _Error),
            "heif_context_get_primary_image_handle": ([p, ip], _Error),
            "heif_image_handle_release": ([p], None),
            "heif_image_handle_get_width": ([p], ctypes.c_int),
            "heif_image_handle_get_height": ([p], ctypes.c_int),
            "heif_image_handle_has_alpha_channel": ([p], ctypes.c_int),
            "heif_image_handle_get_number_of_thumbnails": ([p], ctypes.c_int),
            "heif_image_handle_get_list_of_thumbnail_IDs": (
                [p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_int],
                ctypes.c_int,
            ),
            "heif_image_handle_get_thumbnail": ([p, ctypes.c_uint32, ip], _Error),
            "heif_decode_image": ([p, ip, ctypes.c_int, ctypes.c_int, p], _Error),
            "heif_image_get_primary_width": ([p], ctypes.c_int),
            "heif_image_get_primary_height": ([p], ctypes.c_int),
            "heif_image_get_plane_readonly": (
                [p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)],
                ctypes.POINTER(ctypes.c_uint8),
            ),
            "heif_image_release": ([p], None),
        }
        try:
            for name, (args, result) in signatures.items():
                function = getattr(lib, name)
                function.argtypes, function.restype = args, result
        except AttributeError:
            return None
        _lib = lib
        return lib


def available() -> bool:
    return _load() is not None


def picture(
    data: bytes,
    shortest: int = 0,
    longest: int = 0,
    *,
    largest: bool = False,
    max_pixels: int = 0,
) -> Image.Image | None:
    """The smallest (`largest`: the largest) embedded thumbnail of the primary image that
    is a scaled copy of it with its shorter side >= `shortest` and its longer side >=
    `longest`, and (`max_pixels` > 0) at most that many pixels, decoded (RGB, 8 bits,
    the item's rotation and mirroring applied); None where there is none, the photo has
    an alpha channel, or libheif cannot be reached or fails."""
    lib = _load()
    if lib is None:
        return None
    context = lib.heif_context_alloc()
    if not context:
        return None
    primary = ctypes.c_void_p()
    try:
        # without a copy: `data` outlives the context
        if lib.heif_context_read_from_memory_without_copy(context, data, len(data), None).code:
            return None
        if lib.heif_context_get_primary_image_handle(context, ctypes.byref(primary)).code:
            return None
        return _best_thumbnail(lib, primary, shortest, longest, largest, max_pixels)
    finally:
        if primary:
            lib.heif_image_handle_release(primary)
        lib.heif_context_free(context)


def _best_thumbnail(
    lib: ctypes.CDLL,
    primary: ctypes.c_void_p,
    shortest: int,
    longest: int,
    largest: bool,
    max_pixels: int,
) -> Image.Image | None:
    if lib.heif_image_handle_has_alpha_channel(primary):
        return None
    width = lib.heif_image_handle_get_width(primary)
    height = lib.heif_image_handle_get_height(primary)
    count = min(lib.heif_image_handle_get_number_of_thumbnails(primary), _MAX_THUMBNAILS)
    if count <= 0 or width <= 0 or height <= 0:
        return None
    ids = (ctypes.c_uint32 * count)()
    count = lib.heif_image_handle_get_list_of_thumbnail_IDs(primary, ids, count)
    fits: list[tuple[int, int]] = []  # (pixels, id)
    for item in ids[:count]:
        handle = ctypes.c_void_p()
        if lib.heif_image_handle_get_thumbnail(primary, item, ctypes.byref(handle)).code:
            continue
        w = lib.heif_image_handle_get_width(handle)
        h = lib.heif_image_handle_get_height(handle)
        alpha = lib.heif_image_handle_has_alpha_channel(handle)
        lib.heif_image_handle_release(handle)
        if (
            w <= 0
            or h <= 0
            or alpha
            or abs(w * height - h * width) > ASPECT_TOLERANCE * (width * h)
        ):
            continue
        too_many = max_pixels > 0 and w * h > max_pixels  # a thumbnail is no way round it
        if min(w, h) >= shortest and max(w, h) >= longest and not too_many:
            fits.append((w * h, item))
    if not fits:
        return None
    return _decoded(lib, primary, (max(fits) if largest else min(fits))[1])


def _decoded(lib: ctypes.CDLL, primary: ctypes.c_void_p, item: int) -> Image.Image | None:
    handle, image = ctypes.c_void_p(), ctypes.c_void_p()
    try:
        if lib.heif_image_handle_get_thumbnail(primary, item, ctypes.byref(handle)).code:
            return None
        if lib.heif_decode_image(handle, ctypes.byref(image), _RGB, _INTERLEAVED_RGB, None).code:
            return None
        w = lib.heif_image_get_primary_width(image)
        h = lib.heif_image_get_primary_height(image)
        stride = ctypes.c_int()
        plane = lib.heif_image_get_plane_readonly(image, _INTERLEAVED, ctypes.byref(stride))
        if not plane or w <= 0 or h <= 0 or stride.value < 3 * w:
            return None
        rows = np.ctypeslib.as_array(plane, shape=(h * stride.value,)).reshape(h, stride.value)
        return Image.fromarray(np.ascontiguousarray(rows[:, : 3 * w]).reshape(h, w, 3), "RGB")
    finally:
        if image:
            lib.heif_image_release(image)
        if handle:
            lib.heif_image_handle_release(handle)
