"""Settings: one table of (key, default, kind, help), one TOML file, validated on load.

The file is chosen by `--config PATH`, else `$IMAGECLUST_CONFIG`, else
`imageclust.toml` in the platform's user config dir if it exists, else the
defaults alone. Path values expand `~` and `$VARS`. An unknown key or a bad
value raises `ConfigError` naming the key and what was expected. Nothing is
read at import time: callers load a `Config` and pass it on.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from imageclust_daemon.errors import ConfigError

APP = "imageclust"
ENV_CONFIG = "IMAGECLUST_CONFIG"


@dataclass(frozen=True, slots=True)
class Setting:
    key: str  # "section.name"
    default: Any
    kind: str  # one of _VALIDATORS
    help: str
    minimum: float | None = None
    maximum: float | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("library.roots", ["~/Pictures"], "paths", "Folders whose photos are indexed."),
    Setting(
        "library.exclude",
        [],
        "globs",
        "Glob patterns to skip. Without '/', a pattern matches any file or folder name "
        "(e.g. '*.tmp', 'Thumbnails'); with '/', the path relative to its root "
        "(e.g. 'Archive/2009/*').",
    ),
    Setting(
        "library.settle_seconds",
        2.0,
        "float",
        "A changed file is read only after its size and mtime stayed the same this long.",
        minimum=0,
        maximum=3600,
    ),
    Setting(
        "library.poll",
        False,
        "bool",
        "Poll every root instead of using change notifications (network filesystems "
        "are polled anyway).",
    ),
    Setting(
        "library.pair_raw_jpeg",
        True,
        "bool",
        "A RAW and a JPEG or HEIC of one shot (same folder, same name before the "
        "extension) are one photo: the JPEG shows it in albums, search and the gallery, "
        "and the catalog lists both files. false: each file is a photo of its own.",
    ),
    Setting(
        "library.poll_seconds",
        30.0,
        "float",
        "How often polled roots are compared, in seconds.",
        minimum=0.1,
        maximum=86400,
    ),
    Setting(
        "schedule.reconcile_seconds",
        21600.0,
        "float",
        "Seconds between full rescans of every root (catches events the watcher missed).",
        minimum=1,
        maximum=30 * 86400,
    ),
    Setting(
        "schedule.recluster_seconds",
        600.0,
        "float",
        "Seconds between reclusters; each runs only if photos changed since the last "
        "(the first right after the startup rescan).",
        minimum=0,
        maximum=30 * 86400,
    ),
    Setting(
        "schedule.publish_seconds",
        30.0,
        "float",
        "Seconds between catalog publishes; each runs only if something changed.",
        minimum=0,
        maximum=86400,
    ),
    Setting(
        "maintenance.gc_days",
        30.0,
        "float",
        "Days an embedding is kept after the last file with its content is gone.",
        minimum=0,
        maximum=36500,
    ),
    Setting(
        "storage.data_dir",
        "",
        "path",
        "Where the state database, the catalog and downloaded models live; "
        "empty = the platform's user data dir.",
    ),
    Setting(
        "catalog.path",
        "",
        "path",
        "The published read-only catalog; empty = <data_dir>/catalog.sqlite.",
    ),
    Setting(
        "organize.dir",
        "",
        "path",
        "A folder to fill with one sub-folder of symlinks per titled group; empty = off.",
    ),
    Setting(
        "model.name",
        "clip-vit-b32",
        "str",
        "Which entry of the model manifest to use (`imageclust models list`).",
    ),
    Setting(
        "model.path",
        "",
        "path",
        "The ONNX file; empty = <data_dir>/models/<the manifest's file name>.",
    ),
    Setting(
        "model.text_path",
        "",
        "path",
        "The text tower's ONNX file (search by words); empty = <data_dir>/models/<the "
        "manifest's file name>.",
    ),
    Setting(
        "model.tokenizer_path",
        "",
        "path",
        "The text tower's tokenizer.json; empty = <data_dir>/models/<the manifest's file name>.",
    ),
    Setting(
        "model.providers",
        ["auto"],
        "providers",
        "ONNX Runtime execution providers in order of preference: 'auto' (CUDA when the "
        "installed ONNX Runtime offers it), 'cuda', 'coreml', 'cpu'; the CPU is always last.",
    ),
    Setting(
        "model.batch_size",
        16,
        "int",
        "Images per inference call.",
        minimum=1,
        maximum=256,
    ),
    Setting(
        "model.threads",
        0,
        "int",
        "ONNX Runtime threads; 0 = one per core.",
        minimum=0,
        maximum=256,
    ),
    Setting(
        "index.workers",
        0,
        "int",
        "Threads that read, hash and decode photos ahead of inference; 0 = automatic.",
        minimum=0,
        maximum=64,
    ),
    Setting(
        "index.dask_scheduler",
        "",
        "scheduler",
        "A Dask scheduler (tcp://HOST:8786) whose workers read, decode and embed what "
        "`imageclust index` reads, for the first index of a very large archive; the "
        "photos and the model must be at the same paths on every worker. Empty: this "
        "machine. The daemon always indexes on this machine.",
    ),
    Setting(
        "cluster.min_size",
        5,
        "int",
        "Smallest group of photos worth a title.",
        minimum=1,
        maximum=100_000,
    ),
    Setting(
        "cluster.max_size",
        30,
        "int",
        "Largest group; bigger ones are split.",
        minimum=1,
        maximum=1_000_000,
    ),
    Setting(
        "ollama.host",
        "",
        "url?",
        "Base URL of the Ollama server that writes titles; empty = $OLLAMA_HOST, "
        "else http://127.0.0.1:11434.",
    ),
    Setting(
        "ollama.model",
        "gemma3:4b",
        "str",
        "The Ollama vision model that writes titles.",
    ),
    Setting(
        "ollama.parallel",
        1,
        "int",
        "Requests to Ollama in flight at once.",
        minimum=1,
        maximum=16,
    ),
    Setting(
        "ollama.timeout",
        120.0,
        "float",
        "Seconds one request may take in all before it counts as failed.",
        minimum=1,
        maximum=3600,
    ),
    Setting(
        "ollama.connect_timeout",
        5.0,
        "float",
        "Seconds to wait for a connection to Ollama.",
        minimum=0.1,
        maximum=120,
    ),
    Setting(
        "ollama.attempts",
        3,
        "int",
        "Tries per group before it gets a fallback title.",
        minimum=1,
        maximum=10,
    ),
    Setting(
        "ollama.backoff_base",
        2.0,
        "float",
        "Seconds before the first retry; doubled each retry, with full jitter.",
        minimum=0,
        maximum=600,
    ),
    Setting(
        "ollama.backoff_cap",
        30.0,
        "float",
        "Longest wait between retries, in seconds.",
        minimum=0,
        maximum=3600,
    ),
    Setting(
        "ollama.keep_alive",
        "5m",
        "str",
        "How long Ollama keeps the model loaded after a request (Ollama's duration syntax).",
    ),
    Setting(
        "web.listen",
        "127.0.0.1:8765",
        "listen",
        "Where the daemon serves the gallery (HOST:PORT); empty = off. `imageclust serve` "
        "uses it too unless given --listen.",
    ),
    Setting(
        "web.allow_remote",
        False,
        "bool",
        "Allow web.listen on an address other machines can reach. The gallery has no "
        "login: anyone who reaches it sees every photo.",
    ),
    Setting(
        "web.workers",
        2,
        "int",
        "Thumbnails and previews made at once (each decodes one original).",
        minimum=1,
        maximum=16,
    ),
)

SETTINGS_BY_KEY: Mapping[str, Setting] = {s.key: s for s in SETTINGS}

# `model.providers` values; embed.PROVIDERS maps them to ONNX Runtime's names.
_PROVIDER_NAMES = ("auto", "cuda", "coreml", "cpu")

_ENV_VAR = re.compile(r"\$(\w+|\{[^}]*\})")


def _expand(key: str, text: str) -> Path:
    expanded = os.path.expandvars(os.path.expanduser(text))
    missing = _ENV_VAR.search(expanded)
    if missing:
        raise ConfigError(key, f"environment variable {missing.group(0)} is not set (in {text!r})")
    return Path(expanded)


# A Dask scheduler's address, as `dask scheduler` prints it (tcp:// or tls://, host, port).
_SCHEDULER = re.compile(r"^(tcp|tls)://(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):\d{1,5}$")


def validate(setting: Setting, value: Any) -> Any:
    key, kind = setting.key, setting.kind
    if kind in ("str", "url", "url?", "path"):
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {type(value).__name__} {value!r}")
        if kind == "url?" and not value:
            return ""
        if kind in ("url", "url?"):
            if not re.match(r"^https?://[^/\s]+", value):
                raise ConfigError(key, f"expected an http:// or https:// URL, got {value!r}")
            return value.rstrip("/")
        if kind == "str" and not value.strip():
            raise ConfigError(key, "expected a non-empty string")
        if kind == "path":
            return _expand(key, value) if value else None
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {type(value).__name__} {value!r}")
        if setting.minimum is not None and value < setting.minimum:
            raise ConfigError(key, f"expected an integer >= {setting.minimum}, got {value}")
        if setting.maximum is not None and value > setting.maximum:
            raise ConfigError(key, f"expected an integer <= {setting.maximum}, got {value}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {type(value).__name__} {value!r}")
        if math.isnan(value):  # TOML has nan; it passes every comparison below
            raise ConfigError(key, "expected a number, got nan")
        if setting.minimum is not None and value < setting.minimum:
            raise ConfigError(key, f"expected a number >= {setting.minimum}, got {value}")
        if setting.maximum is not None and value > setting.maximum:
            raise ConfigError(key, f"expected a number <= {setting.maximum}, got {value}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if kind == "scheduler":
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {type(value).__name__} {value!r}")
        if value.strip() and not _SCHEDULER.match(value.strip()):
            raise ConfigError(key, f"expected a Dask address like tcp://HOST:8786, got {value!r}")
        return value.strip()
    if kind == "listen":
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {type(value).__name__} {value!r}")
        if value.strip():
            try:
                parse_listen(value)
            except ValueError as exc:
                raise ConfigError(key, str(exc)) from None
        return value.strip()
    if kind == "providers":
        if not isinstance(value, list) or not value:
            raise ConfigError(key, f"expected a non-empty list of names, got {value!r}")
        for name in value:
            if name not in _PROVIDER_NAMES:
                raise ConfigError(
                    key, f"unknown provider {name!r}; expected some of {list(_PROVIDER_NAMES)}"
                )
        return tuple(value)
    if kind in ("paths", "globs"):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(key, f"expected a list of non-empty strings, got {value!r}")
        return tuple(_expand(key, v) for v in value) if kind == "paths" else tuple(value)
    raise AssertionError(f"unknown setting kind {kind}")  # a bug in SETTINGS, not user input


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port); ValueError saying why not."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8765, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected a port from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: only this machine can connect."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, SETTINGS_BY_KEY, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _flatten(doc: Mapping[str, Any], source: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, body in doc.items():
        if not isinstance(body, dict):
            raise ConfigError(
                section, "expected a [section] table, not a top-level value", source=source
            )
        sections = {k.split(".")[0] for k in SETTINGS_BY_KEY}
        if section not in sections:  # even when empty: a typo'd [librar] is not ignored
            close = difflib.get_close_matches(section, sections, n=1)
            hint = f"; did you mean [{close[0]}]?" if close else ""
            raise ConfigError(section, "unknown section" + hint, source=source)
        for name, value in body.items():
            key = f"{section}.{name}"
            if key not in SETTINGS_BY_KEY:
                raise ConfigError(key, "unknown key" + _suggest(key), source=source)
            flat[key] = value
    return flat


# -- typed settings: one frozen object per section, its fields the section's keys in SETTINGS --


@dataclass(frozen=True, slots=True)
class LibrarySettings:
    roots: tuple[Path, ...]
    exclude: tuple[str, ...]
    settle_seconds: float
    poll: bool
    pair_raw_jpeg: bool
    poll_seconds: float


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    reconcile_seconds: float
    recluster_seconds: float
    publish_seconds: float


@dataclass(frozen=True, slots=True)
class MaintenanceSettings:
    gc_days: float


@dataclass(frozen=True, slots=True)
class StorageSettings:
    data_dir: Path | None


@dataclass(frozen=True, slots=True)
class CatalogSettings:
    path: Path | None


@dataclass(frozen=True, slots=True)
class OrganizeSettings:
    dir: Path | None


@dataclass(frozen=True, slots=True)
class ModelSettings:
    name: str
    path: Path | None
    text_path: Path | None
    tokenizer_path: Path | None
    providers: tuple[str, ...]
    batch_size: int
    threads: int


@dataclass(frozen=True, slots=True)
class IndexSettings:
    workers: int
    dask_scheduler: str


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    min_size: int
    max_size: int


@dataclass(frozen=True, slots=True)
class OllamaSettings:
    host: str
    model: str
    parallel: int
    timeout: float
    connect_timeout: float
    attempts: int
    backoff_base: float
    backoff_cap: float
    keep_alive: str


@dataclass(frozen=True, slots=True)
class WebSettings:
    listen: str
    allow_remote: bool
    workers: int


# The section objects by section name: `test_config` checks that their fields are exactly
# the keys of SETTINGS and that each holds what its kind validates to.
SECTIONS: Mapping[str, type[Any]] = {
    "library": LibrarySettings,
    "schedule": ScheduleSettings,
    "maintenance": MaintenanceSettings,
    "storage": StorageSettings,
    "catalog": CatalogSettings,
    "organize": OrganizeSettings,
    "model": ModelSettings,
    "index": IndexSettings,
    "cluster": ClusterSettings,
    "ollama": OllamaSettings,
    "web": WebSettings,
}


@dataclass(frozen=True)
class Config:
    """Validated settings, one typed object per section (`cfg.model.batch_size`)."""

    library: LibrarySettings
    schedule: ScheduleSettings
    maintenance: MaintenanceSettings
    storage: StorageSettings
    catalog: CatalogSettings
    organize: OrganizeSettings
    model: ModelSettings
    index: IndexSettings
    cluster: ClusterSettings
    ollama: OllamaSettings
    web: WebSettings
    source: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.storage.data_dir or Path(platformdirs.user_data_dir(APP, appauthor=False))

    @property
    def state_db_path(self) -> Path:
        return self.data_dir / "state.sqlite"

    @property
    def journal_path(self) -> Path:
        """Which photos are being decoded right now (see `inflight`)."""
        return self.data_dir / "decoding.journal"

    @property
    def catalog_path(self) -> Path:
        return self.catalog.path or self.data_dir / "catalog.sqlite"

    @property
    def roots(self) -> list[Path]:
        return list(self.library.roots)


def _sections(values: Mapping[str, Any], source: Path | None) -> Config:
    by_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in values.items():
        section, name = key.split(".")
        by_section[section][name] = value
    made = {name: SECTIONS[name](**fields) for name, fields in by_section.items()}
    return Config(**made, source=source)


def from_mapping(doc: Mapping[str, Any], source: Path | None = None) -> Config:
    """Validate a parsed TOML document (or any nested mapping) into a Config."""
    where = str(source) if source else None
    given = _flatten(doc, where or "<config>")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = given.get(setting.key, setting.default)
        try:
            values[setting.key] = validate(setting, raw)
        except ConfigError as exc:
            raise ConfigError(exc.key, exc.problem, source=where) from None
    if values["cluster.min_size"] > values["cluster.max_size"]:
        raise ConfigError(
            "cluster.min_size",
            f"must not exceed cluster.max_size ({values['cluster.min_size']} > "
            f"{values['cluster.max_size']})",
            source=where,
        )
    listen = values["web.listen"]
    if listen and not values["web.allow_remote"] and not is_loopback(parse_listen(listen)[0]):
        raise ConfigError(
            "web.listen",
            f"{listen} is not a loopback address: other machines could open the gallery, "
            "which has no login; set web.allow_remote = true to allow it",
            source=where,
        )
    organized: Path | None = values["organize.dir"]
    real = Path(os.path.realpath(organized)) if organized is not None else Path()
    for root in values["library.roots"] if organized is not None else ():
        real_root = Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            raise ConfigError(
                "organize.dir",
                f"is inside library root {root}: its links would be indexed as photos "
                "again; choose a folder outside library.roots",
                source=where,
            )
    return _sections(values, source)


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    """Which file to read: --config, then $IMAGECLUST_CONFIG, then the user's default if present."""
    if explicit:
        return _expand("--config", os.fspath(explicit))
    if environ.get(ENV_CONFIG):
        return _expand(ENV_CONFIG, environ[ENV_CONFIG])
    default = Path(platformdirs.user_config_dir(APP, appauthor=False)) / f"{APP}.toml"
    return default if default.is_file() else None


def load(path: Path | None, named_by: str = "--config") -> Config:
    """Read and validate `path` (None = defaults only); `named_by` chose it (for errors)."""
    if path is None:
        return from_mapping({})
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(named_by, f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(named_by, f"cannot read {path}: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
    return from_mapping(doc, path)
