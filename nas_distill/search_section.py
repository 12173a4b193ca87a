"""The ``search:`` section of a config: the space, the searcher and the objectives, validated together
(the metric directions, the architecture metrics and the searcher's limits depend on one another).

Metric direction: a bare name defaults to higher-is-better except
:data:`~nas_distill.vocabulary.LOWER_IS_BETTER_METRICS`; a :class:`~nas_distill.settings.Metric` or a
``{name, greater_is_better}`` mapping carries its own; an explicit ``higher_is_better`` list must have one
entry per metric and must not contradict a direction given with the metric.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping, Optional

from . import checks
from .errors import ConfigError
from .search.algorithms import ALGORITHM_ALIASES, SEARCH_ALGORITHMS
from .search.space import SearchSpace
from .settings import Metric, SearchSection, keys_of
from .vocabulary import (
    DEFAULT_MAX_TRIALS,
    DEFAULT_PRUNER,
    DEFAULT_REDUCTION_FACTOR,
    DEFAULT_RUNG_EXAMPLES,
    DEFAULT_SEED,
    LOWER_IS_BETTER_METRICS,
    NO_PRUNER,
    PRUNERS,
    architecture_metric_names,
)

SEARCH_KEYS = keys_of(SearchSection)
#: Keys of a metric given as a mapping: the seed Metric's fields, and our spelling of its direction.
_METRIC_FIELDS = tuple(f.name for f in dataclasses.fields(Metric))
METRIC_KEYS = _METRIC_FIELDS[:2] + ("higher_is_better",) + _METRIC_FIELDS[2:]
#: Searchers that address a point by its index in the space (numpy / Optuna 64-bit integers).
INDEXED_ALGORITHMS = ("grid", "random")
MAX_INDEXED_POINTS = 2**63 - 1


def validate_search(value: Any, path: str = "search") -> dict[str, Any]:
    """The section as the config's attributes: ``search_space``, ``search_algorithm``, ``metrics``,
    ``higher_is_better``, ``max_trials``, ``seed``, ``architecture_metrics``, ``pruner``,
    ``reduction_factor``, ``rungs``, ``rung_examples``."""
    search = checks.mapping(value, path, SEARCH_KEYS)
    space_path = checks.join(path, "search_space")
    space = _search_space(search.get("search_space"), space_path)
    algorithm = search.get("search_algorithm")
    if algorithm is None:
        algorithm = SearchSection.search_algorithm
    if not _is_sampler(algorithm):
        algorithm = checks.choice(algorithm, checks.join(path, "search_algorithm"), ALGORITHM_ALIASES,
                                  SEARCH_ALGORITHMS)
    points = math.prod(len(values) for values in space.values())
    if algorithm in INDEXED_ALGORITHMS and points > MAX_INDEXED_POINTS:
        raise ConfigError(space_path, f"{points:.3g} points; '{algorithm}' numbers the points of the "
                                      f"space with 64-bit integers (at most 2**63 - 1): use 'bo' or "
                                      f"'tpe', or fewer values")
    metrics, higher = _metrics(search.get("metrics"), search.get("higher_is_better"), path)
    max_trials = search.get("max_trials")
    max_trials = checks.int_value(DEFAULT_MAX_TRIALS if max_trials is None else max_trials,
                                  checks.join(path, "max_trials"))
    # A missing seed is the default; an explicit null asks for a fresh seed per run (the seed API's
    # seed=None), drawn and recorded in the study by AutoDistillation.
    seed = search["seed"] if "seed" in search else DEFAULT_SEED
    if seed is not None and (not checks.is_int(seed) or not 0 <= seed < 2**32):
        raise checks.fail(checks.join(path, "seed"), "an integer in [0, 2**32) or null (a fresh seed)", seed)
    architecture_metrics = _architecture_metrics(search.get("architecture_metrics"), metrics,
                                                 checks.join(path, "architecture_metrics"))
    return {
        "search_space": space,
        "search_algorithm": algorithm,
        "metrics": metrics,
        "higher_is_better": higher,
        "max_trials": max_trials,
        "seed": None if seed is None else int(seed),
        "architecture_metrics": architecture_metrics,
        **_pruning(search, metrics, architecture_metrics, path),
    }


def _pruning(search: Mapping[str, Any], metrics: list[str], declared: list[str], path: str) -> dict[str, Any]:
    """``pruner``, ``reduction_factor``, ``rungs`` (the fractions, defaults filled in), ``rung_examples``."""
    pruner = search.get("pruner")
    pruner = DEFAULT_PRUNER if pruner is None else checks.choice(
        pruner, checks.join(path, "pruner"), {p.replace("-", ""): p for p in PRUNERS}, PRUNERS)
    eta = search.get("reduction_factor")
    eta = DEFAULT_REDUCTION_FACTOR if eta is None else checks.int_value(eta, checks.join(path, "reduction_factor"),
                                                                        minimum=2)
    examples = search.get("rung_examples")
    examples = DEFAULT_RUNG_EXAMPLES if examples is None else checks.int_value(
        examples, checks.join(path, "rung_examples"))
    rungs_path = checks.join(path, "rungs")
    rungs = search.get("rungs")
    if rungs is None:
        rungs = [1.0 / eta**2, 1.0 / eta]
    else:
        if not checks.is_seq(rungs) or not rungs:
            raise checks.fail(rungs_path, "a non-empty list of fractions in (0, 1)", rungs)
        rungs = [checks.number_value(f, f"{rungs_path}[{i}]") for i, f in enumerate(rungs)]
        for i, f in enumerate(rungs):
            if not 0 < f < 1:
                raise checks.fail(f"{rungs_path}[{i}]", "a fraction in (0, 1) (the end of training is the "
                                                        "trial's own evaluation)", f)
            if i and f <= rungs[i - 1]:
                raise checks.fail(f"{rungs_path}[{i}]", f"a fraction above the one before ({rungs[i - 1]})", f)
    if pruner != NO_PRUNER and len(architecture_metric_names(metrics, declared)) == len(metrics):
        raise ConfigError(checks.join(path, "pruner"), f"every objective ({metrics}) is fixed by the "
                                                       f"architecture: there is nothing to compare part-way "
                                                       f"through training; set it to 'none'")
    return {"pruner": pruner, "reduction_factor": eta, "rungs": rungs, "rung_examples": examples}


def _is_sampler(value: Any) -> bool:
    """True for an Optuna sampler instance. Optuna is imported here only, and only for non-strings."""
    if isinstance(value, (str, bytes, numbers.Number, Mapping, list, tuple)) or value is None:
        return False
    try:
        from optuna.samplers import BaseSampler
    except ImportError:  # pragma: no cover - optuna is a dependency
        return False
    return isinstance(value, BaseSampler)


def _search_space(value: Any, path: str) -> dict[str, list[Any]]:
    if value is None:
        raise ConfigError(path, "expected a mapping of name -> non-empty list of values, got nothing")
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str) or not key.strip() or not key.isprintable():
                raise ConfigError(path, f"keys must be non-empty, printable strings (attribute names), "
                                        f"got {checks.short(key)}")
    SearchSpace(value, field=path)  # raises ConfigError naming path.<key> and the bad value
    return {key: list(values) for key, values in value.items()}


def _metric_item(item: Any, path: str) -> tuple[str, Optional[bool]]:
    """One metric as (name, direction or None when only the name was given)."""
    if isinstance(item, str):
        return checks.str_value(item, path), None
    if isinstance(item, Mapping):
        item = checks.mapping(item, path, METRIC_KEYS, none_ok=False)
        if "greater_is_better" in item and "higher_is_better" in item:
            raise ConfigError(path, "give one of greater_is_better / higher_is_better, not both")
        direction = item.get("greater_is_better", item.get("higher_is_better"))
        name = checks.str_value(item.get("name"), checks.join(path, "name"))
        key = "greater_is_better" if "greater_is_better" in item else "higher_is_better"
        return name, None if direction is None else checks.bool_value(direction, checks.join(path, key))
    if hasattr(item, "name") and hasattr(item, "greater_is_better"):  # seed Metric, or ours
        name = checks.str_value(item.name, checks.join(path, "name"))
        return name, checks.bool_value(item.greater_is_better, checks.join(path, "greater_is_better"))
    raise checks.fail(path, "a metric name, a Metric or a mapping {name, greater_is_better}", item)


def _metrics(metrics: Any, higher: Any, path: str) -> tuple[list[str], list[bool]]:
    m_path, h_path = checks.join(path, "metrics"), checks.join(path, "higher_is_better")
    if metrics is None:
        metrics = ["accuracy"]
    if not checks.is_seq(metrics):
        metrics = [metrics]
    if len(metrics) == 0:
        raise checks.fail(m_path, "at least one metric", metrics)
    items = [_metric_item(item, f"{m_path}[{i}]") for i, item in enumerate(metrics)]
    names = [name for name, _ in items]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"{m_path}[{i}]", f"duplicate metric name {name!r} in {names!r}")
        seen.add(name)
    if higher is None:
        return names, [d if d is not None else name not in LOWER_IS_BETTER_METRICS for name, d in items]
    if not checks.is_seq(higher):
        higher = [higher]
    if len(higher) != len(names):
        raise ConfigError(
            h_path,
            f"expected one entry per metric ({m_path} has {len(names)}: {names!r}), got "
            f"{len(higher)}: {checks.short(higher)}",
        )
    directions = []
    for i, ((name, given), value) in enumerate(zip(items, higher)):
        value = checks.bool_value(value, f"{h_path}[{i}]")
        if given is not None and given != value:
            raise ConfigError(
                f"{h_path}[{i}]", f"{value!r} conflicts with {m_path}[{i}] ({name!r}, greater_is_better={given})"
            )
        directions.append(value)
    return names, directions


def _architecture_metrics(value: Any, metrics: list[str], path: str) -> list[str]:
    """Metrics the user says depend on the architecture alone (measured untrained, once per arch)."""
    if value is None:
        return []
    if not checks.is_seq(value):
        value = [value]
    names: list[str] = []
    for i, item in enumerate(value):
        name = checks.str_value(item, f"{path}[{i}]")
        if name not in metrics:
            raise ConfigError(f"{path}[{i}]", f"{name!r} is not one of search.metrics {metrics!r}")
        if name in names:
            raise ConfigError(f"{path}[{i}]", f"duplicate metric name {name!r}")
        names.append(name)
    return names

