"""Batched CLIP image embedding with one ONNX Runtime session.

The session is the one side-effecting collaborator here; it is passed in (any
object with ONNX Runtime's `run`/`get_inputs`/`get_outputs`), so unit tests
can hand a fake and integration tests a real session over a real file.
Input and output names and the embedding size are read from the model.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imageclust_daemon.errors import ModelContractError, ModelNotFoundError

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


def open_session(path: Path, *, threads: int = 0) -> Any:
    """A CPU ONNX Runtime session over `path`; `threads` 0 lets ORT use every core."""
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
    try:
        return ort.InferenceSession(
            os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own untyped errors for a bad file
        raise ModelContractError(str(path), f"ONNX Runtime cannot load it: {exc}") from exc


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
