"""Benchmark: the embedding pipeline against the inference ceiling (not part of the test run).

    python tests/tools/make_vit_model.py /tmp/vit-b32.onnx        # once (needs torch)
    python tests/bench/bench_embed.py /tmp/vit-b32.onnx [--photos 300] [--library DIR]

On a generated library of photo-like 12-megapixel JPEGs, measured side by side:
  (a) ceiling: the same ONNX Runtime session over batches of already-preprocessed tensors
  (b) `imageclust index` end to end (scan, read, hash, decode, preprocess, embed, store)
  (c) naive: one image at a time, full-size decode, no batching, no thread pool
Prints images/s for each and the ratios b/a and b/c, then the per-photo budget in
core-milliseconds (each stage timed alone, one photo at a time) and the b/a it allows,
and the physical limit (inference + entropy decode per photo, on the same cores) with
(b) as a share of it:
with D core-ms of non-inference work and I of inference per photo on the same cores,
b/a cannot exceed I / (I + D). The entropy-decode floor is a 1/8-scale decode, which
still has to Huffman-decode every coefficient of the file.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import blake3
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon.index import decode, pipeline
from imageclust_daemon.index.preprocess import model_input
from imageclust_daemon.model import manifest, models
from imageclust_daemon.model.embed import Embedder, model_io, open_session
from imageclust_daemon.state.store import Store
from tests import photos


def make_library(folder: Path, n: int) -> list[Path]:
    """n distinct 4000x3000 JPEGs: 10 photo-like bases, each copy with its own mark.

    Sensor-like noise (sigma 6) gives them a real photo's entropy: ~4 MB at quality 92,
    so decoding costs what it costs on a camera's JPEG.
    """
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= n:
        return existing[:n]
    rng = np.random.default_rng(0)
    bases = []
    for i in range(10):
        smooth = np.asarray(photos.photo_like(i, size=(4000, 3000), scene=i % 5), np.float32)
        noisy = smooth + rng.normal(0, 6, smooth.shape).astype(np.float32)
        bases.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    paths = []
    for i in range(n):
        img = bases[i % 10].copy()
        x, y = (i * 97) % 3800, (i * 53) % 2800
        ImageDraw.Draw(img).ellipse((x, y, x + 150, y + 150), fill=(i % 256, 80, 255 - i % 256))
        path = folder / f"IMG_{i:04d}.jpg"
        img.save(path, quality=92)
        paths.append(path)
    return paths


def ceiling(embedder: Embedder, paths: list[Path], spec: models.ModelSpec, batch: int) -> float:
    tensors = []
    for path in paths:
        with Image.open(path) as img:
            img.draft("RGB", (448, 448))
            tensors.append(model_input(img, spec.preprocessing))
    x = np.stack(tensors)
    embedder.embed(x[:batch])  # warm up
    started = time.perf_counter()
    for i in range(0, len(x), batch):
        embedder.embed(x[i : i + batch])
    return len(x) / (time.perf_counter() - started)


ReaderFor = Callable[[models.LoadedModel], AbstractContextManager[pipeline.Reader]]


@contextmanager
def here(loaded: models.LoadedModel) -> Iterator[pipeline.Reader]:
    """Read and embed on this machine (what `index` does without --dask)."""
    yield pipeline.read_and_embed


def end_to_end(
    model_path: Path,
    library: Path,
    spec: models.ModelSpec,
    batch: int,
    reader_for: ReaderFor = here,
    heif_thumbnails: str = "fidelity",
) -> float:
    """`pipeline.index` over `library` into a fresh state database: photos/s."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        Store.open(Path(tmp) / "s.sqlite") as store,
    ):
        loaded = models.load_model(spec, model_path, store)
        with reader_for(loaded) as reader:
            loaded.embedder.embed(np.zeros((1, 3, 224, 224), np.float32))  # warm up, as (a)
            report = pipeline.index(
                [os.fsencode(library)],
                store=store,
                model=loaded,
                options=pipeline.IndexOptions(batch_size=batch, heif_thumbnails=heif_thumbnails),
                reader=reader,
            )
        assert report.embedded == report.scanned and not report.left, report
        return report.embedded / report.seconds


def naive(embedder: Embedder, paths: list[Path], spec: models.ModelSpec) -> float:
    started = time.perf_counter()
    for path in paths:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            x = model_input(img, spec.preprocessing)
        embedder.embed(x[None])
    return len(paths) / (time.perf_counter() - started)


def budget(paths: list[Path], spec: models.ModelSpec) -> dict[str, float]:
    """Median core-ms per photo of each non-inference stage, timed one at a time."""
    stages: dict[str, list[float]] = {
        "read+hash": [],
        "decode as index does": [],
        "resize+normalize": [],
        "decode at 1/8 (floor)": [],
    }

    def timed(stage: str, fn):
        started = time.perf_counter()
        result = fn()
        stages[stage].append((time.perf_counter() - started) * 1000)
        return result

    def read_and_hash(path: Path) -> bytes:
        data = path.read_bytes()
        blake3.blake3(data).hexdigest()
        return data

    target = decode._draft_target(spec.preprocessing)
    for path in paths:
        data = timed("read+hash", lambda: read_and_hash(path))  # noqa: B023
        with Image.open(io.BytesIO(data)) as img:
            img.draft(None, (target, target))
            timed("decode as index does", img.load)
            timed("resize+normalize", lambda: model_input(img, spec.preprocessing))
        with Image.open(io.BytesIO(data)) as img:
            img.draft(None, (img.width // 8, img.height // 8))
            timed("decode at 1/8 (floor)", img.load)
    return {stage: statistics.median(ms) for stage, ms in stages.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", type=Path, help="an ONNX CLIP vision model (make_vit_model.py)")
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--library", type=Path, default=Path(tempfile.gettempdir()) / "bench-12mp")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--name", default="clip-vit-b32", help="manifest entry for preprocessing")
    p.add_argument("--naive", type=int, default=60, help="photos for the (slow) naive run")
    args = p.parse_args()
    spec = manifest.load_manifest()[args.name]
    paths = make_library(args.library / str(args.photos), args.photos)
    session = open_session(args.model)
    embedder = Embedder(session, model_io(session, path=str(args.model), image_size=224))
    a = ceiling(embedder, paths, spec, args.batch)
    b = end_to_end(args.model, args.library / str(args.photos), spec, args.batch)
    c = naive(embedder, paths[: args.naive], spec)
    print(
        f"model {args.model.name}, {len(paths)} photos of 4000x3000, batch {args.batch}, "
        f"{os.cpu_count()} cores"
    )
    print(f"(a) ceiling (preprocessed tensors) {a:6.2f} images/s")
    print(f"(b) imageclust index end to end    {b:6.2f} images/s")
    print(f"(c) naive (1 at a time, full size) {c:6.2f} images/s  ({args.naive} photos)")
    print(f"b/a = {b / a:.2f}   b/c = {b / c:.2f}")
    cores = os.cpu_count() or 1
    inference = 1000 * cores / a  # the ceiling keeps every core busy with inference
    stages = budget(paths[:30], spec)
    print(f"per photo, core-ms: inference {inference:.1f} (= {cores} cores / ceiling)")
    for stage, ms in stages.items():
        print(f"  {stage:24s} {ms:6.1f}")
    other = sum(ms for stage, ms in stages.items() if "floor" not in stage)
    floor = stages["decode at 1/8 (floor)"]
    print(f"b/a allowed by this budget:            {inference / (inference + other):.2f}")
    print(f"b/a if all but entropy decoding were free: {inference / (inference + floor):.2f}")
    # The physical limit: every photo costs at least its inference (cores / ceiling) and its
    # entropy decode (a 1/8-scale decode, on one core), both on the same cores.
    limit = 1000 * cores / (inference + floor)
    print(f"physical limit (inference + entropy decode): {limit:.2f} images/s")
    print(f"(b) / limit = {b / limit:.2f}")


if __name__ == "__main__":
    main()
