"""A small client for Ollama's documented HTTP API: `/api/tags` and `/api/generate`.

The transport is passed in (httpx), so tests can point it anywhere; the real one
talks to a local server. httpx's read timeout applies per chunk, so a server
dripping a byte at a time would never time out: each request also has an
overall deadline, checked as the body streams in. Failures are retried with
exponential backoff and full jitter; an answer that is not a valid label
counts as a failed attempt.
"""

from __future__ import annotations

import base64
import json
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from imageclust_daemon.config import Config
from imageclust_daemon.errors import OllamaError, OllamaModelMissing, OllamaUnavailable
from imageclust_daemon.grouping.label import REPLY_SCHEMA, ReplyError, parse_reply
from imageclust_daemon.records import Label

DEFAULT_HOST = "http://127.0.0.1:11434"
_MAX_BODY = 1 << 20  # a label reply is < 1 KB; anything near 1 MB is garbage


def resolve_host(configured: str, environ: Mapping[str, str]) -> str:
    """`ollama.host`, else $OLLAMA_HOST read as Ollama's own tools read it, else the default.

    OLLAMA_HOST may be "host", "host:port", ":port" or a URL. As in Ollama's envconfig:
    without a scheme it is http on port 11434; "http://" defaults to port 80 and
    "https://" to 443; the host defaults to 127.0.0.1.
    """
    if configured:
        return configured.rstrip("/")
    raw = environ.get("OLLAMA_HOST", "").strip().strip("\"'")  # as Ollama's envconfig.Var
    if not raw:
        return DEFAULT_HOST
    scheme, default_port = "http", "11434"
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
        default_port = {"http": "80", "https": "443"}.get(scheme, default_port)
    m = re.fullmatch(r"(\[[^\]]*\]|[^:/]*)(?::(\d+))?(/.*)?", raw.rstrip("/"))
    if not m:
        return DEFAULT_HOST
    host = m.group(1) or "127.0.0.1"
    port = m.group(2) if m.group(2) and int(m.group(2)) <= 65535 else default_port
    return f"{scheme}://{host}:{port}{m.group(3) or ''}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    base: float = 2.0  # seconds before the first retry
    cap: float = 30.0

    def delay(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**retry)]."""
        return rng.uniform(0.0, min(self.cap, self.base * (2**retry)))


_DEADLINE_GRACE = 0.25  # seconds past the timeout before an exchange is abandoned


class OllamaClient:
    """One model on one Ollama server. Thread-safe (httpx.Client is); close() is idempotent."""

    def __init__(
        self,
        host: str,
        model: str,
        *,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        keep_alive: str = "5m",
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.keep_alive = keep_alive
        self.retry = retry
        self._sleep = sleep
        self._clock = clock  # the deadline's; a test's own clock checks it without waiting
        self._rng = rng or random.Random()
        self._http: httpx.Client | None = httpx.Client(
            base_url=self.host,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
            trust_env=False,  # a proxy must never see a local photo
        )

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> OllamaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request -------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One attempt with an overall deadline; the decoded JSON body, or an OllamaError.

        httpx's timeouts are per read: a server sending its headers (or its body) a byte
        at a time never trips them. So the exchange runs on a daemon thread and is
        abandoned at the deadline; the body loop also checks it, to stop reading then.
        """
        http = self._http
        if http is None:  # closed by a stop: nothing more will be asked this run
            raise OllamaUnavailable(self.host, "client is closed")
        deadline = self._clock() + self.timeout
        outcome: list[tuple[bool, Any]] = []

        def exchange() -> None:
            try:
                outcome.append((True, self._exchange(http, method, path, body, deadline)))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))

        worker = threading.Thread(target=exchange, name="imageclust-ollama", daemon=True)
        worker.start()
        worker.join(self.timeout + _DEADLINE_GRACE)  # httpx's own timeout, if it fires, says more
        if not outcome:
            raise OllamaUnavailable(self.host, f"no full answer in {self.timeout:g} s")
        ok, value = outcome[0]
        if ok:
            return value
        raise value

    def _exchange(
        self,
        http: httpx.Client,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        deadline: float,
    ) -> Any:
        try:
            with http.stream(method, path, json=body) as response:
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if self._clock() > deadline:
                        raise OllamaUnavailable(self.host, f"no full answer in {self.timeout:g} s")
                    if size > _MAX_BODY:
                        raise OllamaError(self.host, "answer is larger than 1 MB")
                status = response.status_code
        except httpx.TimeoutException as exc:
            raise OllamaUnavailable(self.host, f"timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise OllamaUnavailable(
                self.host, f"cannot reach it: {exc or type(exc).__name__}"
            ) from None
        except RuntimeError as exc:  # httpx: "the client has been closed" (a stop)
            raise OllamaUnavailable(self.host, f"client is closed ({exc})") from None
        except httpx.HTTPError as exc:  # a body that does not decode, too many redirects
            raise OllamaError(self.host, f"bad answer: {exc or type(exc).__name__}") from None
        raw = b"".join(chunks)
        try:
            data = json.loads(raw) if raw else None
        except (ValueError, RecursionError):  # also bad UTF-8, an int of > 4300 digits
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if status == 404 and error and "not found" in str(error):
            raise OllamaModelMissing(self.host, f"{error} (run: ollama pull {self.model})")
        if status >= 400:
            raise OllamaError(self.host, f"HTTP {status}: {error or raw[:200]!r}")
        if error:  # errors can arrive with status 200
            raise OllamaError(self.host, f"error: {error}")
        if data is None:
            raise OllamaError(self.host, f"answer is not JSON: {raw[:200]!r}")
        return data

    def has_model(self) -> bool:
        """Whether the server lists the model (GET /api/tags); raises OllamaUnavailable if down."""
        data = self._request("GET", "/api/tags")
        names: set[str] = set()
        for entry in (data.get("models") or []) if isinstance(data, dict) else []:
            if isinstance(entry, dict):
                names.update(str(entry.get(k, "")) for k in ("name", "model"))
        wanted = self.model if ":" in self.model else f"{self.model}:latest"
        return self.model in names or wanted in names

    def generate(self, prompt: str, images: Sequence[bytes]) -> str:
        """One /api/generate call; the model's raw text reply."""
        body = {
            "model": self.model,
            "prompt": prompt,
            "images": [base64.b64encode(img).decode("ascii") for img in images],
            "format": REPLY_SCHEMA,
            "stream": False,
            "keep_alive": self.keep_alive,
            "options": {"temperature": 0.2},
        }
        data = self._request("POST", "/api/generate", body)
        reply = data.get("response") if isinstance(data, dict) else None
        if not isinstance(reply, str):
            raise OllamaError(self.host, "answer has no 'response' text")
        return reply

    # -- a label, with retries ---------------------------------------------------------------

    def label(self, prompt: str, images: Sequence[bytes]) -> Label:
        """A valid label, retrying failed attempts with backoff; raises the last OllamaError."""
        last: OllamaError | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                self._sleep(self.retry.delay(attempt - 1, self._rng))
            if self._http is None:
                raise OllamaUnavailable(self.host, "client is closed")
            try:
                return parse_reply(self.generate(prompt, images))
            except OllamaModelMissing:
                raise  # retrying cannot help
            except ReplyError as exc:
                last = OllamaError(self.host, f"unusable answer: {exc}")
            except OllamaError as exc:
                last = exc
        assert last is not None
        raise last


def client_for(cfg: Config, environ: Mapping[str, str]) -> OllamaClient:
    """The client the config describes (`ollama.*`; $OLLAMA_HOST when `ollama.host` is empty)."""
    return OllamaClient(
        resolve_host(cfg.ollama.host, environ),
        cfg.ollama.model,
        timeout=cfg.ollama.timeout,
        connect_timeout=cfg.ollama.connect_timeout,
        keep_alive=cfg.ollama.keep_alive,
        retry=RetryPolicy(cfg.ollama.attempts, cfg.ollama.backoff_base, cfg.ollama.backoff_cap),
    )
