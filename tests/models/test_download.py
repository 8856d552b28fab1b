"""A model file downloaded over real HTTP: verified, atomic, resumed with Range, restarted
when the server ignores it, refused when it is not the file the manifest pins."""

from __future__ import annotations

import fcntl
import hashlib
import json
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from imageclust_daemon.errors import ConfigError, DownloadError
from imageclust_daemon.model import hub, manifest, models
from imageclust_daemon.records import (
    MERGES,
    TOKENIZER,
    VISION,
    VOCAB,
)
from tests.conftest import run_cli, write_config
from tests.models.served import (
    COMMIT,
    FileServer,
    hub_path,
    hub_spec,
    located_in,
    no_part,
    spec_for,
)

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


def test_an_unreachable_server_with_nothing_fetched_says_nothing_was_downloaded(
    model_bytes: bytes, tmp_path: Path
) -> None:
    """Before: "could not reach host.invalid ...; run the download again to resume" when
    nothing had been transferred."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = spec_for(model_bytes, f"http://127.0.0.1:{port}/model.onnx")
    with pytest.raises(DownloadError) as caught:
        hub.download(spec, tmp_path / "model.onnx", timeout=5)
    said = f"{caught.value} {caught.value.next_step}"
    assert "could not reach 127.0.0.1" in said and "nothing was downloaded" in said
    assert "resume" not in said and "it starts from the beginning" in said
    assert no_part(tmp_path / "model.onnx")


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
