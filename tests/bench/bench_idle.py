"""Benchmark: the daemon at rest with a large library indexed (not part of the test run).

    python tests/bench/bench_idle.py [--photos 100000] [--seconds 60] [--model M.onnx]

Writes N small real JPEGs (100 per folder), indexes them (the tiny test model by
default, so the index is quick), starts `imageclust run`, waits until its first
rescan is done, then samples the daemon's RSS and CPU time over `--seconds`. Then
measures how long a stop (SIGTERM) takes at rest, and `--stop-after` seconds into
the first full rescan of a second start.
With `--model`, the daemon starts with that model (e.g. a ViT-B/32 from
tests/tools/make_vit_model.py): it is opened once at start, then dropped while idle.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import write_config
from tests.onnx_models import build_tiny_clip


def make_photos(root: Path, n: int) -> None:
    for i in range(n):
        folder = root / f"{i // 100:04d}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        out = io.BytesIO()
        Image.new("RGB", (16, 12), (i % 256, (i // 256) % 256, (i // 65536) % 256)).save(
            out, format="JPEG"
        )
        (folder / f"IMG_{i:06d}.jpg").write_bytes(out.getvalue())


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MB, user+system CPU seconds) from /proc."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--photos", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--model", type=Path, help="the model the daemon runs with")
    p.add_argument("--stop-after", type=float, default=3.0, help="seconds into the rescan")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "library"
        t0 = time.perf_counter()
        make_photos(root, args.photos)
        print(f"wrote {args.photos} JPEGs in {time.perf_counter() - t0:.0f} s")
        model = args.model or build_tiny_clip(base / "tiny.onnx")
        config = write_config(
            base / "c.toml",
            library={"roots": [str(root)]},
            storage={"data_dir": str(base / "data")},
            model={"path": str(model), "batch_size": 64},
            ollama={"host": "http://127.0.0.1:9", "connect_timeout": 0.2},
        )
        cli = [sys.executable, "-m", "imageclust_daemon", "--config", str(config)]
        t0 = time.perf_counter()
        subprocess.run([*cli, "index", "--no-progress"], check=True, capture_output=True)
        subprocess.run([*cli, "recluster"], check=True, capture_output=True)
        print(f"indexed and grouped in {time.perf_counter() - t0:.0f} s")
        log = open(base / "daemon.log", "wb")  # noqa: SIM115
        daemon = subprocess.Popen([*cli, "--log-level", "INFO", "run"], stdout=log, stderr=log)
        try:
            wait_for(base / "daemon.log", b"idle:", daemon)
            # the first rescan is done; let the startup recluster, relabel and publish finish
            quiet = 0
            while quiet < 20:
                before = proc_stats(daemon.pid)[1]
                time.sleep(1)
                quiet = quiet + 1 if proc_stats(daemon.pid)[1] - before < 0.02 else 0
            rss0, cpu0 = proc_stats(daemon.pid)
            peak = rss0
            started = time.monotonic()
            while time.monotonic() - started < args.seconds:
                time.sleep(1)
                peak = max(peak, proc_stats(daemon.pid)[0])
            rss1, cpu1 = proc_stats(daemon.pid)
            elapsed = time.monotonic() - started
            print(
                f"daemon at rest over {elapsed:.0f} s with {args.photos} photos indexed "
                f"({Path(model).name}): RSS {rss1:.0f} MB (peak {peak:.0f} MB), "
                f"CPU {100 * (cpu1 - cpu0) / elapsed:.2f}% of one core"
            )
            print(f"stop at rest: {stop(daemon):.1f} s")
            # Again, stopped a few seconds into its first full rescan.
            log.seek(0)
            log.truncate()
            daemon = subprocess.Popen([*cli, "--log-level", "INFO", "run"], stdout=log, stderr=log)
            wait_for(base / "daemon.log", b"first rescan started", daemon)
            time.sleep(args.stop_after)
            print(f"stop {args.stop_after:.0f} s into the first rescan: {stop(daemon):.1f} s")
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=120)
            log.close()


def wait_for(log: Path, line: bytes, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 1200
    while line not in log.read_bytes():
        if time.monotonic() > deadline or daemon.poll() is not None:
            raise SystemExit(log.read_text()[-2000:])
        time.sleep(0.2)


def stop(daemon: subprocess.Popen[bytes]) -> float:
    """SIGTERM, as systemd stops it; seconds until the process has exited."""
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=300)
    return time.monotonic() - started


if __name__ == "__main__":
    main()
