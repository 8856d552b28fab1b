"""The gallery in a real browser: Debian's Chromium driven by Selenium (chromedriver).

`.ci/run` installs `chromium` and `chromium-driver`; elsewhere the test is skipped when
they are missing (in CI, with CI=true, their absence fails it). Screenshots of every
page are kept under `tests/output/screenshots/`: look at them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REPO
from tests.test_web import indexed, own_served, served  # noqa: F401  (fixtures)

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = REPO / "tests" / "output" / "screenshots"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        if os.environ.get("CI"):
            pytest.fail("CI installs chromium and chromium-driver (.ci/run): they are missing")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _settle_images(driver: Any) -> list[int]:
    """Wait for every image of the page; their natural widths."""
    driver.execute_script(
        "return Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))"
    )
    widths: list[int] = driver.execute_script(
        "return Array.from(document.images).map(i => i.naturalWidth)"
    )
    return widths


def _broken(driver: Any) -> list[str]:
    """The images of the page that did not load (for a failure's message)."""
    found: list[str] = driver.execute_script(
        "return Array.from(document.images).filter(i => !i.naturalWidth).map(i => i.src)"
    )
    return found


def _shot(driver: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SHOTS / f"{name}.png"))


def test_albums_album_search_photo_timeline_map_status_in_a_browser(
    served: dict[str, Any],  # noqa: F811
    browser: Any,
) -> None:
    from selenium.webdriver.common.by import By

    base = served["base"]
    browser.get(base + "/")
    widths = _settle_images(browser)
    assert len(widths) == 12 and all(w > 0 for w in widths), widths  # 3 albums x 4 covers
    assert browser.title.startswith("Albums")
    _shot(browser, "albums")

    browser.find_element(By.CSS_SELECTOR, "a.album").click()
    widths = _settle_images(browser)
    assert len(widths) == 6 and all(w > 0 for w in widths), _broken(browser)
    _shot(browser, "album")

    box = browser.find_element(By.NAME, "q")
    box.send_keys("a dog on the beach")
    box.submit()
    widths = _settle_images(browser)
    assert browser.current_url.startswith(base + "/search?q=")
    assert len(widths) == 18 and all(w > 0 for w in widths), _broken(browser)
    _shot(browser, "search")

    browser.find_element(By.CSS_SELECTOR, ".photos a").click()
    widths = _settle_images(browser)
    assert browser.current_url.startswith(base + "/photo/")
    preview = browser.find_element(By.CSS_SELECTOR, ".preview img")
    assert preview.get_property("naturalWidth") > 256, "the preview is bigger than a thumbnail"
    assert all(w > 0 for w in widths)
    _shot(browser, "photo")

    browser.get(base + "/timeline")
    assert browser.title.startswith("Timeline")
    _shot(browser, "timeline")
    browser.get(base + "/map")
    assert browser.title.startswith("Map")
    _shot(browser, "map")

    browser.get(base + "/status")
    assert "Photos indexed" in browser.page_source
    _shot(browser, "status")


def test_a_missing_original_shows_a_placeholder_in_the_browser(
    own_served: dict[str, Any],  # noqa: F811
    browser: Any,
) -> None:
    shutil.rmtree(own_served["root"] / "event 0")
    browser.get(own_served["base"] + "/")
    widths = _settle_images(browser)
    assert len(widths) == 12 and all(w > 0 for w in widths), "placeholders have a size too"
    _shot(browser, "albums-with-missing-originals")
