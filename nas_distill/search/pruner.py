"""Pareto-aware successive halving: whether a student, evaluated part-way through its training, goes on.

A generic pruner compares a trial's partial accuracy with every other trial's. In distillation that
punishes the small, fast students: they learn slower and always trail the large ones early, yet they are
exactly the ones the front needs. Here a student is compared only with its *peers*, the students whose
architecture metrics (latency, size: known before any training) are no better than its own. A student
goes on when it ranks in the top ``1/eta`` of its peers at that rung (asynchronous successive halving,
per speed class), or when nothing at the rung dominates it in the joint space (partial values and known
metrics), so a student on the current front is never stopped.

A rung stops students only once it has shown that it ranks them as the end of training does: at least
:data:`MIN_FINISHED` trials that finished carry a record at that rung, and their partial values agree in
order with their final ones (Kendall's tau-b at least :data:`MIN_AGREEMENT`). Early in distillation a
rung may say nothing yet: in a text task most students sit at the majority-class rate after a few steps,
and the order among them is noise; a stop there throws away students the front needs.

Every value is in *minimize form* (a maximized metric enters negated). The decision is a function of its
inputs alone: every worker reading the same study decides the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import kendalltau

from nas_distill.vocabulary import NO_PRUNER, PARETO_ASHA, PRUNERS  # noqa: F401 - the pruner's names


@dataclass(frozen=True)
class RungResult:
    """One trial at one rung."""

    #: the trial's number (names it in records; the decision does not depend on it)
    number: int
    #: the expensive objectives measured at this rung, minimize form
    partial: tuple[float, ...]
    #: the objectives fixed by the architecture, minimize form (may be empty)
    known: tuple[float, ...] = ()
    #: the trial's final values of the ``partial`` objectives, minimize form, when it finished
    final: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str


#: A rung stops no student before this many finished trials show how its values relate to final ones.
MIN_FINISHED = 5
#: ... nor while those trials' partial and final values agree in order less than this (Kendall's tau-b;
#: 0.5: three pairs of finished trials in the same order at the rung as at the end for each pair reversed).
MIN_AGREEMENT = 0.5


@dataclass(frozen=True)
class Agreement:
    """How the finished trials' values at a rung order them against their final values."""

    finished: int
    tau: float

    @property
    def predictive(self) -> bool:
        return self.finished >= MIN_FINISHED and self.tau >= MIN_AGREEMENT

    def describe(self) -> str:
        if self.finished < MIN_FINISHED:
            return (f"only {self.finished} finished trial{'' if self.finished == 1 else 's'} at this rung (a stop "
                    f"needs {MIN_FINISHED} to show the rung ranks students as the end of training does)")
        return (f"the {self.finished} finished trials at this rung rank with Kendall tau {self.tau:.2f} against "
                f"their final values (a stop needs {MIN_AGREEMENT})")


def default_fractions(eta: int) -> list[float]:
    """The rungs of a reduction factor: ``1/eta^2`` and ``1/eta`` of the step budget."""
    return [1.0 / eta**2, 1.0 / eta]


def rung_steps(total_steps: int, fractions: Sequence[float]) -> list[int]:
    """The training steps at which a trial of ``total_steps`` is evaluated: each fraction's step, at least
    1, below the end (the end is the trial's own evaluation), without repeats."""
    steps = sorted({min(max(1, round(f * total_steps)), total_steps - 1) for f in fractions})
    return [s for s in steps if 0 < s < total_steps]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (minimize form)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return bool(np.all(a <= b) and np.any(a < b))


def _ranks(points: np.ndarray) -> np.ndarray:
    """Non-dominated sorting rank of each row (0 = the front), minimize form."""
    n = len(points)
    ranks = np.full(n, -1)
    remaining = np.arange(n)
    level = 0
    while remaining.size:
        sub = points[remaining]
        front = [i for i in range(len(sub))
                 if not any(dominates(sub[j], sub[i]) for j in range(len(sub)) if j != i)]
        ranks[remaining[front]] = level
        remaining = np.delete(remaining, front)
        level += 1
    return ranks


def _sort_keys(results: Sequence[RungResult]) -> list[tuple]:
    """Per result, a key that sorts best first: the value for one expensive objective, else the
    non-dominated rank, then the sum of values."""
    points = np.array([r.partial for r in results], float)
    if points.shape[1] == 1:
        return [(float(p[0]),) for p in points]
    return [(int(rank), float(p.sum())) for rank, p in zip(_ranks(points), points)]


def _at_least_as_slow(other: RungResult, own: RungResult) -> bool:
    return all(o >= s for o, s in zip(other.known, own.known))


def rung_agreement(results: Sequence[RungResult]) -> Agreement:
    """Kendall's tau-b between the partial and the final values of the ``results`` that finished (0 when
    either side has no spread: the rung cannot tell them apart, or their ends are all alike)."""
    finished = [r for r in results if r.final is not None]
    if len(finished) < 2:
        return Agreement(len(finished), 0.0)
    partial = _key_ranks(_sort_keys(finished))
    final = _key_ranks(_sort_keys([RungResult(r.number, r.final) for r in finished]))
    if len(set(partial)) < 2 or len(set(final)) < 2:
        return Agreement(len(finished), 0.0)
    # rounded: an agreement exactly at the threshold must not fall below it by a float's last bit
    return Agreement(len(finished), round(float(kendalltau(partial, final).statistic), 9))


def _key_ranks(keys: list[tuple]) -> list[int]:
    """Each sort key's position among the distinct keys: ties share one."""
    order = {key: place for place, key in enumerate(sorted(set(keys)))}
    return [order[key] for key in keys]


def decide(own: RungResult, others: Sequence[RungResult], eta: int) -> Decision:
    """Whether ``own`` trains on past this rung, given the ``others`` evaluated at the same rung: stopped
    when :func:`successive_halving` stops it and the rung is predictive (:func:`rung_agreement`)."""
    ruling = successive_halving(own, others, eta)
    if ruling.keep:
        return ruling
    agreement = rung_agreement(others)
    if not agreement.predictive:
        return Decision(True, f"{ruling.reason}, but {agreement.describe()}")
    return Decision(False, f"{ruling.reason}; {agreement.describe()}")


def successive_halving(own: RungResult, others: Sequence[RungResult], eta: int) -> Decision:
    """The rule alone: whether ``own`` is in the top ``1/eta`` of its peers or dominated by nothing."""
    joint_own = own.partial + own.known
    dominating = sum(1 for o in others if dominates(o.partial + o.known, joint_own))
    peers = [own] + [o for o in others if _at_least_as_slow(o, own)]
    kind = "trials at this rung" if not own.known else "trials at this rung at least as slow"
    if len(peers) < eta:
        return Decision(True, f"only {len(peers)} of the {kind} (own included): too few to compare")
    keep = max(1, len(peers) // eta)
    # Peers tied with it do not push it out: early in training many students sit at one value (the
    # majority-class rate), and whichever of them happened to be asked later would be stopped otherwise.
    keys = _sort_keys(peers)
    place = 1 + sum(1 for key in keys[1:] if key < keys[0])
    if place <= keep:
        return Decision(True, f"ranks {place} of the {len(peers)} {kind}: in the top 1/{eta}")
    if dominating == 0:
        return Decision(True, f"ranks {place} of the {len(peers)} {kind}, but no trial at this rung "
                              f"dominates it")
    return Decision(False, f"ranks {place} of the {len(peers)} {kind} (the top 1/{eta} is {keep}), and "
                           f"{dominating} trial{'s' if dominating > 1 else ''} at this rung "
                           f"dominate{'' if dominating > 1 else 's'} it")
