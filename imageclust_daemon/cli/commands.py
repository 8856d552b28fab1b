"""The `imageclust` command: the only place that prints for humans and chooses exit codes."""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import itertools
import json
import logging
import os
import re
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from imageclust_daemon import config, logs, native_output
from imageclust_daemon.cli import grammar
from imageclust_daemon.errors import (
    ConfigError,
    ImageclustError,
    OllamaError,
    UsageError,
    is_disk_full,
)
from imageclust_daemon.grouping import regroup
from imageclust_daemon.grouping.ollama import OllamaClient
from imageclust_daemon.index import dask_index, pipeline, scan
from imageclust_daemon.model import hub, manifest, models
from imageclust_daemon.model.embed import short_provider
from imageclust_daemon.published import catalog, publish, search
from imageclust_daemon.records import (
    ROLES,
    TEXT,
    VISION,
    WORDS_ROLES,
    ClusterRun,
    IndexReport,
    display_path,
)
from imageclust_daemon.service import doctor, service
from imageclust_daemon.service.lock import InstanceLock
from imageclust_daemon.state.store import STATUS_KEYS, STATUS_MAPS, Store
from imageclust_daemon.usecases import library

log = logging.getLogger("imageclust")


def _load_config(args: argparse.Namespace) -> config.Config:
    named_by = "--config" if args.config else f"${config.ENV_CONFIG}"
    return config.load(config.config_path(args.config, os.environ), named_by)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _publish(options: library.Options, model_id: str | None) -> None:
    report = library.publish(None, model_id, options)
    if report.unchanged:
        log.info("the catalog %s is up to date: nothing to publish", report.path)
        return
    log.info(
        "published %s: %d photos, %d groups, %d bytes in %.2f s",
        report.path,
        report.photos,
        report.clusters,
        report.bytes,
        report.seconds,
    )


def _publish_or_refresh(changed: bool, options: library.Options, model_id: str | None) -> None:
    """Publish what changed; else build the organized view if it is missing or older than
    the catalog (organize.dir set since the last publish)."""
    if changed:
        _publish(options, model_id)
    elif publish.refresh_view(options.catalog, options.organize_dir):
        log.warning("built the organized view at %s", options.organize_dir)


def _index_roots(args: argparse.Namespace, cfg: config.Config) -> list[Path]:
    """The folders `index` walks: PATHs given (each must be a folder), else library.roots."""
    if not args.paths:
        if not cfg.roots:
            raise ConfigError("library.roots", "no folders to index; give PATH or set it")
        return cfg.roots
    roots = [Path(p).expanduser() for p in args.paths]
    for root in roots:
        if not root.is_dir():
            problem = "no such folder" if not root.exists() else "not a folder"
            raise UsageError(f"PATH {root}: {problem}")
    library = [os.fsencode(os.path.realpath(r)) for r in cfg.roots]
    for root in roots:
        if not scan.under_any(os.fsencode(os.path.realpath(root)), library):
            log.warning(
                "%s is not under library.roots%s: its photos are indexed now, but the "
                "next full rescan (the daemon's, or `imageclust index`) forgets them; "
                "add it to library.roots to keep it",
                root,
                f" ({cfg.source})" if cfg.source else "",
            )
    return roots


def cmd_index(args: argparse.Namespace, cfg: config.Config) -> int:
    roots = _index_roots(args, cfg)
    options = library.Options.from_config(cfg)
    located = models.locate(cfg)
    spec = located.spec
    with Store.open(cfg.state_db_path) as store:
        model = models.load_model(
            spec,
            located.vision_path,
            store,
            threads=cfg.model.threads,
            providers=tuple(cfg.model.providers),
        )
        bar = None
        if not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=0, unit="file", desc="indexing", disable=None, file=sys.stderr)

        def progress(done: int, total: int) -> None:
            if bar is not None:
                bar.total = total
                bar.update(done - bar.n)

        def scan_error(path: bytes, reason: str) -> None:
            log.warning("%s: %s", display_path(path), reason)

        # Log lines while the bar is drawn go through it, not across it.
        redirect = _through_bar() if bar is not None else contextlib.nullcontext()
        with contextlib.ExitStack() as cleanup:
            reader: pipeline.Reader = pipeline.read_and_embed
            scheduler = args.dask or cfg.index.dask_scheduler
            if scheduler:  # connected before anything is written: an error changes nothing
                cluster = dask_index.Cluster.connect(
                    scheduler,
                    located.vision_path,
                    model.id,
                    timeout=cfg.index.dask_connect_timeout,
                )
                cleanup.callback(cluster.close)
                cluster.ready_workers()
                reader = cluster.read_and_embed
            if bar is not None:
                cleanup.callback(bar.close)
            with redirect:
                report = library.index(
                    store,
                    model,
                    options,
                    roots=roots,
                    reader=reader,
                    whole_library=not args.paths,
                    forget_missing=args.forget_missing,
                    progress=progress,
                    on_scan_error=scan_error,
                )
        failed_now = store.status(model.id)["failed"]  # this run's and earlier runs' failures
        if not args.json:  # the counts stand whatever happens next (titling can take long)
            where = (
                f"the Dask cluster at {scheduler}"
                if scheduler
                else short_provider(model.embedder.provider)
                if model.embedder.is_open
                else ""  # nothing embedded here: the model was never opened
            )
            _print_index_summary(report, len(roots), failed_now, spec.name, where)
        grouped: ClusterRun | None = None
        titled: regroup.LabelReport | None = None
        if not args.no_group:  # what the daemon does next: regroup, then title what changed
            grouped = library.regroup(store, model.id, options)
            titled = _title(args, options, store)
    if args.json:
        provider = model.embedder.provider if model.embedder.is_open else None
        out: dict[str, Any] = {**asdict(report), "provider": provider}
        if grouped is not None and titled is not None:
            out["groups"] = asdict(grouped)
            out["titles"] = asdict(titled)
        print(json.dumps(out), flush=True)
    _publish(options, model.id)
    if grouped is not None and titled is not None and not args.json:
        _print_albums(cfg, grouped, titled)
    return 0


def _print_index_summary(
    r: IndexReport, folders: int, failed_now: int, model: str, where: str
) -> None:
    print(
        f"{r.scanned} photos under {folders} folder(s) in {r.seconds:.1f} s: "
        f"{r.unchanged} unchanged, {r.moved} moved, "
        + (f"{r.returned} back, " if r.returned else "")
        + f"{r.hashed} read "
        f"({_human_bytes(r.bytes_read)}), {r.embedded} embedded, {r.reused} already known, "
        f"{r.failed} failed"
        + (f" ({failed_now} failed in the library)" if failed_now != r.failed else "")
        + f", {r.gone} gone"
        + (f"; {model} on {where}" if r.embedded else "")
    )
    if r.left:
        print(
            f"{_count(r.left, 'file')} not finished by the Dask cluster (see the log): "
            "`imageclust index` without --dask reads them on this machine"
        )
    if r.heif_unread:
        print(
            f"{_count(r.heif_unread, 'HEIC/HEIF photo')} not read: pi-heif does not load "
            "here (reinstall imageclust-daemon: pip install --force-reinstall pi-heif)"
        )
    if r.skipped:
        kinds = ", ".join(_count(n, kind) for kind, n in sorted(r.skipped.items()))
        print(f"skipped (counted, not read): {kinds}")
    if failed_now:
        print(
            "failed photos and why: imageclust query "
            "\"SELECT path, error FROM photos WHERE status = 'failed'\""
        )
    sys.stdout.flush()


def _title(args: argparse.Namespace, options: library.Options, store: Store) -> regroup.LabelReport:
    """Title the albums that need it, with a progress bar: a vision model on a CPU can take
    a minute an album."""
    waiting = len(store.label_jobs())
    if not waiting:  # nothing to title: no client (httpx's transport costs ~0.09 s)
        return regroup.LabelReport()
    with options.client(os.environ) as client:
        bar = None
        if waiting and not args.json:
            print(_titling(client, waiting))
            sys.stdout.flush()
            if not args.no_progress:
                from tqdm import tqdm

                bar = tqdm(total=waiting, unit="album", desc="titling", disable=None)
        try:
            return library.title(
                store,
                client,
                options,
                progress=(lambda: bar.update(1)) if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()


def _titling(client: OllamaClient, waiting: int) -> str:
    """What is about to happen to the albums that need titles: only what is true (a look
    at Ollama first: "titling with gemma3:4b" is not printed while Ollama is down)."""
    albums = _count(waiting, "album")
    gets = (
        "it gets a title from its dates, places and subjects"
        if waiting == 1
        else "they get titles from their dates, places and subjects"
    ) + ", and Ollama's at a later run"
    try:
        listed = client.has_model()
    except OllamaError as exc:
        return (
            f"titling {albums} offline: Ollama does not answer at {client.host} ({exc.reason}); "
            + gets
        )
    if not listed:
        return (
            f"titling {albums} offline: Ollama at {client.host} has no model {client.model} "
            f"(ollama pull {client.model}); " + gets
        )
    return f"titling {albums} with {client.model} at {client.host}..."


def _through_bar() -> contextlib.AbstractContextManager[None]:
    from tqdm.contrib.logging import logging_redirect_tqdm

    redirect: contextlib.AbstractContextManager[None] = logging_redirect_tqdm()
    return redirect


def _print_albums(cfg: config.Config, grouped: ClusterRun, titled: regroup.LabelReport) -> None:
    """What a person reads after `index`: the albums, the biggest few, where they are."""
    biggest = catalog.query(
        cfg.catalog_path,
        "SELECT title, size FROM clusters ORDER BY size DESC, id LIMIT 5",
    ).rows
    total = cast(int, catalog.query(cfg.catalog_path, "SELECT count(*) FROM clusters").rows[0][0])
    if grouped.skipped and not grouped.note.startswith("nothing changed"):
        print(f"albums not regrouped: {grouped.note}")
    if not total:
        if not grouped.skipped:
            print("no albums: too few photos for cluster.min_size")
        return
    if grouped.skipped:
        print(f"{_count(total, 'album')} (unchanged); the biggest:")
    else:
        print(f"albums: {regroup.describe(grouped)}; the biggest:")
    for title, size in biggest:
        print(f"  {title or '(untitled)'}  ({_count(cast(int, size), 'photo')})")
    if titled.fallback and titled.problem:
        print(
            "titles made without Ollama (from the photos' dates and places where they "
            f"have them, else numbered): {titled.problem} "
            "(start Ollama and run `imageclust relabel` for better ones)"
        )
    _print_events(cfg)
    print(f"catalog: {cfg.catalog_path}")
    print('  look: imageclust query "SELECT title, size FROM clusters ORDER BY size DESC"')
    print('        imageclust query "SELECT kind, title, size FROM events ORDER BY started_at"')
    if cfg.organize.dir is not None:
        print(f"organized view (a folder per album, and Events/<year>/): {cfg.organize.dir}")
    else:
        print("a folder per album and per event: set organize.dir in the config")


def _print_events(cfg: config.Config) -> None:
    """The events, by kind, and the latest few."""
    kinds = {
        str(kind): cast(int, n)
        for kind, n in catalog.query(
            cfg.catalog_path, "SELECT kind, count(*) FROM events GROUP BY kind"
        ).rows
    }
    if not kinds:
        print("no events: no photo has a capture time")
        return
    total = sum(kinds.values())
    said = ", ".join(_count(kinds[k], k) for k in ("moment", "day", "trip") if k in kinds)
    print(f"{_count(total, 'event')} ({said}); the latest:")
    for title, size in catalog.query(
        cfg.catalog_path, "SELECT title, size FROM events ORDER BY started_at DESC, id LIMIT 3"
    ).rows:
        print(f"  {title}  ({_count(cast(int, size), 'photo')})")


def cmd_recluster(args: argparse.Namespace, cfg: config.Config) -> int:
    located = models.locate(cfg)
    options = library.Options.from_config(cfg)
    with Store.open(cfg.state_db_path) as store:
        model_id = models.model_id_of(located.spec, located.vision_path, store)
        run = library.regroup(store, model_id, options, force=args.force)
    events_changed = run.events is not None and run.events.touched
    _publish_or_refresh(not run.skipped or events_changed, options, model_id)
    if args.json:
        print(json.dumps(asdict(run)))
        return 0
    if run.skipped:
        if events_changed and run.events is not None:
            print(f"albums: {run.note}; {regroup.describe_events(run.events)}")
            return 0
        print(
            f"{run.note}; nothing done" + ("" if "--force" in run.note else " (--force to regroup)")
        )
        return 0
    print(
        f"{_count(run.n_points, 'distinct photo')}: {regroup.describe(run)}; "
        f"{'incremental' if not run.full_reason else run.method + ' Ward'} in {run.seconds:.1f} s"
    )
    return 0


def cmd_relabel(args: argparse.Namespace, cfg: config.Config) -> int:
    located = models.locate(cfg)
    path = located.vision_path
    options = library.Options.from_config(cfg)
    with Store.open(cfg.state_db_path) as store, options.client(os.environ) as client:
        report = library.title(store, client, options, everything=args.all)
        model_id = models.model_id_of(located.spec, path, store) if path.is_file() else None
    _publish_or_refresh(report.changed > 0, options, model_id)
    if args.json:
        print(json.dumps(asdict(report)))
        return 0
    if not report.groups:
        print("every group already has its title; nothing to do")
        return 0
    kept = report.groups - report.cached - report.ollama - report.fallback
    print(
        f"{_count(report.groups, 'group')} to title: {report.cached} from the cache, "
        f"{report.ollama} from {cfg.ollama.model}, {report.fallback} new fallback "
        + (f"and {kept} kept their fallback title " if kept > 0 else "")
        + f"({report.requested} sent to Ollama) in {report.seconds:.1f} s"
    )
    if report.problem:
        print(f"note: {report.problem}; fallback titles are retried next time")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _json_value(value: object) -> object:
    if isinstance(value, bytes):  # BLOBs (path_bytes): base64, as documented
        return base64.b64encode(value).decode("ascii")
    return value


def cmd_query(args: argparse.Namespace, cfg: config.Config) -> int:
    asked = args.max_rows  # the rows the user wants: not an error to stop there
    rows = asked + 1 if asked is not None else catalog.QueryLimits().rows
    limits = catalog.QueryLimits(rows=rows, bytes=args.max_bytes)
    if hasattr(sys.stdout, "reconfigure"):  # a value the terminal cannot show: escaped, not fatal
        sys.stdout.reconfigure(errors="backslashreplace")
    with catalog.open_query(cfg.catalog_path, args.sql, limits) as result:
        more = False
        if asked is not None:
            every = result.rows
            kept = itertools.islice(every, asked)

            def first_rows() -> Iterator[tuple[object, ...]]:
                nonlocal more
                yield from kept
                more = next(every, None) is not None

            result = catalog.QueryStream(result.columns, first_rows())
        # Rows are printed as they come: a result never has to fit in memory.
        if args.json:
            sys.stdout.write("[")
            for i, row in enumerate(result.rows):
                item = {c: _json_value(v) for c, v in zip(result.columns, row, strict=True)}
                sys.stdout.write(("," if i else "") + _json_text(item))
            sys.stdout.write("]\n")
        elif args.csv:
            writer = csv.writer(sys.stdout, lineterminator="\r\n")
            writer.writerow(result.columns)
            for row in result.rows:
                writer.writerow([_json_value(v) for v in row])
        else:
            # (text for a terminal: a value's control characters, tabs and newlines as
            # \xNN, so a file name cannot steer the terminal or break the columns)
            print("\t".join(logs.printable(c) for c in result.columns))
            for row in result.rows:
                print(
                    "\t".join("" if v is None else logs.printable(str(_json_value(v))) for v in row)
                )
    if more:
        print(
            f"imageclust: the first {asked:,} rows, as --max-rows asked; there are more",
            file=sys.stderr,
        )
    return 0


def cmd_search(args: argparse.Namespace, cfg: config.Config) -> int:
    if args.command == "search":
        found = search.retrying(lambda: search.by_words(cfg, args.text, args.limit))
    else:
        path = Path(args.path).expanduser()
        found = search.retrying(lambda: search.by_example(cfg, path, args.limit))
    if args.json:
        out = [
            {
                "score": round(h.score, 4),
                "paths": h.paths,
                "cluster_id": h.cluster_id,
                "title": h.title,
                "offline": h.offline,
            }
            for h in found
        ]
        print(json.dumps(out, ensure_ascii=False))
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["score", "cluster_id", "title", "offline", "paths"])
        for h in found:
            writer.writerow(
                [f"{h.score:.4f}", h.cluster_id, h.title, int(h.offline), "\n".join(h.paths)]
            )
    else:
        _print_hits(found)
    return 0


def _print_hits(found: list[search.Hit]) -> None:
    if not found:
        print("no photos found (is the library indexed? imageclust status)")
        return
    for h in found:
        album = f"album {h.cluster_id}: {h.title}" if h.cluster_id is not None else "no album"
        away = "  (offline)" if h.offline else ""
        print(f"{h.score:.3f}  {album}{away}")
        for path in h.paths:
            print(f"       {path}")


def cmd_serve(args: argparse.Namespace, cfg: config.Config) -> int:
    from imageclust_daemon.gallery import web

    listen = args.listen or cfg.web.listen or "127.0.0.1:8765"
    try:
        host, port = config.parse_listen(listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    server = web.server(cfg, listen)
    shown = f"[{host}]" if ":" in host else host
    print(f"the gallery is at http://{shown}:{port}/ (Ctrl-C stops it)", flush=True)
    server.run()
    return 0


def cmd_status(args: argparse.Namespace, cfg: config.Config) -> int:
    located = models.locate(cfg)
    path = located.vision_path
    model_id = None
    last: ClusterRun | None = None
    if not cfg.state_db_path.is_file():  # before the first index: nothing, and nothing made
        counts: dict[str, Any] = dict.fromkeys(STATUS_KEYS, 0)
        counts.update({key: {} for key in STATUS_MAPS})
    else:
        # Read only: beside the daemon, and on a data dir this user cannot write.
        with Store.open_readonly(cfg.state_db_path) as store:
            if path.is_file():
                model_id = models.model_id_of(located.spec, path, store, remember=False)
            counts = store.status(model_id)
            last = store.last_cluster_run()
        if last is not None:  # what the last regroup did, and why
            when = datetime.fromtimestamp(last.started_at).astimezone()
            counts["regrouped"] = {
                "at": when.isoformat(timespec="seconds"),
                "full_reason": last.full_reason,
                "joined": last.joined,
                "moved": last.moved,
                "new": last.new_clusters,
                "changed": last.changed_clusters,
                "retired": last.retired_clusters,
                "dissolved": last.dissolved,
                "recut": {str(k): v for k, v in last.recut.items()},
                "said": f"{when:%Y-%m-%d %H:%M}: {regroup.describe(last)}",
            }
    counts.setdefault("regrouped", None)
    counts["model"] = model_id
    counts["database"] = str(cfg.state_db_path)
    if args.json:
        print(json.dumps(counts))
        return 0
    shown: dict[str, Any] = dict(counts)
    if model_id is None and path.is_file():  # there, not yet identified: the first index does
        shown["model"] = f"{located.spec.name}: {path} (not used yet: imageclust index)"
    elif model_id is None:
        shown["model"] = f"{located.spec.name}: not downloaded (imageclust models download)"
    if counts["clusters"] == 0 and counts["embedded"]:
        shown["clusters"] = "0 (group the photos with: imageclust recluster)"
    regrouped = counts.get("regrouped")
    shown["regrouped"] = regrouped["said"] if regrouped else "never"
    for key in STATUS_MAPS:  # "JPEG 120, HEIF 35"; "video 4, sidecar 2" (not read)
        found = counts.get(key) or {}
        shown[key] = ", ".join(f"{kind} {n}" for kind, n in found.items()) or "none"
    if counts.get("skipped"):
        shown["skipped"] += " (counted, not read)"
    kinds = counts.get("events") or {}
    shown["events"] = (
        f"{sum(kinds.values())} ("
        + ", ".join(_count(kinds[k], k) for k in ("moment", "day", "trip") if k in kinds)
        + ")"
        if kinds
        else "none"
    )
    width = max(len(k) for k in shown)
    for key, value in shown.items():
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_models(args: argparse.Namespace, cfg: config.Config) -> int:
    if args.models_command == "list":
        for name, spec in manifest.load_manifest().items():
            located = models.locate(cfg, name)
            mark = "*" if name == cfg.model.name else " "
            have = [r for r in ROLES if spec.file(r) and located.paths[r].is_file()]
            if not spec.downloadable:
                state = "no download"
            elif not have:
                state = ""
            elif len(have) == len(spec.files):
                state = "downloaded"
            else:
                state = f"downloaded: {', '.join(have)}"
            words = "" if spec.file(TEXT) else "  (no search by words)"
            print(f"{mark} {name:<28} dim {spec.dim:<5} {spec.title}{words}  {state}".rstrip())
        return 0
    located = models.locate(cfg, args.name)
    spec = located.spec
    if args.models_command == "quantize":
        path = located.vision_path
        dest = models.quantize(path, models.int8_file(path))
        print(f"{spec.name}: wrote {dest}")
        print(f'use it with model.path = "{dest}" (a different model: photos are re-embedded)')
        return 0
    if args.models_command == "download":
        return _download(args, located)
    reports = models.verify(located)
    for report in reports:
        _print_file_report(spec.name, report)
    if any(not r.present and not r.own for r in reports) and spec.downloadable:
        # Without NAME, `models download` keeps the config's own files (model.path, ...).
        named = f" {spec.name}" if args.name else ""
        print(f"get what is missing with: imageclust models download{named}")
    # A file that is missing only costs search by words; one that is there and wrong, or a
    # missing vision tower, is an error.
    return 0 if all(r.ok for r in reports if r.needed or r.present) else 1


def _download(args: argparse.Namespace, located: models.Located) -> int:
    from tqdm import tqdm

    spec = located.spec
    roles = (VISION,) if args.vision_only else ROLES
    endpoint = hub.endpoint_from(os.environ)
    if endpoint != hub.DEFAULT_ENDPOINT and args.url is None:
        print(f"downloading from {endpoint} (${hub.ENDPOINT_ENV})")
    bar = tqdm(unit="B", unit_scale=True, desc=spec.name, disable=args.no_progress or None)

    def progress(done: int, total: int | None) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        fetched = hub.download_model(
            located, roles=roles, endpoint=endpoint, vision_url=args.url, progress=progress
        )
    finally:
        bar.close()
    for item in fetched:
        if item.kept:
            print(f"{spec.name} {item.role}: {item.path}: {item.kept}")
            continue
        print(f"{spec.name} {item.role}: downloaded and verified: {item.path}")
        if item.fallback:
            print(
                f"  note: the pinned revision {spec.revision} answered 'not found'; the same "
                f"file came from {hub.FALLBACK_REVISION} ({item.url}): its size and sha256 "
                "are the manifest's"
            )
    if not any(spec.file(r) for r in WORDS_ROLES):
        print(f"{spec.name} has no text tower in the manifest: search by words is not offered")
    elif args.vision_only:
        print("text tower skipped (--vision-only): search by words needs it")
    return 0


def _print_file_report(name: str, report: models.FileReport) -> None:
    label = f"{name} {report.role}"
    if report.path is not None and not report.path.exists():
        print(f"{label}: missing ({report.path}): {manifest.PURPOSE[report.role]}")
        return
    for problem in report.problems:
        print(f"{label}: {problem}")
    if report.ok:
        whose = (
            f"your own file ({manifest.OWN_FILE_KEYS[report.role]}): its content"
            if report.own
            else "size, checksum, content"
        )
        print(f"{label}: ok ({whose}): {report.path} (sha256 {report.sha256})")


def cmd_run(args: argparse.Namespace, cfg: config.Config) -> int:
    from imageclust_daemon.service.daemon import Daemon

    daemon = Daemon(lambda: _load_config(args))
    code = daemon.run()
    if daemon.abandoned:  # a decode still running: not waited for (its threads never end)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        native_output.hand_on()  # what went to the capture meanwhile, this stop included
        os._exit(code)
    return code


def cmd_service(args: argparse.Namespace, cfg: config.Config) -> int:
    kind = args.kind or service.detect_kind()
    home = Path.home()
    if args.service_command == "print":
        sys.stdout.write(service.render(kind, home=home, config_path=cfg.source))
        return 0
    if args.service_command == "uninstall":
        gone = service.uninstall(kind, home=home)
        print(f"removed {gone.path}" if gone.removed else f"nothing to remove at {gone.path}")
        print(f"stop the daemon with:\n  {gone.command}")
        return 0
    done = service.install(kind, home=home, config_path=cfg.source)
    print(f"{'replaced' if done.replaced else 'wrote'} {done.path}")
    if cfg.source is None:
        print("no config file is in use: the service runs on the built-in defaults")
    print(f"{'load the new file' if done.replaced else 'enable and start it'} with:")
    print(f"  {done.command}")
    if kind == service.SYSTEMD:
        print('to keep it running while you are logged out: loginctl enable-linger "$USER"')
    return 0


def cmd_doctor(args: argparse.Namespace, cfg: config.Config) -> int:
    checks = doctor.run_checks(cfg, os.environ)
    for check in checks:
        print(f"{check.status:<4} {check.name}: {check.detail}")
        if not check.ok and check.fix:
            print(f"     fix: {check.fix}")
    failed = sum(c.status == "FAIL" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    print(
        f"{len(checks) - failed - warned} ok, {_count(warned, 'warning')}, "
        f"{_count(failed, 'essential failure')}"
    )
    return 1 if doctor.failed_essential(checks) else 0


COMMANDS = {
    "run": cmd_run,
    "index": cmd_index,
    "recluster": cmd_recluster,
    "relabel": cmd_relabel,
    "query": cmd_query,
    "search": cmd_search,
    "serve": cmd_serve,
    "similar": cmd_search,
    "status": cmd_status,
    "models": cmd_models,
    "service": cmd_service,
    "doctor": cmd_doctor,
}


# Commands that write the state database: one at a time, never beside the daemon.
WRITERS = {"index", "recluster", "relabel"}


def _json_text(value: Any) -> str:
    """JSON as UTF-8 text, with DEL and the C1 controls escaped too (JSON escapes C0 by
    itself): no byte of it steers a terminal."""
    return re.sub(
        "[\x7f-\x9f]", lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False)
    )


# The commands that decode many photos: what C libraries write to stderr meanwhile
# becomes log lines naming the photo (native_output).
DECODERS = {"index", "relabel", "run", "serve"}


@contextlib.contextmanager
def _native_output(command: str, cfg: config.Config) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        if command in DECODERS:
            # a data folder it cannot write: C libraries' lines go out as they are
            with contextlib.suppress(OSError):
                cfg.data_dir.mkdir(parents=True, exist_ok=True)
                stack.enter_context(native_output.captured(cfg.data_dir))
        yield


def main(argv: Sequence[str] | None = None) -> int:
    args = grammar.parser().parse_args(argv)
    logs.configure_logging(args.log_level or ("INFO" if args.command == "run" else "WARNING"))
    cfg: config.Config | None = None
    try:
        cfg = _load_config(args)
        with _native_output(args.command, cfg):
            if args.command not in WRITERS:
                return COMMANDS[args.command](args, cfg)
            with InstanceLock(cfg.data_dir / "daemon.lock", args.command):
                return COMMANDS[args.command](args, cfg)
    except (OSError, sqlite3.Error, ImageclustError) as exc:
        if isinstance(exc, BrokenPipeError):  # `imageclust query ... | head`: all it wants
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        where = f" holding {cfg.data_dir}" if cfg is not None else ""
        if is_disk_full(exc) or (exc.__cause__ is not None and is_disk_full(exc.__cause__)):
            print(
                f"imageclust: error: no space left on the device{where}; nothing was lost: "
                "free some space and run the command again",
                file=sys.stderr,
            )
        elif isinstance(exc, ImageclustError):
            print(f"imageclust: error: {exc}", file=sys.stderr)
            return exc.exit_code
        elif isinstance(exc, sqlite3.Error):
            print(f"imageclust: error: state database: {exc}", file=sys.stderr)
        else:  # a data dir on a read-only disk, a file where a folder was
            print(f"imageclust: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imageclust: interrupted; finished batches are saved", file=sys.stderr)
        return 130
