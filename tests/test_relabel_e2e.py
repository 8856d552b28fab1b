"""End to end: titles for changed groups only, from the fake Ollama server, with a fallback."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli_json
from tests.library import add_photos, scene_library

pytestmark = pytest.mark.slow  # end to end through the real CLI or daemon: minutes

SCENES, PER_SCENE = 4, 8


def _groups(config: Path) -> dict[int, dict[str, Any]]:
    rows = cli_json(
        config, "query", "SELECT id, title, catchy_phrase, label_source, size FROM clusters"
    )
    return {row["id"]: row for row in rows}


def test_relabel_titles_changed_groups_only_and_falls_back_offline(
    tmp_path: Path,
    make_config,  # type: ignore[no-untyped-def]
    fake_ollama,  # type: ignore[no-untyped-def]
) -> None:
    root = tmp_path / "library"
    scene_library(root, SCENES, PER_SCENE)
    config = make_config(
        cluster={"min_size": 4, "max_size": 40},
        ollama={
            "host": fake_ollama.url,
            "model": "llava",
            "timeout": 2.0,
            "connect_timeout": 0.5,
            "attempts": 2,
            "backoff_base": 0.01,
            "backoff_cap": 0.05,
        },
    )
    cli_json(config, "index", str(root), "--no-group")
    assert cli_json(config, "recluster")["n_clusters"] == SCENES

    first = cli_json(config, "relabel")
    assert first["groups"] == SCENES and first["ollama"] == SCENES and first["fallback"] == 0
    groups = _groups(config)
    assert len(groups) == SCENES
    for g in groups.values():
        assert g["label_source"] == "ollama"
        assert 0 < len(g["title"]) <= 25 and 0 < len(g["catchy_phrase"]) <= 100
    sent = fake_ollama.generate_requests()
    assert len(sent) == SCENES
    for request in sent:  # three small upright JPEGs per group, as base64
        assert len(request.body["images"]) == 3
        assert all(len(b64) < 200_000 for b64 in request.body["images"])

    # Nothing changed: nothing is sent, not even a model check.
    before = len(fake_ollama.requests())
    assert cli_json(config, "relabel")["groups"] == 0
    assert len(fake_ollama.requests()) == before

    # New photos join one group: exactly that group is sent again.
    add_photos(root, scene=2, count=2, first_seed=2500)
    cli_json(config, "index", str(root), "--no-group")
    regroup = cli_json(config, "recluster")
    assert regroup["changed_clusters"] == 1 and regroup["new_clusters"] == 0
    generated = len(fake_ollama.generate_requests())
    again = cli_json(config, "relabel")
    assert again["groups"] == 1 and again["ollama"] == 1
    assert len(fake_ollama.generate_requests()) == generated + 1

    # Ollama down: the changed group gets a fallback title promptly; the run exits 0.
    fake_ollama.stop()
    add_photos(root, scene=0, count=2, first_seed=500)
    cli_json(config, "index", str(root), "--no-group")
    assert cli_json(config, "recluster")["changed_clusters"] == 1
    started = time.monotonic()
    offline = cli_json(config, "relabel")
    elapsed = time.monotonic() - started
    assert offline["fallback"] == 1 and offline["ollama"] == 0 and offline["problem"]
    assert elapsed < 8, elapsed  # process start + one refused connection, no retries per group
    fallback = [g for g in _groups(config).values() if g["label_source"] == "fallback"]
    assert len(fallback) == 1
    assert fallback[0]["title"] == "Paris, June 2024"  # scene 0: its photos' GPS and dates
    assert len(fallback[0]["catchy_phrase"]) <= 100

    # Back up: the fallback title is replaced on the next run.
    fake_ollama.start()
    back = cli_json(config, "relabel")
    assert back["groups"] == 1 and back["ollama"] == 1
    assert all(g["label_source"] == "ollama" for g in _groups(config).values())


def test_index_says_titles_are_offline_when_ollama_cannot_give_them(
    tmp_path: Path,
    make_config,  # type: ignore[no-untyped-def]
    fake_ollama,  # type: ignore[no-untyped-def]
) -> None:
    """Before: "titling 52 albums with gemma3:4b..." was printed while Ollama was down."""
    from tests.conftest import run_cli

    root = tmp_path / "library"
    scene_library(root, 2, 5)
    down = make_config(
        cluster={"min_size": 4, "max_size": 40},
        ollama={"host": "http://127.0.0.1:9", "model": "llava", "connect_timeout": 0.2},
    )
    done = run_cli("--config", str(down), "index", str(root), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "titling 2 albums offline: Ollama does not answer at http://127.0.0.1:9" in done.stdout
    assert "; they get titles from their dates, places and subjects" in done.stdout
    assert "with llava" not in done.stdout
    fake_ollama.models = []  # up, but without the model
    (tmp_path / "data").rename(tmp_path / "data-before")
    missing = make_config(
        cluster={"min_size": 4, "max_size": 40},
        ollama={"host": fake_ollama.url, "model": "llava", "timeout": 5.0, "attempts": 1},
    )
    done = run_cli("--config", str(missing), "index", str(root), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "has no model llava (ollama pull llava)" in done.stdout


def test_one_album_titled_offline_is_one_album() -> None:
    """Before: "titling 1 album offline: ...; they get titles from their dates"."""
    from imageclust_daemon.cli.commands import _titling
    from imageclust_daemon.grouping.ollama import OllamaClient, RetryPolicy

    with OllamaClient(
        "http://127.0.0.1:9", "llava", connect_timeout=0.2, retry=RetryPolicy(attempts=1)
    ) as down:
        line = _titling(down, 1)
    assert line.startswith("titling 1 album offline: Ollama does not answer"), line
    assert line.endswith(
        "; it gets a title from its dates, places and subjects, and Ollama's at a later run"
    ), line
