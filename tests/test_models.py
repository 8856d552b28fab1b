"""Models: the manifest, downloads over real HTTP (resume, restart, refusals), verify.

Downloads run against a real HTTP server on 127.0.0.1 that serves a real tiny
ONNX model with the CLIP contract, supports Range requests, and can misbehave
on demand: drop the connection halfway, ignore Range, serve the wrong bytes.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from imageclust_daemon import models
from imageclust_daemon.errors import DownloadError, ModelError
from imageclust_daemon.records import ModelSpec, Preprocessing
from tests.conftest import run_cli, write_config
from tests.onnx_models import build_tiny_clip

# --- a file server that misbehaves on demand ---------------------------------------------------


@dataclass
class Served:
    """One request the server answered."""

    range: str | None
    status: int
    sent: int  # body bytes written


@dataclass
class FileServer:
    """What the server serves and how; tests change these fields between downloads."""

    url: str  # serves the file; `redirect_url` answers with a 302 to it, like a CDN front
    redirect_url: str = ""
    body: bytes = b""
    ignore_range: bool = False
    drop_next_after: int | None = None  # the next response stops after this many body bytes
    fail_with: int | None = None  # answer every request with this status and no body
    requests: list[Served] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        state = self.server.state
        body = state.body
        asked = self.headers.get("Range")
        if self.path == "/redirect":
            self._answer(asked, 302, b"", {"Location": "/model.onnx"})
            return
        if state.fail_with is not None:
            self._answer(asked, state.fail_with, b"", {})
            return
        match = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self._answer(asked, 416, b"", {"Content-Range": f"bytes */{len(body)}"})
                return
            rng = f"bytes {start}-{len(body) - 1}/{len(body)}"
            self._answer(asked, 206, body[start:], {"Content-Range": rng})
            return
        self._answer(asked, 200, body, {})

    def _answer(
        self, asked: str | None, status: int, payload: bytes, extra: dict[str, str]
    ) -> None:
        state = self.server.state
        limit, state.drop_next_after = state.drop_next_after, None
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))  # the full length, even if dropping
        self.send_header("Accept-Ranges", "bytes")
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        chunk = payload if limit is None else payload[:limit]
        try:
            self.wfile.write(chunk)
            self.wfile.flush()
        except ConnectionError:
            pass  # the client gave up first (a refused download); nothing to do
        state.requests.append(Served(asked, status, len(chunk)))
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class _Server(ThreadingHTTPServer):
    # Request threads are joined by server_close(), so none outlives the fixture.
    daemon_threads = False
    block_on_close = True

    def __init__(self, state: FileServer) -> None:
        self.state = state
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client closing early is expected in these tests


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer(url="")
    httpd = _Server(state)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    state.url, state.redirect_url = f"{base}/model.onnx", f"{base}/redirect"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="test-file-server"
    )
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = build_tiny_clip(tmp_path_factory.mktemp("served") / "tiny.onnx", dim=32, seed=7)
    return path.read_bytes()


def spec_for(body: bytes, url: str, **changes: Any) -> ModelSpec:
    spec = ModelSpec(
        name="tiny-clip",
        title="Tiny CLIP-contract test model",
        filename="tiny-clip.onnx",
        url=url,
        sha256=hashlib.sha256(body).hexdigest(),
        size_bytes=len(body),
        dim=32,
        preprocessing=Preprocessing(),
    )
    return replace(spec, **changes)


def no_part(dest: Path) -> bool:
    return not models.part_path(dest).exists()


# --- download ----------------------------------------------------------------------------------


def test_a_good_file_downloads_verifies_and_lands_at_dest(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.url)
    dest = models.model_file(tmp_path / "data", spec)  # the folders do not exist yet
    calls: list[tuple[int, int | None]] = []

    result = models.download(spec, dest, progress=lambda done, total: calls.append((done, total)))

    assert result == dest == tmp_path / "data" / "models" / "tiny-clip.onnx"
    assert dest.read_bytes() == model_bytes
    assert no_part(dest)
    assert calls[0] == (0, len(model_bytes))
    assert calls[-1] == (len(model_bytes), len(model_bytes))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert [(r.range, r.status) for r in server.requests] == [(None, 200)]


def test_a_wrong_checksum_is_refused_and_leaves_nothing(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    expected = "ab" * 32
    spec = spec_for(model_bytes, server.url, sha256=expected)
    dest = tmp_path / "model.onnx"

    with pytest.raises(DownloadError) as caught:
        models.download(spec, dest, timeout=5)

    message = str(caught.value)
    assert expected in message
    assert hashlib.sha256(model_bytes).hexdigest() in message
    assert caught.value.url == server.url
    assert not dest.exists()
    assert no_part(dest)


def test_a_dropped_connection_keeps_the_part_and_the_next_call_resumes_with_range(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    half = len(model_bytes) // 2
    server.body = model_bytes
    server.drop_next_after = half  # promises the full Content-Length, closes after half
    spec = spec_for(model_bytes, server.url)
    dest = tmp_path / "model.onnx"
    part = models.part_path(dest)

    with pytest.raises(DownloadError) as caught:
        models.download(spec, dest, timeout=5)

    assert f"stopped at {half} of {len(model_bytes)} bytes" in str(caught.value)
    assert not dest.exists()
    assert part.read_bytes() == model_bytes[:half]

    models.download(spec, dest, timeout=5)

    assert dest.read_bytes() == model_bytes
    assert not part.exists()
    first, second = server.requests
    assert (first.range, first.status, first.sent) == (None, 200, half)
    assert (second.range, second.status) == (f"bytes={half}-", 206)
    assert second.sent == len(model_bytes) - half < len(model_bytes)


def test_a_server_ignoring_range_restarts_from_zero(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    server.ignore_range = True
    spec = spec_for(model_bytes, server.url)
    dest = tmp_path / "model.onnx"
    # A stale .part that is not even a prefix of the file: appending to it would corrupt.
    models.part_path(dest).write_bytes(b"stale bytes from some other file")

    models.download(spec, dest, timeout=5)

    assert dest.read_bytes() == model_bytes
    assert no_part(dest)
    (only,) = server.requests
    assert (only.range, only.status, only.sent) == ("bytes=32-", 200, len(model_bytes))


def test_a_416_for_an_overlong_part_restarts_from_zero(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.url, size_bytes=None)  # size unknown: only the server knows
    dest = tmp_path / "model.onnx"
    stale = b"x" * (len(model_bytes) + 10)
    models.part_path(dest).write_bytes(stale)

    models.download(spec, dest, timeout=5)

    assert dest.read_bytes() == model_bytes
    assert [(r.range, r.status) for r in server.requests] == [
        (f"bytes={len(stale)}-", 416),
        (None, 200),
    ]


def test_a_part_that_is_already_complete_is_checked_and_moved_without_refetching(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.url)
    dest = tmp_path / "model.onnx"
    models.part_path(dest).write_bytes(model_bytes)  # an earlier run stopped before the rename

    models.download(spec, dest, timeout=5)

    assert dest.read_bytes() == model_bytes
    assert server.requests == []


def test_a_file_that_is_not_onnx_is_refused_and_not_moved_into_place(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    junk = bytes(range(256)) * (len(model_bytes) // 256 + 1)
    server.body = junk[: len(model_bytes)]
    spec = spec_for(model_bytes, server.url, sha256=None)  # right size, no checksum to catch it
    dest = tmp_path / "model.onnx"

    with pytest.raises(DownloadError, match="ONNX Runtime cannot load it"):
        models.download(spec, dest, timeout=5)

    assert not dest.exists()
    assert no_part(dest)


def test_a_model_with_another_embedding_size_is_refused(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.url, sha256=None, dim=512)
    dest = tmp_path / "model.onnx"

    with pytest.raises(DownloadError, match="has 32 values, the manifest says 512"):
        models.download(spec, dest, timeout=5)

    assert not dest.exists()
    assert no_part(dest)


def test_a_server_offering_another_size_is_refused_before_the_transfer(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.url, size_bytes=len(model_bytes) + 1)
    dest = tmp_path / "model.onnx"

    with pytest.raises(DownloadError, match=f"offers {len(model_bytes)} bytes"):
        models.download(spec, dest, timeout=5)

    assert not dest.exists()
    assert no_part(dest)  # nothing arrived, so no empty .part is left behind


def test_an_http_error_status_is_a_download_error_and_keeps_the_part(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    server.fail_with = 503
    spec = spec_for(model_bytes, server.url)
    dest = tmp_path / "model.onnx"
    models.part_path(dest).write_bytes(model_bytes[:10])

    with pytest.raises(DownloadError, match="HTTP 503"):
        models.download(spec, dest, timeout=5)

    assert not dest.exists()
    assert models.part_path(dest).read_bytes() == model_bytes[:10]  # still a good prefix


def test_an_unreachable_server_is_a_download_error_and_keeps_the_part(
    model_bytes: bytes, tmp_path: Path
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = spec_for(model_bytes, f"http://127.0.0.1:{port}/model.onnx")
    dest = tmp_path / "model.onnx"
    models.part_path(dest).write_bytes(model_bytes[:10])

    with pytest.raises(DownloadError, match=f"stopped at 10 of {len(model_bytes)} bytes"):
        models.download(spec, dest, timeout=5)

    assert models.part_path(dest).read_bytes() == model_bytes[:10]


def test_a_redirect_is_followed_and_keeps_the_range(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.redirect_url)  # Hugging Face redirects to its CDN
    dest = tmp_path / "model.onnx"
    models.part_path(dest).write_bytes(model_bytes[:100])

    models.download(spec, dest, timeout=5)

    assert dest.read_bytes() == model_bytes
    assert [(r.range, r.status) for r in server.requests] == [
        ("bytes=100-", 302),
        ("bytes=100-", 206),
    ]


def test_a_second_download_into_the_same_part_is_refused(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.url)
    dest = tmp_path / "model.onnx"
    part = models.part_path(dest)
    part.write_bytes(model_bytes[:10])

    with open(part, "ab") as busy:
        fcntl.flock(busy.fileno(), fcntl.LOCK_EX)  # another process downloading
        with pytest.raises(DownloadError, match="in progress"):
            models.download(spec, dest, timeout=5)

    assert part.read_bytes() == model_bytes[:10]  # untouched
    assert server.requests == []


def test_a_model_without_a_url_cannot_be_downloaded(tmp_path: Path) -> None:
    spec = models.load_manifest()["efficientnet-lite0-imagenet"]
    with pytest.raises(DownloadError, match="no URL"):
        models.download(spec, tmp_path / "m.onnx")


def test_an_explicit_url_overrides_the_manifest(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, "https://example.invalid/never-used.onnx")
    dest = tmp_path / "model.onnx"

    models.download(spec, dest, url=server.url, timeout=5)

    assert dest.read_bytes() == model_bytes


# --- manifest ----------------------------------------------------------------------------------


def test_the_shipped_manifest_lists_the_clip_models() -> None:
    manifest = models.load_manifest()

    b32, l14 = manifest["clip-vit-b32"], manifest["clip-vit-l14"]
    assert (b32.dim, l14.dim) == (512, 768)
    for spec in (b32, l14):
        assert spec.url is not None and spec.url.startswith("https://huggingface.co/Xenova/")
        assert "/resolve/main/" not in spec.url  # pinned to a commit
        assert spec.sha256 is not None and len(spec.sha256) == 64
        assert (spec.input_name, spec.output_name) == ("pixel_values", "image_embeds")
        assert spec.preprocessing == Preprocessing(
            resize_shortest=224,
            crop=224,
            resample="bicubic",
            rescale=1 / 255,
            mean=(0.48145466, 0.4578275, 0.40821073),
            std=(0.26862954, 0.26130258, 0.27577711),
        )
    dev = manifest["efficientnet-lite0-imagenet"]
    assert dev.url is None and dev.sha256 is None
    assert dev.preprocessing.mean == pytest.approx((127 / 255,) * 3)
    assert dev.preprocessing.std == pytest.approx((128 / 255,) * 3)


GOOD_ENTRY = """
[tiny]
title = "Tiny"
filename = "tiny.onnx"
url = "https://example.org/tiny.onnx"
dim = 32
input_name = "pixel_values"
output_name = "image_embeds"

[tiny.preprocessing]
resize_shortest = 224
crop = 224
resample = "bicubic"
rescale = 0.00392156862745098
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
"""


def test_a_minimal_entry_loads(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(GOOD_ENTRY, encoding="utf-8")

    (spec,) = models.load_manifest(path).values()

    assert (spec.name, spec.dim, spec.sha256, spec.size_bytes, spec.notes) == (
        "tiny",
        32,
        None,
        None,
        "",
    )
    assert spec.preprocessing.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("dim = 32", 'dim = "big"', "dim"),
        ("dim = 32", "dim = 0", "dim"),
        ("dim = 32\n", "", "dim"),
        ('title = "Tiny"', 'title = "Tiny"\ncolour = "red"', "colour"),
        ('filename = "tiny.onnx"', 'filename = "../tiny.onnx"', "filename"),
        ('url = "https://example.org/tiny.onnx"', 'url = "ftp://x/y.onnx"', "url"),
        ("dim = 32", 'dim = 32\nsha256 = "abc"', "sha256"),
        ("dim = 32", "dim = 32\nsize_bytes = -1", "size_bytes"),
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
        models.load_manifest(path)

    assert f"model 'tiny': {field}:" in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_missing_preprocessing_table_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(GOOD_ENTRY.split("[tiny.preprocessing]")[0], encoding="utf-8")

    with pytest.raises(ModelError, match="model 'tiny': preprocessing: missing"):
        models.load_manifest(path)


def test_a_manifest_that_is_not_toml_or_has_stray_keys_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text("[tiny\n", encoding="utf-8")
    with pytest.raises(ModelError, match="not valid TOML"):
        models.load_manifest(path)

    path.write_text('default = "tiny"\n' + GOOD_ENTRY, encoding="utf-8")
    with pytest.raises(ModelError, match=re.escape("default: expected a [table]")):
        models.load_manifest(path)


def test_two_models_cannot_share_a_file_name(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(GOOD_ENTRY + GOOD_ENTRY.replace("[tiny", "[other"), encoding="utf-8")

    with pytest.raises(ModelError, match=re.escape("model 'other': filename: 'tiny.onnx' is also")):
        models.load_manifest(path)


# --- verify ------------------------------------------------------------------------------------


def test_verify_accepts_a_good_file(model_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(model_bytes)
    spec = spec_for(model_bytes, "https://example.org/m.onnx")

    result = models.verify(spec, path)

    assert result.ok and result.problems == []
    assert (result.path, result.size) == (path, len(model_bytes))
    assert result.sha256 == hashlib.sha256(model_bytes).hexdigest()


def test_verify_reports_every_problem(model_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    spec = spec_for(model_bytes, "https://example.org/m.onnx")

    missing = models.verify(spec, path)
    assert not missing.ok and missing.sha256 is None
    assert "imageclust models download tiny-clip" in missing.problems[0]

    path.write_bytes(model_bytes)
    wrong = models.verify(replace(spec, sha256="0" * 64, size_bytes=1, dim=64), path)
    assert not wrong.ok
    assert len(wrong.problems) == 3
    assert any("sha256 mismatch" in p for p in wrong.problems)
    assert any("manifest expects 1" in p for p in wrong.problems)
    assert any("the manifest says 64" in p for p in wrong.problems)

    path.write_bytes(b"not an onnx file")
    junk = models.verify(replace(spec, sha256=None, size_bytes=None), path)
    assert not junk.ok
    assert any("ONNX Runtime cannot load it" in p for p in junk.problems)


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
    assert "ok (your own file (model.path): its contract)" in own.stdout
    named = run_cli("--config", str(config), "models", "verify", "clip-vit-b32")
    assert named.returncode == 1 and "no such file" in named.stdout  # the download's place
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    broken = models.verify(models.load_manifest()["clip-vit-b32"], junk, own_file=True)
    assert not broken.ok and any("ONNX Runtime cannot load it" in p for p in broken.problems)


def test_int8_quantization_keeps_the_contract_and_the_embeddings(tmp_path: Path) -> None:
    import numpy as np

    from imageclust_daemon.embed import Embedder, model_io, open_session

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
