"""Models: the manifest, downloads over real HTTP (resume, restart, refusals), verify.

Downloads run against a real HTTP server on 127.0.0.1 that serves real tiny
ONNX models with the CLIP contracts and real CLIP tokenizer files, supports
Range requests, and can misbehave on demand: drop the connection halfway,
ignore Range, serve the wrong bytes, answer 404 at one revision, hang.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from imageclust_daemon.errors import ConfigError, DownloadError, ModelError
from imageclust_daemon.model import hub, manifest, models
from imageclust_daemon.records import (
    MERGES,
    ROLES,
    TEXT,
    TOKENIZER,
    VISION,
    VOCAB,
    ModelFile,
    ModelSpec,
    Preprocessing,
)
from tests.clip_vocab import clip_vocab, write_tokenizer_json
from tests.conftest import run_cli, write_config
from tests.onnx_models import build_tiny_clip, build_tiny_clip_text

# --- a file server that misbehaves on demand ---------------------------------------------------


@dataclass
class Served:
    """One request the server answered."""

    range: str | None
    status: int
    sent: int  # body bytes written
    path: str = ""


@dataclass
class FileServer:
    """What the server serves and how; tests change these fields between downloads."""

    url: str  # serves `body`; `redirect_url` answers with a 302 to it, like a CDN front
    redirect_url: str = ""
    body: bytes = b""
    routes: dict[str, bytes] = field(default_factory=dict)  # more files, by URL path
    ignore_range: bool = False
    hang: threading.Event | None = None  # set: every request waits for it before answering
    drop_next_after: int | None = None  # the next response stops after this many body bytes
    fail_with: int | None = None  # answer every request with this status and no body
    requests: list[Served] = field(default_factory=list)
    base: str = ""  # http://127.0.0.1:PORT


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        state = self.server.state
        if state.hang is not None:
            state.hang.wait(timeout=30)  # a server that takes the request and says nothing
            return
        asked = self.headers.get("Range")
        if self.path == "/redirect":
            self._answer(asked, 302, b"", {"Location": "/model.onnx"})
            return
        if state.fail_with is not None:
            self._answer(asked, state.fail_with, b"", {})
            return
        if self.path == "/model.onnx":
            body = state.body
        elif self.path in state.routes:
            body = state.routes[self.path]
        else:
            self._answer(asked, 404, b"", {})
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
        chunk = payload if limit is None else payload[:limit]
        # Recorded before answering: the client may act on the answer before this thread resumes.
        state.requests.append(Served(asked, status, len(chunk), self.path))
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))  # the full length, even if dropping
        self.send_header("Accept-Ranges", "bytes")
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(chunk)
            self.wfile.flush()
        except ConnectionError:
            pass  # the client gave up first (a refused download); nothing to do
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


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = build_tiny_clip(tmp_path_factory.mktemp("served") / "tiny.onnx", dim=32, seed=7)
    return path.read_bytes()


def spec_for(body: bytes, url: str, *, dim: int = 32, **changes: Any) -> ModelSpec:
    """A one-file model whose vision tower is `body` at `url`; `changes` edit that file."""
    vision = ModelFile(
        VISION,
        "tiny-clip.onnx",
        url=url,
        sha256=hashlib.sha256(body).hexdigest(),
        size_bytes=len(body),
        input_name="pixel_values",
        output_name="image_embeds",
    )
    return ModelSpec(
        name="tiny-clip",
        title="Tiny CLIP-contract test model",
        dim=dim,
        files=(replace(vision, **changes),),
        preprocessing=Preprocessing(),
    )


def no_part(dest: Path) -> bool:
    return not hub.part_path(dest).exists()


# --- download ----------------------------------------------------------------------------------


def test_a_good_file_downloads_verifies_and_lands_at_dest(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.url)
    dest = manifest.model_file(tmp_path / "data", spec)  # the folders do not exist yet
    calls: list[tuple[int, int | None]] = []

    result = hub.download(spec, dest, progress=lambda done, total: calls.append((done, total)))

    assert result.path == dest == tmp_path / "data" / "models" / "tiny-clip.onnx"
    assert (result.url, result.fallback) == (server.url, False)
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
        hub.download(spec, dest, timeout=5)

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
    part = hub.part_path(dest)

    with pytest.raises(DownloadError) as caught:
        hub.download(spec, dest, timeout=5)

    assert f"stopped at {half} of {len(model_bytes)} bytes" in str(caught.value)
    assert not dest.exists()
    assert part.read_bytes() == model_bytes[:half]

    hub.download(spec, dest, timeout=5)

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
    hub.part_path(dest).write_bytes(b"stale bytes from some other file")

    hub.download(spec, dest, timeout=5)

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
    hub.part_path(dest).write_bytes(stale)

    hub.download(spec, dest, timeout=5)

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
    hub.part_path(dest).write_bytes(model_bytes)  # an earlier run stopped before the rename

    hub.download(spec, dest, timeout=5)

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
        hub.download(spec, dest, timeout=5)

    assert not dest.exists()
    assert no_part(dest)


def test_a_model_with_another_embedding_size_is_refused(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.url, sha256=None, dim=512)
    dest = tmp_path / "model.onnx"

    with pytest.raises(DownloadError, match="has 32 values, the manifest says 512"):
        hub.download(spec, dest, timeout=5)

    assert not dest.exists()
    assert no_part(dest)


def test_a_server_offering_another_size_is_refused_before_the_transfer(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.url, size_bytes=len(model_bytes) + 1)
    dest = tmp_path / "model.onnx"

    with pytest.raises(DownloadError, match=f"offers {len(model_bytes)} bytes"):
        hub.download(spec, dest, timeout=5)

    assert not dest.exists()
    assert no_part(dest)  # nothing arrived, so no empty .part is left behind


def test_an_http_error_status_is_a_download_error_and_keeps_the_part(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    server.fail_with = 503
    spec = spec_for(model_bytes, server.url)
    dest = tmp_path / "model.onnx"
    hub.part_path(dest).write_bytes(model_bytes[:10])

    with pytest.raises(DownloadError, match="HTTP 503"):
        hub.download(spec, dest, timeout=5)

    assert not dest.exists()
    assert hub.part_path(dest).read_bytes() == model_bytes[:10]  # still a good prefix


def test_an_unreachable_server_is_a_download_error_and_keeps_the_part(
    model_bytes: bytes, tmp_path: Path
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = spec_for(model_bytes, f"http://127.0.0.1:{port}/model.onnx")
    dest = tmp_path / "model.onnx"
    hub.part_path(dest).write_bytes(model_bytes[:10])

    with pytest.raises(DownloadError, match=f"stopped at 10 of {len(model_bytes)} bytes"):
        hub.download(spec, dest, timeout=5)

    assert hub.part_path(dest).read_bytes() == model_bytes[:10]


def test_a_redirect_is_followed_and_keeps_the_range(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.redirect_url)  # Hugging Face redirects to its CDN
    dest = tmp_path / "model.onnx"
    hub.part_path(dest).write_bytes(model_bytes[:100])

    hub.download(spec, dest, timeout=5)

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
    part = hub.part_path(dest)
    part.write_bytes(model_bytes[:10])

    with open(part, "ab") as busy:
        fcntl.flock(busy.fileno(), fcntl.LOCK_EX)  # another process downloading
        with pytest.raises(DownloadError, match="in progress"):
            hub.download(spec, dest, timeout=5)

    assert part.read_bytes() == model_bytes[:10]  # untouched
    assert server.requests == []


def test_a_model_without_a_url_cannot_be_downloaded(tmp_path: Path) -> None:
    spec = manifest.load_manifest()["efficientnet-lite0-imagenet"]
    with pytest.raises(DownloadError, match="no URL"):
        hub.download(spec, tmp_path / "m.onnx")


def test_an_explicit_url_overrides_the_manifest(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, "https://example.invalid/never-used.onnx")
    dest = tmp_path / "model.onnx"

    hub.download(spec, dest, url=server.url, timeout=5)

    assert dest.read_bytes() == model_bytes


# --- the pinned revision gone, mirrors, whole models ------------------------------------------

REPO = "Test/tiny-clip"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_path(revision: str, repo_path: str) -> str:
    return f"/{REPO}/resolve/{revision}/{repo_path}"


def hub_spec(files: dict[str, tuple[str, bytes]], **file_changes: Any) -> ModelSpec:
    """A model on a hub at COMMIT: {role: (path in the repo, the file's bytes)}."""
    made = []
    for role in ROLES:
        if role not in files:
            continue
        repo_path, body = files[role]
        names = {
            VISION: ("pixel_values", "image_embeds"),
            TEXT: ("input_ids", "text_embeds"),
        }.get(role, (None, None))
        probe = ("a photo of a cat", PROBE_IDS) if role == TOKENIZER else (None, ())
        made.append(
            ModelFile(
                role,
                f"tiny-{role}{Path(repo_path).suffix}",
                repo_path=repo_path,
                sha256=hashlib.sha256(body).hexdigest(),
                size_bytes=len(body),
                input_name=names[0],
                output_name=names[1],
                probe_text=probe[0],
                probe_ids=probe[1],
            )
        )
    made = [replace(f, **file_changes.get(f.role, {})) for f in made]
    return ModelSpec(
        name="tiny-clip",
        title="Tiny CLIP",
        dim=32,
        files=tuple(made),
        repo=REPO,
        revision=COMMIT,
    )


PROBE_IDS = (49406, 320, 1125, 539, 320, 2368, 49407)


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


def whole_model(model_bytes: bytes, text_bytes: bytes, tok: dict[str, bytes]) -> ModelSpec:
    return hub_spec(
        {
            VISION: ("onnx/vision_model.onnx", model_bytes),
            TEXT: ("onnx/text_model.onnx", text_bytes),
            VOCAB: ("vocab.json", tok[VOCAB]),
            MERGES: ("merges.txt", tok[MERGES]),
            TOKENIZER: ("tokenizer.json", tok[TOKENIZER]),
        }
    )


def serve_pinned(server: FileServer, spec: ModelSpec, bodies: dict[str, bytes]) -> None:
    """Serve each file of `spec` at its pinned hub path, with the body given for its role."""
    for f in spec.files:
        assert f.repo_path is not None
        server.routes[hub_path(COMMIT, f.repo_path)] = bodies[f.role]


def located_in(data_dir: Path, spec: ModelSpec) -> models.Located:
    paths = {f.role: data_dir / "models" / f.filename for f in spec.files}
    return models.Located(spec, paths, frozenset())


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


def test_a_server_that_never_answers_times_out_and_leaves_nothing(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.hang = threading.Event()
    spec = spec_for(model_bytes, server.url)
    dest = tmp_path / "model.onnx"

    with pytest.raises(DownloadError, match=r"stopped at 0 of|could not reach") as caught:
        hub.download(spec, dest, timeout=1)

    assert "run the same command again" in str(caught.value)
    assert not dest.exists() and no_part(dest)


def test_a_500_says_to_try_later(server: FileServer, model_bytes: bytes, tmp_path: Path) -> None:
    server.fail_with = 500
    spec = hub_spec({VISION: ("onnx/vision_model.onnx", model_bytes)})

    with pytest.raises(DownloadError, match="HTTP 500") as caught:
        hub.download(spec, tmp_path / "v.onnx", endpoint=server.base, timeout=5)

    assert "try again later" in str(caught.value)
    assert len(server.requests) == 1  # a server error is not a reason to try main


def test_a_tokenizer_that_does_not_parse_or_encodes_otherwise_is_refused(
    server: FileServer, tokenizer_files: dict[str, bytes], tmp_path: Path
) -> None:
    good = json.loads(tokenizer_files[TOKENIZER])
    shuffled = dict(good)
    vocab = dict(good["model"]["vocab"])
    vocab["photo</w>"], vocab["cat</w>"] = vocab["cat</w>"], vocab["photo</w>"]
    shuffled["model"] = {**good["model"], "vocab": vocab}
    cases = {
        "not json": (b"{not json", "not a usable tokenizer.json"),
        "other ids": (
            json.dumps(shuffled).encode(),
            "encodes 'a photo of a cat' as [49406, 320, 2368, 539, 320, 1125, 49407]",
        ),
    }
    for body, expected in cases.values():
        spec = hub_spec({TOKENIZER: ("tokenizer.json", body)})
        server.routes[hub_path(COMMIT, "tokenizer.json")] = body
        dest = tmp_path / "tokenizer.json"

        with pytest.raises(DownloadError) as caught:
            hub.download(spec, dest, role=TOKENIZER, endpoint=server.base, timeout=5)

        assert expected in str(caught.value)
        assert not dest.exists() and no_part(dest)


def test_a_tokenizer_with_another_vocabulary_than_vocab_json_is_refused(
    tokenizer_files: dict[str, bytes], tmp_path: Path
) -> None:
    spec = hub_spec(
        {
            VOCAB: ("vocab.json", tokenizer_files[VOCAB]),
            MERGES: ("merges.txt", tokenizer_files[MERGES]),
            TOKENIZER: ("tokenizer.json", tokenizer_files[TOKENIZER]),
        }
    )
    located = located_in(tmp_path, spec)
    for role, body in tokenizer_files.items():
        located.paths[role].parent.mkdir(parents=True, exist_ok=True)
        located.paths[role].write_bytes(body)
    assert all(r.ok for r in models.verify(located))

    tok = json.loads(tokenizer_files[TOKENIZER])
    tok["model"]["merges"] = tok["model"]["merges"][:-1]  # one merge short: same probe ids
    located.paths[TOKENIZER].write_text(json.dumps(tok), encoding="utf-8")
    own = replace(located, own=frozenset({TOKENIZER}))  # no checksum: the content decides

    (report,) = [r for r in models.verify(own) if r.role == TOKENIZER]
    assert report.problems == ("its merges are not the ones in tiny-merges.txt",)


def test_a_leftover_complete_part_of_another_file_is_fetched_again(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.url)
    dest = tmp_path / "model.onnx"
    hub.part_path(dest).write_bytes(bytes(len(model_bytes)))  # right size, wrong bytes

    fetched = hub.download(spec, dest, timeout=5)

    assert dest.read_bytes() == model_bytes and no_part(dest)
    assert fetched.url == server.url
    assert [(r.range, r.status) for r in server.requests] == [(None, 200)]


def test_a_server_offering_another_size_says_what_to_do(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    spec = hub_spec({VISION: ("onnx/vision_model.onnx", model_bytes)})
    server.routes[hub_path(COMMIT, "onnx/vision_model.onnx")] = model_bytes + b"x"

    with pytest.raises(DownloadError, match="offers") as caught:
        hub.download(spec, tmp_path / "v.onnx", endpoint=server.base, timeout=5)

    assert "next: the server sent another file" in str(caught.value)


def test_a_folder_where_a_model_file_goes_is_named(
    server: FileServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.body = model_bytes
    spec = spec_for(model_bytes, server.url)
    located = located_in(tmp_path, spec)
    located.paths[VISION].mkdir(parents=True)

    with pytest.raises(DownloadError, match="is a folder, where the vision file goes"):
        hub.download_model(located, timeout=5)
    (report,) = models.verify(located)
    assert report.problems == (f"{located.paths[VISION]}: not a file (a folder?)",)
    assert server.requests == []


@pytest.mark.parametrize("value", ["127.0.0.1:8080", "ftp://mirror", "http://[::1"])
def test_a_bad_hf_endpoint_is_named(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        hub.endpoint_from({"HF_ENDPOINT": value})
    assert caught.value.key == "$HF_ENDPOINT"

    config = write_config(tmp_path / "c.toml", storage={"data_dir": str(tmp_path / "data")})
    done = run_cli("--config", str(config), "models", "download", env={"HF_ENDPOINT": value})
    assert done.returncode == 2 and "$HF_ENDPOINT" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


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
