"""End to end: the real `imageclust` command over a generated library, with the tiny ONNX model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import photos
from tests.conftest import REPO, cli_json, run_cli


def _manifest(root: Path) -> dict[bytes, tuple[int, int, str]]:
    """Every file under root: (size, mtime_ns, sha256) — to prove the photos were never touched."""
    out = {}
    for folder, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            with open(path, "rb") as f:
                out[path] = (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return out


def build_library(root: Path) -> dict[str, int]:
    """Duplicates, odd formats, an EXIF-rotated JPEG and bad files; returns the expected counts."""
    good = root / "good"
    good.mkdir(parents=True)
    for i in range(6):
        photos.save_jpeg(photos.photo_like(i, scene=i % 3), good / f"IMG_{i:04d}.JPG")
    upright = photos.photo_like(100, size=(800, 600))
    photos.save_jpeg(
        photos.rotated_for_orientation(upright, 6),
        good / "rotated.jpg",
        orientation=6,
        taken_at="2024:06:01 14:30:00",
        offset="+02:00",
        gps=(48.8583, 2.2945),
    )
    odd = root / "odd formats"
    odd.mkdir()
    photos.save_cmyk_jpeg(photos.photo_like(200), odd / "cmyk.jpg")
    photos.save_png16(photos.photo_like(201), odd / "deep.png")
    photos.save_palette_png(photos.photo_like(202), odd / "palette.png", transparency=True)
    photos.save_rgba_png(photos.photo_like(203), odd / "alpha.PNG")
    photos.save_animated_gif(photos.photo_like(204), odd / "anim.gif")
    photos.save_webp(photos.photo_like(206), odd / "w.webp")
    photos.save_bmp(photos.photo_like(207), odd / "b.bmp")
    photos.save_tiff(photos.photo_like(208), odd / "t.tiff")
    distinct_good = 6 + 1 + 8

    dups = root / "copies"
    dups.mkdir()
    shutil.copyfile(good / "IMG_0000.JPG", dups / "IMG_0000 (copy).JPG")
    shutil.copyfile(good / "IMG_0001.JPG", dups / "another name.jpeg")
    with open(os.fsencode(dups) + b"/caf\xe9-\xff.jpg", "wb") as f:  # not valid UTF-8
        f.write((good / "IMG_0002.JPG").read_bytes())

    bad = root / "bad"
    bad.mkdir()
    photos.write_empty(bad / "empty.jpg")
    photos.write_truncated_jpeg(bad / "truncated.jpg", seed=300)
    photos.write_text_as_jpg(bad / "notes.jpg")
    photos.write_png_bomb(bad / "bomb.png")
    photos.write_corrupt_jpeg(bad / "corrupt.jpg")
    n_bad = 5

    # not indexed: hidden, excluded, not an image
    photos.save_jpeg(photos.photo_like(400), root / ".hidden.jpg")
    (root / "skipme").mkdir()
    photos.save_jpeg(photos.photo_like(401), root / "skipme" / "x.jpg")
    (root / "notes.txt").write_text("not a photo")
    return {
        "files": distinct_good + 3 + n_bad,
        "contents": distinct_good + n_bad,
        "failed": n_bad,
        "embedded": distinct_good,
    }


EXCLUDE = {"exclude": ["skipme"]}


@pytest.fixture
def library(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    root = tmp_path / "Photos"
    expected = build_library(root)
    yield root, expected


def _index(config: Path, *paths: Path) -> dict[str, int]:
    return cli_json(config, "index", *map(str, paths))  # type: ignore[no-any-return]


def _status(config: Path) -> dict[str, object]:
    return cli_json(config, "status")  # type: ignore[no-any-return]


def test_index_counts_rescan_reads_nothing_and_moves_embed_nothing(
    library: tuple[Path, dict[str, int]],
    make_config,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    root, expected = library
    config = make_config(library=EXCLUDE)
    before = _manifest(root)

    first = _index(config, root)
    assert first["embedded"] == expected["embedded"]
    assert first["failed"] == expected["failed"]
    assert first["reused"] == 3  # the three copies cost a hash, not an inference
    assert first["scanned"] == expected["files"]

    status = _status(config)
    for key in ("files", "contents", "failed", "embedded"):
        assert status[key] == expected[key], key
    assert status["pending"] == 0
    assert status["undecodable"] == expected["failed"] and status["unreadable"] == 0

    second = _index(config, root)
    assert second["bytes_read"] == 0 and second["hashed"] == 0, "an unchanged rescan reads nothing"
    assert second["unchanged"] == expected["files"]
    assert second["embedded"] == 0

    # Move a folder (a rename keeps inodes): nothing is read, nothing embedded.
    os.rename(root / "good", root / "renamed")
    moved = _index(config, root)
    assert moved["moved"] == 7 and moved["gone"] == 7
    assert moved["bytes_read"] == 0 and moved["embedded"] == 0
    # Copy a folder: the copies are read and hashed, but reuse the embeddings.
    shutil.copytree(root / "odd formats", root / "odd copy")
    copied = _index(config, root)
    assert copied["hashed"] == 8 and copied["embedded"] == 0 and copied["reused"] == 8
    after = _status(config)
    assert after["files"] == expected["files"] + 8
    assert after["contents"] == expected["contents"]

    del before  # the library changed by our own hand; test_photos_are_never_modified checks it


def test_photos_are_never_modified(library: tuple[Path, dict[str, int]], make_config) -> None:  # type: ignore[no-untyped-def]
    root, _expected = library
    before = _manifest(root)
    config = make_config()
    _index(config, root)
    _index(config, root)
    assert _manifest(root) == before


def test_metadata_of_the_rotated_photo(
    library: tuple[Path, dict[str, int]], make_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    root, _ = library
    config = make_config()
    _index(config, root)
    db = sqlite3.connect(tmp_path / "data" / "state.sqlite")
    try:
        row = db.execute(
            "SELECT c.width, c.height, c.taken_at, c.lat, c.lon FROM files f "
            "JOIN contents c ON c.hash = f.content_hash WHERE f.path = ?",
            (os.fsencode(root / "good" / "rotated.jpg"),),
        ).fetchone()
        reasons = dict(
            db.execute(
                "SELECT f.path, c.error FROM files f JOIN contents c ON c.hash = f.content_hash "
                "WHERE c.error IS NOT NULL"
            ).fetchall()
        )
    finally:
        db.close()
    assert row[:3] == (800, 600, "2024-06-01T14:30:00+02:00")
    assert row[3] == pytest.approx(48.8583, abs=1e-5) and row[4] == pytest.approx(2.2945, abs=1e-5)
    by_name = {os.path.basename(p).decode(): r for p, r in reasons.items()}
    assert "empty" in by_name["empty.jpg"]
    assert "truncated" in by_name["truncated.jpg"]
    assert "not an image" in by_name["notes.jpg"]
    assert "bomb" in by_name["bomb.png"]
    assert set(by_name) == {"empty.jpg", "truncated.jpg", "notes.jpg", "bomb.png", "corrupt.jpg"}


def test_an_interrupted_run_is_finished_by_the_next(
    library: tuple[Path, dict[str, int]], make_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Contents recorded without an embedding (a crash between batches) are embedded next run."""
    root, expected = library
    config = make_config(library=EXCLUDE)
    _index(config, root)
    db = sqlite3.connect(tmp_path / "data" / "state.sqlite")
    victims = [h for (h,) in db.execute("SELECT content_hash FROM embeddings LIMIT 4")]
    db.executemany("DELETE FROM embeddings WHERE content_hash = ?", [(h,) for h in victims])
    db.commit()
    db.close()
    assert _status(config)["pending"] == 4
    again = _index(config, root)
    assert again["embedded"] == 4
    assert _status(config)["embedded"] == expected["embedded"]


def test_index_path_outside_the_roots_warns_and_a_full_rescan_forgets_it(
    library: tuple[Path, dict[str, int]], make_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    root, expected = library
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    photos.save_jpeg(photos.photo_like(9), elsewhere / "kept.jpg")
    outside = make_config(library={"roots": [str(elsewhere)], **EXCLUDE})
    result = run_cli("--config", str(outside), "index", "--json", str(root))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["embedded"] == expected["embedded"]
    assert f"{root} is not under library.roots ({outside})" in result.stderr
    assert _status(outside)["files"] == expected["files"]
    full = _index(outside)  # the library is library.roots: the one-off folder leaves it
    assert full["gone"] == expected["files"] and full["embedded"] == 1
    assert _status(outside)["files"] == 1
    inside = make_config(library={"roots": [str(root.parent)], **EXCLUDE})
    result = run_cli("--config", str(inside), "index", "--json", str(root))
    assert result.returncode == 0, result.stderr
    assert "library.roots" not in result.stderr


def test_a_root_removed_from_the_config_leaves_the_library(tmp_path: Path, make_config) -> None:  # type: ignore[no-untyped-def]
    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    kept.mkdir()
    dropped.mkdir()
    for i in range(3):
        photos.save_jpeg(photos.photo_like(i), kept / f"{i}.jpg")
        photos.save_jpeg(photos.photo_like(i + 3), dropped / f"{i}.jpg")
    both = make_config([kept, dropped])
    assert _index(both)["embedded"] == 6
    one = make_config([kept])
    report = _index(one)
    assert report["gone"] == 3 and report["bytes_read"] == 0
    assert _status(one)["files"] == 3
    rows = cli_json(one, "query", "SELECT path FROM photos")
    assert {os.path.dirname(r["path"]) for r in rows} == {str(kept)}
    both = make_config([kept, dropped])  # put back: known by their signatures
    again = _index(both)
    assert again["embedded"] == 0 and again["bytes_read"] == 0 and again["returned"] == 3
    assert _status(both)["files"] == 6


def test_onnx_runtime_telemetry_is_off(
    library: tuple[Path, dict[str, int]], make_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """ONNX Runtime >= 1.29 writes a device id and queues usage events for Microsoft
    unless ORT_DISABLE_TELEMETRY is set; imageclust sets it for itself."""
    root, expected = library
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    config = make_config(library={"roots": [str(root)], **EXCLUDE})
    result = subprocess.run(
        [sys.executable, "-m", "imageclust_daemon", "--config", str(config), "index", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["embedded"] == expected["embedded"]
    left = [str(p.relative_to(home)) for p in home.rglob("*")] if home.exists() else []
    assert not [p for p in left if "Microsoft" in p or "onnxruntime" in p], left


def test_missing_model_is_a_clear_error(
    library: tuple[Path, dict[str, int]], make_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    root, _ = library
    config = make_config(model={"path": str(tmp_path / "nope.onnx")})
    result = run_cli("--config", str(config), "index", str(root))
    assert result.returncode == 1
    assert str(tmp_path / "nope.onnx") in result.stderr
    assert "imageclust models download" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unusable_data_dir_is_a_message_not_a_traceback(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    root = tmp_path / "photos"
    root.mkdir()
    config = make_config(roots=[root], storage={"data_dir": str(blocker / "data")})
    result = run_cli("--config", str(config), "index")
    assert result.returncode == 1
    assert "Not a directory" in result.stderr and "Traceback" not in result.stderr
    status = run_cli("--config", str(config), "status")  # reads only: nothing there yet
    assert status.returncode == 0 and "files        0" in status.stdout, status.stderr


def test_command_line_mistakes_say_what_is_wrong(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = make_config()
    missing = run_cli("--config", str(config), "index", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"PATH {tmp_path / 'nope'}: no such folder" in missing.stderr
    from_env = run_cli("status", env={"IMAGECLUST_CONFIG": str(tmp_path / "gone.toml")})
    assert from_env.returncode == 2
    assert "$IMAGECLUST_CONFIG: file not found" in from_env.stderr
    lower = run_cli("--log-level", "debug", "--config", str(config), "status")
    assert lower.returncode == 0, lower.stderr
    after = run_cli("status", "--json", "--config", str(config))  # options after the command
    assert after.returncode == 0 and json.loads(after.stdout)["files"] == 0, after.stderr


def test_bad_config_names_the_key(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(cluster={"max_size": -3})
    result = run_cli("--config", str(config), "status")
    assert result.returncode == 2
    assert "cluster.max_size" in result.stderr and "Traceback" not in result.stderr


def test_config_from_environment_variable(
    library: tuple[Path, dict[str, int]], make_config
) -> None:  # type: ignore[no-untyped-def]
    root, expected = library
    config = make_config(library={"roots": [str(root)], **EXCLUDE})
    result = run_cli("index", "--json", env={"IMAGECLUST_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["embedded"] == expected["embedded"]


def _without_root_privileges() -> tuple[str, ...]:
    """A command prefix under which even root gets "permission denied" on a mode-0 file."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without util-linux's setpriv to drop CAP_DAC_OVERRIDE")
    caps = "-dac_override,-dac_read_search"
    return (setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}")


def test_unreadable_file_is_recorded_and_the_run_goes_on(tmp_path: Path, make_config) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "photos"
    root.mkdir()
    photos.save_jpeg(photos.photo_like(1), root / "ok.jpg")
    photos.save_jpeg(photos.photo_like(2), root / "locked.jpg")
    (root / "locked.jpg").chmod(0)
    config = make_config()
    prefix = _without_root_privileges()
    result = run_cli("--config", str(config), "index", "--json", str(root), prefix=prefix)
    assert result.returncode == 0, result.stderr
    assert "locked.jpg" in result.stderr and "ermission denied" in result.stderr
    report = json.loads(result.stdout)
    assert report["failed"] == 1 and report["embedded"] == 1
    status = _status(config)
    assert status["files"] == 2 and status["unreadable"] == 1 and status["failed"] == 1
    # Readable again: the next run picks it up.
    (root / "locked.jpg").chmod(0o644)
    assert _index(config, root)["embedded"] == 1
    assert _status(config)["failed"] == 0


def test_the_summary_counts_failures_left_from_earlier_runs_and_status_says_what_next(
    make_config,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        photos.save_jpeg(photos.photo_like(i), root / f"IMG_{i}.jpg")
    photos.write_truncated_jpeg(root / "broken.jpg")
    config = make_config(roots=[root])
    first = run_cli("--config", str(config), "index", "--no-progress")
    assert ", 1 failed, " in first.stdout, first.stdout
    photos.save_jpeg(photos.photo_like(9), root / "IMG_9.jpg")

    second = run_cli("--config", str(config), "index", "--no-progress")

    assert "0 failed (1 failed in the library)" in second.stdout, second.stdout
    assert "failed photos and why: imageclust query" in second.stdout
    status = run_cli("--config", str(config), "status")
    assert "clusters     0 (group the photos with: imageclust recluster)" in status.stdout


def test_heic_photos_this_install_cannot_read_are_counted_with_how_to_read_them(
    make_config,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """pi-heif is a core dependency; where it cannot load (a broken install, simulated
    here by modules that refuse to import), HEIC files are counted with what to do."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("pi_heif", "pillow_heif"):
        (broken / f"{name}.py").write_text("raise ImportError('simulated: cannot load')\n")
    env = {"PYTHONPATH": f"{broken}{os.pathsep}{REPO}"}
    root = tmp_path / "photos"
    root.mkdir()
    photos.save_jpeg(photos.photo_like(1), root / "IMG_1.jpg")
    for name in ("IMG_2.HEIC", "IMG_3.heic", "IMG_4.heif"):
        (root / name).write_bytes(b"\x00\x00\x00\x18ftypheic")
    config = make_config(roots=[root])

    done = run_cli("--config", str(config), "index", "--no-progress", env=env)

    assert done.returncode == 0, done.stderr
    assert "3 HEIC/HEIF photos not read: pi-heif does not load here" in done.stdout
    (root / "inner").mkdir()
    (root / "IMG_3.heic").rename(root / "inner" / "IMG_3.heic")
    both = run_cli(
        "--config", str(config), "index", "--no-progress", str(root), str(root / "inner"), env=env
    )
    assert "3 HEIC/HEIF photos not read" in both.stdout, both.stdout  # each counted once


def test_status_reads_a_data_dir_it_cannot_write_and_changes_nothing(
    make_config,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The same counts from a copy of the data dir that cannot be written: mounted
    read-only when the tests run as root (root ignores file modes), else made read-only."""
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(4):
        photos.save_jpeg(photos.photo_like(i), root / f"IMG_{i}.jpg")
    photos.write_truncated_jpeg(root / "broken.jpg")
    config = make_config(roots=[root])
    assert run_cli("--config", str(config), "index", "--no-progress").returncode == 0
    original = cli_json(config, "status")
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "data", copy)
    before = _manifest(copy)
    ro_config = make_config(roots=[root], storage={"data_dir": str(copy)})
    mounted = False
    if os.geteuid() == 0:
        bind = subprocess.run(["mount", "--bind", str(copy), str(copy)], capture_output=True)
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(copy)], capture_output=True)
        mounted = bind.returncode == 0 and remount.returncode == 0
        if not mounted:
            if bind.returncode == 0:
                subprocess.run(["umount", str(copy)], check=False)
            pytest.skip("needs a read-only bind mount (root in a sandbox that allows mounts)")
    else:
        for folder, _dirs, files in os.walk(copy):
            os.chmod(folder, 0o555)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o444)
    try:
        probe = copy / "probe"
        with pytest.raises(OSError):
            probe.write_bytes(b"x")  # truly unwritable
        done = run_cli("--config", str(ro_config), "status", "--json")
    finally:
        if mounted:
            subprocess.run(["umount", str(copy)], check=False)
        else:
            for folder, _dirs, _files in os.walk(copy):
                os.chmod(folder, 0o755)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert {k: v for k, v in seen.items() if k != "database"} == {
        k: v for k, v in original.items() if k != "database"
    }
    assert _manifest(copy) == before  # not a byte written, no file made


def test_status_before_the_first_index_names_a_model_file_that_is_there(
    make_config,  # type: ignore[no-untyped-def]
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    """Before: with model.path at a file that exists, `status` said the model was
    "not downloaded (imageclust models download)"."""
    config = make_config([tmp_path])
    done = run_cli("--config", str(config), "status")
    assert done.returncode == 0, done.stderr
    assert "not downloaded" not in done.stdout
    assert f"{tiny_model} (not used yet: imageclust index)" in done.stdout
    gone = make_config([tmp_path], model={"path": str(tmp_path / "nowhere.onnx")})
    assert "not downloaded" in run_cli("--config", str(gone), "status").stdout
