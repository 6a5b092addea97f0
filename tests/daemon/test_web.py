"""The web page, end to end in headless Chromium (Debian's, through Playwright): enroll a class
from a live camera, then see its label on the live view; delete a class."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from daemon_helpers import make_config

from edgessl.edge_runtime.daemon.core import Daemon

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "web-test-token-0123456789"


@pytest.fixture
def browser_page():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


def test_enroll_from_a_live_camera_then_see_the_label(tmp_path, tiny_bundle, clips, browser_page, monkeypatch):
    monkeypatch.setitem(os.environ, "EDGESSL_API_TOKEN", TOKEN)
    cameras = [{"id": "red", "url": str(clips["red"]), "loop": True},
               {"id": "blue", "url": str(clips["blue"]), "loop": True}]
    config = make_config(tmp_path, tiny_bundle, cameras, api={"port": 0},
                         enrollment={"interval_s": 0.1, "timeout_s": 10})
    page = browser_page
    with Daemon(config) as daemon:
        page.goto(daemon.api_url)
        red_label = page.locator('.camera[data-camera="red"] .region[data-region="full"] .label')
        blue_label = page.locator('.camera[data-camera="blue"] .region[data-region="full"] .label')
        page.wait_for_function("document.querySelector('.camera[data-camera=red] img')?.naturalWidth === 160")

        # Without the token the page says what is missing.
        page.fill("#enroll-label", "ripe")
        page.click("#enroll-button")
        page.wait_for_selector("#enroll-result.error")
        assert "API token" in page.text_content("#enroll-result")

        page.fill("#token", TOKEN)
        page.click("#save-token")
        for camera, name in (("red", "ripe"), ("blue", "sky")):
            page.select_option("#enroll-camera", camera)
            page.select_option("#enroll-region", "full")
            page.fill("#enroll-label", name)
            page.fill("#enroll-frames", "3")
            page.click("#enroll-button")
            page.wait_for_function(
                "name => document.querySelector('#enroll-result')?.textContent.includes(`as \"${name}\"`)", arg=name)
            assert re.search(r"enrolled 3 shot\(s\)", page.text_content("#enroll-result"))

        # The live view names what each camera sees.
        page.wait_for_function("el => el.textContent === 'ripe'", arg=red_label.element_handle())
        page.wait_for_function("el => el.textContent === 'sky'", arg=blue_label.element_handle())

        # The class list shows both, with thumbnails and quality figures; delete one.
        sky = page.locator('#classes .class[data-label="sky"]')
        sky.wait_for()
        assert sky.locator(".thumbs img").count() == 3
        assert "leave-one-out 100%" in sky.locator(".figures").first.text_content()
        sky.locator("button.delete").click()
        sky.wait_for(state="detached")
        page.wait_for_function("el => el.textContent !== 'sky'", arg=blue_label.element_handle())
        assert page.locator("#classes .class").count() == 1
        assert page.locator("#events li").count() >= 2  # label changes arrived as server-sent events
        if os.environ.get("EDGESSL_SCREENSHOT"):
            page.screenshot(path=os.environ["EDGESSL_SCREENSHOT"], full_page=True)
