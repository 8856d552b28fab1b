"""preprocess against the reference: transformers' CLIPImageProcessorPil, on real and odd photos.

Tolerance: max |ours - reference| <= 1e-5 on the normalized tensor. Both sides run the same
PIL bicubic resize and crop, so they differ only in float32 arithmetic order (~5e-7 today);
one 8-bit level is ~0.015 after normalization, so an off-by-one resize size, crop offset or
rounding step shows up three orders of magnitude above the tolerance.

The two deliberate departures (see the preprocess module docstring) are tested against the
reference applied to the corrected input: 16-bit scaled to 8 bits, alpha composited on white.
Each also asserts that the naive path (what `convert("RGB")` alone gives) would be wrong.

transformers logs "PyTorch was not found" through `logging`, not `warnings`: no filter needed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from transformers import CLIPImageProcessorPil
from transformers.image_transforms import get_resize_output_image_size

from imageclust_daemon.index.preprocess import (
    model_input,
    normalize,
    resample_filter,
    resized_size,
    to_rgb,
)
from imageclust_daemon.records import Preprocessing
from tests.photos import palette_from, photo_like, png16_from, rgba_from

TOLERANCE = 1e-5
SPEC = Preprocessing()

Tensor = np.ndarray
Reference = Callable[[Image.Image], Tensor]


def _reference_for(spec: Preprocessing) -> Reference:
    proc = CLIPImageProcessorPil(
        size={"shortest_edge": spec.resize_shortest},
        crop_size={"height": spec.crop, "width": spec.crop},
        resample=int(resample_filter(spec.resample)),
        rescale_factor=spec.rescale,
        image_mean=list(spec.mean),
        image_std=list(spec.std),
    )

    def run(image: Image.Image) -> Tensor:
        return np.asarray(proc(images=image, return_tensors="np")["pixel_values"][0])

    return run


@pytest.fixture(scope="module")
def reference() -> Reference:
    return _reference_for(SPEC)


def ours(image: Image.Image, spec: Preprocessing = SPEC) -> Tensor:
    return model_input(image, spec)


def assert_matches(actual: Tensor, expected: Tensor) -> None:
    assert actual.shape == expected.shape == (3, 224, 224)
    assert actual.dtype == np.float32
    diff = float(np.max(np.abs(actual - expected)))
    assert diff <= TOLERANCE, f"max abs difference {diff:.3g} > {TOLERANCE}"


def roundtrip(image: Image.Image, fmt: str, **params: object) -> Image.Image:
    """`image` written as `fmt` and read back, as decode would see it."""
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    with Image.open(io.BytesIO(buf.getvalue())) as read:
        read.load()
        return read.copy()


# --- real photographs ----------------------------------------------------------------------

# Files that ship inside the scikit-image wheel (skimage.data loads them without a download).
SKIMAGE_PHOTOS = [
    "astronaut.png",  # RGB 512x512
    "chelsea.png",  # RGB 451x300, landscape
    "coffee.png",  # RGB 600x400
    "rocket.jpg",  # RGB JPEG 640x427
    "camera.png",  # grey 512x512
    "coins.png",  # grey 384x303
    "moon.png",  # grey
    "microaneurysms.png",  # grey 102x102: smaller than the crop, upscaled
    "hubble_deep_field.jpg",  # RGB JPEG 1000x872 with EXIF
    "retina.jpg",  # RGB JPEG 1411x1411
    "ihc.png",
    "motorcycle_left.png",  # RGB 741x500
    "color.png",  # RGB 371x370
    "horse.png",  # RGBA silhouette: alpha composited on white by both
    "logo.png",  # RGBA
]


def _skimage_photo(name: str) -> Image.Image:
    skimage_data = pytest.importorskip("skimage.data")
    path = Path(skimage_data.data_dir) / name
    if not path.is_file():
        pytest.skip(f"{name} does not ship in this scikit-image wheel")
    with Image.open(path) as image:
        image.load()
        return image.copy()


@pytest.mark.parametrize("name", SKIMAGE_PHOTOS)
def test_skimage_photographs_match_reference(name: str, reference: Reference) -> None:
    image = _skimage_photo(name)
    # RGBA: this transformers composites alpha on white itself; compare on the corrected
    # input anyway, so the test states what we do whatever the reference version.
    corrected = _on_white(image) if image.mode in ("RGBA", "LA") else image
    assert_matches(ours(image), reference(corrected))


# --- generated shapes and modes ------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        (224, 224),  # exactly the crop: no resize at all
        (225, 224),
        (224, 225),
        (223, 224),
        (225, 225),
        (448, 448),
        (641, 479),  # odd sizes: crop offsets round down
        (200, 1000),  # tall 1:5
        (1500, 240),  # wide panorama
        (4000, 10),  # extreme 400:1
        (50, 30),  # tiny: upscaled
        (7, 5),
        (2, 3),
        (1, 1),
        (1, 300),  # 1xN edge cases
        (300, 1),
    ],
)
def test_odd_sizes_match_reference(size: tuple[int, int], reference: Reference) -> None:
    image = photo_like(size[0] * 7919 + size[1], size=size)
    assert image.size == size
    assert_matches(ours(image), reference(image))


def _palette(image: Image.Image) -> Image.Image:
    return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)


MODES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "palette": _palette,
    "palette-png": lambda im: roundtrip(_palette(im), "PNG"),
    "grey": lambda im: im.convert("L"),
    "grey-jpeg": lambda im: roundtrip(im.convert("L"), "JPEG", quality=90),
    "bilevel": lambda im: im.convert("1"),
    "cmyk": lambda im: im.convert("CMYK"),
    "cmyk-jpeg": lambda im: roundtrip(im.convert("CMYK"), "JPEG", quality=92),
    "ycbcr": lambda im: im.convert("YCbCr"),
    "grey-int32-8bit-range": lambda im: im.convert("I"),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_other_modes_match_reference(mode: str, reference: Reference) -> None:
    image = MODES[mode](photo_like(11, size=(400, 300)))
    assert image.mode != "RGB"
    assert_matches(ours(image), reference(image))


@pytest.mark.parametrize(
    "spec",
    [
        Preprocessing(resize_shortest=256, crop=224),  # the classic 256 -> 224 crop
        Preprocessing(resize_shortest=336, crop=336),  # ViT-L/14@336
        Preprocessing(resample="bilinear"),
        Preprocessing(resize_shortest=200, crop=224),  # crop larger than resize: zero padding
        Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),  # SigLIP-style
    ],
    ids=["256-224", "336", "bilinear", "padded", "siglip-norm"],
)
def test_other_model_specs_match_reference(spec: Preprocessing) -> None:
    image = photo_like(5, size=(517, 389))
    expected = _reference_for(spec)(image)
    actual = ours(image, spec)
    assert actual.shape == expected.shape == (3, spec.crop, spec.crop)
    assert float(np.max(np.abs(actual - expected))) <= TOLERANCE


# --- deliberate departure 1: 16-bit is scaled, not clipped ---------------------------------


def _as_8bit(grey16: Image.Image) -> Image.Image:
    return Image.fromarray(np.rint(np.asarray(grey16, np.float64) / 257).astype(np.uint8))


@pytest.mark.parametrize("source", ["in-memory", "png-file"])
def test_16bit_matches_reference_on_the_8bit_scaled_image(
    source: str, reference: Reference
) -> None:
    image = png16_from(photo_like(3, size=(380, 260)))
    if source == "png-file":
        image = roundtrip(image, "PNG")
    assert image.mode == "I;16"
    assert_matches(ours(image), reference(_as_8bit(image)))


def test_32bit_int_with_16bit_values_is_scaled_like_16bit(reference: Reference) -> None:
    wide = np.asarray(photo_like(4, size=(300, 300)).convert("L"), np.int32) * 257
    image = Image.fromarray(wide)
    assert image.mode == "I"
    assert_matches(ours(image), reference(Image.fromarray((wide // 257).astype(np.uint8))))


def test_16bit_mid_grey_stays_mid_grey_where_the_naive_path_turns_white(
    reference: Reference,
) -> None:
    mid = Image.fromarray(np.full((240, 320), 128 * 257, np.uint16))
    assert mid.mode == "I;16"
    grey = np.array([128 / 255] * 3, np.float32)
    expected = (grey - np.array(SPEC.mean, np.float32)) / np.array(SPEC.std, np.float32)
    white = (1 - np.array(SPEC.mean, np.float32)) / np.array(SPEC.std, np.float32)
    np.testing.assert_allclose(ours(mid), np.broadcast_to(expected[:, None, None], (3, 224, 224)))
    # What convert("RGB") (and so the unmodified reference) does: clip to 255, all white.
    np.testing.assert_allclose(
        reference(mid), np.broadcast_to(white[:, None, None], (3, 224, 224)), atol=1e-5
    )


# --- deliberate departure 2: transparency is composited on white ---------------------------


def _on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _with_trns(image: Image.Image, mode: str) -> Image.Image:
    """A PNG in `mode` ('RGB' or 'L') with a tRNS colour key on its black left quarter."""
    keyed = image.convert(mode)
    keyed.paste(0, (0, 0, keyed.width // 4, keyed.height))
    return roundtrip(keyed, "PNG", transparency=(0, 0, 0) if mode == "RGB" else 0)


ALPHA: dict[str, Callable[[Image.Image], Image.Image]] = {
    "rgba": rgba_from,
    "rgba-png": lambda im: roundtrip(rgba_from(im), "PNG"),
    "la": lambda im: rgba_from(im).convert("LA"),
    "palette-alpha": lambda im: rgba_from(im).convert("PA"),
    "palette-trns": palette_from,
    "palette-png-trns": lambda im: roundtrip(palette_from(im), "PNG", transparency=255),
    "rgb-png-trns": lambda im: _with_trns(im, "RGB"),
    "grey-png-trns": lambda im: _with_trns(im, "L"),
    "webp-alpha": lambda im: roundtrip(rgba_from(im), "WEBP", lossless=True),
}


@pytest.mark.parametrize("kind", sorted(ALPHA))
def test_alpha_matches_reference_on_the_image_composited_on_white(
    kind: str, reference: Reference
) -> None:
    image = ALPHA[kind](photo_like(8, size=(400, 240)))
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    assert has_alpha, image.mode
    actual = ours(image)
    assert_matches(actual, reference(_on_white(image)))
    # The naive path (drop alpha) shows the black hidden under the transparent quarter.
    # Rebuilt from the pixels alone: convert("RGB") keeps a palette's tRNS as a colour key.
    naive = reference(Image.fromarray(np.asarray(image.convert("RGB"))))
    assert float(np.max(np.abs(actual - naive))) > 1.0
    white = (1 - np.array(SPEC.mean, np.float32)) / np.array(SPEC.std, np.float32)
    # The transparent quarter (x < 100 of 400) is x < 93 after the resize to 373x224 and
    # the crop starts at x = 74, so the crop's first ~19 columns are white.
    np.testing.assert_allclose(
        actual[:, :, :10], np.broadcast_to(white[:, None, None], (3, 224, 10)), atol=0.05
    )


def test_to_rgb_leaves_rgb_alone() -> None:
    image = photo_like(1, size=(32, 24))
    assert to_rgb(image) is image


# --- properties of the pure helpers --------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 20_000),
    height=st.integers(1, 20_000),
    shortest=st.integers(1, 1024),
)
def test_resized_size_properties(width: int, height: int, shortest: int) -> None:
    w, h = resized_size(width, height, shortest)
    assert min(w, h) == shortest
    # Aspect preserved: the long side is the exact scaled one, truncated (so within 1 px).
    if width <= height:
        assert w == shortest and 0 <= shortest * height / width - h < 1
    else:
        assert h == shortest and 0 <= shortest * width / height - w < 1
    # And identical to the reference's own computation (which returns (height, width)).
    shape_only = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (height, width, 3))
    expected = get_resize_output_image_size(
        shape_only, size=shortest, default_to_square=False, input_data_format="channels_last"
    )
    assert (h, w) == tuple(expected)


_means = st.tuples(*[st.floats(0.0, 1.0)] * 3)
_stds = st.tuples(*[st.floats(0.05, 1.0)] * 3)


@settings(max_examples=60, deadline=None)
@given(
    rgb=hnp.arrays(
        np.uint8,
        hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=16).map(
            lambda s: (s[0], s[1], 3)
        ),
    ),
    mean=_means,
    std=_stds,
)
def test_normalize_shape_dtype_and_inverse(
    rgb: np.ndarray, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> None:
    spec = Preprocessing(mean=mean, std=std)
    x = normalize(rgb, spec)
    assert x.shape == (3, rgb.shape[0], rgb.shape[1])
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    assert np.isfinite(x).all()
    back = (
        x * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    ) / np.float32(spec.rescale)
    # float32 round trip: within 1e-3 of a level, so rounding recovers the exact bytes.
    assert np.max(np.abs(back - rgb.transpose(2, 0, 1))) < 1e-3
    np.testing.assert_array_equal(np.rint(back).astype(np.uint8), rgb.transpose(2, 0, 1))


def test_resample_filter_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown resample filter"):
        resample_filter("cubic-ish")
