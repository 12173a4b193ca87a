"""Every config key, declared once: its section, type, default and the one-line text the docs show.

The settings objects the engines read (:class:`FlashSettings`, :class:`TeacherCacheSettings`,
:class:`EvaluationSettings`, :class:`StudySettings`, :class:`DistillStage`) and the seed API's containers
(:class:`Metric`, :class:`FlashDistillationConfig`) are plain dataclasses: building one by hand stores
what it is given, as the seed's did, and :class:`~nas_distill.config.AutoDistillationConfig` validates it.
Each field's annotation carries its check (a :mod:`nas_distill.checks` function run by pydantic), its
JSON Schema and its reference text, so from these declarations come

* the validation of the flat sections (:func:`validate_section`): pydantic walks the fields and reports
  the failing path, translated into today's one-line ``ConfigError("<path>", "expected ..., got ...")``;
* the keys each section accepts (:func:`keys_of`) and their defaults;
* the JSON Schema editors use (:func:`config_json_schema`, shipped as ``config.schema.json``);
* the config reference table in README.md (:func:`reference_table`).

A leaf: pydantic, the vocabulary and the value checks only (no Optuna, SQLAlchemy, torch or TensorFlow).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)

from . import checks
from .checks import MAX_STUDY_NAME_LENGTH, study_name_error
from .distill.mappings import LayerMapping
from .errors import ConfigError
from .vocabulary import (
    CACHE_DTYPES,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_MAX_TRIALS,
    DEFAULT_PRUNER,
    DEFAULT_REDUCTION_FACTOR,
    DEFAULT_RUN_DIR,
    DEFAULT_RUNG_EXAMPLES,
    DEFAULT_SEED,
    DEFAULT_STUDY_NAME,
    DEFAULT_TRAIN_STEPS,
    FRAMEWORK_ALIASES,
    FRAMEWORKS,
    LOSS_TYPES,
    OPTIMIZERS,
    PRUNERS,
)

__all__ = [
    "Metric", "FlashDistillationConfig", "DistillStage", "TeacherCacheSettings", "FlashSettings",
    "EvaluationSettings", "StudySettings", "ModelSection", "SearchSection", "validate_section", "keys_of",
    "config_json_schema", "schema_text", "reference_table", "study_name_error",
]

#: Heartbeat bounds (seconds): SQL storages beat in whole seconds, and a beat is a storage write, so a
#: shorter interval only loads the storage; a day between beats would make a dead worker invisible.
MIN_HEARTBEAT_S, MAX_HEARTBEAT_S = 1, 86_400
#: A trial is declared dead after missing this many beats at least: one late beat (a long step holding
#: the interpreter, a slow storage write) must not get a live trial failed and trained again.
MIN_BEATS_PER_GRACE = 2


# ---------------------------------------------------------------------------------------------------
# Field types: a check (raising ConfigError with an empty path: the caller knows where) + its schema
# ---------------------------------------------------------------------------------------------------
def _checked(check: Any, schema: dict[str, Any], **options: Any) -> Any:
    return Annotated[Any, PlainValidator(functools.partial(check, path="", **options)), WithJsonSchema(schema)]


def _or_null(checked: Any) -> Any:
    """The same check; the schema also allows ``null`` (which the sections read as the default)."""
    validator, schema = typing.get_args(checked)[1:]
    return Annotated[Any, validator, WithJsonSchema({"anyOf": [schema.json_schema, {"type": "null"}]})]


def _choice_schema(names: typing.Sequence[str]) -> dict[str, Any]:
    # Any string validates (the spelling is case-insensitive); editors still offer the canonical names.
    return {"anyOf": [{"enum": list(names)}, {"type": "string"}]}


def _study_name(value: Any, path: str) -> str:
    name = checks.str_value(value, path)
    problem = study_name_error(name)
    if problem:
        raise ConfigError(path, problem)
    return name


def _heartbeat(value: Any, path: str) -> float | int:
    interval = checks.number_kept(value, path, positive=True)
    if not MIN_HEARTBEAT_S <= interval <= MAX_HEARTBEAT_S:
        raise checks.fail(path, f"seconds between {MIN_HEARTBEAT_S} and {MAX_HEARTBEAT_S}", value)
    return interval


def _cache_enabled(value: Any, path: str) -> Any:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if not isinstance(value, bool):
        raise checks.fail(path, "true, false or 'auto'", value)
    return value


def _permissive(value: Any) -> Any:
    return value


_INT = {"type": "integer"}
_NUMBER = {"type": "number"}
PositiveInt = _checked(checks.int_value, {**_INT, "minimum": 1})
NonNegativeInt = _checked(checks.int_value, {**_INT, "minimum": 0}, minimum=0)
PositiveNumber = _checked(checks.number_value, {**_NUMBER, "exclusiveMinimum": 0}, positive=True)
NonNegativeNumber = _checked(checks.number_value, {**_NUMBER, "minimum": 0}, non_negative=True)
NonNegativeNumberKept = _checked(checks.number_kept, {**_NUMBER, "minimum": 0}, non_negative=True)
PositiveNumberKept = _checked(checks.number_kept, {**_NUMBER, "exclusiveMinimum": 0}, positive=True)
Bool = _checked(checks.bool_value, {"type": "boolean"})
NonEmptyStr = _checked(checks.str_value, {"type": "string", "minLength": 1})
PathText = _checked(checks.path_value, {"type": "string", "minLength": 1})
Device = _checked(checks.device_value, _choice_schema(("auto", "cpu", "cuda", "mps", "xpu")))
Storage = _checked(checks.storage_value, {"type": "string", "minLength": 1})
Optimizer = _checked(checks.choice, _choice_schema(OPTIMIZERS), aliases={o: o for o in OPTIMIZERS},
                     shown=OPTIMIZERS)
CacheDtype = _checked(checks.choice, _choice_schema(CACHE_DTYPES), aliases={d: d for d in CACHE_DTYPES},
                      shown=CACHE_DTYPES)
Framework = _checked(checks.choice, _choice_schema(FRAMEWORKS), aliases=FRAMEWORK_ALIASES, shown=FRAMEWORKS)
StudyName = _checked(_study_name, {"type": "string", "minLength": 1, "maxLength": MAX_STUDY_NAME_LENGTH})
Heartbeat = _checked(_heartbeat, {**_NUMBER, "minimum": MIN_HEARTBEAT_S, "maximum": MAX_HEARTBEAT_S})
CacheEnabled = _checked(_cache_enabled, {"anyOf": [{"type": "boolean"}, {"const": "auto"}]})


def _any(schema: dict[str, Any]) -> Any:
    """A key checked by its section's own code (cross-field rules); the schema still describes it."""
    return Annotated[Any, PlainValidator(_permissive), WithJsonSchema(schema)]


def Key(allowed: str, default: str | None = None) -> Any:  # noqa: N802 - reads as a declaration
    """A field's reference text: what is allowed and, when the default is not the value itself, how the
    docs show the default."""
    return Field(description=allowed, json_schema_extra={"default_text": default} if default else None)


_NOT_A_KEY = {"config_key": False}  # dataclass field metadata: an attribute the config file never names


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


_PER_STAGE = "one per stage, or one value for every stage"
_NAMES = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}}]}}]}
_MAPPINGS = {"type": "array", "items": {"type": "array"}}
_LOSSES = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}}]}}]}
_WEIGHTS = {"anyOf": [_NUMBER, {"type": "array", "items": {"anyOf": [
    _NUMBER, {"type": "array", "items": _NUMBER}]}}]}


def _per_stage_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [item, {"type": "array", "items": item}]}


@dataclass
class FlashDistillationConfig:
    """The seed's per-block distillation lists, stored exactly as given.

    Each argument is a list with one entry per block (knowledge transfer) or per stage (regular
    distillation). :class:`~nas_distill.config.AutoDistillationConfig` validates them and turns them into
    :class:`DistillStage` objects in ``cfg.flash.stages``.
    """

    block_names: Annotated[_any(_NAMES), Key(
        "module path per block; a stage trains only parameters under its block (exact path prefix; Keras: "
        "an exact layer name or `outer/inner`); `''` = every parameter",
        "`''` per mapping list (every parameter)")] = None
    layer_mappings_for_knowledge_transfer: Annotated[_any(_MAPPINGS), Key(
        "per block, a list of mappings: `(name,)`, `(name, output)`, `(student, teacher)`, "
        "`(s, s_out, t, t_out)`, `[(s...), (t...)]`", "required (knowledge transfer); none = the logits")] = None
    loss_types: Annotated[_any(_LOSSES), Key(
        f"per block, per mapping: {', '.join(f'`{t}`' for t in LOSS_TYPES)} (case-insensitive)",
        "`MSE` (`KL` on logits)")] = None
    loss_weights: Annotated[_any(_WEIGHTS), Key("per block, per mapping, >= 0", "`1/n` (n mappings)")] = None
    add_origin_loss: Annotated[_any(_per_stage_of({"type": "boolean"})), Key(
        f"bool, {_PER_STAGE}: add the task loss", "`false`")] = None
    train_steps: Annotated[_any(_per_stage_of({**_INT, "minimum": 1})), Key(
        f"int > 0, {_PER_STAGE}", f"`{DEFAULT_TRAIN_STEPS}` (the old default)")] = None
    temperature: Annotated[_any(_per_stage_of({**_NUMBER, "exclusiveMinimum": 0})), Key(
        f"> 0, {_PER_STAGE}", "`1.0`")] = None


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

    enabled: Annotated[CacheEnabled, Key("`true`, `false` or `auto` (when the features fit the budget)")] = "auto"
    dir: Annotated[_or_null(PathText), Key("path", "`<run_dir>/teacher_cache`")] = None
    feature_budget_mb: Annotated[NonNegativeNumberKept, Key("MiB >= 0")] = 1024
    dtype: Annotated[CacheDtype, Key(" / ".join(f"`{d}`" for d in CACHE_DTYPES))] = "float16"


@dataclass(frozen=True)
class FlashSettings:
    """Optimiser and runtime settings of flash distillation, plus the normalised stages."""

    optimizer: Annotated[Optimizer, Key(" / ".join(f"`{o}`" for o in OPTIMIZERS))] = "adamw"
    learning_rate: Annotated[PositiveNumber, Key("> 0")] = 1e-3
    weight_decay: Annotated[NonNegativeNumber, Key(">= 0")] = 0.0
    batch_size: Annotated[PositiveInt, Key("int > 0")] = 32
    device: Annotated[Device, Key("`auto`, `cpu`, `cuda[:N]`, `mps`, `xpu` (bf16 autocast on CUDA)")] = "auto"
    teacher_cache: TeacherCacheSettings = field(default_factory=TeacherCacheSettings)
    augmentation: Annotated[Bool, Key("bool: inputs change between reads, so the teacher cache is bypassed")] \
        = False
    stages: list[DistillStage] = field(default_factory=list, metadata=_NOT_A_KEY)


@dataclass(frozen=True)
class EvaluationSettings:
    """How candidates are measured. ``threads=None`` keeps the worker's torch thread count."""

    batch_size: Annotated[PositiveInt, Key("int > 0")] = 64
    latency_batch_size: Annotated[PositiveInt, Key("int > 0: examples per timed batch")] = 1
    latency_warmup: Annotated[NonNegativeInt, Key("int >= 0: untimed runs first")] = 5
    latency_repeats: Annotated[PositiveInt, Key("int > 0: timed runs (the median is kept)")] = 20
    threads: Annotated[_or_null(PositiveInt), Key("int > 0, or null: the worker's torch threads")] = None
    device: Annotated[Device, Key("`auto`, `cpu`, `cuda[:N]`, `mps`, `xpu`")] = "auto"


@dataclass(frozen=True)
class StudySettings:
    """The shared Optuna study. ``storage=None`` means ``sqlite:///<run_dir>/study.db``."""

    storage: Annotated[_or_null(Storage), Key(
        "URL (`sqlite:///...`, `postgresql+psycopg://...`, `journal:///...`) or a `.db` / `.log` file path, "
        "or null (a SQLite / journal file's folder must exist; only `run_dir` is created)",
        "`sqlite:///<run_dir>/study.db`")] = None
    study_name: Annotated[StudyName, Key(
        f"name (at most {MAX_STUDY_NAME_LENGTH} characters, no control characters)")] = DEFAULT_STUDY_NAME
    run_dir: Annotated[PathText, Key("path", f"`{DEFAULT_RUN_DIR}` (the seed API: its `AutoDistillationResults` "
                                             f"folder)")] = DEFAULT_RUN_DIR
    heartbeat_interval: Annotated[Heartbeat, Key(f"seconds in [{MIN_HEARTBEAT_S}, {MAX_HEARTBEAT_S}]")] \
        = DEFAULT_HEARTBEAT_INTERVAL
    grace_period: Annotated[PositiveNumberKept, Key(
        f"seconds >= {MIN_BEATS_PER_GRACE} x `heartbeat_interval`: a trial silent this long is declared dead")] \
        = DEFAULT_GRACE_PERIOD
    stop_after_failures: Annotated[NonNegativeInt, Key(
        "int >= 0: the circuit breaker's K (0 = never stop)")] = 3

    def __post_validate__(self, path: str) -> None:
        if self.grace_period < MIN_BEATS_PER_GRACE * self.heartbeat_interval:
            raise ConfigError(checks.join(path, "grace_period"),
                              f"expected at least {MIN_BEATS_PER_GRACE} x heartbeat_interval "
                              f"({MIN_BEATS_PER_GRACE * self.heartbeat_interval:g} s), got {self.grace_period!r}: "
                              f"live trials would be declared dead between two beats")


# ---------------------------------------------------------------------------------------------------
# Sections validated by their own code (cross-field rules); declared here for their keys and the docs
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSection:
    """``model:``: which framework builds the student."""

    framework: Annotated[Framework, Key("`pytorch` (or `torch`), `tensorflow` (or `tf`)")] = "pytorch"
    name: Annotated[_or_null(NonEmptyStr), Key("a label for the model (the seed's; kept, unused)", "none")] = None


_SPACE = {"type": "object", "minProperties": 1,
          "additionalProperties": {"type": "array", "minItems": 1, "items": {"type": ["number", "string", "boolean"]}}}
_METRIC = {"anyOf": [{"type": "string"}, {"type": "object", "required": ["name"], "additionalProperties": False,
                                           "properties": {"name": {"type": "string"},
                                                          "greater_is_better": {"type": "boolean"},
                                                          "higher_is_better": {"type": "boolean"},
                                                          "is_relative": {"type": "boolean"},
                                                          "criterion": _NUMBER,
                                                          "weight_ratio": {"type": ["number", "null"]}}}]}


@dataclass(frozen=True)
class SearchSection:
    """``search:``: the space, the searcher and the objectives."""

    search_space: Annotated[_any(_SPACE), Key(
        "name -> non-empty list of distinct numbers / strings / bools (distinct also across types: not "
        "`[1, true]` nor `[1, 1.0]`)", "**required**")] = None
    search_algorithm: Annotated[_any(_choice_schema(("grid", "random", "bo", "tpe", "gp", "nsga2"))), Key(
        "`grid`, `random`, `bo`/`bayesian` (our GP + exact EHVI; see \"Which searcher\"), `tpe`, `gp` "
        "(Optuna's GPSampler), `nsga2` (case-insensitive), or an Optuna sampler")] = "bo"
    metrics: Annotated[_any({"anyOf": [_METRIC, {"type": "array", "minItems": 1, "items": _METRIC}]}), Key(
        "names, `Metric` objects or `{name, greater_is_better, is_relative, criterion, weight_ratio}` (the "
        "last three kept, unused); unique", "`[accuracy]`")] = None
    higher_is_better: Annotated[_any({"anyOf": [{"type": "boolean"}, {"type": "array",
                                                                        "items": {"type": "boolean"}}]}), Key(
        "one bool per metric", "`true`, except `latency`, `params`, `model_size_mb`, `loss`, `eval_loss`")] = None
    max_trials: Annotated[_any({**_INT, "minimum": 1}), Key(
        "int > 0: completed trials of the whole study", f"`{DEFAULT_MAX_TRIALS}` (the old default)")] \
        = DEFAULT_MAX_TRIALS
    seed: Annotated[_any({"type": ["integer", "null"], "minimum": 0, "maximum": 2**32 - 1}), Key(
        "int in [0, 2^32), or `null`: a fresh seed per run, recorded as the study's user attr `seed`",
        f"`{DEFAULT_SEED}` (missing key)")] = DEFAULT_SEED
    architecture_metrics: Annotated[_any({"type": "array", "items": {"type": "string"}}), Key(
        "names among `search.metrics` that depend on the architecture alone (measured untrained, once per "
        "arch; see below)", "`[]` (plus `latency`, `params`, `model_size_mb` always)")] = None
    pruner: Annotated[_any(_choice_schema(PRUNERS)), Key(
        "`pareto-asha` (stop a student at a rung when it trails the students at least as slow; see "
        "\"Pruning\") or `none`", f"`{DEFAULT_PRUNER}`")] = DEFAULT_PRUNER
    reduction_factor: Annotated[_any({**_INT, "minimum": 2}), Key(
        "int >= 2: the pruner keeps the top 1/`reduction_factor` of a rung", f"`{DEFAULT_REDUCTION_FACTOR}`")] \
        = DEFAULT_REDUCTION_FACTOR
    rungs: Annotated[_any({"type": ["array", "null"], "items": {**_NUMBER, "exclusiveMinimum": 0,
                                                                  "exclusiveMaximum": 1}}), Key(
        "increasing fractions in (0, 1) of the regular-distillation steps at which the pruner evaluates a "
        "student", "`null`: 1/`reduction_factor`^2 and 1/`reduction_factor`")] = None
    rung_examples: Annotated[_any({**_INT, "minimum": 1}), Key(
        "int > 0: a rung evaluates on the first this many examples of the evaluation set",
        f"`{DEFAULT_RUNG_EXAMPLES}`")] = DEFAULT_RUNG_EXAMPLES


# ---------------------------------------------------------------------------------------------------
# Validation: a section's data -> its dataclass, through the pydantic model derived from it
# ---------------------------------------------------------------------------------------------------
def _is_key(f: dataclasses.Field) -> bool:
    return f.metadata.get("config_key", True)


def keys_of(cls: type) -> tuple[str, ...]:
    """The config keys of a section, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if _is_key(f))


def settings_dict(value: Any) -> Any:
    """A settings dataclass -> a dict of its config keys (nested ones too); other values unchanged."""
    if isinstance(value, (TeacherCacheSettings, FlashSettings, EvaluationSettings, StudySettings)):
        return {f.name: settings_dict(getattr(value, f.name)) for f in dataclasses.fields(value) if _is_key(f)}
    return value


class _Section(BaseModel):
    """Base of the derived models: a mapping with only the declared keys; null means the default."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise checks.fail("", "a mapping", value)
        known = checks.mapping(value, "", tuple(cls.model_fields))
        return {k: v for k, v in known.items() if v is not None}


@functools.lru_cache(maxsize=None)
def model_of(cls: type) -> type[BaseModel]:
    """The pydantic model of a settings dataclass: the same keys, checks and defaults."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not _is_key(f):
            continue
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            fields[f.name] = (model_of(annotation), Field(default_factory=model_of(annotation)))
        else:
            fields[f.name] = (annotation, f.default)
    return create_model(cls.__name__, __base__=_Section, __doc__=cls.__doc__, **fields)


def _where(path: str, loc: tuple[Any, ...], relative: str) -> str:
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else checks.join(path, part)
    if relative:
        path = path + relative if relative.startswith("[") else checks.join(path, relative)
    return path


def config_error(exc: ValidationError, path: str) -> ConfigError:
    """pydantic's first error as the one-line ``ConfigError("<path>", "...")`` of the checks."""
    error = exc.errors(include_url=False)[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        message = str(cause)[len(cause.field) + 2:] if cause.field else str(cause)
        return ConfigError(_where(path, error["loc"], cause.field), message)
    return ConfigError(_where(path, error["loc"], ""), f"{error['msg']}, got {checks.short(error.get('input'))}")


def _build(cls: type, model: BaseModel) -> Any:
    values = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        values[name] = _build(typing.get_type_hints(cls)[name], value) if isinstance(value, BaseModel) else value
    return cls(**values)


def validate_section(cls: type, value: Any, path: str, **extra: Any) -> Any:
    """``value`` (a mapping, a ``cls`` instance or None) checked and returned as a ``cls`` instance.

    ``extra`` sets attributes that are not config keys (``FlashSettings.stages``)."""
    try:
        model = model_of(cls).model_validate(settings_dict(value))
    except ValidationError as exc:
        raise config_error(exc, path) from None
    result = _build(cls, model)
    if extra:
        result = dataclasses.replace(result, **extra)
    check = getattr(result, "__post_validate__", None)
    if check is not None:
        check(path)
    return result


# ---------------------------------------------------------------------------------------------------
# The config file: JSON Schema and the reference table
# ---------------------------------------------------------------------------------------------------
_TASK = {"description": "`\"module:function\"` or `{entry, args}`: returns `model_builder` and `train_func`/"
                        "`eval_func` or `teacher_model`/`train_dataset`/`eval_dataset`",
         "anyOf": [{"type": "string", "pattern": "^[^:]+:.+$"},
                   {"type": "object", "additionalProperties": False, "required": ["entry"],
                    "properties": {"entry": {"type": "string"}, "args": {"type": "object"}}}]}


@functools.lru_cache(maxsize=None)
def _file_model() -> type[BaseModel]:
    stage = model_of(FlashDistillationConfig)
    flash = create_model(
        "FlashDistillation", __base__=model_of(FlashSettings),
        knowledge_transfer=(Optional[stage], Field(None, description="one entry per block, in training order")),
        regular_distillation=(Optional[stage], Field(None, description=(
            "one entry per stage; no block_names = every parameter trains; no mappings = logit distillation"))))
    inner = create_model(
        "AutoDistillation", __base__=_Section,
        search=(model_of(SearchSection), ...), flash_distillation=(Optional[flash], None),
        evaluation=(Optional[model_of(EvaluationSettings)], None), study=(Optional[model_of(StudySettings)], None))
    return create_model("NasDistillConfig", __base__=_Section,
                        task=(Annotated[_any(_TASK), Field(description=_TASK["description"])], None),
                        model=(Optional[model_of(ModelSection)], None), auto_distillation=(inner, ...))


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file (the seed layout), as shipped in ``config.schema.json``."""
    schema = _file_model().model_json_schema()
    for definition in [schema, *schema.get("$defs", {}).values()]:
        for prop in definition.get("properties", {}).values():
            prop.pop("default_text", None)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


#: The schema shipped with the package (regenerate: ``nas-distill schema -o nas_distill/config.schema.json``).
SCHEMA_FILE = Path(__file__).with_name("config.schema.json")


def schema_text() -> str:
    """:func:`config_json_schema` as the text of ``config.schema.json``."""
    return json.dumps(config_json_schema(), indent=2, ensure_ascii=False) + "\n"


def _default_text(info: Any) -> str:
    extra = info.json_schema_extra or {}
    if extra.get("default_text"):
        return extra["default_text"]
    default = info.get_default(call_default_factory=True)
    if default is None:
        return "`null`"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{default}`"


def reference_table() -> str:
    """The config reference of README.md: one row per key, generated from the declarations above."""
    sections = [("model", ModelSection), ("search", SearchSection),
                ("flash_distillation.knowledge_transfer", FlashDistillationConfig),
                ("flash_distillation", FlashSettings), ("flash_distillation.teacher_cache", TeacherCacheSettings),
                ("evaluation", EvaluationSettings), ("study", StudySettings)]
    rows = ["| key | allowed | default |", "|---|---|---|",
            f"| `task` | {_TASK['description']} | none (Python API sets them directly) |"]
    for prefix, cls in sections:
        for name, info in model_of(cls).model_fields.items():
            if info.description is None:
                continue  # a nested section: its keys have their own rows
            rows.append(f"| `{prefix}.{name}` | {info.description} | {_default_text(info)} |")
        if cls is FlashDistillationConfig:
            rows.append("| `flash_distillation.regular_distillation.*` | the same keys, one entry per stage; no "
                        "`block_names` = all parameters train; no mappings = logit distillation | `KL` on logits |")
    return "\n".join(rows) + "\n"
