"""`models verify` and the checks of a user's own towers; the CLI download from a dead
mirror; int8 quantization keeps the contract."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import replace
from pathlib import Path

from imageclust_daemon.model import manifest, models
from imageclust_daemon.records import (
    TEXT,
    VISION,
)
from tests.clip_vocab import write_tokenizer_json
from tests.conftest import run_cli, write_config
from tests.models.served import FileServer, hub_spec, located_in, spec_for
from tests.onnx_models import build_tiny_clip, build_tiny_clip_text

# --- verify ------------------------------------------------------------------------------------


def test_verify_accepts_a_good_file(model_bytes: bytes, tmp_path: Path) -> None:
    spec = spec_for(model_bytes, "https://example.org/m.onnx")
    located = located_in(tmp_path, spec)
    located.paths[VISION].parent.mkdir(parents=True)
    located.paths[VISION].write_bytes(model_bytes)

    (result,) = models.verify(located)

    assert result.ok and result.problems == ()
    assert result.path == located.paths[VISION]
    assert result.sha256 == hashlib.sha256(model_bytes).hexdigest()


def test_verify_reports_every_problem(model_bytes: bytes, tmp_path: Path) -> None:
    spec = spec_for(model_bytes, "https://example.org/m.onnx")
    located = located_in(tmp_path, spec)
    path = located.paths[VISION]

    (missing,) = models.verify(located)
    assert not missing.ok and missing.sha256 is None and missing.needed
    assert "no such file" in missing.problems[0]

    path.parent.mkdir(parents=True)
    path.write_bytes(model_bytes)
    wrong = spec_for(model_bytes, "u", dim=64, sha256="0" * 64, size_bytes=1)
    (bad,) = models.verify(replace(located, spec=wrong))
    assert not bad.ok
    assert len(bad.problems) == 3
    assert any("sha256 mismatch" in p for p in bad.problems)
    assert any("manifest expects 1" in p for p in bad.problems)
    assert any("the manifest says 64" in p for p in bad.problems)

    path.write_bytes(b"not an onnx file")
    (junk,) = models.verify(
        replace(located, spec=spec_for(model_bytes, "u", sha256=None, size_bytes=None))
    )
    assert not junk.ok
    assert any("ONNX Runtime cannot load it" in p for p in junk.problems)


def test_a_text_tower_with_the_wrong_contract_is_named(tmp_path: Path, model_bytes: bytes) -> None:
    """A vision file where the text tower should be: refused for what it lacks."""
    spec = hub_spec({VISION: ("v.onnx", model_bytes), TEXT: ("t.onnx", model_bytes)})
    located = replace(located_in(tmp_path, spec), own=frozenset({TEXT}))
    for role in (VISION, TEXT):
        located.paths[role].parent.mkdir(parents=True, exist_ok=True)
        located.paths[role].write_bytes(model_bytes)

    reports = {r.role: r for r in models.verify(located)}

    assert reports[VISION].ok
    assert reports[TEXT].problems == (
        f"{located.paths[TEXT]}: not a usable CLIP text model: no input 'input_ids'; "
        "it has ['pixel_values']",
    )


def test_verify_of_the_configured_own_file_checks_its_contract_only(
    tiny_model: Path, tmp_path: Path
) -> None:
    """model.path = your own export: the manifest's size and sha256 are another file's."""
    config = write_config(
        tmp_path / "c.toml",
        storage={"data_dir": str(tmp_path / "data")},
        model={"name": "clip-vit-b32", "path": str(tiny_model)},
    )
    own = run_cli("--config", str(config), "models", "verify")
    assert own.returncode == 0, own.stdout + own.stderr
    assert "vision: ok (your own file (model.path): its content)" in own.stdout
    assert "text: missing" in own.stdout and "search by words needs it" in own.stdout
    named = run_cli("--config", str(config), "models", "verify", "clip-vit-b32")
    assert named.returncode == 1 and "vision: missing" in named.stdout  # the download's place
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    spec = manifest.load_manifest()["clip-vit-b32"]
    located = models.Located(spec, {VISION: junk}, frozenset({VISION}))
    (broken,) = models.verify(located, roles=(VISION,))
    assert not broken.ok and any("ONNX Runtime cannot load it" in p for p in broken.problems)


def test_own_text_tower_and_tokenizer_from_the_config_are_verified(
    tiny_model: Path, text_bytes: bytes, tmp_path: Path
) -> None:
    text = tmp_path / "mine-text.onnx"
    text.write_bytes(text_bytes)
    tokenizer_json = write_tokenizer_json(tmp_path / "mine-tokenizer.json")
    config = write_config(
        tmp_path / "c.toml",
        storage={"data_dir": str(tmp_path / "data")},
        model={
            "path": str(tiny_model),
            "text_path": str(text),
            "tokenizer_path": str(tokenizer_json),
        },
    )

    done = run_cli("--config", str(config), "models", "verify")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "text: ok (your own file (model.text_path): its content)" in done.stdout
    assert "tokenizer: ok (your own file (model.tokenizer_path): its content)" in done.stdout


def test_own_towers_must_belong_together(
    tiny_model: Path, tmp_path: Path, text_bytes: bytes
) -> None:
    """An own text tower whose embeddings differ in length from the vision tower's, an own
    tokenizer for another vocabulary, an own text tower without a tokenizer: each named."""
    short = build_tiny_clip_text(tmp_path / "short.onnx", dim=16)
    other = json.loads(write_tokenizer_json(tmp_path / "clip.json").read_text(encoding="utf-8"))
    vocab = other["model"]["vocab"]
    vocab["photo</w>"], vocab["cat</w>"] = vocab["cat</w>"], vocab["photo</w>"]
    (tmp_path / "other.json").write_text(json.dumps(other), encoding="utf-8")
    data = str(tmp_path / "data")

    def verify(**model: str) -> subprocess.CompletedProcess[str]:
        config = write_config(tmp_path / "c.toml", storage={"data_dir": data}, model=model)
        return run_cli("--config", str(config), "models", "verify")

    mismatched = verify(path=str(tiny_model), text_path=str(short))
    assert mismatched.returncode == 1, mismatched.stdout
    assert "has 16 values, the vision tower's 32" in mismatched.stdout

    l14 = verify(
        name="clip-vit-l14",
        path=str(tiny_model),
        text_path=str(tmp_path / "t.onnx"),
        tokenizer_path=str(tmp_path / "other.json"),
    )
    assert "clip-vit-l14 tokenizer: it encodes 'a photo of a cat' as" in l14.stdout
    assert l14.returncode == 1

    (tmp_path / "t.onnx").write_bytes(text_bytes)
    alone = verify(name="clip-vit-l14", path=str(tiny_model), text_path=str(tmp_path / "t.onnx"))
    assert "a text tower needs its tokenizer: set model.tokenizer_path" in alone.stdout


def test_cli_download_from_a_dead_mirror_names_the_urls_and_exits_1(
    server: FileServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.toml", storage={"data_dir": str(tmp_path / "data")})

    done = run_cli(
        "--config",
        str(config),
        "models",
        "download",
        "--no-progress",
        env={"HF_ENDPOINT": server.base},
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"downloading from {server.base} ($HF_ENDPOINT)" in done.stdout
    spec = manifest.load_manifest()["clip-vit-b32"]
    for revision in (spec.revision, "main"):
        url = f"{server.base}/{spec.repo}/resolve/{revision}/onnx/vision_model.onnx: HTTP 404"
        assert url in done.stderr
    assert "next: the mirror" in done.stderr
    assert not any((tmp_path / "data" / "models").iterdir())  # nothing half-written


def test_int8_quantization_keeps_the_contract_and_the_embeddings(tmp_path: Path) -> None:
    import numpy as np

    from imageclust_daemon.model.embed import Embedder, model_io, open_session

    source = build_tiny_clip(tmp_path / "tiny.onnx", dim=32)
    dest = models.quantize(source, models.int8_file(source))
    assert dest.name == "tiny-int8.onnx" and dest.stat().st_size < source.stat().st_size
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    out = []
    for path in (source, dest):
        session = open_session(path)
        out.append(Embedder(session, model_io(session, path=str(path), image_size=224)).embed(x))
    cosine = (out[0] * out[1]).sum(axis=1)
    assert cosine.min() > 0.99, cosine
