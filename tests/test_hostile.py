"""Hostile files and failing machines: nothing takes the daemon down or loops it.

Crafted files are indexed by the real `imageclust index` in a child process whose
address space is capped (`memory_limit`), so a regression fails the test instead
of taking the machine down. A decoder that really dies is a Pillow PNG decoder
patched (through `sitecustomize`, in the child only) to SIGKILL its own process
on one image size: the process is killed for real, mid-decode.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imageclust_daemon.errors import DecodeError
from imageclust_daemon.index import decode, inflight
from imageclust_daemon.index.preprocess import model_input
from imageclust_daemon.published import catalog
from imageclust_daemon.records import Preprocessing
from tests import photos
from tests.conftest import memory_limit, run_cli

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


def _statuses(catalog_path: Path) -> dict[str, tuple[str, str | None]]:
    conn = sqlite3.connect(f"file:{catalog_path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT path, status, error FROM photos").fetchall()
    finally:
        conn.close()
    return {os.path.basename(p): (s, e) for p, s, e in rows}


def _blp_bytes(width: int = 8000, height: int = 8000) -> bytes:
    """A 284-byte BLP2 header promising an 8000x8000 RGBA picture (Blizzard's format)."""
    head = b"BLP2" + struct.pack("<i", 1) + struct.pack("<bbbb", 1, 8, 0, 0)
    head += struct.pack("<II", width, height)
    head += struct.pack("<16I", 248, *([0] * 15)) + struct.pack("<16I", width * height, *([0] * 15))
    return head + bytes(284 - len(head))


def test_crafted_files_cost_a_bounded_memory_and_each_gets_its_row(
    make_config: Any, tmp_path: Path
) -> None:
    """Before: the 20000x1 PNG took 4.2 GB, the 100000x1 ~20 GB (killed), the 20x4,000,000
    one 5.7 GB; FIFOs and devices had no row. Now all of it in under 2.5 GB of address
    space, every file accounted for."""
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("L", (20000, 1), 128).save(root / "strip-20000x1.png", optimize=True)
    Image.new("L", (100000, 1), 128).save(root / "strip-100000x1.png", optimize=True)
    Image.new("L", (20, 4_000_000), 128).save(root / "strip-20x4000000.png", optimize=True)
    Image.new("RGB", (7000, 200), (90, 120, 30)).save(root / "panorama-35x1.png")  # indexed
    Image.new("RGBA", (6000, 6000), (10, 200, 30, 128)).save(root / "big-rgba.png")  # 36 MP
    (root / "blizzard.jpg").write_bytes(_blp_bytes())
    photos.save_jpeg(photos.photo_like(1), root / "ordinary.jpg")
    os.mkfifo(root / "pipe.jpg")
    os.symlink("/dev/zero", root / "zeros.jpg")
    config = make_config(roots=[root])

    done = run_cli("--config", str(config), "index", "--no-progress", preexec_fn=memory_limit(2500))

    assert done.returncode == 0, done.stderr
    rows = _statuses(tmp_path / "data" / "catalog.sqlite")
    assert rows["ordinary.jpg"] == ("indexed", None)
    assert rows["panorama-35x1.png"] == ("indexed", None)
    assert rows["big-rgba.png"] == ("indexed", None)
    for name in ("strip-20000x1.png", "strip-100000x1.png", "strip-20x4000000.png"):
        status, error = rows[name]
        assert status == "failed" and error is not None and "over 40:1" in error, (name, error)
    assert rows["blizzard.jpg"][0] == "failed"
    assert "not an image in a format imageclust reads" in str(rows["blizzard.jpg"][1])
    assert rows["pipe.jpg"] == ("failed", "not a regular file (a FIFO)")
    assert rows["zeros.jpg"] == ("failed", "not a regular file (a character device)")


KILLER = """
import os, signal
from PIL import PngImagePlugin

_load = PngImagePlugin.PngImageFile.load


def load(self):
    if self.size == (173, 97):  # the photo that kills its decoder
        os.kill(os.getpid(), signal.SIGKILL)
    return _load(self)


PngImagePlugin.PngImageFile.load = load
"""


def test_a_photo_that_kills_the_decoder_costs_one_run_not_every_run(
    make_config: Any, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(6):
        photos.save_jpeg(photos.photo_like(i), root / f"IMG_{i}.jpg")
    Image.new("RGB", (173, 97), (200, 10, 10)).save(root / "killer.png")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(KILLER), encoding="utf-8")
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    config = make_config(roots=[root])
    journal = tmp_path / "data" / "decoding.journal"

    first = run_cli("--config", str(config), "index", "--no-progress", env=env)

    assert first.returncode == -signal.SIGKILL, first.stderr
    assert inflight.read(journal)  # the killer's hash (and whatever shared its moment)

    second = run_cli("--config", str(config), "index", "--no-progress", env=env)

    assert second.returncode == 0, second.stderr
    assert "decoded alone in a child process" in second.stderr
    rows = _statuses(tmp_path / "data" / "catalog.sqlite")
    assert rows["killer.png"] == (
        "failed",
        "decoding it killed the decoder (SIGKILL: out of memory?); not retried",
    )
    assert all(rows[f"IMG_{i}.jpg"] == ("indexed", None) for i in range(6))
    assert inflight.read(journal) == set()

    third = run_cli("--config", str(config), "index", "--no-progress", "--json", env=env)
    assert third.returncode == 0 and '"hashed": 0' in third.stdout, third.stdout


def test_the_journal_keeps_only_what_is_open(tmp_path: Path) -> None:
    path = tmp_path / "decoding.journal"
    with inflight.InFlight(path) as journal:
        journal.begin("aa")
        journal.begin("bb")
        journal.end("aa")
    assert inflight.read(path) == {"bb"}  # a process that died here left "bb" in flight
    with inflight.InFlight(path) as journal:
        assert journal.suspects == {"bb"}
        journal.begin("bb")
        journal.end("bb")
    assert inflight.read(path) == set()


def test_compaction_keeps_the_open_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inflight, "COMPACT_EVERY", 10)
    path = tmp_path / "decoding.journal"
    with inflight.InFlight(path) as journal:
        journal.begin("kept")
        for i in range(25):
            journal.begin(f"h{i}")
            journal.end(f"h{i}")
        assert path.stat().st_size < 200
    assert inflight.read(path) == {"kept"}


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def test_a_full_disk_is_one_clear_line_and_nothing_is_lost(
    make_config: Any, tmp_path: Path
) -> None:
    data = tmp_path / "small-disk"
    if not _tmpfs(data, "3M"):
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    try:
        root = tmp_path / "photos"
        root.mkdir()
        for i in range(3):
            photos.save_jpeg(photos.photo_like(i), root / f"IMG_{i}.jpg")
        config = make_config(roots=[root], storage={"data_dir": str(data)})
        assert run_cli("--config", str(config), "index", "--no-progress").returncode == 0
        for i in range(3, 40):
            photos.save_jpeg(photos.photo_like(i), root / f"IMG_{i}.jpg")
        filler = data / "filler"
        # Every free block of the small disk. Unbuffered: a buffered file would try again to
        # write what did not fit when it is closed, and fail there.
        with open(filler, "wb", buffering=0) as f:
            try:
                while f.write(bytes(64 << 10)):
                    pass
            except OSError:
                pass

        full = run_cli("--config", str(config), "index", "--no-progress")

        assert full.returncode == 1, full.stderr
        assert f"no space left on the device holding {data}" in full.stderr
        assert "Traceback" not in full.stderr
        filler.unlink()
        again = run_cli("--config", str(config), "index", "--no-progress", "--json")
        assert again.returncode == 0, again.stderr
        rows = _statuses(data / "catalog.sqlite")
        assert len(rows) == 40 and {s for s, _ in rows.values()} == {"indexed"}
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_publish_removes_temp_catalogs_of_dead_processes_only(
    make_config: Any, tmp_path: Path
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dest = tmp_path / "catalog.sqlite"
        left = tmp_path / f".catalog.sqlite.{dead.pid}.tmp"
        busy = tmp_path / f".catalog.sqlite.{alive.pid}.tmp"
        other = tmp_path / ".catalog.sqlite.notapid.tmp"
        for path in (left, busy, other):
            path.write_bytes(b"half a catalog")

        removed = catalog.remove_dead_temps(dest)

        assert removed == [left] and not left.exists()
        assert busy.exists() and other.exists()
    finally:
        alive.kill()
        alive.wait()


def test_library_warnings_are_log_lines_that_name_the_photo(
    make_config: Any, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    jpeg = photos.jpeg_bytes(photos.photo_like(3))
    # An EXIF block whose one tag points past its end: Pillow warns "Tag data larger than file".
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x010F, 2, 200, 1000)
    app1 = b"Exif\x00\x00" + tiff + struct.pack("<I", 0)
    (root / "odd-exif.jpg").write_bytes(
        jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]
    )
    config = make_config(roots=[root])

    done = run_cli("--config", str(config), "--log-level", "INFO", "index", "--no-progress")

    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), done.stderr
    assert any("odd-exif.jpg: UserWarning: Tag data larger than file" in x for x in lines)


# --- the bounded decode, unit by unit --------------------------------------------------------

SPEC = Preprocessing()


def _png(image: Image.Image) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_a_large_png_is_reduced_before_conversion_and_stays_close_to_the_reference() -> None:
    rgb = photos.photo_like(5, size=(2400, 1800))
    fast = decode.decode(_png(rgb), SPEC).pixels
    exact = decode.decode(_png(rgb), SPEC, reduced_decode=False).pixels
    assert np.abs(fast - exact).max() <= 0.05 and np.abs(fast - exact).mean() <= 0.005


def test_a_strip_is_resampled_only_where_the_crop_keeps_it() -> None:
    """A 30:1 strip (past 16 crops' worth resized whole) gives the same picture as
    resizing it whole, within Pillow's rounding between passes."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (60, 40, 3), dtype=np.uint8)
    strip = Image.fromarray(base).resize((6000, 200), Image.Resampling.BICUBIC)
    boxed = model_input(strip, SPEC)
    whole = strip.resize((6720, 224), Image.Resampling.BICUBIC).crop((3248, 0, 3472, 224))
    from imageclust_daemon.index.preprocess import normalize

    reference = normalize(np.asarray(whole, dtype=np.uint8), SPEC)
    assert np.abs(boxed - reference).max() <= 0.1


@pytest.mark.parametrize(
    ("size", "reason"),
    [((4100, 100), "over 40:1"), ((1, 1000), "over 40:1")],
)
def test_absurd_shapes_are_refused_before_decoding(size: tuple[int, int], reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode.decode(_png(Image.new("L", size)), SPEC, path="x.png")


def test_formats_outside_the_list_are_refused_whatever_the_name() -> None:
    with pytest.raises(DecodeError, match="not an image in a format imageclust reads"):
        decode.decode(_blp_bytes(), SPEC, path="x.jpg")
    tga = Image.new("RGB", (300, 200))
    import io

    out = io.BytesIO()
    tga.save(out, format="TGA")  # a real image, in a format no camera writes
    with pytest.raises(DecodeError, match="not an image in a format"):
        decode.decode(out.getvalue(), SPEC, path="x.png")


def test_a_progressive_jpeg_is_charged_its_full_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """libjpeg keeps a progressive file's coefficients at full size whatever the reduced
    scale: a 13000x13000 one (2 MB) took 1 GB. Charged so, it is refused past the budget."""
    import io

    out = io.BytesIO()
    Image.new("RGB", (1200, 900), (30, 60, 90)).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    decode.decode(data, SPEC, path="p.jpg")  # within the budget: indexed
    monkeypatch.setattr(decode, "DECODE_BYTES", 1200 * 900 * 3 * 2 - 1)
    with pytest.raises(DecodeError, match="a progressive JPEG of 1200x900 needs"):
        decode.decode(data, SPEC, path="p.jpg")


def test_sixteen_bit_and_palette_images_are_reduced_before_conversion() -> None:
    """A 9400x9400 16-bit PNG took 1.8 GB (float64 temporaries), a palette PNG with a
    transparent colour 1.5 GB (full-size RGBA copies): both are now averaged down first."""
    grey = Image.new("I;16", (1800, 2400), 40000)
    small = decode.reduced(grey, 448)
    assert small.mode == "L" and small.size == (450, 600)
    pal = Image.new("P", (2400, 1800), 3)
    pal.info["transparency"] = 3
    small = decode.reduced(pal, 448)
    assert small.mode == "RGBA" and small.size == (600, 450)


def test_a_jpeg_with_endless_scans_is_refused_before_it_is_decoded() -> None:
    """Each scan is decoded over the whole image: 2,000 repeats of the last one took 207 s
    in a worker thread. A real progressive JPEG (about 10 scans) still decodes."""
    import io

    out = io.BytesIO()
    photos.photo_like(2, size=(640, 480)).save(out, "JPEG", progressive=True)
    real = out.getvalue()
    assert 2 <= real.count(b"\xff\xda") <= decode.MAX_JPEG_SCANS
    decode.decode(real, SPEC, path="ok.jpg")
    last = real.rindex(b"\xff\xda")
    end = real.rindex(b"\xff\xd9")
    endless = real[:end] + real[last:end] * 150 + real[end:]
    with pytest.raises(DecodeError, match=r"a JPEG of 1[56][0-9] scans"):
        decode.decode(endless, SPEC, path="endless.jpg")


def test_a_sequential_jpeg_is_not_counted_and_its_extra_scans_are_refused_as_broken() -> None:
    """A camera's JPEG (sequential, one scan of every component) is not searched for
    scans; libjpeg stops at a second scan of such a file without decoding it, so 150
    repeats of its scan are a failure, not 150 decodes."""
    import io

    out = io.BytesIO()
    photos.photo_like(2, size=(1600, 1200)).save(out, "JPEG", quality=90)
    real = out.getvalue()
    assert decode._one_scan(real)
    decode.decode(real, SPEC, path="ok.jpg", reduced_decode=False)
    sos, end = real.index(b"\xff\xda"), real.rindex(b"\xff\xd9")
    repeated = real[:end] + real[sos:end] * 150 + real[end:]
    assert decode._one_scan(repeated)
    with pytest.raises(DecodeError, match="broken data stream"):
        decode.decode(repeated, SPEC, path="repeated.jpg", reduced_decode=False)
    for progressive, components in ((True, "RGB"), (False, "CMYK")):
        out = io.BytesIO()
        Image.new(components, (64, 48)).save(out, "JPEG", progressive=progressive)
        assert decode._one_scan(out.getvalue()) is not progressive
    assert not decode._one_scan(b"\xff\xd8\xff\xe0\x00")  # cut short: counted
