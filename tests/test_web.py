"""The web gallery over real HTTP: a uvicorn server on 127.0.0.1 in front of a library
indexed by the `imageclust` command. Pages, pictures, and what it refuses."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from imageclust_daemon import config as config_module
from imageclust_daemon.errors import ImageclustError
from imageclust_daemon.gallery import web
from tests.conftest import library_config, run_cli
from tests.library import scene_library


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gallery(cfg: config_module.Config) -> web.Background:
    """The gallery on a thread, once it answers."""
    gallery = web.Background(cfg, cfg.web.listen)
    gallery.start()
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"http://{cfg.web.listen}/status", timeout=2)
            return gallery
        except httpx.TransportError:
            if time.monotonic() > deadline:
                gallery.stop()
                raise AssertionError("the gallery did not start") from None
            time.sleep(0.05)


def _config(folder: Path, root: Path, tiny_model: Path, text_files: dict[str, Path]) -> Path:
    return library_config(
        folder, root, tiny_model, text_files, web={"listen": f"127.0.0.1:{free_port()}"}
    )


def _index(folder: Path, tiny_model: Path, text_files: dict[str, Path]) -> tuple[Path, dict]:
    """A library of 3 scenes at `folder/Photos`, indexed by the command: (root, truth)."""
    root = folder / "Photos"
    truth = scene_library(root, 3, 6)
    config = _config(folder, root, tiny_model, text_files)
    assert run_cli("--config", str(config), "index", "--no-progress").returncode == 0
    return root, truth


def _serve(config: Path, root: Path, truth: dict) -> Iterator[dict[str, Any]]:
    cfg = config_module.load(config)
    gallery = start_gallery(cfg)
    base = f"http://{cfg.web.listen}"
    with httpx.Client(base_url=base, timeout=30) as client:
        yield {"client": client, "cfg": cfg, "root": root, "truth": truth, "base": base}
    gallery.stop()


@pytest.fixture(scope="module")
def indexed(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, text_files: dict[str, Path]
) -> tuple[Path, Path, dict]:
    """The library, indexed once for the module (its photos are only read)."""
    folder = tmp_path_factory.mktemp("web")
    return (folder, *_index(folder, tiny_model, text_files))


@pytest.fixture
def served(
    indexed: tuple[Path, Path, dict],
    tmp_path: Path,
    tiny_model: Path,
    text_files: dict[str, Path],
) -> Iterator[dict[str, Any]]:
    """The gallery serving the module's library from a data folder of this test's own
    (state, catalog and pictures copied: a test may republish them or fill the cache)."""
    folder, root, truth = indexed
    shutil.copytree(folder / "data", tmp_path / "data")
    yield from _serve(_config(tmp_path, root, tiny_model, text_files), root, dict(truth))


@pytest.fixture
def own_served(
    tmp_path: Path, tiny_model: Path, text_files: dict[str, Path]
) -> Iterator[dict[str, Any]]:
    """A library of this test's own (it damages the photos), indexed and served."""
    root, truth = _index(tmp_path, tiny_model, text_files)
    yield from _serve(tmp_path / "imageclust.toml", root, truth)


def _hashes(cfg: config_module.Config) -> list[str]:
    import sqlite3

    conn = sqlite3.connect(f"file:{cfg.catalog_path}?mode=ro", uri=True)
    try:
        return [
            h
            for (h,) in conn.execute(
                "SELECT content_hash FROM photos WHERE status = 'indexed' ORDER BY path"
            )
        ]
    finally:
        conn.close()


def test_every_page_answers_and_shows_the_library(served: dict[str, Any]) -> None:
    client: httpx.Client = served["client"]
    albums = client.get("/")
    assert albums.status_code == 200 and albums.text.count('class=album href="/album/') == 3
    assert "18 photo" not in albums.text and "6 photos" in albums.text
    first = albums.text.split('href="/album/')[1].split('"')[0]
    album = client.get(f"/album/{first}")
    assert album.status_code == 200 and album.text.count('href="/photo/') == 6
    content_hash = album.text.split('href="/photo/')[1].split('"')[0].split("?")[0]
    photo = client.get(f"/photo/{content_hash}")
    assert photo.status_code == 200 and "Similar photos" in photo.text
    assert f"/preview/{content_hash}.jpg" in photo.text and "/tmp" in photo.text
    found = client.get("/search", params={"q": "a dog on the beach"})
    assert found.status_code == 200 and found.text.count('href="/photo/') == 18
    title = client.get("/search", params={"q": album.text.split("<h1>")[1].split("<")[0]})
    assert f'href="/album/{first}"' in title.text, "title matches from the full-text index"
    moved = client.get("/library", follow_redirects=False)  # replaced by the map
    assert moved.status_code == 301 and moved.headers["location"] == "/map"
    assert client.get("/timeline").status_code == 200 and client.get("/map").status_code == 200
    status = client.get("/status")
    assert status.status_code == 200 and "Photos indexed</td><td>18" in status.text


def test_pictures_are_jpegs_cached_by_content_and_immutable(served: dict[str, Any]) -> None:
    client: httpx.Client = served["client"]
    cfg = served["cfg"]
    content_hash = _hashes(cfg)[0]
    thumb = client.get(f"/thumb/{content_hash}.jpg")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8" and "immutable" in thumb.headers["cache-control"]
    cached = cfg.data_dir / "thumbs" / "thumb" / content_hash[:2] / f"{content_hash}.jpg"
    assert cached.read_bytes() == thumb.content
    from PIL import Image

    preview = client.get(f"/preview/{content_hash}.jpg")
    with Image.open(__import__("io").BytesIO(preview.content)) as img:
        assert max(img.size) <= 1280
    with Image.open(cached) as img:
        assert max(img.size) <= 256
    head = client.head(f"/thumb/{content_hash}.jpg")
    assert head.status_code == 200 and head.content == b""


def test_what_it_refuses(served: dict[str, Any]) -> None:
    client: httpx.Client = served["client"]
    content_hash = _hashes(served["cfg"])[0]
    assert client.post("/").status_code == 405
    assert client.request("DELETE", f"/thumb/{content_hash}.jpg").status_code == 405
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/", headers={"Host": "evil.example:8765"}).status_code == 400
    for host in ("127.0.0.1:x@evil.example", "127.0.0.1:8765@evil.example", "localhost:"):
        assert client.get("/", headers={"Host": host}).status_code == 400, host
    assert client.get("/thumb/" + "0" * 64 + ".jpg").status_code == 404  # not in the catalog
    assert client.get("/photo/" + "0" * 64).status_code == 404
    assert client.get("/album/999999").status_code == 404
    huge = client.get("/album/99999999999999999999999999")  # past SQLite's integers
    assert huge.status_code == 404 and "Traceback" not in huge.text
    assert client.get("/thumb/nothash.jpg").status_code == 404
    raw = httpx.get(served["base"] + "/thumb/..%2F..%2F..%2Fetc%2Fpasswd", timeout=10)
    assert raw.status_code == 404
    with socket.create_connection(("127.0.0.1", int(served["base"].rsplit(":", 1)[1]))) as s:
        s.sendall(b"GET /thumb/../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = s.recv(200)
    assert answer.split(b"\r\n")[0].split()[1] in (b"404", b"400")


def test_slow_and_greedy_clients_are_cut_off_and_the_gallery_answers(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: 1,200 half-sent requests were all still held after 60 s, and at 1,024 open
    files the gallery stopped answering and logged 171,753 errors in 30 s. Now a request
    head must come within HEAD_SECONDS, and past MAX_CONNECTIONS new connections are
    closed at once, with one log line for the burst."""
    monkeypatch.setattr(web, "HEAD_SECONDS", 1.0)
    monkeypatch.setattr(web, "MAX_CONNECTIONS", 40)
    port = int(served["base"].rsplit(":", 1)[1])
    slow = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never finished
        slow.append(s)
    try:
        time.sleep(0.3)
        # the gallery still answers (the cap leaves room for a person once the slow go)
        deadline = time.monotonic() + 15
        while True:
            try:
                if served["client"].get("/status").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gallery stopped answering"
            time.sleep(0.2)
        closed = 0
        for s in slow:  # each is closed by the server: refused, or its head overdue
            try:
                closed += s.recv(10) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:  # still held after 10 s
                pass
        assert closed == len(slow)
    finally:
        for s in slow:
            s.close()
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(refusals) <= 2, [r.getMessage() for r in refusals]


def test_a_photo_deleted_or_corrupted_after_publish_is_a_placeholder(
    own_served: dict[str, Any],
) -> None:
    served = own_served
    client: httpx.Client = served["client"]
    cfg = served["cfg"]
    first, second = sorted(served["truth"])[:2]
    hashes = _hashes(cfg)
    Path(first).unlink()
    Path(second).write_bytes(b"\xff\xd8\xff\xe0 no longer a photo")
    for content_hash in hashes[:2]:
        got = client.get(f"/thumb/{content_hash}.jpg")
        assert got.status_code == 200 and got.headers["content-type"] == "image/svg+xml"
        assert got.headers["cache-control"] == "no-store"
        assert client.get(f"/photo/{content_hash}").status_code == 200


def test_pages_answer_while_the_catalog_is_republished(served: dict[str, Any]) -> None:
    client: httpx.Client = served["client"]
    config = served["cfg"].source
    import threading

    errors: list[int] = []
    done = threading.Event()

    def browse() -> None:
        while not done.is_set():
            for path in ("/", "/timeline", "/map", "/status", "/search?q=beach"):
                status = client.get(path).status_code
                if status != 200:
                    errors.append(status)

    reader = threading.Thread(target=browse)
    reader.start()
    try:
        for _ in range(3):
            assert run_cli("--config", str(config), "recluster", "--force").returncode == 0
    finally:
        done.set()
        reader.join(30)
    assert errors == []


def test_no_catalog_yet_is_a_page_not_an_error(
    tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    port = free_port()
    cfg = config_module.load(make_config([tmp_path], web={"listen": f"127.0.0.1:{port}"}))
    gallery = start_gallery(cfg)
    try:
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 503 and "Nothing published yet" in page.text
        assert "Traceback" not in page.text
    finally:
        gallery.stop()


def test_a_non_loopback_address_needs_allow_remote(
    tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    cfg = config_module.load(make_config([tmp_path], web={"listen": ""}))
    with pytest.raises(ImageclustError, match=r"web\.allow_remote"):
        web.server(cfg, "0.0.0.0:8765")
    result = run_cli("--config", str(cfg.source), "serve", "--listen", "0.0.0.0:8765")
    assert result.returncode == 1 and "no login" in result.stderr


def test_maintenance_deletes_the_pictures_of_forgotten_photos(tmp_path: Path) -> None:
    from imageclust_daemon.gallery.thumbs import ThumbCache

    cache = ThumbCache(tmp_path)
    kept, gone = "a" * 64, "b" * 64
    for h in (kept, gone):
        path = cache.path(h, "thumb")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert cache.prune({kept}) == 1
    assert cache.path(kept, "thumb").exists() and not cache.path(gone, "thumb").exists()
    shutil.rmtree(tmp_path / "thumb")
    assert cache.prune(set()) == 0


def test_an_album_shows_its_phrase_only_when_it_says_something_new() -> None:
    from imageclust_daemon.gallery import pages
    from imageclust_daemon.gallery.gallery import Album

    def card(title: str, phrase: str) -> str:
        album = Album(1, title, phrase, 6, "June 2024", "Paris, France", [])
        return pages.albums_page([album], 1, "size", 0)

    repeated = card("Paris, June 2024", "6 photos · Paris, France · June 2024")
    assert "class=phrase" not in repeated and "6 photos · June 2024 · Paris, France" in repeated
    written = card("Eiffel Tower at dusk", "The city lights come on")
    assert "<div class=phrase>The city lights come on</div>" in written


def test_an_album_card_says_only_what_most_of_its_photos_support() -> None:
    """Before: a card titled "2001–2016" said "1997-02-02 – 2038-05-05" (two wrong clocks
    stretched it) and "Poole, United Kingdom" for 1 located photo of 26. The card reads
    the title rules' own facts now (`gallery.album_facts`)."""
    from imageclust_daemon.gallery.gallery import album_facts
    from imageclust_daemon.grouping import label
    from imageclust_daemon.records import GroupFacts

    dates = [f"{2001 + i % 16}-06-0{1 + i % 9}T12:00:00" for i in range(24)]
    facts = GroupFacts(
        26, ("1997-02-02T10:00:00", "2038-05-05T10:00:00", *dates), ((50.72, -1.98),)
    )
    when, place = album_facts(facts)
    assert when == label.album_when(facts, now=datetime.now()) == "2001–2014"  # middle 80%
    assert place is None  # 1 located photo of 26 is not "most"
    located = GroupFacts(3, (), ((48.8566, 2.3522), (48.857, 2.35), (48.86, 2.34)))
    assert album_facts(located)[1] is not None and "Paris" in str(album_facts(located)[1])
    undated = GroupFacts(10, ("2020-05-01T10:00:00",))
    assert album_facts(undated)[0] is None  # one date of ten says nothing of the album


def test_a_broken_original_is_not_decoded_again_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a broken original was decoded again on every view of its page."""
    from imageclust_daemon.gallery import thumbs
    from imageclust_daemon.index import sandbox

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a photo")
    made: list[bytes] = []
    real = sandbox.picture

    def counted(original: bytes, *args: Any, **kwargs: Any) -> bytes:
        made.append(original)
        return real(original, *args, **kwargs)

    monkeypatch.setattr(sandbox, "picture", counted)
    cache = thumbs.ThumbCache(tmp_path / "cache")
    for _ in range(3):
        with pytest.raises(thumbs.Unavailable, match=r"broken\.jpg"):
            cache.get("ab" * 32, "thumb", [os.fsencode(broken)])
    assert len(made) == 1
    os.utime(broken, ns=(1, 2_000_000_000))  # changed (say, repaired): tried again
    with pytest.raises(thumbs.Unavailable):
        cache.get("ab" * 32, "thumb", [os.fsencode(broken)])
    assert len(made) == 2
