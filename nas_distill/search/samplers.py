"""Optuna samplers that hand out every point of a :class:`SearchSpace` once: grid and random.

Why custom samplers: Optuna's ``GridSampler`` materialises the grid and, with several workers, may
propose the same point twice; its ``RandomSampler`` samples with replacement. nas-distill needs
"every architecture once, then stop" on one study shared by many processes, and spaces of 10**9 points.
Both samplers here return the whole architecture from ``sample_relative``, so they work through our
searchers and through plain ``study.optimize`` (``trial.suggest_categorical`` per key).

Which point a trial *holds*
    A trial in state COMPLETE, RUNNING, WAITING or PRUNED holds the point named by its claim (the system
    attr ``nas_distill:claim``), or else by its params (or, for a WAITING enqueued trial, its
    ``fixed_params``) when they name a point of the space. A FAILED trial holds nothing, so its
    architecture is handed out again; neither does a trial whose claim is :data:`RELEASED` (one the
    orchestrator gave up before training it, recorded PRUNED).

Claim protocol (Optuna has no atomic "claim a point"; trial numbers, however, are unique)
    1. Read the points held by the other trials; choose a free index (grid: the smallest; random: a
       draw seeded by ``(seed, trial.number, attempt)``). None free: the space is exhausted.
    2. Write the index as this trial's claim.
    3. Re-read the other trials. If *any* other trial holds the same index (for ``bo`` with
       ``canonical_arch``: an equivalent one), withdraw the claim, sleep a short random time and go back
       to 1. Otherwise the point is ours; the params are written after.
    Safety: say A and B both end up keeping x. Each wrote its claim before its re-read. If A's re-read
    did not see B's claim, it ran before B's write, so B's re-read (after B's write) ran after A's write
    and saw A's claim, and B yielded: a contradiction. The rule "yield on any conflict" needs no
    tie-break; two claimants may both yield (a retry, never a duplicate), and the random backoff lets
    one of them win the next round. This relies only on the storage showing a write to every later read
    (true of SQLite, PostgreSQL, the journal and in-memory storages).

Cost per suggestion: two reads of the study's trials and O(#trials) set work; never O(space size), so a
10**9-point space costs no more than a 10-point one. Random search reads once while many points are free:
its first round chooses from the previous claim's re-read (step 1 needs no fresh read; step 3 does). Random
draws by rejection while less than half the space is held, and enumerates the free indices (then fewer than
2 x #trials) when more is.
"""

from __future__ import annotations

import random
import time
from typing import Any, Mapping, Sequence

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from ..errors import SearchSpaceExhausted
from ..store import optuna_internals
from .space import SearchSpace

__all__ = [
    "CLAIM_KEY",
    "HOLDING_STATES",
    "RELEASED",
    "HeldIndices",
    "SpaceGridSampler",
    "SpaceRandomSampler",
    "held_indices",
    "space_exhausted",
    "trial_index",
]

#: System attr holding the flat index a trial claimed.
CLAIM_KEY = "nas_distill:claim"
#: The claim of a trial given up before it trained: it holds no point, whatever its params.
RELEASED = -1
#: Trial states whose point counts as taken. FAIL is left out on purpose: a failed point is retried.
HOLDING_STATES = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)
# What the claim's re-read reads: the holding states, plus FAIL for the orchestrator (take_snapshot).
_SNAPSHOT_STATES = HOLDING_STATES + (TrialState.FAIL,)
# A livelock needs every round to collide; after this many rounds something else is wrong.
_MAX_CLAIM_ROUNDS = 200
# Free points the last verified read must show for a random claim's first round to choose from it
# instead of reading again (see _ClaimingSampler._remembered_held).
_REUSE_MIN_FREE = 256
_BACKOFF_S = 0.002


def trial_index(trial: FrozenTrial, space: SearchSpace) -> int | None:
    """The flat index of the point ``trial`` holds, or ``None`` (no claim, params not a point)."""
    claim = trial.system_attrs.get(CLAIM_KEY)
    if claim is not None:
        return None if claim == RELEASED else int(claim)
    for params in (trial.params, trial.system_attrs.get("fixed_params")):
        if params and all(key in params for key in space.keys):
            try:
                return space.index_of(params)
            except (KeyError, ValueError, TypeError):
                return None
    return None


class HeldIndices(set):
    """A set of held indices, with ``trials``: the trials it was computed from (see
    :meth:`_ClaimingSampler.take_snapshot`)."""

    trials: Sequence[FrozenTrial] = ()


def held_indices(study: Study, space: SearchSpace, exclude_number: int | None = None) -> set[int]:
    """The indices held by the study's COMPLETE / RUNNING / WAITING / PRUNED trials.

    Returns a :class:`HeldIndices`, whose ``trials`` are the trials read (FAILED ones too).
    """
    held = HeldIndices()
    held.trials = study.get_trials(deepcopy=False, states=_SNAPSHOT_STATES)
    for trial in held.trials:
        if trial.state not in HOLDING_STATES or trial.number == exclude_number:
            continue
        index = trial_index(trial, space)
        if index is not None:
            held.add(index)
    return held


def space_exhausted(study: Study, space: SearchSpace) -> bool:
    """True when every point of ``space`` is held by a trial of ``study`` (O(#trials), never O(size))."""
    if len(study.get_trials(deepcopy=False, states=HOLDING_STATES)) < len(space):
        return False  # cheap answer for big spaces
    return len(held_indices(study, space)) >= len(space)


class _ClaimingSampler(BaseSampler):
    """Shared machinery: the whole point from ``sample_relative``, made unique by the claim protocol."""

    def __init__(self, search_space: SearchSpace | Mapping[str, Sequence[Any]], *, seed: int | None = None):
        self._space = search_space if isinstance(search_space, SearchSpace) else SearchSpace(search_space)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        # A fixed seed makes the draws reproducible; None draws one now, so this sampler is consistent.
        self._seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**63)
        self._fallback = RandomSampler(seed=seed)  # for parameters outside the space
        self._backoff = random.Random()  # timing only; never affects which point is chosen
        self._snapshot: tuple[int, list[FrozenTrial]] | None = None
        # (study id, held indices) of the last claim's verified read, our own point included
        self._last_held: tuple[int, set[int]] | None = None

    def take_snapshot(self, number: int) -> list[FrozenTrial] | None:
        """The study's COMPLETE / RUNNING / WAITING / FAIL / PRUNED trials as read by the last claim of
        trial ``number`` (after the trial existed and held its claim), or None; handed out once.

        The orchestrator's budget check reads the same trials right after the claim; reusing this read
        spares one read of the study per trial.
        """
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None or snapshot[0] != number:
            return None
        return snapshot[1]

    @property
    def space(self) -> SearchSpace:
        return self._space

    # -------------------------------------------------------------- Optuna sampler interface
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._space.distributions()

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._snapshot = None  # only ever the read of the trial being sampled now
        if not search_space:
            return {}
        fixed = trial.system_attrs.get("fixed_params") or {}
        if all(key in fixed for key in self._space.keys):
            # An enqueued architecture: it is what the user asked for; just record it as our claim.
            index = self._space.index_of(fixed)
            storage = optuna_internals.study_storage(study)
            storage.set_trial_system_attr(optuna_internals.trial_id(trial), CLAIM_KEY, index)
            return self._space.point(index)
        return self._space.point(self._claim(study, trial))

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        # Inside study.optimize, stop once nothing is left (as Optuna's GridSampler does).
        if study._thread_local.in_optimize_loop and self.is_exhausted(study):
            study.stop()

    def reseed_rng(self) -> None:
        # Draws depend on (seed, trial number) only, and the claims keep copies apart.
        self._backoff.seed()

    # -------------------------------------------------------------- claim protocol
    def is_exhausted(self, study: Study) -> bool:
        """True when every point is held by a COMPLETE / RUNNING / WAITING / PRUNED trial."""
        return space_exhausted(study, self._space)

    def _claim(self, study: Study, trial: FrozenTrial) -> int:
        storage, trial_id = optuna_internals.study_storage(study), optuna_internals.trial_id(trial)
        for attempt in range(_MAX_CLAIM_ROUNDS):
            held = self._remembered_held(study) if attempt == 0 else None
            if held is None:
                held = held_indices(study, self._space, exclude_number=trial.number)
            if len(held) >= len(self._space):
                raise SearchSpaceExhausted(
                    f"all {len(self._space)} points of the search space are held by trials of study "
                    f"{study.study_name!r}"
                )
            index = self._choose(study, held, trial.number, attempt)
            storage.set_trial_system_attr(trial_id, CLAIM_KEY, index)
            verified = held_indices(study, self._space, exclude_number=trial.number)
            if not self._conflicts(index, verified):
                trials = getattr(verified, "trials", None)
                self._snapshot = (trial.number, trials) if trials is not None else None
                self._last_held = (optuna_internals.study_id(study), set(verified) | {index})
                return index
            # Conflict: yield, whoever else it is (see the module docstring for why).
            storage.set_trial_system_attr(trial_id, CLAIM_KEY, None)
            time.sleep(self._backoff.uniform(0, _BACKOFF_S * min(2**attempt, 64)))
        raise RuntimeError(
            f"trial {trial.number} could not claim a point in {_MAX_CLAIM_ROUNDS} rounds of the claim protocol"
        )

    def _conflicts(self, index: int, held: set[int]) -> bool:
        """Whether another trial already holds ``index`` (or, for samplers that know equivalent
        architectures, an equivalent point): any symmetric relation keeps the protocol's safety."""
        return index in held

    def _remembered_held(self, study: Study) -> set[int] | None:
        """The held indices of this sampler's last verified read (plus its own point), to choose from
        without reading the study again, or None: read afresh.

        Only the choice (step 1) may use an old read: safety rests on the re-read after the claim
        (step 3), which is always fresh. An old read misses the points claimed since, so the choice may
        collide (one more round); that is rare while many points are free, so only samplers whose choice
        spreads over the free points (random: ``_REUSE_OLD_READ``) use it, and only while the read
        shows at least ``_REUSE_MIN_FREE`` free points. Exhaustion is only ever concluded from a fresh
        read. Saves one read of the study per trial (``bench/load.py``).
        """
        last = self._last_held
        if not self._REUSE_OLD_READ or last is None or last[0] != optuna_internals.study_id(study):
            return None
        if len(self._space) - len(last[1]) < _REUSE_MIN_FREE:
            return None
        return last[1]

    #: Whether the claim's first round may choose from the last verified read (see _remembered_held).
    _REUSE_OLD_READ = False

    def _choose(self, study: Study, held: set[int], number: int, attempt: int) -> int:
        raise NotImplementedError


class SpaceGridSampler(_ClaimingSampler):
    """Grid search in the seed pool's order: the smallest index no other trial holds.

    Every point is proposed once before any repeat (there are none: when all points are held, sampling
    raises :class:`~nas_distill.errors.SearchSpaceExhausted`); a failed trial's point comes back first.

    Args:
        search_space: a :class:`SearchSpace` or a mapping key -> list of values.
        seed: unused by the order; accepted for a uniform signature.
    """

    def _choose(self, study: Study, held: set[int], number: int, attempt: int) -> int:
        index = 0
        while index in held:
            index += 1
        return index


class SpaceRandomSampler(_ClaimingSampler):
    """Uniform random search without replacement, reproducible for a given seed.

    The draw of trial ``n`` uses a generator seeded with ``(seed, n, attempt)``: the same seed on a
    fresh study gives the same sequence of architectures, whatever else ran before in the process.

    Args:
        search_space: a :class:`SearchSpace` or a mapping key -> list of values.
        seed: an int for reproducible draws; ``None`` for a random one.
    """

    # Draws spread over the free points: two workers choosing from old reads rarely collide.
    _REUSE_OLD_READ = True

    def _choose(self, study: Study, held: set[int], number: int, attempt: int) -> int:
        size = len(self._space)
        rng = np.random.default_rng([self._seed, number, attempt])
        if 2 * len(held) >= size:
            # Mostly used: the free indices are fewer than 2 x #trials, so listing them is cheap.
            free = [i for i in range(size) if i not in held]
            return free[int(rng.integers(len(free)))]
        while True:
            index = _uniform_index(rng, size)
            if index not in held:
                return index


def _uniform_index(rng: np.random.Generator, size: int) -> int:
    if size < 2**62:
        return int(rng.integers(size))
    # Beyond int64: 64 extra random bits make the modulo bias negligible.
    n_bytes = (size.bit_length() + 64 + 7) // 8
    return int.from_bytes(rng.bytes(n_bytes), "little") % size

