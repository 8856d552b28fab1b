"""The gallery for daily use, over real HTTP and in Chromium: the timeline, events, the
map, the viewer's way through an album or event, the original, failed photos, styled
errors, paging, and pages that hold at a phone's width."""

from __future__ import annotations

import math
import os
import re
import sqlite3
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest

from imageclust_daemon import config as config_module
from imageclust_daemon.gallery import browse
from tests import photos
from tests.conftest import run_cli, write_config
from tests.test_web import free_port, start_gallery
from tests.test_web_browser import browser  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow  # a library indexed by the real CLI, a browser

HOME, PARIS, RIO = (51.75, -1.25), (48.85, 2.35), (-22.9, -43.2)


def _library(root: Path) -> None:
    """Photos with capture times and positions: a weekend a month at home through 2021,
    three days in Paris in June, a day in Rio in 2022; one without a date; one broken."""
    root.mkdir()
    seed = 0
    for month in range(1, 13):
        for hour in (10, 15):
            seed += 1
            photos.save_jpeg(
                photos.photo_like(seed, scene=0),
                root / f"home-{month:02d}-{hour}.jpg",
                taken_at=f"2021:{month:02d}:06 {hour}:00:00",
                gps=HOME,
            )
    for day in (11, 12, 13):
        for hour in (9, 13, 18):
            seed += 1
            photos.save_jpeg(
                photos.photo_like(seed, scene=1),
                root / f"paris-{day}-{hour}.jpg",
                taken_at=f"2021:06:{day} {hour}:00:00",
                gps=(PARIS[0] + 0.01 * hour / 18, PARIS[1]),
            )
    for hour in (11, 12, 16):
        seed += 1
        photos.save_jpeg(
            photos.photo_like(seed, scene=2),
            root / f"rio-{hour}.jpg",
            taken_at=f"2022:02:20 {hour}:00:00",
            gps=RIO,
        )
    photos.save_jpeg(photos.photo_like(99, scene=2), root / "undated.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a photo")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The library, indexed once for the module; its config (the pages only read it)."""
    folder = tmp_path_factory.mktemp("daily")
    root = folder / "Photos"
    _library(root)
    config = write_config(
        folder / "imageclust.toml",
        library={"roots": [str(root)]},
        storage={"data_dir": str(folder / "data")},
        model={"path": str(tiny_model), "batch_size": 4},
        cluster={"min_size": 3, "max_size": 20},
        ollama={"host": "http://127.0.0.1:9", "connect_timeout": 0.2},
        web={"listen": f"127.0.0.1:{free_port()}"},
    )
    done = run_cli("--config", str(config), "index", "--no-progress")
    assert done.returncode == 0, done.stderr
    return config


@pytest.fixture
def gallery(indexed: Path) -> Iterator[dict[str, Any]]:
    """The gallery serving the module's library, for this test."""
    cfg = config_module.load(indexed)
    server = start_gallery(cfg)
    base = f"http://{cfg.web.listen}"
    catalog = sqlite3.connect(f"file:{cfg.catalog_path}?mode=ro", uri=True)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            yield {"client": client, "base": base, "catalog": catalog}
    finally:
        catalog.close()
        server.stop()


def _links(html: str, prefix: str) -> list[str]:
    return [unescape(h) for h in re.findall(rf'href="({re.escape(prefix)}[^"]*)"', html)]


def test_the_timeline_and_each_event_show_what_the_catalog_holds(gallery: dict[str, Any]) -> None:
    client, catalog = gallery["client"], gallery["catalog"]
    events = catalog.execute("SELECT id, title, started_at FROM events").fetchall()
    assert len(events) >= 3  # the months at home, the Paris trip, the Rio day
    page = client.get("/timeline")
    assert page.status_code == 200
    assert f"{len(events)} events" in page.text
    linked = {int(h.split("/")[2]) for h in _links(page.text, "/event/")}
    assert linked == {i for i, _, _ in events}
    for year in {started[:4] for _, _, started in events}:
        assert f"<h2>{year}</h2>" in page.text
    starts = [s for _, _, s in sorted(events, key=lambda e: e[2], reverse=True)]
    shown = [int(h.split("/")[2]) for h in _links(page.text, "/event/")]
    order = {i: s for i, _, s in events}
    assert [order[i] for i in dict.fromkeys(shown)] == starts, "newest first"
    for event_id, title, _ in events:
        one = client.get(f"/event/{event_id}")
        assert one.status_code == 200 and f"<h1>{title}</h1>" in unescape(one.text)
        in_event = catalog.execute(
            "SELECT count(DISTINCT shown_as) FROM photos WHERE event_id = ? AND status = 'indexed'",
            (event_id,),
        ).fetchone()[0]
        photos_linked = _links(one.text, "/photo/")
        assert len(photos_linked) == in_event
        assert all(h.endswith(f"?in=event:{event_id}") for h in photos_linked)


def test_the_map_marks_every_photo_with_a_position(gallery: dict[str, Any]) -> None:
    client, catalog = gallery["client"], gallery["catalog"]
    located = catalog.execute(
        "SELECT min(lat), min(lon) FROM photos WHERE status = 'indexed' AND lat IS NOT NULL "
        "GROUP BY shown_as"
    ).fetchall()
    cells = {
        (math.floor(a / browse.CELL_DEGREES), math.floor(b / browse.CELL_DEGREES))
        for a, b in located
    }
    page = client.get("/map")
    assert page.status_code == 200
    assert f"{len(located)} photos with a position, in {len(cells)} places" in page.text
    marks = re.findall(r'<circle cx="([-0-9.]+)" cy="([-0-9.]+)"', page.text)
    assert len(marks) == len(cells) == 3  # home, Paris, Rio
    for cx, cy in marks:  # each mark in its cell: x = longitude, y = -latitude
        cell = (math.floor(-float(cy) / 2.0), math.floor(float(cx) / 2.0))
        assert cell in cells
    targets = re.findall(r'<a href="(/(?:photo|event)/[^"]+)" aria-label="', page.text)
    assert len(targets) == len(cells)
    for href in targets:
        assert client.get(href).status_code == 200


def test_the_viewer_goes_through_what_it_was_opened_from(gallery: dict[str, Any]) -> None:
    client, catalog = gallery["client"], gallery["catalog"]
    album = catalog.execute("SELECT id FROM clusters ORDER BY size DESC LIMIT 1").fetchone()[0]
    order = [
        h
        for (h,) in catalog.execute(
            "SELECT content_hash FROM cluster_members WHERE cluster_id = ? ORDER BY rank",
            (album,),
        )
    ]
    assert len(order) >= 3
    grid = _links(client.get(f"/album/{album}").text, "/photo/")
    assert grid == [f"/photo/{h}?in=album:{album}" for h in order]
    middle = client.get(f"/photo/{order[1]}?in=album:{album}").text
    assert f'rel=prev href="/photo/{order[0]}?in=album:{album}"' in middle
    assert f'rel=next href="/photo/{order[2]}?in=album:{album}"' in middle
    assert f'rel=up href="/album/{album}"' in middle and f"2 of {len(order)}" in middle
    first = client.get(f"/photo/{order[0]}?in=album:{album}").text
    assert "rel=prev" not in first and "rel=next" in first
    alone = client.get(f"/photo/{order[0]}").text  # no context: its album is the way up
    assert "rel=next" not in alone and f'rel=up href="/album/{album}"' in alone
    odd = client.get(f"/photo/{order[0]}?in=album:9999999").text  # an album that is not
    assert "rel=next" not in odd


def test_the_original_comes_as_it_is_on_disk(gallery: dict[str, Any]) -> None:
    client, catalog = gallery["client"], gallery["catalog"]
    path, content_hash = catalog.execute(
        "SELECT path, content_hash FROM photos WHERE status = 'indexed' AND format = 'JPEG' "
        "ORDER BY path LIMIT 1"
    ).fetchone()
    shown = client.get(f"/original/{content_hash}")
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
    assert shown.content == Path(path).read_bytes()
    assert shown.headers["content-disposition"].startswith("inline")
    saved = client.get(f"/original/{content_hash}", params={"download": "1"})
    name = os.path.basename(path)
    assert saved.headers["content-disposition"] == f"attachment; filename*=UTF-8''{name}"
    page = client.get(f"/photo/{content_hash}").text
    assert f'href="/original/{content_hash}?download=1"' in page and "Full size" in page
    missing = client.get("/original/" + "0" * 64)
    assert missing.status_code == 404 and "<title>" in missing.text


def test_a_failed_photo_has_a_page_with_its_reason(gallery: dict[str, Any]) -> None:
    client, catalog = gallery["client"], gallery["catalog"]
    path, error = catalog.execute(
        "SELECT path, error FROM photos WHERE status = 'failed'"
    ).fetchone()
    status = client.get("/status").text
    link = [h for h in _links(status, "/failed?") if path.rsplit("/", 1)[-1] in h]
    assert len(link) == 1
    page = client.get(link[0])
    assert page.status_code == 200 and unescape(error) in unescape(page.text)
    assert client.get("/failed", params={"path": "/no/such.jpg"}).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/no/such/page", 404),
        ("GET", "/album/99999", 404),
        ("GET", "/event/99999", 404),
        ("GET", "/photo/" + "0" * 64, 404),
        ("POST", "/", 405),
    ],
)
def test_every_error_is_a_styled_page(
    gallery: dict[str, Any], method: str, path: str, code: int
) -> None:
    answer = gallery["client"].request(method, path)
    assert answer.status_code == code
    assert answer.text.startswith("<!doctype html><html lang=en>")
    assert "<title>" in answer.text and "<h1>" in answer.text


def test_a_page_past_the_last_says_so(gallery: dict[str, Any]) -> None:
    client = gallery["client"]
    albums = client.get("/", params={"page": 5}).text
    assert "There is no page 5 here" in albums and "No albums yet" not in albums
    assert "There is no page 3 here" in client.get("/timeline", params={"page": 3}).text
    first = client.get("/").text
    assert "newer page" not in first and "previous page" not in first


def _phone(driver: Any, width: int = 390) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 844, "deviceScaleFactor": 2, "mobile": True},
    )


def _every_page(gallery: dict[str, Any]) -> list[str]:
    catalog = gallery["catalog"]
    album = catalog.execute("SELECT id FROM clusters LIMIT 1").fetchone()[0]
    event = catalog.execute("SELECT id FROM events LIMIT 1").fetchone()[0]
    photo = catalog.execute(
        "SELECT content_hash FROM photos WHERE status = 'indexed' LIMIT 1"
    ).fetchone()[0]
    failed = catalog.execute("SELECT path FROM photos WHERE status = 'failed'").fetchone()[0]
    return [
        "/",
        f"/album/{album}",
        f"/photo/{photo}?in=album:{album}",
        "/search?q=paris",
        "/timeline",
        f"/event/{event}",
        "/map",
        "/status",
        f"/failed?path={failed}",
        "/no/such/page",
    ]


def test_no_page_scrolls_sideways_on_a_phone(gallery: dict[str, Any], browser: Any) -> None:  # noqa: F811
    """Before: every page scrolled sideways at 390 px (pages 570-866 px wide)."""
    wide = {}
    for width in (360, 390):
        _phone(browser, width)
        for path in _every_page(gallery):
            browser.get(gallery["base"] + path)
            scroll, inner = browser.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]"
            )
            assert inner == width
            if scroll > inner:
                wide[f"{width} {path}"] = scroll
    assert wide == {}


def test_the_keyboard_goes_next_previous_and_back(gallery: dict[str, Any], browser: Any) -> None:  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    catalog = gallery["catalog"]
    event, size = catalog.execute(
        "SELECT id, size FROM events ORDER BY size DESC LIMIT 1"
    ).fetchone()
    assert size >= 3
    base = gallery["base"]
    browser.get(f"{base}/event/{event}")
    first = browser.find_element("css selector", ".photos a")
    first.click()
    start = browser.current_url
    assert f"?in=event:{event}" in start

    def press(key: str) -> str:
        before = browser.current_url
        ActionChains(browser).send_keys(key).perform()
        for _ in range(50):
            if browser.current_url != before:
                break
            browser.implicitly_wait(0.1)
        return str(browser.current_url)

    after_next = press(Keys.ARROW_RIGHT)
    assert after_next != start and f"?in=event:{event}" in after_next
    assert press(Keys.ARROW_LEFT) == start
    assert press(Keys.ESCAPE) == f"{base}/event/{event}"
    focused = browser.execute_script(
        "var a = document.querySelector('.photos a'); a.focus();"
        "return getComputedStyle(a).outlineStyle"
    )
    assert focused != "none", "keyboard focus is visible"


def test_no_serious_accessibility_finding_in_light_or_dark(
    gallery: dict[str, Any],
    browser: Any,  # noqa: F811
) -> None:
    """axe-core (every rule it runs by default) on every page, in the light and the dark
    colour scheme: no finding of serious or critical impact."""
    from tests.tools import fetch_axe

    if not fetch_axe.present():
        pytest.skip("no axe-core here: python -m tests.tools.fetch_axe (needs npm)")
    script = fetch_axe.DEFAULT_DEST.read_text(encoding="utf-8")
    browser.set_script_timeout(60)
    found = {}
    for scheme in ("light", "dark"):
        browser.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
        )
        for path in _every_page(gallery):
            browser.get(gallery["base"] + path)
            browser.execute_script(script)
            result = browser.execute_async_script(
                "var done = arguments[arguments.length - 1];"
                "axe.run(document).then(function (r) { done(r.violations.map(function (v) {"
                "  return [v.id, v.impact, v.nodes.length]; })); });"
            )
            bad = [v for v in result if v[1] in ("serious", "critical")]
            if bad:
                found[f"{scheme} {path}"] = bad
    assert found == {}


def test_search_without_a_text_tower_says_what_is_missing(gallery: dict[str, Any]) -> None:
    """Before: "has no the text tower", no word of the tokenizer, then "No photos found."
    (nothing had been searched), and the box suggested "dog on the beach"."""
    client = gallery["client"]
    found = unescape(client.get("/search", params={"q": "paris"}).text)
    assert (
        "Photos were not searched by words: search by words needs a text tower and its "
        "tokenizer" in found
    )
    assert "No photos found" not in found and "has no the" not in found
    assert "imageclust models download" in found
    assert "birthday cake" not in client.get("/search").text
    assert "dog on the beach" not in client.get("/").text


def test_a_swipe_goes_to_the_next_photo(gallery: dict[str, Any], browser: Any) -> None:  # noqa: F811
    catalog = gallery["catalog"]
    event = catalog.execute("SELECT id FROM events ORDER BY size DESC LIMIT 1").fetchone()[0]
    base = gallery["base"]
    _phone(browser)
    browser.get(f"{base}/event/{event}")
    browser.find_element("css selector", ".photos a").click()
    start = browser.current_url

    def swipe(x0: int, x1: int) -> None:
        point = {"x": x0, "y": 500}
        browser.execute_cdp_cmd(
            "Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [point]}
        )
        browser.execute_cdp_cmd(
            "Input.dispatchTouchEvent",
            {"type": "touchMove", "touchPoints": [{"x": x1, "y": 500}]},
        )
        browser.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})

    swipe(300, 60)  # right to left: the next photo
    for _ in range(50):
        if browser.current_url != start:
            break
        browser.execute_script("return 1")
    assert browser.current_url != start and f"?in=event:{event}" in browser.current_url
