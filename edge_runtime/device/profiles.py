"""Device profiles: what a kind of device runs, how fast it must be and how much memory it has.

A profile is a TOML file validated by `DeviceProfile` (unknown keys are refused). The built-in
ones are data files in `devices/profiles/`; a device root keeps a copy of its own profile,
which the installer's health check reads. This module reads those files as data and imports
nothing from `edgessl.devices`, so the dependency arrow stays `devices -> edge_runtime`.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from edgessl.edge_runtime.schema import StrictModel
from edgessl.errors import EdgesslError

Precision = Literal["fp32", "fp16", "int8"]
PROFILE_SUFFIX = ".toml"



class CosineThresholds(StrictModel):
    """Lowest acceptable cosine between the device's embeddings of the golden inputs and the
    fp32 reference embeddings stored in the bundle, per precision of the artifact that runs."""

    fp32: float = Field(default=0.999, gt=0, le=1, description="fp32 artifacts: only float rounding differences")
    fp16: float = Field(default=0.99, gt=0, le=1, description="fp16 artifacts / engines")
    int8: float = Field(default=0.95, gt=0, le=1, description="int8 (quantized) artifacts")

    def for_precision(self, precision: str) -> float:
        try:
            return float(getattr(self, precision))
        except AttributeError:
            raise EdgesslError(f"no cosine threshold for precision {precision!r}; "
                               f"valid precisions: fp32, fp16, int8") from None


OptionValue = str | int | float | bool | list[str]


class DeviceProfile(StrictModel):
    """One kind of target device. Export reads it to choose formats; the device's health
    check reads it to choose a backend and to judge the installed model."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
                      description="profile name: lowercase letters, digits and '-', e.g. raspberry-pi-5")
    description: str = Field(description="one line for `edgessl devices list`")
    arch: Literal["x86_64", "arm64"] = Field(description="CPU architecture of the device")
    backends: list[str] = Field(min_length=1, description=(
        "inference backends in order of preference (names of edge_runtime.backends.BACKENDS); the health "
        "check uses the first one that is installed and for which the bundle has an artifact"))
    precisions: list[Precision] = Field(min_length=1, description=(
        "artifact precisions in order of preference, tried for each backend in turn; export builds these"))
    threads: int | None = Field(default=None, ge=1, description="inference threads (omit: the backend's default)")
    input_size: tuple[int, int] = Field(description=(
        "model input (height, width) export builds for this device; the bundle's own preprocess spec is "
        "what the device follows"))
    latency_budget_ms: float = Field(gt=0, description=(
        "slowest acceptable inference time per image (batch of 1, median), in milliseconds"))
    memory_budget_mb: int = Field(gt=0, description=(
        "most resident memory (MiB) the health-check process may reach while loading and running the model"))
    min_cosine: CosineThresholds = Field(default_factory=CosineThresholds, description=(
        "golden-set cosine thresholds per precision (defaults: fp32 0.999, fp16 0.99, int8 0.95)"))
    backend_options: dict[str, dict[str, OptionValue]] = Field(default_factory=dict, description=(
        "extra keyword options per backend name, passed to the backend when it loads "
        "(e.g. openvino: {device = \"CPU\"})"))
    runtime_versions: dict[str, str] = Field(default_factory=dict, description=(
        "version ranges (pip specifiers) of the runtimes this device has, e.g. tensorrt = \">=10,<11\"; "
        "export builds artifacts for these"))
    health_timeout_s: float = Field(default=300.0, gt=0, description=(
        "the health check is killed and the install refused after this many seconds (a TensorRT engine "
        "build on a small device takes minutes)"))
    notes: str = Field(default="", description="free text for operators (shown by `edgessl devices show`)")

    @field_validator("backends")
    @classmethod
    def _unique_backends(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"backends {v} name a backend twice")
        return v

    @field_validator("precisions")
    @classmethod
    def _unique_precisions(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"precisions {v} name a precision twice")
        return v

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError(f"input_size {v} must be two positive numbers (height, width)")
        return v


def builtin_profiles_dir() -> Path:
    """The folder of the profiles shipped with edgessl (`devices/profiles`), found without
    importing the `edgessl.devices` package (its files are data here)."""
    spec = importlib.util.find_spec("edgessl.devices")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "profiles"
    return Path(__file__).resolve().parents[2] / "devices" / "profiles"


def builtin_profile_names() -> list[str]:
    folder = builtin_profiles_dir()
    return sorted(p.stem for p in folder.glob(f"*{PROFILE_SUFFIX}")) if folder.is_dir() else []


def load_profile(path: str | Path) -> DeviceProfile:
    """Read and validate one profile file; errors name the file and the bad keys."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EdgesslError(f"{path}: cannot read device profile: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise EdgesslError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise EdgesslError(f"{path}: invalid device profile: {problems}") from exc


def resolve_profile(name_or_path: str | Path) -> tuple[DeviceProfile, Path]:
    """A built-in profile by name, or a profile file by path: (profile, the file it came from)."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix == PROFILE_SUFFIX or path.is_file():
        if not path.is_file():
            raise EdgesslError(f"{path}: device profile file not found")
        return load_profile(path), path
    builtin = builtin_profiles_dir() / f"{text}{PROFILE_SUFFIX}"
    if not builtin.is_file():
        raise EdgesslError(f"unknown device profile {text!r}; valid profiles: "
                           f"{', '.join(builtin_profile_names()) or '(none installed)'} (or a path to a .toml file)")
    profile = load_profile(builtin)
    if profile.name != text:
        raise EdgesslError(f"{builtin}: the file is named {text!r} but its profile is named {profile.name!r}")
    return profile, builtin

