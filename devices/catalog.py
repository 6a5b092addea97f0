"""The device profiles shipped with edgessl (`devices/profiles/*.toml`), validated on load."""

from __future__ import annotations

from pathlib import Path

from edgessl.edge_runtime.device.profiles import (
    DeviceProfile,
    builtin_profile_names,
    builtin_profiles_dir,
    load_profile,
    resolve_profile,
)


def profile_names() -> list[str]:
    return builtin_profile_names()


def all_profiles() -> list[DeviceProfile]:
    """Every built-in profile, validated (an invalid file raises an error naming it)."""
    return [load_profile(builtin_profiles_dir() / f"{name}.toml") for name in profile_names()]


def get_profile(name_or_path: str | Path) -> DeviceProfile:
    """A built-in profile by name or a profile file by path; an unknown name lists the valid ones."""
    return resolve_profile(name_or_path)[0]
