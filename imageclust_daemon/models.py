"""The model manifest, and finding, fetching and checking the files it names.

`models/manifest.toml` is data: one table per supported model, with one sub-table
per file (the vision tower, and for search by words the text tower and its
tokenizer), each pinned to a repository commit with its checksum and size, plus
the model's own preprocessing. This module reads and validates it
(`load_manifest`), finds a model's files for a config (`locate`: the one lookup
the CLI, the daemon and `doctor` share), downloads them (`download_model`) and
checks installed files (`verify`).

A download never leaves a half or wrong file where the model is looked for:
bytes go to ``<dest>.part``, an interrupted transfer resumes from there with an
HTTP Range request, and only a file whose size, sha256 and content all check out
(an ONNX tower must load with its contract, a tokenizer must encode a probe to
the recorded ids) is fsynced and renamed into place. A truncated ONNX graph can
load far enough to produce numbers, and numbers from half a model look like
numbers.

Hub files are fetched from ``{endpoint}/{repo}/resolve/{revision}/{path}``, the
layout of huggingface_hub's ``HUGGINGFACE_CO_URL_TEMPLATE``, where the endpoint is
``$HF_ENDPOINT`` when set (the variable Hugging Face's own tools read, for mirrors
and proxies), else ``https://huggingface.co`` (huggingface_hub's
``_HF_DEFAULT_ENDPOINT``). A pinned URL that answers 404 or 410 is tried once more
at ``main``, and that file is kept only when its size and sha256 are the
manifest's.

The HTTP client is passed in (tests hand one talking to a server on
127.0.0.1); the default follows redirects, because Hugging Face answers a
``resolve`` URL with a redirect to its CDN.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx
import numpy as np

from imageclust_daemon import __version__, tokenizer
from imageclust_daemon.config import Config
from imageclust_daemon.durable import fsync_dir
from imageclust_daemon.embed import (
    Embedder,
    file_sha256,
    model_id,
    model_io,
    open_session,
    text_model_io,
)
from imageclust_daemon.errors import ConfigError, DownloadError, ModelError, ModelNotFoundError
from imageclust_daemon.records import (
    MERGES,
    ROLES,
    TEXT,
    TOKENIZER,
    VISION,
    VOCAB,
    WORDS_ROLES,
    ModelFile,
    ModelSpec,
    Preprocessing,
)
from imageclust_daemon.resources import data_path
from imageclust_daemon.store import Store

Progress = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes or None when neither server nor manifest says)."""

DEFAULT_ENDPOINT = "https://huggingface.co"
ENDPOINT_ENV = "HF_ENDPOINT"
FALLBACK_REVISION = "main"
# A pinned file that is gone answers one of these; anything else is not a reason to
# look at another revision (a 500 or a refused connection would answer the same there).
_GONE = frozenset({404, 410})

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")
# The names PIL.Image.Resampling knows; checked here so a typo fails at load, not mid-index.
_RESAMPLE = frozenset({"nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"})

_ENTRY_REQUIRED = frozenset({"title", "dim", "preprocessing", VISION})
_ENTRY_OPTIONAL = frozenset(
    {"repo", "revision", "context_length", "notes", TEXT, TOKENIZER, VOCAB, MERGES}
)
_FILE_COMMON = frozenset({"filename", "path", "url", "sha256", "size_bytes"})
_FILE_KEYS = {
    VISION: _FILE_COMMON | {"input_name", "output_name"},
    TEXT: _FILE_COMMON | {"input_name", "output_name"},
    TOKENIZER: _FILE_COMMON | {"probe_text", "probe_ids"},
    VOCAB: _FILE_COMMON,
    MERGES: _FILE_COMMON,
}
_FILE_REQUIRED = {
    VISION: frozenset({"filename", "input_name", "output_name"}),
    TEXT: frozenset({"filename", "input_name", "output_name"}),
    TOKENIZER: frozenset({"filename", "probe_text", "probe_ids"}),
    VOCAB: frozenset({"filename"}),
    MERGES: frozenset({"filename"}),
}
_SUFFIX = {VISION: ".onnx", TEXT: ".onnx", TOKENIZER: ".json", VOCAB: ".json", MERGES: ".txt"}
# Every preprocessing key is required: a silent default would quietly feed a model
# pixels scaled for another one, which degrades every embedding and fails nothing.
_PREPROCESSING_REQUIRED = frozenset(
    {"resize_shortest", "crop", "resample", "rescale", "mean", "std"}
)
# What each file is for, in messages about a missing one.
PURPOSE = {
    VISION: "the vision tower (indexing needs it)",
    TEXT: "the text tower (search by words needs it)",
    TOKENIZER: "the tokenizer (search by words needs it)",
    VOCAB: "the tokenizer's vocabulary (checks tokenizer.json)",
    MERGES: "the tokenizer's merges (checks tokenizer.json)",
}
# The probe an own tokenizer is checked with where the manifest lists none: every OpenAI
# CLIP model shares one BPE vocabulary, and these are its ids (start, a, photo, of, a,
# cat, end), as in clip-vit-b32's manifest entry and open_clip's BPE file (tests check it).
CLIP_PROBE = ("a photo of a cat", (49406, 320, 1125, 539, 320, 2368, 49407))
# Config keys that name a user's own file in place of the manifest's, per role.
OWN_FILE_KEYS = {VISION: "model.path", TEXT: "model.text_path", TOKENIZER: "model.tokenizer_path"}


# --- manifest ----------------------------------------------------------------------------------


def load_manifest(path: Path | None = None) -> dict[str, ModelSpec]:
    """Every model in the manifest (the shipped one unless `path` is given), by name.

    Raises ModelError naming the file, the entry and the field on the first bad value.
    """
    source = path if path is not None else data_path("models/manifest.toml")
    try:
        with open(source, "rb") as stream:
            data = tomllib.load(stream)
    except OSError as exc:
        raise ModelError(f"{source}: cannot read the model manifest: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"{source}: not valid TOML: {exc}") from exc

    specs: dict[str, ModelSpec] = {}
    for key, value in data.items():
        if not isinstance(value, dict):
            raise ModelError(f"{source}: {key}: expected a [table] describing a model")
        specs[key] = _parse_entry(source, key, value)
    if not specs:
        raise ModelError(f"{source}: the manifest lists no models")
    by_file: dict[str, str] = {}
    for spec in specs.values():
        for f in spec.files:
            if f.filename in by_file:
                # Two files sharing a name would overwrite each other's download.
                raise ModelError(
                    f"{source}: model {spec.name!r}: {f.role}.filename: {f.filename!r} is "
                    f"also a file of {by_file[f.filename]!r}"
                )
            by_file[f.filename] = spec.name
    return specs


def model_file(data_dir: Path, spec: ModelSpec, role: str = VISION) -> Path:
    """Where `models download` puts a model's file under the data directory."""
    found = spec.file(role)
    if found is None:
        raise ModelError(f"model {spec.name!r} has no {role} file")
    return data_dir / "models" / found.filename


class _Fields:
    """Typed reads from one manifest table, with errors that name file, entry and field."""

    def __init__(self, table: dict[str, Any], source: Path, entry: str, prefix: str = "") -> None:
        self._table = table
        self._source = source
        self._entry = entry
        self._prefix = prefix

    def error(self, key: str, problem: str) -> ModelError:
        return ModelError(f"{self._source}: model {self._entry!r}: {self._prefix}{key}: {problem}")

    def check_keys(self, required: frozenset[str], optional: frozenset[str] = frozenset()) -> None:
        for key in self._table:
            if key not in required and key not in optional:
                raise self.error(key, "unknown key (see models/README.md for the fields)")
        for key in sorted(required):
            if key not in self._table:
                raise self.error(key, "missing (required)")

    def value(self, key: str) -> Any:
        return self._table[key]

    def text(self, key: str) -> str:
        value = self._table[key]
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        return value

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if key in self._table else None

    def positive_int(self, key: str) -> int:
        value = self._table[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.error(key, f"must be a positive integer, got {value!r}")
        return value

    def optional_positive_int(self, key: str) -> int | None:
        return self.positive_int(key) if key in self._table else None

    def positive_float(self, key: str) -> float:
        return self._float(key, self._table[key], positive=True)

    def triple(self, key: str, *, positive: bool) -> tuple[float, float, float]:
        value = self._table[key]
        if not isinstance(value, list) or len(value) != 3:
            raise self.error(key, f"must be a list of 3 numbers (R, G, B), got {value!r}")
        r, g, b = (self._float(key, v, positive=positive) for v in value)
        return (r, g, b)

    def _float(self, key: str, value: object, *, positive: bool) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {value!r}")
        if positive and value <= 0:
            raise self.error(key, f"must be greater than 0, got {value!r}")
        return float(value)


def _parse_entry(source: Path, name: str, table: dict[str, Any]) -> ModelSpec:
    fields = _Fields(table, source, name)
    if not _NAME.fullmatch(name):
        raise fields.error("name", "must be lowercase letters, digits, '.', '_' or '-'")
    fields.check_keys(_ENTRY_REQUIRED, _ENTRY_OPTIONAL)

    repo = fields.optional_text("repo")
    if repo is not None and not _REPO.fullmatch(repo):
        raise fields.error("repo", f"must be a hub repository 'owner/name', got {repo!r}")
    revision = fields.optional_text("revision")
    if revision is not None and not _COMMIT.fullmatch(revision):
        # A branch or tag moves: the file under it can change and fail its checksum.
        raise fields.error("revision", f"must be a 40-digit commit hash, got {revision!r}")
    if (repo is None) != (revision is None):
        raise fields.error("revision" if repo else "repo", "repo and revision go together")

    files = []
    for role in ROLES:
        if role not in table:
            continue
        raw = table[role]
        if not isinstance(raw, dict):
            raise fields.error(role, f"must be a table ([{name}.{role}])")
        files.append(_parse_file(_Fields(raw, source, name, prefix=f"{role}."), role, repo))
    roles = {f.role for f in files}
    if TEXT in roles and TOKENIZER not in roles:
        raise fields.error(TOKENIZER, "missing: a text tower needs its tokenizer")
    if TOKENIZER in roles and TEXT not in roles:
        raise fields.error(TEXT, "missing: a tokenizer is only used with a text tower")

    raw = table["preprocessing"]
    if not isinstance(raw, dict):
        raise fields.error("preprocessing", "must be a table ([<name>.preprocessing])")
    pre = _Fields(raw, source, name, prefix="preprocessing.")
    pre.check_keys(_PREPROCESSING_REQUIRED)
    resample = pre.text("resample")
    if resample not in _RESAMPLE:
        raise pre.error("resample", f"must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    resize_shortest = pre.positive_int("resize_shortest")
    crop = pre.positive_int("crop")
    if crop > resize_shortest:
        raise pre.error("crop", f"{crop} is larger than resize_shortest ({resize_shortest})")
    preprocessing = Preprocessing(
        resize_shortest=resize_shortest,
        crop=crop,
        resample=resample,
        rescale=pre.positive_float("rescale"),
        mean=pre.triple("mean", positive=False),
        std=pre.triple("std", positive=True),
    )

    return ModelSpec(
        name=name,
        title=fields.text("title"),
        dim=fields.positive_int("dim"),
        files=tuple(files),
        preprocessing=preprocessing,
        repo=repo,
        revision=revision,
        context_length=fields.optional_positive_int("context_length") or 77,
        notes=fields.optional_text("notes") or "",
    )


def _parse_file(fields: _Fields, role: str, repo: str | None) -> ModelFile:
    fields.check_keys(_FILE_REQUIRED[role], _FILE_KEYS[role] - _FILE_REQUIRED[role])
    filename = fields.text("filename")
    if filename != Path(filename).name or "\\" in filename or filename.startswith("."):
        raise fields.error("filename", f"must be a plain file name, got {filename!r}")
    if not filename.endswith(_SUFFIX[role]):
        raise fields.error("filename", f"must end in {_SUFFIX[role]}, got {filename!r}")

    repo_path = fields.optional_text("path")
    url = fields.optional_text("url")
    if repo_path is not None and url is not None:
        raise fields.error("url", "give path (in the model's repo) or url, not both")
    if repo_path is not None:
        if repo is None:
            raise fields.error("path", "a path in a repository needs the model's repo and revision")
        if repo_path.startswith("/") or ".." in repo_path.split("/"):
            raise fields.error(
                "path", f"must be a relative path in the repository, got {repo_path!r}"
            )
    if url is not None and not url.startswith(("https://", "http://")):
        raise fields.error("url", f"must be an http(s) URL, got {url!r}")

    sha256 = fields.optional_text("sha256")
    if sha256 is not None:
        if not _SHA256.fullmatch(sha256):
            raise fields.error("sha256", f"must be 64 hex digits, got {sha256!r}")
        sha256 = sha256.lower()

    probe_ids: tuple[int, ...] = ()
    if role == TOKENIZER:
        raw = fields.value("probe_ids")
        if (
            not isinstance(raw, list)
            or not raw
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in raw)
        ):
            raise fields.error("probe_ids", f"must be a list of token ids, got {raw!r}")
        probe_ids = tuple(raw)

    return ModelFile(
        role=role,
        filename=filename,
        repo_path=repo_path,
        url=url,
        sha256=sha256,
        size_bytes=fields.optional_positive_int("size_bytes"),
        input_name=fields.optional_text("input_name"),
        output_name=fields.optional_text("output_name"),
        probe_text=fields.optional_text("probe_text"),
        probe_ids=probe_ids,
    )


# --- where a model's files are ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Located:
    """A model's files as the config places them: the manifest's entry, a path per file,
    and which of those paths the config names (the user's own files)."""

    spec: ModelSpec
    paths: Mapping[str, Path]  # role -> path, for every role the model has or the config names
    own: frozenset[str]  # roles whose path is the user's own (model.path, model.text_path, ...)

    @property
    def vision_path(self) -> Path:
        return self.paths[VISION]

    def file(self, role: str) -> ModelFile | None:
        """The manifest's description of `role`; for a user's own file where the manifest
        lists none, the contract every CLIP export has (no checksum, no probe)."""
        found = self.spec.file(role)
        if found is not None or role not in self.own:
            return found
        names = {TEXT: ("input_ids", "text_embeds")}.get(role, (None, None))
        probe = CLIP_PROBE if role == TOKENIZER else (None, ())
        return ModelFile(
            role,
            self.paths[role].name,
            input_name=names[0],
            output_name=names[1],
            probe_text=probe[0],
            probe_ids=probe[1],
        )


def find_spec(name: str, *, key: str = "model.name") -> ModelSpec:
    """The manifest's entry `name`; ConfigError naming `key` when there is none."""
    manifest = load_manifest()
    if name not in manifest:
        raise ConfigError(key, f"unknown model {name!r}; known: {', '.join(sorted(manifest))}")
    return manifest[name]


def locate(cfg: Config, name: str | None = None) -> Located:
    """The configured model's files (`model.name`, `model.path`, `model.text_path`,
    `model.tokenizer_path`), or with `name` the manifest model `name` at the places
    `models download NAME` uses, whatever the config says."""
    spec = find_spec(name or cfg.model.name, key="NAME" if name else "model.name")
    paths = {f.role: cfg.data_dir / "models" / f.filename for f in spec.files}
    own: set[str] = set()
    if name is None:
        own_paths = {
            VISION: cfg.model.path,
            TEXT: cfg.model.text_path,
            TOKENIZER: cfg.model.tokenizer_path,
        }
        for role, configured in own_paths.items():
            if configured is not None:
                paths[role] = configured
                own.add(role)
    return Located(spec, paths, frozenset(own))


def endpoint_from(environ: Mapping[str, str]) -> str:
    """The hub to download from: $HF_ENDPOINT (as Hugging Face's tools read it), else theirs.

    Raises ConfigError naming the variable when it is not an http(s) URL with a host.
    """
    value = environ.get(ENDPOINT_ENV, "").strip()
    if not value:
        return DEFAULT_ENDPOINT
    try:
        parsed = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"${ENDPOINT_ENV}", f"not a URL ({exc}): {value!r}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(
            f"${ENDPOINT_ENV}", f"expected an http:// or https:// URL with a host, got {value!r}"
        )
    return value.rstrip("/")


def hub_url(endpoint: str, repo: str, revision: str, repo_path: str) -> str:
    """huggingface_hub's URL layout: {endpoint}/{repo_id}/resolve/{revision}/{filename}."""
    return f"{endpoint}/{repo}/resolve/{revision}/{quote(repo_path)}"


def file_urls(spec: ModelSpec, f: ModelFile, endpoint: str = DEFAULT_ENDPOINT) -> list[str]:
    """Where to fetch `f`, in order: its pinned URL, then (a hub file whose size and sha256
    are known) the same path at `main`, used only if the pinned one is gone."""
    if f.url is not None:
        return [f.url]
    if f.repo_path is None or spec.repo is None or spec.revision is None:
        return []
    urls = [hub_url(endpoint, spec.repo, spec.revision, f.repo_path)]
    if f.sha256 is not None and f.size_bytes is not None:
        urls.append(hub_url(endpoint, spec.repo, FALLBACK_REVISION, f.repo_path))
    return urls


# --- download ----------------------------------------------------------------------------------


def part_path(dest: Path) -> Path:
    """Where the bytes of `dest` collect until they verify."""
    return dest.with_name(dest.name + ".part")


def default_client(timeout: float = 30.0) -> httpx.Client:
    """The HTTP client `download` makes when given none.

    `timeout` bounds connecting and each single read, not the whole transfer: a
    1.2 GB model on a slow line may take an hour and is fine, a server that goes
    silent for `timeout` seconds is not.
    """
    return httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(timeout),
        headers={"User-Agent": f"imageclust-daemon/{__version__}"},
    )


@dataclass(frozen=True, slots=True)
class Fetched:
    """What `download_model` did for one file."""

    role: str
    path: Path
    url: str | None  # where it came from; None when nothing was fetched
    fallback: bool = False  # the pinned URL was gone; the same file (size, sha256) came from main
    kept: str = ""  # why nothing was fetched: already in place, or the user's own file


class _Gone(Exception):
    """The URL answered 404 or 410: the file is not there (another revision may have it)."""

    def __init__(self, status: str) -> None:
        self.status = status
        super().__init__(status)


def download(
    spec: ModelSpec,
    dest: Path,
    *,
    role: str = VISION,
    url: str | None = None,
    endpoint: str = DEFAULT_ENDPOINT,
    client: httpx.Client | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
    companions: Mapping[str, Path] | None = None,
) -> Fetched:
    """Fetch `spec`'s `role` file to `dest`, verified, atomically.

    Bytes go to ``<dest>.part``. An existing .part is resumed with a Range
    request (206 appends; a 200 or 416 starts over). The URLs of `file_urls` are
    tried in order, the next only when one answers 404 or 410. When the body is
    complete the file must match the manifest's size and sha256 (each when known)
    and pass its content check (`content_problems`); only then is it fsynced and
    renamed onto `dest`. A broken transfer raises DownloadError and keeps the .part
    for the next call; a complete but wrong file raises DownloadError and is
    deleted. `url` replaces the manifest's URLs (a copy you host). `companions`
    are the other files' paths (the tokenizer is checked against the vocabulary).
    """
    f = spec.file(role)
    if f is None:
        raise DownloadError(spec.name, f"the manifest lists no {role} file for this model")
    urls = [url] if url is not None else file_urls(spec, f, endpoint)
    what = f"{spec.name} {role} ({f.repo_path or f.filename})"
    if not urls:
        raise DownloadError(
            spec.name,
            f"the manifest gives no URL for its {role} file",
            next_step=f"pass --url, or set {OWN_FILE_KEYS.get(role, 'model.path')} "
            "to a file you have",
        )
    if dest.is_dir():
        raise DownloadError(
            urls[0],
            f"{dest} is a folder, where the {role} file goes",
            next_step="move the folder away, or point the config at another file",
        )
    part = part_path(dest)
    http = client if client is not None else default_client(timeout)
    attempts: list[tuple[str, str]] = []
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "ab") as out:
            _lock(out, urls[0])
            try:
                for i, source in enumerate(urls):
                    try:
                        fetched = _fetch(http, source, out, f.size_bytes, progress, timeout)
                        problems = _check_fetched(spec, f, out, part, dict(companions or {}))
                        if problems and not fetched:
                            # A complete .part left by an earlier run that was not this file:
                            # nothing was asked of the server yet; ask it now.
                            fetched = _fetch(http, source, out, f.size_bytes, progress, timeout)
                            problems = _check_fetched(spec, f, out, part, dict(companions or {}))
                    except _Gone as gone:
                        attempts.append((source, gone.status))
                        continue
                    except DownloadError as exc:
                        attempts.append((source, exc.reason))
                        step = exc.next_step or _wrong_file_step(spec, f, i > 0)
                        raise _failed(what, attempts, step) from exc
                    if problems:
                        attempts.append((source, "; ".join(problems) + f"; {part.name} deleted"))
                        raise _failed(what, attempts, _wrong_file_step(spec, f, i > 0))
                    # Still holding the lock: no second downloader can append before the rename.
                    os.replace(part, dest)
                    break
                else:
                    raise _failed(what, attempts, _gone_step(spec, f, endpoint, url))
            except BaseException:
                _remove_if_empty(out, part)  # a failure before the first byte leaves no litter
                raise
    except OSError as exc:
        raise DownloadError(urls[0], f"cannot write {part}: {exc}") from exc
    finally:
        if client is None:
            http.close()
    fsync_dir(dest.parent)
    return Fetched(role, dest, source, fallback=i > 0)


def _check_fetched(
    spec: ModelSpec, f: ModelFile, out: IO[bytes], part: Path, companions: dict[str, Path]
) -> list[str]:
    out.flush()
    os.fsync(out.fileno())
    problems = _check_part(spec, f, part, companions)
    if problems:
        out.truncate(0)  # a wrong file: never resumed from; removed when the download fails
    return problems


def _failed(what: str, attempts: list[tuple[str, str]], next_step: str) -> DownloadError:
    url, reason = attempts[-1]
    return DownloadError(url, reason, attempts=tuple(attempts), next_step=next_step, what=what)


def _gone_step(spec: ModelSpec, f: ModelFile, endpoint: str, url: str | None) -> str:
    own = OWN_FILE_KEYS.get(f.role)
    yours = f"; or get {f.repo_path or f.filename} yourself and set {own} to it" if own else ""
    if url is not None:
        return f"check the URL given with --url{yours}"
    mirror = (
        f"the mirror {endpoint} (${ENDPOINT_ENV}) does not have it: check the variable"
        if endpoint != DEFAULT_ENDPOINT
        else f"the repository {spec.repo} no longer has it at the pinned revision or at main; "
        f"a mirror can be used with ${ENDPOINT_ENV}"
    )
    return mirror + yours


def _wrong_file_step(spec: ModelSpec, f: ModelFile, from_main: bool) -> str:
    if from_main:
        return (
            f"the file at main is not the one the manifest pins ({spec.revision}), so it was "
            "not kept; a mirror that still has the pinned revision can be used with "
            f"${ENDPOINT_ENV}, or a newer imageclust may pin the new file"
        )
    return "the server sent another file than the manifest pins; check the mirror or --url"


def download_model(
    located: Located,
    *,
    roles: Sequence[str] = ROLES,
    endpoint: str = DEFAULT_ENDPOINT,
    vision_url: str | None = None,
    client: httpx.Client | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> list[Fetched]:
    """Fetch each of the model's `roles` files that is not already in place and verified.

    A file already at its place with the manifest's size and sha256 is kept; a user's
    own file (model.path, ...) is never replaced. `progress` gets the bytes over all the
    files fetched. Stops at the first file that fails (DownloadError); the files before
    it stay in place, and a rerun fetches only what is missing.
    """
    spec = located.spec
    plan: list[ModelFile] = []
    done: list[Fetched] = []
    for f in spec.files:
        if f.role not in roles:
            continue
        dest = located.paths[f.role]
        if dest.is_dir():
            raise DownloadError(
                str(dest),
                f"{dest} is a folder, where the {f.role} file goes",
                next_step="move the folder away, or point the config at another file",
            )
        if dest.is_file() and _matches(f, dest):
            done.append(Fetched(f.role, dest, None, kept="already in place and verified"))
        elif dest.exists() and f.role in located.own:
            done.append(Fetched(f.role, dest, None, kept="your own file; not replaced"))
        else:
            plan.append(f)
    sizes = [f.size_bytes for f in plan]
    total = sum(s for s in sizes if s is not None) if None not in sizes else None
    offset = 0

    def overall(done_bytes: int, _total: int | None) -> None:
        if progress is not None:
            progress(offset + done_bytes, total)

    companions = dict(located.paths)
    for f in plan:
        dest = located.paths[f.role]
        url = vision_url if f.role == VISION else None
        done.append(
            download(
                spec,
                dest,
                role=f.role,
                url=url,
                endpoint=endpoint,
                client=client,
                progress=overall,
                timeout=timeout,
                companions=companions,
            )
        )
        offset += f.size_bytes or dest.stat().st_size
    return done


def _matches(f: ModelFile, path: Path) -> bool:
    """The file at `path` is the manifest's by size and sha256 (False when neither is known)."""
    if f.sha256 is None:
        return False
    try:
        if f.size_bytes is not None and path.stat().st_size != f.size_bytes:
            return False
        return file_sha256(path) == f.sha256
    except OSError:
        return False


def _lock(out: IO[bytes], url: str) -> None:
    """Refuse a second concurrent download into the same .part (two appenders corrupt it)."""
    try:
        import fcntl
    except ImportError:  # Windows has no flock; imageclust targets Linux and macOS
        return
    try:
        fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise DownloadError(url, f"another download into {out.name} is in progress") from exc


def _fetch(
    http: httpx.Client,
    url: str,
    out: IO[bytes],
    expected: int | None,
    progress: Progress | None,
    timeout: float,
) -> bool:
    """Append the rest of the file to `out` (opened for append), resuming from its length.

    `expected` is the manifest's size, when known. Raises _Gone for a 404 or 410.
    Returns False when nothing was asked of the server (the .part was already complete).
    """
    have = os.fstat(out.fileno()).st_size
    if expected is not None and have > expected:
        out.truncate(0)  # longer than the real file: it cannot be a prefix of it
        have = 0
    if expected is not None and have == expected:
        # Complete from an earlier run that stopped before the rename; the checks decide.
        _report(progress, have, expected)
        return False
    while True:
        headers = {"Accept-Encoding": "identity"}  # ranges must count stored bytes, not gzip
        if have:
            headers["Range"] = f"bytes={have}-"
        received, total = have, expected
        answered = False
        try:
            with http.stream("GET", url, headers=headers, timeout=timeout) as response:
                answered = True
                status = response.status_code
                if status == 200:
                    start, total = 0, _int_or_none(response.headers.get("Content-Length"))
                elif status == 206 and have:
                    first, total = _content_range(response.headers.get("Content-Range"))
                    if first != have:  # not the range asked for: start over without one
                        out.truncate(0)
                        have = 0
                        continue
                    start = have
                elif status == 416 and have:
                    _, total = _content_range(response.headers.get("Content-Range"))
                    if total != have:  # not a prefix of this file: start over
                        out.truncate(0)
                        have = 0
                        continue
                    _check_total(url, total, expected)
                    return True  # the .part already holds the whole file
                else:
                    status_line = f"HTTP {status} {response.reason_phrase}".rstrip()
                    if status in _GONE:
                        raise _Gone(status_line)
                    later = "the server failed; try again later" if status >= 500 else ""
                    raise DownloadError(url, status_line, next_step=later)
                encoding = response.headers.get("Content-Encoding", "identity").lower()
                if encoding not in ("", "identity"):
                    raise DownloadError(url, f"the server sent a {encoding}-encoded body")
                _check_total(url, total, expected)
                if total is None:
                    total = expected
                if start == 0 and have:
                    out.truncate(0)  # a 200 to a Range request: the server sends it all again
                received = start
                _report(progress, received, total)
                for chunk in response.iter_raw():  # as the bytes arrive: a break loses none
                    out.write(chunk)
                    received += len(chunk)
                    _report(progress, received, total)
        except httpx.InvalidURL as exc:
            raise DownloadError(url, f"not a valid URL ({exc})", next_step="check the URL") from exc
        except httpx.HTTPError as exc:
            of = f" of {total}" if total is not None else ""
            kept = f"{out.name} keeps what arrived; " if received else ""
            host = httpx.URL(url).host or url
            what = (
                f"the transfer stopped at {received}{of} bytes"
                if received or answered
                else f"could not reach {host}"
            )
            raise DownloadError(
                url,
                f"{what} ({exc or type(exc).__name__}); {kept}run the download again to resume",
                next_step=f"check the network (or ${ENDPOINT_ENV}, a proxy), then run the "
                "same command again: it resumes. Without a network here: fetch the file on "
                "another machine and set model.path (model.text_path, model.tokenizer_path) "
                f"to it, or point ${ENDPOINT_ENV} or --url at a mirror you can reach",
            ) from exc
        if total is not None and received < total:
            raise DownloadError(
                url, f"the body ended after {received} of {total} bytes; run again to resume"
            )
        return True


def _remove_if_empty(out: IO[bytes], part: Path) -> None:
    try:
        out.flush()  # bytes still in the buffer count: they are a prefix worth resuming from
        if os.fstat(out.fileno()).st_size == 0:
            part.unlink()
    except OSError:
        pass  # the original error is the one worth reporting


def _check_total(url: str, total: int | None, expected: int | None) -> None:
    """Refuse before transferring anything when the server's file is not the manifest's size."""
    if total is not None and expected is not None and total != expected:
        raise DownloadError(
            url, f"the server offers {total} bytes, the manifest expects {expected}"
        )


def _check_part(
    spec: ModelSpec, f: ModelFile, part: Path, companions: dict[str, Path]
) -> list[str]:
    """What is wrong with the finished .part (empty: nothing).

    `_fetch` only returns once the body is as long as the server or manifest said,
    so a size that still differs means the server's file is not the manifest's.
    """
    size = part.stat().st_size
    problems: list[str] = []
    if f.size_bytes is not None and size != f.size_bytes:
        problems.append(f"it is {size} bytes, the manifest expects {f.size_bytes}")
    elif f.sha256 is not None:
        actual = file_sha256(part)
        if actual != f.sha256:
            problems.append(f"sha256 mismatch: expected {f.sha256}, got {actual}")
    if not problems:
        problems = content_problems(spec, f, part, companions=companions)
    return problems


def content_problems(
    spec: ModelSpec,
    f: ModelFile,
    path: Path,
    *,
    exact: bool = True,
    companions: Mapping[str, Path] | None = None,
    dim: int | None = None,
) -> list[str]:
    """What keeps the file at `path` from doing its job as `f` (empty: nothing).

    - vision: loads in ONNX Runtime with one float input [N,3,crop,crop] and the
      embedding output (`model_io`), all that indexing needs;
    - text: loads with `input_ids` int64 [N,context_length] (an `attention_mask` is
      allowed) and the embedding output (`text_model_io`);
    - tokenizer: parses, encodes the probe text to the recorded ids, and holds exactly
      the vocabulary and merges of `companions`' vocab and merges files (those that
      are present and match their own sha256).

    With `exact`, an ONNX tower's input name and embedding size must also be the
    manifest's (a published file); a user's own export may differ in those, but a text
    tower's embeddings must always be `dim` long (the vision tower's), or the two
    towers' vectors could not be compared.
    """
    if f.role == TOKENIZER:
        others = {
            role: p
            for role, p in (companions or {}).items()
            if role in (VOCAB, MERGES) and (g := spec.file(role)) is not None and _matches(g, p)
        }
        return tokenizer.problems(
            path,
            probe_text=f.probe_text,
            probe_ids=f.probe_ids,
            vocab=others.get(VOCAB),
            merges=others.get(MERGES),
        )
    if f.role not in (VISION, TEXT):
        return []  # vocab.json, merges.txt: their checksum is the check
    try:
        what = "CLIP vision model" if f.role == VISION else "CLIP text model"
        session = open_session(path, threads=1, what=what)  # loading only: no thread pool
        if f.role == VISION:
            io = model_io(
                session,
                path=str(path),
                image_size=spec.preprocessing.crop,
                output_name=f.output_name,
            )
            input_name, output_name, out_dim = io.input_name, io.output_name, io.dim
        else:
            text = text_model_io(
                session,
                path=str(path),
                context_length=spec.context_length,
                output_name=f.output_name,
            )
            input_name, output_name, out_dim = text.input_name, text.output_name, text.dim
    except ModelError as exc:
        return [str(exc)]
    problems: list[str] = []
    wanted = dim if dim is not None else spec.dim
    if f.role == TEXT and (exact or dim is not None) and out_dim != wanted:
        problems.append(
            f"its output {output_name!r} has {out_dim} values, the vision tower's {wanted}: "
            "not the same model's text tower"
        )
    if not exact:
        return problems
    if f.input_name is not None and input_name != f.input_name:
        problems.append(f"its input is {input_name!r}, the manifest says {f.input_name!r}")
    if f.role == VISION and out_dim != spec.dim:
        problems.append(
            f"its output {output_name!r} has {out_dim} values, the manifest says {spec.dim}"
        )
    return problems


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, full length) from a Content-Range header; None where absent or '*'."""
    match = _CONTENT_RANGE.fullmatch(value.strip()) if value else None
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None, None if total == "*" else int(total))


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _report(progress: Progress | None, done: int, total: int | None) -> None:
    if progress is not None:
        progress(done, total)


# --- verify ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileReport:
    """What `imageclust models verify` (and `doctor`) found for one file of a model."""

    role: str
    path: Path | None  # None: the config names no such file (an own text tower's tokenizer)
    present: bool
    own: bool  # the user's own file (model.path, ...): only its content is checked
    sha256: str | None  # of the file as it is; None when missing or unreadable
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.present and not self.problems

    @property
    def needed(self) -> bool:
        """Missing it stops indexing (the vision tower); the others only stop search."""
        return self.role == VISION


def verify(located: Located, *, roles: Sequence[str] = ROLES) -> list[FileReport]:
    """Check each of the model's files: present, the manifest's size and sha256 (a
    published file, when known), and its content (`content_problems`); a text tower's
    embeddings must be as long as the vision tower's. Reports rather than raises, so
    `models verify` and `doctor` can list every problem."""
    reports = []
    have = {f.role for f in located.spec.files} | set(located.own)
    vision_dim = located.spec.dim
    if VISION in located.own and TEXT in have and TEXT in roles:
        vision_dim = _own_vision_dim(located) or vision_dim
    for role in ROLES:
        f = located.file(role)
        if role not in roles:
            continue
        if f is None:
            if role == TOKENIZER and TEXT in have:  # an own text tower without a tokenizer
                problem = f"a text tower needs its tokenizer: set {OWN_FILE_KEYS[TOKENIZER]}"
                reports.append(FileReport(role, None, False, True, None, (problem,)))
            continue
        reports.append(verify_file(located, f, dim=vision_dim))
    return reports


def _own_vision_dim(located: Located) -> int | None:
    """The embedding length of the user's own vision tower, None when it cannot be read."""
    path = located.vision_path
    try:
        session = open_session(path, threads=1)
        io = model_io(
            session,
            path=str(path),
            image_size=located.spec.preprocessing.crop,
            output_name=located.spec.vision.output_name,
        )
    except (ModelError, OSError):
        return None
    return io.dim


def verify_file(located: Located, f: ModelFile, *, dim: int | None = None) -> FileReport:
    """One file's report; `dim`: the embedding length a text tower must have."""
    path = located.paths[f.role]
    own = f.role in located.own
    if not path.is_file():
        problem = f"{path}: no such file"
        if path.exists():
            problem = f"{path}: not a file (a folder?)"
        return FileReport(f.role, path, False, own, None, (problem,))
    try:
        size = path.stat().st_size
        digest = file_sha256(path)
    except OSError as exc:
        return FileReport(f.role, path, True, own, None, (f"{path}: cannot read it: {exc}",))
    problems: list[str] = []
    if not own and f.size_bytes is not None and size != f.size_bytes:
        problems.append(f"it is {size} bytes, the manifest expects {f.size_bytes}")
    if not own and f.sha256 is not None and digest != f.sha256:
        problems.append(f"sha256 mismatch: expected {f.sha256}, got {digest}")
    if not problems or f.role in (VISION, TEXT):  # list every problem of a tower
        problems.extend(
            content_problems(
                located.spec,
                f,
                path,
                exact=not own,
                companions=located.paths,
                dim=dim if f.role == TEXT else None,
            )
        )
    return FileReport(f.role, path, True, own, digest, tuple(problems))


def words_ready(reports: Sequence[FileReport]) -> bool:
    """Whether the files search by words needs are all there and good."""
    by_role = {r.role: r for r in reports}
    return all(role in by_role and by_role[role].ok for role in WORDS_ROLES)


def int8_file(source: Path) -> Path:
    return source.with_name(f"{source.stem}-int8{source.suffix}")


def quantize(source: Path, dest: Path) -> Path:
    """An int8 copy of `source` by ONNX Runtime's dynamic quantization (weights int8,
    activations quantized on the fly). 1.45-1.95x faster on a CPU here, 4x smaller;
    its accuracy must be checked on real weights before trusting it. Written to a
    temporary file and renamed into place."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # onnxruntime.quantization needs the `onnx` package
        raise ModelError(
            f"int8 quantization needs the onnx package ({exc}): "
            "pip install 'imageclust-daemon[int8]'"
        ) from None
    if not source.is_file():
        raise ModelError(f"no model file at {source}: run `imageclust models download` first")
    tmp = dest.with_name(f".{dest.name}.part")
    quiet = _DropRecordsFrom("onnxruntime")  # its advice, 17 multi-line warnings for ViT-B/32
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet)
    try:
        quantize_dynamic(os.fspath(source), os.fspath(tmp), weight_type=QuantType.QInt8)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        for handler in logging.getLogger().handlers:
            handler.removeFilter(quiet)
    return dest


class _DropRecordsFrom(logging.Filter):
    """Drops log records written from a package's files (ORT logs through the root logger)."""

    def __init__(self, package: str) -> None:
        super().__init__()
        self._marker = f"{os.sep}{package}{os.sep}"

    def filter(self, record: logging.LogRecord) -> bool:
        return self._marker not in record.pathname


# --- loading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """An opened model: its manifest entry, its file, its identity, its session."""

    spec: ModelSpec
    path: Path
    id: str
    embedder: Embedder

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.embedder.embed(batch)


def model_id_of(spec: ModelSpec, path: Path, store: Store, *, remember: bool = True) -> str:
    """Name plus the file's sha256, the digest cached under the file's stat (350 MB to hash).
    `remember` False: a reader's store, which reads the cache but never writes it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelNotFoundError(str(path), spec.name) from None
    raw = os.fsencode(path.resolve())
    digest = store.cached_sha256(raw, st.st_size, st.st_mtime_ns)
    if digest is None:
        digest = file_sha256(path)
        if remember:
            store.remember_sha256(raw, st.st_size, st.st_mtime_ns, digest)
    return model_id(spec.name, digest)


def open_embedder(
    spec: ModelSpec, path: Path, *, threads: int = 0, providers: Sequence[str] = ("cpu",)
) -> Embedder:
    """An ONNX Runtime session over `path` on the first of `providers` that starts, its
    contract checked."""
    session = open_session(path, threads=threads, providers=providers)
    io = model_io(
        session,
        path=str(path),
        image_size=spec.preprocessing.crop,
        output_name=spec.vision.output_name,
    )
    return Embedder(session, io)


def load_model(
    spec: ModelSpec,
    path: Path,
    store: Store,
    *,
    threads: int = 0,
    providers: Sequence[str] = ("cpu",),
) -> LoadedModel:
    """Name the model by its file's sha256, open it and check its contract."""
    identity = model_id_of(spec, path, store)
    embedder = open_embedder(spec, path, threads=threads, providers=providers)
    return LoadedModel(spec, path, identity, embedder)
