"""One place that finds, checks and opens a model, for every command and the daemon.

`locate` finds a model's files for a config (the manifest's places under the data
dir, or the user's own files), `verify` and `content_problems` check them, and
`load_model` opens the vision tower named by its file's sha256. Fetching is
`hub`; the manifest itself is `manifest`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imageclust_daemon.config import Config
from imageclust_daemon.errors import ConfigError, ModelError, ModelNotFoundError
from imageclust_daemon.model import tokenizer
from imageclust_daemon.model.embed import (
    Embedder,
    TextEmbedder,
    file_sha256,
    model_id,
    model_io,
    open_session,
    text_model_io,
)
from imageclust_daemon.model.manifest import CLIP_PROBE, OWN_FILE_KEYS, load_manifest
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
)
from imageclust_daemon.state.store import Store

log = logging.getLogger(__name__)


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


def matches(f: ModelFile, path: Path) -> bool:
    """The file at `path` is the manifest's by size and sha256 (False when neither is known)."""
    if f.sha256 is None:
        return False
    try:
        if f.size_bytes is not None and path.stat().st_size != f.size_bytes:
            return False
        return file_sha256(path) == f.sha256
    except OSError:
        return False


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
            if role in (VOCAB, MERGES) and (g := spec.file(role)) is not None and matches(g, p)
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


class LazyEmbedder:
    """An `Embedder` whose session opens at its first batch (its contract is checked
    then): an `index` with nothing new to embed never pays the model's opening (0.35-0.53
    s for ViT-B/32's 351 MB here, most of an unchanged library's index)."""

    def __init__(self, open_embedder: Callable[[], Embedder]) -> None:
        self._open = open_embedder
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    def opened(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._open()
            return self._embedder

    @property
    def is_open(self) -> bool:
        return self._embedder is not None

    @property
    def provider(self) -> str:
        return self.opened().provider

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.opened().embed(batch)


@dataclass(frozen=True)
class LoadedModel:
    """A model: its manifest entry, its file, its identity, its session (opened when
    first used)."""

    spec: ModelSpec
    path: Path
    id: str
    embedder: LazyEmbedder

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.embedder.embed(batch)


@dataclass(frozen=True)
class TextModel:
    """A model's text side, opened: words -> embeddings in the vision tower's space."""

    tokenizer: tokenizer.ClipTokenizer
    embedder: TextEmbedder

    @property
    def dim(self) -> int:
        return self.embedder.io.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized float32 [len(texts), D]."""
        ids = self.tokenizer.encode_batch(texts)
        return self.embedder.embed(ids, self.tokenizer.end_id)


def open_text_model(
    located: Located,
    *,
    vision_dim: int,
    threads: int = 0,
    providers: Sequence[str] = ("cpu",),
) -> TextModel:
    """The text tower and tokenizer of `located`, checked to embed into the vision tower's
    `vision_dim` dimensions. ModelError saying what to fetch when a file is missing."""
    # Search by words needs both files: say every one that is missing, and how to get it.
    nouns = {TEXT: "text tower", TOKENIZER: "tokenizer"}
    unlisted = [r for r in (TEXT, TOKENIZER) if located.paths.get(r) is None]
    if unlisted:
        own = " and ".join(OWN_FILE_KEYS[r] for r in unlisted)
        raise ModelError(
            f"search by words needs a text tower and its tokenizer; {located.spec.name} has "
            f"no {' and no '.join(nouns[r] for r in unlisted)} in the manifest: set {own} "
            "to files of your own"
        )
    absent = [r for r in (TEXT, TOKENIZER) if not located.paths[r].is_file()]
    if absent:
        where = "; ".join(f"the {nouns[r]} is not at {located.paths[r]}" for r in absent)
        own = " and ".join(OWN_FILE_KEYS[r] for r in absent if r in OWN_FILE_KEYS)
        raise ModelError(
            f"search by words needs a text tower and its tokenizer: {where}; fetch "
            f"{'it' if len(absent) == 1 else 'them'} with: imageclust models download"
            + (f" (or set {own})" if own else "")
        )
    text_path, tok_path = located.paths[TEXT], located.paths[TOKENIZER]
    text_file = located.file(TEXT)
    session = open_session(text_path, threads=threads, providers=providers, what="CLIP text model")
    io = text_model_io(
        session,
        path=str(text_path),
        context_length=tokenizer.CONTEXT_LENGTH,
        output_name=text_file.output_name if text_file is not None else None,
    )
    if io.dim != vision_dim:
        raise ModelError(
            f"{text_path}: the text tower embeds into {io.dim} dimensions and the vision tower "
            f"into {vision_dim}: not a pair (both must come from the same CLIP model)"
        )
    return TextModel(tokenizer.ClipTokenizer.from_file(tok_path), TextEmbedder(session, io))


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
    """Name the model by its file's sha256 (cached under its stat); its session is
    opened, and its contract checked, at its first batch."""
    identity = model_id_of(spec, path, store)
    embedder = LazyEmbedder(lambda: open_embedder(spec, path, threads=threads, providers=providers))
    return LoadedModel(spec, path, identity, embedder)
