"""Camera RAW through LibRaw: which picture is taken (the embedded preview when it is
large enough and the photo's shape, else a half-size demosaic), turned as the camera
says, with its capture time and position; broken and mislabelled files.

The DNGs are written at test time by tests/dng.py: a real Bayer mosaic LibRaw
demosaics, and a preview that shows a *different* scene from the sensor's, so what a
decode returns tells which of the two it took.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageclust_daemon.errors import DecodeError
from imageclust_daemon.index import camera_raw, decode, pairs
from imageclust_daemon.index.pairs import Neighbour
from imageclust_daemon.records import Preprocessing
from tests import photos
from tests.conftest import cli_json, run_cli
from tests.dng import Preview, dng_bytes

SPEC = Preprocessing()
WHEN, OFFSET, WHERE = "2023:08:14 18:30:05", "+02:00", (48.8584, 2.2945)
SENSOR = photos.photo_like(11, size=(960, 640), scene=1)  # what the sensor recorded
SHOWN = photos.photo_like(12, size=(960, 640), scene=6)  # what the preview shows


def _model_input(img: Image.Image) -> np.ndarray:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return decode.decode(out.getvalue(), SPEC).pixels


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def _stored(img: Image.Image, orientation: int, size: tuple[int, int] | None = None) -> Image.Image:
    """`img` as a camera stores it for `orientation` (a viewer turns it back)."""
    upright = img.resize(size) if size is not None else img
    return photos.rotated_for_orientation(upright, orientation)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_preview_is_taken_and_turned_as_the_raw_says(orientation: int) -> None:
    data = dng_bytes(
        _stored(SENSOR, orientation),
        preview=Preview(_stored(SHOWN, orientation, (480, 320))),
        orientation=orientation,
        taken_at=WHEN,
        offset=OFFSET,
        gps=WHERE,
    )
    photo = decode.decode(data, SPEC, path="IMG_0001.DNG")
    assert photo.meta.format == "DNG"
    assert (photo.meta.width, photo.meta.height) == (960, 640), "as displayed, turned"
    assert photo.meta.taken_at == "2023-08-14T18:30:05+02:00"
    assert photo.meta.lat == pytest.approx(WHERE[0], abs=1e-4)
    assert photo.meta.lon == pytest.approx(WHERE[1], abs=1e-4)
    shown = _distance(photo.pixels, _model_input(SHOWN.resize((480, 320))))
    assert shown < 0.05, f"the preview, upright: mean difference {shown:.3f}"
    assert _distance(photo.pixels, _model_input(SENSOR)) > 5 * shown, "not the sensor's"
    if orientation != 3:  # a wrong turn is far off, so the first check can fail
        wrong = _model_input(SHOWN.resize((480, 320)).transpose(Image.Transpose.ROTATE_180))
        assert _distance(photo.pixels, wrong) > 5 * shown


@pytest.mark.parametrize(
    "preview",
    [
        pytest.param(None, id="no preview"),
        pytest.param(Preview(SHOWN.resize((240, 160))), id="shorter side 160 < 224"),
        pytest.param(Preview(SHOWN.resize((480, 270))), id="16:9 preview of a 3:2 photo"),
        pytest.param(Preview(SHOWN.resize((300, 200)), jpeg=False), id="small bitmap"),
    ],
)
@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_without_a_usable_preview_the_sensor_data_is_demosaiced(
    preview: Preview | None, orientation: int
) -> None:
    stored_preview = (
        None if preview is None else Preview(_stored(preview.image, orientation), jpeg=preview.jpeg)
    )
    data = dng_bytes(_stored(SENSOR, orientation), preview=stored_preview, orientation=orientation)
    photo = decode.decode(data, SPEC, path="a.dng")
    assert (photo.meta.width, photo.meta.height) == (960, 640)
    sensor = _distance(photo.pixels, _model_input(SENSOR))
    assert sensor < 0.15, f"the demosaiced sensor data, upright: {sensor:.3f}"
    assert _distance(photo.pixels, _model_input(SHOWN)) > 3 * sensor
    turned = _model_input(SENSOR.transpose(Image.Transpose.ROTATE_180))
    assert _distance(photo.pixels, turned) > 3 * sensor


def test_a_large_bitmap_preview_is_taken() -> None:
    data = dng_bytes(
        _stored(SENSOR, 6),
        preview=Preview(_stored(SHOWN, 6, (480, 320)), jpeg=False),
        orientation=6,
    )
    photo = decode.decode(data, SPEC, path="a.dng")
    shown = _distance(photo.pixels, _model_input(SHOWN.resize((480, 320))))
    assert shown < 0.03
    assert _distance(photo.pixels, _model_input(SENSOR)) > 5 * shown


def test_the_thumbnail_of_a_raw_is_an_upright_jpeg_from_its_preview() -> None:
    data = dng_bytes(
        _stored(SENSOR, 8), preview=Preview(_stored(SHOWN, 8, (480, 320))), orientation=8
    )
    jpeg = decode.thumbnail_jpeg(data, longest=240, path="a.dng")
    with Image.open(io.BytesIO(jpeg)) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (240, 160)
        got = np.asarray(thumb.convert("RGB"), dtype=np.float32)
    want = np.asarray(SHOWN.resize((240, 160)), dtype=np.float32)
    sensor = np.asarray(SENSOR.resize((240, 160)), dtype=np.float32)
    assert np.abs(got - want).mean() < 6 < np.abs(got - sensor).mean()
    # A thumbnail larger than the preview: from the sensor data, still upright.
    big = decode.thumbnail_jpeg(data, longest=600, path="a.dng")
    with Image.open(io.BytesIO(big)) as thumb:
        assert thumb.size == (480, 320)  # the half-size demosaic's, not enlarged


# Pillow warns of the truncated file's missing IFD while trying it as a TIFF; the tests
# make warnings errors, the daemon logs them: here the daemon's way.
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize(
    "damage",
    ["truncated", "zeroed after the header", "a RAF signature and nothing else", "CR3 box only"],
)
def test_a_broken_raw_is_a_clear_failure(damage: str) -> None:
    data = dng_bytes(SENSOR, preview=Preview(SHOWN.resize((480, 320))))
    name = {"a RAF signature and nothing else": "x.raf", "CR3 box only": "x.cr3"}.get(
        damage, "x.dng"
    )
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "zeroed after the header":
        data = data[:8] + bytes(len(data) - 8)
    elif damage == "a RAF signature and nothing else":
        data = b"FUJIFILMCCD-RAW 0201FF383501" + bytes(4000)
    else:
        data = b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom" + bytes(2000)
    with pytest.raises(DecodeError) as failed:
        decode.decode(data, SPEC, path=name)
    reason = failed.value.reason
    assert "LibRaw" in reason or "RAW" in reason or "RAF" in reason or "CR3" in reason, reason


def test_a_raw_too_large_to_demosaic_is_refused_by_its_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(decode, "MAX_PIXELS", 100_000)  # the sensor here: 960 x 640
    with pytest.raises(DecodeError, match="MP and no usable preview: over the"):
        decode.decode(dng_bytes(SENSOR), SPEC, path="big.dng")
    # With a preview large enough, the sensor data is never decoded: no limit to pass.
    with_preview = dng_bytes(SENSOR, preview=Preview(SHOWN.resize((360, 240))))
    assert decode.decode(with_preview, SPEC, path="big.dng").meta.format == "DNG"


def test_each_kind_of_file_is_read_as_its_bytes_say_whatever_its_name() -> None:
    dng = dng_bytes(SENSOR, preview=Preview(SHOWN.resize((480, 320))), taken_at=WHEN)
    tiff, named_tiff = io.BytesIO(), io.BytesIO()
    SENSOR.save(tiff, format="TIFF")
    exif = Image.Exif()
    exif[271] = "NIKON CORPORATION"  # an export that kept the camera's Make
    SENSOR.save(named_tiff, format="TIFF", exif=exif)
    cases = {
        "a DNG named .jpg": (dng, "IMG_1.jpg", "DNG"),
        "a DNG named .nef": (dng, "IMG_1.NEF", "DNG"),
        "a JPEG named .nef": (photos.jpeg_bytes(SENSOR), "IMG_2.NEF", "JPEG"),
        "a JPEG named .cr3": (photos.jpeg_bytes(SENSOR), "IMG_2.CR3", "JPEG"),
        "a TIFF named .dng": (tiff.getvalue(), "scan.dng", "TIFF"),
        "a camera maker's TIFF": (named_tiff.getvalue(), "export.tif", "TIFF"),
    }
    for case, (data, name, kind) in cases.items():
        photo = decode.decode(data, SPEC, path=name)
        assert photo.meta.format == kind, case
        assert (photo.meta.width, photo.meta.height) == (960, 640), case


def test_raw_formats_are_told_by_their_leading_bytes() -> None:
    tiff_le = b"II*\x00\x08\x00\x00\x00"
    assert camera_raw.sniff(b"FUJIFILMCCD-RAW 0201" + bytes(100)) == "RAF"
    assert camera_raw.sniff(b"IIRO\x08\x00\x00\x00" + bytes(100)) == "ORF"
    assert camera_raw.sniff(b"IIU\x00\x08\x00\x00\x00" + bytes(100)) == "RW2"
    assert camera_raw.sniff(b"\x00\x00\x00\x18ftypcrx " + bytes(100)) == "CR3"
    assert camera_raw.sniff(b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(100)) == "CR2"
    assert camera_raw.sniff(dng_bytes(SENSOR.resize((64, 48)))) == "DNG"
    assert camera_raw.sniff(tiff_le + bytes(100), "plain.tif") is None
    assert camera_raw.sniff(tiff_le + bytes(100), "odd.3fr") == "RAW", "named as a RAW"
    assert camera_raw.sniff(photos.jpeg_bytes(SENSOR), "IMG.NEF") is None


# -- RAW+JPEG pairs ---------------------------------------------------------------------


def _neighbour(path: str, content: str, kind: str | None, usable: bool = True) -> Neighbour:
    return Neighbour(path.encode(), content, kind, usable)


def test_a_raw_is_shown_as_the_jpeg_of_its_shot() -> None:
    found = pairs.shown_as(
        [
            _neighbour("/p/IMG_0001.CR3", "raw1", "CR3"),
            _neighbour("/p/IMG_0001.JPG", "jpg1", "JPEG"),
            _neighbour("/p/img_0002.nef", "raw2", "NEF"),  # names differ in case only
            _neighbour("/p/IMG_0002.JPG", "jpg2", "JPEG"),
            _neighbour("/p/IMG_0003.ARW", "raw3", "ARW"),  # the camera's HEIF
            _neighbour("/p/IMG_0003.HIF", "heif3", "HEIF"),
            _neighbour("/p/IMG_0004.DNG", "raw4", "DNG"),  # alone
            _neighbour("/p/other/IMG_0004.JPG", "jpg4", "JPEG"),  # another folder
            _neighbour("/p/IMG_0005.RAF", "raw5", "RAF"),
            _neighbour("/p/IMG_0005.JPG", "jpg5", "JPEG", usable=False),  # failed to decode
            _neighbour("/p/IMG_0006.CR2", "raw6", "CR2"),
            _neighbour("/p/IMG_0006.DNG", "raw6b", "DNG"),  # two RAWs, no JPEG: no pair
            _neighbour("/p/IMG_0007.ORF", "raw7", "ORF"),
            _neighbour("/p/IMG_0007.jpeg", "jpg7b", "JPEG"),
            _neighbour("/p/IMG_0007.JPG", "jpg7", "JPEG"),  # two JPEGs: the first by path
        ]
    )
    assert found == {
        "raw1": "jpg1",
        "raw2": "jpg2",
        "raw3": "heif3",
        "raw7": "jpg7",
    }


def _catalog_rows(config: Path) -> dict[str, tuple[str, str, str, int | None]]:
    conn = sqlite3.connect(f"file:{config.parent / 'data' / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT path, format, content_hash, shown_as, cluster_id FROM photos")
        return {Path(p).name: (f, h, s, c) for p, f, h, s, c in rows}
    finally:
        conn.close()


def _members(config: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{config.parent / 'data' / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        return {h for (h,) in conn.execute("SELECT content_hash FROM cluster_members")}
    finally:
        conn.close()


def test_a_raw_jpeg_pair_is_one_photo_in_albums_and_search(
    tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    root = tmp_path / "Photos"
    root.mkdir()
    for scene in range(3):
        for shot in range(4):
            img = photos.photo_like(100 + 10 * scene + shot, scene=scene)
            photos.save_jpeg(img, root / f"s{scene}_{shot}.jpg")
    pair = photos.photo_like(150, scene=0)
    photos.save_jpeg(pair, root / "IMG_0100.JPG")
    (root / "IMG_0100.DNG").write_bytes(dng_bytes(pair, preview=Preview(pair.resize((320, 240)))))
    alone = photos.photo_like(151, scene=1)
    (root / "IMG_0101.dng").write_bytes(dng_bytes(alone))
    config = make_config([root], cluster={"min_size": 2, "max_size": 40})
    result = run_cli("--config", str(config), "index", "--no-progress")
    assert result.returncode == 0, result.stderr

    rows = _catalog_rows(config)
    jpeg_format, jpeg_hash, jpeg_shown, jpeg_group = rows["IMG_0100.JPG"]
    raw_format, raw_hash, raw_shown, raw_group = rows["IMG_0100.DNG"]
    assert (jpeg_format, raw_format) == ("JPEG", "DNG")
    assert jpeg_shown == jpeg_hash and raw_shown == jpeg_hash != raw_hash
    assert jpeg_group is not None and raw_group == jpeg_group, "the RAW is in its JPEG's album"
    assert rows["IMG_0101.dng"][2] == rows["IMG_0101.dng"][1], "a RAW alone is its own photo"
    members = _members(config)
    assert jpeg_hash in members and raw_hash not in members, "one photo, counted once"
    assert cli_json(config, "status")["formats"] == {"DNG": 2, "JPEG": 13}

    # Search: the pair is one hit that lists both files; by the RAW, the shot itself is out.
    hits = cli_json(config, "similar", str(root / "s0_0.jpg"), "--limit", "20")
    listed = [sorted(Path(p).name for p in h["paths"]) for h in hits]
    assert ["IMG_0100.DNG", "IMG_0100.JPG"] in listed
    assert not any(len(p) == 1 and p[0].startswith("IMG_0100") for p in listed)
    by_raw = cli_json(config, "similar", str(root / "IMG_0100.DNG"), "--limit", "20")
    assert not any(any("IMG_0100" in p for p in h["paths"]) for h in by_raw)

    # Kept apart: each file a photo of its own, at the next regroup.
    config = make_config(
        [root], cluster={"min_size": 2, "max_size": 40}, library={"pair_raw_jpeg": False}
    )
    result = run_cli("--config", str(config), "recluster")
    assert result.returncode == 0, result.stderr
    rows = _catalog_rows(config)
    assert rows["IMG_0100.DNG"][2] == raw_hash
    assert raw_hash in _members(config) or rows["IMG_0100.DNG"][3] is None


@pytest.mark.parametrize(
    ("error", "said"),
    [
        ("LibRawIOError", "truncated: the file ends before its image data (the CR3 sensor data"),
        ("LibRawDataError", "damaged: its image data is corrupt (the CR3 sensor data"),
        ("LibRawRequestForNonexistentImageError", "it holds no image LibRaw can open"),
        ("LibRawTooBigError", "its image is larger than LibRaw decodes"),
        ("LibRawUnspecifiedError", "LibRaw cannot read the CR3 sensor data: "),
    ],
)
def test_each_libraw_failure_is_said_in_words(error: str, said: str) -> None:
    """Before: a truncated CR3 said "cannot decode the CR3 sensor data: Input/output
    error", which reads like a failing disk; it is LibRaw's code for data that ends early."""
    import rawpy

    from imageclust_daemon.index import camera_raw

    reason = camera_raw.libraw_reason(getattr(rawpy, error)("x"), "CR3", "sensor data")
    assert reason.startswith(said) and "Input/output" not in reason


def test_libraw_out_of_memory_is_not_the_photos_fault() -> None:
    import rawpy

    from imageclust_daemon.index import camera_raw

    with pytest.raises(MemoryError):
        camera_raw.libraw_reason(rawpy.LibRawUnsufficientMemoryError("x"), "NEF", "file")


def test_a_raw_whose_sensor_data_is_blank_fails_saying_so() -> None:
    """A RAW whose sensor data is all one value (written as zeros, say) and that has no
    preview is no photo: before, it became a solid black picture in an album."""
    from PIL import Image

    from imageclust_daemon.errors import DecodeError
    from imageclust_daemon.index import decode
    from imageclust_daemon.records import Preprocessing
    from tests.dng import dng_bytes

    blank = dng_bytes(Image.new("RGB", (320, 240), (0, 0, 0)))
    with pytest.raises(DecodeError, match="no image data: the DNG's sensor data is blank"):
        decode.decode(blank, Preprocessing(), path="blank.dng")
