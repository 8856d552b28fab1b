"""What one does to a library, in four steps: index, regroup, title, publish. The CLI and
the daemon both call these; the CLI parses and prints, the daemon schedules, neither
orchestrates. Each step takes its options from one `Options`, built from the config once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imageclust_daemon.config import Config
from imageclust_daemon.grouping import regroup as grouping
from imageclust_daemon.grouping.ollama import OllamaClient, client_for
from imageclust_daemon.index import inflight, pipeline, scan
from imageclust_daemon.model import models
from imageclust_daemon.published import catalog
from imageclust_daemon.published import publish as publishing
from imageclust_daemon.records import ClusterRun, IndexReport
from imageclust_daemon.state.store import Store

TextOpener = Callable[[int], models.TextModel]  # the text tower, for a vision dimension


@dataclass(frozen=True)
class Options:
    """Every step's settings, read from the config once."""

    roots: tuple[Path, ...]
    index: pipeline.IndexOptions
    min_size: int
    max_size: int
    pair_raw_jpeg: bool
    open_text: TextOpener  # what an album shows needs the text tower (when there is one)
    parallel: int  # Ollama requests in flight
    state_db: Path
    catalog: Path
    organize_dir: Path | None
    data_dir: Path  # the journal of the pictures made for titles
    config: Config  # for the Ollama client, made per run (`client`)

    @classmethod
    def from_config(cls, cfg: Config, *, settle: bool = False) -> Options:
        """`settle`: the daemon's index, which leaves a file still being written for later."""

        def open_text(dim: int) -> models.TextModel:
            return models.open_text_model(
                models.locate(cfg),
                vision_dim=dim,
                threads=cfg.model.threads,
                providers=cfg.model.providers,
            )

        return cls(
            roots=tuple(cfg.roots),
            index=pipeline.IndexOptions.from_config(cfg, settle=settle),
            min_size=cfg.cluster.min_size,
            max_size=cfg.cluster.max_size,
            pair_raw_jpeg=cfg.library.pair_raw_jpeg,
            open_text=open_text,
            parallel=cfg.ollama.parallel,
            state_db=cfg.state_db_path,
            catalog=cfg.catalog_path,
            organize_dir=cfg.organize.dir,
            data_dir=cfg.data_dir,
            config=cfg,
        )

    def client(self, environ: Mapping[str, str]) -> OllamaClient:
        """An Ollama client as the config says (`$OLLAMA_HOST` when `ollama.host` is
        empty); the caller closes it."""
        return client_for(self.config, environ)


def index(
    store: Store,
    model: pipeline.IndexModel,
    options: Options,
    *,
    roots: Sequence[Path] | None = None,
    whole_library: bool = True,
    reader: pipeline.Reader = pipeline.read_and_embed,
    only: Sequence[bytes] | None = None,
    forget_missing: bool = False,
    progress: pipeline.Progress | None = None,
    on_scan_error: scan.OnError = scan.ignore_error,
    on_defer: Callable[[list[bytes]], None] | None = None,
    stop: threading.Event | None = None,
) -> IndexReport:
    """Scan `roots` (default: the library's; `whole_library` says they are all of it) and
    embed what is new or changed (`pipeline.index` says the rest)."""
    return pipeline.index(
        [os.fsencode(r) for r in (options.roots if roots is None else roots)],
        store=store,
        model=model,
        options=options.index,
        reader=reader,
        only=only,
        whole_library=whole_library,
        forget_missing=forget_missing,
        progress=progress,
        on_scan_error=on_scan_error,
        on_defer=on_defer,
        stop=stop,
    )


def regroup(
    store: Store,
    model_id: str,
    options: Options,
    *,
    force: bool = False,
    stop: threading.Event | None = None,
) -> ClusterRun:
    """Albums and events, moving only what the changes since the last run demand."""
    return grouping.recluster(
        store,
        model_id,
        min_size=options.min_size,
        max_size=options.max_size,
        force=force,
        stop=stop,
        pair_raw_jpeg=options.pair_raw_jpeg,
        words=grouping.subject_words(store, model_id, options.open_text),
    )


def title(
    store: Store,
    client: OllamaClient,
    options: Options,
    *,
    everything: bool = False,
    stop: threading.Event | None = None,
    progress: Callable[[], None] | None = None,
) -> grouping.LabelReport:
    """Title the albums that need it (Ollama, else offline titles)."""
    with inflight.per_process(options.data_dir, "titles") as pictures:
        return grouping.relabel(
            store,
            client,
            everything=everything,
            parallel=options.parallel,
            stop=stop,
            progress=progress,
            pictures=pictures,
        )


def publish(store: Store | None, model_id: str | None, options: Options) -> catalog.PublishReport:
    """The catalog (and the search snapshot, and the organized view) from the state
    database as it is now; `store`: the writer's, checkpointed first (a daemon's)."""
    if store is not None:
        store.checkpoint()
    return publishing.publish(
        options.state_db,
        options.catalog,
        model_id=model_id,
        organize_dir=options.organize_dir,
        pair_raw_jpeg=options.pair_raw_jpeg,
    )
