"""The README's quick start, as a new user follows it, on a small library of real photographs.

The CLIP weights cannot be downloaded here, so the config names a local model file
(`model.path`, as the README says one can) instead of `models download`; every
other step is the real command: `index` embeds, groups, titles (a real HTTP server
on 127.0.0.1 answering as Ollama does) and publishes; the catalog has titled albums;
setting `organize.dir` afterwards and running `recluster` builds the folder view.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from tests.conftest import run_cli, write_config

pytestmark = pytest.mark.slow  # end to end through the real CLI or daemon: minutes

SUBJECTS = ("astronaut", "coffee", "chelsea", "rocket")


def _real_library(root: Path) -> None:
    """Each of scikit-image's sample photographs shot 6 times, plus one exact duplicate."""
    import skimage.data

    for k, name in enumerate(SUBJECTS):
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        rng = np.random.default_rng(k)
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(6):
            w, h = img.size
            f = rng.uniform(0.8, 0.95)
            x0, y0 = int(rng.uniform(0, 1 - f) * w), int(rng.uniform(0, 1 - f) * h)
            shot = img.crop((x0, y0, x0 + int(f * w), y0 + int(f * h)))
            shot = ImageOps.mirror(shot) if i % 2 else shot
            shot = ImageEnhance.Brightness(shot).enhance(rng.uniform(0.9, 1.1))
            shot.save(folder / f"IMG_{i}.jpg", quality=90)
    (root / "astronaut" / "copy of IMG_0.jpg").write_bytes(
        (root / "astronaut" / "IMG_0.jpg").read_bytes()
    )


def test_from_the_quick_start_to_titled_albums_and_the_folder_view(
    tiny_model: Path, fake_ollama: Any, tmp_path: Path
) -> None:
    library = tmp_path / "Pictures"
    _real_library(library)
    data = tmp_path / "data"
    config = write_config(
        tmp_path / "imageclust.toml",
        library={"roots": [str(library)]},
        storage={"data_dir": str(data)},
        model={"path": str(tiny_model)},
        cluster={"min_size": 3, "max_size": 12},
        ollama={"host": fake_ollama.url, "model": "llava"},
    )

    done = run_cli("--config", str(config), "index", "--no-progress")

    assert done.returncode == 0, done.stderr
    assert "25 photos under 1 folder(s)" in done.stdout, done.stdout
    assert "albums (" in done.stdout and "the biggest:" in done.stdout
    assert "  Album " in done.stdout  # the titles Ollama gave
    assert f"catalog: {data / 'catalog.sqlite'}" in done.stdout
    assert "a folder per album and per event: set organize.dir in the config" in done.stdout
    conn = sqlite3.connect(f"file:{data / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        albums = conn.execute("SELECT title, size, label_source FROM clusters").fetchall()
        grouped = conn.execute("SELECT count(*) FROM photos WHERE cluster_id IS NOT NULL")
        photos_grouped = grouped.fetchone()[0]
    finally:
        conn.close()
    assert len(albums) >= 2
    assert all(title and source == "ollama" for title, _, source in albums), albums
    assert sum(size for _, size, _ in albums) >= 0.98 * 24  # distinct photos
    assert photos_grouped >= 24

    view = tmp_path / "Albums"
    write_config(
        config,
        library={"roots": [str(library)]},
        storage={"data_dir": str(data)},
        model={"path": str(tiny_model)},
        cluster={"min_size": 3, "max_size": 12},
        ollama={"host": fake_ollama.url, "model": "llava"},
        organize={"dir": str(view)},
    )
    again = run_cli("--config", str(config), "recluster")

    assert again.returncode == 0, again.stderr
    assert "nothing done" in again.stdout  # nothing changed: yet the view is built
    folders = sorted(p.name for p in view.iterdir())
    assert folders == sorted(title for title, _, _ in albums)
    links = [p for folder in view.iterdir() for p in folder.iterdir()]
    assert len(links) == sum(size for _, size, _ in albums)  # the duplicate once
    assert all(p.is_symlink() and p.resolve().is_file() for p in links)
    assert not any(os.path.basename(os.readlink(p)).startswith("copy of") for p in links)
