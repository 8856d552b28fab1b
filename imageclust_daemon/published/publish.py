"""Publishing: the state database -> the read-only catalog (an atomic swap) -> the
organized folder of symlinks, if configured."""

from __future__ import annotations

from pathlib import Path

from imageclust_daemon import __version__
from imageclust_daemon.published import catalog, organize


def publish(
    state_db: Path,
    catalog_path: Path,
    *,
    model_id: str | None,
    organize_dir: Path | None,
    pair_raw_jpeg: bool = True,
) -> catalog.PublishReport:
    """State -> catalog (atomic swap) -> organized folder of symlinks (if configured).
    A catalog built from the same inputs is left as it is, and so is its organized view
    (built only where it is missing or older than the catalog)."""
    report = catalog.publish(
        state_db,
        catalog_path,
        model_id=model_id,
        daemon_version=__version__,
        pair_raw_jpeg=pair_raw_jpeg,
    )
    if report.unchanged:
        refresh_view(catalog_path, organize_dir)
    elif organize_dir is not None:
        organize.build(organize.groups_from_catalog(catalog_path), organize_dir)
    return report


def refresh_view(catalog_path: Path, organize_dir: Path | None) -> bool:
    """Build the organized view from the published catalog when it is missing or older than
    the catalog (organize.dir set after the last publish); True when it was built."""
    if organize_dir is None or not catalog_path.is_file():
        return False
    if organize.is_current(organize_dir, catalog_path):
        return False
    organize.build(organize.groups_from_catalog(catalog_path), organize_dir)
    return True
