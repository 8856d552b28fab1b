"""One process per data dir: the flock, what a refused second one is told, the file kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imageclust_daemon.service.lock import AlreadyRunning, InstanceLock


def test_a_second_holder_is_refused_with_who_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "data" / "daemon.lock"
    with InstanceLock(path, "run"):
        assert path.read_text() == f"{os.getpid()} run\n"
        with pytest.raises(AlreadyRunning) as refused:
            InstanceLock(path, "index").acquire()  # flock: another open file, refused
        assert refused.value.pid == str(os.getpid()) and refused.value.command == "run"
        assert "daemon is already working on this library" in str(refused.value)
    # Released, never deleted: a deleted lock file would let a second process lock a
    # new inode while the first still held the old one.
    assert path.exists()
    with (
        InstanceLock(path, "index"),
        pytest.raises(AlreadyRunning, match=r"`imageclust index`.*wait for it"),
    ):
        InstanceLock(path, "run").acquire()
    assert path.exists()
