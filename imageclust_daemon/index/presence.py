"""Which photos not found are gone, and which are only away (offline).

A photo the walk did not find is gone, unless its folder could not be read, the
filesystem it lived on is no longer mounted, or too many of a root's photos vanished
at once to believe it (a flaky mount, not a purge). Those stay offline: kept, with
their embeddings and groups, until they are seen again or the user says they are
gone (`index --forget-missing`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from imageclust_daemon.index import scan
from imageclust_daemon.records import FileStat, KnownFile, display_path

log = logging.getLogger(__name__)

# A full rescan that finds this many of a root's photos missing, and more than this
# share of them, keeps them offline: a flaky mount, not a purge (another photo manager
# once marked 68,811 photos deleted in 6.6 s). `index --forget-missing` accepts it.
MASS_LOSS_MIN = 50
MASS_LOSS_SHARE = 0.5


def vanished(
    scanned: dict[bytes, FileStat],
    known: dict[bytes, KnownFile],
    roots: Sequence[bytes],
    excluder: scan.Excluder,
) -> list[bytes]:
    """Live photos not found, less those that moved (their signature was scanned
    elsewhere) and those the walk now leaves out (excluded, hidden): these vanished."""
    arrived = {f.signature for f in scanned.values()}
    out = []
    for path, k in known.items():
        if not k.live or path in scanned or k.signature in arrived:
            continue
        root = scan.root_of(path, roots)
        if root is not None and scan.skipped(path, root, excluder):
            continue
        out.append(path)
    return out


def mass_losses(
    missing: Sequence[bytes],
    roots: Sequence[bytes],
    count_live: Callable[[bytes], int],
    unreachable: set[bytes] | None = None,
) -> dict[bytes, tuple[int, int]]:
    """Roots that lost too many of their photos at once to believe it:
    root -> (photos vanished, photos it had). `count_live(root)` counts the latter."""
    unreachable = unreachable or set()
    lost: dict[bytes, tuple[int, int]] = {}
    if len(missing) < MASS_LOSS_MIN:
        return lost
    for root in roots:
        gone = sum(
            1 for p in missing if scan.under_any(p, [root]) and not scan.under_set(p, unreachable)
        )
        if gone >= MASS_LOSS_MIN:
            live = count_live(root)
            if gone > MASS_LOSS_SHARE * live:
                lost[root] = (gone, live)
    return lost


def live_under(known: dict[bytes, KnownFile], root: bytes) -> int:
    return sum(1 for p, k in known.items() if k.live and scan.under_any(p, [root]))


def unmounted_folders(
    missing: Sequence[bytes],
    known: dict[bytes, KnownFile],
    roots: Sequence[bytes],
    mounted: set[int] | None = None,
) -> set[bytes]:
    """Folders under the roots where the filesystem missing photos lived on is unmounted.

    The photo's device is mounted nowhere now (`mounted`: the devices in
    /proc/self/mountinfo; None where there is no such list), and the deepest folder
    still there above it is on another device. Then the folder below that on the photo's
    path is the one unmounted (an automounter removed the mount point; a folder symlink
    into the drive dangles), or, when the photo's own folder is there, that folder if it
    is empty (the mount point a drive leaves). Without a list of mounts only a dangling
    symlink or an empty folder counts. A folder the user deleted from a mounted drive,
    or a folder of symlinks that lost one, is gone.
    """
    found: set[bytes] = set()
    above: dict[bytes, tuple[bytes, int] | None] = {}
    for path in missing:
        device = known[path].signature[3]
        if mounted is not None and device in mounted:
            continue  # its filesystem is mounted: the photo was deleted
        folder = os.path.dirname(path)
        if folder not in above:
            above[folder] = _deepest_existing(folder, roots)
        hit = above[folder]
        if hit is None or hit[1] == device:
            continue
        there = hit[0]
        if there != folder:  # the first folder on the way down that is not there
            child = there.rstrip(b"/") + b"/" + os.path.relpath(folder, there).split(b"/")[0]
            if mounted is not None or os.path.islink(child):
                found.add(child)
        elif _empty(there):
            found.add(there)
    for folder in sorted(found):
        log.warning(
            "%s: its drive or share is not mounted; its photos are kept offline",
            display_path(folder),
        )
    return found


def mounted_devices(mountinfo: str = "/proc/self/mountinfo") -> set[int] | None:
    """The st_dev of every mounted filesystem (Linux), from "major:minor" in mountinfo;
    no stat of a mount point, which could hang on a dead network share."""
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    devices = set()
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 2 and b":" in fields[2]:
            major, _, minor = fields[2].partition(b":")
            with contextlib.suppress(ValueError):
                devices.add(os.makedev(int(major), int(minor)))
    return devices or None


def under_real_root(path: bytes, given: Sequence[bytes], real: Sequence[bytes]) -> bytes:
    """`path` under a root as configured (say ~/Pictures, a symlink), as stored: under the
    root's real path. Folders inside the root keep their own names, symlinks or not."""
    path = os.path.abspath(path)
    for root, real_root in zip(given, real, strict=True):
        if root != real_root and (path == root or path.startswith(root + b"/")):
            return real_root + path[len(root) :]
    return path


def no_such_path(path: bytes) -> bool:
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:  # EACCES, EIO, ESTALE: there, but unreadable
        return False
    return False


def _empty(folder: bytes) -> bool:
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _deepest_existing(folder: bytes, roots: Sequence[bytes]) -> tuple[bytes, int] | None:
    """(folder, st_dev) of `folder` or its nearest existing parent, within the roots."""
    while scan.under_any(folder, roots):
        try:
            return folder, os.stat(folder).st_dev  # (a dangling folder symlink: not there)
        except OSError:
            parent = os.path.dirname(folder)
            if parent == folder:
                return None
            folder = parent
    return None


@dataclass(frozen=True)
class Presence:
    """What a walk's missing photos mean."""

    unreachable: set[bytes]  # folders whose photos not found are offline, not gone
    needs_rescan: bool  # a watcher's walk saw a mass loss: a full rescan decides


def assess(
    scanned: dict[bytes, FileStat],
    known: dict[bytes, KnownFile],
    roots: Sequence[bytes],
    *,
    looked_at: Sequence[bytes],
    unreachable: Collection[bytes],
    excluder: scan.Excluder,
    partial: bool,
    live_count_under: Callable[[bytes], int],
    forget_missing: bool = False,
) -> Presence:
    """Which folders' missing photos are offline: those the walk could not read, a root
    that lists empty, unmounted filesystems, and roots with a mass loss. `looked_at`: the
    roots the walk covered; `partial`: it covered only the paths a watcher reported (then
    `live_count_under` counts a root's photos for the mass-loss share, not `known`).
    `forget_missing`: only folders that are there but unreadable stay unknown."""
    away = {u.rstrip(b"/") or b"/" for u in unreachable}
    if forget_missing:  # a root that is no longer there too; unreadable folders stay unknown
        return Presence({u for u in away if not no_such_path(u)}, needs_rescan=False)
    missing = vanished(scanned, known, roots, excluder)
    for root in looked_at:  # an empty root that lost photos is an unmounted drive
        if not any(scan.under_any(p, [root]) for p in scanned) and any(
            scan.under_any(p, [root]) for p in missing
        ):
            away.add(root)
    away |= unmounted_folders(missing, known, roots, mounted_devices())
    if partial:  # measured against the whole root, not just the part the walk looked at
        lost = mass_losses(missing, roots, live_count_under, away)
    else:
        lost = mass_losses(missing, roots, lambda r: live_under(known, r), away)
    for root, (gone, live) in lost.items():
        # A full rescan: a flaky mount, not a purge, until --forget-missing says so. A
        # watcher walk sees one side of a big move, or a share that lists empty for a
        # moment: kept for now, and a full rescan, which sees both sides, decides.
        log.warning(
            "%d of the %d photos under %s vanished at once: kept as offline, not deleted; %s",
            gone,
            live,
            display_path(root),
            "a full rescan checks them"
            if partial
            else "a mount problem? If you removed them: imageclust index --forget-missing",
        )
    return Presence(away | set(lost), needs_rescan=partial and bool(lost))


def _some(names: Sequence[str], shown: int = 5) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def warn_offline(count: int, unreachable: Collection[bytes]) -> None:
    log.warning(
        "%d photos are under folders that are missing, empty or unreadable (%s); "
        "kept as offline, not deleted",
        count,
        _some(sorted(display_path(u) for u in unreachable)),
    )
