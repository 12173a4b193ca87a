"""``bo``: a model-based multi-objective Optuna sampler that knows which objectives need a trial.

In distillation, latency, parameter count and model size are fixed by the architecture: they can be
measured on an untrained student or predicted before any training. Only accuracy (or loss) needs a
trial. This sampler takes the cheap objectives of every candidate as known (``known_objectives``), models
only the others with one Gaussian process each (:mod:`.gp`), and proposes the free candidate with the
largest exact expected hypervolume improvement (:mod:`.ehvi`), optionally per unit of predicted cost.

Each suggestion
    1. Reads the study (the claim protocol's read: :mod:`.samplers`): COMPLETE trials are the data, and
       every point held by a COMPLETE / RUNNING / WAITING / PRUNED trial is excluded, as is every point
       ``canonical_arch`` maps onto the key of a held one. Trials the pruner stopped are data too, of
       lower fidelity: their last partial values plus the gain finished trials showed from that rung to
       the end, with that gain's scatter as extra noise (:mod:`.low_fidelity`); their points stay held.
    2. Candidates: every point of the space when it has at most ``enumerate_up_to`` points; otherwise a
       fresh uniform sample of ``n_candidates`` points plus every one-key change of the points on the
       current front, so a space of 1e9 points costs what one of 1e4 does.
    3. Before ``n_startup_trials`` observations (COMPLETE trials, and stopped ones the model can use): a
       random free candidate. Then one GP per objective that some candidate does not know (targets in
       the higher-is-better sign, whatever the study's direction); the front is the COMPLETE trials'
       values plus, for trials other workers are running, their known values or the GP means (a
       "kriging believer", so parallel workers spread out); the reference point lies 10% of each
       objective's range below its worst value seen.
    4. The claim protocol makes the choice unique: a point another worker claimed meanwhile is held at
       the re-read, and the next round chooses again without it.

``known_objectives(arch) -> {objective index: value}`` uses the sign convention of ``Searcher.feedback``
(higher is better): the sampler negates nothing itself, it converts the study's raw values instead. It is
called for every candidate of every suggestion (cache inside it if it is slow), may return only some
indices, or ``{}``: those objectives are modelled for that arch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ..errors import SearchSpaceExhausted
from .ehvi import expected_improvement_volume
from .gp import ArchGP, encode_space
from .low_fidelity import StoppedValue, stopped_values
from .pareto import find_pareto_front
from .samplers import _ClaimingSampler, held_indices, trial_index
from .space import SearchSpace

__all__ = ["CandidateScores", "SpaceBOSampler"]

# The GP's hyperparameter fit sees at most this many points once stopped trials join the data (every
# finished trial always): a step of the fit costs O(n^3), and trials stopped early may outnumber the
# finished ones several times; the posterior still conditions on all of them.
_MAP_POINTS = 200


@dataclass
class CandidateScores:
    """One suggestion's view (see :meth:`SpaceBOSampler.score_candidates`); ``gain`` is None during the
    start-up trials, where ``startup_position`` counts the trials already started."""

    candidates: list[int]
    mean: np.ndarray | None = None
    sd: np.ndarray | None = None
    front: np.ndarray | None = None
    reference: np.ndarray | None = None
    gain: np.ndarray | None = None
    startup_position: int = 0


class SpaceBOSampler(_ClaimingSampler):
    """GP + exact expected hypervolume improvement over a :class:`SearchSpace`; never repeats a held point.

    Args:
        search_space: a :class:`SearchSpace` or a mapping key -> list of values.
        seed: seeds the start-up draws, the candidate samples and tie breaks (per trial number).
        known_objectives: ``fn(arch) -> {objective index: value}``, higher is better; see the module doc.
        canonical_arch: ``key(arch) -> hashable``; archs with one key are one architecture.
        cost: ``fn(arch) -> predicted trial cost > 0``; the improvement is divided by it.
        n_startup_trials: observations (COMPLETE trials, and stopped ones the model can use) drawn at
            random before the model is used.
        enumerate_up_to: spaces of at most this many points are scored whole at every suggestion.
        n_candidates: the fresh sample per suggestion for larger spaces.
        use_stopped_trials: fit the model on the partial values of trials the pruner stopped too (see
            :mod:`.low_fidelity`); False: COMPLETE trials only.
    """

    def __init__(
        self,
        search_space: SearchSpace | Mapping[str, Sequence[Any]],
        *,
        seed: int | None = None,
        known_objectives: Callable[[dict], Mapping[int, float]] | None = None,
        canonical_arch: Callable[[dict], Any] | None = None,
        cost: Callable[[dict], float] | None = None,
        n_startup_trials: int = 5,
        enumerate_up_to: int = 20_000,
        n_candidates: int = 2_000,
        use_stopped_trials: bool = True,
    ):
        super().__init__(search_space, seed=seed)
        self._known = known_objectives
        self._canonical = canonical_arch
        self._cost = cost
        self._n_startup = int(n_startup_trials)
        self._enumerate_up_to = int(enumerate_up_to)
        self._n_candidates = int(n_candidates)
        self._use_stopped = bool(use_stopped_trials)
        self._levels, self._categorical = encode_space(self._space.values)
        # Flat index = sum(digit * stride), last key fastest (SearchSpace's order).
        radices = self._space.radices
        self._strides = [math.prod(radices[d + 1:]) for d in range(len(radices))]
        self._canonical_of: dict[int, Any] = {}
        self._models: dict[int, ArchGP] = {}  # per objective, warm-started from the previous fit
        #: The number of candidates scored by the last suggestion (bounded; see the module doc).
        self.last_candidate_count = 0

    # ------------------------------------------------------------------ the choice
    def _choose(self, study: Study, held: set[int], number: int, attempt: int) -> int:
        rng = np.random.default_rng([self._seed, number, attempt])
        scores = self.score_candidates(study, held, number, rng)
        if scores.gain is None:
            return self._startup_choice(scores.candidates, scores.startup_position, len(study.directions), rng)
        best = np.flatnonzero(scores.gain >= scores.gain.max())
        return int(scores.candidates[best[int(rng.integers(len(best)))]])

    def score_candidates(self, study: Study, held: set[int] | None = None, number: int | None = None,
                         rng: np.random.Generator | None = None) -> "CandidateScores":
        """What a suggestion for trial ``number`` sees: the free candidates and, past the start-up
        trials, each one's posterior (higher is better), the front, the reference point and the
        acquisition value (expected hypervolume improvement, per unit of cost when ``cost`` is set).

        ``held``: the held indices as the claim read them (with their ``trials``); None reads the study.
        """
        if held is None:
            held = held_indices(study, self._space, exclude_number=number)
        rng = rng if rng is not None else np.random.default_rng(self._seed)
        trials = getattr(held, "trials", None)
        if trials is None:
            trials = _read_trials(study)
        complete, values = self._complete(study, trials)
        pending = [i for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)
                   and t.number != number and (i := trial_index(t, self._space)) is not None]
        digits_done = self._digits([i for i, _ in complete])
        candidates = self._free_candidates(held, rng, digits_done, values)
        self.last_candidate_count = len(candidates)
        stopped = self._stopped(study, trials)
        n_stopped = 0 if stopped is None else len(stopped.digits)
        if len(complete) + n_stopped < self._n_startup:
            # every trial started so far moves the spread on, the stopped ones the model cannot use yet too
            pruned = sum(1 for t in trials if t.state == TrialState.PRUNED and trial_index(t, self._space) is not None)
            return CandidateScores(candidates, startup_position=len(complete) + len(pending) + pruned)
        # Candidates and the points other workers are running share one posterior.
        pool = self._digits(list(candidates) + pending)
        archs = [self._point(d) for d in pool]
        mean, sd = self._posterior(archs, pool, digits_done, values, stopped)
        n = len(candidates)
        front = np.vstack([values, mean[n:]])
        mean, sd, archs = mean[:n], sd[:n], archs[:n]
        reference = _reference(values, mean, sd)
        gain = expected_improvement_volume(mean, sd, front, reference)
        if self._cost is not None:
            gain = gain / np.array([_positive(self._cost(a), "cost", a) for a in archs])
        return CandidateScores(candidates, mean=mean, sd=sd, front=front, reference=reference, gain=gain)

    def posterior(self, study: Study, archs: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """The model a suggestion fits on ``study``, at ``archs`` (points of the space, held or not): the
        mean and standard deviation per arch and objective, higher is better (a known objective: its
        value, sd 0). Needs at least one COMPLETE trial."""
        trials = _read_trials(study)
        complete, values = self._complete(study, trials)
        if not complete:
            raise ValueError("the model needs at least one COMPLETE trial; the study has none")
        digits = self._digits([self._space.index_of(dict(arch)) for arch in archs])
        return self._posterior([self._point(d) for d in digits], digits,
                               self._digits([i for i, _ in complete]), values, self._stopped(study, trials))

    def stopped_observations(self, study: Study, trials: Sequence[FrozenTrial] | None = None) -> list[StoppedValue]:
        """The stopped trials' predicted final values the model is fitted on (higher is better; see
        :mod:`.low_fidelity`); empty when ``use_stopped_trials`` is off or the study names no metrics."""
        names = study.metric_names
        m = len(study.directions)
        if not self._use_stopped or names is None or len(names) != m:
            return []
        trials = _read_trials(study) if trials is None else trials
        return stopped_values(trials, list(names), list(_signs(study)), range(m))

    def _complete(self, study: Study,
                  trials: Sequence[FrozenTrial]) -> tuple[list[tuple[int, FrozenTrial]], np.ndarray]:
        """The COMPLETE trials holding a point, and their values higher-is-better ``(n, m)``."""
        signs = _signs(study)
        complete = [(i, t) for t in trials if t.state == TrialState.COMPLETE and t.values is not None
                    and len(t.values) == len(signs) and (i := trial_index(t, self._space)) is not None]
        return complete, np.array([t.values for _, t in complete], dtype=float).reshape(-1, len(signs)) * signs

    def _stopped(self, study: Study, trials: Sequence[FrozenTrial]) -> "_Stopped | None":
        """The stopped trials' values as GP data: per stopped point, a target and an extra variance per
        objective (NaN target: none for that objective); None when there are none."""
        observations = self.stopped_observations(study, trials)
        if not observations:
            return None
        index_of = {t.number: i for t in trials if t.state == TrialState.PRUNED
                    and (i := trial_index(t, self._space)) is not None}
        rows: dict[int, int] = {}
        m = len(study.directions)
        targets, variances = [], []
        for seen in observations:
            if seen.number not in index_of:
                continue
            row = rows.setdefault(seen.number, len(rows))
            if row == len(targets):
                targets.append(np.full(m, np.nan))
                variances.append(np.zeros(m))
            targets[row][seen.objective], variances[row][seen.objective] = seen.value, seen.variance
        if not rows:
            return None
        return _Stopped(self._digits([index_of[number] for number in rows]), np.array(targets), np.array(variances))

    def _conflicts(self, index: int, held: set[int]) -> bool:
        if index in held:
            return True
        if self._canonical is None:
            return False
        key = self._canonical_key(index)
        return any(self._canonical_key(other) == key for other in held)

    def _startup_choice(self, candidates: list[int], position: int, m: int, rng: np.random.Generator) -> int:
        """A start-up point: random, but spread over the range of a known objective when there is one.

        The ``position``-th start-up trial takes a random candidate from one slice of the candidates
        sorted by their first known objective (slices visited middle, ends, then between), so the first
        trials span the trade-off instead of clustering where most architectures are.
        """
        pick = int(rng.integers(len(candidates)))
        if self._known is None or position >= self._n_startup:
            return int(candidates[pick])
        known = self._known_matrix([self._point(d) for d in self._digits(candidates)], m)
        full = [j for j in range(m) if not np.isnan(known[:, j]).any()]
        if not full:
            return int(candidates[pick])
        order = np.argsort(known[:, full[0]], kind="stable")
        slices = np.array_split(order, self._n_startup)
        visit = _spread_order(self._n_startup)
        chosen = slices[visit[position]]
        if len(chosen) == 0:  # fewer free candidates than start-up slices (a small space nearly full)
            return int(candidates[pick])
        return int(candidates[int(chosen[int(rng.integers(len(chosen)))])])

    # ------------------------------------------------------------------ candidates
    def _free_candidates(self, held: set[int], rng: np.random.Generator, digits_done: np.ndarray,
                         values: np.ndarray) -> list[int]:
        """Flat indices no trial holds, one per canonical architecture, none equivalent to a held one."""
        size = len(self._space)
        if size <= self._enumerate_up_to:
            pool: Sequence[int] = range(size)
        else:
            draws = np.column_stack([rng.integers(r, size=self._n_candidates) for r in self._space.radices])
            pool = [self._flat(d) for d in draws] + self._front_neighbours(digits_done, values)
        taken = {self._canonical_key(i) for i in held} if self._canonical is not None else set()
        free, seen = [], set()
        for index in pool:
            if index in held or index in seen:
                continue
            seen.add(index)
            if self._canonical is not None:
                key = self._canonical_key(index)
                if key in taken:
                    continue
                taken.add(key)
            free.append(int(index))
        if not free:
            raise SearchSpaceExhausted(
                f"every free point of the {size}-point search space is equivalent (canonical_arch) to one "
                "a trial holds" if size <= self._enumerate_up_to or len(held) >= size
                else "no free candidate in this suggestion's sample"
            )
        return free

    def _front_neighbours(self, digits_done: np.ndarray, values: np.ndarray) -> list[int]:
        """Every one-key change of the COMPLETE trials on the front (where improvements are likely)."""
        if len(values) == 0:
            return []
        out = []
        for digits in digits_done[find_pareto_front(values)]:
            for d, radix in enumerate(self._space.radices):
                for value in range(radix):
                    if value != digits[d]:
                        changed = digits.copy()
                        changed[d] = value
                        out.append(self._flat(changed))
        return out

    def _canonical_key(self, index: int) -> Any:
        key = self._canonical_of.get(index)
        if key is None:
            key = self._canonical_of[index] = ("key", self._canonical(self._space.point(index)))
        return key

    # ------------------------------------------------------------------ the model
    def _posterior(self, archs: list[dict], digits: np.ndarray, digits_done: np.ndarray, values: np.ndarray,
                   stopped: "_Stopped | None" = None) -> tuple[np.ndarray, np.ndarray]:
        """Per arch and objective (higher is better): the known value with sd 0, or the GP's posterior.

        An objective known for every arch and every COMPLETE trial is also a GP input (scaled to [0, 1]):
        latency or size tracks capacity, which accuracy follows, more smoothly than any one key does.
        A stopped point joins an objective's data where it has a target and every input.
        """
        m = values.shape[1]
        mean, known_done = self._known_matrix(archs, m), self._known_matrix([self._point(d) for d in digits_done], m)
        sd = np.zeros_like(mean)
        inputs, inputs_done = self._inputs(digits), self._inputs(digits_done)
        if stopped is not None:
            known_stopped = self._known_matrix([self._point(d) for d in stopped.digits], m)
            inputs_stopped = self._inputs(stopped.digits)
        categorical = list(self._categorical)
        for objective in range(m):
            column, done = mean[:, objective], known_done[:, objective]
            if np.isnan(column).any() or np.isnan(done).any():
                continue
            low = min(column.min(), done.min())
            span = max(column.max(), done.max()) - low or 1.0
            inputs = np.column_stack([inputs, (column - low) / span])
            inputs_done = np.column_stack([inputs_done, (done - low) / span])
            if stopped is not None:
                inputs_stopped = np.column_stack([inputs_stopped, (known_stopped[:, objective] - low) / span])
            categorical.append(False)
        for objective in range(m):
            unknown = np.isnan(mean[:, objective])
            if not unknown.any():
                continue
            model = self._models.get(objective)
            if model is None or len(model.categorical) != len(categorical):
                model = self._models[objective] = ArchGP(np.array(categorical))
            x, y, noise, fit_on = inputs_done, values[:, objective], None, None
            if stopped is not None:
                rows = ~np.isnan(stopped.targets[:, objective]) & ~np.isnan(inputs_stopped).any(axis=1)
                if rows.any():
                    x = np.vstack([inputs_done, inputs_stopped[rows]])
                    y = np.concatenate([y, stopped.targets[rows, objective]])
                    variances = stopped.variances[rows, objective]
                    noise = np.concatenate([np.zeros(len(inputs_done)), variances])
                    fit_on = _map_points(len(inputs_done), variances)
            model.fit(x, y, noise, fit_on)
            mean[unknown, objective], sd[unknown, objective] = model.predict(inputs[unknown])
        return mean, sd

    def _inputs(self, digits: np.ndarray) -> np.ndarray:
        return np.column_stack([levels[digits[:, d]] for d, levels in enumerate(self._levels)])

    def _known_matrix(self, archs: list[dict], m: int) -> np.ndarray:
        """``known_objectives`` of each arch as an ``(len(archs), m)`` matrix, NaN where not known."""
        out = np.full((len(archs), m), np.nan)
        if self._known is not None:
            for row, arch in enumerate(archs):
                for objective, value in (self._known(arch) or {}).items():
                    if 0 <= int(objective) < m:
                        out[row, int(objective)] = _finite(value, arch)
        return out

    # ------------------------------------------------------------------ index arithmetic
    def _digits(self, indices: Sequence[int]) -> np.ndarray:
        """Flat indices -> per-key value positions ``(len(indices), n_keys)``."""
        indices = list(indices)
        if not indices:
            return np.zeros((0, len(self._strides)), dtype=np.int64)
        if len(self._space) < 2**62:
            flat = np.asarray(indices, dtype=np.int64)
            return np.column_stack([(flat // s) % r for s, r in zip(self._strides, self._space.radices)])
        return np.array([self._space.indices(int(i)) for i in indices], dtype=np.int64)

    def _flat(self, digits: Sequence[int]) -> int:
        return sum(int(d) * s for d, s in zip(digits, self._strides))

    def _point(self, digits: Sequence[int]) -> dict[str, Any]:
        return {key: values[int(d)] for key, values, d in zip(self._space.keys, self._space.values, digits)}


@dataclass
class _Stopped:
    """Stopped trials as GP data: their points ``digits (s, keys)``, targets ``(s, m)`` higher-is-better
    (NaN: none for that objective) and the targets' extra variances ``(s, m)``."""

    digits: np.ndarray
    targets: np.ndarray
    variances: np.ndarray


def _map_points(n_complete: int, variances: np.ndarray) -> np.ndarray | None:
    """The rows the GP's hyperparameters are fitted on when stopped trials follow the ``n_complete``
    finished ones: all while they number at most ``_MAP_POINTS``, else every finished trial and then the
    stopped ones with the smallest variance (the latest rungs), up to ``_MAP_POINTS`` (None: all)."""
    if n_complete + len(variances) <= _MAP_POINTS:
        return None
    extra = max(0, _MAP_POINTS - n_complete)
    chosen = np.argsort(variances, kind="stable")[:extra]
    return np.concatenate([np.arange(n_complete), n_complete + np.sort(chosen)])


def _read_trials(study: Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING,
                                                    TrialState.PRUNED))


def _signs(study: Study) -> np.ndarray:
    """+1 per objective the study maximises, -1 per one it minimises: the study stores raw values in its
    own directions, the model works higher-is-better, as known_objectives does."""
    return np.array([1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in study.directions])


def _spread_order(n: int) -> list[int]:
    """0..n-1 in an order that covers the range early: middle, both ends, then midpoints between."""
    order = [n // 2, 0, n - 1] if n >= 3 else list(range(n))
    seen = set(order)
    spans = sorted(order)
    while len(order) < n:
        gaps = [(b - a, a, b) for a, b in zip(spans, spans[1:]) if b - a > 1]
        _, a, b = max(gaps)
        middle = (a + b) // 2
        order.append(middle)
        seen.add(middle)
        spans = sorted(seen)
    return order


def _reference(values: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Per objective, 10% of its range below the worst value seen: in a trial, or known for a candidate
    (1 below when all are equal)."""
    reference = np.empty(values.shape[1])
    for objective in range(values.shape[1]):
        seen = np.concatenate([values[:, objective], mean[sd[:, objective] == 0, objective]])
        low, high = seen.min(), seen.max()
        reference[objective] = low - 0.1 * (high - low if high > low else 10.0)
    return reference


def _finite(value: Any, arch: dict) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"known_objectives returned {value!r} for {arch}; values must be finite numbers")
    return number


def _positive(value: Any, name: str, arch: dict) -> float:
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} returned {value!r} for {arch}; expected a finite number > 0")
    return number
