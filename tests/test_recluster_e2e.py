"""End to end: index generated photo groups with the tiny model, recluster, keep ids across runs."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli_json, run_cli
from tests.library import add_photos, scene_library
from tests.metrics import adjusted_rand_index

pytestmark = pytest.mark.slow  # end to end through the real CLI or daemon: minutes

SCENES = 10
PER_SCENE = 10
MIN_SIZE, MAX_SIZE = 4, 40


def _library(root: Path) -> dict[str, int]:
    truth = scene_library(root, SCENES, PER_SCENE)
    # a duplicate must not count twice
    dup = root / "event 0" / "IMG_000 copy.jpg"
    shutil.copyfile(root / "event 0" / "IMG_000.jpg", dup)
    truth[os.fsdecode(dup)] = 0
    return truth


def _groups_by_path(db_path: Path) -> dict[str, int]:
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute(
            "SELECT f.path, m.cluster_id FROM files f JOIN cluster_members m "
            "ON m.content_hash = f.content_hash WHERE f.state = 'live'"
        ).fetchall()
    finally:
        db.close()
    return {os.fsdecode(p): c for p, c in rows}


def _changed_ids(db_path: Path, run_id: int) -> set[int]:
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute("SELECT id FROM clusters WHERE changed_run = ?", (run_id,)).fetchall()
    finally:
        db.close()
    return {r[0] for r in rows}


def test_recluster_recovers_groups_and_keeps_ids(tmp_path: Path, make_config) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "library"
    truth = _library(root)
    config = make_config(cluster={"min_size": MIN_SIZE, "max_size": MAX_SIZE})
    db = tmp_path / "data" / "state.sqlite"
    assert cli_json(config, "index", str(root), "--no-group")["embedded"] == SCENES * PER_SCENE

    first = cli_json(config, "recluster")
    assert first["n_points"] == SCENES * PER_SCENE, "the duplicate counts once"
    assert first["new_clusters"] == first["n_clusters"] and not first["skipped"]
    groups = _groups_by_path(db)
    paths = sorted(truth)
    found = np.array([groups.get(p, -1) for p in paths])
    expected = np.array([truth[p] for p in paths])
    ari = adjusted_rand_index(expected, found)
    assert ari >= 0.9, ari
    sizes = np.bincount(found[found >= 0])
    assert all(MIN_SIZE <= s <= MAX_SIZE for s in sizes if s)
    assert (
        groups[os.fsdecode(root / "event 0" / "IMG_000 copy.jpg")]
        == groups[os.fsdecode(root / "event 0" / "IMG_000.jpg")]
    )
    status = cli_json(config, "status")
    assert status["clusters"] == first["n_clusters"]
    assert status["regrouped"]["full_reason"] == first["full_reason"] == "first regroup"

    # Nothing changed: nothing is done, and it says so.
    again = run_cli("--config", str(config), "recluster")
    assert again.returncode == 0 and "nothing changed" in again.stdout
    # Forced: every id is kept, no group changed.
    forced = cli_json(config, "recluster", "--force")
    assert forced["new_clusters"] == 0 and forced["changed_clusters"] == 0
    assert forced["full_reason"] == "recluster --force" and forced["moved"] == 0
    assert _groups_by_path(db) == groups

    # ~2% new photos, all of scene 3: only the group they join changes; the others keep ids.
    for path in add_photos(root, scene=3, count=2, first_seed=3500):
        truth[os.fsdecode(path)] = 3
    added = cli_json(config, "index", str(root), "--no-group")
    assert added["embedded"] == 2, json.dumps(added)
    after = cli_json(config, "recluster")
    assert after["new_clusters"] == 0 and after["retired_clusters"] == 0
    assert after["changed_clusters"] == 1
    assert after["full_reason"] == "" and after["joined"] == 2 and after["moved"] == 0
    said = run_cli("--config", str(config), "status").stdout
    assert "regrouped" in said and "2 new photos joined albums, 0 photos moved" in said
    regrouped = _groups_by_path(db)
    scene3_id = groups[next(p for p in paths if truth[p] == 3)]
    assert _changed_ids(db, int(after["run_id"])) == {scene3_id}
    for path, gid in groups.items():
        assert regrouped[path] == gid, "an untouched photo changed group"
    assert {regrouped[p] for p in truth if "NEW_" in p} == {scene3_id}
