"""Real phones' and cameras' HEIC/HEIF files, fetched from pillow-heif's source
distribution by `python -m tests.tools.fetch_heif_samples` (CI runs it before the
tests; see that module for what the files are and where they come from).

A phone's HEIC is a grid of tiles. Cut short (an interrupted copy), libheif decodes the
missing tiles as flat green without an error; imageclust tells it from the file's item
locations and fails the photo as truncated.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from imageclust_daemon.errors import DecodeError
from imageclust_daemon.index import decode
from imageclust_daemon.records import Preprocessing
from tests.tools import fetch_heif_samples

SPEC = Preprocessing()
ALL = sorted(name for name, _ in fetch_heif_samples.MEMBERS.values())
NAMES = [n for n in ALL if not n.startswith(("damaged_", "galaxy_200mp"))]  # whole photos


@pytest.fixture(scope="module")
def samples() -> Path:
    where = Path(os.environ.get("IMAGECLUST_HEIF_SAMPLES", fetch_heif_samples.DEFAULT_DEST))
    if not fetch_heif_samples.present(where):
        fetch = "python -m tests.tools.fetch_heif_samples"
        if os.environ.get("CI"):
            pytest.fail(f"CI fetches the real HEIF samples (.ci/run: {fetch}): none in {where}")
        pytest.skip(f"no real HEIF samples in {where}: {fetch}")
    return where


@pytest.mark.parametrize("name", NAMES)
def test_a_real_heic_decodes_whole(name: str, samples: Path) -> None:
    photo = decode.decode((samples / name).read_bytes(), SPEC, path=name)
    assert photo.meta.format == "HEIF"
    # the lower quarter is not one colour (a truncated one's is solid green)
    lower = photo.pixels[:, -56:, :]
    assert float(np.ptp(lower)) > 0.1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kept", [0.5, 0.9])
def test_a_real_heic_cut_short_fails_as_truncated(name: str, kept: float, samples: Path) -> None:
    data = (samples / name).read_bytes()
    cut = data[: int(len(data) * kept)]
    # the end of its last box; a Galaxy's `meta` follows its `mdat`: the cut loses
    # both, and the mdat's end is what the file tells
    ends = len(data) if not name.startswith("galaxy") else 1_152_966
    with pytest.raises(DecodeError) as caught:
        decode.decode(cut, SPEC, path=name)
    assert caught.value.reason == (
        f"truncated: the file ends before its image data (it has {len(cut):,} bytes; its "
        f"image data runs to byte {ends:,})"
    )
    with pytest.raises(DecodeError) as caught:
        decode.thumbnail_jpeg(cut, path=name)  # the gallery's picture too
    assert caught.value.reason.startswith("truncated: ")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("damaged_corrupted.heic", "a damaged HEIF: Insufficient input data"),
        (
            "damaged_wrong_size.heif",
            "a damaged HEIF: Invalid image size: Decoded image does not have the size "
            "signaled in the file.",
        ),
    ],
)
def test_a_damaged_heif_says_what_libheif_found(name: str, reason: str, samples: Path) -> None:
    """Before: "a damaged HEIF: its header is not one Pillow can read" for both (Pillow
    hides libheif's error behind "cannot identify image file")."""
    with pytest.raises(DecodeError) as caught:
        decode.decode((samples / name).read_bytes(), SPEC, path=name)
    assert caught.value.reason == reason


def test_a_galaxys_200_mp_photo_is_read_through_its_thumbnail(samples: Path) -> None:
    """12240x16320, past the pixel limit: read through its 384x512 thumbnail (it failed
    as "a decompression bomb" before)."""
    data = (samples / "galaxy_200mp.heic").read_bytes()
    photo = decode.decode(data, SPEC, path="galaxy_200mp.heic")
    assert (photo.meta.width, photo.meta.height) == (12240, 16320)
    assert photo.meta.taken_at == "2025-01-19T14:53:27+03:00"
    assert float(np.ptp(photo.pixels)) > 0.5
    assert decode.thumbnail_jpeg(data, path="galaxy_200mp.heic")
