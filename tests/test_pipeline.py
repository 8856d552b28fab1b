"""Pipeline stages in isolation: the plan (pure), one file's preparation, offline roots."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import blake3
import pytest
from PIL import Image

from imageclust_daemon.index import pipeline, presence, scan
from imageclust_daemon.index.pipeline import Claims, plan, prepare
from imageclust_daemon.model import manifest, models
from imageclust_daemon.records import FileStat, IndexReport, KnownFile, Preprocessing
from imageclust_daemon.state.store import Store
from tests import photos
from tests.conftest import cli_json, run_cli


def _stat(path: bytes, inode: int, size: int = 10, mtime: int = 5) -> FileStat:
    return FileStat(path, size, mtime, inode, 1)


def _known(f: FileStat, content: str = "h", live: bool = True, **kw: object) -> KnownFile:
    return KnownFile(f.signature, content, live, None, **kw)  # type: ignore[arg-type]


def test_plan_sorts_files_by_the_work_they_need() -> None:
    same = _stat(b"/r/same.jpg", 1)
    edited = _stat(b"/r/edited.jpg", 2)
    moved_from, moved_to = _stat(b"/r/a/x.jpg", 3), _stat(b"/r/b/x.jpg", 3)
    deleted = _stat(b"/r/deleted.jpg", 4)
    back = _stat(b"/r/back.jpg", 5)
    new = _stat(b"/r/new.jpg", 6)
    known = {
        same.path: _known(same, "h1"),
        edited.path: _known(_stat(edited.path, 2, size=99), "h2"),
        moved_from.path: _known(moved_from, "h3"),
        deleted.path: _known(deleted, "h4"),
        back.path: _known(back, "h5", live=False),
    }
    p = plan([same, edited, moved_to, back, new], known)
    assert p.unchanged == 1
    assert sorted(f.path for f in p.to_read) == [edited.path, new.path]
    assert {(r.stat.path, r.content_hash) for r in p.known_again} == {
        (moved_to.path, "h3"),
        (back.path, "h5"),
    }
    assert p.moved == 1
    assert sorted(p.gone) == [moved_from.path, deleted.path]
    assert p.offline == [] and p.online == []


def test_plan_keeps_files_under_unreachable_folders_offline() -> None:
    here = _stat(b"/r/ok/a.jpg", 1)
    away = _stat(b"/r/nas/b.jpg", 2)
    sibling = _stat(b"/r/nas2/c.jpg", 3)  # same prefix, different folder: really gone
    returning = _stat(b"/r/ok/d.jpg", 4)
    known = {
        here.path: _known(here),
        away.path: _known(away),
        sibling.path: _known(sibling),
        returning.path: _known(returning, offline=True),
    }
    p = plan([here, returning], known, unreachable={b"/r/nas"})
    assert p.offline == [away.path]
    assert p.gone == [sibling.path]
    assert p.online == [returning.path]


def test_a_photo_that_fails_keeps_the_format_its_bytes_say(tmp_path: Path) -> None:
    """Before: failed rows had no `photos.format`, though the bytes were recognised."""
    whole = photos.jpeg_bytes(photos.photo_like(2))
    path = tmp_path / "half.jpg"
    path.write_bytes(whole[: len(whole) // 2])
    st = os.stat(path)
    stat = FileStat(os.fsencode(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    done = prepare(stat, Claims(set()), Preprocessing())
    assert done.content is not None and done.content.error is not None
    assert done.content.format == "JPEG"
    with Store.open(tmp_path / "s.sqlite") as store:
        store.record([done.content], [done.file], [], "m")
        assert store.conn.execute("SELECT format FROM contents").fetchone() == ("JPEG",)


def test_prepare_hashes_decodes_and_reports_vanished_files(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    photos.save_jpeg(photos.photo_like(1), path)
    raw = os.fsencode(path)
    st = os.stat(path)
    stat = FileStat(raw, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    claims = Claims(set())
    first = prepare(stat, claims, Preprocessing())
    assert first.file.content_hash == blake3.blake3(path.read_bytes()).hexdigest()
    assert first.pixels is not None and first.pixels.shape == (3, 224, 224)
    assert first.content is not None and first.content.meta is not None
    again = prepare(stat, claims, Preprocessing())  # a duplicate: hashed, not decoded
    assert again.pixels is None and again.content is not None and not again.content.decoded
    path.unlink()
    gone = prepare(stat, claims, Preprocessing())
    assert gone.vanished and gone.file.error == "vanished while being indexed"


def test_a_file_replaced_by_a_fifo_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    os.mkfifo(path)
    result = prepare(FileStat(os.fsencode(path), 1, 1, 1, 1), Claims(set()), Preprocessing())
    assert result.file.error == "not a regular file any more"


def test_a_large_photo_is_hashed_in_chunks_and_decoded_from_the_file(tmp_path: Path) -> None:
    """A 67.5 MB BMP: over the whole-read limit (64 MB), still hashed and embedded."""
    path = tmp_path / "big.bmp"
    Image.new("RGB", (5000, 4500), (200, 120, 40)).save(path)
    assert path.stat().st_size > 64 << 20
    st = os.stat(path)
    stat = FileStat(os.fsencode(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    result = prepare(stat, Claims(set()), Preprocessing())
    digest = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert result.file.content_hash == digest.hexdigest()
    assert result.bytes_read == st.st_size
    assert result.pixels is not None and result.content is not None
    assert result.content.meta is not None and result.content.meta.width == 5000


def _index(config: Path) -> dict[str, int]:
    return cli_json(config, "index")  # type: ignore[no-any-return]


def _status(config: Path) -> dict[str, int]:
    return cli_json(config, "status")  # type: ignore[no-any-return]


def test_a_missing_or_empty_root_marks_photos_offline_not_gone(
    tmp_path: Path,
    make_config,  # type: ignore[no-untyped-def]
) -> None:
    root = tmp_path / "drive"
    root.mkdir()
    for i in range(4):
        photos.save_jpeg(photos.photo_like(i), root / f"{i}.jpg")
    config = make_config([root])
    assert _index(config)["embedded"] == 4

    parked = tmp_path / "parked"
    root.rename(parked)  # unmounted: the folder is gone
    result = run_cli("--config", str(config), "index", "--json")
    assert result.returncode == 0
    assert "kept as offline, not deleted" in result.stderr
    report = json.loads(result.stdout)
    assert report["gone"] == 0 and report["offline"] == 4
    status = _status(config)
    assert status["files"] == 4 and status["offline"] == 4

    root.mkdir()  # the empty mount point is back, without the drive
    assert _index(config)["gone"] == 0
    assert _status(config)["offline"] == 4

    root.rmdir()
    parked.rename(root)  # the drive is back: online again, nothing read
    back = _index(config)
    assert back["bytes_read"] == 0 and back["unchanged"] == 4
    status = _status(config)
    assert status["offline"] == 0 and status["files"] == 4 and status["embedded"] == 4


def test_a_root_the_watcher_reports_deleted_is_offline_but_a_subfolder_is_gone(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A polled share unmounted sends DirDeletedEvent(root): its photos must not be purged."""
    root = tmp_path / "share"
    (root / "sub").mkdir(parents=True)
    for i in range(4):
        photos.save_jpeg(photos.photo_like(i), root / ("sub" if i % 2 else ".") / f"{i}.jpg")
    spec = manifest.load_manifest()["clip-vit-b32"]
    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)

        def index(only: list[Path] | None = None) -> IndexReport:
            return pipeline.index(
                [os.fsencode(root)],
                store=store,
                model=loaded,
                only=None if only is None else [os.fsencode(p) for p in only],
            )

        assert index().embedded == 4
        root.rename(tmp_path / "parked")
        away = index(only=[root])
        assert (away.gone, away.offline) == (0, 4)
        (tmp_path / "parked").rename(root)
        back = index(only=[root])
        assert (back.gone, back.offline, back.bytes_read) == (0, 0, 0)
        for name in os.listdir(root / "sub"):
            os.unlink(root / "sub" / name)
        (root / "sub").rmdir()
        deleted = index(only=[root / "sub"])
        assert (deleted.gone, deleted.offline) == (2, 0)


def test_a_photo_dated_in_the_future_is_read_not_deferred_forever(
    tmp_path: Path, tiny_model: Path
) -> None:
    """settle_seconds defers files modified just now; a wrong camera clock is not "just now"."""
    root = tmp_path / "card"
    root.mkdir()
    future, fresh = root / "future.jpg", root / "fresh.jpg"
    photos.save_jpeg(photos.photo_like(1), future)
    photos.save_jpeg(photos.photo_like(2), fresh)
    tomorrow = time.time() + 86_400
    os.utime(future, (tomorrow, tomorrow))
    deferred: list[bytes] = []
    spec = manifest.load_manifest()["clip-vit-b32"]
    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        report = pipeline.index(
            [os.fsencode(root)],
            store=store,
            model=loaded,
            options=pipeline.IndexOptions(settle_seconds=30),
            on_defer=deferred.extend,
        )
    assert report.embedded == 1
    assert deferred == [os.fsencode(fresh)]


def _photos(folder: Path, n: int, first: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        photos.save_jpeg(photos.photo_like(i, size=(64, 48)), folder / f"{i}.jpg")


def test_a_drive_unmounted_inside_a_root_keeps_its_photos_offline(
    tmp_path: Path,
    make_config,  # type: ignore[no-untyped-def]
) -> None:
    """The empty mount point a drive leaves under a root: the folder above the missing
    photos is now on another device than they were. (The mount is simulated by the
    device the state remembers for them: mounting needs privileges tests lack.)"""
    root = tmp_path / "Photos"
    _photos(root, 2)
    _photos(root / "nas", 6, first=2)
    config = make_config([root])
    assert _index(config)["embedded"] == 8
    state = sqlite3.connect(tmp_path / "data" / "state.sqlite")
    with state:
        state.execute(  # as if nas/ had been another filesystem's mount point
            "UPDATE files SET device = 987654321 WHERE path >= ? AND path < ?",
            (os.fsencode(root / "nas") + b"/", os.fsencode(root / "nas") + b"0"),
        )
    state.close()
    for name in os.listdir(root / "nas"):
        os.unlink(root / "nas" / name)  # unmounted: the mount point is an empty folder
    result = run_cli("--config", str(config), "index", "--json")
    report = json.loads(result.stdout)
    assert (report["gone"], report["offline"]) == (0, 6), result.stderr
    assert "is not mounted" in result.stderr
    os.unlink(root / "0.jpg")  # a photo deleted on the root's own filesystem is gone
    assert _index(config)["gone"] == 1


def test_many_photos_vanishing_at_once_are_kept_offline_until_confirmed(
    tmp_path: Path,
    make_config,  # type: ignore[no-untyped-def]
) -> None:
    root = tmp_path / "Photos"
    _photos(root / "a", 60)
    _photos(root / "b", 30, first=60)
    config = make_config([root])
    assert _index(config)["embedded"] == 90
    for name in os.listdir(root / "a"):
        os.unlink(root / "a" / name)
    result = run_cli("--config", str(config), "index", "--json")
    report = json.loads(result.stdout)
    assert (report["gone"], report["offline"]) == (0, 60), result.stderr
    assert "60 of the 90 photos" in result.stderr and "--forget-missing" in result.stderr
    confirmed = cli_json(config, "index", "--forget-missing")
    assert (confirmed["gone"], confirmed["offline"]) == (60, 0)
    assert _status(config)["files"] == 30
    for name in sorted(os.listdir(root / "b"))[:5]:  # a few at a time: just deleted
        os.unlink(root / "b" / name)
    assert _index(config)["gone"] == 5


def test_a_photo_that_cannot_be_statted_is_offline_not_gone(
    tmp_path: Path,
    make_config,  # type: ignore[no-untyped-def]
) -> None:
    """A folder that lists but whose entries cannot be looked at (EACCES here; EIO or
    ESTALE on a flaky share): what is in it is unknown, not deleted."""
    root = tmp_path / "Photos"
    _photos(root, 2)
    _photos(root / "flaky", 3, first=2)
    config = make_config([root])
    assert _index(config)["embedded"] == 5
    (root / "flaky").chmod(0o644)  # readable (listable) but not searchable: stat fails
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root without setpriv can stat anything")
        caps = "-dac_override,-dac_read_search"
        prefix = (setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}")
    try:
        result = run_cli("--config", str(config), "index", "--json", prefix=prefix)
        forced = run_cli(
            "--config", str(config), "index", "--json", "--forget-missing", prefix=prefix
        )
    finally:
        (root / "flaky").chmod(0o755)
    report = json.loads(result.stdout)
    assert (report["gone"], report["offline"]) == (0, 3), result.stderr
    forced_report = json.loads(forced.stdout)  # unreadable is unknown, not missing
    assert (forced_report["gone"], forced_report["offline"]) == (0, 3), forced.stderr


def _index_in_process(
    store: Store, loaded: models.LoadedModel, roots: list[Path], **kwargs: object
) -> IndexReport:
    return pipeline.index(
        [os.fsencode(r) for r in roots],
        store=store,
        model=loaded,
        whole_library=True,
        **kwargs,  # type: ignore[arg-type]
    )


def test_out_of_file_descriptors_stops_the_run_and_marks_nothing(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE is this process's shortage, not a fact about the disk: before, a gallery
    drowned in half-sent requests took the descriptors and the indexer marked 25 photos
    offline. Now the scan or the read that meets it stops the run; nothing is offline,
    gone or failed, and the next run (descriptors back) finds everything as it was."""
    root = tmp_path / "Photos"
    _photos(root / "a", 3)
    _photos(root / "b", 3, first=3)
    spec = manifest.load_manifest()["clip-vit-b32"]
    real_scandir, real_open = os.scandir, os.open

    def scandir(path: Any) -> Any:
        if os.fsdecode(path).endswith("/b"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_scandir(path)

    def open_(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fsdecode(path).endswith("9.jpg"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, *args, **kwargs)

    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        assert _index_in_process(store, loaded, [root]).embedded == 6
        (root / "a" / "0.jpg").touch()  # something to read on the runs that fail
        for name, fake in (("scandir", scandir), ("open", open_)):
            with monkeypatch.context() as patched:
                patched.setattr(os, name, fake)
                if name == "open":  # the read of a new photo meets it
                    photos.save_jpeg(photos.photo_like(9), root / "b" / "9.jpg")
                with pytest.raises(OSError, match="Too many open files"):
                    _index_in_process(store, loaded, [root])
            status = store.status(loaded.id)
            assert (status["offline"], status["failed"]) == (0, 0), (name, status)
            assert status["files"] == 6, name
        after = _index_in_process(store, loaded, [root])
        assert (after.gone, after.offline) == (0, 0)
        assert store.status(loaded.id)["embedded"] == 7


def test_moves_exclusions_and_link_folders_are_not_taken_for_a_lost_mount(
    tmp_path: Path, tiny_model: Path
) -> None:
    """The offline rules judge what really vanished: not photos moved within the library
    (however many), not photos a new exclude pattern leaves out, and not one link gone
    from a folder of symlinks to another drive."""
    root = tmp_path / "Photos"
    _photos(root / "trip", 60)
    _photos(root / "home", 30, first=60)
    spec = manifest.load_manifest()["clip-vit-b32"]
    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        assert _index_in_process(store, loaded, [root]).embedded == 90
        (root / "trip").rename(root / "Trip 2024")  # 60 of 90 at new paths: a move
        moved = _index_in_process(store, loaded, [root])
        assert (moved.moved, moved.gone, moved.offline, moved.bytes_read) == (60, 60, 0, 0)
        excluded = _index_in_process(
            store, loaded, [root], options=pipeline.IndexOptions(scan.Excluder(("Trip 2024",)))
        )
        assert (excluded.gone, excluded.offline) == (60, 0)  # left out on purpose

    links = tmp_path / "links"
    links.mkdir()
    for name in ("60.jpg", "61.jpg"):
        (links / name).symlink_to(root / "home" / name)  # the stored device: the target's
    with Store.open(tmp_path / "links.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        assert _index_in_process(store, loaded, [links]).embedded == 2
        (links / "60.jpg").unlink()
        report = _index_in_process(store, loaded, [links])
        assert (report.gone, report.offline) == (1, 0)


def test_an_unmount_seen_through_a_watcher_event_keeps_the_photos_offline(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A new photo at a root's top level makes watchdog report the root folder itself;
    that walk must apply the unmount rule as a full rescan does."""
    root = tmp_path / "Photos"
    _photos(root, 1)
    _photos(root / "nas", 6, first=1)
    spec = manifest.load_manifest()["clip-vit-b32"]
    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        assert _index_in_process(store, loaded, [root]).embedded == 7
        _as_other_device(store, root / "nas")
        for name in os.listdir(root / "nas"):
            os.unlink(root / "nas" / name)
        _photos(root, 1, first=20)  # the event that names the root
        report = _index_in_process(store, loaded, [root], only=[os.fsencode(root)])
        assert (report.gone, report.offline, report.embedded) == (0, 6, 1)


def test_a_missing_root_forgets_nothing_outside_it_and_forget_missing_clears_it(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A mistyped root must not make the real one's photos leave the library; and
    --forget-missing accepts a root that is gone for good."""
    real, typo = tmp_path / "Pictures", tmp_path / "Pictrues"
    _photos(real, 3)
    spec = manifest.load_manifest()["clip-vit-b32"]
    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        assert _index_in_process(store, loaded, [real]).embedded == 3
        assert _index_in_process(store, loaded, [typo]).gone == 0
        assert store.status(loaded.id)["files"] == 3
        shutil.rmtree(real)
        kept = _index_in_process(store, loaded, [real])
        assert (kept.gone, kept.offline) == (0, 3)
        accepted = _index_in_process(store, loaded, [real], forget_missing=True)
        assert accepted.gone == 3


def _as_other_device(store: Store, folder: Path, device: int = 987654321) -> None:
    """As if `folder` had been a mount point of `device` (by default one mounted nowhere)
    when it was indexed: mounting needs privileges tests lack."""
    raw = os.fsencode(folder)
    with store.transaction() as conn:
        conn.execute(
            "UPDATE files SET device = ? WHERE path >= ? AND path < ?",
            (device, raw + b"/", raw + b"0"),
        )


def test_offline_rules_in_the_cases_reviews_found(tmp_path: Path, tiny_model: Path) -> None:
    spec = manifest.load_manifest()["clip-vit-b32"]
    media, library = tmp_path / "media", tmp_path / "library"
    _photos(media / "DRIVE1", 4)
    _photos(media / "DRIVE2", 3, first=4)
    drive = tmp_path / "drive"
    _photos(drive / "photos", 3, first=10)
    (media / "ext").symlink_to(drive / "photos")
    _photos(library / "a", 60, first=20)
    _photos(library / "b", 140, first=80)
    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        assert _index_in_process(store, loaded, [media, library]).embedded == 210
        _as_other_device(store, media / "DRIVE1")
        _as_other_device(store, media / "ext")

        # An automounter removes the mount point; a folder symlink into a drive dangles.
        shutil.rmtree(media / "DRIVE1")
        shutil.rmtree(drive)
        first = _index_in_process(store, loaded, [media, library])
        assert (first.gone, first.offline, first.went_offline) == (0, 7, 7)
        again = _index_in_process(store, loaded, [media, library])  # nothing new happened
        assert (again.offline, again.went_offline, again.changed) == (7, 0, False)

        # 60 of a 200-photo root deleted, seen through the watcher: an ordinary delete.
        shutil.rmtree(library / "a")
        deleted = _index_in_process(
            store, loaded, [media, library], only=[os.fsencode(library / "a")]
        )
        assert (deleted.gone, deleted.offline) == (60, 0)


def test_a_root_emptied_by_a_move_to_another_root_is_not_offline(
    tmp_path: Path, tiny_model: Path
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _photos(one, 5)
    two.mkdir()
    spec = manifest.load_manifest()["clip-vit-b32"]
    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        assert _index_in_process(store, loaded, [one, two]).embedded == 5
        for name in os.listdir(one):
            os.rename(one / name, two / name)
        report = _index_in_process(store, loaded, [one, two])
        assert (report.moved, report.gone, report.offline) == (5, 5, 0)
        assert store.status(loaded.id)["files"] == 5


def test_watcher_paths_under_a_symlinked_root_are_indexed(tmp_path: Path, tiny_model: Path) -> None:
    """~/Pictures as a symlink: events name paths under the link, the store the real ones."""
    real = tmp_path / "data" / "Pictures"
    _photos(real, 2)
    link = tmp_path / "Pictures"
    link.symlink_to(real)
    spec = manifest.load_manifest()["clip-vit-b32"]
    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        assert _index_in_process(store, loaded, [link]).embedded == 2
        _photos(link, 1, first=5)
        (link / "0.jpg").unlink()
        events = [os.fsencode(link / "5.jpg"), os.fsencode(link / "0.jpg")]
        report = _index_in_process(store, loaded, [link], only=events)
        assert (report.scanned, report.embedded, report.gone) == (1, 1, 1)


def test_a_folder_deleted_from_a_drive_that_is_still_mounted_is_gone(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Its photos were on another device than the folder above, but that device is still
    mounted (here: the one /proc is on): the user deleted the folder."""
    if presence.mounted_devices() is None:
        pytest.skip("no /proc/self/mountinfo: only dangling links and empty folders count")
    root = tmp_path / "Photos"
    _photos(root / "links", 3)
    _photos(root, 1, first=5)
    spec = manifest.load_manifest()["clip-vit-b32"]
    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        assert _index_in_process(store, loaded, [root]).embedded == 4
        _as_other_device(store, root / "links", os.stat("/proc").st_dev)
        shutil.rmtree(root / "links")
        report = _index_in_process(store, loaded, [root])
        assert (report.gone, report.offline) == (3, 0)


def test_a_watcher_walk_that_sees_most_of_a_root_vanish_leaves_it_to_a_full_rescan(
    tmp_path: Path, tiny_model: Path
) -> None:
    """`mv a/* b/` reported in two batches, sources first (the destinations are still
    settling): the first batch must not mark 60 of 90 photos gone; a full rescan, which
    sees both sides, finds the move."""
    root = tmp_path / "Photos"
    _photos(root / "a", 60)
    _photos(root / "c", 30, first=60)
    (root / "b").mkdir()
    spec = manifest.load_manifest()["clip-vit-b32"]
    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        assert _index_in_process(store, loaded, [root]).embedded == 90
        names = sorted(os.listdir(root / "a"))
        for name in names:
            os.rename(root / "a" / name, root / "b" / name)
        sources = [os.fsencode(root / "a" / name) for name in names]
        first = _index_in_process(store, loaded, [root], only=sources)
        assert (first.gone, first.offline, first.needs_rescan) == (0, 60, True)
        full = _index_in_process(store, loaded, [root])
        assert (full.moved, full.gone, full.offline, full.bytes_read) == (60, 60, 0, 0)
        assert store.status(loaded.id)["files"] == 90


class _SetDuringTheWalk(threading.Event):
    """A stop that is set after it has been looked at `after` times."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.looks = after

    def is_set(self) -> bool:
        self.looks -= 1
        return self.looks < 0 or super().is_set()


def test_a_stop_during_the_walk_returns_at_once_and_changes_nothing(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A daemon asked to stop does not wait for a long walk; what a walk cut short saw is
    not the library, so no photo is taken for gone and nothing new is read."""
    root = tmp_path / "Photos"
    _photos(root, 10)
    spec = manifest.load_manifest()["clip-vit-b32"]
    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        assert _index_in_process(store, loaded, [root]).embedded == 10
        for photo in sorted(root.iterdir())[:5]:
            photo.unlink()
        _photos(root / "new", 2, first=10)
        before = store.status(loaded.id)
        stopped = _index_in_process(store, loaded, [root], stop=_SetDuringTheWalk(3))
        assert stopped.stopped and (stopped.scanned, stopped.gone, stopped.embedded) == (0, 0, 0)
        assert not stopped.changed
        assert store.status(loaded.id) == before
        again = _index_in_process(store, loaded, [root])
        assert not again.stopped and (again.gone, again.embedded) == (5, 2)


def test_a_library_indexed_before_gets_its_xmp_dates_without_a_new_embedding(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Contents read before the XMP and IPTC readers (state migration 11 marks them unread)
    are read again once, headers only: an XMP original replaces EXIF's DateTime, an
    XMP-only date appears, each with its source; nothing is embedded again."""
    from tests.test_decode import _xmp_packet

    root = tmp_path / "Photos"
    root.mkdir()
    only_xmp = photos.photo_like(1)
    only_xmp.save(
        root / "xmp.jpg", "JPEG", xmp=_xmp_packet('photoshop:DateCreated="2011-05-04T10:11:12"')
    )
    modified = Image.Exif()
    modified[0x0132] = "2020:12:24 18:00:00"
    photos.photo_like(2).save(
        root / "both.jpg",
        "JPEG",
        exif=modified,
        xmp=_xmp_packet('exif:DateTimeOriginal="2016-01-02T03:04:05"'),
    )
    spec = manifest.load_manifest()["clip-vit-b32"]
    with Store.open(tmp_path / "state.sqlite") as store:
        loaded = models.load_model(spec, tiny_model, store)
        assert _index_in_process(store, loaded, [root]).embedded == 2
        with store.transaction() as conn:  # as an index before the readers left them
            conn.execute("UPDATE contents SET taken_at = NULL, taken_at_source = NULL")
            conn.execute(
                "UPDATE contents SET taken_at = '2020-12-24T18:00:00' WHERE hash IN "
                "(SELECT content_hash FROM files WHERE path LIKE '%both.jpg')"
            )
            conn.execute("UPDATE contents SET dates_read = 0")
        again = _index_in_process(store, loaded, [root])
        assert again.embedded == 0 and again.hashed == 0
        dates = dict(
            store.conn.execute(
                "SELECT f.path, c.taken_at || ' ' || c.taken_at_source FROM files f "
                "JOIN contents c ON c.hash = f.content_hash"
            ).fetchall()
        )
        named = {os.path.basename(os.fsdecode(p)): d for p, d in dates.items()}
        assert named == {
            "xmp.jpg": "2011-05-04T10:11:12 xmp",
            "both.jpg": "2016-01-02T03:04:05 xmp",
        }
        assert store.dates_unread(10) == []  # read once
