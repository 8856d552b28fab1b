"""The command line's grammar: every command, its arguments and their help (argparse).
The actions are in `cli`; nothing here prints or does anything but parse."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from imageclust_daemon import __version__, config
from imageclust_daemon.published import catalog
from imageclust_daemon.service import service

Command = Callable[..., argparse.ArgumentParser]  # (subparsers, name, **kwargs) -> parser


def _global_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help=f"config file (default: ${config.ENV_CONFIG}, else the user config dir)",
    )
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much to log on stderr (default: INFO for run, WARNING otherwise)",
    )


def parser() -> argparse.ArgumentParser:
    """The whole command line: every command, its arguments and their help."""
    p = argparse.ArgumentParser(
        prog="imageclust",
        description="Keeps a photo library organized by meaning (CLIP + clustering + local LLM).",
    )
    p.add_argument("--version", action="version", version=f"imageclust {__version__}")
    _global_options(p, None)
    # Also accepted after the command (`imageclust status --config c.toml`); there they
    # only set what they are given, so one before the command still counts.
    after = argparse.ArgumentParser(add_help=False)
    _global_options(after, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return group.add_parser(name, parents=[after], **kwargs)  # type: ignore[no-any-return]

    command(sub, "run", help="the daemon, in the foreground: watch, index, group, title, publish")
    _index_commands(sub, command)
    _query_commands(sub, command)
    _search_commands(sub, command)
    sv = command(sub, "serve", help="the web gallery, in the foreground (read-only)")
    sv.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where to listen (default: web.listen, else 127.0.0.1:8765)",
    )
    _models_commands(sub, command)
    _service_commands(sub, command)
    command(
        sub, "doctor", help="check config, model, ONNX Runtime, Ollama, database, disk and watches"
    )
    return p


def _index_commands(sub: Any, command: Command) -> None:
    ix = command(
        sub, "index", help="scan, embed, group and title the photos once (with a progress bar)"
    )
    ix.add_argument("paths", nargs="*", metavar="PATH", help="folders (default: library.roots)")
    ix.add_argument("--json", action="store_true", help="print the run's counts as JSON")
    ix.add_argument("--no-progress", action="store_true", help="no progress bar")
    ix.add_argument(
        "--no-group",
        action="store_true",
        help="only scan and embed: no regrouping or titles (the daemon or `recluster` does)",
    )
    ix.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="read, decode and embed on the workers of the Dask scheduler at ADDRESS "
        "(tcp://HOST:8786; default index.dask_scheduler): photos and model at the same "
        "paths on every worker; this machine scans and writes",
    )
    ix.add_argument(
        "--forget-missing",
        action="store_true",
        help="photos not found are gone, even when many vanished at once or their drive "
        "is not mounted (kept offline otherwise)",
    )
    rc = command(sub, "recluster", help="regroup the library by meaning (if anything changed)")
    rc.add_argument("--force", action="store_true", help="regroup even if nothing changed")
    rc.add_argument("--json", action="store_true", help="print the run record as JSON")
    rl = command(sub, "relabel", help="title new and changed groups (Ollama, else fallback)")
    rl.add_argument("--all", action="store_true", help="ask again for every group")
    rl.add_argument("--json", action="store_true", help="print the run's counts as JSON")


def _query_commands(sub: Any, command: Command) -> None:
    qy = command(sub, "query", help="run one read-only SQL statement against the catalog")
    qy.add_argument("sql", metavar="SQL")
    fmt = qy.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON array of objects")
    fmt.add_argument("--csv", action="store_true", help="RFC 4180 CSV with a header row")
    defaults = catalog.QueryLimits()
    qy.add_argument(
        "--max-rows",
        type=positive_int,
        default=None,
        metavar="N",
        help="print at most N rows (then say on stderr that there are more; exit 0); "
        f"without it a result past {defaults.rows:,} rows is stopped as a runaway (exit 2)",
    )
    qy.add_argument(
        "--max-bytes",
        type=positive_int,
        default=defaults.bytes,
        metavar="N",
        help=f"stop (exit 2) past N bytes of values (default {defaults.bytes:,})",
    )
    st = command(sub, "status", help="what is indexed, pending and failed")
    st.add_argument("--json", action="store_true", help="one JSON object")


def _search_commands(sub: Any, command: Command) -> None:
    for name, what, text in (
        ("search", "text", "find photos by words (CLIP), best first"),
        ("similar", "path", "find photos like an image (of the library or not), best first"),
    ):
        sp = command(sub, name, help=text)
        if what == "text":
            sp.add_argument("text", metavar="TEXT", help='what to look for, e.g. "dog on a beach"')
        else:
            sp.add_argument("path", metavar="PATH", help="an image file")
        sp.add_argument(
            "--limit", type=positive_int, default=20, metavar="N", help="photos (default 20)"
        )
        fmt = sp.add_mutually_exclusive_group()
        fmt.add_argument("--json", action="store_true", help="a JSON array of objects")
        fmt.add_argument("--csv", action="store_true", help="CSV with a header row")


def _models_commands(sub: Any, command: Command) -> None:
    md = command(sub, "models", help="list, download or verify CLIP models")
    msub = md.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    command(msub, "list", help="the models imageclust knows")
    dl = command(msub, "download", help="download a model into the data dir and verify it")
    dl.add_argument("name", nargs="?", help="manifest name (default: model.name)")
    dl.add_argument(
        "--url", help="download the vision file from this URL (for mirrors set $HF_ENDPOINT)"
    )
    dl.add_argument(
        "--vision-only", action="store_true", help="skip the text tower (search by words)"
    )
    dl.add_argument("--no-progress", action="store_true")
    qz = command(
        msub, "quantize", help="write an int8 copy of the model (faster; see docs/benchmarks.md)"
    )
    qz.add_argument("name", nargs="?", help="manifest name (default: model.name)")
    vf = command(msub, "verify", help="check each file of a model: size, checksum, content")
    vf.add_argument("name", nargs="?", help="manifest name (default: model.name)")


def _service_commands(sub: Any, command: Command) -> None:
    sv = command(sub, "service", help="install, remove or show the systemd/launchd service")
    ssub = sv.add_subparsers(dest="service_command", required=True, metavar="ACTION")
    for action, text in (
        ("install", "write the unit/agent for this install and print how to enable it"),
        ("uninstall", "remove it and print how to stop the daemon"),
        ("print", "show the unit/agent that install would write"),
    ):
        sa = command(ssub, action, help=text)
        sa.add_argument(
            "--kind", choices=service.KINDS, help="default: systemd on Linux, launchd on macOS"
        )


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0 (`1_000` and `1,000` read as 1000)."""
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value
