"""The model manifest: `models/manifest.toml`, read and validated.

It is data: one table per supported model, with one sub-table per file (the
vision tower, and for search by words the text tower and its tokenizer), each
pinned to a repository commit with its checksum and size, plus the model's own
preprocessing. A bad entry fails at load, naming the model and the key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from imageclust_daemon.errors import ModelError
from imageclust_daemon.records import (
    MERGES,
    ROLES,
    TEXT,
    TOKENIZER,
    VISION,
    VOCAB,
    ModelFile,
    ModelSpec,
    Preprocessing,
)
from imageclust_daemon.resources import data_path

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
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
