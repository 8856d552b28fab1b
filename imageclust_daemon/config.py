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
from dataclasses import dataclass, field, fields
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


# SETTINGS (every key, in order) is read off the section objects below.

# `model.providers` values; embed.PROVIDERS maps them to ONNX Runtime's names.
_PROVIDER_NAMES = ("auto", "cuda", "coreml", "cpu")

# `index.heif_thumbnails` values: when a HEIF's embedded thumbnail stands for its full
# decode (decode.HEIF_THUMBNAIL_SCALE gives each its shortest side, in model resizes).
HEIF_THUMBNAILS = ("fidelity", "speed", "never")

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
    if kind == "heif_thumbnails":
        if value not in HEIF_THUMBNAILS:
            raise ConfigError(
                key, f"expected one of {', '.join(map(repr, HEIF_THUMBNAILS))}, got {value!r}"
            )
        return value
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


# -- the settings: one frozen object per section, each field one key, declared once --------
#
# A field's metadata is the key's whole declaration: its default (as it would be written
# in TOML), its kind (what `validate` checks and turns it into), its help (the comment
# above it in config/imageclust.toml and its row in docs/reference.md, both generated
# from it: `python -m tests.tools.gen_config`) and its range.


def setting(
    default: Any,
    kind: str,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """One key of a section: a dataclass field whose metadata declares it."""
    return field(
        metadata={
            "default": default,
            "kind": kind,
            "help": help,
            "minimum": minimum,
            "maximum": maximum,
        }
    )


@dataclass(frozen=True, slots=True)
class LibrarySettings:
    roots: tuple[Path, ...] = setting(
        ["~/Pictures"],
        "paths",
        "Folders whose photos are indexed (searched recursively; symlinked folders "
        "are followed, each folder visited once).",
    )
    exclude: tuple[str, ...] = setting(
        [],
        "globs",
        'Glob patterns to skip. Without "/", a pattern matches any file or folder '
        'name ("*.tmp", "Thumbnails"); with "/", the path relative to its root '
        '("Archive/2009/*"). Hidden files and folders (leading dot) are always '
        "skipped.",
    )
    settle_seconds: float = setting(
        2.0,
        "float",
        "Seconds a changed file's size and mtime must stay the same before it is "
        "read, so a slow copy is indexed once, complete.",
        minimum=0,
        maximum=3600,
    )
    poll: bool = setting(
        False,
        "bool",
        "Poll every root instead of using change notifications. Roots on network "
        "filesystems (NFS, SMB, sshfs, ...) and roots the OS cannot watch (inotify "
        "limit) are polled anyway, with a warning in the log.",
    )
    pair_raw_jpeg: bool = setting(
        True,
        "bool",
        "A RAW and a JPEG (or HEIC) of one shot, in one folder under one name "
        "(IMG_0042.CR3 + IMG_0042.JPG), are one photo: the JPEG shows it in albums, "
        "search and the gallery, and the catalog lists both files. false: each file "
        "is a photo of its own.",
    )
    poll_seconds: float = setting(
        30.0,
        "float",
        "How often polled roots are compared, in seconds (a poll stats every file).",
        minimum=0.1,
        maximum=86400,
    )


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    reconcile_seconds: float = setting(
        21600.0,
        "float",
        "Seconds between full rescans of every root: the safety net for events the "
        "watcher missed (queue overflows, changes while the daemon was down). 6 "
        "hours.",
        minimum=1,
        maximum=2592000,
    )
    recluster_seconds: float = setting(
        600.0,
        "float",
        "Seconds between reclusters (10 minutes); each runs only if photos changed "
        "since the last, the first right after the startup rescan: a big import is "
        "grouped once, not once per photo.",
        minimum=0,
        maximum=2592000,
    )
    publish_seconds: float = setting(
        30.0,
        "float",
        "Seconds between catalog publishes; each runs only if something changed.",
        minimum=0,
        maximum=86400,
    )


@dataclass(frozen=True, slots=True)
class MaintenanceSettings:
    gc_days: float = setting(
        30.0,
        "float",
        "Days an embedding is kept after the last file with its content is gone (an "
        "unplugged drive or a folder moved away and back costs nothing within it).",
        minimum=0,
        maximum=36500,
    )


@dataclass(frozen=True, slots=True)
class StorageSettings:
    data_dir: Path | None = setting(
        "",
        "path",
        "Where the state database (state.sqlite), the catalog and downloaded models "
        "live. Empty = the platform's user data directory "
        "(~/.local/share/imageclust on Linux, ~/Library/Application "
        "Support/imageclust on macOS).",
    )


@dataclass(frozen=True, slots=True)
class CatalogSettings:
    path: Path | None = setting(
        "",
        "path",
        "The published read-only catalog (SQLite) that other programs query. Empty "
        "= <data_dir>/catalog.sqlite. Rebuilt and swapped in atomically after "
        "changes.",
    )


@dataclass(frozen=True, slots=True)
class OrganizeSettings:
    dir: Path | None = setting(
        "",
        "path",
        "A folder to fill with one sub-folder of symlinks per titled album, and "
        "Events/<year>/<YYYY-MM-DD title>/ with one per event, so any "
        "file browser shows the library organized by meaning. Empty = off. The "
        "folder is imageclust's own (rebuilt as a whole); the originals are never "
        "touched. It must be outside library.roots (its links would be indexed as "
        "photos again).",
    )


@dataclass(frozen=True, slots=True)
class ModelSettings:
    name: str = setting(
        "clip-vit-b32",
        "str",
        "Which entry of the model manifest to use; `imageclust models list` shows "
        "them. clip-vit-b32 is the default: 512-dim embeddings, ~130 core-ms per "
        "photo on a laptop CPU. clip-vit-l14 is ~4x slower and somewhat better at "
        "fine detail.",
    )
    path: Path | None = setting(
        "",
        "path",
        "The ONNX file. Empty = <data_dir>/models/<the manifest's file name>, where "
        "`imageclust models download` puts it.",
    )
    text_path: Path | None = setting(
        "",
        "path",
        "The text tower's ONNX file, for search by words. Empty = "
        "<data_dir>/models/<the manifest's file name>, where `imageclust models "
        "download` puts it (`--vision-only` skips it).",
    )
    tokenizer_path: Path | None = setting(
        "",
        "path",
        "The text tower's tokenizer.json. Empty = <data_dir>/models/<the manifest's "
        "file name>, next to the text tower.",
    )
    providers: tuple[str, ...] = setting(
        ["auto"],
        "providers",
        'ONNX Runtime execution providers, in order of preference: "auto" (CUDA '
        "when the installed ONNX Runtime offers it: `pip install onnxruntime-gpu` "
        'in place of onnxruntime), "cuda", "coreml" (macOS), "cpu". The CPU is '
        "always tried last; a model that cannot start on an accelerator runs on the "
        "CPU, with one warning.",
    )
    batch_size: int = setting(
        16,
        "int",
        "Images per inference call (1-256).",
        minimum=1,
        maximum=256,
    )
    threads: int = setting(
        0,
        "int",
        "ONNX Runtime threads; 0 = one per core.",
        minimum=0,
        maximum=256,
    )


@dataclass(frozen=True, slots=True)
class IndexSettings:
    workers: int = setting(
        0,
        "int",
        "Threads that read, hash and decode photos ahead of inference (0-64); 0 = "
        "automatic (one per core, at most 4).",
        minimum=0,
        maximum=64,
    )
    heif_thumbnails: str = setting(
        "fidelity",
        "heif_thumbnails",
        "When a HEIC/HEIF photo is read through the small copy of itself stored "
        "beside it (a phone's 12 MP HEIC: 4-8 ms in place of 150-180 ms). "
        '"fidelity": only a copy with twice the model\'s input size, whose embedding '
        'stays within a median cosine of 0.99 of the full decode\'s. "speed": any '
        "copy that reaches the model's input, such as the 320-px ones most phones "
        "store (an iPhone library indexes several times faster; embeddings at a "
        "median cosine of 0.93-0.97 to the full decode's, so albums and search see "
        'less detail). "never": always decode in full (a photo too large to decode '
        "at all is still read through its copy). Applies to photos read from then on.",
    )
    dask_scheduler: str = setting(
        "",
        "scheduler",
        "A Dask scheduler (tcp://HOST:8786) whose workers read, decode and embed "
        "what `imageclust index` reads: for the first index of a very large archive "
        '(see README, "A first index on many machines"). The photos and the model '
        "file must be at the same paths on every worker (a shared filesystem). "
        "Empty: this machine. The daemon always indexes on this machine. Needs the "
        "dask extra.",
    )
    dask_connect_timeout: float = setting(
        10.0,
        "float",
        "Seconds to keep trying to reach the Dask scheduler before `index` gives up "
        "(having written nothing).",
        minimum=0.5,
        maximum=600,
    )


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    min_size: int = setting(
        5,
        "int",
        "Smallest group of photos worth a title. 5: an album of fewer photos is "
        "rarely worth naming, and smaller limits let near-duplicate bursts form "
        "groups alone. Photos that fit no group join the group of their nearest "
        "neighbours with room; one far from every group (at most 2% of the photos) "
        "stays ungrouped.",
        minimum=1,
        maximum=100000,
    )
    max_size: int = setting(
        30,
        "int",
        "Largest group; bigger ones are split along the clustering tree. 30: a "
        "screen or two of photos, one subject or one moment. On 94 distinct real "
        "photographs, 200 left one album of 68 unrelated ones (30: 5 albums); on "
        "1,140 shots of 114 real photographs, ARI 0.66 at 200, 0.78 at 30. Raise it "
        "for broader albums (a whole trip in one), lower it for finer ones.",
        minimum=1,
        maximum=1000000,
    )


@dataclass(frozen=True, slots=True)
class OllamaSettings:
    host: str = setting(
        "",
        "url?",
        "Base URL of the Ollama server that writes group titles. Empty = "
        "$OLLAMA_HOST (read as Ollama's own tools read it), else "
        "http://127.0.0.1:11434.",
    )
    model: str = setting(
        "gemma3:4b",
        "str",
        "The Ollama vision model that writes group titles (`ollama pull "
        "gemma3:4b`). Any model that takes images works: llava, llama3.2-vision, "
        "qwen2.5vl, ...",
    )
    parallel: int = setting(
        1,
        "int",
        "Requests to Ollama in flight at once. 1: a local model answers one request "
        "at a time unless OLLAMA_NUM_PARALLEL is raised on the server.",
        minimum=1,
        maximum=16,
    )
    timeout: float = setting(
        120.0,
        "float",
        "Seconds one request may take in all (a vision model on a CPU can need a "
        "minute for three photos); past it the attempt counts as failed.",
        minimum=1,
        maximum=3600,
    )
    connect_timeout: float = setting(
        5.0,
        "float",
        "Seconds to wait for a connection to the Ollama server.",
        minimum=0.1,
        maximum=120,
    )
    attempts: int = setting(
        3,
        "int",
        "Tries per group before the group gets a fallback title for this cycle.",
        minimum=1,
        maximum=10,
    )
    backoff_base: float = setting(
        2.0,
        "float",
        "Seconds before the first retry; doubled for each retry, with full jitter.",
        minimum=0,
        maximum=600,
    )
    backoff_cap: float = setting(
        30.0,
        "float",
        "Longest wait between two retries, in seconds.",
        minimum=0,
        maximum=3600,
    )
    keep_alive: str = setting(
        "5m",
        "str",
        'How long Ollama keeps the model in memory after a request ("5m", "1h", "0").',
    )


@dataclass(frozen=True, slots=True)
class WebSettings:
    listen: str = setting(
        "127.0.0.1:8765",
        "listen",
        "Where the daemon serves the photo gallery (HOST:PORT); empty = off. "
        "`imageclust serve` uses it too unless given --listen.",
    )
    allow_remote: bool = setting(
        False,
        "bool",
        "Allow web.listen on an address other machines can reach. The gallery has "
        "no login: anyone who can reach it sees every photo.",
    )
    workers: int = setting(
        2,
        "int",
        "Thumbnails and previews made at once (each decodes one original).",
        minimum=1,
        maximum=16,
    )


# The section objects by section name, in the order of the config file.
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


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f"{section}.{f.name}", **f.metadata)
    for section, settings in SECTIONS.items()
    for f in fields(settings)
)
SETTINGS_BY_KEY: Mapping[str, Setting] = {s.key: s for s in SETTINGS}


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
