"""The web page, end to end in headless Chromium (Debian's, through Playwright): enroll classes
from live cameras until they have enough, see their quality figures, thresholds and
recommendations and their labels on the live view; delete with confirmation and undo; a camera
that is down says why; storage problems show as a banner; the strip of the latest samples kept
for the server, hidden where no camera samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from daemon_helpers import make_config, sampling_config, wait_for

from edgessl.edge_runtime.daemon.core import Daemon

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "web-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
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
    with Daemon(config) as daemon, httpx.Client(base_url=daemon.api_url, timeout=30, headers=AUTH) as client:
        page.goto(daemon.api_url)
        # Without the token the page shows nothing the cameras see, and says what is missing.
        text_has(page, "#cameras", "Enter the API token")
        assert page.locator(".camera").count() == 0
        page.fill("#token", TOKEN)
        page.click("#save-token")
        # Snapshots come without waiting for a poll: the cards are never blank.
        page.wait_for_function("() => document.querySelector('.camera[data-camera=red] img')?.naturalWidth === 160")
        # A camera that is down says why, on its card.
        text_has(page, '.camera[data-camera="gone"] .reason', "no such file")
        assert "no such file" in page.text_content('.camera[data-camera="gone"] .placeholder')
        assert page.is_hidden('.camera[data-camera="red"] .reason')
        assert page.text_content("#class-count") == "(0 classes)"
        assert page.is_hidden("#samples-section")  # no camera samples

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


def test_the_page_shows_objects_and_names_one_from_its_track(tmp_path, tiny_bundle, browser_page, monkeypatch):
    """A camera that tracks objects: the snapshot has each object's box, track id and label drawn
    on it and listed under it; the strip of recent objects names one ("Enroll") from its track, and
    then offers "Not <name>" on the tracks given that name."""
    import cv2
    import numpy as np

    from edgessl import scene

    monkeypatch.setitem(os.environ, "EDGESSL_API_TOKEN", TOKEN)
    w, _ = scene.SIZE
    ball = scene.SceneObject(1, "circle", (30, 30, 220), 32.0, (scene.Leg(0.3, 4.0, (-32.0, 180.0), (w + 32.0, 180.0)),),
                             0.3, "evaluation")
    clip = tmp_path / "yard.mp4"
    scene.write(clip, [ball], tail_s=1.5)
    config = make_config(tmp_path, tiny_bundle, [{"id": "yard", "url": str(clip), "loop": True, "objects": {}}],
                         api={"port": 0})
    page = browser_page
    with Daemon(config) as daemon, httpx.Client(base_url=daemon.api_url, timeout=30, headers=AUTH) as client:
        page.goto(daemon.api_url)
        page.fill("#token", TOKEN)
        page.click("#save-token")
        # The object under the picture, as drawn on it.
        page.wait_for_selector('.camera[data-camera="yard"] .objects .object')
        item = page.locator('.camera[data-camera="yard"] .objects .object').first
        track = int(item.get_attribute("data-track"))
        assert item.locator(".id").text_content() == f"#{track}"
        def with_objects() -> httpx.Response | None:
            r = client.get("/v1/cameras/yard/snapshot.jpg")
            return r if json.loads(r.headers["x-objects"]) else None

        r = wait_for(with_objects, 20, "a snapshot with an object drawn")
        x0, y0, x1, y1 = json.loads(r.headers["x-objects"])[0]["box"]
        image = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
        edge = image[(y0 + y1) // 2, max(0, x0):max(0, x0) + 2].astype(int)  # its box, in a state's colour
        colours = np.array([[255, 190, 60], [0, 170, 255], [60, 200, 60]])
        assert (np.abs(edge[:, None, :] - colours[None]).sum(axis=2) < 90).any(), edge

        # The strip of recent objects: name the first one.
        card = page.locator(f'#tracks .track[data-track="{track}"]')
        card.wait_for()
        assert card.locator("img").get_attribute("data-src") == f"/v1/tracks/{track}/best.jpg"
        page.wait_for_function("(img) => img.naturalWidth > 0", arg=card.locator("img").element_handle())
        card.locator("input").fill("ball")
        card.locator("button.enroll-track").click()
        text_has(page, f'#tracks .track[data-track="{track}"] .result', 'as "ball"')
        text_has(page, "#class-count", "(1 class)")
        assert [c["label"] for c in client.get("/v1/classes").json()] == ["ball"]

        # The next pass of the ball is named, and its card offers "Not ball".
        page.wait_for_selector("#tracks button.reject-track", timeout=40_000)
        reject = page.locator("#tracks button.reject-track").first
        assert reject.text_content() == "Not ball"
        reject.click()
        page.wait_for_function("() => document.querySelector('#tracks .result')?.textContent.includes('negative')")
        assert client.get("/v1/classes").json()[0]["negatives"] > 0


def test_the_page_shows_the_latest_samples(tmp_path, tiny_bundle, clips, browser_page, monkeypatch):
    """A camera that samples: the strip shows the newest samples (thumbnails fetched with the
    token), each with why it was kept and its camera, newest first."""
    monkeypatch.setitem(os.environ, "EDGESSL_API_TOKEN", TOKEN)
    config = sampling_config(tmp_path, tiny_bundle, clips["red"], sampling={"per_hour": 5})
    page = browser_page
    with Daemon(config) as daemon, httpx.Client(base_url=daemon.api_url, timeout=30, headers=AUTH) as client:
        wait_for(lambda: client.get("/v1/samples").json()["stored"] == 5, 30, "five samples")
        page.goto(daemon.api_url)
        assert page.is_hidden("#samples-section")  # nothing shown without the token
        page.fill("#token", TOKEN)
        page.click("#save-token")
        page.wait_for_selector("#samples-section:visible")
        page.wait_for_function("() => document.querySelectorAll('#samples .sample').length === 5")
        ids = [s["id"] for s in client.get("/v1/samples").json()["samples"]]
        cards = page.locator("#samples .sample")
        assert [int(cards.nth(i).get_attribute("data-sample")) for i in range(5)] == ids[::-1]
        first = cards.first
        assert first.locator("img").get_attribute("data-src") == f"/v1/samples/{ids[-1]}.jpg"
        page.wait_for_function("(img) => img.naturalWidth > 0", arg=first.locator("img").element_handle())
        assert first.locator("figcaption").text_content() == "unknown cam"
        text_has(page, "#samples-count", "5 samples waiting for the server")
