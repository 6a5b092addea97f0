"""The web page, end to end in headless Chromium (Debian's, through Playwright): enroll classes
from live cameras until they have enough, see their quality figures, thresholds and
recommendations and their labels on the live view; delete with confirmation and undo; a camera
that is down says why; storage problems show as a banner."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from daemon_helpers import make_config

from edgessl.edge_runtime.daemon.core import Daemon

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "web-test-token-0123456789"
SCREENSHOT = Path(os.environ.get("EDGESSL_SCREENSHOT", "/tmp/edgessl-page.png"))


@pytest.fixture
def browser_page():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


def text_has(page, selector: str, text: str) -> None:
    """Wait (20 s at most) until the element's text contains `text`."""
    page.wait_for_function("([sel, text]) => document.querySelector(sel)?.textContent.includes(text)",
                           arg=[selector, text])


def test_the_page_a_person_relies_on(tmp_path, tiny_bundle, clips, browser_page, monkeypatch):
    monkeypatch.setitem(os.environ, "EDGESSL_API_TOKEN", TOKEN)
    cameras = [{"id": "red", "url": str(clips["red"]), "loop": True},
               {"id": "blue", "url": str(clips["blue"]), "loop": True},
               {"id": "gone", "url": str(tmp_path / "missing.mp4")}]
    config = make_config(tmp_path, tiny_bundle, cameras, api={"port": 0},
                         enrollment={"interval_s": 0.1, "timeout_s": 10})
    page = browser_page
    dialogs: list[str] = []
    answer = {"accept": False}

    def on_dialog(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept() if answer["accept"] else dialog.dismiss()

    page.on("dialog", on_dialog)
    with Daemon(config) as daemon, httpx.Client(base_url=daemon.api_url, timeout=30) as client:
        page.goto(daemon.api_url)
        # Snapshots come without waiting for a poll: the cards are never blank.
        page.wait_for_function("document.querySelector('.camera[data-camera=red] img')?.naturalWidth === 160")
        # A camera that is down says why, on its card.
        text_has(page, '.camera[data-camera="gone"] .reason', "no such file")
        assert "no such file" in page.text_content('.camera[data-camera="gone"] .placeholder')
        assert page.is_hidden('.camera[data-camera="red"] .reason')
        assert page.text_content("#class-count") == "(0 classes)"

        # Without the token the page says what is missing.
        page.fill("#enroll-label", "ripe")
        page.click("#enroll-button")
        page.wait_for_selector("#enroll-result.error")
        assert "API token" in page.text_content("#enroll-result")

        page.fill("#token", TOKEN)
        page.click("#save-token")
        assert page.input_value("#enroll-until") == "stable"  # the default: until it has enough
        for camera, name in (("red", "ripe"), ("blue", "sky")):
            page.select_option("#enroll-camera", camera)
            page.select_option("#enroll-region", "full")
            page.fill("#enroll-label", name)
            page.click("#enroll-button")
            text_has(page, "#enroll-result", f'as "{name}"')
            result = page.text_content("#enroll-result")
            assert "enrolled 5 shots" in result and "stopped: 5 exemplars, leave-one-out accuracy 100%" in result
            assert "threshold" in result and "next: " in result

        # The class list: per class the quality figures, the threshold and the recommendation,
        # the same figures as /v1/classes.
        text_has(page, "#class-count", "(2 classes)")
        api_classes = {c["label"]: c for c in client.get("/v1/classes").json()}
        for name in ("ripe", "sky"):
            row = page.locator(f'#classes .class[data-label="{name}"]')
            figures = row.locator(".figures").first.text_content()
            assert figures.startswith("5 exemplars · leave-one-out 100% · margin ")
            c = api_classes[name]
            assert f"margin {c['margin']:.2f} to {c['nearest_class']}" in figures
            assert row.locator(".threshold").text_content() == f"threshold {c['threshold']:.2f} (calibrated)"
            assert row.locator(".threshold").get_attribute("title") == c["threshold_reason"]
            assert row.locator(".recommendation").text_content() == c["recommendation"] == "enough"
            assert row.locator(".thumbs img").count() == 5

        # The live view names what each camera sees, from the decision drawn on the snapshot.
        for camera, name in (("red", "ripe"), ("blue", "sky")):
            label = page.locator(f'.camera[data-camera="{camera}"] .region[data-region="full"] .label')
            page.wait_for_function("([el, name]) => el.textContent === name", arg=[label.element_handle(), name])
            frame = page.get_attribute(f'.camera[data-camera="{camera}"] .region[data-region="full"]', "data-frame")
            assert frame is not None and int(frame) > 0

        # Delete asks first: dismissed, nothing happens.
        sky = page.locator('#classes .class[data-label="sky"]')
        sky.locator("button.delete").click()
        assert dialogs == ['Delete "sky" and its 5 exemplars?']
        assert "sky" in {c["label"] for c in client.get("/v1/classes").json()}
        # Accepted: gone, with an Undo for a while; Undo brings it back.
        answer["accept"] = True
        sky.locator("button.delete").click()
        sky.wait_for(state="detached")
        text_has(page, "#class-count", "(1 class)")
        assert "sky" not in {c["label"] for c in client.get("/v1/classes").json()}
        page.wait_for_selector("#toast-undo:visible")
        assert page.text_content("#toast-text") == 'Deleted "sky" (5 exemplars).'
        page.click("#toast-undo")
        sky.wait_for()
        text_has(page, "#toast-text", 'Restored "sky" (5 exemplars).')
        text_has(page, "#class-count", "(2 classes)")
        assert {c["label"]: c["exemplars"] for c in client.get("/v1/classes").json()} == {"ripe": 5, "sky": 5}
        assert page.locator("#events li").count() >= 2  # label changes arrived as server-sent events

        # Storage problems found by the daemon are a banner.
        status = daemon.storage.status
        monkeypatch.setattr(daemon.storage, "status", lambda: {
            **status(), "ok": False, "problems": ["state_dir /var/lib/edgessl is read-only: enrolling fails"]})
        page.wait_for_selector("#banner:visible")
        assert "read-only" in page.text_content("#banner")
        page.screenshot(path=str(SCREENSHOT), full_page=True)
