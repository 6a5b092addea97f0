"""Reading `edge.yaml`: YAML errors and validation errors with the file, line and column of
the offending key, and a check that the files and devices the config names exist."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgessl.edge_runtime.daemon.config import ConfigError, DaemonConfig

# -- loading, with the line of each error ------------------------------------------------


def _duplicate_keys(node: Any, path: str = "") -> list[str]:
    import yaml

    errors = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            k = getattr(key, "value", None)
            if k in seen:
                errors.append(f"{key.start_mark.line + 1}:{key.start_mark.column + 1}: {path}{k}: key repeated "
                              f"(first on line {seen[k]}); YAML keeps only the last one")
            else:
                seen[k] = key.start_mark.line + 1
            errors += _duplicate_keys(value, f"{path}{k}.")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            errors += _duplicate_keys(item, f"{path}{i}.")
    return errors


def _locate(root: Any, loc: Sequence[int | str]) -> tuple[int, int]:
    """(line, column), 1-based, of the deepest node of `loc` found in the YAML tree."""
    import yaml

    node, mark = root, root.start_mark
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if getattr(key, "value", None) == part:
                    node, mark = value, key.start_mark
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            mark = node.start_mark
        else:
            break
    return mark.line + 1, mark.column + 1


def _without_tags(root: Any, loc: Sequence[int | str]) -> list[int | str]:
    """`loc` less the tags pydantic puts after a tagged union's value (sinks.broker.mqtt.qos is
    sinks.broker.qos in the file): a part that is not a key, where the mapping's `type` is that part."""
    import yaml

    node, out = root, []
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            values = {getattr(k, "value", None): v for k, v in node.value}
            if part not in values and getattr(values.get("type"), "value", None) == part:
                continue
            node = values.get(part)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
        out.append(part)
    return out


def format_errors(exc: ValidationError, root: Any | None, source: str) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if isinstance(p, int | str)]
        if root is not None:
            loc = _without_tags(root, loc)
        message = err["msg"]
        if loc and loc[-1] == "[key]":  # a mapping key (e.g. a sink name) that is not valid
            loc, message = loc[:-1], f"not a valid name: {message}"
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            message = "unknown key (not a field here; see `edgessl config schema`)"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] == "union_tag_not_found":
            message = f"required key {err['ctx']['discriminator']} is missing (it picks the kind; see `edgessl config schema`)"
        if root is not None:
            line, col = _locate(root, loc)
            lines.append(f"{source}:{line}:{col}: {where}: {message}")
        else:
            lines.append(f"{source}: {where}: {message}")
    return lines


def check_text(text: str, source: str = "<config>", base_dir: Path | None = None) -> tuple[DaemonConfig | None, list[str]]:
    """(config, []) when `text` is a valid config, else (None, error lines "source:line:col: key: message")."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
        return None, [f"{source}:{where}not valid YAML: {exc.problem or exc}"]
    except yaml.YAMLError as exc:
        return None, [f"{source}: not valid YAML: {exc}"]
    if root is None or not isinstance(data, dict):
        return None, [f"{source}:1:1: expected a mapping of settings (model:, cameras:, ...), got "
                      f"{type(data).__name__ if data is not None else 'an empty file'}"]
    errors = [f"{source}:{e}" for e in _duplicate_keys(root)]
    try:
        config = DaemonConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        return None, errors + format_errors(exc, root, source)
    return (None, errors) if errors else (config, [])


def load_config(path: str | Path) -> DaemonConfig:
    """Read and validate a YAML config file; ConfigError lists every problem with its line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from exc
    config, errors = check_text(text, str(path), path.resolve().parent)
    if config is None:
        raise ConfigError(f"{path} is not a valid daemon config:\n  " + "\n  ".join(errors))
    return config


def check_paths(config: DaemonConfig) -> tuple[list[str], list[str]]:
    """(errors, warnings) about files and devices the config names: a missing model is an error
    (the daemon cannot start); a missing camera file or device is a warning (the daemon starts
    and retries it with backoff, as it would a camera that is off)."""
    errors: list[str] = []
    warnings: list[str] = []
    m = config.model
    if m.bundle is not None and not (Path(m.bundle) / "manifest.json").is_file():
        errors.append(f"model.bundle: {m.bundle} is not a bundle folder (no manifest.json)")
    if m.root is not None:
        missing = [n for n in ("profile.toml", "trusted_keys", "slots") if not (Path(m.root) / n).exists()]
        if missing:
            errors.append(f"model.root: {m.root} is not a device root (missing {', '.join(missing)}); provision it "
                          f"with `edgessl device init --root {m.root} --profile NAME --trust KEY.pub`")
        elif not (Path(m.root) / "current").exists():
            errors.append(f"model.root: nothing is installed in {m.root} yet; flash a bundle with "
                          f"`edgessl flash BUNDLE --to {m.root}`")
    if config.api.token_file is not None and not Path(config.api.token_file).is_file():
        errors.append(f"api.token_file: {config.api.token_file} does not exist")
    for cam in config.cameras:
        if cam.kind in ("file", "v4l2") and not Path(cam.url).exists():
            warnings.append(f"cameras.{cam.id}.url: {cam.url} does not exist (yet); the daemon will keep retrying")
    return errors, warnings

