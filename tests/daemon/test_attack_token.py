"""No token means no entry: an empty or short token from any source stops the start with a message
that says how to fix it, an empty `Bearer` is never accepted, and a first start that dies while
writing the generated token (a full disk) leaves no empty token file behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from daemon_helpers import make_config, raw_status, write_yaml
from disks import fill, tmpfs

from edgessl.edge_runtime.daemon.core import Daemon
from edgessl.edge_runtime.daemon.http.auth import Auth
from edgessl.edge_runtime.daemon.http.token import TokenError, resolve_token


def config_for(tmp_path, bundle, clips, **api):
    return make_config(tmp_path, bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                       api={"port": 0, **api})


@pytest.mark.parametrize("content", ["", "\n", "   \n", "short"])
def test_an_empty_or_short_token_file_in_the_state_folder_stops_the_start(tmp_path, tiny_bundle, clips,
                                                                          monkeypatch, content):
    monkeypatch.delenv("EDGESSL_API_TOKEN", raising=False)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "api-token").write_text(content)  # left by an interrupted first start
    daemon = Daemon(config_for(tmp_path, tiny_bundle, clips))
    with pytest.raises(TokenError, match=r"api-token (is empty|has \d characters); at least 16 are needed.*delete"):
        daemon.start()
    daemon.stop()


@pytest.mark.parametrize("token", ["", "x", "15-characters!!"])
def test_short_tokens_from_the_environment_and_files_are_refused(tmp_path, tiny_bundle, clips, monkeypatch, token):
    monkeypatch.setenv("EDGESSL_API_TOKEN", token)
    with pytest.raises(TokenError, match=r"\$EDGESSL_API_TOKEN (is empty|has \d+ characters)"):
        resolve_token(config_for(tmp_path, tiny_bundle, clips))
    monkeypatch.delenv("EDGESSL_API_TOKEN")
    (tmp_path / "t").write_text(token)
    with pytest.raises(TokenError, match="at least 16"):
        resolve_token(config_for(tmp_path, tiny_bundle, clips, token_file=str(tmp_path / "t")))
    with pytest.raises(ValueError):
        Auth(token)


def test_the_command_says_why_it_does_not_start(tmp_path, tiny_bundle, clips):
    config = write_yaml(tmp_path / "edge.yaml", f"""
        state_dir: {tmp_path / "state"}
        model: {{bundle: {tiny_bundle}}}
        cameras: [{{id: cam, url: {clips["red"]}}}]
        api: {{port: 0}}
    """)
    proc = subprocess.run([sys.executable, "-m", "edgessl", "run", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "EDGESSL_API_TOKEN": "1"})
    assert proc.returncode != 0
    assert "$EDGESSL_API_TOKEN has 1 characters; at least 16 are needed" in proc.stderr


def test_an_empty_bearer_never_opens_a_route(tmp_path, tiny_bundle, clips, monkeypatch):
    monkeypatch.setenv("EDGESSL_API_TOKEN", "a-good-token-0123456789")
    with Daemon(config_for(tmp_path, tiny_bundle, clips)) as daemon:
        for header in ("Bearer ", "Bearer", "bearer  ", "", "Basic a-good-token-0123456789", "Bearer a-good-token"):
            assert raw_status(daemon.api_url, "GET", "/v1/classes", {"Authorization": header}) == 401, header
        assert raw_status(daemon.api_url, "GET", "/v1/classes",
                          {"Authorization": "Bearer a-good-token-0123456789"}) == 200


def test_a_first_start_on_a_full_disk_leaves_no_empty_token(tmp_path, tiny_bundle, clips, monkeypatch):
    monkeypatch.delenv("EDGESSL_API_TOKEN", raising=False)
    with tmpfs(tmp_path / "small", "256k") as disk:
        config = make_config(disk, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                             api={"port": 0}, storage_reserve_bytes=0)
        (disk / "state").mkdir()
        filler = fill(disk)
        daemon = Daemon(config)
        with pytest.raises(Exception, match="token"):
            daemon.start()
        daemon.stop()
        assert not (disk / "state" / "api-token").exists()
        assert not list((disk / "state").glob(".api-token*"))
        filler.unlink()  # space again: the next start writes a whole token
        with Daemon(config) as daemon:
            assert len((disk / "state" / "api-token").read_text().strip()) >= 16
            assert daemon.api_token == (disk / "state" / "api-token").read_text().strip()
