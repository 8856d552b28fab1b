"""The first index of a very large archive, spread over a Dask cluster.

The local process does what every index does up to the list of files to read (scan:
stat only; presence; the plan), and stays the only writer of the state database. The
files to read go out in shards, by path. A worker reads, hashes, decodes and embeds its
shard with `pipeline.prepare` and one ONNX Runtime session of its own, kept for the
worker's life, and sends back what a local index would record: hashes, metadata,
failures and their reasons, embeddings. Each shard is committed in one transaction as
it arrives, so the result is the local index's, and an interrupted run keeps every
shard committed before it.

- The photos and the model file must be at the same paths on every worker: a shared
  filesystem (NFS, SMB, a cluster filesystem) mounted alike everywhere.
- A worker checks its model file against the writer's sha256 before any shard; a
  worker whose file differs is given none.
- A content this database has already embedded is never decoded or sent back: the
  workers get the list of what is settled and send its hash only.
- A worker lost mid-shard: Dask runs the shard again elsewhere. A shard that cannot be
  finished (every worker that tried it died, or none has the model), and a file a
  worker cannot find where the writer can: not recorded, so `imageclust index` (here,
  without Dask) finishes them.

Dask distributed is an optional dependency (`pip install 'imageclust-daemon[dask]'`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from imageclust_daemon.errors import ImageclustError
from imageclust_daemon.index import pipeline
from imageclust_daemon.model.embed import Embedder, file_sha256
from imageclust_daemon.model.models import open_embedder
from imageclust_daemon.records import FileStat, ModelSpec, display_path
from imageclust_daemon.state.store import Store

log = logging.getLogger(__name__)

SHARD_FILES = 64  # files per task: ~4 s of a worker's time, small enough to lose
# How long a run waits with none of its workers alive (a worker restarted by its nanny
# comes back within seconds, but at another address, which the run's shards are not
# bound to) before it leaves the rest to a local run.
WORKERLESS_SECONDS = 10.0
POLL_SECONDS = 0.2


class ClusterError(ImageclustError):
    """The Dask cluster cannot index: unreachable, or no worker has the model."""


class ModelDiffers(Exception):
    """A worker's model file is not the writer's (raised on the worker)."""


# -- the worker's side -----------------------------------------------------------------------

_lock = threading.Lock()
_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256
_embedders: dict[tuple[str, str], Embedder] = {}  # (path, sha256) -> its session


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return socket.gethostname()


def model_problem(model_path: str, sha256: str) -> str | None:
    """Why this worker cannot embed with the writer's model, or None when it can."""
    try:
        st = os.stat(model_path)
    except OSError as exc:
        return f"no model file at {model_path} ({exc.strerror or exc})"
    key = (model_path, st.st_size, st.st_mtime_ns)
    with _lock:
        digest = _digests.get(key)
    if digest is None:
        digest = file_sha256(Path(model_path))
        with _lock:
            _digests[key] = digest
    if digest != sha256:
        return f"{model_path} has sha256 {digest[:16]}..., the writer's has {sha256[:16]}..."
    return None


def _embedder(spec: ModelSpec, model_path: str, sha256: str, threads: int) -> Embedder:
    problem = model_problem(model_path, sha256)
    if problem is not None:
        raise ModelDiffers(f"worker {_worker_name()}: {problem}")
    with _lock:
        embedder = _embedders.get((model_path, sha256))
        if embedder is None:
            embedder = open_embedder(spec, Path(model_path), threads=threads)
            _embedders[(model_path, sha256)] = embedder
        return embedder


def settled_set(hashes: list[str]) -> frozenset[str]:
    """The contents the writer has embedded already, as a worker looks them up."""
    return frozenset(hashes)


def embed_shard(
    files: list[FileStat],
    settled: frozenset[str],
    spec: ModelSpec,
    model_path: str,
    sha256: str,
    batch_size: int,
    threads: int = 0,
    heif_thumbnails: str = "fidelity",
) -> list[pipeline.Prepared]:
    """One shard, on a worker: each file as `pipeline.prepare` reads it, the pixels
    replaced by their embedding. What `settled` holds is hashed, not decoded."""
    embedder = _embedder(spec, model_path, sha256, threads)
    claims = pipeline.Claims(set(settled))
    workers = min(4, os.cpu_count() or 1)
    out: list[pipeline.Prepared] = []
    waiting: list[int] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="imageclust-shard") as pool:
        # As a local index does: the next files decode while a batch is embedded.
        read = lambda f: pipeline.prepare(  # noqa: E731
            f, claims, spec.preprocessing, heif_thumbnails=heif_thumbnails
        )
        for item in pipeline.ordered_map(pool, read, files, 2 * batch_size + workers):
            out.append(item)
            if item.pixels is not None:
                waiting.append(len(out) - 1)
            if len(waiting) >= batch_size:
                _embed_waiting(embedder, out, waiting)
    _embed_waiting(embedder, out, waiting)
    return out


def _embed_waiting(embedder: Embedder, out: list[pipeline.Prepared], waiting: list[int]) -> None:
    if not waiting:
        return
    pixels = [out[i].pixels for i in waiting]
    vectors = embedder.embed(np.stack([p for p in pixels if p is not None]))
    for i, vector in zip(waiting, vectors, strict=True):
        out[i] = replace(out[i], pixels=None, vector=np.asarray(vector, dtype=np.float32))
    waiting.clear()


# -- the writer's side -----------------------------------------------------------------------


def _shards(files: list[FileStat], size: int) -> Iterator[list[FileStat]]:
    for i in range(0, len(files), size):
        yield files[i : i + size]


@dataclass
class Cluster:
    """A connected Dask client and the model every worker must have; its
    `read_and_embed` is a `pipeline.Reader`."""

    client: Any  # distributed.Client
    address: str
    model_path: Path
    sha256: str
    shard_files: int = SHARD_FILES

    @classmethod
    def connect(cls, address: str, model_path: Path, model_id: str, *, timeout: float) -> Cluster:
        try:
            from distributed import Client
        except ImportError:
            raise ClusterError(
                "Dask is not installed here: pip install 'imageclust-daemon[dask]' (on this "
                "machine and every worker)"
            ) from None
        try:
            client = Client(address, timeout=timeout, set_as_default=False)  # type: ignore[no-untyped-call]
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {address}: {exc}. Is `dask scheduler` "
                "running there? Without --dask, imageclust indexes on this machine"
            ) from None
        return cls(client, address, model_path, model_id.rsplit("@sha256:", 1)[-1])

    def close(self) -> None:
        self.client.close()

    def ready_workers(self) -> list[str]:
        """The workers whose model file is the writer's; the others are named in the log."""
        # A worker without imageclust (or any other failure there) answers with its error.
        raw = self.client.run(model_problem, str(self.model_path), self.sha256, on_error="return")
        answers: dict[str, str | None] = {
            worker: f"{type(a).__name__}: {a}" if isinstance(a, BaseException) else a
            for worker, a in raw.items()
        }
        for worker, problem in sorted(answers.items()):
            if problem is not None:
                log.warning("dask worker %s is given no photos: %s", worker, problem)
        ready = sorted(w for w, problem in answers.items() if problem is None)
        if not ready:
            why = "no workers" if not answers else "no worker has the model file"
            raise ClusterError(
                f"the Dask cluster at {self.address} cannot index: {why} (the model must "
                f"be at {self.model_path} on every worker, the same file as here)"
            )
        return ready

    def read_and_embed(
        self,
        to_read: list[FileStat],
        *,
        store: Store,
        model: pipeline.IndexModel,
        options: pipeline.IndexOptions,
        stop: threading.Event | None = None,
        progress: pipeline.Progress | None = None,
    ) -> pipeline.Tally:
        """`pipeline.read_and_embed`, with the reading and embedding on the workers."""
        from distributed import as_completed

        batches = pipeline.Batches(store, model, options.batch_size)
        if not to_read:
            return batches.tally
        workers = self.ready_workers()
        # Made by a task, not scattered: data scattered to a worker that dies is lost for
        # good (every shard depending on it then failed); a task's result the scheduler
        # computes again from its arguments, which it keeps.
        settled = self.client.submit(
            settled_set, sorted(store.settled_hashes(model.id)), pure=False, workers=workers
        )
        shards = _shards(to_read, self.shard_files)
        submitted: dict[Any, list[FileStat]] = {}

        def submit(shard: list[FileStat]) -> Any:
            future = self.client.submit(
                embed_shard,
                shard,
                settled,
                model.spec,
                str(self.model_path),
                self.sha256,
                options.batch_size,
                heif_thumbnails=options.heif_thumbnails,
                workers=workers,
                allow_other_workers=False,
                retries=1,
                pure=False,
            )
            submitted[future] = shard
            return future

        in_flight = 2 * len(workers) + 2  # enough to keep every worker busy, memory bounded
        first = [submit(s) for _, s in zip(range(in_flight), shards, strict=False)]
        queue = as_completed(first, loop=self.client.loop)  # type: ignore[no-untyped-call]
        done = 0
        for future in self._as_done(queue, workers, submitted, batches):
            shard = submitted.pop(future)
            if stop is not None and stop.is_set():
                future.cancel()
                batches.tally.left.extend(f.path for f in shard)
                continue
            try:
                results: list[pipeline.Prepared] = future.result()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # KilledWorker, ModelDiffers, cancelled, connection lost
                log.warning(
                    "dask: a shard of %d files was not indexed (%s: %s); "
                    "`imageclust index` reads them here",
                    len(shard),
                    type(exc).__name__,
                    exc,
                )
                batches.tally.left.extend(f.path for f in shard)
            else:
                self._record(results, batches)
            done += len(shard)
            if progress:
                progress(done, len(to_read))
            if not (stop is not None and stop.is_set()):
                following = next(shards, None)
                if following is not None:
                    queue.add(submit(following))  # type: ignore[no-untyped-call]
        for shard in shards:  # stopped: what was never sent
            batches.tally.left.extend(f.path for f in shard)
        return batches.tally

    def _as_done(
        self,
        queue: Any,
        workers: list[str],
        submitted: dict[Any, list[FileStat]],
        batches: pipeline.Batches,
    ) -> Iterator[Any]:
        """The futures of `queue` as they finish, until it is empty or every one of the
        `workers` the shards are bound to has been gone for WORKERLESS_SECONDS (killed, or
        restarted by its nanny at another address): then what is still out is left for a
        local run, and the run ends, keeping what was committed."""
        gone_since: float | None = None
        while not queue.is_empty():
            if queue.has_ready():
                gone_since = None
                yield from queue.next_batch(block=False)
                continue
            if self._any_alive(workers):
                gone_since = None
            elif gone_since is None:
                gone_since = time.monotonic()
            elif time.monotonic() - gone_since > WORKERLESS_SECONDS:
                out = [f.path for shard in submitted.values() for f in shard]
                log.warning(
                    "dask: every worker this run started with is gone; %d files were not "
                    "indexed there: `imageclust index` (without --dask) reads them here",
                    len(out),
                )
                for future in list(submitted):
                    future.cancel()
                batches.tally.left.extend(out)
                submitted.clear()
                queue.clear()
                return
            time.sleep(POLL_SECONDS)

    def _any_alive(self, workers: list[str]) -> bool:
        try:
            known = self.client.scheduler_info()["workers"]
        except (OSError, TimeoutError):  # the scheduler itself unreachable: none
            return False
        return any(w in known for w in workers)

    @staticmethod
    def _record(results: Sequence[pipeline.Prepared], batches: pipeline.Batches) -> None:
        """One shard, one transaction. A file the worker could not find but this machine
        can is not the file's fault (not mounted there?): left for a local index."""
        for item in results:
            path = item.file.stat.path
            if item.vanished and os.path.lexists(path):
                log.warning("dask: %s: not found on its worker", display_path(path))
                batches.tally.left.append(path)
                continue
            batches.add(item)
        batches.flush()
