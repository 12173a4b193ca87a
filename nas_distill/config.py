"""Configuration: YAML / dict / keywords -> one validated :class:`AutoDistillationConfig`.

This module holds the plain settings dataclasses that the rest of the package imports
(:class:`Metric`, :class:`FlashDistillationConfig`, :class:`DistillStage`, :class:`TeacherCacheSettings`,
:class:`FlashSettings`, :class:`EvaluationSettings`, :class:`StudySettings`), then the validator and
:class:`AutoDistillationConfig`. It imports neither torch nor Optuna at module import time (Optuna only
when a non-string ``search_algorithm`` has to be checked against ``optuna.samplers.BaseSampler``), and
YAML is read with PyYAML's safe loader only (:mod:`nas_distill.yamlio`: plus YAML 1.2 numbers such as
``3e-3``).

Layout (the seed's; ``examples/seed_layout.yaml`` shows every key)::

    model: {framework, name}
    auto_distillation:
      search: {search_space, search_algorithm, metrics, higher_is_better, max_trials, seed,
               architecture_metrics}
      flash_distillation: {knowledge_transfer: {...}, regular_distillation: {...},
                           optimizer, learning_rate, weight_decay, batch_size, device,
                           teacher_cache: {enabled, dir, feature_budget_mb, dtype}, augmentation}
      evaluation: {batch_size, latency_batch_size, latency_warmup, latency_repeats, threads, device}
      study: {storage, study_name, run_dir, heartbeat_interval, grace_period, stop_after_failures}

The bare inner mapping (what sits under ``auto_distillation``, optionally with ``model``) is accepted
too. Error paths are relative to ``auto_distillation`` (``search.max_trials``), plus ``model.*``.

Decisions worth knowing:

* A missing key or an explicit ``null`` means the default (see the attribute table in INTERNALS.md).
* ``bool`` is never accepted where an integer or number is expected, nor ``0`` / ``1`` for a bool.
* Metric direction: a bare name defaults to higher-is-better except :data:`LOWER_IS_BETTER_METRICS`
  (``latency``, ``params``, ``model_size_mb``, ``loss``, ``eval_loss``); a :class:`Metric` or a
  ``{name, greater_is_better}`` mapping carries its own; an explicit ``higher_is_better`` list must
  have one entry per metric and must not contradict a direction given with the metric.
* Per-block lists (``knowledge_transfer``): the block count is ``len(block_names)``; every other list
  needs exactly that many entries. A scalar (``train_steps: 500``, ``loss_types: KL``,
  ``temperature: 2``, ``add_origin_loss: true``, ``loss_weights: 0.5``) applies to every block;
  ``block_names`` and ``layer_mappings_for_knowledge_transfer`` are never broadcast. Within a block,
  ``loss_types[i]`` / ``loss_weights[i]`` are one per mapping, or one scalar for all its mappings.
  Defaults: loss ``MSE`` (``KL`` on logits), weights ``1 / n_mappings``, ``add_origin_loss`` false,
  ``train_steps`` 100, ``temperature`` 1.0.
* ``regular_distillation``: the stage count is the length of its first list-valued field
  (``train_steps`` first); all scalars mean one stage. No ``block_names`` = every parameter trains; no
  mappings = logit distillation with one loss (default ``KL``).
* Loss types are case-insensitive and stored canonical: ``MSE``, ``KL``, ``L1``, ``CE``,
  ``CosineSimilarity`` (aliases ``cos``, ``cosine``, ``kld``, ``kldiv``).
* ``to_dict()`` writes the normalised, explicit form (one entry per stage, mappings as
  ``[s_layer, s_output, t_layer, t_output]``); ``AutoDistillationConfig(cfg.to_dict()) == cfg``.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional, Sequence

from .distill.mappings import LayerMapping, parse_layer_mapping
from .errors import ConfigError
from .search.space import SearchSpace
from .vocabulary import (CACHE_DTYPES, DEFAULT_MAX_TRIALS, DEFAULT_RUN_DIR, DEFAULT_SEED, DEFAULT_STUDY_NAME,
                         DEFAULT_TRAIN_STEPS, FRAMEWORK_ALIASES as _FRAMEWORK_ALIASES, FRAMEWORKS,
                         KNOWLEDGE_TRANSFER, LOSS_ALIASES as _LOSS_ALIASES, LOSS_TYPES,
                         LOWER_IS_BETTER_METRICS, OPTIMIZERS, REGULAR_DISTILLATION)

__all__ = [
    "Metric",
    "FlashDistillationConfig",
    "DistillStage",
    "TeacherCacheSettings",
    "FlashSettings",
    "EvaluationSettings",
    "StudySettings",
    "AutoDistillationConfig",
    "LOWER_IS_BETTER_METRICS",
]


# ---------------------------------------------------------------------------------------------------
# Seed-compatible plain containers (stored as given; validated when an AutoDistillationConfig is built)
# ---------------------------------------------------------------------------------------------------
@dataclass
class Metric:
    """One objective, as the seed declared it (the seed's fields, in the seed's positional order).

    Args:
        name: metric name, the key the evaluator returns (``'accuracy'``, ``'eval_loss'``, ...).
        greater_is_better: direction of the objective.
        is_relative, criterion: the seed's tolerance fields; accepted and kept, not used: nothing here
            compares a student against a baseline within a tolerance.
        weight_ratio: accepted and kept, not used: nas-distill never weights metrics into a sum, the
            answer is the Pareto front.
    """

    name: str
    greater_is_better: bool = True
    is_relative: bool = True
    criterion: float = 0.01
    weight_ratio: Optional[float] = None


@dataclass
class FlashDistillationConfig:
    """The seed's per-block distillation lists, stored exactly as given.

    Each argument is a list with one entry per block (knowledge transfer) or per stage (regular
    distillation). :class:`AutoDistillationConfig` validates them and turns them into
    :class:`DistillStage` objects in ``cfg.flash.stages``.
    """

    block_names: Any = None
    layer_mappings_for_knowledge_transfer: Any = None
    loss_types: Any = None
    loss_weights: Any = None
    add_origin_loss: Any = None
    train_steps: Any = None
    temperature: Any = None


# ---------------------------------------------------------------------------------------------------
# Normalised, validated settings (what the engines read)
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistillStage:
    """One stage of flash distillation, after normalisation.

    ``block_names`` empty means every student parameter trains. A ``regular_distillation`` stage with no
    ``mappings`` distils the models' logits.
    """

    name: str
    kind: str  # 'knowledge_transfer' | 'regular_distillation'
    block_names: tuple[str, ...] = ()
    mappings: tuple[LayerMapping, ...] = ()
    loss_types: tuple[str, ...] = ()
    loss_weights: tuple[float, ...] = ()
    add_origin_loss: bool = False
    train_steps: int = 100  # for stages built by hand; a config's stages default to DEFAULT_TRAIN_STEPS
    temperature: float = 1.0


@dataclass(frozen=True)
class TeacherCacheSettings:
    """Where and how much of the teacher's outputs to cache between trials.

    ``enabled='auto'`` caches when the features fit in ``feature_budget_mb`` and augmentation is off.
    """

    enabled: Any = "auto"  # True | False | 'auto'
    dir: Optional[str] = None
    feature_budget_mb: float = 1024
    dtype: str = "float16"


@dataclass(frozen=True)
class FlashSettings:
    """Optimiser and runtime settings of flash distillation, plus the normalised stages."""

    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    device: str = "auto"
    teacher_cache: TeacherCacheSettings = field(default_factory=TeacherCacheSettings)
    augmentation: bool = False  # when true the teacher cache is bypassed
    stages: list[DistillStage] = field(default_factory=list)


@dataclass(frozen=True)
class EvaluationSettings:
    """How candidates are measured. ``threads=None`` keeps the worker's torch thread count."""

    batch_size: int = 64
    latency_batch_size: int = 1
    latency_warmup: int = 5
    latency_repeats: int = 20
    threads: Optional[int] = None
    device: str = "auto"


@dataclass(frozen=True)
class StudySettings:
    """The shared Optuna study. ``storage=None`` means ``sqlite:///<run_dir>/study.db``."""

    storage: Optional[str] = None
    study_name: str = DEFAULT_STUDY_NAME
    run_dir: str = DEFAULT_RUN_DIR
    heartbeat_interval: float = 10
    grace_period: float = 30
    stop_after_failures: int = 3


# ---------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------

from .search.algorithms import ALGORITHM_ALIASES as _ALGORITHM_ALIASES, SEARCH_ALGORITHMS  # noqa: E402

_DEVICE_PATTERN = r"(auto|cpu|mps|cuda|gpu|xpu)(:\d+)?"

_TOP_KEYS = ("model", "auto_distillation")
_MODEL_KEYS = ("framework", "name")
_INNER_KEYS = ("search", "flash_distillation", "evaluation", "study", "model")
#: Searchers that address a point by its index in the space (numpy / Optuna 64-bit integers).
_INDEXED_ALGORITHMS = ("grid", "random")
MAX_INDEXED_POINTS = 2**63 - 1
_SEARCH_KEYS = ("search_space", "search_algorithm", "metrics", "higher_is_better", "max_trials", "seed",
                "architecture_metrics")
_STAGE_KEYS = (
    "block_names",
    "layer_mappings_for_knowledge_transfer",
    "loss_types",
    "loss_weights",
    "add_origin_loss",
    "train_steps",
    "temperature",
)
_FLASH_SETTING_KEYS = (
    "optimizer",
    "learning_rate",
    "weight_decay",
    "batch_size",
    "device",
    "teacher_cache",
    "augmentation",
)
_FLASH_KEYS = ("knowledge_transfer", "regular_distillation") + _FLASH_SETTING_KEYS
_CACHE_KEYS = ("enabled", "dir", "feature_budget_mb", "dtype")
_EVAL_KEYS = ("batch_size", "latency_batch_size", "latency_warmup", "latency_repeats", "threads", "device")
_STUDY_KEYS = ("storage", "study_name", "run_dir", "heartbeat_interval", "grace_period", "stop_after_failures")



# ---------------------------------------------------------------------------------------------------
# Small validators. Each raises ConfigError(path, "expected ..., got <repr>").
# ---------------------------------------------------------------------------------------------------
def _short(value: Any, limit: int = 120) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str(); show its size instead
        return f"<{type(value).__name__} of about {value.bit_length() * 0.30103:.0f} digits>" \
            if isinstance(value, int) else f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(path: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(path, f"expected {expected}, got {_short(value)}")


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python; `max_trials: true` is a mistake, not 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np_bool_types()))


def np_bool_types() -> tuple[type, ...]:
    """numpy.bool_ if numpy is already imported (it is cheap to check, and never imported here)."""
    np = sys.modules.get("numpy")
    return (np.bool_,) if np is not None else ()


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np_bool_types()))


def _int(value: Any, path: str, minimum: int = 1) -> int:
    if not _is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise _fail(path, what, value)
    return int(value)


def _number(value: Any, path: str, *, positive: bool = False, non_negative: bool = False) -> float:
    try:
        finite = _is_number(value) and math.isfinite(float(value))
    except OverflowError:  # an int too large for a float (10**400)
        finite = False
    if not finite:
        raise _fail(path, "a finite number", value)
    if positive and not value > 0:
        raise _fail(path, "a number > 0", value)
    if non_negative and not value >= 0:
        raise _fail(path, "a number >= 0", value)
    return float(value)


def _number_kept(value: Any, path: str, **bounds: bool) -> float | int:
    """Like :func:`_number`, but an int stays an int (``heartbeat_interval: 10`` reads back as 10)."""
    checked = _number(value, path, **bounds)
    return int(value) if _is_int(value) else checked


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, (bool, np_bool_types())):
        raise _fail(path, "true or false", value)
    return bool(value)


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, "a non-empty string", value)
    return value


def _choice(value: Any, path: str, aliases: Mapping[str, str], shown: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"one of {list(shown)}", value)
    key = value.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key in aliases:
        return aliases[key]
    hint = difflib.get_close_matches(value.strip().lower(), list(aliases), n=1, cutoff=0.6)
    suffix = f"; did you mean {aliases[hint[0]]!r}?" if hint else ""
    raise ConfigError(path, f"expected one of {list(shown)}, got {_short(value)}{suffix}")


def _device(value: Any, path: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(_DEVICE_PATTERN, value.strip().lower()):
        raise _fail(path, "'auto', 'cpu', 'cuda', 'cuda:<index>', 'mps' or 'xpu'", value)
    return value.strip().lower()


def _join(path: str, key: Any) -> str:
    """``path.key``; a key that is not a plain non-empty string shows as ``path[<repr>]``.

    A key with a newline or another unprintable character shows as its repr too, so the error stays
    one line."""
    if not isinstance(key, str) or not key or not key.strip() or not key.isprintable():
        return f"{path}[{key!r}]" if path else f"[{key!r}]"
    return f"{path}.{key}" if path else key


def _mapping(value: Any, path: str, allowed: Sequence[str], *, none_ok: bool = True) -> dict[str, Any]:
    """Check ``value`` is a mapping with only ``allowed`` keys; unknown keys get a "did you mean"."""
    if value is None and none_ok:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(path or "config", "a mapping", value)
    for key in value:
        if not isinstance(key, str) or key not in allowed:
            hint = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            suffix = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                _join(path, key), f"unknown key {key!r}{suffix} (known keys: {', '.join(allowed)})"
            )
    return dict(value)


def _seq(value: Any) -> bool:
    """A list or tuple (what YAML / Python give for a list); strings and mappings are not."""
    return isinstance(value, (list, tuple))


def _plain(value: Any) -> Any:
    """Tuples -> lists, LayerMapping -> its explicit list, recursively: JSON-able data."""
    if isinstance(value, LayerMapping):
        return value.as_list()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------------
# Flash-distillation stages: the seed's per-block lists -> DistillStage objects
# ---------------------------------------------------------------------------------------------------
def _loss_type(value: Any, path: str) -> str:
    return _choice(value, path, _LOSS_ALIASES, LOSS_TYPES)


def _stage_count(section: dict[str, Any], kind: str, path: str) -> tuple[int, str]:
    """How many stages the section describes, and which field decided it (for length messages)."""
    if kind == KNOWLEDGE_TRANSFER:
        names = section.get("block_names")
        if names is None or names == "":
            # The seed's default: one stage per mapping list, each training every parameter.
            mappings = section.get("layer_mappings_for_knowledge_transfer")
            if _seq(mappings) and len(mappings) > 0:
                return len(mappings), "layer_mappings_for_knowledge_transfer"
            raise ConfigError(
                _join(path, "layer_mappings_for_knowledge_transfer"),
                "expected a list with one list of layer mappings per block when knowledge_transfer is "
                f"given, got {_short(mappings) if mappings is not None else 'nothing'}",
            )
        if isinstance(names, str):
            return 1, "block_names"
        if not _seq(names) or len(names) == 0:
            raise _fail(_join(path, "block_names"), "a non-empty list of module names", names)
        return len(names), "block_names"
    # Regular distillation: the first list-valued field gives the count; all scalars mean one stage.
    for key in ("train_steps", "layer_mappings_for_knowledge_transfer", "loss_types", "loss_weights",
                "add_origin_loss", "block_names", "temperature"):
        value = section.get(key)
        if _seq(value):
            if len(value) == 0:
                raise _fail(_join(path, key), "a non-empty list with one entry per stage", value)
            return len(value), key
    return 1, ""


def _per_stage(section: dict[str, Any], key: str, n: int, count_key: str, path: str,
               *, broadcast: bool = True) -> list[Any]:
    """The section's ``key`` as one entry per stage (``None`` entries when absent).

    A scalar is broadcast to every stage when ``broadcast``; a list must have one entry per stage.
    """
    value = section.get(key)
    field_path = _join(path, key)
    if value is None:
        return [None] * n
    if _seq(value):
        if len(value) != n:
            counted = f"{_join(path, count_key)} has {n}" if count_key else f"{n} expected"
            raise ConfigError(
                field_path,
                f"expected one entry per stage ({counted}), got {len(value)} entries: {_short(value)}",
            )
        return list(value)
    if not broadcast:
        raise _fail(field_path, f"a list with one entry per stage ({n})", value)
    return [value] * n


def _block_names(entry: Any, path: str, kind: str) -> tuple[str, ...]:
    """One stage's blocks. ``''`` is the prefix of every parameter name: the whole student trains (the
    seed's meaning of an empty block name), stored as no blocks."""
    if entry is None:
        if kind == KNOWLEDGE_TRANSFER:
            raise ConfigError(path, "expected the module name of this block, got None")
        return ()
    if entry == "":
        return ()
    if isinstance(entry, str):
        return (_str(entry, path),)
    if _seq(entry):
        names = tuple(name if name == "" else _str(name, f"{path}[{j}]") for j, name in enumerate(entry))
        if kind == KNOWLEDGE_TRANSFER and not names:
            raise _fail(path, "at least one module name (the block that trains), or '' for all parameters",
                        entry)
        return () if "" in names else names
    raise _fail(path, "a module name or a list of module names", entry)


def _mappings(entry: Any, path: str, kind: str) -> tuple[LayerMapping, ...]:
    if entry is None:
        if kind == KNOWLEDGE_TRANSFER:
            raise ConfigError(path, "expected a list of layer mappings for this block, got nothing")
        return ()
    if not _seq(entry):
        raise _fail(path, "a list of layer mappings, e.g. [['s.layer', 't.layer']]", entry)
    if kind == KNOWLEDGE_TRANSFER and len(entry) == 0:
        raise _fail(path, "at least one layer mapping for a knowledge-transfer block", entry)
    parsed = []
    for j, item in enumerate(entry):
        where = f"{path}[{j}]"
        try:
            parsed.append(parse_layer_mapping(item, where))
        except (ValueError, TypeError) as exc:
            text = str(exc)
            field_path, sep, message = text.partition(": ")
            if not sep or not field_path.startswith(where):
                field_path, message = where, text
            raise ConfigError(field_path, message) from None
    return tuple(parsed)


def _per_loss(entry: Any, n_losses: int, path: str, mappings_path: str, convert) -> tuple[Any, ...]:
    """One value per loss of a stage: a scalar applies to every loss; a list needs one per loss."""
    if _seq(entry):
        if len(entry) != n_losses:
            raise ConfigError(
                path,
                f"expected one entry per layer mapping ({mappings_path} has {n_losses}), got "
                f"{len(entry)}: {_short(entry)}",
            )
        return tuple(convert(v, f"{path}[{j}]") for j, v in enumerate(entry))
    return tuple(convert(entry, path) for _ in range(n_losses))


def _weight(value: Any, path: str) -> float:
    return _number(value, path, non_negative=True)


def _build_stages(section: Any, kind: str, path: str) -> tuple[list[DistillStage], Optional[FlashDistillationConfig]]:
    """Validate one seed section (``knowledge_transfer`` / ``regular_distillation``) into stages."""
    if isinstance(section, FlashDistillationConfig):
        section = {f.name: getattr(section, f.name) for f in fields(section)}
    section = _mapping(section, path, _STAGE_KEYS)
    if all(v is None for v in section.values()):
        return [], None
    n, count_key = _stage_count(section, kind, path)
    if section.get("block_names") == "" or (section.get("block_names") is None and kind == KNOWLEDGE_TRANSFER):
        block_names = [""] * n
    elif isinstance(section.get("block_names"), str):
        if n != 1:
            raise _fail(_join(path, "block_names"), f"a list with one entry per stage ({n})",
                        section["block_names"])
        block_names = [section["block_names"]]
    else:
        block_names = _per_stage(section, "block_names", n, count_key, path, broadcast=False)
    mappings = _per_stage(section, "layer_mappings_for_knowledge_transfer", n, count_key, path,
                          broadcast=False)
    loss_types = _per_stage(section, "loss_types", n, count_key, path)
    loss_weights = _per_stage(section, "loss_weights", n, count_key, path)
    add_origin = _per_stage(section, "add_origin_loss", n, count_key, path)
    steps = _per_stage(section, "train_steps", n, count_key, path)
    temperature = _per_stage(section, "temperature", n, count_key, path)

    stages = []
    for i in range(n):
        map_path = f"{_join(path, 'layer_mappings_for_knowledge_transfer')}[{i}]"
        stage_mappings = _mappings(mappings[i], map_path, kind)
        n_losses = max(len(stage_mappings), 1)  # no mappings: one loss, on the logits
        default_loss = "MSE" if stage_mappings else "KL"
        types = _per_loss(
            default_loss if loss_types[i] is None else loss_types[i], n_losses,
            f"{_join(path, 'loss_types')}[{i}]", map_path, _loss_type,
        )
        weights = _per_loss(
            1.0 / n_losses if loss_weights[i] is None else loss_weights[i], n_losses,
            f"{_join(path, 'loss_weights')}[{i}]", map_path, _weight,
        )
        add_origin_loss = False if add_origin[i] is None else _bool(
            add_origin[i], f"{_join(path, 'add_origin_loss')}[{i}]")
        if not add_origin_loss and not any(w > 0 for w in weights):
            raise ConfigError(
                f"{_join(path, 'loss_weights')}[{i}]",
                f"expected at least one weight > 0 (or add_origin_loss true), got {list(weights)!r}",
            )
        stages.append(
            DistillStage(
                name=f"{kind}_{i}",
                kind=kind,
                block_names=_block_names(block_names[i], f"{_join(path, 'block_names')}[{i}]", kind),
                mappings=stage_mappings,
                loss_types=types,
                loss_weights=weights,
                add_origin_loss=add_origin_loss,
                train_steps=DEFAULT_TRAIN_STEPS if steps[i] is None
                else _int(steps[i], f"{_join(path, 'train_steps')}[{i}]"),
                temperature=1.0 if temperature[i] is None
                else _number(temperature[i], f"{_join(path, 'temperature')}[{i}]", positive=True),
            )
        )
    return stages, FlashDistillationConfig(**section)


def _stages_to_section(stages: Sequence[DistillStage]) -> dict[str, Any]:
    """The inverse of :func:`_build_stages`: explicit per-stage lists, plain JSON-able data."""
    section: dict[str, Any] = {}
    if any(s.block_names for s in stages):
        section["block_names"] = [
            "" if not s.block_names else s.block_names[0] if len(s.block_names) == 1 else list(s.block_names)
            for s in stages
        ]
    if any(s.mappings for s in stages):
        section["layer_mappings_for_knowledge_transfer"] = [[_plain(m) for m in s.mappings] for s in stages]
    section["loss_types"] = [list(s.loss_types) for s in stages]
    section["loss_weights"] = [list(s.loss_weights) for s in stages]
    section["add_origin_loss"] = [s.add_origin_loss for s in stages]
    section["train_steps"] = [s.train_steps for s in stages]
    section["temperature"] = [s.temperature for s in stages]
    return section


def _stages_from_objects(stages: Any, path: str) -> dict[str, dict[str, Any]]:
    """``FlashSettings.stages`` given by a caller -> seed sections (validated again on parsing)."""
    if not _seq(stages):
        raise _fail(path, "a list of DistillStage", stages)
    groups: dict[str, list[DistillStage]] = {KNOWLEDGE_TRANSFER: [], REGULAR_DISTILLATION: []}
    for i, stage in enumerate(stages):
        if not isinstance(stage, DistillStage):
            raise _fail(f"{path}[{i}]", "a DistillStage", stage)
        if not isinstance(stage.kind, str) or stage.kind not in groups:
            raise _fail(f"{path}[{i}].kind", f"one of {list(groups)}", stage.kind)
        if stage.kind == KNOWLEDGE_TRANSFER and groups[REGULAR_DISTILLATION]:
            raise ConfigError(
                f"{path}[{i}]", "knowledge-transfer stages must come before regular-distillation stages"
            )
        groups[stage.kind].append(stage)
    out = {}
    for kind, group in groups.items():
        if group:
            bad = [
                (f, getattr(s, f)) for s in group for f in ("block_names", "mappings", "loss_types",
                                                             "loss_weights") if not _seq(getattr(s, f))
            ]
            if bad:
                raise _fail(f"{path}.{bad[0][0]}", "a tuple", bad[0][1])
            out[kind] = _stages_to_section(group)
    return out


# ---------------------------------------------------------------------------------------------------
# Search section
# ---------------------------------------------------------------------------------------------------
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
                                        f"got {_short(key)}")
    SearchSpace(value, field=path)  # raises ConfigError naming path.<key> and the bad value
    return {key: list(values) for key, values in value.items()}


def _metric_item(item: Any, path: str) -> tuple[str, Optional[bool]]:
    """One metric as (name, direction or None when only the name was given)."""
    if isinstance(item, str):
        return _str(item, path), None
    if isinstance(item, Mapping):
        item = _mapping(item, path, ("name", "greater_is_better", "higher_is_better", "is_relative",
                                     "criterion", "weight_ratio"), none_ok=False)
        if "greater_is_better" in item and "higher_is_better" in item:
            raise ConfigError(path, "give one of greater_is_better / higher_is_better, not both")
        direction = item.get("greater_is_better", item.get("higher_is_better"))
        name = _str(item.get("name"), _join(path, "name"))
        key = "greater_is_better" if "greater_is_better" in item else "higher_is_better"
        return name, None if direction is None else _bool(direction, _join(path, key))
    if hasattr(item, "name") and hasattr(item, "greater_is_better"):  # seed Metric, or ours
        name = _str(item.name, _join(path, "name"))
        return name, _bool(item.greater_is_better, _join(path, "greater_is_better"))
    raise _fail(path, "a metric name, a Metric or a mapping {name, greater_is_better}", item)


def _metrics(metrics: Any, higher: Any, path: str) -> tuple[list[str], list[bool]]:
    m_path, h_path = _join(path, "metrics"), _join(path, "higher_is_better")
    if metrics is None:
        metrics = ["accuracy"]
    if not _seq(metrics):
        metrics = [metrics]
    if len(metrics) == 0:
        raise _fail(m_path, "at least one metric", metrics)
    items = [_metric_item(item, f"{m_path}[{i}]") for i, item in enumerate(metrics)]
    names = [name for name, _ in items]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"{m_path}[{i}]", f"duplicate metric name {name!r} in {names!r}")
        seen.add(name)
    if higher is None:
        return names, [d if d is not None else name not in LOWER_IS_BETTER_METRICS for name, d in items]
    if not _seq(higher):
        higher = [higher]
    if len(higher) != len(names):
        raise ConfigError(
            h_path,
            f"expected one entry per metric ({m_path} has {len(names)}: {names!r}), got "
            f"{len(higher)}: {_short(higher)}",
        )
    directions = []
    for i, ((name, given), value) in enumerate(zip(items, higher)):
        value = _bool(value, f"{h_path}[{i}]")
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
    if not _seq(value):
        value = [value]
    names: list[str] = []
    for i, item in enumerate(value):
        name = _str(item, f"{path}[{i}]")
        if name not in metrics:
            raise ConfigError(f"{path}[{i}]", f"{name!r} is not one of search.metrics {metrics!r}")
        if name in names:
            raise ConfigError(f"{path}[{i}]", f"duplicate metric name {name!r}")
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------------
# Settings sections
# ---------------------------------------------------------------------------------------------------
def _settings_dict(value: Any) -> Any:
    """A settings dataclass -> a dict of its fields (nested dataclasses too); other values unchanged."""
    if isinstance(value, (TeacherCacheSettings, EvaluationSettings, StudySettings, FlashSettings)):
        out = {f.name: getattr(value, f.name) for f in fields(value)}
        out.pop("stages", None)
        if isinstance(out.get("teacher_cache"), TeacherCacheSettings):
            out["teacher_cache"] = _settings_dict(out["teacher_cache"])
        return out
    return value


def _path_str(value: Any, path: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return _str(value, path)


def _teacher_cache(value: Any, path: str) -> TeacherCacheSettings:
    raw = _mapping(_settings_dict(value), path, _CACHE_KEYS)
    enabled = raw.get("enabled", "auto")
    if enabled is None:
        enabled = "auto"
    if isinstance(enabled, str) and enabled.strip().lower() == "auto":
        enabled = "auto"
    elif not isinstance(enabled, bool):
        raise _fail(_join(path, "enabled"), "true, false or 'auto'", enabled)
    directory = raw.get("dir")
    return TeacherCacheSettings(
        enabled=enabled,
        dir=None if directory is None else _path_str(directory, _join(path, "dir")),
        feature_budget_mb=_number_kept(_get(raw, "feature_budget_mb", 1024), _join(path, "feature_budget_mb"),
                                  non_negative=True),
        dtype=_choice(_get(raw, "dtype", "float16"), _join(path, "dtype"),
                      {d: d for d in CACHE_DTYPES}, CACHE_DTYPES),
    )


def _get(raw: Mapping[str, Any], key: str, default: Any) -> Any:
    """``raw[key]``, with a missing key or an explicit null meaning the default."""
    value = raw.get(key)
    return default if value is None else value


def _flash_settings(raw: dict[str, Any], path: str, stages: list[DistillStage]) -> FlashSettings:
    return FlashSettings(
        optimizer=_choice(_get(raw, "optimizer", "adamw"), _join(path, "optimizer"),
                          {o: o for o in OPTIMIZERS}, OPTIMIZERS),
        learning_rate=_number(_get(raw, "learning_rate", 1e-3), _join(path, "learning_rate"), positive=True),
        weight_decay=_number(_get(raw, "weight_decay", 0.0), _join(path, "weight_decay"), non_negative=True),
        batch_size=_int(_get(raw, "batch_size", 32), _join(path, "batch_size")),
        device=_device(_get(raw, "device", "auto"), _join(path, "device")),
        teacher_cache=_teacher_cache(raw.get("teacher_cache"), _join(path, "teacher_cache")),
        augmentation=_bool(_get(raw, "augmentation", False), _join(path, "augmentation")),
        stages=stages,
    )


def _evaluation(value: Any, path: str) -> EvaluationSettings:
    raw = _mapping(_settings_dict(value), path, _EVAL_KEYS)
    threads = raw.get("threads")
    return EvaluationSettings(
        batch_size=_int(_get(raw, "batch_size", 64), _join(path, "batch_size")),
        latency_batch_size=_int(_get(raw, "latency_batch_size", 1), _join(path, "latency_batch_size")),
        latency_warmup=_int(_get(raw, "latency_warmup", 5), _join(path, "latency_warmup"), minimum=0),
        latency_repeats=_int(_get(raw, "latency_repeats", 20), _join(path, "latency_repeats")),
        threads=None if threads is None else _int(threads, _join(path, "threads")),
        device=_device(_get(raw, "device", "auto"), _join(path, "device")),
    )


_STORAGE_SUFFIXES = (".db", ".sqlite", ".sqlite3", ".log", ".journal", ".jsonl")


def _storage(value: Any, path: str) -> str:
    """A storage URL (``scheme://...``) or a bare SQLite / journal file path, the forms
    :func:`nas_distill.study.resolve_storage_url` understands; anything else fails here, before a
    worker starts, instead of when the study is first opened."""
    text = _str(value, path)
    scheme, sep, _ = text.partition("://")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        return text
    if not sep and text.strip().endswith(_STORAGE_SUFFIXES):
        return text
    from .study import mask_url  # a password in a URL never reaches the message

    raise ConfigError(path, "expected a storage URL (sqlite:///..., postgresql+psycopg://..., journal:///...) "
                            f"or a .db / .log file path, got {_short(mask_url(text))}")


#: Optuna stores a study name in an indexed column of this many characters.
MAX_STUDY_NAME_LENGTH = 512
#: Heartbeat bounds (seconds): SQL storages beat in whole seconds, and a beat is a storage write, so a
#: shorter interval only loads the storage; a day between beats would make a dead worker invisible.
MIN_HEARTBEAT_S, MAX_HEARTBEAT_S = 1, 86_400
#: A trial is declared dead after missing this many beats at least: one late beat (a long step holding
#: the interpreter, a slow storage write) must not get a live trial failed and trained again.
MIN_BEATS_PER_GRACE = 2


def study_name_error(name: str) -> str | None:
    """Why ``name`` cannot be a study name (the storage would refuse it mid-run), or None."""
    if len(name) > MAX_STUDY_NAME_LENGTH:
        return f"at most {MAX_STUDY_NAME_LENGTH} characters, got {len(name)}"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"no control characters (NUL, newline, ...), got {_short(name)}"
    return None


def _study(value: Any, path: str) -> StudySettings:
    raw = _mapping(_settings_dict(value), path, _STUDY_KEYS)
    storage = raw.get("storage")
    name_path = _join(path, "study_name")
    study_name = _str(_get(raw, "study_name", DEFAULT_STUDY_NAME), name_path)
    problem = study_name_error(study_name)
    if problem:
        raise ConfigError(name_path, problem)
    interval_path, grace_path = _join(path, "heartbeat_interval"), _join(path, "grace_period")
    interval = _number_kept(_get(raw, "heartbeat_interval", 10), interval_path, positive=True)
    if not MIN_HEARTBEAT_S <= interval <= MAX_HEARTBEAT_S:
        raise _fail(interval_path, f"seconds between {MIN_HEARTBEAT_S} and {MAX_HEARTBEAT_S}", interval)
    grace = _number_kept(_get(raw, "grace_period", 30), grace_path, positive=True)
    if grace < MIN_BEATS_PER_GRACE * interval:
        raise ConfigError(grace_path, f"expected at least {MIN_BEATS_PER_GRACE} x heartbeat_interval "
                                      f"({MIN_BEATS_PER_GRACE * interval:g} s), got {grace!r}: live trials "
                                      f"would be declared dead between two beats")
    return StudySettings(
        storage=None if storage is None else _storage(storage, _join(path, "storage")),
        study_name=study_name,
        run_dir=_path_str(_get(raw, "run_dir", DEFAULT_RUN_DIR), _join(path, "run_dir")),
        heartbeat_interval=interval,
        grace_period=grace,
        stop_after_failures=_int(_get(raw, "stop_after_failures", 3), _join(path, "stop_after_failures"),
                                 minimum=0),
    )


# ---------------------------------------------------------------------------------------------------
# Loading: YAML file / dict -> the inner layout {model, search, flash_distillation, evaluation, study}
# ---------------------------------------------------------------------------------------------------
def _read_yaml(path: str) -> Any:
    """The safe, bounded YAML load of a file (:func:`~nas_distill.yamlio.load_yaml`); every failure is a
    ConfigError naming the file."""
    import yaml  # local: keeps `import nas_distill.config` light

    from .yamlio import load_yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = load_yaml(handle, path)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(path, "config file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, "expected a YAML file, got a directory") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read the config file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"the config file is not UTF-8 text ({exc.reason})") from None
    except ValueError as exc:  # a NUL byte in the path: open() raises ValueError, not OSError
        raise ConfigError(_short(path), f"cannot open the config file ({exc})") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(path, f"invalid YAML (only plain YAML is read, with a safe loader): {detail}") from None
    if data is None:
        raise ConfigError(path, "expected a YAML mapping, got an empty document")
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"expected a YAML mapping at the top level, got {type(data).__name__}: "
                                f"{_short(data)}")
    return data


def _inner_layout(data: Any, origin: str = "config") -> dict[str, Any]:
    """Seed layout ``{model, auto_distillation: {...}}`` or the bare inner mapping -> inner layout."""
    if not isinstance(data, Mapping):
        raise _fail(origin, "a mapping (the seed layout or its auto_distillation section)", data)
    if "auto_distillation" in data:
        top = _mapping(data, "", _TOP_KEYS)
        inner = top["auto_distillation"]
        if not isinstance(inner, Mapping):
            raise _fail("auto_distillation", "a mapping with search / flash_distillation / ...", inner)
        inner = _mapping(inner, "", _INNER_KEYS[:-1])  # paths stay relative to auto_distillation
        inner["model"] = top.get("model")
        return inner
    return _mapping(data, "", _INNER_KEYS)


def _section_patch(raw: dict[str, Any], key: str) -> dict[str, Any]:
    """A mutable copy of ``raw[key]`` to patch keyword values into (must already be a mapping)."""
    current = raw.get(key)
    if current is None:
        current = {}
    if not isinstance(current, Mapping):
        raise _fail(key, "a mapping", current)
    raw[key] = dict(current)
    return raw[key]


def _stage_section(value: Any) -> Any:
    """A knowledge_transfer / regular_distillation value given as an object -> its fields as a dict."""
    if isinstance(value, FlashDistillationConfig):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if value is None or isinstance(value, (Mapping, str, bytes, numbers.Number, list, tuple)):
        return value
    if hasattr(value, "__dict__"):  # the seed's own FlashDistillationConfig class
        return {k: v for k, v in vars(value).items() if not k.startswith("_")}
    return value


class AttrDict(dict):
    """A dict whose keys read as attributes too, nested dicts included (the seed's ``DotDict`` reads)."""

    @classmethod
    def wrap(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return cls({k: cls.wrap(v) for k, v in value.items()})
        if isinstance(value, list):
            return [cls.wrap(v) for v in value]
        return value

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no config key {name!r} (keys: {', '.join(map(str, self))})") from None


# ``seed`` given as None (a fresh seed) vs not given at all (the default): keyword ``None`` means "not
# given" for every other attribute.
_NOT_GIVEN = object()
_FRESH_SEED = object()

_SEARCH_ATTRS = ("search_space", "search_algorithm", "metrics", "higher_is_better", "max_trials", "seed",
                 "architecture_metrics")
_STAGE_ATTRS = ("knowledge_transfer", "regular_distillation")
_SETTINGS_ATTRS = ("flash", "evaluation", "study")
_ATTRS = ("framework",) + _SEARCH_ATTRS + _STAGE_ATTRS + _SETTINGS_ATTRS


def _apply_keywords(raw: dict[str, Any], values: Mapping[str, Any], *, clear_stages: bool = False) -> None:
    """Patch keyword values (``None`` = not given) into the inner layout ``raw``, in place."""
    if values.get("framework") is not None:
        _section_patch(raw, "model")["framework"] = values["framework"]
    search_values = {k: values[k] for k in _SEARCH_ATTRS if values.get(k) is not None}
    if search_values.get("seed") is _FRESH_SEED:
        search_values["seed"] = None  # kept as an explicit null: a fresh seed, not the default
    if search_values:
        search = _section_patch(raw, "search")
        if "metrics" in search_values and "higher_is_better" not in search_values:
            search.pop("higher_is_better", None)  # the new metrics carry their own directions
        search.update(search_values)
    for key in _STAGE_ATTRS:
        if key in values and (values[key] is not None or clear_stages):
            _section_patch(raw, "flash_distillation")[key] = _stage_section(values[key])
    flash = values.get("flash")
    if flash is not None:
        section = _section_patch(raw, "flash_distillation")
        if isinstance(flash, FlashSettings):
            section.update(_settings_dict(flash))
            if flash.stages and all(values.get(k) is None for k in _STAGE_ATTRS):
                from_stages = _stages_from_objects(flash.stages, "flash_distillation.stages")
                for key in _STAGE_ATTRS:
                    section[key] = from_stages.get(key)
        elif isinstance(flash, Mapping):
            section.update(flash)
        else:
            raise _fail("flash_distillation", "a FlashSettings or a mapping of flash settings", flash)
    for key in ("evaluation", "study"):
        value = values.get(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            _section_patch(raw, key).update(value)
        else:
            raw[key] = _settings_dict(value)  # a settings dataclass (or a bad value, reported later)


def _validate(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The inner layout -> every attribute of AutoDistillationConfig, validated."""
    model = _mapping(raw.get("model"), "model", _MODEL_KEYS)
    if model.get("name") is not None:
        _str(model["name"], "model.name")
    framework = _choice(_get(model, "framework", "pytorch"), "model.framework", _FRAMEWORK_ALIASES,
                        FRAMEWORKS)

    search = _mapping(raw.get("search"), "search", _SEARCH_KEYS)
    space = _search_space(search.get("search_space"), "search.search_space")
    algorithm = _get(search, "search_algorithm", "bo")
    if not _is_sampler(algorithm):
        algorithm = _choice(algorithm, "search.search_algorithm", _ALGORITHM_ALIASES, SEARCH_ALGORITHMS)
    points = math.prod(len(values) for values in space.values())
    if algorithm in _INDEXED_ALGORITHMS and points > MAX_INDEXED_POINTS:
        raise ConfigError("search.search_space", f"{points:.3g} points; '{algorithm}' numbers the points of the "
                                                 f"space with 64-bit integers (at most 2**63 - 1): use 'bo' or "
                                                 f"'tpe', or fewer values")
    metrics, higher = _metrics(search.get("metrics"), search.get("higher_is_better"), "search")
    max_trials = _int(_get(search, "max_trials", DEFAULT_MAX_TRIALS), "search.max_trials")
    # A missing seed is the default; an explicit null asks for a fresh seed per run (the seed API's
    # seed=None), drawn and recorded in the study by AutoDistillation.
    seed = search["seed"] if "seed" in search else DEFAULT_SEED
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**32):
        raise _fail("search.seed", "an integer in [0, 2**32) or null (a fresh seed)", seed)
    arch_metrics = _architecture_metrics(search.get("architecture_metrics"), metrics,
                                         "search.architecture_metrics")

    flash_raw = _mapping(raw.get("flash_distillation"), "flash_distillation", _FLASH_KEYS)
    kt_stages, kt = _build_stages(flash_raw.get(KNOWLEDGE_TRANSFER), KNOWLEDGE_TRANSFER,
                                  "flash_distillation.knowledge_transfer")
    rd_stages, rd = _build_stages(flash_raw.get(REGULAR_DISTILLATION), REGULAR_DISTILLATION,
                                  "flash_distillation.regular_distillation")
    flash = _flash_settings(flash_raw, "flash_distillation", kt_stages + rd_stages)
    return {
        "framework": framework,
        "search_space": space,
        "search_algorithm": algorithm,
        "metrics": metrics,
        "higher_is_better": higher,
        "max_trials": max_trials,
        "seed": None if seed is None else int(seed),
        "architecture_metrics": arch_metrics,
        "knowledge_transfer": kt,
        "regular_distillation": rd,
        "flash": flash,
        "evaluation": _evaluation(raw.get("evaluation"), "evaluation"),
        "study": _study(raw.get("study"), "study"),
    }


def _copy(value: Any) -> Any:
    """Copy containers (so later changes to the caller's lists cannot reach us); keep other objects."""
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    return value


def _property(name: str, doc: str) -> property:
    def getter(self: "AutoDistillationConfig") -> Any:
        return _copy(self._values[name])  # a copy: changing it in place cannot bypass validation

    def setter(self: "AutoDistillationConfig", value: Any) -> None:
        self._update({name: value})

    return property(getter, setter, doc=doc)


class AutoDistillationConfig:
    """Validated settings of an auto-distillation run.

    Build it from a YAML file, a dict, or keywords (the seed's names and positional order work
    unchanged); keywords override what the file or dict says::

        AutoDistillationConfig("examples/seed_layout.yaml")
        AutoDistillationConfig({"model": {"framework": "pytorch"}, "auto_distillation": {...}})
        AutoDistillationConfig({"search": {...}, "flash_distillation": {...}})   # inner mapping
        AutoDistillationConfig(search_space={...}, search_algorithm="BO", metrics=[Metric("accuracy")],
                               max_trials=10, knowledge_transfer=FlashDistillationConfig(...))
        AutoDistillationConfig("cfg.yaml", max_trials=3)

    Everything is validated here, before anything runs. Every problem is a
    :class:`~nas_distill.errors.ConfigError` whose message starts with the field path (relative to
    ``auto_distillation``, e.g. ``search.search_space.hidden_size``) and shows the bad value.

    Attributes (see ``docs/INTERNALS.md``): ``framework``, ``search_space``, ``search_algorithm``,
    ``metrics``, ``higher_is_better``, ``max_trials``, ``seed``, ``knowledge_transfer``,
    ``regular_distillation``, ``flash`` (with the normalised ``flash.stages``), ``evaluation``,
    ``study``. Setting one (``cfg.max_trials = 5``) validates the whole config again and changes
    nothing if that fails.

    Args:
        config: a YAML path, a mapping, another AutoDistillationConfig, or (seed positional form) the
            framework name ``'pytorch'`` / ``'tensorflow'`` when no file of that name exists.
        search_space ... regular_distillation: the seed's arguments, in the seed's order.
        higher_is_better, framework, flash, evaluation, study: keyword-only.
    """

    def __init__(
        self,
        config: Any = None,
        search_space: Any = None,
        search_algorithm: Any = None,
        metrics: Any = None,
        max_trials: Any = None,
        seed: Any = _NOT_GIVEN,
        knowledge_transfer: Any = None,
        regular_distillation: Any = None,
        *,
        higher_is_better: Any = None,
        architecture_metrics: Any = None,
        framework: Any = None,
        flash: Any = None,
        evaluation: Any = None,
        study: Any = None,
    ):
        keywords = {  # copied, so later changes to the caller's lists cannot reach this config
            "framework": framework,
            "search_space": search_space,
            "search_algorithm": search_algorithm,
            "metrics": metrics,
            "higher_is_better": higher_is_better,
            "max_trials": max_trials,
            "seed": None if seed is _NOT_GIVEN else (_FRESH_SEED if seed is None else seed),
            "architecture_metrics": architecture_metrics,
            "knowledge_transfer": knowledge_transfer,
            "regular_distillation": regular_distillation,
            "flash": flash,
            "evaluation": evaluation,
            "study": study,
        }
        keywords = {k: _copy(v) for k, v in keywords.items()}
        raw, source_framework = self._load(config)
        if source_framework is not None and framework is None:
            keywords["framework"] = source_framework
        _apply_keywords(raw, keywords)
        values = _validate(raw)
        self._check_flash_stages(flash, values)
        self._raw = raw
        self._values = values

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _load(config: Any) -> tuple[dict[str, Any], Optional[str]]:
        """The source as an inner-layout dict, or the seed's positional framework name."""
        if config is None:
            return {}, None
        if isinstance(config, AutoDistillationConfig):
            return _copy(config._raw), None
        if isinstance(config, (str, os.PathLike)):
            path = os.fspath(config)
            if (
                isinstance(config, str)
                and config.strip().lower() in _FRAMEWORK_ALIASES
                and not os.path.exists(path)
            ):
                return {}, config  # seed: AutoDistillationConfig("pytorch", ...)
            return _copy(_inner_layout(_read_yaml(path), path)), None
        if isinstance(config, Mapping):
            return _copy(_inner_layout(config)), None
        raise _fail("config", "a YAML path, a mapping or an AutoDistillationConfig", config)

    @staticmethod
    def _check_flash_stages(flash: Any, values: dict[str, Any]) -> None:
        if isinstance(flash, FlashSettings) and flash.stages:
            built = values["flash"].stages
            if [_plain(_stages_to_section([s])) for s in flash.stages] != [
                _plain(_stages_to_section([s])) for s in built
            ] or [s.kind for s in flash.stages] != [s.kind for s in built]:
                raise ConfigError(
                    "flash_distillation.stages",
                    "the given FlashSettings.stages disagree with knowledge_transfer / "
                    "regular_distillation; give one or the other",
                )

    @classmethod
    def from_yaml(cls, path: Any) -> "AutoDistillationConfig":
        """Read a YAML file (a safe YAML loader only: no Python tags are ever executed)."""
        return cls(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else cls(path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AutoDistillationConfig":
        """Build from the seed layout or from its inner ``auto_distillation`` mapping."""
        if not isinstance(data, Mapping):
            raise _fail("config", "a mapping", data)
        return cls(data)

    def _update(self, values: Mapping[str, Any]) -> None:
        """Patch attributes and validate the whole config again; on error nothing changes."""
        raw = _copy(self._raw)
        patch = {k: _copy(v) for k, v in values.items()}
        for key in _STAGE_ATTRS:
            if key in patch and patch[key] is None:
                patch[key] = {}  # setting a stage section to None removes it (seed semantics)
        if "seed" in patch and patch["seed"] is None:
            patch["seed"] = _FRESH_SEED  # cfg.seed = None: a fresh seed per run, as in the seed API
        _apply_keywords(raw, patch, clear_stages=True)
        new_values = _validate(raw)
        self._check_flash_stages(patch.get("flash"), new_values)
        self._raw, self._values = raw, new_values

    # ------------------------------------------------------------------ attributes
    framework = _property("framework", "'pytorch' or 'tensorflow'.")
    search_space = _property("search_space", "dict of architecture key -> list of candidate values.")
    search_algorithm = _property(
        "search_algorithm", "Canonical name ('grid', 'random', 'bo', 'tpe', 'gp', 'nsga2') or an Optuna sampler."
    )
    metrics = _property("metrics", "Metric names, in objective order.")
    higher_is_better = _property("higher_is_better", "One direction per metric.")
    max_trials = _property("max_trials", "Number of trials to run (> 0).")
    seed = _property("seed", "Seed of the searcher's sampler; None: a fresh seed per run (recorded in the study).")
    architecture_metrics = _property(
        "architecture_metrics", "Metrics (of ``metrics``) declared to depend on the architecture alone.")
    knowledge_transfer = _property(
        "knowledge_transfer", "The seed's knowledge-transfer lists as given (FlashDistillationConfig) or None."
    )
    regular_distillation = _property(
        "regular_distillation", "The seed's regular-distillation lists as given (FlashDistillationConfig) or None."
    )
    flash = _property("flash", "FlashSettings, including the normalised stages.")
    evaluation = _property("evaluation", "EvaluationSettings.")
    study = _property("study", "StudySettings.")

    @property
    def stages(self) -> list[DistillStage]:
        """Shortcut for ``self.flash.stages``."""
        return self.flash.stages

    @property
    def study_location_given(self) -> bool:
        """Whether the source named ``study.storage`` or ``study.run_dir`` (not left to the defaults):
        the seed API's ``search(res_save_path=...)`` places the study only when neither was given."""
        study = self._raw.get("study")
        if isinstance(study, StudySettings):
            return True
        return isinstance(study, Mapping) and any(study.get(k) is not None for k in ("storage", "run_dir"))

    @property
    def directions(self) -> list[str]:
        """Optuna study directions, one per metric (``'maximize'`` / ``'minimize'``)."""
        return ["maximize" if h else "minimize" for h in self.higher_is_better]

    @property
    def config(self) -> "AttrDict":
        """The seed's ``config`` attribute: :meth:`to_dict`'s data (a copy), readable by attribute as the
        seed's DotDict was (``cfg.config.auto_distillation.search.max_trials``)."""
        return AttrDict.wrap(self.to_dict())

    # ------------------------------------------------------------------ export
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data in the seed layout, normalised (explicit per-stage lists).

        ``AutoDistillationConfig(cfg.to_dict()) == cfg``. An Optuna sampler instance is written as its
        class name; Optuna's own samplers (``TPESampler``, ``GPSampler``, ``NSGAIISampler``,
        ``RandomSampler``, ``GridSampler``) read back as the matching algorithm, with default settings.
        """
        v = self._values
        algorithm = v["search_algorithm"]
        if not isinstance(algorithm, str):
            algorithm = type(algorithm).__name__
        flash: dict[str, Any] = {}
        for kind in _STAGE_ATTRS:
            group = [s for s in v["flash"].stages if s.kind == kind]
            if group:
                flash[kind] = _plain(_stages_to_section(group))
        flash.update(_plain(_settings_dict(v["flash"])))
        return {
            "model": {"framework": v["framework"]},
            "auto_distillation": {
                "search": {
                    "search_space": _plain(v["search_space"]),
                    "search_algorithm": algorithm,
                    "metrics": list(v["metrics"]),
                    "higher_is_better": list(v["higher_is_better"]),
                    "max_trials": v["max_trials"],
                    "seed": v["seed"],
                    **({"architecture_metrics": list(v["architecture_metrics"])}
                       if v["architecture_metrics"] else {}),
                },
                "flash_distillation": flash,
                "evaluation": _settings_dict(v["evaluation"]),
                "study": _settings_dict(v["study"]),
            },
        }

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML text (``yaml.safe_dump``; readable back with this class)."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def _key(self) -> tuple[Any, ...]:
        algorithm = self._values["search_algorithm"]
        return (self.to_dict(), algorithm if not isinstance(algorithm, str) else None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AutoDistillationConfig):
            return NotImplemented
        mine, theirs = self._key(), other._key()
        return mine[0] == theirs[0] and mine[1] is theirs[1]

    __hash__ = None  # mutable (setters)

    def __repr__(self) -> str:
        v = self._values
        algorithm = v["search_algorithm"]
        stages = [f"{s.name}({s.train_steps} steps)" for s in v["flash"].stages]
        return (
            f"AutoDistillationConfig(framework={v['framework']!r}, search_algorithm="
            f"{algorithm if not isinstance(algorithm, str) else repr(algorithm)}, "
            f"metrics={v['metrics']!r}, higher_is_better={v['higher_is_better']!r}, "
            f"max_trials={v['max_trials']!r}, seed={v['seed']!r}, search_space={v['search_space']!r}, "
            f"stages={stages!r}, flash=FlashSettings(optimizer={v['flash'].optimizer!r}, "
            f"learning_rate={v['flash'].learning_rate!r}, batch_size={v['flash'].batch_size!r}, "
            f"device={v['flash'].device!r}), evaluation={v['evaluation']!r}, study={v['study']!r})"
        )
