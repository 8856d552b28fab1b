"""Scan: which files are images, hidden and excluded names, symlink loops, raw byte paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imageclust_daemon.index import scan

EXT = scan.image_extensions(heif=False)


def _names(root: Path, **kw: object) -> list[str]:
    base = os.fsencode(root)
    return sorted(
        os.path.relpath(f.path, base).decode("utf-8", "backslashreplace")
        for f in scan.walk(base, EXT, **kw)  # type: ignore[arg-type]
    )


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_extensions_are_case_insensitive_and_non_images_are_skipped(tmp_path: Path) -> None:
    for name in ["a.jpg", "b.JPEG", "c.Png", "d.webp", "e.GIF", "f.bmp", "g.tif", "h.TIFF"]:
        _touch(tmp_path / name)
    for name in ["notes.txt", "movie.mp4", "noext", "x.jpg.part"]:
        _touch(tmp_path / name)
    assert _names(tmp_path) == [
        "a.jpg",
        "b.JPEG",
        "c.Png",
        "d.webp",
        "e.GIF",
        "f.bmp",
        "g.tif",
        "h.TIFF",
    ]


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    _touch(tmp_path / ".hidden.jpg")
    _touch(tmp_path / ".thumbnails" / "t.jpg")
    _touch(tmp_path / "seen" / "ok.jpg")
    assert _names(tmp_path) == ["seen/ok.jpg"]


def test_exclude_by_name_and_by_relative_path(tmp_path: Path) -> None:
    _touch(tmp_path / "Thumbnails" / "t.jpg")
    _touch(tmp_path / "Archive" / "2009" / "old.jpg")
    _touch(tmp_path / "Archive" / "2010" / "kept.jpg")
    _touch(tmp_path / "a" / "draft-1.jpg")
    _touch(tmp_path / "a" / "final.jpg")
    excluder = scan.Excluder(("Thumbnails", "Archive/2009", "draft-*"))
    assert _names(tmp_path, excluder=excluder) == ["Archive/2010/kept.jpg", "a/final.jpg"]


def test_symlink_loops_are_walked_once(tmp_path: Path) -> None:
    _touch(tmp_path / "a" / "one.jpg")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a -> root -> a -> ...
    os.symlink(tmp_path / "a", tmp_path / "a" / "self")
    found = _names(tmp_path)
    assert found == ["a/one.jpg"]


def test_symlinked_folder_outside_the_root_is_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _touch(outside / "x.jpg")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "linked")
    assert _names(root) == ["linked/x.jpg"]


def test_dangling_symlinks_and_folders_named_like_images_are_not_files(tmp_path: Path) -> None:
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "dangling.jpg")
    (tmp_path / "folder.jpg").mkdir()
    _touch(tmp_path / "folder.jpg" / "inner.png")
    assert _names(tmp_path) == ["folder.jpg/inner.png"]


def test_fifos_sockets_and_devices_named_like_images_are_listed_with_their_kind(
    tmp_path: Path,
) -> None:
    """They get a row (failed, with the reason): the README promises one for every
    image-like file. Listing them opens nothing (a FIFO would block)."""
    import socket

    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink("/dev/null", tmp_path / "device.png")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(tmp_path / "socket.jpg"))
        found = {os.path.basename(f.path): f.kind for f in scan.walk(os.fsencode(tmp_path), EXT)}
        assert found == {
            b"device.png": "a character device",
            b"pipe.jpg": "a FIFO",
            b"socket.jpg": "a socket",
        }


def test_non_utf8_names_are_kept_as_exact_bytes(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9-\xff.jpg"
    with open(raw, "wb") as f:
        f.write(b"x")
    (found,) = list(scan.walk(os.fsencode(tmp_path), EXT))
    assert found.path == raw
    assert os.path.exists(found.path)


def test_signature_is_size_mtime_inode_device(tmp_path: Path) -> None:
    _touch(tmp_path / "a.jpg", b"12345")
    (found,) = list(scan.walk(os.fsencode(tmp_path), EXT))
    st = os.stat(tmp_path / "a.jpg")
    assert found.signature == (5, st.st_mtime_ns, st.st_ino, st.st_dev)


def test_a_missing_root_is_reported_not_raised(tmp_path: Path) -> None:
    errors: list[tuple[bytes, str]] = []
    found = list(
        scan.walk(
            os.fsencode(tmp_path / "missing"), EXT, on_error=lambda p, r: errors.append((p, r))
        )
    )
    assert found == [] and len(errors) == 1 and "cannot open root" in errors[0][1]


def test_an_unreadable_folder_is_reported_and_the_walk_goes_on(tmp_path: Path) -> None:
    """Walks in a child process that, even as root, is refused a mode-0 folder."""
    _touch(tmp_path / "locked" / "x.jpg")
    _touch(tmp_path / "open" / "y.jpg")
    (tmp_path / "locked").chmod(0)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root without setpriv reads any folder")
        caps = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}"]
    code = (
        "import json, os, sys\n"
        "from imageclust_daemon.index import scan\n"
        "errors, lost = [], set()\n"
        "found = [os.fsdecode(f.path) for f in scan.walk(os.fsencode(sys.argv[1]), "
        "scan.image_extensions(False), on_error=lambda p, r: errors.append(r), "
        "unreachable=lost)]\n"
        "print(json.dumps([found, errors, sorted(map(os.fsdecode, lost))]))\n"
    )
    try:
        out = subprocess.run(
            [*prefix, sys.executable, "-c", code, str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        (tmp_path / "locked").chmod(0o755)
    found, errors, lost = json.loads(out.stdout)
    assert found == [str(tmp_path / "open" / "y.jpg")]
    assert len(errors) == 1 and "cannot list folder" in errors[0]
    assert lost == [str(tmp_path / "locked")], "what is under it is unknown, not gone"
