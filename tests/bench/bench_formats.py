"""Benchmark: what one photo costs to decode and preprocess, by format (not part of the
test run).

    python tests/bench/bench_formats.py

A 12-MP picture (gradients plus noise, like a photo's cost) written as JPEG and as HEIC
(with pillow-heif's encoder, a test dependency), each decoded by imageclust's own
`decode.decode` for the model's input, side by side; medians of 5.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon import decode
from imageclust_daemon.records import Preprocessing


def main() -> None:
    import pillow_heif

    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:3000, 0:4000]
    base = np.stack([x * 255 // 4000, y * 255 // 3000, (x + y) * 255 // 7000], axis=-1)
    noise = rng.integers(0, 24, size=(3000, 4000, 3))
    img = Image.fromarray((base + noise).clip(0, 255).astype(np.uint8))
    encoded = {}
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    encoded["JPEG"] = out.getvalue()
    out = io.BytesIO()
    pillow_heif.from_pillow(img).save(out, quality=80)
    encoded["HEIC"] = out.getvalue()
    spec = Preprocessing()
    for name, data in encoded.items():
        spent = []
        for _ in range(5):
            t0 = time.perf_counter()
            decode.decode(data, spec, path=name)
            spent.append(time.perf_counter() - t0)
        print(
            f"12-MP {name} ({len(data) / 1e6:.1f} MB): "
            f"{statistics.median(spent) * 1000:.0f} ms per photo"
        )


if __name__ == "__main__":
    main()
