"""Walk the roots and list image-like files with their stat signature. Reads no content.

Paths are bytes from end to end, so any filename the OS allows works. Symlinks
to folders are followed, but a folder (device, inode) is entered once, so a
symlink loop cannot make the walk revisit anything. Hidden names (leading
dot) and `library.exclude` matches are skipped; only regular files (or
symlinks to them) whose extension marks an image are listed.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from imageclust_daemon.errors import of_this_process
from imageclust_daemon.records import FileStat

# A file is looked at by its name; what it is, and so how it is decoded, its bytes say
# (a JPEG named .heic is read as a JPEG).
BASE_EXTENSIONS = frozenset(
    {b".jpg", b".jpeg", b".jpe", b".png", b".webp", b".gif", b".bmp", b".tif", b".tiff", b".avif"}
)
# Camera RAW (read through LibRaw, see camera_raw); a TIFF-structured file so named is
# offered to LibRaw before Pillow.
RAW_EXTENSIONS = frozenset(
    {
        b".dng", b".cr2", b".cr3", b".crw", b".nef", b".nrw", b".arw", b".srf", b".sr2",
        b".orf", b".raf", b".rw2", b".rwl", b".pef", b".srw", b".3fr", b".fff", b".iiq",
        b".erf", b".kdc", b".dcr", b".mos", b".mef", b".mrw", b".x3f",
    }
)  # fmt: skip
HEIF_EXTENSIONS = frozenset({b".heic", b".heif", b".hif"})
# Not photos, but a photo library's own files: counted as skipped by kind, never failed.
SKIPPED_KINDS = {
    b".mov": "video",
    b".mp4": "video",
    b".m4v": "video",
    b".avi": "video",
    b".3gp": "video",
    b".mts": "video",
    b".mkv": "video",
    b".xmp": "sidecar",
    b".aae": "sidecar",
    b".thm": "sidecar",
    # GoPro's RAW: a DNG whose image is VC-5 coded, which LibRaw reads only when built
    # with GoPro's SDK; rawpy 0.28's build lists no such feature (rawpy.flags): counted
    # by kind, not read.
    b".gpr": "GoPro RAW",
}


def heif_plugin() -> str | None:
    """The module that reads HEIC/HEIF here: pi_heif (decode-only, LGPL; a core
    dependency), else pillow_heif; None when neither imports."""
    for name in ("pi_heif", "pillow_heif"):
        try:
            __import__(name)
        except ImportError:
            continue
        return name
    return None


def heif_available() -> bool:
    """True when .heic/.heif files can be read (see `heif_plugin`)."""
    return heif_plugin() is not None


def image_extensions(heif: bool) -> frozenset[bytes]:
    looked_at = BASE_EXTENSIONS | RAW_EXTENSIONS
    return looked_at | HEIF_EXTENSIONS if heif else looked_at


@dataclass(frozen=True, slots=True)
class Excluder:
    """`library.exclude` globs. No '/' in a pattern: match any name; else the relative path."""

    patterns: tuple[str, ...] = ()

    def excluded(self, name: str, relative: str) -> bool:
        for pattern in self.patterns:
            target = relative if "/" in pattern.strip("/") else name
            if fnmatch.fnmatchcase(target, pattern.strip("/")):
                return True
        return False


NO_EXCLUDES = Excluder()


def skipped(path: bytes, root: bytes, excluder: Excluder) -> bool:
    """Whether the walk leaves `path` out: hidden, or excluded, anywhere below `root`."""
    relative = os.fsdecode(os.path.relpath(path, root))
    parts = [] if relative == "." else relative.split("/")
    return any(p.startswith(".") for p in parts) or any(
        excluder.excluded(parts[i], "/".join(parts[: i + 1])) for i in range(len(parts))
    )


OnError = Callable[[bytes, str], None]


def ignore_error(path: bytes, reason: str) -> None:
    """The OnError that says nothing (callers that record errors pass their own)."""
    pass


def walk(
    root: bytes,
    extensions: frozenset[bytes],
    excluder: Excluder = NO_EXCLUDES,
    on_error: OnError = ignore_error,
    unreachable: set[bytes] | None = None,
    base: bytes | None = None,
    unread: set[bytes] | None = None,
    skipped: dict[bytes, str] | None = None,
) -> Iterator[FileStat]:
    """Every image-like file under `root` (depth-first, sorted by name within a folder).

    Folders that cannot be listed (the root included) are added to `unreachable`:
    what is under them is unknown, not gone. Exclude patterns are matched against
    paths relative to `base` (the library root; default `root`). `unread` collects the
    .heic/.heif files when no HEIF plugin imports; `skipped` the videos and sidecars
    (path -> kind, see SKIPPED_KINDS).
    """
    root = os.path.abspath(root)
    base = os.path.abspath(base) if base is not None else root
    lost = unreachable if unreachable is not None else set()
    try:
        top = os.stat(root)
        if not stat.S_ISDIR(top.st_mode):
            raise NotADirectoryError(20, "not a folder")
    except OSError as exc:
        if of_this_process(exc):
            raise
        on_error(root, f"cannot open root: {exc.strerror or exc}")
        lost.add(root)
        return
    visited = {(top.st_dev, top.st_ino)}
    # each folder with its path relative to `base`, as exclude patterns see it (built
    # by joining names: os.path.relpath a file cost 0.25 s of a 0.6 s unchanged index)
    start = os.fsdecode(os.path.relpath(root, base))
    stack = [(root, "" if start == "." else start)]
    while stack:
        folder, inside = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except OSError as exc:
            if of_this_process(exc):
                raise
            on_error(folder, f"cannot list folder: {exc.strerror or exc}")
            lost.add(folder)
            continue
        for entry in entries:
            name = entry.name
            if name.startswith(b"."):
                continue
            shown = os.fsdecode(name)
            relative = f"{inside}/{shown}" if inside else shown
            if excluder.excluded(shown, relative):
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                continue  # vanished, or a dangling symlink: nothing to index
            except OSError as exc:  # EIO, ESTALE on a flaky share: unknown, not gone
                if of_this_process(exc):
                    raise
                on_error(entry.path, f"cannot stat: {exc.strerror or exc}")
                lost.add(entry.path)
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) not in visited:
                    visited.add((st.st_dev, st.st_ino))
                    stack.append((entry.path, relative))
            elif (ext := os.path.splitext(name)[1].lower()) in extensions:
                yield _found(entry.path, st)
            elif unread is not None and ext in HEIF_EXTENSIONS:
                unread.add(entry.path)  # a photo this install cannot read (no HEIF plugin)
            elif skipped is not None and ext in SKIPPED_KINDS:
                skipped[entry.path] = SKIPPED_KINDS[ext]


def _found(path: bytes, st: os.stat_result) -> FileStat:
    return FileStat(path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, kind=_kind(st.st_mode))


def _kind(mode: int) -> str:
    """ "" for a regular file; else what it is, for the row that says why it was not read."""
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a file"


def walk_all(
    roots: Sequence[bytes],
    extensions: frozenset[bytes],
    excluder: Excluder = NO_EXCLUDES,
    on_error: OnError = ignore_error,
    unreachable: set[bytes] | None = None,
    unread: set[bytes] | None = None,
    skipped: dict[bytes, str] | None = None,
) -> Iterator[FileStat]:
    """`walk` over several roots; a file reachable from two roots is listed once."""
    seen: set[bytes] = set()
    for root in roots:
        for found in walk(
            root, extensions, excluder, on_error, unreachable, unread=unread, skipped=skipped
        ):
            if found.path not in seen:
                seen.add(found.path)
                yield found


def root_of(path: bytes, roots: Sequence[bytes]) -> bytes | None:
    """The root `path` is under (or is), if any."""
    for root in roots:
        if path == root or path.startswith(root.rstrip(b"/") + b"/"):
            return root
    return None


def under_any(path: bytes, folders: Sequence[bytes]) -> bool:
    """Whether `path` is one of `folders` or under one."""
    return root_of(path, folders) is not None


def under_set(path: bytes, folders: set[bytes]) -> bool:
    """`under_any` for many folders (absolute, no trailing slash): O(depth), not O(folders)."""
    while True:
        if path in folders:
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


def look_at(
    paths: Sequence[bytes],
    roots: Sequence[bytes],
    extensions: frozenset[bytes],
    excluder: Excluder = NO_EXCLUDES,
    on_error: OnError = ignore_error,
    unreachable: set[bytes] | None = None,
) -> Iterator[FileStat]:
    """Like `walk_all`, but only over `paths` (files, or folders walked whole) that changed.

    A path outside every root, hidden, excluded, or no longer there yields nothing.
    """
    seen: set[bytes] = set()
    for path in paths:
        root = root_of(path, roots)
        if root is None:
            continue
        if skipped(path, root, excluder):
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:  # unknown, not gone
            if of_this_process(exc):
                raise
            on_error(path, f"cannot stat: {exc.strerror or exc}")
            if unreachable is not None:
                unreachable.add(path)
            continue
        if stat.S_ISDIR(st.st_mode):
            found: Iterator[FileStat] = walk(
                path, extensions, excluder, on_error, unreachable, root
            )
        elif os.path.splitext(path)[1].lower() in extensions:
            found = iter([_found(path, st)])
        else:
            continue
        for f in found:
            if f.path not in seen:
                seen.add(f.path)
                yield f
