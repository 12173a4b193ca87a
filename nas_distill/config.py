"""Configuration: YAML / dict / keywords -> one validated :class:`AutoDistillationConfig`.

The keys, their defaults and checks are declared once in :mod:`nas_distill.settings` (the settings
dataclasses the engines read, validated through pydantic); the ``search`` section and the distillation
stages, whose rules span several keys, are validated by :mod:`nas_distill.search_section` and
:mod:`nas_distill.stages`. This module puts the sources together: a YAML file (read by
:func:`nas_distill.yamlio.read_config_file`, the safe loader only), a mapping in the seed layout or its
bare inner mapping, and the seed's keywords; it imports neither torch nor Optuna (Optuna only when a
non-string ``search_algorithm`` has to be checked against ``optuna.samplers.BaseSampler``).

Layout (the seed's; ``examples/seed_layout.yaml`` shows every key, README.md's "Config reference" lists
them)::

    model: {framework, name}
    auto_distillation:
      search: {search_space, search_algorithm, metrics, higher_is_better, max_trials, seed,
               architecture_metrics}
      flash_distillation: {knowledge_transfer: {...}, regular_distillation: {...},
                           optimizer, learning_rate, weight_decay, batch_size, device,
                           teacher_cache: {enabled, dir, feature_budget_mb, dtype}, augmentation}
      evaluation: {batch_size, latency_batch_size, latency_warmup, latency_repeats, threads, device}
      study: {storage, study_name, run_dir, heartbeat_interval, grace_period, stop_after_failures}

Error paths are relative to ``auto_distillation`` (``search.max_trials``), plus ``model.*``. A missing key
or an explicit ``null`` means the default. ``to_dict()`` writes the normalised, explicit form (one entry
per stage, mappings as ``[s_layer, s_output, t_layer, t_output]``); ``AutoDistillationConfig(cfg.to_dict())
== cfg``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from . import checks
from .errors import ConfigError
from .search_section import SEARCH_KEYS, validate_search
from .settings import (
    DistillStage,
    EvaluationSettings,
    FlashDistillationConfig,
    FlashSettings,
    Metric,
    ModelSection,
    StudySettings,
    TeacherCacheSettings,
    keys_of,
    settings_dict,
    study_name_error,
    validate_section,
)
from .stages import build_stages, plain, stage_section, stages_from_objects, stages_to_section
from .vocabulary import (
    FRAMEWORK_ALIASES,
    KNOWLEDGE_TRANSFER,
    LOWER_IS_BETTER_METRICS,
    NO_PRUNER,
    REGULAR_DISTILLATION,
    STAGE_KINDS,
)
from .yamlio import read_config_file

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
    "study_name_error",
]

_TOP_KEYS = ("model", "auto_distillation")
_INNER_KEYS = ("search", "flash_distillation", "evaluation", "study", "model")
_FLASH_KEYS = STAGE_KINDS + keys_of(FlashSettings)


def _inner_layout(data: Any, origin: str = "config") -> dict[str, Any]:
    """Seed layout ``{model, auto_distillation: {...}}`` or the bare inner mapping -> inner layout."""
    if not isinstance(data, Mapping):
        raise checks.fail(origin, "a mapping (the seed layout or its auto_distillation section)", data)
    if "auto_distillation" in data:
        top = checks.mapping(data, "", _TOP_KEYS)
        inner = top["auto_distillation"]
        if not isinstance(inner, Mapping):
            raise checks.fail("auto_distillation", "a mapping with search / flash_distillation / ...", inner)
        inner = checks.mapping(inner, "", _INNER_KEYS[:-1])  # paths stay relative to auto_distillation
        inner["model"] = top.get("model")
        return inner
    return checks.mapping(data, "", _INNER_KEYS)


def _section_patch(raw: dict[str, Any], key: str) -> dict[str, Any]:
    """A mutable copy of ``raw[key]`` to patch keyword values into (must already be a mapping)."""
    current = raw.get(key)
    if current is None:
        current = {}
    if not isinstance(current, Mapping):
        raise checks.fail(key, "a mapping", current)
    raw[key] = dict(current)
    return raw[key]


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



def _apply_keywords(raw: dict[str, Any], values: Mapping[str, Any], *, clear_stages: bool = False) -> None:
    """Patch keyword values (``None`` = not given) into the inner layout ``raw``, in place."""
    if values.get("framework") is not None:
        _section_patch(raw, "model")["framework"] = values["framework"]
    search_values = {k: values[k] for k in SEARCH_KEYS if values.get(k) is not None}
    if search_values.get("seed") is _FRESH_SEED:
        search_values["seed"] = None  # kept as an explicit null: a fresh seed, not the default
    if search_values:
        search = _section_patch(raw, "search")
        if "metrics" in search_values and "higher_is_better" not in search_values:
            search.pop("higher_is_better", None)  # the new metrics carry their own directions
        search.update(search_values)
    for key in STAGE_KINDS:
        if key in values and (values[key] is not None or clear_stages):
            _section_patch(raw, "flash_distillation")[key] = stage_section(values[key])
    flash = values.get("flash")
    if flash is not None:
        section = _section_patch(raw, "flash_distillation")
        if isinstance(flash, FlashSettings):
            section.update(settings_dict(flash))
            if flash.stages and all(values.get(k) is None for k in STAGE_KINDS):
                from_stages = stages_from_objects(flash.stages, "flash_distillation.stages")
                for key in STAGE_KINDS:
                    section[key] = from_stages.get(key)
        elif isinstance(flash, Mapping):
            section.update(flash)
        else:
            raise checks.fail("flash_distillation", "a FlashSettings or a mapping of flash settings", flash)
    for key in ("evaluation", "study"):
        value = values.get(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            _section_patch(raw, key).update(value)
        else:
            raw[key] = settings_dict(value)  # a settings dataclass (or a bad value, reported later)


def _validate(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The inner layout -> every attribute of AutoDistillationConfig, validated."""
    framework = validate_section(ModelSection, raw.get("model"), "model").framework
    search = validate_search(raw.get("search"))
    flash_raw = checks.mapping(raw.get("flash_distillation"), "flash_distillation", _FLASH_KEYS)
    kt_stages, kt = build_stages(flash_raw.get(KNOWLEDGE_TRANSFER), KNOWLEDGE_TRANSFER,
                                 "flash_distillation.knowledge_transfer")
    rd_stages, rd = build_stages(flash_raw.get(REGULAR_DISTILLATION), REGULAR_DISTILLATION,
                                 "flash_distillation.regular_distillation")
    flash_settings = {k: v for k, v in flash_raw.items() if k not in STAGE_KINDS}
    return {
        "framework": framework,
        **search,
        "knowledge_transfer": kt,
        "regular_distillation": rd,
        "flash": validate_section(FlashSettings, flash_settings, "flash_distillation", stages=kt_stages + rd_stages),
        "evaluation": validate_section(EvaluationSettings, raw.get("evaluation"), "evaluation"),
        "study": validate_section(StudySettings, raw.get("study"), "study"),
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
                and config.strip().lower() in FRAMEWORK_ALIASES
                and not os.path.exists(path)
            ):
                return {}, config  # seed: AutoDistillationConfig("pytorch", ...)
            return _copy(_inner_layout(read_config_file(path), path)), None
        if isinstance(config, Mapping):
            return _copy(_inner_layout(config)), None
        raise checks.fail("config", "a YAML path, a mapping or an AutoDistillationConfig", config)

    @staticmethod
    def _check_flash_stages(flash: Any, values: dict[str, Any]) -> None:
        if isinstance(flash, FlashSettings) and flash.stages:
            built = values["flash"].stages
            if [plain(stages_to_section([s])) for s in flash.stages] != [
                plain(stages_to_section([s])) for s in built
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
            raise checks.fail("config", "a mapping", data)
        return cls(data)

    def _update(self, values: Mapping[str, Any]) -> None:
        """Patch attributes and validate the whole config again; on error nothing changes."""
        raw = _copy(self._raw)
        patch = {k: _copy(v) for k, v in values.items()}
        for key in STAGE_KINDS:
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
    pruner = _property("pruner", "'pareto-asha' or 'none' (see nas_distill.rungs).")
    reduction_factor = _property("reduction_factor", "The pruner keeps the top 1/reduction_factor of a rung.")
    rungs = _property("rungs", "Fractions of the regular-distillation steps at which the pruner evaluates.")
    rung_examples = _property("rung_examples", "Evaluation examples of a rung (the first ones of the set).")
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
        for kind in STAGE_KINDS:
            group = [s for s in v["flash"].stages if s.kind == kind]
            if group:
                flash[kind] = plain(stages_to_section(group))
        flash.update(plain(settings_dict(v["flash"])))
        return {
            "model": {"framework": v["framework"]},
            "auto_distillation": {
                "search": {
                    "search_space": plain(v["search_space"]),
                    "search_algorithm": algorithm,
                    "metrics": list(v["metrics"]),
                    "higher_is_better": list(v["higher_is_better"]),
                    "max_trials": v["max_trials"],
                    "seed": v["seed"],
                    **({"architecture_metrics": list(v["architecture_metrics"])}
                       if v["architecture_metrics"] else {}),
                    **({"pruner": v["pruner"], "reduction_factor": v["reduction_factor"], "rungs": list(v["rungs"]),
                        "rung_examples": v["rung_examples"]} if v["pruner"] != NO_PRUNER else {}),
                },
                "flash_distillation": flash,
                "evaluation": settings_dict(v["evaluation"]),
                "study": settings_dict(v["study"]),
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

