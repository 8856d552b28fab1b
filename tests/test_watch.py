"""The watcher: real observers on real folders; a dead emitter or a refused watch is noticed."""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from watchdog.observers import inotify_c
from watchdog.observers.polling import PollingObserver

from imageclust_daemon.watch import ChangeBuffer, Watcher


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
