"""Searchers: the seed API (``suggestion`` / ``feedback``) as thin wrappers over an Optuna sampler + study.

A searcher owns one Optuna sampler and asks one Optuna study: in memory (the seed's single-process
use), a named study in a storage URL shared by many workers, or a study you pass in. Every trial's params
are exactly the architecture (one ``CategoricalDistribution`` per key of the space), so
``study.best_trials[i].params`` is an architecture dict, and any Optuna tool reads the study.

Objectives. ``feedback`` takes a number or a sequence of numbers, every one higher-is-better (the seed's
convention). A sequence makes the search multi-objective: the study gets one direction per value and the
sampler works on the Pareto front; values are never summed. Without explicit ``directions`` an in-memory
study fixes its directions at the first ``feedback`` (the searcher cannot know the number of metrics
before): if the study was created with another count, it is rebuilt and the trials asked so far are
carried over. With explicit ``directions`` (the orchestrator's case, e.g. ``['maximize', 'minimize']``),
``feedback`` negates the higher-is-better value back for each "minimize" direction, so the study stores
the raw metric values; ``tell`` / ``tell_raw`` take values already in the study's directions.

Algorithms (``make_searcher`` names, case-insensitive): ``grid`` and ``random`` (every point once, unique
across processes: see :mod:`nas_distill.search.samplers`), ``bo`` (the default: our own GP + exact
expected hypervolume improvement sampler, :mod:`nas_distill.search.bo_sampler`, which never proposes a
held point and uses objectives known before training; numpy and scipy only, so TensorFlow / Keras
searches use it too), ``tpe`` (multivariate), ``gp`` (Optuna's GPSampler, which imports torch),
``nsga2``, or any ``optuna.samplers.BaseSampler``. ``bench/search_quality.py`` compares them.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import Trial, TrialState

from ..errors import SearchSpaceExhausted
from ..store import optuna_internals
from ..store.open import open_storage
from ..vocabulary import DEFAULT_STUDY_NAME
from .algorithms import ALGORITHM_ALIASES
from .bo_sampler import SpaceBOSampler
from .samplers import SpaceGridSampler, SpaceRandomSampler, _ClaimingSampler, space_exhausted
from .space import SearchSpace

__all__ = [
    "ALGORITHMS",
    "BayesianOptimizationSearcher",
    "GridSearcher",
    "RandomSearcher",
    "Searcher",
    "canonical_algorithm",
    "make_sampler",
    "make_searcher",
]

#: Canonical algorithm names accepted by :func:`make_searcher` (and the config's ``search_algorithm``).
ALGORITHMS = ("grid", "random", "bo", "tpe", "gp", "nsga2")

# The same spellings as config.py's search_algorithm, plus 'auto' (INTERNALS.md: sampler='auto').
_ALIASES = {**ALGORITHM_ALIASES, "auto": "bo"}


def canonical_algorithm(name: str) -> str:
    """``'NSGA-II'`` -> ``'nsga2'``, ``'BO'`` -> ``'bo'``; ``ValueError`` naming the choices otherwise."""
    if not isinstance(name, str):
        raise ValueError(f"algorithm must be a string or an optuna sampler, got {name!r}")
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in _ALIASES:
        raise ValueError(f"algorithm must be one of {list(ALGORITHMS)} or an optuna sampler, got {name!r}")
    return _ALIASES[key]


def make_sampler(
    algorithm: str | BaseSampler,
    search_space: SearchSpace,
    seed: int | None = None,
    *,
    known_objectives: Callable[[dict], Mapping[int, float]] | None = None,
    canonical_arch: Callable[[dict], Any] | None = None,
    cost: Callable[[dict], float] | None = None,
) -> BaseSampler:
    """The Optuna sampler for an algorithm name (see :data:`ALGORITHMS`); a sampler instance is returned as is.

    The model hints (``known_objectives``, ``canonical_arch``, ``cost``) go to ``bo``; the other samplers
    build no model of their own that could use them.
    """
    if isinstance(algorithm, BaseSampler):
        return algorithm
    name = canonical_algorithm(algorithm)
    if name == "gp" and not _gp_available():
        raise ImportError("sampler 'gp' (Optuna's GPSampler) needs torch and scipy: pip install 'nas-distill[torch]'")
    if name == "bo":
        return SpaceBOSampler(search_space, seed=seed, known_objectives=known_objectives,
                              canonical_arch=canonical_arch, cost=cost)
    if name == "grid":
        return SpaceGridSampler(search_space, seed=seed)
    if name == "random":
        return SpaceRandomSampler(search_space, seed=seed)
    if name == "tpe":
        # multivariate: the keys of an architecture interact (width x depth x heads); see the bench.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


class Searcher:
    """Base searcher: proposes architectures from an Optuna sampler, records metrics in an Optuna study.

    Args:
        search_space: mapping key -> list of values (or a :class:`SearchSpace`).
        seed: seed of the sampler (ignored when ``sampler`` is an instance).
        sampler: an algorithm name (see :data:`ALGORITHMS`) or an ``optuna.samplers.BaseSampler``.
            ``None``: the subclass's algorithm; for the base class, ``'bo'``.
        study: an existing ``optuna.Study`` to ask; its sampler is replaced by this searcher's.
        storage: a storage URL or ``optuna.storages.BaseStorage``; the study ``study_name`` in it is
            created or loaded (``load_if_exists``), so many workers share it.
        study_name: the study's name in ``storage`` (default ``'nas-distill'``).
        directions: ``'maximize'`` / ``'minimize'`` per objective. ``None``: from ``study`` / the stored
            study, or, in memory, fixed at the first ``feedback`` (all ``'maximize'``).
    """

    _algorithm = "bo"

    def __init__(
        self,
        search_space: Mapping[str, Sequence[Any]] | SearchSpace,
        *,
        seed: int | None = None,
        sampler: str | BaseSampler | None = None,
        study: optuna.Study | None = None,
        storage: Any = None,
        study_name: str | None = None,
        directions: Sequence[str | StudyDirection] | None = None,
    ):
        self.search_space = search_space
        self.space = search_space if isinstance(search_space, SearchSpace) else SearchSpace(search_space)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        if study is not None and not isinstance(study, optuna.Study):
            raise ValueError(f"study must be an optuna.Study or None, got {study!r}")
        if study is not None and (storage is not None or study_name is not None):
            raise ValueError("pass either study or storage/study_name, not both")
        if study_name is not None and storage is None:
            raise ValueError(f"study_name={study_name!r} needs a storage; an in-memory study has no name to share")
        self._directions = _validate_directions(directions)
        self.sampler = self._resolve_sampler(sampler)
        self.storage = storage
        default_name = DEFAULT_STUDY_NAME if storage is not None else None
        self.study_name = study_name if study_name is not None else default_name
        self._study = study
        if study is not None:
            study.sampler = self.sampler
            if self._directions is not None and list(study.directions) != self._directions:
                raise ValueError(f"directions={_names(self._directions)} disagree with the study's "
                                 f"{_names(study.directions)}")
        # In memory with unknown directions: fixed at the first feedback, rebuilding the study if needed.
        self._directions_open = study is None and storage is None and self._directions is None
        self.current_trial: Trial | None = None
        # Trials known to exist in the study (the last asked trial's number + 1; numbers are dense) and
        # whether the sampler has already found the space full: they decide when ask() reads the study
        # to refuse an exhausted space up front (see ask()).
        self._known_trials: int | None = None  # None: not asked yet, so unknown: check
        self._seen_exhausted = False

    def _resolve_sampler(self, sampler: str | BaseSampler | None) -> BaseSampler:
        if sampler is None:
            sampler = self._algorithm
        if not isinstance(sampler, (str, BaseSampler)):
            raise ValueError(f"sampler must be an algorithm name {list(ALGORITHMS)} or an optuna sampler, "
                             f"got {sampler!r}")
        return make_sampler(sampler, self.space, self.seed, **getattr(self, "model_hints", {}))

    # ------------------------------------------------------------------ the study
    @property
    def study(self) -> optuna.Study:
        """The Optuna study this searcher asks, created on first use."""
        if self._study is None:
            directions = self._directions or [StudyDirection.MAXIMIZE]
            if self.storage is None:
                self._study = optuna.create_study(directions=directions, sampler=self.sampler)
            else:
                self._study = self._open_stored_study()
        return self._study

    def _open_stored_study(self) -> optuna.Study:
        # A URL is opened as the workers open it (journal files, SQLite's busy timeout and WAL); the
        # searcher's caller drives its trials itself, so no heartbeats.
        storage = open_storage(self.storage, heartbeat_interval=None, grace_period=None)
        try:
            study = optuna.load_study(study_name=self.study_name, storage=storage, sampler=self.sampler)
        except KeyError:  # not there yet; load_if_exists settles a creation race between workers
            study = optuna.create_study(
                storage=storage,
                study_name=self.study_name,
                sampler=self.sampler,
                directions=self._directions or [StudyDirection.MAXIMIZE],
                load_if_exists=True,
            )
        if self._directions is not None and list(study.directions) != self._directions:
            raise ValueError(
                f"directions={_names(self._directions)} disagree with those of the stored study "
                f"{self.study_name!r}: {_names(study.directions)}"
            )
        return study

    # ------------------------------------------------------------------ proposing
    def ask(self) -> Trial:
        """Ask the study for a trial whose params are one architecture; it becomes ``current_trial``.

        Raises :class:`SearchSpaceExhausted` (grid, random, bo) when every point is taken.
        """
        study = self.study
        if isinstance(self.sampler, _ClaimingSampler) and self._may_be_exhausted():
            # Refuse without creating a trial (a wait-for-others loop would otherwise leave one FAILED
            # trial per poll). The sampler's claim detects exhaustion by itself; this read only spares
            # the study those trials, so it is done only when the space can be full: once the study is
            # known to hold as many trials as the space has points, or the sampler has found it full.
            if self.sampler.is_exhausted(study):
                self._seen_exhausted = True
                raise SearchSpaceExhausted(f"all {len(self.space)} points of the search space are taken")
        trial = study.ask()
        self._known_trials = max(self._known_trials or 0, trial.number + 1)
        try:
            for key, values in zip(self.space.keys, self.space.values):
                trial.suggest_categorical(key, list(values))
        except BaseException as exc:
            if isinstance(exc, SearchSpaceExhausted):
                self._seen_exhausted = True
            # The space filled up before the claim (another worker took the last point): leave no
            # RUNNING orphan.
            study.tell(trial, state=TrialState.FAIL)
            raise
        self.current_trial = trial
        return trial

    def _may_be_exhausted(self) -> bool:
        """False only when the space cannot be full as far as this searcher knows: fewer trials than
        points seen so far (after a first ask), and the sampler never found it full (a point freed by a FAIL does not
        reset this: near the end of a search the read is cheap next to a trial)."""
        known = self._known_trials
        return self._seen_exhausted or known is None or known >= len(self.space)

    def suggestion(self) -> dict[str, Any]:
        """Seed API: propose the next architecture, a dict with exactly the space's keys."""
        trial = self.ask()
        return {key: trial.params[key] for key in self.space.keys}

    def is_exhausted(self) -> bool:
        """True when every point is held by a COMPLETE / RUNNING / WAITING / PRUNED trial."""
        return space_exhausted(self.study, self.space)

    # ------------------------------------------------------------------ reporting
    def feedback(self, metric: float | Sequence[float]) -> None:
        """Seed API: report the metric(s) of the last suggestion; every value higher-is-better."""
        values = _as_values(metric, "metric")
        trial = self._pending("feedback")
        self._fix_directions(len(values))
        raw = [v if d == StudyDirection.MAXIMIZE else -v for v, d in zip(values, self.study.directions)]
        self._tell(trial, raw)

    def tell_raw(self, values: float | Sequence[float]) -> None:
        """Report the last suggestion's values as they are, in the study's own directions."""
        raw = _as_values(values, "values")
        trial = self._pending("tell_raw")
        self._fix_directions(len(raw))
        self._tell(trial, raw)

    def tell(self, trial: Trial | int, values: float | Sequence[float] | None = None, state: TrialState | None = None):
        """``study.tell`` for the orchestrator: values in the study's directions, or a state (e.g. FAIL)."""
        if values is not None:
            values = _as_values(values, "values")
            self._fix_directions(len(values))
            if self.current_trial is not None and _number(trial) == self.current_trial.number:
                trial = self.current_trial  # after a rebuild, the old Trial object points at the old study
        frozen = self.study.tell(trial, values, state)
        if self.current_trial is not None and frozen.number == self.current_trial.number:
            self.current_trial = None
        return frozen

    def _pending(self, method: str) -> Trial:
        if self.current_trial is None:
            raise RuntimeError(f"{method}() needs a pending suggestion(); call suggestion() first")
        return self.current_trial

    def _tell(self, trial: Trial, raw: list[float]) -> None:
        self.study.tell(trial, raw)
        self.current_trial = None

    def _fix_directions(self, n_values: int) -> None:
        study = self.study
        if n_values != len(study.directions):
            if not self._directions_open:
                raise ValueError(
                    f"expected {len(study.directions)} value(s), one per study direction "
                    f"{_names(study.directions)}, got {n_values}"
                )
            self._rebuild_study([StudyDirection.MAXIMIZE] * n_values)
        self._directions_open = False

    def _rebuild_study(self, directions: list[StudyDirection]) -> None:
        """Replace the provisional in-memory study by one with ``directions``, carrying its trials over."""
        old = self._study
        new = optuna.create_study(directions=directions, sampler=self.sampler)
        for frozen in old.get_trials(deepcopy=True):
            new.add_trial(
                optuna.trial.create_trial(
                    state=frozen.state,
                    params=frozen.params,
                    distributions=frozen.distributions,
                    user_attrs=frozen.user_attrs,
                    system_attrs=frozen.system_attrs,
                )
            )
        self._study = new
        if self.current_trial is not None:
            trial_id = optuna_internals.study_storage(new).get_trial_id_from_study_id_trial_number(
                optuna_internals.study_id(new), self.current_trial.number)
            self.current_trial = Trial(new, trial_id)

    # ------------------------------------------------------------------ seed helpers
    def params_vec2params_dict(self, para_vec: Sequence[Any]) -> dict[str, Any]:
        """Seed API: a value vector in sorted-key order -> architecture dict."""
        para_vec = list(para_vec)
        if len(para_vec) != len(self.space.keys):
            raise ValueError(f"para_vec must have {len(self.space.keys)} values (keys {list(self.space.keys)}), "
                             f"got {para_vec!r}")
        return dict(zip(self.space.keys, para_vec))

    def indices2params_vec(self, indices: Sequence[int]) -> list[Any]:
        """Seed API: per-key value positions -> value vector in sorted-key order."""
        indices = [int(i) for i in indices]
        return self.space.vector(self.space.index_of_indices(indices))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(keys={list(self.space.keys)}, size={len(self.space)}, "
                f"sampler={type(self.sampler).__name__})")


class GridSearcher(Searcher):
    """Every point once in the seed pool's order, unique across workers; then ``SearchSpaceExhausted``."""

    _algorithm = "grid"

    def __init__(self, search_space, *, seed=None, sampler=None, **study_kwargs):
        _check_fixed_sampler(sampler, "grid", SpaceGridSampler)
        super().__init__(search_space, seed=seed, sampler=sampler, **study_kwargs)


class RandomSearcher(Searcher):
    """Uniform random points without replacement, reproducible for a seed; then ``SearchSpaceExhausted``."""

    _algorithm = "random"

    def __init__(self, search_space, seed=42, *, sampler=None, **study_kwargs):
        _check_fixed_sampler(sampler, "random", SpaceRandomSampler)
        super().__init__(search_space, seed=seed, sampler=sampler, **study_kwargs)


class BayesianOptimizationSearcher(Searcher):
    """Model-based search: ``sampler='bo'`` (the default, :class:`SpaceBOSampler`: never proposes a point a
    trial holds), ``'tpe'``, ``'gp'``, ``'nsga2'`` or any Optuna sampler (these may propose an architecture
    twice; the orchestrator answers repeats from the study).

    Model hints, used by the ``bo`` sampler (other samplers ignore them):

    * ``known_objectives``: ``fn(arch) -> {objective index: value}``, objectives known before any trial
      (latency, parameter count ...), higher-is-better as in :meth:`feedback`; may return only some
      indices, or ``{}``, for an arch.
    * ``canonical_arch``: ``key(arch) -> hashable``; archs with one key are one architecture.
    * ``cost``: ``fn(arch) -> predicted trial cost > 0``; divides the expected improvement.
    """

    _algorithm = "bo"

    def __init__(self, search_space, seed=42, *, sampler="bo", known_objectives=None, canonical_arch=None,
                 cost=None, **study_kwargs):
        self.model_hints = _model_hints(known_objectives, canonical_arch, cost)
        super().__init__(search_space, seed=seed, sampler=sampler, **study_kwargs)


def make_searcher(
    algorithm: str | BaseSampler,
    search_space: Mapping[str, Sequence[Any]] | SearchSpace,
    *,
    seed: int | None,
    sampler: BaseSampler | None = None,
    known_objectives: Callable[[dict], Mapping[int, float]] | None = None,
    canonical_arch: Callable[[dict], Any] | None = None,
    cost: Callable[[dict], float] | None = None,
    **study_kwargs: Any,
) -> Searcher:
    """The searcher for ``algorithm`` (a name of :data:`ALGORITHMS`, any case, or an Optuna sampler).

    ``sampler`` (an instance) goes with ``algorithm='bo'``; ``study_kwargs`` are ``study``, ``storage``,
    ``study_name``, ``directions``. ``known_objectives``, ``canonical_arch`` and ``cost`` are the model
    hints of :class:`BayesianOptimizationSearcher`; searchers that build no model ignore them.
    """
    hints = _model_hints(known_objectives, canonical_arch, cost)
    if isinstance(algorithm, BaseSampler):
        if sampler is not None:
            raise ValueError("pass the sampler either as algorithm or as sampler, not both")
        return BayesianOptimizationSearcher(search_space, seed=seed, sampler=algorithm, **hints, **study_kwargs)
    name = canonical_algorithm(algorithm)
    if sampler is not None and not isinstance(sampler, BaseSampler):
        raise ValueError(f"sampler must be an optuna sampler or None, got {sampler!r}")
    if name == "grid":
        _check_fixed_sampler(sampler, "grid", SpaceGridSampler)
        return GridSearcher(search_space, seed=seed, sampler=sampler, **study_kwargs)
    if name == "random":
        _check_fixed_sampler(sampler, "random", SpaceRandomSampler)
        return RandomSearcher(search_space, seed=seed, sampler=sampler, **study_kwargs)
    if sampler is not None and name != "bo":
        raise ValueError(f"sampler={sampler!r} can only be combined with algorithm='bo', got {algorithm!r}")
    return BayesianOptimizationSearcher(search_space, seed=seed, sampler=sampler or name, **hints, **study_kwargs)


# ---------------------------------------------------------------------- helpers
def _gp_available() -> bool:
    """Whether GPSampler's dependencies are installed (found, not imported: torch is slow to import)."""
    return all(importlib.util.find_spec(module) is not None for module in ("torch", "scipy"))


def _model_hints(known_objectives: Any, canonical_arch: Any, cost: Any) -> dict[str, Any]:
    """The model hints as keywords, each checked to be a callable or None."""
    hints = {"known_objectives": known_objectives, "canonical_arch": canonical_arch, "cost": cost}
    for name, value in hints.items():
        if value is not None and not callable(value):
            raise ValueError(f"{name} must be a callable taking an arch dict, or None, got {value!r}")
    return hints


def _check_fixed_sampler(sampler: Any, name: str, cls: type) -> None:
    if sampler is None or isinstance(sampler, cls):
        return
    if isinstance(sampler, str) and canonical_algorithm(sampler) == name:
        return
    raise ValueError(f"sampler of a {name} searcher must be None, {name!r} or a {cls.__name__}, got {sampler!r}")


def _validate_directions(directions: Any) -> list[StudyDirection] | None:
    if directions is None:
        return None
    if isinstance(directions, (str, StudyDirection)) or not isinstance(directions, Sequence) or not directions:
        raise ValueError(f"directions must be a non-empty list of 'maximize' / 'minimize', got {directions!r}")
    out = []
    for d in directions:
        if isinstance(d, StudyDirection) and d != StudyDirection.NOT_SET:
            out.append(d)
        elif isinstance(d, str) and d.strip().lower() in ("maximize", "minimize"):
            out.append(StudyDirection.MAXIMIZE if d.strip().lower() == "maximize" else StudyDirection.MINIMIZE)
        else:
            raise ValueError(f"directions must contain 'maximize' or 'minimize', got {d!r} in {directions!r}")
    return out


def _as_values(metric: Any, name: str) -> list[float]:
    """A number or a sequence of numbers -> list of finite floats; ``ValueError`` naming ``name`` otherwise."""
    if hasattr(metric, "tolist") and not isinstance(metric, (str, bytes)):
        metric = metric.tolist()  # numpy scalars and arrays
    items = list(metric) if isinstance(metric, (list, tuple)) else [metric]
    if not items:
        raise ValueError(f"{name} must be a number or a non-empty sequence of numbers, got {metric!r}")
    values = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise ValueError(f"{name} must be a number or a sequence of numbers, got {metric!r}")
        value = float(item)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {metric!r}")
        values.append(value)
    return values


def _names(directions: Sequence[StudyDirection]) -> list[str]:
    return [d.name.lower() for d in directions]


def _number(trial: Trial | int) -> int:
    return trial if isinstance(trial, int) else trial.number
