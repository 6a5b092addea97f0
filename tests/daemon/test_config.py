"""The daemon config: every field described in the schema, and errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgessl.cli import main
from edgessl.edge_runtime.daemon.config import ConfigError, DaemonConfig, json_schema
from edgessl.edge_runtime.daemon.config_file import check_text, load_config
from edgessl.edge_runtime.daemon.sinks import SINKS, sink_module

GOOD = """\
device: gate-01
model:
  bundle: bundle
cameras:
  - id: gate
    url: rtsp://192.168.1.20:554/stream1
    transport: udp
    regions:
      - {name: left, x: 0, y: 0, width: 0.5, height: 1}
      - {name: right, x: 0.5, y: 0, width: 0.5, height: 1}
  - id: tray
    url: /dev/video0
  - id: clip
    url: clips/demo.mp4
    loop: true
sinks:
  broker: {type: mqtt, host: 127.0.0.1, password_file: secrets/mqtt}
  events: {type: jsonl, path: events.jsonl}
  hook: {type: webhook, url: https://example.com/hook, retries: 3}
"""


def test_schema_describes_every_field():
    schema = json_schema()
    models = {"DaemonConfig": schema, **schema["$defs"]}
    undocumented = [f"{name}.{field}" for name, model in models.items()
                    for field, prop in model.get("properties", {}).items() if not prop.get("description")]
    assert not undocumented, f"fields without a description: {undocumented}"
    assert all(m.get("additionalProperties") is False for m in models.values() if "properties" in m)


def test_a_good_file_loads_with_paths_relative_to_it(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.model.bundle == tmp_path / "bundle"
    assert [(name, s.type) for name, s in config.sinks.items()] == [
        ("broker", "mqtt"), ("events", "jsonl"), ("hook", "webhook")]
    assert config.sinks["events"].path == tmp_path / "events.jsonl"  # type: ignore[attr-defined]
    assert config.sinks["broker"].password_file == tmp_path / "secrets" / "mqtt"  # type: ignore[attr-defined]
    gate, tray, clip = config.cameras
    assert (gate.kind, tray.kind, clip.kind) == ("rtsp", "v4l2", "file")
    assert clip.url == str(tmp_path / "clips" / "demo.mp4") and clip.plays_realtime
    assert [r.name for r in gate.region_list] == ["left", "right"]
    assert [r.name for r in tray.region_list] == ["full"]
    assert config.gallery_path == Path("/var/lib/edgessl/gallery.db")
    assert gate.regions[1].box(640, 480) == (320, 0, 640, 480)


def test_errors_name_the_line_of_the_offending_key(tmp_path):
    text = GOOD.replace("    transport: udp\n", "    transport: udp\n    stall_timeout: 3\n")  # line 8
    text = text.replace("  - id: tray\n    url: /dev/video0\n", "  - id: tray\n")  # url missing, item on line 12
    text = text.replace("host: 127.0.0.1,", "host: 127.0.0.1, qos: 7,")  # now line 17
    config, errors = check_text(text, "edge.yaml")
    assert config is None
    assert any(e.startswith("edge.yaml:8:5: cameras.0.stall_timeout: unknown key") for e in errors), errors
    assert any(e.startswith("edge.yaml:12:5: cameras.1.url: required key is missing") for e in errors), errors
    assert any(e.startswith("edge.yaml:17:41: sinks.broker.qos: Input should be 0, 1 or 2") for e in errors), errors


MINIMAL = "model: {bundle: b}\ncameras: [{id: a, url: x.mp4}]\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("model: {bundle: b}\ncameras: []\n", "edge.yaml:2:1: cameras: List should have at least 1 item"),
    ("model: {bundle: b, root: r}\ncameras: [{id: a, url: x.mp4}]\n", "edge.yaml:1:1: model: Value error, give exactly one"),
    ("model: {bundle: b}\ncameras:\n  - {id: a, url: x.mp4}\n  - {id: a, url: y.mp4}\n", "camera ids must be unique"),
    ("model: {bundle: b}\ncameras: [{id: 'a b', url: x.mp4}]\n", "cameras.0.id: String should match pattern"),
    ("model: {bundle: b}\ncameras: [{id: a, url: 'ftp://x'}]\n", "unsupported URL scheme 'ftp'"),
    ("model: {bundle: b}\ncameras: [{id: a, url: x.mp4, regions: [{name: r, x: 0.6, width: 0.5}]}]\n",
     "reaches outside the frame"),
    ("model: {bundle: b}\nmodel: {bundle: c}\ncameras: [{id: a, url: x.mp4}]\n", "edge.yaml:2:1: model: key repeated"),
    ("model: {bundle: b\ncameras: []\n", "edge.yaml:2:"),  # YAML syntax error, with its line
    ("", "expected a mapping"),
    (f"{MINIMAL}sinks:\n  hook: {{type: webhooks, url: 'http://x'}}\n",
     "edge.yaml:4:3: sinks.hook: Input tag 'webhooks' found using 'type' does not match any of the expected "
     "tags: 'jsonl', 'mqtt', 'webhook'"),
    (f"{MINIMAL}sinks:\n  events: {{path: e.jsonl}}\n", "edge.yaml:4:3: sinks.events: required key 'type' is missing"),
    (f"{MINIMAL}sinks:\n  events:\n    type: jsonl\n    path: e.jsonl\n    rotate: true\n",
     "edge.yaml:7:5: sinks.events.rotate: unknown key"),
    (f"{MINIMAL}sinks:\n  events:\n    type: jsonl\n", "edge.yaml:4:3: sinks.events.path: required key is missing"),
    (f"{MINIMAL}sinks:\n  my events: {{type: jsonl, path: e.jsonl}}\n",
     "edge.yaml:4:3: sinks.my events: not a valid name: String should match pattern"),
    (f"{MINIMAL}sinks:\n  - {{type: jsonl, path: e.jsonl}}\n", "edge.yaml:3:1: sinks: Input should be a valid dictionary"),
])
def test_invalid_configs(text, expected):
    config, errors = check_text(text, "edge.yaml")
    assert config is None
    assert any(expected in e for e in errors), errors


def test_load_config_raises_with_every_error(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("model: {bundle: b}\ncameras: [{id: a}]\nfoo: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "edge.yaml:2:" in str(info.value) and "edge.yaml:3:1: foo: unknown key" in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_config_command(tmp_path, capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "DaemonConfig" and "cameras" in schema["required"]
    (entry,) = schema["properties"]["sinks"]["patternProperties"].values()  # name -> one of the sinks
    assert entry["discriminator"]["propertyName"] == "type"
    assert entry["discriminator"]["mapping"] == {name: f"#/$defs/{sink_module(name).Options.__name__}"
                                                 for name in SINKS}
    assert len(entry["oneOf"]) == len(SINKS)

    good = tmp_path / "edge.yaml"
    good.write_text(GOOD)
    # The model must exist: an error until it does.
    assert main(["config", "check", str(good)]) == 1
    err = capsys.readouterr().err
    assert f"model.bundle: {tmp_path / 'bundle'} is not a bundle folder" in err
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "manifest.json").write_text("{}")
    assert main(["config", "check", str(good)]) == 0
    captured = capsys.readouterr()
    assert "valid" in captured.out and "sinks: broker (mqtt), events (jsonl), hook (webhook)" in captured.out
    # Camera files and devices that are not there (yet) are warnings: the daemon retries them.
    assert "warning: cameras.clip.url:" in captured.err and "demo.mp4 does not exist" in captured.err
    if not Path("/dev/video0").exists():
        assert "warning: cameras.tray.url: /dev/video0 does not exist" in captured.err

    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("loop: true", "loop: sometimes"))
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:15:5: cameras.2.loop:" in err and "1 error" in err


def test_model_is_frozen_and_strict():
    config = DaemonConfig.model_validate({"model": {"bundle": "/b"}, "cameras": [{"id": "a", "url": "/x.mp4"}]})
    with pytest.raises(Exception):  # noqa: B017 (pydantic's ValidationError for a frozen instance)
        config.device = "other"  # type: ignore[misc]
    assert config.device  # defaults to the host name


def test_the_shipped_example_is_valid():
    example = Path(__file__).resolve().parents[2] / "edge_runtime" / "deploy" / "edge.example.yaml"
    config, errors = check_text(example.read_text(), str(example), example.parent)
    assert config is not None, errors
    assert [c.kind for c in config.cameras] == ["rtsp", "v4l2", "http", "file", "rtsp"]
    assert config.cameras[-1].objects is not None and config.cameras[-1].region_list == []
    assert config.model.root == Path("/var/lib/edgessl/device")


def test_run_needs_only_a_device_root_and_a_camera(tmp_path):
    """`edgessl run --root DIR --camera URL`: no config file; the state lives beside the root."""
    import argparse

    from edgessl.edge_runtime.cli.run import add_arguments, build_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    root = tmp_path / "device"
    config = build_config(parser.parse_args(["--root", str(root), "--camera", str(tmp_path / "clip.mp4"),
                                             "--camera", "door=rtsp://127.0.0.1:8554/door", "--port", "0"]))
    assert config.model.root == root.resolve() and config.state_dir == (root / "state").resolve()
    assert [(c.id, c.kind, c.loop) for c in config.cameras] == [("cam1", "file", True), ("door", "rtsp", False)]
    assert config.api.port == 0
    with pytest.raises(ConfigError, match="give --camera URL"):
        build_config(parser.parse_args(["--root", str(root)]))
    # ROOT/edge.yaml, when there, is the config.
    root.mkdir()
    (root / "edge.yaml").write_text("device: dev-1\nstate_dir: state\ncameras: [{id: a, url: /dev/video3}]\n"
                                    "model: {bundle: /nowhere}\n")
    config = build_config(parser.parse_args(["--root", str(root)]))
    assert (config.device, config.model.root, config.model.bundle) == ("dev-1", root.resolve(), None)


def test_state_dir_cannot_be_the_device_root(tmp_path):
    with pytest.raises(Exception, match="state_dir and model.root are both"):
        DaemonConfig.model_validate({"state_dir": str(tmp_path), "model": {"root": str(tmp_path)},
                                     "cameras": [{"id": "a", "url": "/x.mp4"}]})
