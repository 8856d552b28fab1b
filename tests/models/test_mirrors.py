"""The pinned revision gone (the same file from main, never another), mirrors
($HF_ENDPOINT), and whole models fetched in one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageclust_daemon.errors import DownloadError
from imageclust_daemon.model import hub, manifest, models
from imageclust_daemon.records import (
    MERGES,
    ROLES,
    TEXT,
    TOKENIZER,
    VISION,
    VOCAB,
)
from tests.models.served import (
    COMMIT,
    FileServer,
    hub_path,
    hub_spec,
    located_in,
    no_part,
    serve_pinned,
    whole_model,
)
from tests.onnx_models import build_tiny_clip


def test_a_404_at_the_pinned_revision_takes_the_same_file_from_main(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    spec = hub_spec({VISION: ("onnx/vision_model.onnx", model_bytes)})
    server.routes[hub_path("main", "onnx/vision_model.onnx")] = model_bytes
    dest = tmp_path / "vision.onnx"

    fetched = hub.download(spec, dest, endpoint=server.base, timeout=5)

    assert dest.read_bytes() == model_bytes and no_part(dest)
    assert (
        fetched.fallback
        and fetched.url == f"{server.base}{hub_path('main', 'onnx/vision_model.onnx')}"
    )
    assert [(r.path, r.status) for r in server.requests] == [
        (hub_path(COMMIT, "onnx/vision_model.onnx"), 404),
        (hub_path("main", "onnx/vision_model.onnx"), 200),
    ]


def test_a_different_file_at_main_is_refused_and_every_url_is_named(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    spec = hub_spec({VISION: ("onnx/vision_model.onnx", model_bytes)})
    other = build_tiny_clip(tmp_path / "other.onnx", dim=32, seed=99).read_bytes()
    assert len(other) == len(model_bytes) and other != model_bytes  # same size, other weights
    server.routes[hub_path("main", "onnx/vision_model.onnx")] = other
    dest = tmp_path / "vision.onnx"

    with pytest.raises(DownloadError) as caught:
        hub.download(spec, dest, endpoint=server.base, timeout=5)

    message = str(caught.value)
    pinned = f"{server.base}{hub_path(COMMIT, 'onnx/vision_model.onnx')}"
    main = f"{server.base}{hub_path('main', 'onnx/vision_model.onnx')}"
    assert f"{pinned}: HTTP 404" in message
    assert f"{main}: sha256 mismatch" in message
    assert "next:" in message and "not kept" in message
    assert [u for u, _ in caught.value.attempts] == [pinned, main]
    assert not dest.exists() and no_part(dest)


def test_main_is_not_tried_for_a_file_without_a_checksum(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    spec = hub_spec({VISION: ("onnx/vision_model.onnx", model_bytes)}, vision={"sha256": None})
    server.routes[hub_path("main", "onnx/vision_model.onnx")] = model_bytes

    with pytest.raises(DownloadError, match="HTTP 404"):
        hub.download(spec, tmp_path / "v.onnx", endpoint=server.base, timeout=5)

    assert [r.path for r in server.requests] == [hub_path(COMMIT, "onnx/vision_model.onnx")]


def test_gone_everywhere_names_both_urls_their_answers_and_what_to_do(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    spec = hub_spec({VISION: ("onnx/vision_model.onnx", model_bytes)})
    dest = tmp_path / "vision.onnx"

    with pytest.raises(DownloadError) as caught:
        hub.download(spec, dest, endpoint=server.base, timeout=5)

    message = str(caught.value)
    assert message.count("HTTP 404") == 2
    assert hub_path(COMMIT, "onnx/vision_model.onnx") in message
    assert hub_path("main", "onnx/vision_model.onnx") in message
    assert "HF_ENDPOINT" in message and "model.path" in message
    assert not dest.exists() and no_part(dest)


def test_hf_endpoint_names_the_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub.endpoint_from({}) == "https://huggingface.co"
    assert hub.endpoint_from({"HF_ENDPOINT": "https://hf-mirror.example/"}) == (
        "https://hf-mirror.example"
    )
    spec = manifest.load_manifest()["clip-vit-b32"]
    urls = hub.file_urls(spec, spec.vision, "https://hf-mirror.example")
    assert urls == [
        "https://hf-mirror.example/Xenova/clip-vit-base-patch32/resolve/"
        "d15189d7028b43f1d3e65039190477f6af591c2a/onnx/vision_model.onnx",
        "https://hf-mirror.example/Xenova/clip-vit-base-patch32/resolve/main/onnx/vision_model.onnx",
    ]


def test_the_shipped_vocabulary_downloads_from_a_mirror_and_verifies(
    server: FileServer, tokenizer_files: dict[str, bytes], tmp_path: Path
) -> None:
    """The manifest's own pins for vocab.json and merges.txt, fetched through a mirror at
    the layout Hugging Face's tools use, match CLIP's real vocabulary byte for byte."""
    spec = manifest.load_manifest()["clip-vit-b32"]
    for role in (VOCAB, MERGES):
        f = spec.file(role)
        assert f is not None and f.repo_path is not None and spec.revision is not None
        server.routes[f"/{spec.repo}/resolve/{spec.revision}/{f.repo_path}"] = tokenizer_files[role]
    mirror = hub.endpoint_from({"HF_ENDPOINT": server.base})

    fetched = hub.download_model(
        models.Located(spec, {r: tmp_path / r for r in (VOCAB, MERGES)}, frozenset()),
        roles=(VOCAB, MERGES),
        endpoint=mirror,
        timeout=5,
    )

    assert [(f.role, f.fallback) for f in fetched] == [(VOCAB, False), (MERGES, False)]
    assert (tmp_path / VOCAB).read_bytes() == tokenizer_files[VOCAB]


def test_every_file_of_a_model_in_one_run_with_one_progress_over_the_total(
    server: FileServer,
    model_bytes: bytes,
    text_bytes: bytes,
    tokenizer_files: dict[str, bytes],
    tmp_path: Path,
) -> None:
    spec = whole_model(model_bytes, text_bytes, tokenizer_files)
    serve_pinned(server, spec, {VISION: model_bytes, TEXT: text_bytes, **tokenizer_files})
    located = located_in(tmp_path / "data", spec)
    calls: list[tuple[int, int | None]] = []
    total = sum(f.size_bytes or 0 for f in spec.files)

    fetched = hub.download_model(
        located, endpoint=server.base, timeout=5, progress=lambda d, t: calls.append((d, t))
    )

    assert [f.role for f in fetched] == list(ROLES)
    assert all(f.url and not f.kept for f in fetched)
    assert {t for _, t in calls} == {total}
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1][0] == total
    reports = models.verify(located)
    assert all(r.ok for r in reports), reports
    assert models.words_ready(reports)

    # A second run fetches nothing: every file is in place and verified.
    server.requests.clear()
    again = hub.download_model(located, endpoint=server.base, timeout=5)
    assert server.requests == [] and all(f.kept for f in again)


def test_vision_only_fetches_one_file(
    server: FileServer,
    model_bytes: bytes,
    text_bytes: bytes,
    tokenizer_files: dict[str, bytes],
    tmp_path: Path,
) -> None:
    spec = whole_model(model_bytes, text_bytes, tokenizer_files)
    server.routes[hub_path(COMMIT, "onnx/vision_model.onnx")] = model_bytes
    located = located_in(tmp_path / "data", spec)

    fetched = hub.download_model(located, roles=(VISION,), endpoint=server.base, timeout=5)

    assert [f.role for f in fetched] == [VISION]
    reports = {r.role: r for r in models.verify(located)}
    assert reports[VISION].ok and not reports[TEXT].present and not reports[TEXT].needed
    assert not models.words_ready(list(reports.values()))


def test_a_failing_text_file_keeps_the_vision_tower_and_a_rerun_fetches_the_rest(
    server: FileServer,
    model_bytes: bytes,
    text_bytes: bytes,
    tokenizer_files: dict[str, bytes],
    tmp_path: Path,
) -> None:
    spec = whole_model(model_bytes, text_bytes, tokenizer_files)
    serve_pinned(server, spec, {VISION: model_bytes, TEXT: text_bytes, **tokenizer_files})
    text_route = hub_path(COMMIT, "onnx/text_model.onnx")
    server.routes[text_route] = text_bytes[: len(text_bytes) // 3]  # a truncated body...
    located = located_in(tmp_path / "data", spec)

    with pytest.raises(DownloadError, match=r"ended after|stopped at|offers"):
        hub.download_model(located, endpoint=server.base, timeout=5)

    assert located.paths[VISION].read_bytes() == model_bytes
    assert not located.paths[TEXT].exists()
    server.routes[text_route] = text_bytes
    server.requests.clear()
    fetched = hub.download_model(located, endpoint=server.base, timeout=5)
    assert [f.role for f in fetched if not f.kept] == [TEXT, VOCAB, MERGES, TOKENIZER]
    assert all(r.ok for r in models.verify(located))
