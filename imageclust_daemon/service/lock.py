"""One process works on a data dir at a time: the daemon, or a hand-run index/recluster/relabel.

Two writers would not corrupt SQLite, but they would race on what they decide
(a recluster picks new group ids outside its transaction; two indexes read the
same new files), and the second would wait on the first's locks. So each takes
an flock on <data_dir>/daemon.lock, and a second is refused with who holds it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from imageclust_daemon.errors import ImageclustError


class AlreadyRunning(ImageclustError):
    """Another imageclust process holds the data dir's lock."""

    def __init__(self, lock_path: Path, holder: str) -> None:
        pid, _, command = holder.partition(" ")
        self.pid = pid
        self.command = command or "run"
        what = "daemon" if self.command == "run" else f"`imageclust {self.command}`"
        hint = (
            "it keeps the library indexed, grouped and titled by itself; stop it first to run "
            "this by hand (systemctl --user stop imageclust)"
            if self.command == "run"
            else "wait for it to finish"
        )
        super().__init__(
            f"another imageclust {what} is already working on this library "
            f"(PID {pid or 'unknown'}; lock {lock_path}): {hint}"
        )


class InstanceLock:
    """flock on <data_dir>/daemon.lock. The file is never deleted: a deleted lock file
    would let a second instance lock a new inode while the first holds the old one."""

    def __init__(self, path: Path, command: str = "run") -> None:
        self.path = path
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                try:
                    holder = self.path.read_text().strip()
                except OSError:
                    holder = ""
                raise AlreadyRunning(self.path, holder) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.command}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
