"""Where events go: sinks are plain callables `sink(event) -> None`.

An event is a region's label change (`Event`, `kind: "region"`) or something an object did
(`ObjectEvent`, `kind: "object"`: entered, label, changed, left); both have `camera`, `device`
and `as_dict()`, which is what the JSON-lines and webhook sinks write.

Each sink runs on a worker thread of its own behind a bounded queue (`SinkRunner`), so a
sink that raises, blocks or falls behind never stops or slows the inference loop or the
other sinks: its errors are logged and counted, and when its queue is full it loses the
oldest message. Sinks that hold a connection or a file also have `close()`.

Kinds of sink are plug-ins: one file each in this folder, registered by name in `SINKS`.
A sink file declares

    NAME = "mqtt"                     # the `type:` of its config entries
    REQUIRES = ("paho.mqtt",)         # Python packages it imports (lazily, inside the sink)
    class Options(SinkOptions):       # its config entry, with `type: Literal["mqtt"]`
    def create(options, context) -> Sink

and the config's `sinks:` mapping (name -> options) is validated against the union of every
registered `Options`, told apart by `type`. A sink file imports nothing from the daemon's
config (`edgessl.edge_runtime.schema` has `StrictModel` and `ConfigPath`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias, TypeVar, Union

from pydantic import Field, model_validator

from edgessl.edge_runtime.objects.events import ObjectEvent
from edgessl.edge_runtime.redact import redact_text
from edgessl.edge_runtime.schema import StrictModel
from edgessl.edge_runtime.timestamps import iso
from edgessl.errors import EdgesslError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """A region's stable label changed."""

    device: str
    camera: str
    region: str
    label: str
    previous: str | None  # None for the first label after start-up
    score: float  # smoothed score of `label`
    capture_time: float  # wall clock when the reader got the frame that settled the change
    decision_time: float  # wall clock when the change was decided
    frame: int  # the frame's sequence number on its camera
    model: str  # name:version of the model that decided
    nearest: str | None = None  # the best-scoring class, also when `label` is unknown

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kind"] = "region"
        out["score"] = round(self.score, 4)
        out["capture_time"] = iso(self.capture_time)
        out["decision_time"] = iso(self.decision_time)
        out["latency_ms"] = round((self.decision_time - self.capture_time) * 1000, 1)
        return out

    def state(self) -> dict[str, Any]:
        """The retained state of the region (the newest event, without the previous label)."""
        out = self.as_dict()
        del out["previous"]
        return out


SinkEvent: TypeAlias = Event | ObjectEvent
Sink = Callable[[SinkEvent], None]


class SinkRunner:
    """Runs one sink on its own thread; `submit` never blocks and never raises."""

    def __init__(self, name: str, sink: Sink, *, maxsize: int = 1000,
                 on_error: Callable[[str], None] | None = None, on_drop: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.sink = sink
        self.delivered = 0
        self.errors = 0
        self.dropped = 0
        self._queue: queue.Queue[SinkEvent | None] = queue.Queue(maxsize=maxsize)
        self._on_error = on_error
        self._on_drop = on_drop
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    def submit(self, event: SinkEvent) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # lose the oldest
                    self.dropped += 1
                    if self._on_drop:
                        self._on_drop(self.name)
                except queue.Empty:
                    pass

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            try:
                self.sink(event)
                self.delivered += 1
            except Exception as exc:
                self.errors += 1
                log.warning("sink %s failed: %s", self.name, redact_text(str(exc)))
                if self._on_error:
                    self._on_error(self.name)

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what is queued (for up to `timeout` s), then close the sink."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        _close(self.name, self.sink)


# -- the registry -----------------------------------------------------------------------------

# name (the `type:` in the config) -> module. A new sink is one file in this folder and one line here.
SINKS: dict[str, str] = {
    "jsonl": "edgessl.edge_runtime.daemon.sinks.jsonl",
    "mqtt": "edgessl.edge_runtime.daemon.sinks.mqtt",
    "webhook": "edgessl.edge_runtime.daemon.sinks.webhook",
}

PIP_EXTRA = "edge"  # the extra that installs what the built-in sinks need; a sink file may set EXTRA


class SinkError(EdgesslError):
    """A sink is unknown, lacks a Python package, or could not start."""


class SinkOptions(StrictModel):
    """What every sink's config entry has; a sink's `Options` adds `type: Literal[NAME]` and its own keys."""

    type: str = Field(description="the kind of sink")
    queue_size: int = Field(default=1000, ge=1, le=1_000_000, description="events buffered for this sink; a sink "
                            "that falls further behind loses the oldest")

    @model_validator(mode="after")
    def _installed(self) -> SinkOptions:
        missing = sink_packages_missing(self.type)
        if missing:
            raise ValueError(missing)
        return self


@dataclass(frozen=True)
class SinkContext:
    """What a sink gets from the daemon besides its options."""

    name: str  # the sink's key in the config (metrics, health, logs)
    device: str  # the daemon's device name
    stop: threading.Event  # set when the daemon stops: give up waits and retries


def sink_module(name: str) -> ModuleType:
    """The module registered under `name`, imported now (it imports no optional package at its top)."""
    try:
        target = SINKS[name]
    except KeyError:
        raise SinkError(f"unknown sink type {name!r}; valid types: {', '.join(sorted(SINKS))}") from None
    module = importlib.import_module(target)
    declared = [a for a in ("NAME", "REQUIRES", "Options", "create") if not hasattr(module, a)]
    if declared or module.NAME != name:
        raise SinkError(f"sink module {target} must declare NAME = {name!r}, REQUIRES, Options and create(); "
                        f"missing: {', '.join(declared) or 'NAME = ' + repr(name)}")
    return module


def sink_packages_missing(name: str) -> str | None:
    """None when every package the sink `name` REQUIRES imports, else a message naming the missing
    packages and the pip extra that installs them."""
    module = sink_module(name)
    missing = []
    for package in module.REQUIRES:
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):  # a parent package is missing
            found = False
        if not found:
            missing.append(package)
    if not missing:
        return None
    extra = getattr(module, "EXTRA", PIP_EXTRA)
    return (f"the {name} sink needs the Python package{'s' if len(missing) > 1 else ''} {', '.join(missing)}, "
            f"which {'are' if len(missing) > 1 else 'is'} not installed: pip install 'edgessl[{extra}]'")


@functools.cache
def sink_options_union() -> Any:
    """Every registered sink's `Options`, as one union told apart by `type` (for pydantic)."""
    options = tuple(sink_module(name).Options for name in SINKS)
    if len(options) == 1:
        return options[0]
    return Annotated[Union[options], Field(discriminator="type")]  # noqa: UP007 (a runtime tuple of types)


if TYPE_CHECKING:
    SinkOptionsUnion = SinkOptions
else:
    def __getattr__(name: str) -> Any:
        # SinkOptionsUnion is built on first use, not at import: the sink files import this module.
        if name == "SinkOptionsUnion":
            return sink_options_union()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_sinks(sinks_config: Mapping[str, SinkOptions], device: str, stop: threading.Event) -> dict[str, Sink]:
    """One sink per config entry (name -> options), in order. When one cannot start, the ones
    already built are closed and SinkError says which sink failed and why."""
    built: dict[str, Sink] = {}
    try:
        for name, options in sinks_config.items():
            missing = sink_packages_missing(options.type)
            if missing:
                raise SinkError(f"sink {name!r}: {missing}")
            try:
                built[name] = sink_module(options.type).create(options, SinkContext(name, device, stop))
            except Exception as exc:
                raise SinkError(f"sink {name!r} ({options.type}) could not start: {redact_text(str(exc))}") from exc
    except BaseException:
        for built_name, sink in built.items():
            _close(built_name, sink)
        raise
    return built


def start_sinks(sinks_config: Mapping[str, SinkOptions], device: str, stop: threading.Event, *,
                extra: Mapping[str, Sink] | None = None, on_error: Callable[[str], None] | None = None,
                on_drop: Callable[[str], None] | None = None) -> list[SinkRunner]:
    """`build_sinks`, plus `extra` (name -> callable, default queue size), each on its own SinkRunner."""
    sinks = build_sinks(sinks_config, device, stop) | dict(extra or {})
    sizes = {name: options.queue_size for name, options in sinks_config.items()}
    return [SinkRunner(name, sink, maxsize=sizes.get(name, 1000), on_error=on_error, on_drop=on_drop)
            for name, sink in sinks.items()]


T = TypeVar("T")


def first_sink(runners: list[SinkRunner], kind: type[T]) -> T | None:
    """The first running sink that is a `kind` (e.g. MqttSink), or None."""
    return next((r.sink for r in runners if isinstance(r.sink, kind)), None)


def _close(name: str, sink: Sink) -> None:
    close = getattr(sink, "close", None)
    if close is not None:
        try:
            close()
        except Exception as exc:
            log.warning("sink %s: close failed: %s", name, exc)
