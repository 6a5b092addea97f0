"""The README's table "Who may call what" is the daemon's access rule: every route the daemon
serves is in it, a route the table says needs the token answers 401 without it (and with a
wrong one), and what answers without the token shows nothing the token protects."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from daemon_helpers import RED, make_config, textured, wait_for
from starlette.routing import Mount

TOKEN = "access-token-0123456789abc"
README = Path(__file__).resolve().parents[2] / "README.md"
PARAM = re.compile(r"\{[^}]*\}")
SAMPLES = {"camera_id": "cam", "label": "red", "exemplar_id": "1", "track_id": "1", "name": "0.jpg", "file": "app.js",
           "sample_id": "1"}


def normalized(path: str) -> str:
    return PARAM.sub("{}", path)


def readme_table() -> dict[tuple[str, str], bool]:
    """(method, path with `{}` for parameters) -> needs the token, from the README's table."""
    text = README.read_text()
    section = text[text.index("### Who may call what"):]
    section = section[:section.index("\n\n", section.index("| route | token |"))]
    table: dict[tuple[str, str], bool] = {}
    for row in section.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        for method, path in re.findall(r"`([A-Z]+) ([^`]+)`", cells[0]):
            table[(method, normalized(path))] = cells[1].startswith("yes")
    return table


def flat_routes(routes, prefix: str = ""):
    """(prefix, route) for every route, into included routers (FastAPI >= 0.165 keeps them nested)."""
    for route in routes:
        if hasattr(route, "original_router"):
            yield from flat_routes(route.original_router.routes, prefix + route.include_context.prefix)
        else:
            yield prefix, route


def served_routes(app) -> dict[tuple[str, str], str]:
    """(method, normalized path) -> a concrete path, for every route of the app."""
    out = {}
    for prefix, route in flat_routes(app.routes):
        assert prefix == "", "the routers are included without a prefix; the table lists full paths"
        if isinstance(route, Mount):
            out[("GET", normalized(route.path + "/{file}"))] = route.path + "/app.js"
            continue
        concrete = PARAM.sub(lambda m: SAMPLES[m.group(0)[1:-1].split(":")[0]], route.path)
        for method in route.methods - {"HEAD"}:
            out[(method, normalized(route.path.replace(":path", "").replace(":int", "")))] = concrete
    return out


@pytest.fixture
def daemon(tmp_path, tiny_bundle, clips, monkeypatch, start_daemon):
    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    config = make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True,
                                                  "regions": [{"name": "porch-7q", "x": 0.1, "y": 0.1,
                                                               "width": 0.4, "height": 0.4}]}],
                         api={"port": 0})
    d = start_daemon(config)
    d.enrollment.enroll_images("secret-red-class", [textured(RED, i) for i in range(3)])
    wait_for(lambda: d.pipeline.states()[0]["label"] == "secret-red-class", 20, "the class in view")
    return d


def test_every_route_is_in_the_readme_table(daemon):
    table, served = readme_table(), served_routes(daemon.server.app)
    assert set(served) - set(table) == set(), "routes the README's table does not list"
    assert set(table) - set(served) == set(), "rows of the README's table the daemon does not serve"
    assert sum(not token for token in table.values()) <= 7  # the page, /health, the API's description


def test_each_route_answers_as_the_table_says(daemon):
    table, served = readme_table(), served_routes(daemon.server.app)
    with httpx.Client(base_url=daemon.api_url, timeout=30) as client:
        for key, path in sorted(served.items()):
            method, _ = key
            anonymous = client.request(method, path)
            wrong = client.request(method, path, headers={"Authorization": "Bearer " + "x" * len(TOKEN)})
            if table[key]:
                assert (anonymous.status_code, wrong.status_code) == (401, 401), (key, anonymous.text[:200])
                assert "secret-red-class" not in anonymous.text
            else:
                assert anonymous.status_code == 200, (key, anonymous.status_code, anonymous.text[:200])
            if method == "GET" and path.startswith("/v1/") and not path.endswith(".jpg") and path != "/v1/events":
                with_token = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
                assert with_token.status_code != 401, key


def test_what_answers_without_the_token_shows_nothing_it_protects(daemon):
    with httpx.Client(base_url=daemon.api_url, timeout=30) as client:
        short = client.get("/health").json()
        assert set(short) == {"status", "device", "uptime_s", "cameras", "full"}
        assert short["cameras"] == {"cam": "streaming"} and short["full"] is False
        full = client.get("/health", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert {"model", "sinks", "storage"} <= set(full)
        for path in ("/", "/v1/classes", "/health"):  # the browser runs the device's own code only
            headers = client.get(path).headers
            assert headers["content-security-policy"].startswith("default-src 'self';"), path
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
        assert client.get("/docs").status_code == client.get("/redoc").status_code == 404  # CDN scripts: none
        for path in ("/", "/web/app.js", "/openapi.json"):
            text = client.get(path).text
            assert "secret-red-class" not in text and "porch-7q" not in text, path
