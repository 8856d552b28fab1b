"""Fetch real phone and camera HEIC/HEIF files for tests/test_heif_real.py from PyPI.

    python -m tests.tools.fetch_heif_samples [DEST]     # default: tests/output/heif_samples

pillow-heif keeps real devices' photos as its own test files (BSD-3-Clause, in its
source distribution): an iPhone 8 Plus's tiled HEIC with a 240x320 thumbnail, an
iPhone 13 Pro's, an Apple Vision Pro's, a Xiaomi's, a Galaxy S25 Ultra's with a 512-px
thumbnail, and two Sony cameras' HIF with 1616- and 320-px thumbnails; a Galaxy's
200 MP photo; two files damaged on purpose. The tiled ones are what a phone writes: a
grid of 512x512 HEVC tiles.

The files are not copied into this repository; they are fetched with pip (PyPI is the
one package index reachable here), the sdist checked by sha256 (`--require-hashes`),
and each member checked again. Every checksum below was computed here with sha256sum,
on 2026-12-07, of what `pip download --no-binary :all: --no-deps pillow-heif==1.1.1`
served and of the members of that verified tarball. A mismatch stops with a message and
writes nothing.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tests.tools.fetch_raw_samples import _sha256

SDIST = "pillow_heif-1.1.1.tar.gz"
SDIST_SHA256 = "f60e8c8a8928556104cec4fff39d43caa1da105625bdb53b11ce3c89d09b6bde"
DEFAULT_DEST = Path(__file__).resolve().parents[1] / "output" / "heif_samples"
_IMAGES = "pillow_heif-1.1.1/tests/images"
# path in the sdist -> (file name here, sha256)
MEMBERS = {
    f"{_IMAGES}/heif_other/arrow.heic": (
        "iphone8plus_arrow.heic",
        "73f604d7353df4848505a1f45a5517f736857fe047372f95c2f3d671df92c22c",
    ),
    f"{_IMAGES}/heif_other/pug.heic": (
        "iphone13pro_pug.heic",
        "1ddce96766efbfa0f6bdf634bdab26bdeff831393df8d67f4cdc7b7a7afebc67",
    ),
    f"{_IMAGES}/heif_other/spatial_photo.heic": (
        "visionpro_spatial.heic",
        "ef941d328072a2df034adb3c3b46f41117606bfc8fcc100dff975d31f55ec028",
    ),
    f"{_IMAGES}/heif_special/xiaomi.heic": (
        "xiaomi.heic",
        "cb5c7d9131931df4abd9bfe1c3de47617b68d1fae54a1c367fc5981ffea6aeed",
    ),
    f"{_IMAGES}/heif_special/aux_YCbCr.heic": (
        "galaxys25ultra.heic",
        "8deae321c3b6424f97ab5d57d022e0a79ac35278149c0de7796261b8981f50b0",
    ),
    f"{_IMAGES}/heif_other/cat.hif": (
        "sony_a7s3_cat.hif",
        "3a396202a8bb50c5cccbfd89d3cf6ef0a0fa47794afd785693d882edc2eb30b7",
    ),
    f"{_IMAGES}/heif_special/guitar_cw90.hif": (
        "sony_a7m4_guitar.hif",
        "f0d5e88be07b9d70a3715218ca612ccf45b126e5b4b42172dce14a62d2099932",
    ),
    # a Galaxy's 200 MP photo (12240x16320) with a 384x512 thumbnail
    f"{_IMAGES}/heif_special/200MP.heic": (
        "galaxy_200mp.heic",
        "4dd7209010986a50b1049e54de47ae2188faef6d548213a9799e11fae1a317c6",
    ),
    # damaged on purpose (pillow-heif's own tests of libheif's errors)
    f"{_IMAGES}/heif_corrupted/corrupted.heic": (
        "damaged_corrupted.heic",
        "a3a2cc3c5367fb61e02f52330cab9568c469cc8e08f909ad24b7993add1f630e",
    ),
    f"{_IMAGES}/heif_special/L_8__29(255)x100.heif": (
        "damaged_wrong_size.heif",
        "86f84ab1b1cd28186ad1bdb4dc5e3890d655bc050c3d4b97a09a3ab5db307d4b",
    ),
}


def present(dest: Path) -> bool:
    """Every sample is in `dest` with its checksum."""
    return all(
        (dest / name).is_file() and _sha256(dest / name) == digest
        for name, digest in MEMBERS.values()
    )


def fetch(dest: Path) -> None:
    if present(dest):
        return
    with tempfile.TemporaryDirectory() as tmp:
        pinned = Path(tmp) / "requirements.txt"
        pinned.write_text(f"pillow-heif==1.1.1 --hash=sha256:{SDIST_SHA256}\n")
        got = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
                *("--no-binary", ":all:", "--require-hashes", "-r", str(pinned), "-d", tmp),
            ],
            capture_output=True,
            text=True,
        )
        tarball = Path(tmp) / SDIST
        if got.returncode != 0 or not tarball.is_file():
            raise SystemExit(f"pip could not fetch {SDIST}: {got.stderr.strip()[-500:]}")
        if (found := _sha256(tarball)) != SDIST_SHA256:
            raise SystemExit(f"{SDIST}: sha256 {found}, expected {SDIST_SHA256}")
        with tarfile.open(tarball) as archive:
            for member, (name, digest) in MEMBERS.items():
                extracted = archive.extractfile(member)
                if extracted is None:
                    raise SystemExit(f"{SDIST}: {member} is not a file")
                part = Path(tmp) / name
                part.write_bytes(extracted.read())
                if (found := _sha256(part)) != digest:
                    raise SystemExit(f"{SDIST}: {member}: sha256 {found}, expected {digest}")
                part.replace(dest / name)


def main(argv: list[str]) -> int:
    dest = Path(argv[0]) if argv else DEFAULT_DEST
    dest.mkdir(parents=True, exist_ok=True)
    fetch(dest)
    print(f"real HEIC/HEIF samples in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
