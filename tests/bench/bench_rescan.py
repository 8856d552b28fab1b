"""Benchmark: rescan of an unchanged library of N small files (not part of the test run).

    python tests/bench/bench_rescan.py [--files 100000]

Creates N distinct small files named .jpg in 1,000 folders, indexes them once,
then makes every file unreadable (mode 000) and rescans in a process that is
refused any file it tries to open (as root: CAP_DAC_OVERRIDE dropped with
setpriv). Prints files/s of the rescan and proves that no content was read:
the report's bytes_read is 0 and not one open was refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import write_config
from tests.onnx_models import build_tiny_clip


def make_files(root: Path, n: int) -> None:
    per_folder = 100
    for i in range(n):
        folder = root / f"{i // per_folder:04d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True)
        (folder / f"IMG_{i:06d}.jpg").write_bytes(i.to_bytes(8, "little") * 8)


def index(config: Path, prefix: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "imageclust_daemon",
            "--config",
            str(config),
            "--log-level",
            "ERROR",
            "index",
            "--json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=100_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "library"
        t0 = time.perf_counter()
        make_files(root, args.files)
        print(f"created {args.files} files in {time.perf_counter() - t0:.1f} s")
        config = write_config(
            base / "c.toml",
            library={"roots": [str(root)]},
            storage={"data_dir": str(base / "data")},
            model={"path": str(build_tiny_clip(base / "m.onnx"))},
        )
        first = index(config, [])
        print(
            f"first index: {first['hashed']} files read ({first['bytes_read']} bytes) "
            f"in {first['seconds']:.1f} s"
        )
        for folder, _dirs, files in os.walk(root):
            for name in files:
                os.chmod(os.path.join(folder, name), 0)
        prefix: list[str] = []
        if os.geteuid() == 0:
            caps = "-dac_override,-dac_read_search"
            prefix = [
                shutil.which("setpriv") or "setpriv",
                f"--bounding-set={caps}",
                f"--inh-caps={caps}",
            ]
        for attempt in range(3):
            r = index(config, prefix)
            print(
                f"rescan {attempt + 1}: {r['scanned']} files, {r['unchanged']} unchanged, "
                f"bytes_read={r['bytes_read']}, opens refused={r['failed']}, "
                f"{r['seconds']:.2f} s = {r['scanned'] / r['seconds']:,.0f} files/s"
            )


if __name__ == "__main__":
    main()
