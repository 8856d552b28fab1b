"""Where the files shipped with imageclust are: migrations, model manifest, default config.

In a wheel they are inside the package (`_data/`, mapped by hatchling's
force-include); in a source checkout they are the top-level folders.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_path(relative: str) -> Path:
    """The shipped file or folder `relative` (e.g. "migrations", "models/manifest.toml")."""
    for base in (_PACKAGE / "_data", _PACKAGE.parent):
        candidate = base / relative
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"imageclust is missing its shipped file {relative!r}; reinstall it")
