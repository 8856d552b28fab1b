"""Every read of an original is bounded, on every path: the hash and decode of `index`,
the pictures sent to Ollama, the gallery's thumbnails, `similar`. Crafted files that
took the service down before: a photo with gigabytes appended (sparse: cheap to make),
a RAW's leading bytes on a huge file, FIFOs and devices where photos were."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imageclust_daemon.errors import DecodeError
from imageclust_daemon.gallery.thumbs import ThumbCache, Unavailable
from imageclust_daemon.index import decode, originals
from imageclust_daemon.records import Preprocessing
from tests import photos
from tests.conftest import memory_limit, run_cli

pytestmark = pytest.mark.slow  # sparse files of gigabytes, read through the real CLI

GB = 1 << 30


def _photo_with_appended(path: Path, extra: int) -> None:
    """A valid PNG followed by `extra` bytes of nothing (a sparse hole)."""
    Image.new("RGB", (640, 480), (30, 120, 200)).save(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size + extra)


def _rows(catalog: Path) -> dict[str, tuple[str, str | None]]:
    conn = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
    try:
        found = conn.execute("SELECT path, status, error FROM photos").fetchall()
    finally:
        conn.close()
    return {os.path.basename(p): (s, e) for p, s, e in found}


_THUMBNAIL = """
import sys
from imageclust_daemon.index import decode, originals
from imageclust_daemon.records import Preprocessing
with originals.readable(sys.argv[1]) as data:
    print(len(decode.thumbnail_jpeg(data, 256, path=sys.argv[1])))
"""


def test_a_photo_with_gigabytes_appended_costs_its_own_size_everywhere(
    make_config: Any, fake_ollama: Any, tmp_path: Path
) -> None:
    """Before: the thumbnail and the pictures for Ollama read the whole file (`f.read()`):
    4 GB for a 141 KB PNG with 6 GB appended, every thumbnail request and every `index`
    with Ollama reachable killed. Now, with 3 GB appended, `index` (hash, decode, titles)
    runs in 2.5 GB of address space and the gallery's preview in 1.5 GB."""
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(5):
        photos.save_jpeg(photos.photo_like(i), root / f"IMG_{i}.jpg")
    padded = root / "padded.png"
    _photo_with_appended(padded, 3 * GB)
    config = make_config(
        roots=[root],
        cluster={"min_size": 2, "max_size": 10},
        ollama={"host": fake_ollama.url, "model": "llava", "timeout": 10.0, "attempts": 1},
    )

    done = run_cli("--config", str(config), "index", "--no-progress", preexec_fn=memory_limit(2500))

    assert done.returncode == 0, done.stderr
    assert _rows(tmp_path / "data" / "catalog.sqlite")["padded.png"] == ("indexed", None)
    sent = fake_ollama.generate_requests()
    assert sent, "titles were asked for"
    thumb = subprocess.run(
        [sys.executable, "-c", _THUMBNAIL, str(padded), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=memory_limit(1500),
    )
    assert thumb.returncode == 0, thumb.stderr
    assert int(thumb.stdout) > 0


def test_a_raw_look_alike_of_gigabytes_is_not_read_whole(make_config: Any, tmp_path: Path) -> None:
    """Before: a file with a RAW's leading bytes was read whole for LibRaw (2.5 GB sparse:
    2.68 GB RSS; 5 GB: killed). Now LibRaw reads it from the file, as it needs to: 3 GB
    of it in 2.5 GB of address space."""
    root = tmp_path / "photos"
    root.mkdir()
    photos.save_jpeg(photos.photo_like(1), root / "ordinary.jpg")
    fake = root / "huge.raf"
    with open(fake, "wb") as f:
        f.write(b"FUJIFILMCCD-RAW 0201FF383501" + bytes(200))
        f.truncate(3 * GB)
    config = make_config(roots=[root])

    done = run_cli("--config", str(config), "index", "--no-progress", preexec_fn=memory_limit(2500))

    assert done.returncode == 0, done.stderr
    rows = _rows(tmp_path / "data" / "catalog.sqlite")
    assert rows["ordinary.jpg"] == ("indexed", None)
    status, error = rows["huge.raf"]
    assert status == "failed" and error is not None and "RAF" in error, error


def test_fifos_and_devices_never_block_a_thumbnail_or_similar(
    make_config: Any, tmp_path: Path
) -> None:
    """Before: two indexed photos replaced by FIFOs blocked both of the gallery's picture
    makers until a restart; `similar` on a FIFO blocked and on /dev/zero hashed forever."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    cache = ThumbCache(tmp_path / "cache")
    outcome: list[BaseException] = []

    def make() -> None:
        try:
            cache.get("ab" * 32, "thumb", [os.fsencode(fifo), b"/dev/zero"])
        except BaseException as exc:
            outcome.append(exc)

    maker = threading.Thread(target=make, daemon=True)
    maker.start()
    maker.join(timeout=10)
    assert not maker.is_alive(), "a FIFO blocked the thumbnail maker"
    assert len(outcome) == 1 and isinstance(outcome[0], Unavailable)
    assert "not a regular file" in str(outcome[0])

    root = tmp_path / "photos"
    root.mkdir()
    photos.save_jpeg(photos.photo_like(1), root / "one.jpg")
    config = make_config(roots=[root])
    assert run_cli("--config", str(config), "index", "--no-progress").returncode == 0
    for target in (str(fifo), "/dev/zero"):
        started = time.monotonic()
        done = run_cli("--config", str(config), "similar", target)
        assert done.returncode == 2, (target, done.stdout, done.stderr)
        assert "not a regular file" in done.stderr and "Traceback" not in done.stderr
        assert time.monotonic() - started < 60


def test_a_large_file_is_read_from_disk_and_its_jpeg_scans_are_still_counted(
    tmp_path: Path,
) -> None:
    """Before: the 100-scan limit counted only files held in memory (up to 64 MB); a
    progressive JPEG padded past that with comment segments decoded its 3,000 scans."""
    out = io.BytesIO()
    photos.photo_like(2).save(out, format="JPEG", progressive=True)
    crafted = out.getvalue() + b"\xff\xda" * 300  # scans, as many markers as they bring
    path = tmp_path / "scans.jpg"
    path.write_bytes(crafted)
    with open(path, "r+b") as f:  # past WHOLE_READ_MAX: decoded from the file
        f.seek(0, os.SEEK_END)
        f.write(b"\x00" * (originals.WHOLE_READ_MAX + 1 - len(crafted)))
    with originals.readable(path) as data:
        assert not isinstance(data, bytes)
        with pytest.raises(DecodeError, match="scans"):
            decode.decode(data, Preprocessing())


def test_file_names_cannot_steer_the_terminal(make_config: Any, tmp_path: Path) -> None:
    """Before: ESC and OSC sequences in file names reached the terminal through `query`'s
    output and `index`'s warnings (a title change, colours, a forged log line). Now every
    control character a name holds is printed as \\xNN, and JSON escapes C1 too."""
    root = tmp_path / "photos"
    root.mkdir()
    evil = "\x1b]0;pwned\x07\x1b[31mred\x9b2J\nforged line"
    photos.save_jpeg(photos.photo_like(1), root / f"{evil}.jpg")
    (root / f"{evil} broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a photo")
    config = make_config(roots=[root])

    index = run_cli("--config", str(config), "index", "--no-progress")
    text = run_cli("--config", str(config), "query", "SELECT path, error FROM photos")
    as_json = run_cli("--config", str(config), "query", "SELECT path FROM photos", "--json")

    assert index.returncode == 0 and text.returncode == 0 and as_json.returncode == 0
    for out in (index.stdout, index.stderr, text.stdout, text.stderr, as_json.stdout):
        assert not any(ch in out for ch in "\x1b\x07\x9b"), repr(out)
    assert "\\x1b]0;pwned\\x07\\x1b[31mred\\x9b2J\\x0aforged line" in text.stdout
    assert "\\x1b]0;pwned" in index.stderr  # the warning about the broken one names it
    assert len(text.stdout.splitlines()) == 3  # the header and one line per photo


@pytest.fixture(scope="module")
def heavy_kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """9400x9400 images of the kinds that cost more than their pixels to decode."""
    folder = tmp_path_factory.mktemp("heavy")
    side = 9400
    Image.new("RGB", (side, side), (10, 20, 30)).save(
        folder / "lossless.webp", lossless=True, quality=0, method=0
    )
    Image.new("I;16", (side, side), 1000).save(folder / "grey16.png")
    palette = Image.new("P", (side, side), 3)
    palette.putpalette([i % 256 for i in range(768)])
    palette.save(folder / "keyed.png", transparency=0)
    return {p.name: p for p in folder.iterdir()}


@pytest.mark.parametrize("name", ["lossless.webp", "grey16.png", "keyed.png"])
def test_kinds_that_decode_dearer_are_held_to_the_same_memory(
    heavy_kinds: dict[str, Path], name: str
) -> None:
    """Before: at 88 MP (under the pixel limit) a lossless WebP peaked at 1.43 GB in
    `index`, a 16-bit grey PNG at 850 MB and a palette PNG with transparency at 845 MB,
    where an RGBA PNG of that size peaks at 0.78 GB. Now their cost per pixel is counted
    (docs/guide.md has the figures): refused at 88 MP, before any pixel is decoded."""
    with (
        originals.readable(heavy_kinds[name]) as data,
        pytest.raises(DecodeError, match="MB one photo may take to decode"),
    ):
        decode.decode(data, Preprocessing())


PICTURE_KILLER = """
import os, signal
from PIL import Image

_thumbnail = Image.Image.thumbnail


def thumbnail(self, size, *args, **kwargs):
    if self.size == (173, 97):  # the photo whose picture kills the process making it
        os.kill(os.getpid(), signal.SIGKILL)
    return _thumbnail(self, size, *args, **kwargs)


Image.Image.thumbnail = thumbnail
"""


def test_a_picture_that_kills_its_maker_costs_one_run_not_every_run(
    make_config: Any, fake_ollama: Any, tmp_path: Path
) -> None:
    """Before: the pictures sent to Ollama (and the gallery's) were made outside the
    decoding journal: a photo whose picture killed the process killed `index` and the
    daemon again at every start, and no catalog was ever published. Now the picture is
    made under a journal of its own; the next run makes it in a child process, which dies
    in its place, and the run goes on."""
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (173, 97), (200, 10, 10)).save(root / "killer.png")
    for i in range(3):
        Image.new("RGB", (174, 97), (200, 10 + i, 10)).save(root / f"like-{i}.png")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PICTURE_KILLER, encoding="utf-8")
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    config = make_config(
        roots=[root],
        cluster={"min_size": 2, "max_size": 10},
        ollama={"host": fake_ollama.url, "model": "llava", "timeout": 10.0, "attempts": 1},
    )

    first = run_cli("--config", str(config), "index", "--no-progress", env=env)
    assert first.returncode == -9, first.stderr  # killed making a picture for a title
    second = run_cli("--config", str(config), "index", "--no-progress", env=env)

    assert second.returncode == 0, second.stderr
    assert "making its picture alone in a child process" in second.stderr
    assert "not sent for labeling" in second.stderr
    assert _rows(tmp_path / "data" / "catalog.sqlite")["killer.png"] == ("indexed", None)


_DECODE = """
import sys
from imageclust_daemon.index import decode, originals
from imageclust_daemon.records import Preprocessing
with originals.readable(sys.argv[1]) as data:
    print(decode.decode(data, Preprocessing()).meta.width)
"""


def test_a_raw_with_a_huge_bitmap_preview_is_read_from_its_sensor(tmp_path: Path) -> None:
    """Before: a DNG whose IFD 0 held a 144 MP uncompressed preview made LibRaw unpack it
    whole (2.24 GB). Now a bitmap preview past the pixel limit is not used: the photo is
    read from its sensor data: 55 MiB where it took 879 MiB here (the test allows 700 MB
    of address space)."""
    import struct

    from tests.dng import Preview, dng_bytes

    body = bytearray(
        dng_bytes(
            photos.photo_like(3).resize((96, 64)),
            preview=Preview(Image.new("RGB", (48, 32)), jpeg=False),
        )
    )
    side = 12_000
    (ifd0,) = struct.unpack("<I", body[4:8])
    (count,) = struct.unpack("<H", body[ifd0 : ifd0 + 2])
    strip_at = 0
    for i in range(count):  # the preview's size and its strip: 12000x12000 RGB
        at = ifd0 + 2 + 12 * i
        tag = struct.unpack("<H", body[at : at + 2])[0]
        new = {256: side, 257: side, 278: side, 279: side * side * 3}.get(tag)
        if new is not None:
            body[at + 8 : at + 12] = struct.pack("<I", new)
        if tag == 273:
            (strip_at,) = struct.unpack("<I", body[at + 8 : at + 12])
    path = tmp_path / "huge-preview.dng"
    path.write_bytes(bytes(body))
    with open(path, "r+b") as f:  # the strip's bytes: a sparse hole
        f.truncate(max(len(body), strip_at + side * side * 3))

    done = subprocess.run(
        [sys.executable, "-c", _DECODE, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=memory_limit(700),
    )

    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 96  # the sensor's picture
