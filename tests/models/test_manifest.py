"""The shipped manifest pins what the CLIP exports are; a malformed entry names itself."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from imageclust_daemon.errors import ModelError
from imageclust_daemon.model import manifest
from imageclust_daemon.records import (
    MERGES,
    ROLES,
    TEXT,
    TOKENIZER,
    VISION,
    VOCAB,
    Preprocessing,
)
from tests.clip_vocab import write_tokenizer_json
from tests.models.served import PROBE_IDS

# --- manifest ----------------------------------------------------------------------------------


def test_the_shipped_manifest_pins_every_file_of_the_clip_models() -> None:
    shipped = manifest.load_manifest()

    b32, l14 = shipped["clip-vit-b32"], shipped["clip-vit-l14"]
    assert (b32.dim, l14.dim) == (512, 768)
    assert b32.revision == "d15189d7028b43f1d3e65039190477f6af591c2a"
    assert l14.revision == "c307790166907339eed5a9a53a249af534102536"
    for spec in (b32, l14):
        assert spec.repo is not None and spec.repo.startswith("Xenova/")
        for f in spec.files:
            assert f.repo_path is not None and f.url is None
            assert f.sha256 is not None and len(f.sha256) == 64 and f.size_bytes
        assert (spec.vision.input_name, spec.vision.output_name) == ("pixel_values", "image_embeds")
        assert spec.preprocessing == Preprocessing(
            resize_shortest=224,
            crop=224,
            resample="bicubic",
            rescale=1 / 255,
            mean=(0.48145466, 0.4578275, 0.40821073),
            std=(0.26862954, 0.26130258, 0.27577711),
        )
    assert [f.role for f in b32.files] == list(ROLES)
    text, tok = b32.file(TEXT), b32.file(TOKENIZER)
    assert text is not None and (text.input_name, text.output_name) == ("input_ids", "text_embeds")
    assert tok is not None and tok.probe_ids == PROBE_IDS
    assert [f.role for f in l14.files] == [VISION]  # no citable pins for its text files
    dev = shipped["efficientnet-lite0-imagenet"]
    assert not dev.downloadable and dev.vision.sha256 is None
    assert dev.preprocessing.mean == pytest.approx((127 / 255,) * 3)
    assert dev.preprocessing.std == pytest.approx((128 / 255,) * 3)


def test_the_shipped_vocabulary_pins_are_clips_vocabulary(
    tokenizer_files: dict[str, bytes],
) -> None:
    """vocab.json and merges.txt rebuilt from open_clip's own BPE file have the manifest's
    sha256 and size: the pins name CLIP's real vocabulary."""
    spec = manifest.load_manifest()["clip-vit-b32"]
    for role in (VOCAB, MERGES):
        f = spec.file(role)
        assert f is not None
        body = tokenizer_files[role]
        assert (hashlib.sha256(body).hexdigest(), len(body)) == (f.sha256, f.size_bytes)


def test_the_shipped_probe_is_what_clips_tokenizer_gives(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    spec = manifest.load_manifest()["clip-vit-b32"]
    tok = spec.file(TOKENIZER)
    assert tok is not None and tok.probe_text is not None
    path = write_tokenizer_json(tmp_path / "tokenizer.json")
    assert tuple(Tokenizer.from_file(str(path)).encode(tok.probe_text).ids) == tok.probe_ids


GOOD_ENTRY = """
[tiny]
title = "Tiny"
dim = 32
repo = "Org/tiny"
revision = "0123456789abcdef0123456789abcdef01234567"

[tiny.preprocessing]
resize_shortest = 224
crop = 224
resample = "bicubic"
rescale = 0.00392156862745098
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]

[tiny.vision]
path = "onnx/vision_model.onnx"
filename = "tiny.onnx"
input_name = "pixel_values"
output_name = "image_embeds"
"""

TEXT_ENTRY = """
[tiny.text]
path = "onnx/text_model.onnx"
filename = "tiny-text.onnx"
input_name = "input_ids"
output_name = "text_embeds"

[tiny.tokenizer]
path = "tokenizer.json"
filename = "tiny-tokenizer.json"
probe_text = "a photo of a cat"
probe_ids = [49406, 320, 1125, 539, 320, 2368, 49407]
"""


def test_a_minimal_entry_loads(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(GOOD_ENTRY + TEXT_ENTRY, encoding="utf-8")

    (spec,) = manifest.load_manifest(path).values()

    assert (spec.name, spec.dim, spec.vision.sha256, spec.vision.size_bytes, spec.notes) == (
        "tiny",
        32,
        None,
        None,
        "",
    )
    assert spec.preprocessing.mean == (0.5, 0.5, 0.5)
    assert [f.role for f in spec.files] == [VISION, TEXT, TOKENIZER]
    assert spec.context_length == 77


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("dim = 32", 'dim = "big"', "dim"),
        ("dim = 32", "dim = 0", "dim"),
        ("dim = 32\n", "", "dim"),
        ('title = "Tiny"', 'title = "Tiny"\ncolour = "red"', "colour"),
        ('filename = "tiny.onnx"', 'filename = "../tiny.onnx"', "vision.filename"),
        ('filename = "tiny.onnx"', 'filename = "tiny.bin"', "vision.filename"),
        ('path = "onnx/vision_model.onnx"', 'url = "ftp://x/y.onnx"', "vision.url"),
        ('path = "onnx/vision_model.onnx"', 'path = "../x.onnx"', "vision.path"),
        ('revision = "0123456789abcdef0123456789abcdef01234567"', 'revision = "main"', "revision"),
        ('repo = "Org/tiny"', 'repo = "not a repo"', "repo"),
        (
            'input_name = "pixel_values"',
            'input_name = "pixel_values"\nsha256 = "abc"',
            "vision.sha256",
        ),
        (
            'input_name = "pixel_values"',
            "input_name = 'pixel_values'\nsize_bytes = -1",
            "vision.size_bytes",
        ),
        ('output_name = "image_embeds"\n', "", "vision.output_name"),
        ("mean = [0.5, 0.5, 0.5]", "mean = [0.5, 0.5]", "preprocessing.mean"),
        ("std = [0.5, 0.5, 0.5]", "std = [0.5, 0.0, 0.5]", "preprocessing.std"),
        ('resample = "bicubic"', 'resample = "cubic"', "preprocessing.resample"),
        ("crop = 224", "crop = 256", "preprocessing.crop"),
        ("rescale = 0.00392156862745098\n", "", "preprocessing.rescale"),
    ],
)
def test_a_malformed_entry_names_the_entry_and_the_field(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    assert old in GOOD_ENTRY
    path = tmp_path / "manifest.toml"
    path.write_text(GOOD_ENTRY.replace(old, new, 1), encoding="utf-8")

    with pytest.raises(ModelError) as caught:
        manifest.load_manifest(path)

    assert f"model 'tiny': {field}:" in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda t: t.split("[tiny.tokenizer]")[0], "tokenizer"),
        (lambda t: t.replace("probe_ids = [49406", "probe_ids = [-1"), "tokenizer.probe_ids"),
        (
            lambda t: t.replace('filename = "tiny-tokenizer.json"', 'filename = "t.txt"'),
            "tokenizer.filename",
        ),
    ],
)
def test_a_malformed_text_entry_names_the_field(tmp_path: Path, edit: Any, field: str) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(GOOD_ENTRY + edit(TEXT_ENTRY), encoding="utf-8")

    with pytest.raises(ModelError, match=re.escape(f"model 'tiny': {field}:")):
        manifest.load_manifest(path)


def test_a_missing_preprocessing_table_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    before, _, after = GOOD_ENTRY.partition("[tiny.preprocessing]")
    path.write_text(before + "[tiny.vision]" + after.split("[tiny.vision]")[1], encoding="utf-8")

    with pytest.raises(ModelError, match="model 'tiny': preprocessing: missing"):
        manifest.load_manifest(path)


def test_a_manifest_that_is_not_toml_or_has_stray_keys_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text("[tiny\n", encoding="utf-8")
    with pytest.raises(ModelError, match="not valid TOML"):
        manifest.load_manifest(path)

    path.write_text('default = "tiny"\n' + GOOD_ENTRY, encoding="utf-8")
    with pytest.raises(ModelError, match=re.escape("default: expected a [table]")):
        manifest.load_manifest(path)


def test_two_models_cannot_share_a_file_name(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(GOOD_ENTRY + GOOD_ENTRY.replace("[tiny", "[other"), encoding="utf-8")

    with pytest.raises(
        ModelError, match=re.escape("model 'other': vision.filename: 'tiny.onnx' is also")
    ):
        manifest.load_manifest(path)
