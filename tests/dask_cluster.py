"""A real Dask cluster on 127.0.0.1 for the tests: `LocalCluster(processes=True)` with
worker processes, run in a child process of its own, so the test process holds none of
Dask's threads (the tests fail any test that leaks one).

    python -m tests.dask_cluster [N_WORKERS]   # prints the scheduler's address, then
                                               # runs until its standard input closes
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class LocalDask:
    """The child process that runs the cluster; `address` is its scheduler's."""

    def __init__(self, workers: int = 2) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.dask_cluster", str(workers)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("tcp://"):
            self.close()
            raise RuntimeError(f"the local Dask cluster did not start: {line!r}")
        self.address = line

    def run(self, code: str) -> object:
        """Run `code` (which sets `result`) in a fresh process with a Client `client`
        connected to the cluster; `result` back as JSON."""
        script = (
            "import json, os, sys\n"
            "from distributed import Client\n"
            f"client = Client({self.address!r}, timeout=20)\n"
            f"{code}\n"
            "client.close()\n"
            "print(json.dumps(result))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def worker_pids(self) -> dict[str, int]:
        pids = self.run("result = client.run(os.getpid)")
        assert isinstance(pids, dict)
        return {str(k): int(v) for k, v in pids.items()}

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def main(workers: int) -> None:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # (None would mean the default, :8787)
    ) as cluster:
        print(cluster.scheduler_address, flush=True)
        sys.stdin.read()  # until the test closes it


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    print(json.dumps("stopped"))
