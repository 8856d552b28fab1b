"""OllamaClient against a real HTTP server on 127.0.0.1 that answers as Ollama does."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable, Iterator

import pytest

from imageclust_daemon.errors import OllamaError, OllamaModelMissing, OllamaUnavailable
from imageclust_daemon.grouping.label import REPLY_SCHEMA, TITLE_MAX, Label
from imageclust_daemon.grouping.ollama import DEFAULT_HOST, OllamaClient, RetryPolicy, resolve_host
from tests.ollama_server import LONG_TITLE, FakeOllama

BASE = 0.05  # backoff base in these tests: seconds, not the 2 s of the default
PROMPT = "Name this album."
MakeClient = Callable[..., OllamaClient]
IMAGES = [b"\xff\xd8\xff\xe0 first jpeg", b"\xff\xd8\xff\xe0 second jpeg \x00\x01"]


class Recorder:
    """A `sleep` that records what it was asked to wait, and waits it."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        time.sleep(seconds)


class StepClock:
    """The client's clock for its deadline: moves `step` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class MaxRandom(random.Random):
    """Jitter that always picks the top of its range, to check the backoff's bounds."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def make_client(fake_ollama: FakeOllama) -> Iterator[MakeClient]:
    clients: list[OllamaClient] = []

    def make(
        *,
        model: str = "llava",
        timeout: float = 2.0,
        attempts: int = 3,
        sleep: Recorder | None = None,
        rng: random.Random | None = None,
        keep_alive: str = "5m",
        clock: Callable[[], float] = time.monotonic,
    ) -> OllamaClient:
        client = OllamaClient(
            fake_ollama.url,
            model,
            timeout=timeout,
            connect_timeout=1.0,
            keep_alive=keep_alive,
            retry=RetryPolicy(attempts=attempts, base=BASE, cap=1.0),
            sleep=sleep or Recorder(),
            rng=rng or random.Random(0),
            clock=clock,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_a_well_formed_reply_is_a_label(fake_ollama: FakeOllama, make_client: MakeClient) -> None:
    client = make_client(keep_alive="10m")
    label = client.label(PROMPT, IMAGES)
    assert label == Label("Album 1", "Moments worth keeping, number 1", "ollama")
    [request] = fake_ollama.generate_requests()
    body = request.body
    assert body["model"] == "llava"
    assert body["prompt"] == PROMPT
    assert body["stream"] is False
    assert body["format"] == REPLY_SCHEMA
    assert body["keep_alive"] == "10m"
    assert body["options"]["temperature"] <= 0.3
    assert all(isinstance(image, str) for image in body["images"])
    assert [base64.b64decode(image, validate=True) for image in body["images"]] == IMAGES


def test_500_then_ok_succeeds_on_the_second_attempt(
    fake_ollama: FakeOllama, make_client: MakeClient
) -> None:
    fake_ollama.script(["500", "ok"])
    sleep = Recorder()
    label = make_client(sleep=sleep, rng=random.Random()).label(PROMPT, IMAGES)
    assert label.title == "Album 1"
    assert [r.mode for r in fake_ollama.generate_requests()] == ["500", "ok"]
    [delay] = sleep.calls
    assert 0 <= delay <= BASE


def test_backoff_doubles_up_to_the_cap(fake_ollama: FakeOllama, make_client: MakeClient) -> None:
    fake_ollama.script(["500", "500", "ok"])
    sleep = Recorder()
    assert make_client(sleep=sleep, rng=MaxRandom()).label(PROMPT, IMAGES).source == "ollama"
    assert sleep.calls == [BASE, 2 * BASE]
    assert len(fake_ollama.generate_requests()) == 3
    policy = RetryPolicy(attempts=10, base=2.0, cap=30.0)
    assert [policy.delay(r, MaxRandom()) for r in range(6)] == [2, 4, 8, 16, 30, 30]
    rng = random.Random(1)
    assert all(0 <= policy.delay(r, rng) <= min(30.0, 2.0 * 2**r) for r in range(20))


def test_500_every_time_is_an_error_after_all_attempts(
    fake_ollama: FakeOllama, make_client: MakeClient
) -> None:
    fake_ollama.default = "500"
    with pytest.raises(OllamaError, match=r"HTTP 500.*llama runner") as caught:
        make_client(attempts=3).label(PROMPT, IMAGES)
    assert type(caught.value) is OllamaError
    assert len(fake_ollama.generate_requests()) == 3


def test_a_hang_times_out_on_every_attempt(
    fake_ollama: FakeOllama, make_client: MakeClient
) -> None:
    fake_ollama.default = "hang"
    client = make_client(timeout=1.0, attempts=2)
    start = time.monotonic()
    with pytest.raises(OllamaUnavailable, match="timed out"):
        client.label(PROMPT, IMAGES)
    # A hang is cut by real time only: each attempt waited its timeout (a lower bound
    # holds on a loaded machine; the upper one only says it did not wait the default 120 s).
    assert 1.9 <= time.monotonic() - start < 60
    assert len(fake_ollama.generate_requests()) == 2


def test_a_slow_answer_within_the_timeout_is_accepted(
    fake_ollama: FakeOllama, make_client: MakeClient
) -> None:
    fake_ollama.hang_seconds = 0.3
    fake_ollama.script(["hang"])
    assert make_client(timeout=2.0, attempts=1).label(PROMPT, IMAGES).title == "Album 1"


def test_a_drip_is_cut_by_the_overall_deadline(
    fake_ollama: FakeOllama, make_client: MakeClient
) -> None:
    # Each byte comes well within the read timeout, so only the overall deadline stops it:
    # checked as the body comes in, on the client's clock (here one that moves a second a
    # look, so the deadline of 3 s passes after a few bytes, however slow the machine).
    fake_ollama.default = "drip"
    fake_ollama.drip_interval = 0.01
    clock = StepClock(step=1.0)
    client = make_client(timeout=3.0, attempts=1, clock=clock)
    with pytest.raises(OllamaUnavailable, match="no full answer in 3 s"):
        client.label(PROMPT, IMAGES)
    # The body loop read the clock past the deadline; had only the real-time net (3.25 s)
    # cut it, the clock would have been read once, for the deadline.
    assert clock.now > 3.0
    assert len(fake_ollama.generate_requests()) == 1


def test_headers_dripping_are_cut_by_the_overall_deadline(
    fake_ollama: FakeOllama, make_client: MakeClient
) -> None:
    """The deadline holds before the headers are in, too (a read timeout never fires)."""
    fake_ollama.default = "drip_headers"
    client = make_client(timeout=1.0, attempts=1)
    start = time.monotonic()
    with pytest.raises(OllamaUnavailable, match="no full answer in 1 s"):
        client.label(PROMPT, IMAGES)
    # No byte of the body to look at the clock on: the real-time net cuts it (bounds loose
    # enough for a loaded machine; the read timeout alone would never fire).
    assert 0.9 <= time.monotonic() - start < 30
    client.close()
    fake_ollama.stop()  # ends the abandoned exchange


def test_a_closed_connection_is_unavailable_after_all_attempts(
    fake_ollama: FakeOllama, make_client: MakeClient
) -> None:
    fake_ollama.default = "close"
    with pytest.raises(OllamaUnavailable, match="cannot reach it"):
        make_client(attempts=3).label(PROMPT, IMAGES)
    assert len(fake_ollama.generate_requests()) == 3


@pytest.mark.parametrize("mode", ["not_json", "missing_field"])
def test_an_unusable_answer_is_an_error_after_all_attempts(
    fake_ollama: FakeOllama,
    make_client: MakeClient,
    mode: str,
) -> None:
    fake_ollama.default = mode
    with pytest.raises(OllamaError, match="unusable answer") as caught:
        make_client(attempts=2).label(PROMPT, IMAGES)
    assert type(caught.value) is OllamaError
    assert len(fake_ollama.generate_requests()) == 2


def test_failures_of_each_kind_then_ok(fake_ollama: FakeOllama, make_client: MakeClient) -> None:
    fake_ollama.script(["close", "not_json", "error200", "missing_field", "ok"])
    assert make_client(attempts=5).label(PROMPT, IMAGES).title == "Album 1"
    assert len(fake_ollama.generate_requests()) == 5


def test_a_long_title_is_cut_at_a_word_boundary(
    fake_ollama: FakeOllama, make_client: MakeClient
) -> None:
    fake_ollama.default = "long_title"
    label = make_client(attempts=1).label(PROMPT, IMAGES)
    assert len(LONG_TITLE) == 60
    assert label.title == "Endless summer afternoons"
    assert len(label.title) <= TITLE_MAX
    assert LONG_TITLE.startswith(label.title + " ")
    assert label.source == "ollama"


def test_an_error_with_status_200_is_an_error(
    fake_ollama: FakeOllama, make_client: MakeClient
) -> None:
    fake_ollama.default = "error200"
    with pytest.raises(OllamaError, match="error was encountered") as caught:
        make_client(attempts=2).label(PROMPT, IMAGES)
    assert type(caught.value) is OllamaError
    assert len(fake_ollama.generate_requests()) == 2


def test_an_oversized_answer_is_an_error(fake_ollama: FakeOllama, make_client: MakeClient) -> None:
    fake_ollama.script([{"title": "Big", "catchy_phrase": "x" * 2_000_000}])
    with pytest.raises(OllamaError, match="larger than 1 MB"):
        make_client(attempts=1).label(PROMPT, IMAGES)


def test_a_missing_model_is_not_retried(fake_ollama: FakeOllama, make_client: MakeClient) -> None:
    fake_ollama.script(["model_missing"])
    sleep = Recorder()
    with pytest.raises(OllamaModelMissing, match=r"not found.*ollama pull llava"):
        make_client(attempts=3, sleep=sleep).label(PROMPT, IMAGES)
    assert len(fake_ollama.generate_requests()) == 1
    assert sleep.calls == []


def test_a_model_the_server_lacks_is_missing(
    fake_ollama: FakeOllama, make_client: MakeClient
) -> None:
    with pytest.raises(OllamaModelMissing, match='model "moondream" not found'):
        make_client(model="moondream", attempts=3).label(PROMPT, IMAGES)
    assert len(fake_ollama.generate_requests()) == 1


def test_has_model_reads_the_tags(fake_ollama: FakeOllama, make_client: MakeClient) -> None:
    fake_ollama.models = ["llava:latest", "gemma3:4b"]
    assert make_client(model="llava").has_model()  # no tag means ":latest"
    assert make_client(model="llava:latest").has_model()
    assert make_client(model="gemma3:4b").has_model()
    assert not make_client(model="gemma3").has_model()  # there is no gemma3:latest
    assert not make_client(model="llava:13b").has_model()
    assert not make_client(model="moondream").has_model()
    fake_ollama.models = []
    assert not make_client(model="llava").has_model()
    assert len(fake_ollama.requests("/api/tags")) == 7
    assert fake_ollama.generate_requests() == []


def test_a_refused_connection_is_unavailable_fast(
    fake_ollama: FakeOllama, make_client: MakeClient
) -> None:
    sleep = Recorder()
    client = make_client(attempts=2, sleep=sleep)
    fake_ollama.stop()
    start = time.monotonic()
    with pytest.raises(OllamaUnavailable, match="cannot reach it"):
        client.label(PROMPT, IMAGES)
    with pytest.raises(OllamaUnavailable):
        client.has_model()
    # No timeout was waited for: the waits are the backoff's alone (recorded, not slept)
    assert sum(sleep.calls) <= BASE * 2
    assert time.monotonic() - start < 30  # (and no connect timeout of seconds)


def test_a_server_down_then_back(fake_ollama: FakeOllama, make_client: MakeClient) -> None:
    client = make_client(attempts=1)
    assert client.label(PROMPT, IMAGES).title == "Album 1"
    port = fake_ollama.port
    fake_ollama.stop()
    with pytest.raises(OllamaUnavailable):
        client.label(PROMPT, IMAGES)
    fake_ollama.start()
    assert fake_ollama.port == port
    assert client.label(PROMPT, IMAGES).title == "Album 2"


def test_stop_ends_hanging_and_dripping_requests_promptly() -> None:
    server = FakeOllama(default="hang").start()
    clients = [
        OllamaClient(server.url, "llava", timeout=0.5, retry=RetryPolicy(attempts=1))
        for _ in range(2)
    ]
    try:
        with pytest.raises(OllamaUnavailable):
            clients[0].label(PROMPT, IMAGES)  # its handler still waits on the server
        server.default = "drip"
        with pytest.raises(OllamaUnavailable):
            clients[1].label(PROMPT, IMAGES)
    finally:
        for client in clients:
            client.close()
        start = time.monotonic()
        server.stop()
        server.stop()  # idempotent
    # its handlers wait on the stop event, not out their hang (30 s) or drip
    assert time.monotonic() - start < 20


def test_a_closed_client_refuses_to_ask(fake_ollama: FakeOllama, make_client: MakeClient) -> None:
    client = make_client()
    client.close()
    client.close()  # idempotent
    with pytest.raises(OllamaError, match="client is closed"):
        client.label(PROMPT, IMAGES)
    assert fake_ollama.requests() == []


@pytest.mark.parametrize(
    ("configured", "env", "expected"),
    [
        ("", None, DEFAULT_HOST),
        ("", "", DEFAULT_HOST),
        ("", "   ", DEFAULT_HOST),
        ("http://gpu-box:11434/", "elsewhere:1", "http://gpu-box:11434"),  # the config wins
        ("", "0.0.0.0", "http://0.0.0.0:11434"),
        ("", "  localhost  ", "http://localhost:11434"),
        ("", "example.com:8080", "http://example.com:8080"),
        ("", ":11435", "http://127.0.0.1:11435"),
        ("", "http://example.com", "http://example.com:80"),
        ("", "https://example.com", "https://example.com:443"),
        ("", "https://example.com:8443/ollama/", "https://example.com:8443/ollama"),
        ("", "[::1]:11435", "http://[::1]:11435"),
        ("", "[::1]", "http://[::1]:11434"),
        ("", '"localhost:1234"', "http://localhost:1234"),  # quotes trimmed, as Ollama does
        ("", "host:99999", "http://host:11434"),  # a bad port falls back, as Ollama does
    ],
)
def test_resolve_host(configured: str, env: str | None, expected: str) -> None:
    environ = {} if env is None else {"OLLAMA_HOST": env}
    assert resolve_host(configured, environ) == expected
