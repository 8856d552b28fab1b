"""Shared fixtures: a real tiny ONNX model, real config files, a guard against leaked threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

# In CI (CI=true) the property tests draw the same examples every run: a submission
# lands or not on its code, not on the luck of the draw. Locally they explore anew
# each run, which is where new counterexamples are found (and then pinned as tests).
if os.environ.get("CI") == "true":
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
    _hypothesis_settings.load_profile("ci")


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running (every long-lived object must be closed)."""
    before = set(threading.enumerate())
    yield
    leaked = []
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=2.0)
        if thread.is_alive():
            leaked.append(thread.name)
    assert not leaked, f"test leaked threads: {leaked}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX file with the CLIP vision export's contract: pixel_values -> image_embeds [N,32]."""
    from tests.onnx_models import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("model") / "tiny-clip.onnx", dim=32)


def write_config(path: Path, **sections: dict[str, Any]) -> Path:
    """Write a TOML config from {section: {key: value}} (strings, ints, bools, lists of strings)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    lines = []
    for section, body in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {value(v)}" for k, v in body.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def library_config(
    folder: Path, root: Path, tiny_model: Path, text_files: dict[str, Path], **more: Any
) -> Path:
    """A config in `folder` (its data dir `folder/data`) for the library at `root`: the
    tiny towers, small albums, Ollama unreachable; `more` adds sections."""
    return write_config(
        folder / "imageclust.toml",
        library={"roots": [str(root)]},
        storage={"data_dir": str(folder / "data")},
        model={
            "path": str(tiny_model),
            "batch_size": 4,
            "text_path": str(text_files["text"]),
            "tokenizer_path": str(text_files["tokenizer"]),
        },
        cluster={"min_size": 3, "max_size": 10},
        ollama={"host": "http://127.0.0.1:9", "connect_timeout": 0.2},
        **more,
    )


@pytest.fixture
def make_config(tmp_path: Path, tiny_model: Path):  # type: ignore[no-untyped-def]
    """A config pointing at a fresh data dir and the tiny model; extra sections override."""

    def make(roots: list[Path] | None = None, **overrides: dict[str, Any]) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "library": {"roots": [str(r) for r in (roots or [])]},
            "storage": {"data_dir": str(tmp_path / "data")},
            "model": {"path": str(tiny_model), "batch_size": 4},
        }
        for section, body in overrides.items():
            sections.setdefault(section, {}).update(body)
        return write_config(tmp_path / "imageclust.toml", **sections)

    return make


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run the real `imageclust` command (as `python -m imageclust_daemon`) in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "imageclust_daemon", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
        **kwargs,
    )


def memory_limit(megabytes: int) -> Callable[[], None]:
    """A `preexec_fn` capping a child's address space: a regression that asks for too much
    memory fails in that child (MemoryError, or killed) instead of taking the machine down."""

    def apply() -> None:
        import resource

        cap = megabytes << 20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return apply


@pytest.fixture
def fake_ollama() -> Iterator[Any]:
    """A started FakeOllama (tests/ollama_server.py) listing "llava:latest"; stopped after."""
    from tests.ollama_server import FakeOllama

    with FakeOllama() as server:
        yield server


def cli_json(config: Path, *args: str) -> Any:
    """`imageclust --config CONFIG ARGS --json`, run in this process (the command's own
    `main`, as the console script calls it: a use case tested without a process start);
    it must succeed; its parsed output. `run_cli` runs the real command in a subprocess,
    for what only a process shows (exit codes, signals, environment, memory caps)."""
    import contextlib
    import io
    import logging

    import tqdm

    from imageclust_daemon.cli import commands

    tqdm.tqdm.monitor_interval = 0  # no monitor thread outliving the command
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = commands.main(["--config", str(config), *args, "--json"])
    finally:  # the command configures logging for its process: put this one's back
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue())


@pytest.fixture(scope="session")
def text_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny text tower with the CLIP text export's contract (32-d, the tiny vision
    model's), one of another dimension (24-d), and CLIP's real tokenizer.json."""
    from tests.clip_vocab import write_tokenizer_json
    from tests.onnx_models import build_tiny_clip_text

    folder = tmp_path_factory.mktemp("text")
    return {
        "text": build_tiny_clip_text(folder / "text.onnx", dim=32, seed=3),
        "other_dim": build_tiny_clip_text(folder / "text24.onnx", dim=24, seed=3),
        "tokenizer": write_tokenizer_json(folder / "tokenizer.json"),
    }
