"""What one trial records: its timings, the attributes of a trained trial, the kind of a failure.

Trained: ``n_params`` (the parameter count, when known), every metric by name, ``artifact_id`` (when
the student was saved) and ``timings`` (seconds per phase: build, estimate or train + eval, save,
total). Failed: ``error_type`` / ``error`` (an environmental failure, such as a full disk or a lost
device, is kind ``Environment``: the machine failed, not the architecture).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .environment import environment_cause
from .records import N_PARAMS
from .store import worker_identity


class Clock:
    """The seconds one trial spends per phase, rounded as recorded (``timings``)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def lap(self, phase: str, since: float) -> None:
        """``phase`` took the time from ``since`` (a ``time.perf_counter()``) to now."""
        self.timings[phase] = round(time.perf_counter() - since, 4)

    def stop(self) -> dict[str, float]:
        """Record the ``total`` and return the timings."""
        self.lap("total", self.started)
        return self.timings


def trained_attrs(metric_names: Sequence[str], values: Sequence[float], params: int | None) -> dict[str, Any]:
    """A trained trial's ``n_params`` (when known) and metric values by name."""
    attrs: dict[str, Any] = {} if params is None else {N_PARAMS: params}
    attrs.update(zip(metric_names, values))
    return attrs


def shown_metrics(metric_names: Sequence[str], values: Sequence[float], attrs: dict[str, Any]) -> dict[str, Any]:
    """What the ``finished`` line shows: the metrics, and the parameter count unless it is one of them."""
    shown = dict(zip(metric_names, values))
    if N_PARAMS in attrs and "params" not in shown:
        shown["params"] = attrs[N_PARAMS]
    return shown


def failure_kind(exc: BaseException) -> tuple[str, str, str | None]:
    """``(error_type, error message, environmental cause or None)`` of a trial's exception."""
    kind = type(exc).__name__
    message = str(exc) or kind
    environment = environment_cause(exc)
    if environment is not None:
        # The machine failed, not the architecture: the arch is retried, never answered from the store
        # as failed.
        kind, message = "Environment", f"environment: {environment}: {message}"
    return kind, message, environment


def worker_attrs(label: str, world_size: int) -> dict[str, Any]:
    """The ``worker`` attribute: this machine and process, the worker's label, the group's size."""
    ident = worker_identity()
    ident["worker"] = label
    if world_size > 1:
        ident["world_size"] = world_size
    return ident
