"""Real camera RAW files, fetched from Debian's source archive by
`python -m tests.tools.fetch_raw_samples` (CI runs it before the tests; see that module
for what the files are and where they come from).

- Three DNGs with a Nikon D5000's sensor data and a 1280x850 preview: decoded through
  the preview, which agrees with the demosaiced sensor data in content and geometry.
- Real cameras' CR2, CR3, NEF, RAF, RW2 and DNG with their image data taken out: told
  by their bytes, their capture time (and the iPhone's GPS and orientation) read as
  ExifTool reads them, and a clear failure, not a crash, where the pixels are missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageclust_daemon.errors import DecodeError
from imageclust_daemon.index import camera_raw, decode
from imageclust_daemon.index.preprocess import model_input
from imageclust_daemon.records import Preprocessing
from tests.tools import fetch_raw_samples

SPEC = Preprocessing()

# What ExifTool 12.57 prints for each file (-DateTimeOriginal -OffsetTimeOriginal
# -GPSPosition -Orientation -n), and the format the file is.
EXIFTOOL_SAYS = {
    "exiftool_CanonRaw.cr2": ("CR2", "2005-08-03T18:59:18"),
    "exiftool_CanonRaw.cr3": ("CR3", "2018-02-21T12:08:56+00:00"),
    "exiv2_Canon-R6-pruned.CR3": ("CR3", "2021-05-12T12:21:21+02:00"),
    "exiftool_Nikon.nef": ("NEF", "2004-06-09T16:02:35"),
    "exiftool_FujiFilm.raf": ("RAF", "2007-05-22T13:58:30"),
    "exiftool_Panasonic.rw2": ("RW2", "2008-08-06T15:21:56"),
    "exiftool_DNG.dng": ("DNG", "2005-08-03T18:59:18"),
    "exiv2_IMG_1361.dng": ("DNG", "2020-12-29T14:24:45-05:00"),
    "hdrmerge_sample1.dng": ("DNG", "2014-03-09T13:25:51"),
}


@pytest.fixture(scope="module")
def samples() -> Path:
    where = Path(os.environ.get("IMAGECLUST_RAW_SAMPLES", fetch_raw_samples.DEFAULT_DEST))
    if not fetch_raw_samples.present(where):
        fetch = "python -m tests.tools.fetch_raw_samples"
        if os.environ.get("CI"):
            pytest.fail(f"CI fetches the real RAW samples (.ci/run: {fetch}): none in {where}")
        pytest.skip(f"no real RAW samples in {where}: {fetch}")
    return where


def _standardized(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_real_dng_is_read_through_its_preview_which_is_the_sensor_picture(
    samples: Path, n: int
) -> None:
    data = (samples / f"hdrmerge_sample{n}.dng").read_bytes()
    photo = decode.decode(data, SPEC, path=f"sample{n}.dng")
    assert photo.meta.format == "DNG"
    assert (photo.meta.width, photo.meta.height) == (4310, 2868)
    assert photo.meta.taken_at == "2014-03-09T13:25:51"
    with camera_raw.opened(data, "DNG") as shot:
        preview = shot.usable_preview(SPEC.resize_shortest)
        assert preview is not None and (preview.width, preview.height) == (1280, 850)
        sensor = Image.fromarray(shot.demosaic())
    assert sensor.size == (2155, 1434), "half size"
    # The camera renders its preview with its own tone curve, LibRaw with another: the
    # same picture shows in the correlation of the standardized inputs, not in equality.
    from_preview = _standardized(photo.pixels)
    from_sensor = _standardized(model_input(sensor, SPEC))
    mirrored = _standardized(model_input(sensor.transpose(Image.Transpose.FLIP_LEFT_RIGHT), SPEC))
    same = float((from_preview * from_sensor).mean())
    assert same > 0.9, f"preview and sensor data: correlation {same:.2f}"
    assert same > float((from_preview * mirrored).mean()) + 0.3


@pytest.mark.parametrize("name", sorted(EXIFTOOL_SAYS))
def test_real_camera_files_are_told_by_their_bytes_and_dated_as_exiftool_dates_them(
    samples: Path, name: str
) -> None:
    kind, taken = EXIFTOOL_SAYS[name]
    data = (samples / name).read_bytes()
    assert camera_raw.sniff(data, "no-extension") == kind
    assert camera_raw.raw_facts(data, kind).taken_at == taken


def test_the_iphone_dng_gives_its_position_but_has_no_image_data(samples: Path) -> None:
    """exiv2's sample keeps an iPhone DNG's metadata with its image data taken out. Before,
    it was "decoded" (LibRaw demosaiced what was not there) and went into albums; now it
    fails, saying so. Its EXIF is still read (position, time)."""
    data = (samples / "exiv2_IMG_1361.dng").read_bytes()
    with pytest.raises(DecodeError) as failed:
        decode.decode(data, SPEC, path="i.dng")
    assert failed.value.reason.startswith("no image data: the DNG has 64,104 bytes for a 12 MP")
    facts = camera_raw.raw_facts(data, "DNG")
    assert facts.taken_at == "2020-12-29T14:24:45-05:00"
    assert facts.lat == pytest.approx(34.0596083, abs=1e-6)
    assert facts.lon == pytest.approx(-84.681725, abs=1e-6)


# Pillow warns while trying the NEF's TIFF structure it cannot decode; the daemon logs it.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "name",
    [
        "exiftool_CanonRaw.cr2",
        "exiftool_CanonRaw.cr3",
        "exiv2_Canon-R6-pruned.CR3",
        "exiftool_Nikon.nef",
        "exiftool_FujiFilm.raf",
        "exiftool_DNG.dng",
        "exiftool_Panasonic.rw2",
    ],
)
def test_a_real_raw_without_its_image_data_is_a_clear_failure(samples: Path, name: str) -> None:
    """Before: the DNG without its image data became a solid black photo and the RW2 blue
    noise, both in albums; now every one of these samples fails, saying why."""
    kind = EXIFTOOL_SAYS[name][0]
    with pytest.raises(DecodeError) as failed:
        decode.decode((samples / name).read_bytes(), SPEC, path=name)
    assert failed.value.path == name
    assert kind in failed.value.reason, failed.value.reason
