"""Benchmark: the gallery at N photos (not part of the test run).

    python tests/bench/bench_web.py [--photos 100000]

Fills a state database through the real store (512-dim embeddings, groups from a
real recluster), publishes it, and serves the gallery with uvicorn on 127.0.0.1.
Then, side by side in one run, the server time (the `server-timing`-free way: the
client's time of a keep-alive request on loopback) of: the albums page, an album
of 200 photos, a page of 50 cached thumbnails (fetched one after another), a cold
thumbnail of a 12-MP JPEG (a new content each time), the timeline, the biggest event,
the map (a third of the photos carry a position) and a photo opened from its album.
Medians of 7.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imageclust_daemon import config as config_module
from imageclust_daemon.gallery import web
from imageclust_daemon.gallery.gallery import Reader
from imageclust_daemon.gallery.thumbs import ThumbCache
from imageclust_daemon.grouping import regroup
from imageclust_daemon.published import catalog
from imageclust_daemon.state.store import Store
from tests.bench.bench_catalog import MODEL, fill
from tests.conftest import write_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median_ms(client: httpx.Client, path: str, times: int = 7) -> float:
    spent = []
    for _ in range(times):
        t0 = time.perf_counter()
        answer = client.get(path)
        spent.append(time.perf_counter() - t0)
        assert answer.status_code == 200, (path, answer.status_code)
    return statistics.median(spent) * 1000


def twelve_megapixel(folder: Path, count: int) -> list[Path]:
    """`count` distinct 4000x3000 JPEGs (smooth gradients plus noise, like a photo's cost)."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:3000, 0:4000]
    base = np.stack([x * 255 // 4000, y * 255 // 3000, (x + y) * 255 // 7000], axis=-1)
    out = []
    for i in range(count):
        noise = rng.integers(0, 24, size=(3000, 4000, 3))
        img = Image.fromarray((base + noise + i).clip(0, 255).astype(np.uint8))
        path = folder / f"big_{i}.jpg"
        img.save(path, quality=90)
        out.append(path)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--photos", type=int, default=100_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        data.mkdir()
        with Store.open(data / "state.sqlite") as store:
            fill(store, args.photos)
            # a third of the photos with a position, spread over the world, for the map
            with store.transaction() as conn:
                conn.execute(
                    "UPDATE contents SET lat = (rowid * 37) % 140 - 70 + 0.5, "
                    "lon = (rowid * 91) % 360 - 180 + 0.5 WHERE rowid % 3 = 0"
                )
            run = regroup.recluster(store, MODEL, min_size=5, max_size=200)
            store.checkpoint()
        catalog.publish(
            data / "state.sqlite", data / "catalog.sqlite", model_id=MODEL, daemon_version="b"
        )
        port = free_port()
        cfg = config_module.load(
            write_config(
                tmp / "c.toml", storage={"data_dir": str(data)}, web={"listen": f"127.0.0.1:{port}"}
            )
        )
        # The synthetic library's paths do not exist: its pictures come from 12-MP JPEGs
        # written here and placed in the cache by content hash, as the server would.
        originals = twelve_megapixel(tmp, 8)
        gallery = web.Background(cfg, cfg.web.listen)
        gallery.start()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                for _ in range(100):
                    try:
                        client.get("/status")
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
                big = max(run.n_clusters, 1)
                reader = Reader(cfg.catalog_path)
                with reader:
                    albums = reader.albums()
                    biggest = albums[0]
                    hashes = reader.album_photos(biggest.id)[:50]
                cache = ThumbCache(cfg.data_dir / "thumbs")
                for h in hashes:
                    cache.get(h, "thumb", [bytes(originals[0])])
                albums_ms = median_ms(client, "/")
                album_ms = median_ms(client, f"/album/{biggest.id}")
                with reader.__class__(cfg.catalog_path) as again:
                    events = again.events()
                    event = max(events, key=lambda e: e.size)
                timeline_ms = median_ms(client, "/timeline")
                event_ms = median_ms(client, f"/event/{event.id}")
                map_ms = median_ms(client, "/map")
                photo_ms = median_ms(client, f"/photo/{hashes[1]}?in=album:{biggest.id}")

                def fifty() -> float:
                    t0 = time.perf_counter()
                    for h in hashes:
                        assert client.get(f"/thumb/{h}.jpg").status_code == 200
                    return (time.perf_counter() - t0) * 1000

                thumbs_ms = statistics.median(fifty() for _ in range(7))
                cold = []
                for path in originals[1:]:
                    t0 = time.perf_counter()
                    ThumbCache(tmp / "cold").get("f" * 64, "thumb", [bytes(path)])
                    cold.append((time.perf_counter() - t0) * 1000)
                    (tmp / "cold" / "thumb" / "ff" / ("f" * 64 + ".jpg")).unlink()
        finally:
            gallery.stop()
        print(
            f"{args.photos} photos, {big} albums (the biggest {biggest.size} photos): "
            f"albums page {albums_ms:.0f} ms, album of {min(biggest.size, 200)} photos "
            f"{album_ms:.0f} ms, 50 cached thumbnails {thumbs_ms:.0f} ms, cold thumbnail of a "
            f"12-MP JPEG {statistics.median(cold):.0f} ms (median of {len(cold)}); "
            f"timeline ({len(events)} events) {timeline_ms:.0f} ms, an event of {event.size} "
            f"photos {event_ms:.0f} ms, map {map_ms:.0f} ms, a photo in its album {photo_ms:.0f} ms"
        )


if __name__ == "__main__":
    main()
