"""Job helpers in isolation: the model session is held only while there is work."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imageclust_daemon import models
from imageclust_daemon.jobs import LazyModel


def test_the_session_opens_on_first_use_and_closes_when_idle(tiny_model: Path) -> None:
    spec = models.load_manifest()["clip-vit-b32"]
    model = LazyModel(spec, tiny_model, "tiny@sha256:x")
    assert not model.loaded
    out = model.embed(np.zeros((2, 3, 224, 224), np.float32))
    assert out.shape == (2, 32) and model.loaded
    model.release_if_idle(now=0.0, idle=300.0)  # used just now: kept
    assert model.loaded
    model.release_if_idle(now=float("inf"))
    assert not model.loaded
    assert model.embed(np.zeros((1, 3, 224, 224), np.float32)).shape == (1, 32)
