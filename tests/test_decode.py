"""decode: the bytes of real files -> what is displayed (metadata) and the model's input tensor.

Every file here is written to disk by tests/photos.py the way cameras and editors write them,
read back as bytes, and decoded through `decode.decode`. Lossy formats are compared with the
upright original's tensor within a JPEG-sized tolerance (mean |diff| <= 0.05, max <= 0.4 in
normalized units; q95 JPEG measures ~0.03 / 0.21, one 8-bit level is ~0.015), lossless ones
within float rounding (1e-5).
"""

from __future__ import annotations

import io
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from imageclust_daemon.errors import DecodeError
from imageclust_daemon.index import decode as decode_module
from imageclust_daemon.index.decode import DecodedPhoto, decode
from imageclust_daemon.index.preprocess import model_input
from imageclust_daemon.records import Preprocessing
from tests import photos

SPEC = Preprocessing()
LOSSLESS = 1e-5
LOSSY_MEAN, LOSSY_MAX = 0.05, 0.4
WHITE = (1 - np.array(SPEC.mean, np.float32)) / np.array(SPEC.std, np.float32)


def decode_file(path: Path) -> DecodedPhoto:
    return decode(path.read_bytes(), SPEC, path=str(path))


def assert_tensor(pixels: np.ndarray) -> None:
    assert pixels.shape == (3, 224, 224)
    assert pixels.dtype == np.float32
    assert np.isfinite(pixels).all()


def assert_close(actual: np.ndarray, expected: np.ndarray, *, lossy: bool) -> None:
    diff = np.abs(actual - expected)
    if lossy:
        assert float(diff.mean()) <= LOSSY_MEAN, f"mean |diff| {diff.mean():.3g}"
        assert float(diff.max()) <= LOSSY_MAX, f"max |diff| {diff.max():.3g}"
    else:
        assert float(diff.max()) <= LOSSLESS, f"max |diff| {diff.max():.3g}"


@pytest.fixture(scope="module")
def upright() -> Image.Image:
    """A landscape photo with no symmetry, so any wrong flip or turn shows."""
    return photos.photo_like(21, size=(320, 240))


# --- EXIF orientation ----------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_displays_the_upright_photo(
    orientation: int, upright: Image.Image, tmp_path: Path
) -> None:
    stored = photos.rotated_for_orientation(upright, orientation)
    path = photos.save_jpeg(stored, tmp_path / "photo.jpg", quality=95, orientation=orientation)
    with Image.open(path) as raw:
        # 5-8 turn the picture a quarter: the stored frame is portrait, the displayed landscape.
        assert raw.size == ((240, 320) if orientation >= 5 else (320, 240))
        assert raw.getexif()[0x0112] == orientation

    result = decode_file(path)

    assert (result.meta.width, result.meta.height) == (320, 240)
    assert_tensor(result.pixels)
    expected = model_input(upright, SPEC)
    assert_close(result.pixels, expected, lossy=True)
    if orientation != 1:  # the test can tell: ignoring the tag would be far off
        assert float(np.abs(model_input(stored, SPEC) - expected).mean()) > 4 * LOSSY_MEAN


def test_broken_orientation_tag_shows_stored_pixels(upright: Image.Image, tmp_path: Path) -> None:
    path = photos.save_jpeg(upright, tmp_path / "photo.jpg", quality=95, orientation=42)
    result = decode_file(path)
    assert (result.meta.width, result.meta.height) == (320, 240)
    assert_close(result.pixels, model_input(upright, SPEC), lossy=True)


# --- capture time and place ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        ("+02:00", "2024-06-01T14:30:00+02:00"),
        ("-05:30", "2024-06-01T14:30:00-05:30"),
        (None, "2024-06-01T14:30:00"),  # local time, offset unknown: no suffix
    ],
)
def test_taken_at_from_datetime_original(
    offset: str | None, expected: str, upright: Image.Image, tmp_path: Path
) -> None:
    path = photos.save_jpeg(
        upright, tmp_path / "p.jpg", taken_at="2024:06:01 14:30:00", offset=offset
    )
    assert decode_file(path).meta.taken_at == expected


@pytest.mark.parametrize(
    "position",
    [
        (48.8583701, 2.2944813),  # Paris: north, east
        (-33.8567844, 151.2152967),  # Sydney: south -> negative latitude
        (40.6892494, -74.0445004),  # New York: west -> negative longitude
        (-22.951916, -43.2104872),  # Rio de Janeiro: both negative
    ],
)
def test_gps_position(position: tuple[float, float], upright: Image.Image, tmp_path: Path) -> None:
    path = photos.save_jpeg(upright, tmp_path / "p.jpg", gps=position)
    meta = decode_file(path).meta
    assert meta.lat is not None and meta.lon is not None
    assert abs(meta.lat - position[0]) < 1e-5
    assert abs(meta.lon - position[1]) < 1e-5


def test_no_exif_means_no_metadata(upright: Image.Image, tmp_path: Path) -> None:
    meta = decode_file(photos.save_jpeg(upright, tmp_path / "p.jpg")).meta
    assert (meta.width, meta.height, meta.taken_at, meta.lat, meta.lon) == (
        320,
        240,
        None,
        None,
        None,
    )


# --- formats -------------------------------------------------------------------------------


def _on_white(image: Image.Image) -> Image.Image:
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


# name -> (writer, what should be displayed, lossy)
FORMATS: dict[
    str, tuple[Callable[[Image.Image, Path], Path], Callable[[Image.Image], Image.Image], bool]
] = {
    "cmyk.jpg": (photos.save_cmyk_jpeg, lambda im: im, True),
    "grey.jpg": (photos.save_grey_jpeg, lambda im: im.convert("L"), True),
    # 16-bit grey is scaled to 8 bits (not clipped to white): exactly the 8-bit grey picture.
    "grey16.png": (photos.save_png16, lambda im: im.convert("L"), False),
    "palette-transparent.png": (
        photos.save_palette_png,
        lambda im: _on_white(photos.palette_from(im)),
        False,
    ),
    "rgba.png": (photos.save_rgba_png, lambda im: _on_white(photos.rgba_from(im)), False),
    "animated.gif": (photos.save_animated_gif, lambda im: im, True),  # first frame only
    "photo.webp": (photos.save_webp, lambda im: im, True),
    "photo.bmp": (photos.save_bmp, lambda im: im, False),
    "photo.tiff": (photos.save_tiff, lambda im: im, False),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_formats_decode_to_what_is_displayed(
    name: str, upright: Image.Image, tmp_path: Path
) -> None:
    writer, displayed, lossy = FORMATS[name]
    result = decode_file(writer(upright, tmp_path / name))
    assert_tensor(result.pixels)
    assert (result.meta.width, result.meta.height) == (320, 240)
    assert_close(result.pixels, model_input(displayed(upright), SPEC), lossy=lossy)


def test_animated_gif_uses_the_first_frame(upright: Image.Image, tmp_path: Path) -> None:
    pixels = decode_file(photos.save_animated_gif(upright, tmp_path / "a.gif")).pixels
    first = model_input(upright, SPEC)
    second = model_input(ImageOps.invert(upright), SPEC)
    assert np.abs(pixels - first).mean() < 0.2 * np.abs(pixels - second).mean()


@pytest.mark.parametrize("writer", [photos.save_palette_png, photos.save_rgba_png])
def test_transparent_pixels_are_white(
    writer: Callable[[Image.Image, Path], Path], upright: Image.Image, tmp_path: Path
) -> None:
    pixels = decode_file(writer(upright, tmp_path / "t.png")).pixels
    # The transparent left quarter (x < 80 of 320) is x < 74 of the 298-wide resize, whose
    # crop starts at x = 37: the crop's first ~37 columns are white, not the black below.
    np.testing.assert_allclose(
        pixels[:, :, :30], np.broadcast_to(WHITE[:, None, None], (3, 224, 30)), atol=0.02
    )


def test_16bit_mid_grey_is_not_white(tmp_path: Path) -> None:
    mid = Image.new("L", (64, 48), 128)
    pixels = decode_file(photos.save_png16(mid, tmp_path / "mid.png")).pixels
    grey = (128 / 255 - np.array(SPEC.mean, np.float32)) / np.array(SPEC.std, np.float32)
    np.testing.assert_allclose(pixels[:, 0, 0], grey, atol=1e-5)
    assert (np.abs(pixels - WHITE[:, None, None]) > 1.0).all()


# --- bad files -----------------------------------------------------------------------------


BAD_FILES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "empty.jpg": (photos.write_empty, ("empty", "0 bytes")),
    "truncated.jpg": (photos.write_truncated_jpeg, ("truncated",)),
    "notes.jpg": (photos.write_text_as_jpg, ("not an image",)),
    "bomb.png": (photos.write_png_bomb, ("decompression bomb",)),
    "corrupt.jpg": (photos.write_corrupt_jpeg, ("damaged: its image data is corrupt",)),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_decode_error_with_a_reason(name: str, tmp_path: Path) -> None:
    writer, words = BAD_FILES[name]
    path = writer(tmp_path / name)
    with pytest.raises(DecodeError) as caught:
        decode_file(path)
    assert caught.value.path == str(path)
    for word in words:
        assert word in caught.value.reason, caught.value.reason
    assert str(path) in str(caught.value)


def test_truncated_jpeg_passes_verify_but_not_decode(tmp_path: Path) -> None:
    # RELIABILITY.md: verify() passes truncated JPEGs; only a full decode finds them.
    path = photos.write_truncated_jpeg(tmp_path / "t.jpg", seed=3)
    with Image.open(path) as image:
        image.verify()
    with pytest.raises(DecodeError, match="truncated"):
        decode_file(path)


def test_png_bomb_is_rejected_without_allocating_its_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = photos.write_png_bomb(tmp_path / "bomb.png")
    data = path.read_bytes()
    assert len(data) < 1000  # claims 60000x60000 = 3.6 GP of 8-bit grey in a few hundred bytes

    loads: list[object] = []
    real_load = ImageFile.ImageFile.load

    def counting_load(self: ImageFile.ImageFile) -> object:
        loads.append(self)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError) as caught:
            decode(data, SPEC, path=str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert loads == []  # the pixel data was never decoded
    assert "60000x60000" in caught.value.reason or "3,600 MP" in caught.value.reason
    # its header cannot tell a crafted file from a real photo that large (a phone's
    # 200 MP mode): the reason says both, not "bomb" alone
    assert caught.value.reason.endswith(
        "a decompression bomb, or a photo larger than imageclust reads"
    ), caught.value.reason


def test_image_over_the_limit_but_under_pillows_error_is_rejected_by_size(
    tmp_path: Path,
) -> None:
    # 12000x8000 = 96 MP: above MAX_PIXELS (~89 MP, where Pillow only warns) and below
    # twice it (where Pillow raises). Outside the test suite the warning is not an error,
    # so decode's own check must catch it; the reason gives the size in MP.
    data = photos.png_bomb_bytes(12000, 8000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(DecodeError) as caught:
            decode(data, SPEC, path="pano.png")
    assert "12000x8000" in caught.value.reason
    assert "96 MP" in caught.value.reason
    # With warnings as errors (as in this suite) Pillow's warning is reported as the bomb it is.
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode(data, SPEC, path="pano.png")


# --- junk ----------------------------------------------------------------------------------

MAGIC = [
    b"",
    b"\xff\xd8\xff\xe0",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"P6\n",  # PPM
]


def _check_junk(data: bytes) -> None:
    # A 4 MP cap keeps a header that claims a large frame from costing real memory here.
    with mock.patch.object(decode_module, "MAX_PIXELS", 4_000_000):
        try:
            result = decode(data, SPEC, path="junk")
        except DecodeError as exc:
            assert exc.reason
            return
    assert_tensor(result.pixels)  # some junk is a valid image: fine, if it is a real one


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(magic=st.sampled_from(MAGIC), body=st.binary(max_size=512))
def test_junk_bytes_raise_only_decode_error(magic: bytes, body: bytes) -> None:
    _check_junk(magic + body)


_SMALL_JPEG = photos.jpeg_bytes(photos.photo_like(5, size=(48, 32)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(_SMALL_JPEG) - 1), st.integers(0, 255)), max_size=8
    ),
    cut=st.integers(1, len(_SMALL_JPEG)),
)
def test_damaged_jpeg_raises_only_decode_error(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_SMALL_JPEG)
    for at, value in edits:
        data[at] = value
    _check_junk(bytes(data[:cut]))


def _camera_like_jpeg(
    orientation: int | None = None, size: tuple[int, int] = (3000, 2000)
) -> bytes:
    """A photo with sensor-like noise: large enough for a reduced-scale JPEG decode."""
    rng = np.random.default_rng(5)
    smooth = np.asarray(photos.photo_like(3, size=size), np.float32)
    noisy = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(noisy)
    if orientation:
        img = photos.rotated_for_orientation(img, orientation)
    out = io.BytesIO()
    exif = photos.make_exif(orientation=orientation) if orientation else None
    img.save(out, format="JPEG", quality=92, **({"exif": exif} if exif else {}))
    return out.getvalue()


@pytest.mark.parametrize(
    ("size", "scale"), [((3000, 2000), 4), ((4000, 3000), 8)], ids=["6MP-quarter", "12MP-eighth"]
)
def test_reduced_jpeg_decode_stays_close_to_the_reference(
    size: tuple[int, int], scale: int
) -> None:
    """The fast path (DCT-scaled decode to >= 336 px, then the reference resize) against
    CLIP's reference on the full-size pixels: max 0.05, mean 0.005 in normalized units
    (one grey level is ~0.015)."""
    from transformers import CLIPImageProcessorPil

    data = _camera_like_jpeg(size=size)
    with Image.open(io.BytesIO(data)) as img:
        img.draft(None, (decode_module._draft_target(Preprocessing()),) * 2)
        assert img.size == (size[0] // scale, size[1] // scale)
    fast = decode(data, Preprocessing()).pixels
    exact = decode(data, Preprocessing(), reduced_decode=False).pixels
    with Image.open(io.BytesIO(data)) as img:
        reference = CLIPImageProcessorPil()(images=img.convert("RGB"), return_tensors="np")
    ref = reference["pixel_values"][0]
    assert np.abs(exact - ref).max() <= 1e-5
    diff = np.abs(fast - ref)
    assert diff.max() <= 0.05 and diff.mean() <= 0.005, (diff.max(), diff.mean())


def test_reduced_decode_reports_the_full_displayed_size() -> None:
    meta = decode(_camera_like_jpeg(orientation=6), Preprocessing()).meta
    assert (meta.width, meta.height) == (3000, 2000)


def test_a_jpeg_cut_in_half_is_truncated_without_pillows_detail(tmp_path: Path) -> None:
    """Before: "truncated or incomplete image data (image file is truncated (1 bytes not
    processed))": Pillow's detail, which is not what happened to the file."""
    whole = photos.jpeg_bytes(photos.photo_like(4))
    path = tmp_path / "half.jpg"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DecodeError) as caught:
        decode_file(path)
    assert caught.value.reason == "truncated: the file ends before its image data"


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x10\x03", "JPEG"),  # height 0
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "AVIF"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WEBP"),
    ],
)
def test_a_damaged_header_names_the_format_its_bytes_say(
    head: bytes, kind: str, tmp_path: Path
) -> None:
    """Before: a damaged HEIF and a JPEG whose height is 0 were "not an image in a format
    imageclust reads (JPEG, PNG, ..., HEIF, AVIF)": the very format the file is in."""
    path = tmp_path / "damaged"
    path.write_bytes(head + bytes(64))
    with pytest.raises(DecodeError) as caught:
        decode_file(path)
    assert caught.value.reason.startswith(f"a damaged {kind}"), caught.value.reason
    assert decode_module.format_of(path.read_bytes()) == kind


def test_the_formats_named_include_camera_raws(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"just some text, no picture at all" * 4)
    with pytest.raises(DecodeError, match="and camera RAWs"):
        decode_file(path)


def _xmp_packet(attributes: str) -> bytes:
    return (
        '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" '
        'xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        f'{attributes}/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def _iptc_block(date: bytes, time: bytes) -> bytes:
    """An IPTC-IIM record 2 (Date Created, Time Created) in a Photoshop APP13 block."""
    records = b"".join(
        b"\x1c\x02" + bytes([tag]) + len(value).to_bytes(2, "big") + value
        for tag, value in ((55, date), (60, time))
    )
    resource = b"8BIM\x04\x04\x00\x00" + len(records).to_bytes(4, "big") + records
    if len(records) % 2:
        resource += b"\x00"
    body = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + (len(body) + 2).to_bytes(2, "big") + body


def _with_app_segment(jpeg: bytes, segment: bytes) -> bytes:
    return jpeg[:2] + segment + jpeg[2:]  # right after SOI


@pytest.mark.parametrize(
    ("xmp", "iptc", "exif", "taken", "source"),
    [
        ('photoshop:DateCreated="2011-05-04T10:11:12+02:00"', None, None,
         "2011-05-04T10:11:12+02:00", "xmp"),
        ('exif:DateTimeOriginal="2012-06-07T08:09:10Z" photoshop:DateCreated="2000-01-02T03:04"',
         None, None, "2012-06-07T08:09:10+00:00", "xmp"),
        ('xmp:CreateDate="2013-07-08T09:10"', None, None, "2013-07-08T09:10:00", "xmp"),
        ('photoshop:DateCreated="2014-02-03"', None, None, None, None),  # no time of day
        (None, (b"20150304", b"101112+0100"), None, "2015-03-04T10:11:12+01:00", "iptc"),
        # XMP's original beats EXIF's DateTime, which is a modification
        ('photoshop:DateCreated="2016-01-02T03:04:05"', None, "modified",
         "2016-01-02T03:04:05", "xmp"),
        (None, None, "modified", "2020-12-24T18:00:00", "exif-modified"),
        ('photoshop:DateCreated="2016-01-02T03:04:05"', None, "original",
         "2019-01-01T12:00:00", "exif"),
    ],
)  # fmt: skip
def test_the_capture_time_comes_from_exif_then_xmp_then_iptc(
    xmp: str | None,
    iptc: tuple[bytes, bytes] | None,
    exif: str | None,
    taken: str | None,
    source: str | None,
    tmp_path: Path,
) -> None:
    """Before: a capture time only in XMP or IPTC was NULL (digiKam and Immich find it),
    and EXIF's ModifyDate was taken where XMP had the original."""
    image = photos.photo_like(5)
    out = io.BytesIO()
    exif_block = Image.Exif()
    if exif == "modified":
        exif_block[0x0132] = "2020:12:24 18:00:00"
    elif exif == "original":
        exif_block[0x8769] = {0x9003: "2019:01:01 12:00:00"}
    image.save(out, "JPEG", exif=exif_block, **({"xmp": _xmp_packet(xmp)} if xmp else {}))
    data = out.getvalue()
    if iptc is not None:
        data = _with_app_segment(data, _iptc_block(*iptc))
    path = tmp_path / "dated.jpg"
    path.write_bytes(data)
    meta = decode_file(path).meta
    assert (meta.taken_at, meta.taken_at_source) == (taken, source)


def _box(kind: bytes, body: bytes) -> bytes:
    return (8 + len(body)).to_bytes(4, "big") + kind + body


def _iloc(version: int, items: list[tuple[int, int, int, list[tuple[int, int]]]]) -> bytes:
    """An `iloc` body (ISO/IEC 14496-12 8.11.3): 4-byte offsets and lengths and base
    offsets, no extent index; items as (id, construction method, base, [(offset, length)])."""
    id_size = 4 if version == 2 else 2
    body = bytes([version, 0, 0, 0, 0x44, 0x40]) + len(items).to_bytes(id_size, "big")
    for item, method, base, extents in items:
        body += item.to_bytes(id_size, "big")
        if version in (1, 2):
            body += method.to_bytes(2, "big")
        body += bytes(2) + base.to_bytes(4, "big") + len(extents).to_bytes(2, "big")
        for offset, length in extents:
            body += offset.to_bytes(4, "big") + length.to_bytes(4, "big")
    return body


@pytest.mark.parametrize("version", [0, 1, 2])
def test_iloc_gives_each_items_place_in_the_file(version: int) -> None:
    from imageclust_daemon.index import isobmff

    items = [(1, 0, 0, [(100, 50)]), (2, 0, 1000, [(10, 20), (40, 5)]), (3, 0, 0, [(7, 0)])]
    if version:
        items.append((4, 1, 0, [(0, 99_999)]))  # kept in `idat`: no file offset
    extents = isobmff.parse_iloc(_iloc(version, items))
    assert [(e.item, e.offset, e.length) for e in extents] == [
        (1, 100, 50),
        (2, 1010, 20),
        (2, 1040, 5),
    ]  # item 3's length 0 means "to the end": nothing to check
    with pytest.raises(ValueError):
        isobmff.parse_iloc(_iloc(version, items)[:-3])


def test_a_heif_whose_items_run_past_its_end_is_told_from_its_boxes() -> None:
    from imageclust_daemon.index import isobmff

    data = bytes(64)
    head = _box(b"ftyp", b"heic\0\0\0\0mif1heic")
    iloc = _iloc(1, [(1, 0, 0, [(0, len(data))])])  # its size, to place the data after it
    meta = _box(b"meta", bytes(4) + _box(b"hdlr", bytes(24)) + _box(b"iloc", iloc))
    start = len(head) + len(meta) + 8  # after mdat's header
    iloc = _iloc(1, [(1, 0, 0, [(start, len(data))])])
    meta = _box(b"meta", bytes(4) + _box(b"hdlr", bytes(24)) + _box(b"iloc", iloc))
    whole = head + meta + _box(b"mdat", data)
    assert isobmff.missing(io.BytesIO(whole)) is None
    assert isobmff.missing(io.BytesIO(whole[:-10])) == (len(whole) - 10, len(whole))
    # the same with its mdat's size saying "to the end of the file": the items tell
    to_end = head + meta + bytes(4) + b"mdat" + data
    assert isobmff.missing(io.BytesIO(to_end[:-10])) == (len(whole) - 10, len(whole))
    assert isobmff.missing(io.BytesIO(head + b"junk" * 10)) is None  # not one it can read


def test_a_heic_cut_short_is_truncated_by_the_bytes_its_images_take(tmp_path: Path) -> None:
    whole = photos.save_heic(photos.photo_like(5, (1024, 768)), tmp_path / "whole.heic")
    decode_file(whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.heic"
    cut.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(DecodeError) as caught:
        decode_file(cut)
    assert caught.value.reason == (
        f"truncated: the file ends before its image data (it has {len(data) * 3 // 4:,} "
        f"bytes; its image data runs to byte {len(data):,})"
    )


def _wiped_scan(jpeg: bytes) -> bytes:
    """The JPEG with its entropy-coded data zeroed, its markers and size kept."""
    start = jpeg.rfind(b"\xff\xda")
    start += 2 + int.from_bytes(jpeg[start + 2 : start + 4], "big")
    return jpeg[:start] + bytes(len(jpeg) - 2 - start) + jpeg[-2:]


def test_a_jpeg_whose_image_data_was_wiped_is_damaged_not_a_grey_photo(tmp_path: Path) -> None:
    """Before: it decoded to flat mid-grey and was indexed as a photo."""
    rng = np.random.default_rng(3)
    detail = photos.photo_like(3, (3000, 2000))
    noisy = np.asarray(detail, np.int16) + rng.normal(0, 12, (2000, 3000, 3)).astype(np.int16)
    jpeg = photos.jpeg_bytes(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    assert 8 * len(jpeg) / 6e6 > 1.5  # a camera's: 2-4 bits a pixel
    path = tmp_path / "wiped.jpg"
    path.write_bytes(_wiped_scan(jpeg))
    with pytest.raises(DecodeError) as caught:
        decode_file(path)
    assert caught.value.reason.startswith("damaged: it decodes to one flat colour, where its ")


@pytest.mark.parametrize("kind", ["flat q100", "flat with a video after it", "lens cap"])
def test_a_picture_that_is_flat_or_nearly_is_still_a_photo(kind: str, tmp_path: Path) -> None:
    """A flat picture in a JPEG is small (Pillow's at quality 100, 4:4:4: 0.22 bits a
    pixel); what follows its end (a Motion Photo's video) is not its image data; a dark
    frame with a sensor's noise is not flat."""
    size = (4032, 3024)
    if kind.startswith("flat"):
        image = Image.new("RGB", size, (30, 140, 60))
    else:
        noise = np.random.default_rng(4).normal(4, 2, (size[1], size[0], 3))
        image = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
    path = tmp_path / "frame.jpg"
    image.save(path, quality=100, subsampling=0)
    if kind == "flat with a video after it":
        with open(path, "ab") as f:
            f.write(np.random.default_rng(5).bytes(3 << 20))
    assert decode_file(path).meta.width == size[0]


@pytest.mark.parametrize(
    ("message", "reason"),
    [  # libheif's "<code>: <subcode>[: <detail>]" (its error.cc), one row per code
        (
            "Invalid input: Unexpected end of file: Extent in iloc box references data "
            "outside of file bounds (points to file position 52224)",
            "truncated: the file ends before its image data (Extent in iloc box references "
            "data outside of file bounds (points to file position 52224))",
        ),
        (
            "Decoder plugin generated an error: Unexpected end of file",
            "truncated: the file ends before its image data",
        ),
        (
            "Invalid input: Unspecified: File size too small.",
            "a damaged HEIF: File size too small.",
        ),
        ("Invalid input: No 'ftyp' box", "a damaged HEIF: No 'ftyp' box"),
        (
            "Usage error: Non-existing item ID referenced",
            "a damaged HEIF: Non-existing item ID referenced",
        ),
        (
            "Decoder plugin generated an error: Unspecified: libde265 error",
            "a damaged HEIF: its image data does not decode (libde265 error)",
        ),
        (
            "Unsupported file-type: Unspecified: Unsupported brand",
            "a kind of HEIF that libheif does not read (Unsupported brand)",
        ),
        (
            "Unsupported feature: Unsupported codec",
            "a HEIF using what this build of libheif does not read (Unsupported codec)",
        ),
        (
            "Memory allocation error: Security limit exceeded: too many tiles",
            "over libheif's memory and security limits (Security limit exceeded: too many tiles)",
        ),
        (
            "Color profile does not exist: Unspecified",
            "a HEIF whose colour profile is missing (Unspecified)",
        ),
        (
            "Error while loading plugin: No decoding plugin installed for this compression format",
            "libheif could not load its decoder (No decoding plugin installed for this "
            "compression format)",
        ),
        ("cannot identify image file", None),
    ],
)
def test_libheifs_errors_in_words(message: str, reason: str | None) -> None:
    assert decode_module.heif_reason(message) == reason
