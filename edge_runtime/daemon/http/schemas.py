"""What the API's requests and errors look like (the OpenAPI document is built from these)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from edgessl.edge_runtime.fewshot.labels import MAX_LABEL_CHARS

LABEL_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_LABEL_CHARS,
                "pattern": "^[^/\\\\\\u0000-\\u001f\\u007f-\\u009f]+$",
                "description": f"1-{MAX_LABEL_CHARS} printable characters without / or \\ (NFC, trimmed; "
                "case and spacing do not make a new class; 'unknown' is reserved)"}


class ErrorBody(BaseModel):
    """What every error answers."""

    ok: bool = Field(False, description="always false")
    detail: Any = Field(description="what went wrong and what to do (text), or the validation errors (list)")


_WHY = {400: "bad request (malformed JSON, form or image)", 401: "missing or wrong API token",
        403: "refused (e.g. uploads without a device root)",
        404: "no such camera, region, class, exemplar, track or sample",
        405: "method not allowed", 409: "conflict (camera not streaming, install running)",
        413: "body or image too large (bytes or decoded pixels)", 415: "unsupported content type",
        422: "invalid input (validation; invalid label; nothing passed the quality gates)",
        429: "too many live enrollments at once; see Retry-After",
        503: "busy (see Retry-After) or storage read-only / unwritable",
        507: "a filesystem the daemon writes to is full; the message says how to free space"}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": _WHY[code]} for code in codes}


def json_safe(value: Any) -> Any:
    """JSON-serialisable: non-finite floats as text, lone surrogates escaped."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# -- requests -----------------------------------------------------------------------------------


def valid_label(value: str) -> str:
    """The normalised label; a ValueError (422) saying what a valid label is."""
    from edgessl.edge_runtime.fewshot.labels import normalize_label
    from edgessl.errors import GalleryError

    try:
        return normalize_label(value)
    except GalleryError as exc:
        raise ValueError(str(exc)) from None


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=MAX_LABEL_CHARS, description="the class to enroll the shots as",
                       json_schema_extra={"pattern": LABEL_SCHEMA["pattern"]})
    region: str | None = Field(None, max_length=200, description="region of the camera (default: its first region)")
    frames: int | None = Field(None, ge=1, le=100, description="shots to keep (default: enrollment.frames)")
    negative: bool = Field(False, description="enroll the shots as negative examples: 'this is not <label>'")
    interval_s: float | None = Field(None, ge=0, le=60, allow_inf_nan=False, description="least time between shots")
    timeout_s: float | None = Field(None, gt=0, le=600, allow_inf_nan=False,
                                    description="give up collecting after this long")
    until: Literal["count", "stable"] = Field(
        "count", description="'count': keep `frames` shots; 'stable': keep shots until the class's leave-one-out "
        "figures say it has enough (100% with a margin, or no gain over the last few shots) or `max_frames` "
        "are kept; the answer's `stopped` and `stop_reason` say which")
    max_frames: int | None = Field(None, ge=1, le=100, description="with until='stable': most shots to keep "
                                   "(default: enrollment.max_frames)")

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        return valid_label(value)


class BackgroundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    region: str | None = Field(None, max_length=200, description="region of the camera (default: its first region)")
    frames: int | None = Field(None, ge=1, le=100, description="frames to sample (default: enrollment.background_frames)")
    interval_s: float | None = Field(None, ge=0, le=60, allow_inf_nan=False, description="time between frames")
    timeout_s: float | None = Field(None, gt=0, le=600, allow_inf_nan=False,
                                    description="give up sampling after this long")


class _Label(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=MAX_LABEL_CHARS, description="the class",
                       json_schema_extra={"pattern": LABEL_SCHEMA["pattern"]})

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        return valid_label(value)


class TrackEnrollRequest(_Label):
    crops: int = Field(5, ge=1, le=100, description="most crops to enroll (the sharpest, then the least alike)")


class TrackRejectRequest(_Label):
    pass


MAX_ACKS = 10_000
SampleKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,18}$")]  # a decimal id (SQLite's range)
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]


class AckRequest(BaseModel):
    """The samples a server has, each with the sha256 it computed of the JPEG it received."""

    model_config = ConfigDict(extra="forbid")

    samples: dict[SampleKey, Sha256Hex] = Field(max_length=MAX_ACKS, description=f"sample id (decimal, as text) -> "
                                                f"sha256 (hex) of its JPEG; at most {MAX_ACKS} entries. A sample "
                                                "is deleted only where the sha256 matches the stored one",
                                                # keys that are not decimal ids are invalid, as pydantic checks
                                                json_schema_extra={"additionalProperties": False})
