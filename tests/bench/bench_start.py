"""Benchmark: seconds from the interpreter's start to an open model session, as
`imageclust index` gets there (not part of the test run).

    python tests/bench/bench_start.py CONFIG.toml     # a config whose model.path is set

Prints the imports' time (what the console script imports), the config and the
model's identity (its sha256, cached under its stat), the ONNX Runtime session's
opening, and their total. Run it a few times: the first run reads the model from disk.
"""

import time

started = time.perf_counter()

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon import config  # noqa: E402
from imageclust_daemon.cli import commands  # noqa: E402, F401 (what the console script loads)
from imageclust_daemon.model import models  # noqa: E402
from imageclust_daemon.state.store import Store  # noqa: E402


def main() -> None:
    imported = time.perf_counter()
    cfg = config.load(Path(sys.argv[1]))
    located = models.locate(cfg)
    with Store.open(cfg.state_db_path) as store:
        model = models.load_model(located.spec, located.vision_path, store)
    named = time.perf_counter()
    model.embedder.opened()
    opened = time.perf_counter()
    print(
        f"imports {imported - started:.2f} s, config and identity {named - imported:.2f} s, "
        f"session {opened - named:.2f} s: {opened - started:.2f} s in all"
    )


if __name__ == "__main__":
    main()
