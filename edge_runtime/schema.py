"""The base of every configuration and file schema of the edge runtime.

Unknown keys are errors (a typo is never silently ignored) and values are frozen, so a
config or manifest read once cannot drift while the daemon runs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
