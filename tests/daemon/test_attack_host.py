"""DNS rebinding: a web page on another site that makes its own name resolve to the device sends
that name as `Host`. The daemon answers only the names it has (IP addresses, localhost, its
device and host names, `api.allowed_hosts`): anything else is 421, on every route, token or not,
before a route runs."""

from __future__ import annotations

import socket

import httpx
import pytest
from daemon_helpers import make_config

from edgessl.edge_runtime.daemon.http.auth import default_hosts, is_allowed

TOKEN = "host-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EVIL = ["evil.example", "attacker.com:8080", "localhost.evil.example", "127.0.0.1.nip.io", "device-cam.evil",
        "xn--80ak6aa92e.com", "", "localhost@evil.example", "[::1].evil", "LOCALHOST.evil:80"]
GOOD = ["127.0.0.1", "127.0.0.1:8080", "localhost", "LocalHost:8080", "[::1]:8080", "::1", "10.0.0.7",
        "porch-cam", "porch-cam.lan", "localhost."]


@pytest.fixture
def daemon(tmp_path, tiny_bundle, clips, monkeypatch, start_daemon):
    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    config = make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                         api={"port": 0, "allowed_hosts": ["porch-cam.lan"]}, device="porch-cam")
    return start_daemon(config)


def raw_get(url: str, path: str, host: str | None) -> int:
    """A request with exactly this Host header (or none): httpx would set its own."""
    address, port = url.removeprefix("http://").split(":")
    with socket.create_connection((address, int(port)), timeout=10) as s:
        head = f"GET {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "")
        s.sendall((head + f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").encode())
        s.settimeout(10)
        return int(s.recv(64).decode().split()[1])


@pytest.mark.parametrize("path", ["/v1/cameras/cam/snapshot.jpg", "/v1/classes", "/health", "/", "/v1/tracks"])
def test_foreign_host_names_are_refused_on_every_route(daemon, path):
    for host in EVIL:
        assert raw_get(daemon.api_url, path, host) == 421, host
    assert raw_get(daemon.api_url, path, None) in (400, 421)  # HTTP/1.1 without Host is malformed anyway
    r = httpx.get(daemon.api_url + path, headers={**AUTH, "Host": "evil.example"}, timeout=10)
    assert r.status_code == 421 and "api.allowed_hosts" in r.json()["detail"]


def test_the_device_names_are_served(daemon):
    for host in GOOD:
        assert raw_get(daemon.api_url, "/v1/classes", host) == 200, host
    assert raw_get(daemon.api_url, "/v1/classes", socket.gethostname()) == 200


def test_the_rule(daemon):
    names = default_hosts("porch-cam", ["porch-cam.lan"])
    assert all(is_allowed(h, names) for h in GOOD)
    assert not any(is_allowed(h, names) for h in EVIL)
