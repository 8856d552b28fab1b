"""A real HTTP server on 127.0.0.1 that answers as Ollama does, and misbehaves on demand.

Same paths, JSON shapes and error bodies as Ollama's documented API:

    GET  /api/tags      {"models": [{"name": ..., "model": ..., "details": {...}, ...}]}
    POST /api/generate  {"model": ..., "response": "<the model's text>", "done": true, ...}
                        404 {"error": "model \\"X\\" not found, try pulling it first"}

What /api/generate does is chosen per request: the next entry of the script
(`script([...])`), else `default`. Modes:

    "ok"             200, a valid JSON reply: title "Album N", a phrase (N counts ok replies)
    "500"            500 {"error": ...}
    "hang"           answer nothing for `hang_seconds` (then "ok"), or until stop()
    "drip"           200 headers, then the "ok" body one byte every `drip_interval` seconds
    "drip_headers"   the status line and headers themselves one byte every `drip_interval`
    "close"          read the request, then close the socket without a response
    "not_json"       200, the response text is not JSON
    "missing_field"  200, JSON without "catchy_phrase"
    "long_title"     200, a 60-character title of several words
    "error200"       200 {"error": ...}, as Ollama reports an error in a stream
    "model_missing"  404 as for a model that was never pulled
    a dict           200, that dict as the model's JSON reply

A model not in `models` gets the 404 whatever the mode. Every request is
recorded (thread-safely) before it is answered. stop() ends every open
connection and joins every handler thread, so a test never leaks one;
start() again binds the same port ("server down, then back").
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Mode = str | dict[str, Any]

MODES = (
    "ok",
    "500",
    "hang",
    "drip",
    "drip_headers",
    "close",
    "not_json",
    "missing_field",
    "long_title",
    "error200",
    "model_missing",
)

# 60 characters, several words: the first 25 end at a word boundary ("...afternoons").
LONG_TITLE = "Endless summer afternoons on the wild windy beaches of Devon"
assert len(LONG_TITLE) == 60


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: Any  # the parsed JSON body; None when there was none or it was not JSON
    mode: Mode | None  # what /api/generate answered with; None for other paths


class FakeOllama:
    """An Ollama look-alike on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(
        self,
        models: Iterable[str] = ("llava:latest",),
        *,
        default: Mode = "ok",
        hang_seconds: float = 30.0,
        drip_interval: float = 0.3,
        port: int = 0,
    ) -> None:
        self.models = list(models)
        self.default = default
        self.hang_seconds = hang_seconds
        self.drip_interval = drip_interval
        self.port = port
        self._lock = threading.Lock()
        self._script: deque[Mode] = deque()
        self._requests: list[Request] = []
        self._ok_count = 0
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FakeOllama:
        """Listen (on the same port as before, after a stop) and serve in a thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.fake = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-ollama-{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Refuse new connections, end open ones, join every thread. Idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()  # wakes "hang" and "drip"
        server.shutdown()
        thread.join()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:  # a keep-alive connection waits for its next request
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()  # joins the handler threads (block_on_close)
        self._server = self._thread = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it will do and what it saw -----------------------------------------------------

    def script(self, modes: Iterable[Mode]) -> None:
        """Answer the next /api/generate requests with these modes, then with `default`."""
        for mode in modes:
            if isinstance(mode, str) and mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
            with self._lock:
                self._script.append(mode)

    def requests(self, path: str | None = None) -> list[Request]:
        """Every request received so far (to `path` only, if given), oldest first."""
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def generate_requests(self) -> list[Request]:
        return self.requests("/api/generate")

    def clear(self) -> None:
        """Forget recorded requests and any scripted modes left."""
        with self._lock:
            self._requests.clear()
            self._script.clear()

    # -- used by the handler -----------------------------------------------------------------

    def _next_mode(self) -> Mode:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def _ok_reply(self) -> dict[str, str]:
        with self._lock:
            self._ok_count += 1
            n = self._ok_count
        return {"title": f"Album {n}", "catchy_phrase": f"Moments worth keeping, number {n}"}

    def _has(self, model: Any) -> bool:
        """As Ollama resolves names: "llava" is "llava:latest"."""
        if not isinstance(model, str) or not model:
            return False
        return model in self.models or (":" not in model and f"{model}:latest" in self.models)

    def _track(self, sock: socket.socket, open_: bool) -> None:
        with self._lock:
            if not open_:
                self._sockets.discard(sock)
                return
            self._sockets.add(sock)
            if self._stopping.is_set():  # accepted just as stop() began: end it too
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _wait(self, seconds: float) -> bool:
        """Sleep unless the server stops first; True if it is stopping."""
        return self._stopping.wait(seconds)


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(), so none outlives stop().
    daemon_threads = False
    block_on_close = True
    fake: FakeOllama

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hung up (timeouts, "close"): expected here, not worth a traceback


def _generate_response(model: str, text: str) -> dict[str, Any]:
    """The body Ollama sends for a non-streamed /api/generate."""
    return {
        "model": model,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "response": text,
        "done": True,
        "done_reason": "stop",
        "context": [1, 2, 3],
        "total_duration": 1_234_567_890,
        "load_duration": 12_345_678,
        "prompt_eval_count": 812,
        "prompt_eval_duration": 456_789_012,
        "eval_count": 24,
        "eval_duration": 345_678_901,
    }


def _tag(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-05-01T10:00:00.000000000+02:00",
        "size": 123,
        "digest": "f" * 64,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama", "clip"],
            "parameter_size": "7B",
            "quantization_level": "Q4_0",
        },
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Ollama (Go's net/http) does
    # A backstop: an idle connection stop() somehow missed still ends within 10 s,
    # so server_close() (which joins every handler thread) cannot block for ever.
    timeout = 10.0
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        self.server.fake._track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet tests

    # -- routes ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        fake = self.server.fake
        fake._record(Request("GET", self.path, None, None))
        if self.path == "/api/tags":
            self._json(200, {"models": [_tag(m) for m in fake.models]})
        elif self.path in ("/", "/api/version"):
            self._json(200, {"version": "0.9.0"})
        else:
            self._text(404, "404 page not found")

    def do_POST(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        if self.path != "/api/generate":
            fake._record(Request("POST", self.path, body, None))
            self._text(404, "404 page not found")
            return
        mode = fake._next_mode()
        fake._record(Request("POST", self.path, body, mode))
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(body, dict):
            self._json(400, {"error": "invalid request body"})
        elif not isinstance(model, str) or not model:
            self._json(400, {"error": "model is required"})
        elif mode == "model_missing" or not fake._has(model):
            self._json(404, {"error": f'model "{model}" not found, try pulling it first'})
        elif isinstance(mode, dict):
            self._json(200, _generate_response(model, json.dumps(mode)))
        elif mode == "ok":
            self._json(200, _generate_response(model, json.dumps(fake._ok_reply())))
        elif mode == "500":
            self._json(500, {"error": "llama runner process has terminated: exit status 2"})
        elif mode == "hang":
            if not fake._wait(fake.hang_seconds):
                self._json(200, _generate_response(model, json.dumps(fake._ok_reply())))
            self.close_connection = True
        elif mode == "drip":
            self._drip(_generate_response(model, json.dumps(fake._ok_reply())))
        elif mode == "drip_headers":
            self._drip_headers(_generate_response(model, json.dumps(fake._ok_reply())))
        elif mode == "close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif mode == "not_json":
            self._json(200, _generate_response(model, "Sure! Here is a title: Summer by the sea"))
        elif mode == "missing_field":
            self._json(200, _generate_response(model, json.dumps({"title": "Summer by the sea"})))
        elif mode == "long_title":
            reply = {"title": LONG_TITLE, "catchy_phrase": "Sun, salt and long evenings"}
            self._json(200, _generate_response(model, json.dumps(reply)))
        elif mode == "error200":
            self._json(200, {"error": "an error was encountered while running the model"})
        else:  # script() checks names; a bad `default` lands here
            self._json(500, {"error": f"FakeOllama: unknown mode {mode!r}"})

    # -- helpers -----------------------------------------------------------------------------

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, "application/json; charset=utf-8", json.dumps(data).encode())

    def _text(self, status: int, text: str) -> None:
        self._send(status, "text/plain; charset=utf-8", text.encode())

    def _drip_headers(self, data: Any) -> None:
        payload = json.dumps(data).encode()
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"X-Padding: {'x' * 200}\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        self.close_connection = True
        for i in range(len(head)):
            if self.server.fake._wait(self.server.fake.drip_interval):
                return
            self.wfile.write(head[i : i + 1])
            self.wfile.flush()
        self.wfile.write(payload)

    def _drip(self, data: Any) -> None:
        payload = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        for i in range(len(payload)):
            if self.server.fake._wait(self.server.fake.drip_interval):
                return
            self.wfile.write(payload[i : i + 1])
            self.wfile.flush()
