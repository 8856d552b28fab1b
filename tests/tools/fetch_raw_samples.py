"""Fetch real camera RAW files for tests/test_raw_real.py from Debian's source archive.

    python -m tests.tools.fetch_raw_samples [DEST]     # default: tests/output/raw_samples

No package ships decodable camera RAW files as data; three Debian source packages keep
some as their own test files (found by searching Debian bookworm's sources):

- hdrmerge 0.5+git20200117 (GPL-3.0): test/sample{1,2,3}.dng, a bracketed set from a
  Nikon D5000, converted to DNG with the sensor data kept (lossless JPEG, 12-bit,
  4310x2868) and a 1280x850 JPEG preview.
- exiv2 0.27.6 (GPL-2.0+) and ExifTool 12.57 (Perl's terms): real cameras' files with the
  image data taken out, kept for their metadata: an iPhone 12 Pro DNG with GPS and
  orientation 6, Canon CR2 and CR3 (EOS 350D, M50, R6), Nikon NEF (D70), Fujifilm RAF
  (S5Pro), Panasonic RW2 (DMC-LX3), Canon 350D DNG.

The files are not copied into this repository (their licences are not the project's);
they are fetched, checked and extracted at test time. Every checksum below was read
here: a tarball's from its Debian .dsc (Checksums-Sha256), a member's computed from the
verified tarball. A mismatch stops with a message and writes nothing.
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

POOL = "http://deb.debian.org/debian/pool/main"
DEFAULT_DEST = Path(__file__).resolve().parents[1] / "output" / "raw_samples"


@dataclass(frozen=True)
class Source:
    url: str
    sha256: str  # of the tarball, from the package's .dsc
    members: dict[str, tuple[str, str]]  # path in the tarball -> (file name, sha256)


SOURCES = (
    Source(
        f"{POOL}/h/hdrmerge/hdrmerge_0.5+git20200117.orig.tar.gz",
        "18f1db24c191936816fb09c3df864ade10958106c3bb2ff735a72e0b772da442",
        {
            "hdrmerge-master/test/sample1.dng": (
                "hdrmerge_sample1.dng",
                "bf23aff5d67f0e0e40c009af82de35e9ad355e03d37ac1f400914729ac913250",
            ),
            "hdrmerge-master/test/sample2.dng": (
                "hdrmerge_sample2.dng",
                "d7cce08c59303b20a8486e39b27a15ddc7a1c1d6e1686bba7897c1831b330a94",
            ),
            "hdrmerge-master/test/sample3.dng": (
                "hdrmerge_sample3.dng",
                "6457be30d7ae8cd67fbe7ea35a8e8e0b4da1b27ebee944b517ba88e158fd8abd",
            ),
        },
    ),
    Source(
        f"{POOL}/e/exiv2/exiv2_0.27.6.orig.tar.gz",
        "f16ee5ff08b6994c66106109417857f13e711fca100ac43c6a403d4f02b59602",
        {
            "exiv2-0.27.6/test/data/IMG_1361.dng": (
                "exiv2_IMG_1361.dng",
                "79d2a91e5a6584d8f56bb7ff90fee4114548019b8fc590da661b5a77b2dfc535",
            ),
            "exiv2-0.27.6/test/data/Canon-R6-pruned.CR3": (
                "exiv2_Canon-R6-pruned.CR3",
                "7925cecf128cb8e272853d3b590031d250ac97a60a937b9044c446081a0104ec",
            ),
        },
    ),
    Source(
        f"{POOL}/libi/libimage-exiftool-perl/libimage-exiftool-perl_12.57+dfsg.orig.tar.xz",
        "9de7ccd6ed6adf92038c8d943b1960d087b58c00b3924d19f61a1d774b7610fc",
        {
            f"Image-ExifTool-12.57/t/images/{name}": (f"exiftool_{name}", digest)
            for name, digest in {
                "CanonRaw.cr2": "b5d3d26f3c85bcb35a52515eac060e2e362161893504013589ffd9ad2e9b004b",
                "CanonRaw.cr3": "dc02aa55e277935b690879584e97c2d013f54d854afaec6f9d3274c99a918fd6",
                "DNG.dng": "daa9ce7a2c6923815390d8566254ef4d4a75d68d1531afdb264bd4b39a8dfd89",
                "FujiFilm.raf": "e12e30bd0cf5f160b82b93f043696c04d1d5f4628f1fdd19abdab9f8328d8bf0",
                "Nikon.nef": "6fae30a2809b52ece100316f33a3fade4b65cf5690af2d62bb00f44ae052bdd6",
                "Panasonic.rw2": "431a1239713ce1bca8f0b422b9a094372246669432060e2a0a21d1fd2f761678",
            }.items()
        },
    ),
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def present(dest: Path) -> bool:
    """Every sample is in `dest` with its checksum."""
    return all(
        (dest / name).is_file() and _sha256(dest / name) == digest
        for source in SOURCES
        for name, digest in source.members.values()
    )


def fetch(source: Source, dest: Path) -> None:
    if all((dest / n).is_file() and _sha256(dest / n) == d for n, d in source.members.values()):
        return
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / source.url.rsplit("/", 1)[1]
        with urllib.request.urlopen(source.url, timeout=60) as answer, open(tarball, "wb") as out:
            while chunk := answer.read(1 << 20):
                out.write(chunk)
        if (found := _sha256(tarball)) != source.sha256:
            raise SystemExit(f"{source.url}: sha256 {found}, expected {source.sha256}")
        with tarfile.open(tarball) as archive:
            for member, (name, digest) in source.members.items():
                extracted = archive.extractfile(member)
                if extracted is None:
                    raise SystemExit(f"{source.url}: {member} is not a file")
                part = Path(tmp) / name
                part.write_bytes(extracted.read())
                if (found := _sha256(part)) != digest:
                    raise SystemExit(f"{source.url}: {member}: sha256 {found}, expected {digest}")
                part.replace(dest / name)


def main(argv: list[str]) -> int:
    dest = Path(argv[0]) if argv else DEFAULT_DEST
    dest.mkdir(parents=True, exist_ok=True)
    for source in SOURCES:
        fetch(source, dest)
    print(f"real RAW samples in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
