"""Dev-only: how close a HEIF read through its embedded thumbnail comes to its full decode,
in the features of a real model (EfficientNet-Lite0, ImageNet weights; see
real_photo_check.export).

    python -m tests.tools.fetch_heif_samples
    python tests/tools/heif_fidelity_check.py --model efficientnet-lite0.onnx \
        [--photos DIR]    # real JPEG/PNG photographs, made into HEIC with a 320-px thumbnail

For each HEIF whose thumbnail imageclust would use: the cosine between the features of
`decode(...)` (the thumbnail) and of `decode(..., reduced_decode=False)` (the full image,
CLIP's reference path). The real phones' files come first; `--photos` adds real
photographs encoded by libheif's `heif-enc --thumb 320` (Debian's libheif-examples), as
a phone would store them. Prints each cosine, then the minimum and median per set.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from imageclust_daemon.index import decode, heif_thumbs
from imageclust_daemon.model import manifest
from imageclust_daemon.model.embed import Embedder, model_io, open_session
from tests.tools import fetch_heif_samples


def _encoded(photo: Path, out: Path, aspect: float, thumb: int) -> Path | None:
    """`photo`, its centre cut to `aspect` (a phone's 4:3), as a HEIC with a 320-px
    thumbnail, by heif-enc (its default quality)."""
    with Image.open(photo) as image:
        rgb = image.convert("RGB")
    w, h = rgb.size
    if w / h > aspect:
        cut = round(h * aspect)
        rgb = rgb.crop(((w - cut) // 2, 0, (w - cut) // 2 + cut, h))
    else:
        cut = round(w / aspect)
        rgb = rgb.crop((0, (h - cut) // 2, w, (h - cut) // 2 + cut))
    if min(rgb.size) < 448:
        return None
    source = out / (photo.stem + ".png")
    rgb.save(source)
    target = out / (photo.stem + ".heic")
    done = subprocess.run(
        ["heif-enc", "--thumb", str(thumb), "-o", str(target), str(source)],
        capture_output=True,
        text=True,
    )
    source.unlink()
    return target if done.returncode == 0 and target.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--photos", type=Path)
    parser.add_argument("--samples", type=Path, default=fetch_heif_samples.DEFAULT_DEST)
    parser.add_argument("--aspect", type=float, default=4 / 3, help="crop --photos to this")
    parser.add_argument("--thumb", type=int, default=320, help="heif-enc's --thumb for --photos")
    args = parser.parse_args()
    decode.enable_heif()
    # EfficientNet's normalisation with CLIP's geometry (shorter side 224, then the
    # centre 224): the thumbnail is used where its shorter side reaches the resize
    efficientnet = manifest.load_manifest()["efficientnet-lite0-imagenet"].preprocessing
    clip = manifest.load_manifest()["clip-vit-b32"].preprocessing
    spec = dataclasses.replace(efficientnet, resize_shortest=clip.resize_shortest, crop=clip.crop)
    session = open_session(args.model)
    embedder = Embedder(session, model_io(session, path=str(args.model), image_size=224))

    def cosine(data: bytes) -> float | None:
        if heif_thumbs.picture(data, spec.resize_shortest) is None:
            return None  # read in full: nothing to compare
        thumb = decode.decode(data, spec).pixels
        full = decode.decode(data, spec, reduced_decode=False).pixels
        a, b = embedder.embed(np.stack([thumb, full]))
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    sets: dict[str, list[tuple[str, float]]] = {"phones": []}
    for path in sorted(args.samples.glob("*.he*")):
        if path.name.startswith("damaged_"):
            continue
        try:
            value = cosine(path.read_bytes())
        except Exception as exc:  # a dev tool: say it and go on
            print(f"{path.name}: {exc}", file=sys.stderr)
            continue
        if value is not None:
            sets["phones"].append((path.name, value))
    if args.photos is not None:
        made = f"heif-enc --thumb {args.thumb}"
        sets[made] = []
        with tempfile.TemporaryDirectory() as tmp:
            for photo in sorted(args.photos.rglob("*")):
                if photo.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                    continue
                encoded = _encoded(photo, Path(tmp), args.aspect, args.thumb)
                if encoded is None:
                    continue
                value = cosine(encoded.read_bytes())
                if value is not None:
                    sets[made].append((photo.name, value))
    for name, rows in sets.items():
        for photo, value in rows:
            print(f"{name}\t{photo}\t{value:.4f}")
        values = [v for _, v in rows]
        if values:
            print(
                f"{name}: {len(values)} photos, cosine min {min(values):.4f}, "
                f"median {float(np.median(values)):.4f}"
            )


if __name__ == "__main__":
    main()
