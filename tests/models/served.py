"""A real HTTP server on 127.0.0.1 for the model download tests, and the models it serves.

It serves real tiny ONNX models with the CLIP contracts and real CLIP tokenizer files,
supports Range requests, and misbehaves on demand: drops the connection halfway,
ignores Range, serves the wrong bytes, answers 404 at one revision, hangs. The fixtures
that start it are in conftest.py beside this file.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from imageclust_daemon.model import hub, models
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


# --- helpers -----------------------------------------------------------------------------------


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


def serve_pinned(server: FileServer, spec: ModelSpec, bodies: dict[str, bytes]) -> None:
    """Serve each file of `spec` at its pinned hub path, with the body given for its role."""
    for f in spec.files:
        assert f.repo_path is not None
        server.routes[hub_path(COMMIT, f.repo_path)] = bodies[f.role]


def located_in(data_dir: Path, spec: ModelSpec) -> models.Located:
    paths = {f.role: data_dir / "models" / f.filename for f in spec.files}
    return models.Located(spec, paths, frozenset())


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
