"""A generated photo library of distinct scenes ("events"), for clustering and labeling tests."""

from __future__ import annotations

import os
from pathlib import Path

from tests import photos

# Per scene: when its photos were taken and where (None: no GPS), so fallback titles
# have something to say. Scenes beyond this list have neither.
SCENE_FACTS: list[tuple[str, tuple[float, float] | None]] = [
    ("2024:06:%02d 14:30:00", (48.8583, 2.2945)),  # Paris, June 2024
    ("2019:07:%02d 10:00:00", (-33.8568, 151.2153)),  # Sydney, July 2019 (winter there)
    ("2021:12:%02d 09:15:00", None),
    ("2022:03:%02d 18:45:00", (40.7128, -74.0060)),  # New York
]


def write_variant(scene: int, seed: int, stem: Path) -> Path:
    """A photo of `scene`, varied in size, format and EXIF rotation; JPEGs carry date and GPS."""
    img = photos.photo_like(seed, scene=scene)
    kind = seed % 5
    when, where = SCENE_FACTS[scene] if scene < len(SCENE_FACTS) else (None, None)
    exif = {"taken_at": when % (1 + seed % 28) if when else None, "gps": where}
    if kind == 0:
        return photos.save_jpeg(img, stem.with_suffix(".jpg"), **exif)
    if kind == 1:
        rotated = photos.rotated_for_orientation(img, 6)
        return photos.save_jpeg(rotated, stem.with_suffix(".jpeg"), orientation=6, **exif)
    if kind == 2:
        half = img.resize((img.width // 2, img.height // 2))
        return photos.save_webp(half, stem.with_suffix(".webp"))
    if kind == 3:
        return photos.save_bmp(img, stem.with_suffix(".bmp"))
    smaller = img.resize((img.width * 3 // 4, img.height * 3 // 4))
    return photos.save_jpeg(smaller, stem.with_suffix(".JPG"), quality=70, **exif)


def scene_library(root: Path, scenes: int, per_scene: int) -> dict[str, int]:
    """Folders "event N" of `per_scene` photos each; returns {path: scene}."""
    truth = {}
    for scene in range(scenes):
        folder = root / f"event {scene}"
        folder.mkdir(parents=True)
        for i in range(per_scene):
            path = write_variant(scene, 1000 * scene + i, folder / f"IMG_{i:03d}")
            truth[os.fsdecode(path)] = scene
    return truth


def add_photos(root: Path, scene: int, count: int, first_seed: int) -> list[Path]:
    """New photos of an existing scene (seeds not used by `scene_library`)."""
    return [
        write_variant(scene, first_seed + i, root / f"event {scene}" / f"NEW_{first_seed + i}")
        for i in range(count)
    ]
