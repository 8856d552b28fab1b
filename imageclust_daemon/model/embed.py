"""Batched CLIP image embedding with one ONNX Runtime session.

The session is the one side-effecting collaborator here; it is passed in (any
object with ONNX Runtime's `run`/`get_inputs`/`get_outputs`), so unit tests
can hand a fake and integration tests a real session over a real file.
Input and output names and the embedding size are read from the model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imageclust_daemon.errors import ModelContractError, ModelNotFoundError

log = logging.getLogger(__name__)

_SHA_CHUNK = 1 << 20


class BatchEmbedder(Protocol):
    """Anything that turns a preprocessed batch into L2-normalized embeddings."""

    def embed(self, batch: np.ndarray) -> np.ndarray: ...


class InferenceSession(Protocol):
    def get_inputs(self) -> list[Any]: ...
    def get_outputs(self) -> list[Any]: ...
    def run(self, output_names: list[str], input_feed: dict[str, Any]) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class ModelIO:
    """The contract read from a CLIP vision export: one image input, one embedding output."""

    input_name: str
    output_name: str
    dim: int
    image_size: int


def model_io(
    session: InferenceSession, *, path: str, image_size: int, output_name: str | None = None
) -> ModelIO:
    """Read and check the model's contract: input [N,3,S,S] float, output [N,D] float.

    Exports often leave dimensions symbolic ("batch_size", "height"); those are
    taken from the manifest's `image_size`, and a symbolic D from one probe run.
    """
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ModelContractError(path, f"expected one image input, found {len(inputs)} ({names})")
    inp = inputs[0]
    shape = list(inp.shape)
    fixed = [d if isinstance(d, int) else None for d in shape]
    if (
        len(shape) != 4
        or fixed[1] not in (3, None)
        or any(d not in (image_size, None) for d in fixed[2:])
    ):
        raise ModelContractError(
            path, f"input {inp.name!r} has shape {shape}, expected [N,3,{image_size},{image_size}]"
        )
    if inp.type != "tensor(float)":
        raise ModelContractError(path, f"input {inp.name!r} is {inp.type}, expected tensor(float)")
    outputs = {o.name: o for o in session.get_outputs()}
    if output_name is None:
        candidates = [o for o in outputs.values() if len(o.shape) == 2]
        if len(candidates) != 1:
            raise ModelContractError(
                path, f"cannot tell the embedding output among {list(outputs)}"
            )
        out = candidates[0]
    elif output_name in outputs:
        out = outputs[output_name]
    else:
        raise ModelContractError(path, f"no output {output_name!r}; it has {list(outputs)}")
    if len(out.shape) != 2:
        raise ModelContractError(path, f"output {out.name!r} has shape {out.shape}, expected [N,D]")
    dim = out.shape[1]
    if not isinstance(dim, int):
        probe = np.zeros((1, 3, image_size, image_size), dtype=np.float32)
        (result,) = session.run([out.name], {inp.name: probe})
        dim = int(np.asarray(result).shape[-1])
    return ModelIO(inp.name, out.name, int(dim), image_size)


# ONNX Runtime's names for the execution providers `model.providers` may ask for.
PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
CPU = PROVIDERS["cpu"]
AUTO = "auto"
# `auto` tries these in order when the installed ONNX Runtime offers them. CoreML is
# left to an explicit "coreml": it compiles the graph at every session start and
# supports only part of ViT's operators, so it is not a safe default.
_AUTO_ORDER = ("CUDAExecutionProvider",)

_warned: set[tuple[str, ...]] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    """Which ONNX Runtime execution providers to ask for, and what could not be had."""

    providers: tuple[str, ...]  # ORT names, CPU always last
    unavailable: tuple[str, ...] = ()  # asked for by name, not offered by this ONNX Runtime


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> ProviderChoice:
    """The providers to start a session with, from `model.providers` and what ORT offers.

    `auto` means CUDA when the installed ONNX Runtime offers it (the `onnxruntime-gpu`
    build), then CPU; `cuda`, `coreml` and `cpu` name one each, in the order given. A
    named one that ORT does not offer is left out and reported. CPU is always last, so
    a session can always start.
    """
    chosen: list[str] = []
    missing: list[str] = []
    for name in requested:
        wanted = [p for p in _AUTO_ORDER if p in available] if name == AUTO else [PROVIDERS[name]]
        for provider in wanted:
            if provider == CPU or provider in chosen:
                continue
            if provider in available:
                chosen.append(provider)
            elif name != AUTO:
                missing.append(name)
    return ProviderChoice((*chosen, CPU), tuple(missing))


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def provider_of(session: Any) -> str:
    """The provider a session runs on first (ORT's name); CPU for a session without the method."""
    get = getattr(session, "get_providers", None)
    names = list(get()) if get is not None else []
    return str(names[0]) if names else CPU


def short_provider(name: str) -> str:
    """ "CUDAExecutionProvider" -> "CUDA", for messages people read."""
    return name.removesuffix("ExecutionProvider") or name


def _warn_once(key: tuple[str, ...], message: str, *args: object) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message, *args)


@dataclass(frozen=True, slots=True)
class TextIO:
    """The contract read from a CLIP text export: token ids in, one embedding out."""

    input_name: str
    output_name: str
    dim: int
    context_length: int
    mask_name: str | None = None  # fed only when the graph lists it (all ones up to the end)


def text_model_io(
    session: InferenceSession, *, path: str, context_length: int, output_name: str | None
) -> TextIO:
    """Read and check a text tower: `input_ids` int64 [N,L] (L = context_length or symbolic),
    optionally `attention_mask` of the same shape, and a float output [N,D]."""
    inputs = {i.name: i for i in session.get_inputs()}
    ids = inputs.pop("input_ids", None)
    mask = inputs.pop("attention_mask", None)
    if ids is None:
        raise _text_contract_error(path, f"no input 'input_ids'; it has {list(inputs)}")
    if inputs:
        raise _text_contract_error(path, f"unexpected inputs {list(inputs)} besides input_ids")
    for inp in (i for i in (ids, mask) if i is not None):
        shape = list(inp.shape)
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != context_length):
            raise _text_contract_error(
                path, f"input {inp.name!r} has shape {shape}, expected [N,{context_length}]"
            )
        if inp.type != "tensor(int64)":
            raise _text_contract_error(path, f"input {inp.name!r} is {inp.type}, expected int64")
    outputs = {o.name: o for o in session.get_outputs()}
    name = output_name or "text_embeds"
    if name not in outputs:
        raise _text_contract_error(path, f"no output {name!r}; it has {list(outputs)}")
    out = outputs[name]
    if len(out.shape) != 2:
        raise _text_contract_error(path, f"output {name!r} has shape {out.shape}, expected [N,D]")
    dim = out.shape[1]
    if not isinstance(dim, int):
        probe = {"input_ids": np.zeros((1, context_length), dtype=np.int64)}
        if mask is not None:
            probe["attention_mask"] = np.ones((1, context_length), dtype=np.int64)
        (result,) = session.run([name], probe)
        dim = int(np.asarray(result).shape[-1])
    return TextIO(ids.name, name, int(dim), context_length, mask.name if mask is not None else None)


def _text_contract_error(path: str, reason: str) -> ModelContractError:
    return ModelContractError(path, reason, what="CLIP text model")


def open_session(
    path: Path,
    *,
    threads: int = 0,
    providers: Sequence[str] = (CPU,),
    available: Sequence[str] | None = None,
    factory: Callable[..., Any] | None = None,
    what: str = "CLIP vision model",
) -> Any:
    """An ONNX Runtime session over `path`; `threads` 0 lets ORT use every core.

    `providers` are `model.providers` values ("auto", "cuda", "coreml", "cpu") or ORT
    names. A session that cannot start on an accelerator starts on the CPU instead,
    with one warning per model file and provider list (not one per reload).
    `available` and `factory` replace ORT's provider list and `InferenceSession` in tests;
    `what` names the file in errors ("CLIP text model").
    """
    if not path.is_file():
        raise ModelNotFoundError(str(path), path.stem)
    import onnxruntime as ort  # imported here: ~0.3 s, only commands that embed pay it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT threads spin by default, taking the cores the decode threads need between
    # batches: off, `index` ran 20.5 -> 21.4 images/s on 2 cores (ViT-B/32, 12 MP JPEGs).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    make = factory if factory is not None else ort.InferenceSession
    offered = list(available) if available is not None else list(ort.get_available_providers())
    requested = [_config_name(p) for p in providers]
    choice = choose_providers(requested, offered)
    if choice.unavailable:
        _warn_once(
            ("missing", *choice.unavailable),
            "model.providers asks for %s, which this ONNX Runtime does not offer (it has %s); "
            "for CUDA install onnxruntime-gpu in place of onnxruntime",
            ", ".join(choice.unavailable),
            ", ".join(offered) or "none",
        )

    def start(chosen: Sequence[str]) -> Any:
        try:
            return make(os.fspath(path), sess_options=options, providers=list(chosen))
        except Exception as exc:  # ORT raises its own untyped errors for a bad file
            raise ModelContractError(
                str(path), f"ONNX Runtime cannot load it: {exc}", what=what
            ) from exc

    if choice.providers == (CPU,):
        return start([CPU])
    accelerators = ", ".join(short_provider(p) for p in choice.providers[:-1])
    try:
        session = start(choice.providers)
    except ModelContractError as exc:
        session = start([CPU])  # a file ORT cannot read at all fails here too, as it should
        _warn_once(
            ("failed", os.fspath(path), *choice.providers),
            "%s: the session did not start on %s (%s); running on the CPU",
            path.name,
            accelerators,
            exc.reason,
        )
        return session
    if provider_of(session) == CPU:  # ORT itself fell back (e.g. CUDA libraries missing)
        _warn_once(
            ("fell back", os.fspath(path), *choice.providers),
            "%s: ONNX Runtime could not use %s and runs on the CPU",
            path.name,
            accelerators,
        )
    return session


def _config_name(name: str) -> str:
    """`model.providers` spelling from either spelling ("cuda" or "CUDAExecutionProvider")."""
    for short, full in PROVIDERS.items():
        if name == full:
            return short
    return name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_SHA_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_id(name: str, sha256: str) -> str:
    """Model identity: name plus the ONNX file's sha256, so a changed file is a different model."""
    return f"{name}@sha256:{sha256}"


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return out


class Embedder:
    """Runs batches of preprocessed images through one session."""

    def __init__(self, session: InferenceSession, io: ModelIO) -> None:
        self._session = session
        self.io = io
        self.provider = provider_of(session)  # ORT's name of what it runs on

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N,3,S,S] -> L2-normalized float32 [N,D]."""
        if batch.ndim != 4 or batch.shape[1:] != (3, self.io.image_size, self.io.image_size):
            raise ValueError(
                f"batch has shape {batch.shape}, model wants [N,3,{self.io.image_size},...]"
            )
        (out,) = self._session.run([self.io.output_name], {self.io.input_name: batch})
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (batch.shape[0], self.io.dim):
            raise ModelContractError(
                "model", f"returned shape {out.shape} for a batch of {batch.shape[0]}"
            )
        return l2_normalize(out)


class TextEmbedder:
    """Runs token ids through a CLIP text tower's session."""

    def __init__(self, session: InferenceSession, io: TextIO) -> None:
        self._session = session
        self.io = io
        self.provider = provider_of(session)

    def embed(self, ids: np.ndarray, end_id: int) -> np.ndarray:
        """int64 [N, context_length] -> L2-normalized float32 [N, D]. A tower that takes an
        `attention_mask` gets ones up to and including each row's end token."""
        if ids.ndim != 2 or ids.shape[1] != self.io.context_length:
            raise ValueError(
                f"ids have shape {ids.shape}, model wants [N,{self.io.context_length}]"
            )
        feed = {self.io.input_name: ids.astype(np.int64, copy=False)}
        if self.io.mask_name is not None:
            ends = np.argmax(ids == end_id, axis=1)
            positions = np.arange(ids.shape[1])[None, :]
            feed[self.io.mask_name] = (positions <= ends[:, None]).astype(np.int64)
        (out,) = self._session.run([self.io.output_name], feed)
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (ids.shape[0], self.io.dim):
            raise ModelContractError(
                "text model", f"returned shape {out.shape} for a batch of {ids.shape[0]}"
            )
        return l2_normalize(out)
