"""Every photo a person has: HEIC read out of the box (pi-heif), formats known by their
bytes, videos and sidecars counted, never failed. HEIC files are written at test time
with pillow-heif's encoder; what reads them is imageclust's own decoder."""

from __future__ import annotations

import io
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageclust_daemon import config
from imageclust_daemon.errors import DecodeError
from imageclust_daemon.index import decode, heif_thumbs
from imageclust_daemon.records import Preprocessing
from tests import photos
from tests.conftest import cli_json, run_cli

SPEC = Preprocessing()
WHEN, OFFSET, WHERE = "2023:08:14 18:30:05", "+02:00", (48.8584, 2.2945)


@pytest.mark.parametrize("thumbnail", [0, 640])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_heic_reads_as_the_same_jpeg_does_in_every_orientation(
    tmp_path: Path, orientation: int, thumbnail: int
) -> None:
    """Capture time, GPS and orientation from a HEIC's EXIF, as from a JPEG's: the same
    metadata and, up to compression, the same pixels for the model; the same where it is
    read through its 640-px thumbnail (its shorter side 480 >= twice the model's 224)."""
    img = photos.photo_like(7, (1600, 1200) if thumbnail else None)
    tags = {"orientation": orientation, "taken_at": WHEN, "offset": OFFSET, "gps": WHERE}
    jpeg = photos.save_jpeg(img, tmp_path / "a.jpg", quality=95, **tags)  # type: ignore[arg-type]
    heic = photos.save_heic(
        img,
        tmp_path / "a.heic",
        quality=95,
        thumbnails=(thumbnail,) if thumbnail else (),
        **tags,  # type: ignore[arg-type]
    )
    thumb = heif_thumbs.picture(heic.read_bytes(), 2 * SPEC.resize_shortest)
    assert (thumb is not None and max(thumb.size) == 640) == bool(thumbnail)
    from_jpeg = decode.decode(jpeg.read_bytes(), SPEC, path="a.jpg")
    from_heic = decode.decode(heic.read_bytes(), SPEC, path="a.heic")
    assert from_heic.meta.format == "HEIF" and from_jpeg.meta.format == "JPEG"
    assert (from_heic.meta.width, from_heic.meta.height) == (
        from_jpeg.meta.width,
        from_jpeg.meta.height,
    )
    assert from_heic.meta.taken_at == from_jpeg.meta.taken_at == "2023-08-14T18:30:05+02:00"
    assert from_heic.meta.lat == pytest.approx(WHERE[0], abs=1e-4)
    assert from_heic.meta.lon == pytest.approx(WHERE[1], abs=1e-4)
    difference = np.abs(from_heic.pixels - from_jpeg.pixels).mean()
    assert difference < 0.08, f"orientation {orientation}: mean difference {difference:.3f}"
    turned = decode.decode(
        photos.save_jpeg(img, tmp_path / "b.jpg", quality=95, orientation=3).read_bytes(),
        SPEC,
    )
    if orientation != 3:  # a wrong turn would be far off: the comparison can fail
        assert np.abs(from_heic.pixels - turned.pixels).mean() > 3 * difference


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "empty box"])
def test_a_broken_heic_is_a_clear_failure(tmp_path: Path, damage: str) -> None:
    data = photos.save_heic(photos.photo_like(3), tmp_path / "x.heic").read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "corrupt":  # the boxes that say where the image is: zeroed
        data = data[:24] + bytes(300) + data[324:]
    else:
        data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    with pytest.raises(DecodeError) as failed:
        decode.decode(data, SPEC, path="x.heic")
    assert "x.heic" in str(failed.value)


def test_files_are_read_by_their_bytes_and_counted_by_format_and_kind(
    tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    root = tmp_path / "Photos"
    root.mkdir()
    photos.save_jpeg(photos.photo_like(1), root / "true.jpg")
    photos.save_jpeg(photos.photo_like(2), root / "jpeg named.heic")  # apps upload these
    photos.save_heic(photos.photo_like(3), root / "heic named.jpg")
    photos.save_heic(photos.photo_like(4), root / "IMG_0001.HEIC")
    photos.photo_like(5).save(root / "png named.jpg", format="PNG")
    (root / "IMG_0001.MOV").write_bytes(b"\x00\x00\x00\x14ftypqt  " + bytes(64))  # Live Photo
    (root / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    (root / "IMG_0001.AAE").write_text("<plist/>")
    (root / "true.jpg.xmp").write_text("<x:xmpmeta/>")
    (root / "GOPR0001.GPR").write_bytes(b"II*\x00" + bytes(64))  # GoPro's RAW: not readable here
    config = make_config([root])
    result = run_cli("--config", str(config), "index", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "skipped (counted, not read): 1 GoPro RAW, 2 sidecars, 2 videos" in result.stdout

    conn = sqlite3.connect(f"file:{config.parent / 'data' / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        rows = dict(conn.execute("SELECT path, format FROM photos WHERE status = 'indexed'"))
        statuses = {s for (s,) in conn.execute("SELECT DISTINCT status FROM photos")}
    finally:
        conn.close()
    named = {Path(p).name: f for p, f in rows.items()}
    assert named == {
        "true.jpg": "JPEG",
        "jpeg named.heic": "JPEG",
        "heic named.jpg": "HEIF",
        "IMG_0001.HEIC": "HEIF",
        "png named.jpg": "PNG",
    }
    assert statuses == {"indexed"}, "videos and sidecars are never photos, never failed"
    status = cli_json(config, "status")
    assert status["formats"] == {"HEIF": 2, "JPEG": 2, "PNG": 1}
    assert status["skipped"] == {"GoPro RAW": 1, "sidecar": 2, "video": 2}
    assert status["failed"] == 0 and status["files"] == 5
    text = run_cli("--config", str(config), "status").stdout
    assert "formats" in text and "JPEG 2" in text and "video 2" in text

    shutil.rmtree(root)
    root.mkdir()
    photos.save_jpeg(photos.photo_like(1), root / "true.jpg")
    assert run_cli("--config", str(config), "index", "--no-progress").returncode == 0
    assert cli_json(config, "status")["skipped"] == {}, "counted anew by each full rescan"


def test_a_heic_with_a_small_thumbnail_is_decoded_in_full(tmp_path: Path) -> None:
    """A phone's 320-px thumbnail (shorter side 240) keeps too little: on real photos
    its features' cosine to the full decode's is 0.93-0.97 (docs/benchmarks.md)."""
    img = photos.photo_like(8, (1600, 1200))
    data = photos.save_heic(img, tmp_path / "a.heic", thumbnails=(320,)).read_bytes()
    assert heif_thumbs.picture(data, 224) is not None  # there, and a scaled copy
    assert heif_thumbs.picture(data, 2 * SPEC.resize_shortest) is None  # too small to use
    full = decode.decode(data, SPEC, reduced_decode=False)
    assert np.abs(decode.decode(data, SPEC).pixels - full.pixels).mean() < 0.02


def test_heif_thumbnails_setting_says_which_thumbnail_stands_for_the_photo(
    tmp_path: Path,
) -> None:
    """`index.heif_thumbnails`: "speed" takes a phone's 320-px thumbnail, "fidelity" (the
    default) decodes that photo in full, "never" decodes even one with a 640-px one in
    full."""
    from imageclust_daemon.index.preprocess import model_input

    img = photos.photo_like(8, (1600, 1200))
    small = photos.save_heic(img, tmp_path / "small.heic", thumbnails=(320,))
    large = photos.save_heic(img, tmp_path / "large.heic", thumbnails=(640,))
    thumb_320 = heif_thumbs.picture(small.read_bytes(), SPEC.resize_shortest)
    thumb_640 = heif_thumbs.picture(large.read_bytes(), 2 * SPEC.resize_shortest)
    assert thumb_320 is not None and thumb_640 is not None
    via_320, via_640 = model_input(thumb_320, SPEC), model_input(thumb_640, SPEC)

    def pixels(data: bytes, setting: str) -> np.ndarray:
        return decode.decode(data, SPEC, heif_thumbnails=setting).pixels

    assert np.array_equal(pixels(small.read_bytes(), "speed"), via_320)
    assert not np.array_equal(pixels(small.read_bytes(), "fidelity"), via_320)
    assert np.array_equal(pixels(large.read_bytes(), "fidelity"), via_640)
    assert np.array_equal(pixels(large.read_bytes(), "speed"), via_640)  # the smallest

    # decoded in full: exactly what the full decode and `reduced` make of the picture
    def full_decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as whole:
            whole.load()
            return model_input(decode.reduced(whole, 2 * SPEC.resize_shortest), SPEC)

    assert np.array_equal(pixels(small.read_bytes(), "fidelity"), full_decode(small.read_bytes()))
    never = pixels(large.read_bytes(), "never")
    assert not np.array_equal(never, via_640)
    assert np.array_equal(never, full_decode(large.read_bytes()))
    assert set(decode.HEIF_THUMBNAIL_SCALE) == set(config.HEIF_THUMBNAILS)  # one list
    with pytest.raises(KeyError):
        pixels(small.read_bytes(), "fast")

    # the same through the pipeline, in this process and in a child (`sandbox`)
    from imageclust_daemon.index.pipeline import Claims, prepare
    from imageclust_daemon.index.sandbox import decode_in_child
    from imageclust_daemon.records import FileStat

    st = small.stat()
    stat = FileStat(bytes(small), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    done = prepare(stat, Claims(set()), SPEC, heif_thumbnails="speed")
    assert done.pixels is not None and np.array_equal(done.pixels, via_320)
    done = prepare(stat, Claims(set()), SPEC)
    assert done.pixels is not None and not np.array_equal(done.pixels, via_320)
    child = decode_in_child(small.read_bytes(), SPEC, path="small.heic", heif_thumbnails="speed")
    assert np.array_equal(child.pixels, via_320)

    from imageclust_daemon.index.pipeline import IndexOptions
    from tests.conftest import write_config

    cfg = config.load(write_config(tmp_path / "c.toml", index={"heif_thumbnails": "speed"}))
    assert IndexOptions.from_config(cfg).heif_thumbnails == "speed"
    assert IndexOptions.from_config(config.load(None)).heif_thumbnails == "fidelity"


def test_the_thumbnail_read_is_the_one_the_model_gets(tmp_path: Path) -> None:
    img = photos.photo_like(9, (2400, 1800))
    data = photos.save_heic(img, tmp_path / "a.heic", thumbnails=(1024, 640, 320)).read_bytes()
    thumb = heif_thumbs.picture(data, 2 * SPEC.resize_shortest)
    assert thumb is not None and thumb.size == (640, 480)  # the smallest that will do
    from imageclust_daemon.index.preprocess import model_input

    assert np.array_equal(decode.decode(data, SPEC).pixels, model_input(thumb, SPEC))
    gallery = heif_thumbs.picture(data, 0, 1000)
    assert gallery is not None and gallery.size == (1024, 768)


@pytest.mark.parametrize("past", ["the budget", "Pillow's limit"])
def test_a_heic_too_large_to_decode_is_read_through_its_thumbnail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, past: str
) -> None:
    """A phone's 200 MP photo (12240x16320) is past the pixel limit: rather than fail, it
    is read through a thumbnail that reaches the model's input, even one short of the
    2x reserve; without one it fails as before. Made small here by lowering the limits:
    past imageclust's budget (checked at decode), or past Pillow's own (at open)."""
    monkeypatch.setattr(decode, "MAX_PIXELS", 1_000_000)
    if past == "Pillow's limit":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500_000)
    img = photos.photo_like(10, (1600, 1200))
    data = photos.save_heic(img, tmp_path / "big.heic", thumbnails=(320,)).read_bytes()
    thumb = heif_thumbs.picture(data, SPEC.resize_shortest)
    assert thumb is not None and thumb.size == (320, 240)
    from imageclust_daemon.index.preprocess import model_input

    photo = decode.decode(data, SPEC, path="big.heic")
    assert (photo.meta.width, photo.meta.height) == (1600, 1200)
    assert np.array_equal(photo.pixels, model_input(thumb, SPEC))
    assert decode.thumbnail_jpeg(data, path="big.heic")  # the gallery's picture too
    bare = photos.save_heic(img, tmp_path / "bare.heic").read_bytes()
    with pytest.raises(DecodeError, match=r"over the 1 MP limit"):
        decode.decode(bare, SPEC, path="bare.heic")


def test_a_thumbnail_past_the_pixel_budget_is_not_decoded(tmp_path: Path) -> None:
    """A crafted HEIF whose 'thumbnail' is itself huge gets no way round the budget."""
    img = photos.photo_like(11, (1600, 1200))
    data = photos.save_heic(img, tmp_path / "a.heic", thumbnails=(320,)).read_bytes()
    assert heif_thumbs.picture(data, 224, max_pixels=320 * 240) is not None
    assert heif_thumbs.picture(data, 224, max_pixels=320 * 240 - 1) is None
