"""Trials the pruner stopped, as low-fidelity observations of their final values.

A trial stopped at a rung (state PRUNED, user attrs ``early_stop`` and ``rungs``, read by
:func:`nas_distill.records.rungs_of` / :func:`~nas_distill.records.early_stop_of`) never reports final
values, but its partial ones still say much about its architecture.
Each trial that finished (COMPLETE, with ``rungs``) shows how far its values moved from a rung to the
end of training: its *gain* at that rung, ``final - partial`` per objective in the higher-is-better form.
For rung position ``k`` and objective ``j`` the gains of the finished trials give a mean ``g`` and a
variance; a stopped trial whose last rung is ``k`` with partial value ``v`` then counts as an
observation ``v + g`` of its final value, with the predictive variance of one more trial's gain,
``var * (1 + 1/n)`` from ``n`` finished trials, as its extra noise: the GP weighs it less than a
finished trial the more the gains scatter.

Fewer than two finished trials at that rung: the stopped trial's value is left out for that objective.
A partial value is measured on a slice of the evaluation set at a fraction of the training, so its
offset from a final value is unknown until finished trials show it; used as is, it would pull the
model in a direction nothing calibrates, and one gain has no spread to weigh it by. In a pipeline
study every finished trial passed every rung, so from the second one on every rung is calibrated.

The rung is matched by position in the ``rungs`` list (the first rung of every trial is at the same
fraction of its training). Only the last rung of a stopped trial is used: the earlier ones measure the
same architecture less far along.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from ..records import Rung, early_stop_of, rungs_of

__all__ = ["RungGain", "StoppedValue", "rung_gains", "stopped_values"]

_MIN_FINISHED = 2


@dataclass(frozen=True)
class RungGain:
    """How an objective moved from rung ``position`` to the end of training, over ``count`` finished trials
    (higher-is-better form): the mean gain and the variance of one more trial's gain around it."""

    position: int
    objective: int
    mean: float
    variance: float
    count: int


@dataclass(frozen=True)
class StoppedValue:
    """A stopped trial's predicted final value of one objective (higher is better) and its extra variance."""

    number: int
    objective: int
    value: float
    variance: float


def rung_gains(trials: Sequence[FrozenTrial], names: Sequence[str], signs: Sequence[float],
               objectives: Sequence[int]) -> dict[tuple[int, int], RungGain]:
    """Per (rung position, objective), the gain learned from the COMPLETE trials that carry ``rungs``.

    ``names``: the study's metric names (the keys of a rung's ``values``); ``signs``: +1 for an objective
    the study maximises, -1 for one it minimises.
    """
    samples: dict[tuple[int, int], list[float]] = {}
    for trial in trials:
        if trial.state != TrialState.COMPLETE or trial.values is None or len(trial.values) != len(names):
            continue
        for position, rung in enumerate(rungs_of(trial.user_attrs, trial.number)):
            for objective in objectives:
                partial = _value(rung, names[objective])
                if partial is not None:
                    gain = signs[objective] * (float(trial.values[objective]) - partial)
                    samples.setdefault((position, objective), []).append(gain)
    gains = {}
    for (position, objective), values in samples.items():
        if len(values) >= _MIN_FINISHED:
            count = len(values)
            variance = float(np.var(values, ddof=1)) * (1.0 + 1.0 / count)
            gains[position, objective] = RungGain(position, objective, float(np.mean(values)), variance, count)
    return gains


def stopped_values(trials: Sequence[FrozenTrial], names: Sequence[str], signs: Sequence[float],
                   objectives: Sequence[int]) -> list[StoppedValue]:
    """Each trial the pruner stopped (PRUNED with ``early_stop`` and ``rungs``), per objective whose gain
    at its last rung is learned: ``partial + mean gain`` (higher is better) and the gain's variance."""
    gains = rung_gains(trials, names, signs, objectives)
    out = []
    for trial in trials:
        if trial.state != TrialState.PRUNED or early_stop_of(trial.user_attrs, trial.number) is None:
            continue
        rungs = rungs_of(trial.user_attrs, trial.number)
        if not rungs:
            continue
        position = len(rungs) - 1
        for objective in objectives:
            partial, gain = _value(rungs[-1], names[objective]), gains.get((position, objective))
            if partial is not None and gain is not None:
                out.append(StoppedValue(trial.number, objective, float(signs[objective] * partial + gain.mean),
                                        gain.variance))
    return out


def _value(rung: Rung, name: str) -> float | None:
    value = rung.values.get(name)
    return value if value is not None and math.isfinite(value) else None
