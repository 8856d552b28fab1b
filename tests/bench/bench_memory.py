"""Benchmark: peak RSS of a first index as the library grows (not part of the test run).

    python tests/bench/bench_memory.py MODEL.onnx [--sizes 100 1000]

Each size is indexed from scratch in its own process; prints the peak RSS of that
process. A flat figure means memory is bounded by the pipeline (queue depth x
photo size), not by the library.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_embed import make_library
from tests.conftest import write_config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", type=Path)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--library", type=Path, default=Path(tempfile.gettempdir()) / "bench-12mp")
    args = p.parse_args()
    for n in args.sizes:
        folder = args.library / f"mem-{n}"
        make_library(folder, n)
        with tempfile.TemporaryDirectory() as tmp:
            config = write_config(
                Path(tmp) / "c.toml",
                storage={"data_dir": str(Path(tmp) / "data")},
                model={"path": str(args.model)},
            )
            code = (
                "import json, resource, sys\n"
                "from imageclust_daemon.cli.commands import main\n"
                f"rc = main(['--config', {str(config)!r}, 'index', '--json', '--no-progress', "
                f"{str(folder)!r}])\n"
                "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024\n"
                "print(peak, file=sys.stderr)\n"
            )
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            report = json.loads(out.stdout)
            peak = int(out.stderr.strip().splitlines()[-1])
            print(
                f"{n:>6} photos of 4000x3000: {report['embedded']} embedded in "
                f"{report['seconds']:.0f} s, peak RSS {peak} MB"
            )


if __name__ == "__main__":
    main()
