"""The ONNX sessions: which execution provider runs a model, and the text tower's contract.

The accelerators cannot be had here, so the choice is tested with faked lists of
what ONNX Runtime offers, and the fallback with a session factory that fails on
them; the CPU session each test ends with is always the real one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from imageclust_daemon.errors import ModelContractError
from imageclust_daemon.model import embed
from imageclust_daemon.model.embed import CPU, choose_providers, open_session, provider_of
from tests.onnx_models import build_tiny_clip, build_tiny_clip_text

CUDA, COREML = "CUDAExecutionProvider", "CoreMLExecutionProvider"
CPU_ONLY = ["AzureExecutionProvider", CPU]
GPU_BUILD = ["TensorrtExecutionProvider", CUDA, CPU]


@pytest.mark.parametrize(
    ("requested", "available", "providers", "unavailable"),
    [
        (["auto"], CPU_ONLY, (CPU,), ()),
        (["auto"], GPU_BUILD, (CUDA, CPU), ()),
        (["auto"], [COREML, CPU], (CPU,), ()),  # CoreML only when named
        (["coreml"], [COREML, CPU], (COREML, CPU), ()),
        (["cuda"], CPU_ONLY, (CPU,), ("cuda",)),
        (["cpu"], GPU_BUILD, (CPU,), ()),
        (["cpu", "cuda"], GPU_BUILD, (CUDA, CPU), ()),  # the CPU is always last
        (["coreml", "auto"], [COREML, CUDA, CPU], (COREML, CUDA, CPU), ()),
        (["cuda", "auto"], GPU_BUILD, (CUDA, CPU), ()),  # no provider twice
    ],
)
def test_the_provider_choice(
    requested: list[str],
    available: list[str],
    providers: tuple[str, ...],
    unavailable: tuple[str, ...],
) -> None:
    choice = choose_providers(requested, available)
    assert (choice.providers, choice.unavailable) == (providers, unavailable)


class FailingOn:
    """ONNX Runtime's InferenceSession, except that it raises when asked for `provider`."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.asked: list[list[str]] = []

    def __call__(self, path: str, sess_options: Any, providers: Sequence[str]) -> Any:
        self.asked.append(list(providers))
        if self.provider in providers:
            raise RuntimeError(f"{self.provider}: libcudart.so.12: cannot open shared object")
        return ort.InferenceSession(path, sess_options=sess_options, providers=list(providers))


def test_a_session_that_fails_on_the_accelerator_runs_on_the_cpu_with_one_warning(
    tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    embed._warned.clear()
    factory = FailingOn(CUDA)
    caplog.set_level(logging.WARNING, logger="imageclust_daemon.model.embed")

    sessions = [
        open_session(tiny_model, providers=["auto"], available=GPU_BUILD, factory=factory)
        for _ in range(3)  # a daemon reopens its model after every idle spell
    ]

    assert [provider_of(s) for s in sessions] == [CPU] * 3
    assert factory.asked == [[CUDA, CPU], [CPU]] * 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "did not start on CUDA" in warnings[0] and "running on the CPU" in warnings[0]
    x = np.zeros((2, 3, 224, 224), dtype=np.float32)
    (out,) = sessions[0].run(["image_embeds"], {"pixel_values": x})
    assert np.asarray(out).shape == (2, 32)


def test_an_accelerator_ort_drops_by_itself_is_reported(
    tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """onnxruntime-gpu without the CUDA libraries starts the session on the CPU alone."""
    embed._warned.clear()
    caplog.set_level(logging.WARNING, logger="imageclust_daemon.model.embed")

    def drops_cuda(path: str, sess_options: Any, providers: Sequence[str]) -> Any:
        kept = [p for p in providers if p != CUDA]
        return ort.InferenceSession(path, sess_options=sess_options, providers=kept)

    session = open_session(tiny_model, providers=["cuda"], available=GPU_BUILD, factory=drops_cuda)

    assert provider_of(session) == CPU
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "could not use CUDA and runs on the CPU" in warning


def test_a_provider_this_build_lacks_is_named_with_the_package_to_install(
    tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    embed._warned.clear()
    caplog.set_level(logging.WARNING, logger="imageclust_daemon.model.embed")

    session = open_session(tiny_model, providers=["cuda"])  # the real, CPU-only ORT here

    assert provider_of(session) == CPU
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "asks for cuda" in warning and "onnxruntime-gpu" in warning


def test_a_broken_file_fails_on_the_cpu_too(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with pytest.raises(ModelContractError, match="ONNX Runtime cannot load it"):
        open_session(junk, providers=["auto"], available=GPU_BUILD, factory=FailingOn(CUDA))


@pytest.mark.parametrize("with_mask", [False, True])
def test_the_text_contract_is_read_from_the_graph(tmp_path: Path, with_mask: bool) -> None:
    path = build_tiny_clip_text(tmp_path / "text.onnx", dim=24, with_mask=with_mask)
    session = open_session(path)

    io = embed.text_model_io(session, path=str(path), context_length=77, output_name=None)

    assert (io.input_name, io.output_name, io.dim, io.context_length) == (
        "input_ids",
        "text_embeds",
        24,
        77,
    )
    assert io.mask_name == ("attention_mask" if with_mask else None)


def test_a_text_tower_with_another_length_or_a_vision_graph_is_refused(
    tmp_path: Path,
) -> None:
    text = build_tiny_clip_text(tmp_path / "text.onnx")
    with pytest.raises(ModelContractError, match=r"has shape \['batch', 77\], expected \[N,64\]"):
        embed.text_model_io(open_session(text), path=str(text), context_length=64, output_name=None)
    vision = build_tiny_clip(tmp_path / "vision.onnx")
    with pytest.raises(ModelContractError, match="not a usable CLIP text model: no input"):
        embed.text_model_io(
            open_session(vision), path=str(vision), context_length=77, output_name=None
        )
