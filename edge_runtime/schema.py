"""The base of every configuration and file schema of the edge runtime.

Unknown keys are errors (a typo is never silently ignored) and values are frozen, so a
config or manifest read once cannot drift while the daemon runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

# Names of cameras, regions, zones, sinks and devices: safe in MQTT topics, URLs, file names and metric labels.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_config_path(value: Path, info: ValidationInfo) -> Path:
    """`value` with `~` expanded, taken from the folder in the validation context's `base_dir`
    when it is relative (no `base_dir`: left relative)."""
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    return value if value.is_absolute() or base is None else Path(base) / value


# A path in a config file: relative ones are taken from the config file's folder.
ConfigPath = Annotated[Path, AfterValidator(resolve_config_path)]
