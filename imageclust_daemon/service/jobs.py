"""The daemon's work as scheduled jobs, run one at a time: the state database has one writer.

APScheduler owns time. Every job runs on its single executor thread, so no two
jobs ever overlap (each is also `max_instances=1`, `coalesce=True`); interval
jobs carry a tenth of their interval as jitter. What stays here is only what
changed since a job last ran (`_dirty`, `_publish_due`, the watcher's buffer):

    ingest       every second: index the paths the watcher reported, once settled;
                 a full rescan when the watcher lost events
    reconcile    at start, then every `schedule.reconcile_seconds`: rescan every root
    retry        once, RETRY_AFTER seconds after a rescan or an ingest failed: rescan
    regroup      every `schedule.recluster_seconds`, and right after the first rescan:
                 recluster and relabel the changed groups, if something changed
    publish      every `schedule.publish_seconds`, if something changed
    maintenance  10 minutes after a start, then daily: forget long-gone files and their
                 embeddings, optimize, checkpoint
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from imageclust_daemon import activity
from imageclust_daemon.config import Config
from imageclust_daemon.errors import ImageclustError, is_disk_full
from imageclust_daemon.gallery.thumbs import ThumbCache
from imageclust_daemon.grouping import regroup
from imageclust_daemon.grouping.ollama import OllamaClient
from imageclust_daemon.index.watch import ChangeBuffer
from imageclust_daemon.model import models
from imageclust_daemon.model.embed import Embedder, short_provider
from imageclust_daemon.records import IndexReport, ModelSpec, display_path
from imageclust_daemon.state.store import Store
from imageclust_daemon.usecases import library

log = logging.getLogger(__name__)

STATUS_EVERY = 10.0  # seconds between progress STATUS lines during an index


MODEL_IDLE_SECONDS = 300.0  # drop the ONNX session after this long with nothing to embed
RETRY_AFTER = 60.0  # seconds from a failed rescan or ingest to the full rescan that retries it
GIVE_UP_WAITING = 3  # failed rescans in a row after which regroup goes on without one
MAINTENANCE_AFTER_START = 600.0  # seconds from a start to the first maintenance


@dataclass
class LazyModel:
    """The model's identity always; its ONNX session only while there is work.

    A ViT-B/32 session holds ~350 MB of weights a resting daemon does not need: it is
    opened on the first batch to embed and dropped after MODEL_IDLE_SECONDS unused.
    """

    spec: ModelSpec
    path: Path
    id: str
    threads: int = 0
    providers: tuple[str, ...] = ("cpu",)
    _embedder: Embedder | None = None
    _used: float = 0.0

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if self._embedder is None:
            self._embedder = models.open_embedder(
                self.spec, self.path, threads=self.threads, providers=self.providers
            )
            log.info(
                "loaded the model %s on %s", self.path, short_provider(self._embedder.provider)
            )
        self._used = time.monotonic()
        return self._embedder.embed(batch)

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    def release_if_idle(self, now: float, idle: float = MODEL_IDLE_SECONDS) -> None:
        if self._embedder is not None and now - self._used >= idle:
            self._embedder = None
            _return_freed_memory()
            log.info("model unloaded after %.0f s without work", idle)


def _return_freed_memory() -> None:
    """glibc keeps freed heap pages: a dropped ViT-B/32 session left RSS at 436 MB, and
    malloc_trim(0) brought it to 65 MB. Elsewhere (macOS, musl) there is nothing to do."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# How long a stop waits for the running job: its batch ends within a second or two, a
# photo's decode within a few (the systemd unit's TimeoutStopSec is 20 s).
STOP_GRACE_SECONDS = 10.0


@dataclass
class Jobs:
    """State shared by the jobs; only the executor thread touches the store."""

    cfg: Config
    model: LazyModel
    buffer: ChangeBuffer
    stop: threading.Event
    status: Callable[[str], None]  # sd_notify STATUS and a log line
    heartbeat: float = field(default_factory=time.monotonic)  # last sign of progress
    _store: Store | None = None
    _started: bool = False  # the first reconcile has run: buffered events may be processed
    _dirty: bool = True  # something changed since the last recluster
    _publish_due: bool = True  # something changed since the last publish (or just started)
    _unpublished: bool = False  # this run changed the state since its last publish
    _client: OllamaClient | None = None
    _next_model: LazyModel | None = None  # from a reload, taken up between jobs
    _failed_rescans: int = 0  # in a row: past GIVE_UP_WAITING, regroup stops waiting
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _options: library.Options | None = None
    scheduler: BackgroundScheduler = field(
        default_factory=lambda: BackgroundScheduler(
            executors={"default": JobExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
    )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, paused: bool = False) -> None:
        """Schedule the jobs and start the clock (`paused`: jobs are scheduled, none runs)."""
        logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "skipped: busy" is normal
        self._schedule(self.cfg)
        # Not tied to the config, so a reload leaves it be; soon after each start too,
        # since a daemon that stops every evening would never see a full day go by.
        self.scheduler.add_job(
            self._guarded("maintenance", self.maintenance),
            IntervalTrigger(days=1),
            id="maintenance",
            next_run_time=_now(MAINTENANCE_AFTER_START),
        )
        self.scheduler.start(paused=paused)

    def _schedule(self, cfg: Config) -> None:
        """(Re)schedule the jobs whose timing the config sets. The first full rescan runs
        now on a start; after a reload the rescan request (`buffer.rescan`) asks for it."""
        every = cfg.schedule.reconcile_seconds
        # An interval of 0 ("as often as possible") is a tick of 1 s and 0.5 s.
        regroup_every = max(1.0, cfg.schedule.recluster_seconds)
        publish_every = max(0.5, cfg.schedule.publish_seconds)
        jobs: list[tuple[str, Callable[[], None], IntervalTrigger]] = [
            ("reconcile", self.reconcile, _every(every)),
            ("ingest", self.ingest, IntervalTrigger(seconds=1)),
            ("regroup", self.regroup, _every(regroup_every)),
            ("publish", self.publish, _every(publish_every)),
        ]
        first = not self._started
        for job_id, fn, trigger in jobs:
            kwargs = {"next_run_time": _now()} if job_id == "reconcile" and first else {}
            self.scheduler.add_job(
                self._guarded(job_id, fn), trigger, id=job_id, replace_existing=True, **kwargs
            )

    def reload(self, cfg: Config, model: LazyModel | None = None) -> None:
        """New config (SIGHUP): reschedule, and reconcile now (roots may have changed).

        A new `model` takes over at the start of the next job, never in the middle of one;
        the reconcile then embeds every photo that has no embedding from it yet.
        """
        with self._lock:
            self.cfg = cfg
            if model is not None:
                self._next_model = model
        self._schedule(cfg)
        self.buffer.request_rescan("the config was reloaded")

    def shutdown(self, grace: float = STOP_GRACE_SECONDS) -> bool:
        """Stop scheduling; let the running job finish its batch; publish what changed;
        close the store. False when the job did not finish within `grace` seconds (a
        decode that takes minutes): then nothing more is done here, and the caller ends
        the process without it (the photo stays in flight in the decoding journal, so the
        next start decodes it alone in a child process, with a time limit)."""
        self.stop.set()
        with self._lock:
            if self._client is not None:
                self._client.close()  # an in-flight Ollama request ends now
        if self.scheduler.running:
            waiting = threading.Thread(
                target=self.scheduler.shutdown, kwargs={"wait": True}, name="imageclust-stop"
            )
            waiting.start()
            waiting.join(grace)
            if waiting.is_alive():
                log.warning(
                    "the running job did not stop within %g s (a photo still decoding?); "
                    "stopping without it: the next start decodes that photo on its own",
                    grace,
                )
                return False
            # What changed before the stop reaches the catalog now, not at the next start
            # (a publish takes < 1 s at 100k photos, ~22 s at 1M: not when nothing did).
            try:
                if self._unpublished:
                    self.publish()
            except Exception as exc:
                log.error("could not publish the catalog before stopping: %s", exc)
        if self._store is not None:
            self._store.close()
            self._store = None
        return True

    def _guarded(self, name: str, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            if self.stop.is_set():
                return
            try:
                self._switch_model()
                fn()
            except ImageclustError as exc:
                log.error("%s: %s", name, exc)
            except Exception as exc:
                if is_disk_full(exc):
                    log.error(
                        "%s: no space left on the device holding %s; nothing was lost, "
                        "it runs again on schedule",
                        name,
                        self.cfg.data_dir,
                    )
                else:
                    log.exception("%s failed; it runs again on schedule", name)
            finally:
                self.heartbeat = time.monotonic()

        return run

    def _switch_model(self) -> None:
        """On the job thread, between jobs: take up the model a reload brought."""
        with self._lock:
            model, self._next_model = self._next_model, None
        if model is None:
            return
        was_loaded, changed = self.model.loaded, model.id != self.model.id
        self.model = model  # same weights with other settings (threads): just a new session
        if was_loaded:
            _return_freed_memory()
        if changed:
            # Embed the whole library first: a regroup before that would see no embeddings
            # from this model and empty the catalog's groups until it was done.
            log.info("model changed to %s: embedding the library again", model.id)
            self.reconcile()
            self._dirty = True
            self._changed()

    def _beat(self) -> None:
        self.heartbeat = time.monotonic()

    @property
    def options(self) -> library.Options:
        """The steps' options, from the config as it is now (a reload makes new ones)."""
        if self._options is None or self._options.config is not self.cfg:
            self._options = library.Options.from_config(self.cfg, settle=True)
        return self._options

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.cfg.state_db_path, any_thread=True)
        return self._store

    # -- the jobs ----------------------------------------------------------------------------

    def _index(self, only: list[bytes] | None) -> IndexReport:
        last_status = [time.monotonic()]

        def progress(done: int, total: int) -> None:
            self.heartbeat = now = time.monotonic()
            if now - last_status[0] >= STATUS_EVERY:
                last_status[0] = now
                self.status(f"indexing: {done} of {total} files")

        def scan_error(path: bytes, reason: str) -> None:
            log.warning("%s: %s", display_path(path), reason)

        report = library.index(
            self.store,
            self.model,
            self.options,
            only=only,
            progress=progress,
            on_scan_error=scan_error,
            on_defer=self.buffer.touch_all,
            stop=self.stop,
        )
        if report.needs_rescan:
            self.buffer.request_rescan("many photos vanished at once")
        if report.changed:
            self._dirty = True
            self._changed()
            log.info(
                "indexed: %d new or changed, %d embedded, %d moved, %d gone, %d failed",
                report.scanned - report.unchanged,
                report.embedded,
                report.moved,
                report.gone,
                report.failed,
            )
        return report

    def reconcile(self) -> None:
        self.buffer.rescan.clear()
        started = time.monotonic()
        try:
            report = self._index(None)
        except BaseException:
            self._retry_rescan()
            raise
        if report.stopped:  # the daemon is stopping; the next start rescans
            return
        if not self._started:  # group the library as soon as it is known in full
            self._started = True
            self._run_soon("regroup")
        self._failed_rescans = 0
        with contextlib.suppress(JobLookupError):  # a retry still waiting has nothing to do
            self.scheduler.remove_job("retry")
        activity.record(self.cfg.data_dir, last_rescan=activity.now())
        # A rescan of 1M files holds ~300 MB of file records while it runs: at rest the
        # daemon stayed at 544 MB until the freed heap went back to the system.
        _return_freed_memory()
        self.status(
            f"idle: {report.scanned} photos; last full rescan took "
            f"{time.monotonic() - started:.0f} s"
        )

    def _retry_rescan(self) -> None:
        """A failed rescan or ingest (database busy, disk gone): a full rescan runs
        RETRY_AFTER seconds on, so no change it was to pick up is lost."""
        self._failed_rescans += 1
        self.buffer.request_rescan("retrying after a failure")
        self.scheduler.add_job(
            self._guarded("retry", self.reconcile),
            DateTrigger(_now(RETRY_AFTER)),
            id="retry",
            replace_existing=True,
        )

    def _run_soon(self, job_id: str) -> None:
        if self.scheduler.get_job(job_id) is not None:
            self.scheduler.modify_job(job_id, next_run_time=_now())

    def ingest(self) -> None:
        if self.buffer.rescan.is_set():
            if self.scheduler.get_job("retry") is not None:
                return  # the retry job rescans
            if self._started:
                log.info("rescanning every root: %s", self.buffer.rescan_reason or "requested")
            self.reconcile()
            return
        if not self._started:
            return  # events wait in the buffer until the startup reconcile is done
        paths = self.buffer.take_settled()
        if paths:
            try:
                self._index(sorted(set(paths)))
            except BaseException:
                self._retry_rescan()
                raise
        else:
            self.model.release_if_idle(time.monotonic())

    def regroup(self) -> None:
        if not self._dirty:
            return
        if self.buffer.rescan.is_set() and self._failed_rescans < GIVE_UP_WAITING:
            return  # a full rescan is due: group the library once it is known in full
        self._dirty = False
        try:
            self._regroup()
        except BaseException:
            self._dirty = True  # again at the next run
            raise

    def _regroup(self) -> None:
        run = library.regroup(self.store, self.model.id, self.options, stop=self.stop)
        _return_freed_memory()  # the embeddings matrix: 2 GB at 1M photos
        if run.events is not None and run.events.touched:
            if run.skipped:  # (else the regroup's line below says it)
                log.info("events: %s", regroup.describe_events(run.events))
            self._changed()
        if run.skipped:
            log.debug("recluster: %s", run.note)
        else:
            log.info("regroup of %d photos: %s", run.n_points, regroup.describe(run))
            self._changed()
            activity.record(self.cfg.data_dir, last_regroup=activity.now())
        self.relabel()

    def relabel(self) -> None:
        with self._lock:
            if self.stop.is_set():
                return
            self._client = client = self.options.client(os.environ)
        try:
            report = library.title(
                self.store, client, self.options, stop=self.stop, progress=self._beat
            )
        finally:
            with self._lock:
                self._client = None
            client.close()
        if report.changed:
            self._changed()
        if report.changed or report.ollama:
            log.info(
                "relabel: %d from Ollama, %d fallback, %d cached%s",
                report.ollama,
                report.fallback,
                report.cached,
                f" ({report.problem})" if report.problem else "",
            )
        if report.fallback:
            self._dirty = True  # ask Ollama again at the next regroup tick

    def _changed(self) -> None:
        """The state changed: the next publish (and a stop) publishes it."""
        self._publish_due = self._unpublished = True

    def publish(self) -> None:
        """Publish the catalog if something changed since the last publish."""
        if not self._publish_due:
            return
        unpublished = self._unpublished
        self._publish_due = self._unpublished = False
        try:
            report = library.publish(self.store, self.model.id, self.options)
        except BaseException:
            self._publish_due, self._unpublished = True, unpublished  # again at the next run
            raise
        activity.record(self.cfg.data_dir, last_publish=activity.now())
        _return_freed_memory()
        if report.unchanged:
            log.info("the catalog is up to date: nothing to publish")
        else:
            log.info("published the catalog: %d photos, %d groups", report.photos, report.clusters)

    def maintenance(self) -> None:
        files, contents = self.store.collect_garbage(self.cfg.maintenance.gc_days)
        if files or contents:
            log.info("maintenance: forgot %d gone files and %d unused contents", files, contents)
        pictures = ThumbCache(self.cfg.data_dir / "thumbs").prune(self.store.content_hashes())
        if pictures:
            log.info("maintenance: deleted %d gallery pictures of forgotten photos", pictures)


def _now(later: float = 0.0) -> datetime:
    return datetime.now().astimezone() + timedelta(seconds=later)


def _every(seconds: float) -> IntervalTrigger:
    """An interval trigger with a tenth of the interval as jitter: many daemons started at
    once (a fleet of machines, or users' logins) do not stay in step."""
    return IntervalTrigger(seconds=seconds, jitter=seconds / 10)
