"""The watcher: real observers on real folders; a dead emitter or a refused watch is noticed."""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from watchdog.events import FileCreatedEvent, FileMovedEvent
from watchdog.observers import inotify_c
from watchdog.observers.polling import PollingObserver

from imageclust_daemon.index.watch import ChangeBuffer, Watcher, _Handler


def _wait(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _pending(buffer: ChangeBuffer) -> set[str]:
    return {os.path.basename(os.fsdecode(p)) for p in buffer.take_settled()}


@pytest.mark.parametrize("away", ["deleted", "renamed"])
@pytest.mark.parametrize("poll", [False, True], ids=["native", "polling"])
def test_a_root_gone_and_made_again_is_noticed_and_watched_again(
    tmp_path: Path, poll: bool, away: str
) -> None:
    root = tmp_path / "Pictures"
    root.mkdir()
    buffer = ChangeBuffer(0.0)
    watcher = Watcher([root], buffer, force_poll=poll, poll_seconds=0.1)
    watcher.start()
    try:
        (root / "a.jpg").write_bytes(b"a")
        assert _wait(lambda: "a.jpg" in _pending(buffer))
        assert watcher.healthy()
        if away == "deleted":  # the root's emitter ends, its observer lives on
            shutil.rmtree(root)
        else:  # inotify follows the renamed folder: its emitter lives on
            root.rename(tmp_path / "elsewhere")
        root.mkdir()
        if not poll:  # polling looks at the path, so it may well go on as it is
            assert _wait(lambda: not watcher.healthy()), "the new folder is not watched yet"
        if not watcher.healthy():
            watcher.restart()  # what the daemon's supervisor does when healthy() is False
        assert watcher.healthy()
        (root / "b.jpg").write_bytes(b"b")
        assert _wait(lambda: "b.jpg" in _pending(buffer)), "the recreated root is watched"
    finally:
        watcher.stop()


def test_a_refused_native_watch_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inotify's watch limit (ENOSPC) strikes in observer.start(), not in schedule()."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(inotify_c.InotifyFD, "add_callback", refuse)
    refused, fine = tmp_path / "refused", tmp_path / "fine"
    refused.mkdir()
    fine.mkdir()
    buffer = ChangeBuffer(0.0)
    watcher = Watcher([refused, fine], buffer, poll_seconds=0.1)
    watcher.start()
    try:
        assert all(isinstance(o, PollingObserver) for o in watcher._observers)
        assert len(watcher._observers) == 2 and watcher.healthy()
        (refused / "c.jpg").write_bytes(b"c")
        assert _wait(lambda: "c.jpg" in _pending(buffer)), "the refused root is polled"
    finally:
        watcher.stop()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_file_is_ready_only_once_its_size_and_mtime_stay_put(tmp_path: Path) -> None:
    """Settled by size and mtime stable over settle_seconds, not by events: a slow copy
    is read once, complete."""
    clock = _Clock()
    buffer = ChangeBuffer(2.0, clock=clock)
    photo = tmp_path / "copying.jpg"
    photo.write_bytes(b"x" * 10)
    buffer.touch(os.fsencode(photo))
    assert buffer.take_settled() == []  # first look: its size and mtime noted
    clock.now += 1.5
    with open(photo, "ab") as f:  # the copy goes on, with no event
        f.write(b"y" * 10)
    assert buffer.take_settled() == []  # changed since: the wait starts again
    clock.now += 1.9
    assert buffer.take_settled() == []
    clock.now += 0.2
    assert buffer.take_settled() == [os.fsencode(photo)]
    assert len(buffer) == 0
    gone = tmp_path / "gone.jpg"
    buffer.touch(os.fsencode(gone))  # deleted or moved away: ready at once
    assert buffer.take_settled() == [os.fsencode(gone)]


def test_events_for_temporary_names_are_ignored_and_a_handler_error_asks_for_a_rescan(
    tmp_path: Path,
) -> None:
    buffer = ChangeBuffer(0.0)
    handler = _Handler(buffer)
    for name in ("IMG_1.jpg.part", "x.crdownload", ".IMG_2.jpg.swp", "IMG_3.jpg~", "a.tmp"):
        handler.on_any_event(FileCreatedEvent(str(tmp_path / name)))
    assert len(buffer) == 0
    handler.on_any_event(FileMovedEvent(str(tmp_path / "a.tmp"), str(tmp_path / "IMG_4.jpg")))
    assert {os.path.basename(p) for p in buffer._pending} == {b"IMG_4.jpg"}

    class Broken(ChangeBuffer):
        def touch(self, path: bytes) -> None:
            raise RuntimeError("boom")

    broken = Broken(0.0)
    _Handler(broken).on_any_event(FileCreatedEvent(str(tmp_path / "IMG_5.jpg")))  # no raise
    assert broken.rescan.is_set() and "could not be handled" in broken.rescan_reason


def test_reading_the_library_makes_no_events_so_a_rescan_cannot_overflow_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing folders and reading files (what rescans and indexing do) must not queue
    inotify events at all: at 1M photos in 10,000 folders a rescan made ~40,000 of them,
    more than the kernel's queue holds (16,384 by default); the overflow asked for a
    rescan, which listed every folder again, forever."""
    seen: list[str] = []
    handle = _Handler.on_any_event
    monkeypatch.setattr(
        _Handler, "on_any_event", lambda self, e: (seen.append(e.event_type), handle(self, e))
    )
    root = tmp_path / "Photos"
    (root / "2024").mkdir(parents=True)
    photo = root / "2024" / "a.jpg"
    photo.write_bytes(b"\xff\xd8" + bytes(100))
    buffer = ChangeBuffer(0.0)
    watcher = Watcher([root], buffer)
    watcher.start()
    try:
        for _ in range(200):
            os.listdir(root)
            os.listdir(root / "2024")
            photo.read_bytes()
        time.sleep(0.5)  # time for the observer to deliver what the kernel queued
        assert seen == [], "reading made events"
        assert len(buffer) == 0 and not buffer.rescan.is_set()
        photo.write_bytes(b"\xff\xd8" + bytes(200))  # a change still is one
        assert _wait(lambda: len(buffer) > 0)
    finally:
        watcher.stop()
