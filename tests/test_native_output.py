"""What C libraries write to stderr while a photo is decoded becomes log lines naming it
(native_output): real C writes (libc's write(2, ...) and libtiff's own messages), real
threads, a real dead process's leftovers, and the real `imageclust index`."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image, TiffImagePlugin

from imageclust_daemon import native_output
from tests import photos
from tests.conftest import library_config, run_cli

LIBC = ctypes.CDLL(None)
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+: ")


def c_stderr(text: str) -> None:
    """`text` written to descriptor 2 by C code, as LibRaw's fprintf(stderr, ...) does."""
    data = text.encode()
    assert LIBC.write(2, data, len(data)) == len(data)


def test_a_c_librarys_line_during_a_decode_names_the_photo(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imageclust.libraries")
    with native_output.captured(tmp_path):
        with native_output.reading("/photos/IMG_1.CR2"):
            c_stderr("unknown file: data corrupted at 1378\n")
        c_stderr("written outside any decode\n")
    records = [r.getMessage() for r in caplog.records if r.name == "imageclust.libraries"]
    assert records == ["/photos/IMG_1.CR2: a library wrote: unknown file: data corrupted at 1378"]
    err = capfd.readouterr().err
    assert "written outside any decode" in err  # descriptor 2 restored after the decode
    assert "data corrupted" not in err.replace(records[0], "")  # not as a raw line too
    assert not list(tmp_path.glob("stderr.*.capture"))  # removed at the end


def test_two_decodes_at_once_are_both_named_and_only_then(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imageclust.libraries")
    a_open, b_open, b_done = threading.Event(), threading.Event(), threading.Event()

    def decode_b() -> None:
        a_open.wait(5)
        with native_output.reading("b.NEF"):
            b_open.set()
            b_done.wait(5)

    with native_output.captured(tmp_path):
        other = threading.Thread(target=decode_b)
        other.start()
        with native_output.reading("a.CR2"):
            c_stderr("only a\n")
            a_open.set()
            assert b_open.wait(5)
            c_stderr("a and b\n")
            b_done.set()
            other.join(5)
            c_stderr("a again\n")
    messages = sorted(r.getMessage() for r in caplog.records if "a library wrote" in r.message)
    assert messages == [
        "a.CR2 or b.NEF: a library wrote: a and b",
        "a.CR2: a library wrote: a again",
        "a.CR2: a library wrote: only a",
    ]


def test_a_log_line_written_during_a_decode_goes_out_as_it_was(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    line = "2026-12-07 06:01:02,345 WARNING imageclust.jobs: another thread's line"
    with native_output.captured(tmp_path), native_output.reading("x.jpg"):
        c_stderr(line + "\n")
    assert capfd.readouterr().err.splitlines() == [line]


def test_what_a_dead_process_captured_is_logged_by_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(done.stdout)  # a process that has ended
    (tmp_path / f"stderr.{pid}.capture").write_bytes(b"double free or corruption (!prev)\n")
    with native_output.captured(tmp_path):
        pass
    assert f"process {pid} ended during a decode; it had written: double free or corruption" in (
        caplog.text
    )
    assert not list(tmp_path.glob("stderr.*.capture"))


def _libtiff_webp_tiff(path: Path) -> Path:
    """A TIFF whose Compression tag says WebP (50001): Pillow hands it to libtiff, which
    this build has without WebP, and which says so on stderr itself."""
    image = photos.photo_like(6, (64, 48))
    info = TiffImagePlugin.ImageFileDirectory_v2()
    image.save(path, compression="tiff_lzw", tiffinfo=info)
    data = bytearray(path.read_bytes())
    with Image.open(path) as opened:
        assert opened.info["compression"] == "tiff_lzw"
    # the Compression entry (tag 259, type SHORT, count 1) of the little-endian IFD
    entry = data.find(b"\x03\x01\x03\x00\x01\x00\x00\x00\x05\x00")
    assert entry > 0
    data[entry + 8 : entry + 10] = (50001).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


def test_index_stderr_holds_only_log_lines_and_names_the_photo(
    tmp_path: Path, tiny_model: Path, text_files: dict[str, Path]
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    photos.save_jpeg(photos.photo_like(1), root / "fine.jpg")
    odd = _libtiff_webp_tiff(root / "scan.tif")
    cfg = library_config(tmp_path, root, tiny_model, text_files)
    done = run_cli("--config", str(cfg), "--log-level", "INFO", "index")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and all(LOG_LINE.match(line) for line in lines), done.stderr
    assert any(
        f"{odd}: a library wrote: " in line and "WEBP compression" in line for line in lines
    ), done.stderr
    failed = run_cli(
        "--config", str(cfg), "query", "SELECT error FROM photos WHERE status = 'failed'"
    )
    assert "cannot decode this TIFF's webp-compressed image data" in failed.stdout, failed


CHILD = """
import ctypes, logging, sys, tempfile
from pathlib import Path
from imageclust_daemon import logs, native_output
logs.configure_logging(sys.argv[1])
with native_output.captured(Path(tempfile.mkdtemp())) as capture:
    with native_output.reading("/photos/IMG_2.CR2"):
        logging.getLogger("imageclust.jobs").warning("a warning of ours, mid-decode")
        sys.stderr.write("\\rindexing:  40%|####      | 4/10\\r")
        ctypes.CDLL(None).write(2, b"unknown file: data corrupted at 99\\n", 35)
    print(capture.path.stat().st_size)
"""


@pytest.mark.parametrize("level", ["WARNING", "INFO"])
def test_pythons_own_writes_during_a_decode_are_not_taken_for_a_librarys(level: str) -> None:
    """Before: a warning logged (or a progress bar drawn) while a decode ran went to the
    capture file too, came back as INFO 'a library wrote: ...' and was hidden at the
    default level."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, level], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    ours = [line for line in lines if "a warning of ours" in line]
    assert len(ours) == 1 and "a library wrote" not in ours[0], done.stderr
    assert any(line.startswith("indexing:") for line in lines)  # the bar, as drawn
    library = [line for line in lines if "a library wrote" in line]
    if level == "INFO":
        assert (
            len(library) == 1 and "/photos/IMG_2.CR2: a library wrote: unknown file" in (library[0])
        )
    else:
        assert library == []
    assert done.stdout.strip() == "0"  # nothing in flight: the file starts again empty


def test_a_decode_that_outlives_the_capture_changes_nothing(tmp_path: Path) -> None:
    with native_output.captured(tmp_path) as capture:
        window = capture.enter("late.jpg")
        # the capture closes while that decode is still under way (a daemon thread)
    before = os.fstat(2)
    capture.leave(window)
    after = os.fstat(2)
    assert (before.st_ino, before.st_dev) == (after.st_ino, after.st_dev)
    with native_output.reading("after.jpg"):  # no capture on: nothing happens
        c_stderr("")
