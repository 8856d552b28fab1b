"""Fetch axe-core for the gallery's accessibility test (tests/test_gallery_daily.py).

    python -m tests.tools.fetch_axe [DEST]     # default: tests/output/axe/axe.min.js

axe-core 4.14.1 (Deque Systems, MPL-2.0) is an npm package: `npm pack` fetches its
tarball, which is checked by sha256 (both checksums below were computed here from the
tarball npm served, and match what npm reports for 4.14.1), then axe.min.js is taken
out of it and checked too. It is not copied into this repository; a mismatch stops
with a message and writes nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "4.14.1"
TARBALL_SHA256 = "e6b0ce02b84d892e2e33e403485e7f3d6c29e2be6df65daf44d89ba564139745"
SCRIPT_SHA256 = "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c"
DEFAULT_DEST = Path(__file__).resolve().parents[1] / "output" / "axe" / "axe.min.js"


def present(dest: Path = DEFAULT_DEST) -> bool:
    return dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == SCRIPT_SHA256


def fetch(dest: Path = DEFAULT_DEST) -> str:
    if present(dest):
        return f"axe-core {VERSION} already in {dest}"
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed (apt-get install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [npm, "pack", f"axe-core@{VERSION}", "--silent"],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"npm pack axe-core@{VERSION} failed: {done.stderr.strip()}")
        tarball = Path(tmp) / f"axe-core-{VERSION}.tgz"
        if hashlib.sha256(tarball.read_bytes()).hexdigest() != TARBALL_SHA256:
            raise RuntimeError(f"{tarball.name}: sha256 differs from the one checked here")
        with tarfile.open(tarball) as archive:
            member = archive.extractfile("package/axe.min.js")
            if member is None:
                raise RuntimeError(f"{tarball.name} has no package/axe.min.js")
            script = member.read()
    if hashlib.sha256(script).hexdigest() != SCRIPT_SHA256:
        raise RuntimeError("axe.min.js: sha256 differs from the one checked here")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(script)
    return f"axe-core {VERSION} -> {dest}"


def main(argv: list[str]) -> int:
    try:
        print(fetch(Path(argv[0]) if argv else DEFAULT_DEST))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"could not fetch axe-core: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
