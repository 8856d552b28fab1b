"""`imageclust run`: the long-running daemon's lifecycle.

    lock the data dir (one instance) -> migrate -> load the model
    -> start watching (events are buffered) -> schedule the jobs (the first
    reconcile runs at once; buffered events are processed after it)
    -> READY=1 -> supervise until SIGTERM/SIGINT (SIGHUP reloads the config, model included)
    -> STOPPING=1 -> let the running job finish its batch -> join -> exit 0

The main thread only supervises: it restarts a dead observer (and rescans),
pings systemd's watchdog while the observers live and the worker makes
progress, and applies config reloads. All database writes happen on the job
thread (see `jobs`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from imageclust_daemon import activity
from imageclust_daemon.config import Config
from imageclust_daemon.errors import ConfigError, ImageclustError
from imageclust_daemon.gallery import web
from imageclust_daemon.index.watch import ChangeBuffer, Watcher
from imageclust_daemon.model import models
from imageclust_daemon.model.embed import short_provider
from imageclust_daemon.service.jobs import Jobs, LazyModel
from imageclust_daemon.service.lock import InstanceLock
from imageclust_daemon.state.store import Store

log = logging.getLogger(__name__)

SUPERVISE_EVERY = 1.0  # seconds between health checks of the observers and the worker
STUCK_AFTER = 600.0  # a job with no progress this long is stuck: stop pinging the watchdog


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """sd_notify(3): one datagram to $NOTIFY_SOCKET. False when not run by systemd."""
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
        return False
    return True


class Daemon:
    def __init__(
        self,
        load_config: Callable[[], Config],
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._load_config = load_config
        self._environ = environ
        self.stop = threading.Event()
        self._reload = threading.Event()
        self._data_dir: Path | None = None
        # A job still running when the stop gave up on it (`Jobs.shutdown`): the process
        # must end without waiting for its threads (`cmd_run` exits at once).
        self.abandoned = False

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
        else:
            self.stop.set()

    def _status(self, text: str) -> None:
        log.info("%s", text)
        notify(f"STATUS={text}", self._environ)
        if self._data_dir is not None:
            activity.record(self._data_dir, doing=text)

    def run(self) -> int:
        cfg = self._load_config()
        lock = InstanceLock(cfg.data_dir / "daemon.lock")
        lock.acquire()
        self._data_dir = cfg.data_dir
        watcher: Watcher | None = None
        jobs: Jobs | None = None
        gallery: web.Background | None = None
        previous = {
            s: signal.signal(s, self._signal)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            Store.open(cfg.state_db_path).close()  # migrations, before anything else runs
            model = self._model(cfg)
            buffer = ChangeBuffer(cfg.library.settle_seconds)
            watcher = Watcher(
                cfg.roots,
                buffer,
                force_poll=cfg.library.poll,
                poll_seconds=cfg.library.poll_seconds,
            )
            watcher.start()
            jobs = Jobs(cfg, model, buffer, self.stop, self._status)
            jobs.start()
            if cfg.web.listen:
                gallery = web.Background(cfg, cfg.web.listen)
                gallery.start()
            notify("READY=1", self._environ)
            self._status(f"watching {len(cfg.roots)} folder(s); first rescan started")
            self._supervise(watcher, jobs)
        finally:
            notify("STOPPING=1", self._environ)
            log.info("stopping")
            self.stop.set()
            if gallery is not None:
                gallery.stop()
            if jobs is not None and not jobs.shutdown():
                self.abandoned = True
            if watcher is not None:
                watcher.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            activity.record(cfg.data_dir, doing="stopped")
            lock.release()
        log.info("stopped")
        return 0

    def _model(self, cfg: Config) -> LazyModel:
        """Check the model now (a bad file fails the start), then hold only its identity."""
        located = models.locate(cfg)
        spec, path = located.spec, located.vision_path
        threads, providers = cfg.model.threads, tuple(cfg.model.providers)
        with Store.open(cfg.state_db_path) as store:
            loaded = models.load_model(spec, path, store, threads=threads, providers=providers)
        log.info(
            "model %s (%s) runs on %s", spec.name, path, short_provider(loaded.embedder.provider)
        )
        return LazyModel(spec, path, loaded.id, threads, providers)

    def _supervise(self, watcher: Watcher, jobs: Jobs) -> None:
        watchdog_usec = int(self._environ.get("WATCHDOG_USEC", "0") or 0)
        ping_every = watchdog_usec / 2e6 if watchdog_usec else 0.0
        last_ping = 0.0
        while not self.stop.wait(SUPERVISE_EVERY):
            if self._reload.is_set():
                self._reload.clear()
                self._apply_reload(watcher, jobs)
            if not watcher.healthy():
                log.warning("a file watcher stopped or a root came back; restarting watchers")
                watcher.restart()
                jobs.buffer.request_rescan("a watcher was restarted")
            now = time.monotonic()
            if ping_every and now - last_ping >= ping_every:
                if watcher.healthy() and now - jobs.heartbeat < STUCK_AFTER:
                    notify("WATCHDOG=1", self._environ)
                    last_ping = now
                else:
                    log.error("unhealthy: not pinging the systemd watchdog")

    def _apply_reload(self, watcher: Watcher, jobs: Jobs) -> None:
        """Reread the config (SIGHUP). A new model is checked here, and used from the next
        job on: the library is embedded again with it, the old embeddings kept for a
        switch back. A config that fails its checks changes nothing."""
        notify("RELOADING=1", self._environ)
        try:
            cfg = self._load_config()
            if cfg.data_dir != jobs.cfg.data_dir:
                raise ConfigError(
                    "storage.data_dir", "cannot change while the daemon runs: restart it"
                )
            model = None if _model_settings(cfg) == _model_settings(jobs.cfg) else self._model(cfg)
        except (ImageclustError, OSError, sqlite3.Error) as exc:  # e.g. model.path a folder
            log.error("config reload refused, keeping the old one: %s", exc)
        else:
            watcher.restart(cfg.roots)
            jobs.reload(cfg, model)
            log.info("config reloaded: watching %s", ", ".join(map(str, cfg.roots)))
        notify("READY=1", self._environ)


def _model_settings(cfg: Config) -> tuple[object, ...]:
    return cfg.model.name, cfg.model.path, cfg.model.threads, cfg.model.providers
