"""Fixtures of the model tests: the file server (started per test) and the files it serves."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from imageclust_daemon.records import (
    MERGES,
    TOKENIZER,
    VOCAB,
)
from tests.clip_vocab import clip_vocab, write_tokenizer_json
from tests.models.served import FileServer, _Server
from tests.onnx_models import build_tiny_clip, build_tiny_clip_text


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer(url="")
    httpd = _Server(state)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    state.base = base
    state.url, state.redirect_url = f"{base}/model.onnx", f"{base}/redirect"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="test-file-server"
    )
    thread.start()
    try:
        yield state
    finally:
        if state.hang is not None:
            state.hang.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = build_tiny_clip(tmp_path_factory.mktemp("served") / "tiny.onnx", dim=32, seed=7)
    return path.read_bytes()


@pytest.fixture(scope="module")
def text_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("text") / "text.onnx"
    return build_tiny_clip_text(path, dim=32, seed=3).read_bytes()


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """CLIP's real vocab.json, merges.txt and a tokenizer.json holding them."""
    vocab = clip_vocab()
    path = write_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab)
    return {VOCAB: vocab.vocab_json(), MERGES: vocab.merges_txt(), TOKENIZER: path.read_bytes()}
