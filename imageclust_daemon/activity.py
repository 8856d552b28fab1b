"""What the daemon is doing, for readers such as the gallery's status page.

One small JSON file, `<data_dir>/daemon.activity.json`, rewritten atomically: what
the daemon is doing now, and when it last finished a full rescan, a regroup and a
publish. Best effort: a data dir that cannot be written costs this file only.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from datetime import datetime
from pathlib import Path

FILE = "daemon.activity.json"
_lock = threading.Lock()


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def record(data_dir: Path, **fields: str) -> None:
    """Set `fields` (e.g. doing="indexing", last_rescan=now()) in the activity file."""
    path = data_dir / FILE
    with _lock:
        current = read(data_dir)
        current.update(fields, updated_at=now())
        tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(current), encoding="utf-8")
            os.replace(tmp, path)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def read(data_dir: Path) -> dict[str, str]:
    try:
        found = json.loads((data_dir / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
