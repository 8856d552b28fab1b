"""Benchmark: what one photo costs to decode and preprocess, by format, and what a mixed
library costs to index next to a JPEG-only one (not part of the test run).

    python tests/bench/bench_formats.py                       # decode costs
    python tests/bench/bench_formats.py --model /tmp/vit-b32.onnx [--photos 120]
                                                              # + index throughput

Decode, side by side, medians of 5, each for the model's input:
- a 12-MP picture (gradients plus noise, like a photo's cost) as JPEG and as HEIC
  (pillow-heif's encoder, a test dependency), through `decode.decode`;
- a camera RAW: the real Nikon D5000 DNG (12.3 MP of sensor data, a 1280x850 preview)
  from `python -m tests.tools.fetch_raw_samples`, else a generated 12-MP DNG with a
  1620x1080 preview: through its preview (what `decode.decode` does), a half-size
  demosaic (what it does without a usable preview), and a full AHD demosaic.

Index (`--model`, an ONNX vision model such as tests/tools/make_vit_model.py's ViT-B/32):
`pipeline.index` end to end over N photos, JPEG only, then a mixed library of the same
size (half JPEG, a quarter HEIC, a quarter RAW), then the same pictures as HEIC with a
320-px and a 640-px embedded thumbnail (`heif-enc --thumb N`, where heif-enc is
installed), the 320-px ones also with `index.heif_thumbnails = "speed"` (the default,
"fidelity", decodes them in full): photos/s and each one's ratio to JPEG only.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon.index import camera_raw, decode
from imageclust_daemon.index.preprocess import model_input
from imageclust_daemon.model import manifest
from imageclust_daemon.records import Preprocessing
from tests.bench.bench_embed import end_to_end
from tests.dng import Preview, dng_bytes
from tests.tools import fetch_raw_samples

SPEC = Preprocessing()


def picture(seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:3000, 0:4000]
    base = np.stack([x * 255 // 4000, y * 255 // 3000, (x + y) * 255 // 7000], axis=-1)
    noise = rng.integers(0, 24, size=(3000, 4000, 3))
    return Image.fromarray((base + noise).clip(0, 255).astype(np.uint8))


def encoded(img: Image.Image, kind: str) -> bytes:
    """`img` as `kind`: JPEG, HEIC (pillow-heif's encoder), or HEIC+N: libheif's
    `heif-enc --thumb N` (Debian's libheif-examples), a HEIC with an N-px thumbnail."""
    out = io.BytesIO()
    if kind.startswith("HEIC+"):
        with tempfile.TemporaryDirectory() as tmp:
            source, target = Path(tmp) / "in.png", Path(tmp) / "out.heic"
            img.save(source)
            subprocess.run(
                ["heif-enc", "--thumb", kind[5:], "-o", str(target), str(source)],
                check=True,
                capture_output=True,
            )
            return target.read_bytes()
    if kind == "JPEG":
        img.save(out, "JPEG", quality=90)
    else:
        import pillow_heif

        pillow_heif.from_pillow(img).save(out, quality=80)
    return out.getvalue()


def a_raw() -> tuple[str, bytes]:
    real = fetch_raw_samples.DEFAULT_DEST / "hdrmerge_sample1.dng"
    if fetch_raw_samples.present(fetch_raw_samples.DEFAULT_DEST):
        return "real Nikon D5000 DNG, 12.3 MP, 1280x850 preview", real.read_bytes()
    img = picture(2)
    data = dng_bytes(img, preview=Preview(img.resize((1620, 1080))))
    return "generated 12-MP DNG, 1620x1080 preview", data


def median_ms(fn: Callable[[], object], n: int = 5) -> float:
    spent = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        spent.append(time.perf_counter() - t0)
    return statistics.median(spent) * 1000


# HEIC with an embedded thumbnail, where heif-enc is there
THUMBED = ("HEIC+320", "HEIC+640") if shutil.which("heif-enc") else ()


def decode_costs() -> None:
    img = picture()
    for kind in ("JPEG", "HEIC", *THUMBED):
        data = encoded(img, kind)
        ms = median_ms(lambda data=data, kind=kind: decode.decode(data, SPEC, path=kind))
        print(f"12-MP {kind} ({len(data) / 1e6:.1f} MB): {ms:.0f} ms per photo")
        if kind == "HEIC+320":
            ms = median_ms(lambda data=data: decode.decode(data, SPEC, heif_thumbnails="speed"))
            print(f"12-MP {kind}, heif_thumbnails = speed: {ms:.0f} ms per photo")
    what, raw = a_raw()

    def demosaiced(half: bool) -> np.ndarray:
        with camera_raw.opened(raw, "DNG") as shot:
            if half:
                rgb = shot.demosaic()
            else:  # what a RAW developer does: every pixel, AHD interpolation
                rgb = shot._raw.postprocess(use_camera_wb=True, output_bps=8)
        return model_input(decode.reduced(Image.fromarray(rgb), 2 * SPEC.resize_shortest), SPEC)

    preview = median_ms(lambda: decode.decode(raw, SPEC, path="a.dng"))
    half = median_ms(lambda: demosaiced(True))
    full = median_ms(lambda: demosaiced(False), n=3)
    print(f"RAW ({what}, {len(raw) / 1e6:.1f} MB):")
    print(f"  embedded preview (imageclust)  {preview:6.0f} ms per photo")
    print(f"  half-size demosaic (fallback)  {half:6.0f} ms   ({half / preview:.1f}x the preview)")
    print(f"  full AHD demosaic              {full:6.0f} ms   ({full / preview:.1f}x the preview)")


def make_library(folder: Path, n: int, mixed: bool, heic: str = "") -> None:
    """n distinct files: 4 pictures, each file with its own bytes appended where its
    format ignores them (after a JPEG's end-of-image marker, after a TIFF's data, in a
    HEIF "free" box), so every file hashes differently and is embedded. `heic`: every
    file a HEIC of that kind (`encoded`) instead."""
    folder.mkdir(parents=True, exist_ok=True)
    _, raw = a_raw()
    bases = [picture(seed) for seed in range(4)]
    jpegs = [encoded(b, "JPEG") for b in bases]
    heics = [encoded(b, heic or "HEIC") for b in bases] if mixed or heic else []
    for i in range(n):
        mark = i.to_bytes(4, "big") * 4
        if heic or (mixed and i % 4 == 1):
            name, data = f"IMG_{i:04d}.heic", heics[i % 4] + struct.pack(">I4s", 24, b"free") + mark
        elif mixed and i % 4 == 3:
            name, data = f"IMG_{i:04d}.dng", raw + mark
        else:
            name, data = f"IMG_{i:04d}.jpg", jpegs[i % 4] + mark
        (folder / name).write_bytes(data)


def index_rate(
    model_path: Path, library: Path, batch: int, heif_thumbnails: str = "fidelity"
) -> float:
    spec = manifest.load_manifest()["clip-vit-b32"]
    return end_to_end(model_path, library, spec, batch, heif_thumbnails=heif_thumbnails)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, help="an ONNX CLIP vision model: also index")
    p.add_argument("--photos", type=int, default=120)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    decode_costs()
    if args.model is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        jpeg_only, mixed = Path(tmp) / "jpeg", Path(tmp) / "mixed"
        make_library(jpeg_only, args.photos, mixed=False)
        make_library(mixed, args.photos, mixed=True)
        for kind in THUMBED:
            make_library(Path(tmp) / kind, args.photos, mixed=False, heic=kind)
        a = index_rate(args.model, jpeg_only, args.batch)
        b = index_rate(args.model, mixed, args.batch)
        thumbed = {kind: index_rate(args.model, Path(tmp) / kind, args.batch) for kind in THUMBED}
        if "HEIC+320" in THUMBED:
            library = Path(tmp) / "HEIC+320"
            thumbed["HEIC+320 speed"] = index_rate(args.model, library, args.batch, "speed")
        a2 = index_rate(args.model, jpeg_only, args.batch)  # again: the machine drifts
    jpeg = (a + a2) / 2
    print(f"index, {args.photos} photos of 12 MP, {args.model.name}, {os.cpu_count()} cores:")
    print(f"  JPEG only                          {jpeg:6.2f} photos/s ({a:.2f}, {a2:.2f})")
    print(f"  mixed (1/2 JPEG, 1/4 HEIC, 1/4 RAW) {b:6.2f} photos/s   {b / jpeg:.2f} of JPEG")
    for kind, rate in thumbed.items():
        px, _, setting = kind[5:].partition(" ")
        what = f"HEIC, {px}-px thumbnail (heif-enc)" + (f", {setting}" if setting else "")
        print(f"  {what:<35}{rate:6.2f} photos/s   {rate / jpeg:.2f} of JPEG")


if __name__ == "__main__":
    main()
