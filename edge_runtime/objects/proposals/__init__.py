"""Proposal plug-ins: where in a frame something may be (boxes), before any tracking.

A proposer is one file in this folder that declares `NAME`, its typed `Options` (with
`type: Literal[NAME]`) and `create(options, masks) -> Proposer`, plus one line in `PROPOSERS`.
The camera config's `objects.proposer` is validated against the union of every registered
`Options`, told apart by `type`, as sinks and backends are. Motion (background subtraction) is
the one built in; a learned proposer (a detector) is another file here, and the tracker does not
change: it only sees boxes.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Protocol, Union

import numpy as np
from pydantic import Field

from edgessl.edge_runtime.objects.zones import Masks
from edgessl.edge_runtime.schema import StrictModel
from edgessl.errors import EdgesslError

# name (the `type:` in the config) -> module
PROPOSERS: dict[str, str] = {
    "motion": "edgessl.edge_runtime.objects.proposals.motion",
}


class ProposerError(EdgesslError):
    """A proposer is unknown or could not start."""


class ProposerOptions(StrictModel):
    """What every proposer's options have; a proposer's `Options` adds `type: Literal[NAME]`."""

    type: str = Field(description="the kind of proposer")


class Proposer(Protocol):
    def propose(self, frame: np.ndarray) -> np.ndarray:
        """(K, 4) boxes (x0, y0, x1, y1) in the frame's pixels where something may be."""
        ...

    def background(self) -> np.ndarray | None:
        """What the view looks like without the objects (BGR, the frame's size), when the
        proposer models it; None otherwise. The tracker compares a stopped object with it."""
        ...


def proposer_module(name: str) -> ModuleType:
    try:
        target = PROPOSERS[name]
    except KeyError:
        raise ProposerError(f"unknown proposer {name!r}; valid: {', '.join(sorted(PROPOSERS))}") from None
    module = importlib.import_module(target)
    missing = [a for a in ("NAME", "Options", "create") if not hasattr(module, a)]
    if missing or module.NAME != name:
        raise ProposerError(f"proposer module {target} must declare NAME = {name!r}, Options and create(); "
                            f"missing: {', '.join(missing) or 'NAME = ' + repr(name)}")
    return module


def create_proposer(options: ProposerOptions, masks: Masks) -> Proposer:
    return proposer_module(options.type).create(options, masks)


@functools.cache
def proposer_options_union() -> Any:
    options = tuple(proposer_module(name).Options for name in PROPOSERS)
    if len(options) == 1:
        return options[0]
    return Annotated[Union[options], Field(discriminator="type")]  # noqa: UP007 (a runtime tuple of types)


if TYPE_CHECKING:
    ProposerOptionsUnion = ProposerOptions
else:
    def __getattr__(name: str) -> Any:
        # Built on first use, not at import: the proposer files import this module.
        if name == "ProposerOptionsUnion":
            return proposer_options_union()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
