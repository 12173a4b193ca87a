"""Property-based fuzzing of bad configs (issue #7, item 4).

Every generated config is a valid one (``BASE``, the seed layout with every section) with exactly one
thing broken: a value of the wrong type, an empty or broken (possibly huge) search space, an unknown key,
a per-stage / per-mapping / per-metric list of the wrong length, a negative or zero step count or bound,
or an unknown loss type. Each case knows which field it broke, and must end in:

* exactly :class:`~nas_distill.errors.ConfigError` (not TypeError, KeyError, OverflowError, ...);
* a one-line message ``<field path>: ...`` whose path is the broken field (or a path below it);
* nothing on disk: each case runs in an empty folder that holds the config's run dir and SQLite study,
  and the folder must still be empty afterwards.

The seed-layout dict goes through the real entry point (``AutoDistillation(model_builder, config)``), the
keyword form through ``AutoDistillationConfig(...)`` keywords, and some cases through a YAML file; a
sample of 30 goes through the real CLI (``python -m nas_distill.cli run FILE``: exit code 2, one
``nas-distill: config error: <field>: ...`` line on stderr, no traceback, no files).

Hypothesis runs derandomised (``derandomize=True``, no example database), so CI sees the same cases
every time. "Mappings to missing layers" need models, so they are checked by the dry run
(``tests/test_dryrun.py``), not here.
"""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _support.config import KT, RD, SEARCH
from nas_distill.autodistill import AutoDistillation
from nas_distill.config import (
    AutoDistillationConfig,
    EvaluationSettings,
    FlashDistillationConfig,
    FlashSettings,
    Metric,
    StudySettings,
    TeacherCacheSettings,
)
from nas_distill.errors import ConfigError

# ----------------------------------------------------------------------------------- the valid base
RUN_DIR = "run"
STORAGE = "sqlite:///run/study.db"  # relative to the (empty) folder each case runs in
INNER = {
    "search": SEARCH,
    "flash_distillation": {
        "knowledge_transfer": KT,
        "regular_distillation": RD,
        "optimizer": "adamw",
        "learning_rate": 0.01,
        "weight_decay": 0.0,
        "batch_size": 8,
        "device": "cpu",
        "augmentation": False,
        "teacher_cache": {"enabled": "auto", "dir": "cache", "feature_budget_mb": 10, "dtype": "float16"},
    },
    "evaluation": {"batch_size": 16, "latency_batch_size": 1, "latency_warmup": 1, "latency_repeats": 3,
                   "threads": 1, "device": "cpu"},
    "study": {"storage": STORAGE, "study_name": "fuzz", "run_dir": RUN_DIR, "heartbeat_interval": 5,
              "grace_period": 10},
}
BASE = {"model": {"name": "student", "framework": "pytorch"}, "auto_distillation": INNER}

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
#: Cases generated per property (the CLI sample is extra). Sum: see CASES_TOTAL.
N = {"leaf": 400, "section": 80, "unknown_key": 150, "space": 150, "length": 150, "bound": 100,
     "loss": 80, "keyword": 150, "yaml": 60, "top": 40}
CASES_TOTAL = sum(N.values())
CLI_CASES = 30
_counts: dict[str, int] = {}


@dataclass
class Case:
    data: Any  # the config (seed-layout dict, keyword dict or YAML text)
    field: str  # the broken field: the error's path must be it or below it
    mention: str | None = None  # text the message must contain (e.g. the unknown key)


def base() -> dict:
    return copy.deepcopy(BASE)


def path_text(parts) -> str:
    """Error-path spelling of a location in the seed layout (relative to ``auto_distillation``)."""
    text = ""
    for p in parts:
        if p == "auto_distillation" and not text:
            continue
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else p)
    return text


def put(data: dict, parts, value) -> dict:
    target = data
    for p in parts[:-1]:
        target = target[p]
    target[parts[-1]] = value
    return data


# ----------------------------------------------------------------------------- bad-value strategies
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
TEXT = st.text(max_size=12)
JUNK = st.one_of(st.integers(), FLOATS, st.booleans(), TEXT)
CONTAINERS = st.one_of(st.lists(JUNK, max_size=3), st.dictionaries(st.text(max_size=6), JUNK, max_size=2))
HUGE_INT = st.sampled_from([10**400, -(10**400), 10**5000])  # beyond float range / beyond repr's limit
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def not_matching(pattern: str):
    return TEXT.filter(lambda s: not re.fullmatch(pattern, s.strip().lower().replace("-", "").replace("_", "")
                                                  .replace(" ", "")))


BAD = {
    "pos_int": st.one_of(st.integers(max_value=0), FLOATS, st.booleans(), TEXT, CONTAINERS,
                         st.sampled_from(["5", 5.0, [5]])),
    "nonneg_int": st.one_of(st.integers(max_value=-1), FLOATS, st.booleans(), TEXT, CONTAINERS),
    "pos_number": st.one_of(st.integers(max_value=0), st.floats(max_value=0.0), NON_FINITE, HUGE_INT,
                            st.booleans(), TEXT, CONTAINERS, st.just("1e-3")),
    "nonneg_number": st.one_of(st.integers(max_value=-1), st.floats(max_value=-1e-9), NON_FINITE, HUGE_INT,
                               st.booleans(), TEXT, CONTAINERS),
    "bool": st.one_of(st.integers(), FLOATS, TEXT, CONTAINERS, st.sampled_from(["true", "yes", 0, 1])),
    "str": st.one_of(st.integers(), FLOATS, st.booleans(), CONTAINERS, st.sampled_from(["", "   ", "\t"])),
    "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32), FLOATS, st.booleans(), TEXT,
                      HUGE_INT),
    "device": st.one_of(not_matching(r"(auto|cpu|mps|cuda|gpu|xpu)(:\d+)?"), st.integers(), CONTAINERS,
                        st.sampled_from(["cuda:x", "tpu", "cuda:-1"])),
    "enabled": st.one_of(st.integers(), FLOATS, TEXT.filter(lambda s: s.strip().lower() != "auto"), CONTAINERS),
    "framework": st.one_of(not_matching(r"pytorch|torch|tensorflow|tf"), st.integers(), CONTAINERS),
    "algorithm": st.one_of(not_matching(r"(grid|random)(search|sampler)?|bo|bayesian(optimization)?|"
                                        r"(tpe|gp|nsgaii)(sampler)?|nsga2"), st.integers(),
                           st.floats(), CONTAINERS, st.sampled_from(["rando", "bayes", "nsga-3"])),
    "optimizer": st.one_of(not_matching(r"adamw|adam|sgd"), st.integers(), CONTAINERS),
    "dtype": st.one_of(not_matching(r"float16|bfloat16|float32"), st.integers(), CONTAINERS),
    "loss": st.one_of(not_matching(r"mse|kl|l1|ce|cosinesimilarity|cos|cosine|kld|kldiv"), st.integers(),
                      st.booleans(), st.dictionaries(TEXT, JUNK, max_size=2),
                      st.sampled_from(["msee", "KLD2", "cross_entropy", "huber"])),
    "storage": st.one_of(st.integers(), st.booleans(), CONTAINERS, st.sampled_from(["", "  "]),
                         TEXT.filter(lambda s: s.strip() and "://" not in s
                                     and not s.endswith((".db", ".sqlite", ".sqlite3", ".log", ".journal",
                                                         ".jsonl")))),
    "section": st.one_of(st.integers(), FLOATS, st.booleans(), TEXT.filter(bool), st.lists(JUNK, max_size=3)),
}
# A layer mapping that is not one: wrong element count, names that are not names, outputs that are not
# indices or keys.
BAD["mapping"] = st.one_of(
    st.integers(), FLOATS, st.booleans(), st.just([]), st.dictionaries(TEXT, JUNK, max_size=2),
    st.lists(st.text(min_size=1, max_size=6), min_size=3, max_size=3),
    st.lists(st.text(min_size=1, max_size=6), min_size=5, max_size=7),
    st.tuples(st.integers(), st.text(max_size=5)).map(list),
    st.tuples(st.sampled_from(["", "  "]), st.just("t.layer")).map(list),
    st.tuples(st.just("s.layer"), st.one_of(st.booleans(), st.floats())).map(list),
    st.tuples(st.just("s"), st.floats(), st.just("t"), st.just(0)).map(list),
    st.just([["a", "b", "c"], ["d"]]),
    st.just([["a", "0"], ["b", 1.5]]),
)
# '' is a valid block name (the prefix of every parameter: the whole student trains), alone or in a list.
BAD["block"] = st.one_of(BAD["str"].filter(lambda v: not isinstance(v, list) and v != ""), st.just([]),
                         st.lists(st.one_of(st.integers(), st.just(""), st.none()), min_size=1, max_size=3)
                         .filter(lambda names: any(n != "" for n in names)))
# Kinds for a whole per-stage field (or one stage's per-mapping entry), where a list of good values would
# be valid: only non-list bad values there.
for _kind in ("pos_int", "pos_number", "nonneg_number", "bool"):
    BAD[_kind + "_scalar"] = BAD[_kind].filter(lambda v: not isinstance(v, list))
BAD["metrics"] = st.one_of(
    st.just([]), st.lists(st.one_of(st.integers(), FLOATS, st.booleans(), st.just("")), min_size=1, max_size=3),
    st.just(["accuracy", "accuracy"]), st.just([{"name": 1}]), st.just([{"nam": "accuracy"}]),
    st.just([{"greater_is_better": True}]), st.just([{"name": "acc", "greater_is_better": "yes"}]),
    st.just([{"name": "acc", "greater_is_better": True, "higher_is_better": True}]), st.just(7),
)
BAD["higher"] = st.tuples(st.one_of(st.booleans(), JUNK), st.one_of(st.integers(), TEXT, FLOATS)).map(list)

_SEARCH = ["auto_distillation", "search"]
_FLASH = ["auto_distillation", "flash_distillation"]
_KT = _FLASH + ["knowledge_transfer"]
_RD = _FLASH + ["regular_distillation"]
_EVAL = ["auto_distillation", "evaluation"]
_STUDY = ["auto_distillation", "study"]
LEAVES = [
    (["model", "framework"], "framework"), (["model", "name"], "str"),
    (_SEARCH + ["search_algorithm"], "algorithm"), (_SEARCH + ["max_trials"], "pos_int"),
    (_SEARCH + ["seed"], "seed"), (_SEARCH + ["metrics"], "metrics"), (_SEARCH + ["higher_is_better"], "higher"),
    (_FLASH + ["optimizer"], "optimizer"), (_FLASH + ["learning_rate"], "pos_number"),
    (_FLASH + ["weight_decay"], "nonneg_number"), (_FLASH + ["batch_size"], "pos_int"),
    (_FLASH + ["device"], "device"), (_FLASH + ["augmentation"], "bool"),
    (_FLASH + ["teacher_cache", "enabled"], "enabled"), (_FLASH + ["teacher_cache", "dir"], "str"),
    (_FLASH + ["teacher_cache", "feature_budget_mb"], "nonneg_number"),
    (_FLASH + ["teacher_cache", "dtype"], "dtype"),
    (_KT + ["block_names", 0], "block"), (_KT + ["block_names", 1], "block"),
    (_KT + ["layer_mappings_for_knowledge_transfer", 0, 0], "mapping"),
    (_KT + ["layer_mappings_for_knowledge_transfer", 1, 1], "mapping"),
    (_KT + ["loss_types", 0], "loss"), (_KT + ["loss_types", 1, 0], "loss"),
    (_KT + ["loss_weights", 0], "nonneg_number_scalar"), (_KT + ["loss_weights", 1, 1], "nonneg_number"),
    (_KT + ["add_origin_loss", 0], "bool"), (_KT + ["add_origin_loss"], "bool_scalar"),
    (_KT + ["train_steps", 1], "pos_int"), (_KT + ["train_steps"], "pos_int_scalar"),
    (_KT + ["temperature", 0], "pos_number"), (_KT + ["temperature"], "pos_number_scalar"),
    (_RD + ["train_steps", 0], "pos_int"), (_RD + ["temperature", 0], "pos_number"),
    (_RD + ["add_origin_loss", 0], "bool"), (_RD + ["loss_types", 0, 0], "loss"),
    (_EVAL + ["batch_size"], "pos_int"), (_EVAL + ["latency_batch_size"], "pos_int"),
    (_EVAL + ["latency_warmup"], "nonneg_int"), (_EVAL + ["latency_repeats"], "pos_int"),
    (_EVAL + ["threads"], "pos_int"), (_EVAL + ["device"], "device"),
    (_STUDY + ["storage"], "storage"), (_STUDY + ["study_name"], "str"), (_STUDY + ["run_dir"], "str"),
    (_STUDY + ["heartbeat_interval"], "pos_number"), (_STUDY + ["grace_period"], "pos_number"),
    (_STUDY + ["stop_after_failures"], "nonneg_int"),
]
SECTIONS = [["model"], ["auto_distillation"], _SEARCH, _FLASH, _KT, _RD, _EVAL, _STUDY,
            _FLASH + ["teacher_cache"], _SEARCH + ["search_space"]]
ALLOWED_KEYS = {
    (): ["model", "auto_distillation", "task"],  # 'task' is the CLI's entry point, taken off first
    ("model",): ["framework", "name"],
    ("auto_distillation",): ["search", "flash_distillation", "evaluation", "study"],
    tuple(_SEARCH): ["search_space", "search_algorithm", "metrics", "higher_is_better", "max_trials", "seed"],
    tuple(_FLASH): ["knowledge_transfer", "regular_distillation", "optimizer", "learning_rate", "weight_decay",
                    "batch_size", "device", "teacher_cache", "augmentation"],
    tuple(_FLASH + ["teacher_cache"]): ["enabled", "dir", "feature_budget_mb", "dtype"],
    tuple(_KT): list(KT), tuple(_RD): list(KT),
    tuple(_EVAL): ["batch_size", "latency_batch_size", "latency_warmup", "latency_repeats", "threads", "device"],
    tuple(_STUDY): ["storage", "study_name", "run_dir", "heartbeat_interval", "grace_period",
                    "stop_after_failures"],
}


def typo(word: str):
    """Realistic misspellings of a known key (a letter dropped, doubled, or a suffix added)."""
    return st.one_of(
        st.integers(0, len(word) - 1).map(lambda i: word[:i] + word[i + 1:]),
        st.integers(0, len(word) - 1).map(lambda i: word[:i] + word[i] + word[i:]),
        st.sampled_from(["s", "_", "-x", " "]).map(lambda s: word + s),
        st.just(word.upper()),
    )


# ---------------------------------------------------------------------------------- case strategies
@st.composite
def leaf_cases(draw):
    parts, kind = draw(st.sampled_from(LEAVES))
    return Case(put(base(), parts, draw(BAD[kind])), path_text(parts))


@st.composite
def section_cases(draw):
    parts = draw(st.sampled_from(SECTIONS))
    value = draw(BAD["section"])
    if parts[-1] in ("knowledge_transfer", "regular_distillation", "search_space") and isinstance(value, list):
        value = value or [1]  # an empty list there reads as "nothing given" in some spots: keep it bad
    return Case(put(base(), parts, value), path_text(parts))


@st.composite
def unknown_key_cases(draw):
    parent = draw(st.sampled_from(sorted(ALLOWED_KEYS, key=len)))
    allowed = ALLOWED_KEYS[parent]
    key = draw(st.one_of(typo(draw(st.sampled_from(allowed))), st.text(min_size=1, max_size=10),
                         st.integers(), st.none(), st.just(""), st.just("a\nb")))
    if key in allowed:
        key = f"{key}_unknown"
    data = base()
    target = data
    for p in parent:
        target = target[p]
    target[key] = draw(st.one_of(JUNK, st.just({"x": 1})))
    shown = isinstance(key, str) and repr(key)[1:-1] == key  # shown as is (no escapes) in the message
    return Case(data, path_text(parent), mention=key if shown else None)


@st.composite
def space_cases(draw):
    """Empty, malformed and huge search spaces, each with one thing wrong."""
    parts = _SEARCH + ["search_space"]
    key = draw(st.sampled_from(["hidden_size", "num_layers", "new_key"]))
    bad_value = st.one_of(NON_FINITE, st.lists(st.integers(), max_size=2), st.dictionaries(TEXT, JUNK, max_size=1),
                          st.just(b"x"))
    kind = draw(st.sampled_from(["empty", "key", "values", "element", "huge_keys", "huge_values", "duplicate"]))
    if kind == "empty":
        space = draw(st.sampled_from([{}, [], "hidden_size", 5, [["hidden_size", [1]]]]))
    elif kind == "key":
        space = {draw(st.one_of(st.integers(), st.sampled_from(["", " ", "a\nb", "a\x00"]), st.none(),
                                st.booleans())): [1, 2]}
    elif kind == "values":
        space = {key: draw(st.one_of(st.just([]), st.integers(), TEXT, st.dictionaries(TEXT, JUNK, max_size=2)))}
    elif kind == "element":
        space = {key: [1, draw(bad_value)]}
    elif kind == "duplicate":
        value = draw(st.one_of(st.integers(), st.text(max_size=4), st.floats(allow_nan=False)))
        space = {key: [value, 3, value] if value != 3 else [3, 3]}
    elif kind == "huge_keys":  # 10**n points; one key broken
        n = draw(st.integers(20, 60))
        space = {f"k{i}": list(range(10)) for i in range(n)}
        key = f"k{draw(st.integers(0, n - 1))}"
        space[key] = draw(st.sampled_from([[], [1, 1], [1, math.nan], [[1]]]))
    else:  # a huge list of values with one bad one (or a duplicate) somewhere in it
        n = draw(st.integers(500, 5000))
        values = list(range(n))
        at = draw(st.integers(0, n - 1))
        values[at] = values[(at + 1) % n] if draw(st.booleans()) else draw(bad_value)
        space = {key: values}
    data = put(base(), parts, space)
    return Case(data, path_text(parts))


@st.composite
def length_cases(draw):
    """Lists whose length disagrees with the stage / mapping / metric count."""
    data = base()
    kind = draw(st.sampled_from(["kt", "per_loss", "higher", "rd"]))
    if kind == "kt":
        key = draw(st.sampled_from([k for k in KT if k != "block_names"]))
        n = draw(st.integers(0, 9).filter(lambda k: k != 2))
        value = (KT[key] * 5)[:n]
        return Case(put(data, _KT + [key], value), path_text(_KT + [key]))
    if kind == "per_loss":  # stage 0 has one mapping, stage 1 has two
        key, element = draw(st.sampled_from([("loss_types", "KL"), ("loss_weights", 0.5)]))
        stage = draw(st.integers(0, 1))
        n = draw(st.integers(0, 8).filter(lambda k: k != stage + 1))
        return Case(put(data, _KT + [key, stage], [element] * n), path_text(_KT + [key, stage]))
    if kind == "higher":
        n = draw(st.integers(0, 8).filter(lambda k: k != 2))
        return Case(put(data, _SEARCH + ["higher_is_better"], [True] * n), path_text(_SEARCH + ["higher_is_better"]))
    key = draw(st.sampled_from(["train_steps", "loss_types", "add_origin_loss", "temperature"]))
    n = draw(st.integers(0, 8).filter(lambda k: k != 1))
    value = ({"train_steps": [30], "loss_types": [["KL"]], "add_origin_loss": [True], "temperature": [1.0]}[key]
             * n)
    # The stage count comes from the first list-valued field, so the error may name any RD list; the
    # message then names the field that set the count.
    return Case(put(data, _RD + [key], value), path_text(_RD), mention=None)


@st.composite
def bound_cases(draw):
    """Negative / zero step counts and out-of-range numbers."""
    choices = [
        (_KT + ["train_steps", 0], st.integers(max_value=0)), (_KT + ["train_steps"], st.integers(max_value=0)),
        (_RD + ["train_steps", 0], st.integers(max_value=0)), (_SEARCH + ["max_trials"], st.integers(max_value=0)),
        (_EVAL + ["latency_repeats"], st.integers(max_value=0)),
        (_EVAL + ["latency_warmup"], st.integers(max_value=-1)),
        (_EVAL + ["threads"], st.integers(max_value=0)), (_FLASH + ["batch_size"], st.integers(max_value=0)),
        (_FLASH + ["learning_rate"], st.floats(max_value=0.0, allow_nan=False)),
        (_KT + ["temperature", 1], st.floats(max_value=0.0, allow_nan=False)),
        (_KT + ["loss_weights", 1, 0], st.floats(max_value=-1e-9, allow_nan=False)),
        (_KT + ["loss_weights", 0], st.just(0.0)),  # the only weight of stage 0 is 0, no origin loss
        (_STUDY + ["grace_period"], st.integers(max_value=0)), (_SEARCH + ["seed"], st.integers(max_value=-1)),
    ]
    parts, values = draw(st.sampled_from(choices))
    return Case(put(base(), parts, draw(values)), path_text(parts))


@st.composite
def loss_cases(draw):
    spots = [_KT + ["loss_types"], _KT + ["loss_types", 0], _KT + ["loss_types", 1, 1], _RD + ["loss_types"],
             _RD + ["loss_types", 0, 0]]
    parts = draw(st.sampled_from(spots))
    name = draw(st.one_of(not_matching(r"mse|kl|l1|ce|cosinesimilarity|cos|cosine|kld|kldiv").filter(bool),
                          st.sampled_from(["msee", "Kl-divergence", "huber", "cross_entropy", "cosine_sim"])))
    field = path_text(parts[: len(_KT) + 1])
    return Case(put(base(), parts, name), field)


# ---- keyword form
def keyword_base() -> dict:
    return dict(
        search_space={"hidden_size": [64, 128], "num_layers": [1, 2]},
        search_algorithm="random",
        metrics=[Metric("accuracy"), Metric("latency", greater_is_better=False)],
        max_trials=4,
        seed=7,
        knowledge_transfer=FlashDistillationConfig(**copy.deepcopy(KT)),
        regular_distillation=FlashDistillationConfig(**copy.deepcopy(RD)),
        framework="pytorch",
        flash=FlashSettings(learning_rate=0.01, batch_size=8, device="cpu",
                            teacher_cache=TeacherCacheSettings(enabled="auto", dir="cache", feature_budget_mb=10)),
        evaluation=EvaluationSettings(batch_size=16, latency_warmup=1, latency_repeats=3, threads=1, device="cpu"),
        study=StudySettings(storage=STORAGE, study_name="fuzz", run_dir=RUN_DIR, heartbeat_interval=5,
                            grace_period=10),
    )


KEYWORD_FIELDS = {
    "search_space": ("search.search_space", "section"), "search_algorithm": ("search.search_algorithm", "algorithm"),
    "metrics": ("search.metrics", "metrics"), "max_trials": ("search.max_trials", "pos_int"),
    "seed": ("search.seed", "seed"), "framework": ("model.framework", "framework"),
    "flash": ("flash_distillation", "section"), "evaluation": ("evaluation", "section"), "study": ("study", "section"),
}
DATACLASS_FIELDS = [  # (keyword, attribute, kind, error path)
    ("flash", "optimizer", "optimizer", "flash_distillation.optimizer"),
    ("flash", "learning_rate", "pos_number", "flash_distillation.learning_rate"),
    ("flash", "batch_size", "pos_int", "flash_distillation.batch_size"),
    ("flash", "device", "device", "flash_distillation.device"),
    ("flash", "augmentation", "bool", "flash_distillation.augmentation"),
    ("evaluation", "latency_repeats", "pos_int", "evaluation.latency_repeats"),
    ("evaluation", "latency_warmup", "nonneg_int", "evaluation.latency_warmup"),
    ("evaluation", "device", "device", "evaluation.device"),
    ("study", "run_dir", "str", "study.run_dir"), ("study", "study_name", "str", "study.study_name"),
    ("study", "storage", "storage", "study.storage"),
    ("study", "heartbeat_interval", "pos_number", "study.heartbeat_interval"),
    ("knowledge_transfer", "train_steps", "pos_int_scalar", "flash_distillation.knowledge_transfer.train_steps"),
    ("knowledge_transfer", "temperature", "pos_number_scalar", "flash_distillation.knowledge_transfer.temperature"),
    ("knowledge_transfer", "loss_types", "loss", "flash_distillation.knowledge_transfer.loss_types"),
    ("regular_distillation", "add_origin_loss", "bool_scalar",
     "flash_distillation.regular_distillation.add_origin_loss"),
]


@st.composite
def keyword_cases(draw):
    kwargs = keyword_base()
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(KEYWORD_FIELDS)))
        field, kind = KEYWORD_FIELDS[name]
        value = draw(BAD[kind])
        if name in ("flash", "evaluation", "study") and isinstance(value, list):
            value = value or [1]
        kwargs[name] = value
        return Case(kwargs, field)
    keyword, attr, kind, field = draw(st.sampled_from(DATACLASS_FIELDS))
    value = draw(BAD[kind].filter(lambda v: v is not None))
    obj = kwargs[keyword]
    kwargs[keyword] = type(obj)(**{**{f: getattr(obj, f) for f in obj.__dataclass_fields__}, attr: value})
    return Case(kwargs, field)


@st.composite
def metric_object_cases(draw):
    kwargs = keyword_base()
    name = draw(st.one_of(st.integers(), st.just(""), st.booleans()))
    direction = draw(st.one_of(st.integers(), TEXT, st.none()))
    if draw(st.booleans()):
        kwargs["metrics"] = [Metric("accuracy"), Metric(name)]
        return Case(kwargs, "search.metrics[1].name")
    kwargs["metrics"] = [Metric("accuracy"), Metric("latency", greater_is_better=direction)]
    return Case(kwargs, "search.metrics[1].greater_is_better")


# ---- the YAML file form and whole-config junk
@st.composite
def yaml_cases(draw):
    case = draw(st.one_of(leaf_cases(), unknown_key_cases(), space_cases(), bound_cases()))
    text = yaml.safe_dump(case.data, sort_keys=False, allow_unicode=True)
    return Case(text, case.field, case.mention)


@st.composite
def top_cases(draw):
    """Not a config at all: junk where the config goes, broken YAML, odd paths."""
    kind = draw(st.sampled_from(["object", "yaml", "path"]))
    if kind == "object":
        return Case(draw(st.one_of(st.integers(), FLOATS, st.lists(JUNK, max_size=2), st.just(b"x"))), "config")
    if kind == "yaml":
        text = draw(st.sampled_from(["a: [1, 2", "- 1\n- 2\n", "just text", "", "a: b: c", "{", "\t- x",
                                     "!!python/object/apply:os.system ['true']", "42"]))
        return Case(("yaml", text), "")
    name = draw(st.sampled_from(["missing.yaml", "a\x00b.yaml", "x" * 5000 + ".yaml", "dir"]))
    return Case(("path", name), "")


# ------------------------------------------------------------------------------------------- checks
def _names(error_field: str, expected: str) -> bool:
    return (not expected or error_field == expected or error_field.startswith(expected + ".")
            or error_field.startswith(expected + "["))


def _check_error(exc: BaseException, case: Case) -> ConfigError:
    assert type(exc) is ConfigError, f"{type(exc).__name__} instead of ConfigError: {exc!r}"
    text = str(exc)
    assert len(text.splitlines()) == 1, f"not one line: {text!r}"
    assert text.startswith(f"{exc.field}: "), text
    assert _names(exc.field, case.field), f"the error names {exc.field!r}, the broken field is {case.field!r}: {text}"
    if case.mention is not None:
        assert case.mention in text, f"{case.mention!r} not in {text!r}"
    message = text[len(exc.field) + 2:]
    assert len(message) < 1000, f"a message of {len(message)} characters: {text[:300]}..."
    return exc


def _reject(build, case: Case, kind: str) -> None:
    """Run ``build(case.data)`` in an empty folder: a ConfigError on the broken field, nothing written."""
    _counts[kind] = _counts.get(kind, 0) + 1
    with tempfile.TemporaryDirectory() as tmp:
        here = os.getcwd()
        os.chdir(tmp)
        try:
            try:
                build(case.data)
            except BaseException as exc:  # noqa: BLE001 - the type is what is checked
                _check_error(exc, case)
            else:
                pytest.fail(f"accepted a bad config (broken field {case.field!r}): {case.data!r}"[:3000])
            assert os.listdir(tmp) == [], f"files left behind: {os.listdir(tmp)}"
        finally:
            os.chdir(here)


def _autodistill(data):
    return AutoDistillation(lambda arch: arch, data)


def _from_yaml(text):
    Path("cfg.yaml").write_text(text)
    try:
        return AutoDistillation(lambda arch: arch, "cfg.yaml")
    finally:
        os.remove("cfg.yaml")


def _top(data):
    if isinstance(data, tuple) and data[0] == "yaml":
        return _from_yaml(data[1])
    if isinstance(data, tuple) and data[0] == "path":
        if data[1] == "dir":
            os.mkdir("dir")
            try:
                return AutoDistillationConfig("dir")
            finally:
                os.rmdir("dir")
        return AutoDistillationConfig(data[1])
    return AutoDistillation(lambda arch: arch, data)


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(_counts.values())
    sys.stderr.write(f"\n[fuzz] generated config cases: {total} {dict(sorted(_counts.items()))}\n")


def test_the_base_config_is_valid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = AutoDistillation(lambda arch: arch, base()).conf
    assert [s.name for s in cfg.flash.stages] == ["knowledge_transfer_0", "knowledge_transfer_1",
                                                  "regular_distillation_0"]
    assert AutoDistillationConfig(**keyword_base()) == cfg
    assert os.listdir(tmp_path) == []


def test_a_huge_valid_space_is_accepted_without_being_listed():
    # 10**60 points: validation must stay per key (a materialised product would never finish). A
    # model-based searcher: grid and random number the points with 64-bit integers and refuse it.
    data = put(base(), _SEARCH + ["search_space"], {f"k{i:02d}": list(range(10)) for i in range(60)})
    data = put(data, _SEARCH + ["search_algorithm"], "tpe")
    assert len(AutoDistillationConfig(data).search_space) == 60


@settings(max_examples=N["leaf"], **SETTINGS)
@given(leaf_cases())
def test_wrong_leaf_values(case):
    _reject(_autodistill, case, "leaf")


@settings(max_examples=N["section"], **SETTINGS)
@given(section_cases())
def test_wrong_section_types(case):
    _reject(_autodistill, case, "section")


@settings(max_examples=N["unknown_key"], **SETTINGS)
@given(unknown_key_cases())
def test_unknown_keys(case):
    _reject(_autodistill, case, "unknown_key")


@settings(max_examples=N["space"], **SETTINGS)
@given(space_cases())
def test_empty_malformed_and_huge_search_spaces(case):
    _reject(_autodistill, case, "space")


@settings(max_examples=N["length"], **SETTINGS)
@given(length_cases())
def test_mismatched_list_lengths(case):
    _reject(_autodistill, case, "length")


@settings(max_examples=N["bound"], **SETTINGS)
@given(bound_cases())
def test_negative_steps_and_out_of_range_numbers(case):
    _reject(_autodistill, case, "bound")


@settings(max_examples=N["loss"], **SETTINGS)
@given(loss_cases())
def test_unknown_loss_types(case):
    _reject(_autodistill, case, "loss")


@settings(max_examples=N["keyword"], **SETTINGS)
@given(st.one_of(keyword_cases(), metric_object_cases()))
def test_keyword_form(case):
    _reject(lambda kwargs: AutoDistillationConfig(**kwargs), case, "keyword")


@settings(max_examples=N["yaml"], **SETTINGS)
@given(yaml_cases())
def test_yaml_files(case):
    _reject(_from_yaml, case, "yaml")


@settings(max_examples=N["top"], **SETTINGS)
@given(top_cases())
def test_not_a_config_at_all(case):
    _reject(_top, case, "top")


# ----------------------------------------------------------------------------------- the real CLI
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@settings(max_examples=CLI_CASES, **SETTINGS)
@given(st.one_of(leaf_cases(), unknown_key_cases(), space_cases(), length_cases(), bound_cases(), loss_cases()))
def test_cli_run_rejects_bad_configs_in_one_line(case):
    """``nas-distill run FILE``: exit 2, one ``config error: <field>: ...`` line, no traceback, no files."""
    _counts["cli"] = _counts.get("cli", 0) + 1
    data = dict(case.data, task="nd_fuzz_task_never_imported:make_task")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        res = subprocess.run([sys.executable, "-m", "nas_distill.cli", "run", str(cfg)], cwd=tmp, env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and res.stdout == ""
        lines = res.stderr.splitlines()
        assert len(lines) == 1, res.stderr
        prefix = "nas-distill: config error: "
        assert lines[0].startswith(prefix), lines[0]
        message = lines[0][len(prefix):]
        assert _names(message.split(": ", 1)[0], case.field) or message.startswith(case.field), \
            f"{case.field!r} not named: {lines[0]}"
        assert sorted(os.listdir(tmp)) == ["cfg.yaml"], os.listdir(tmp)
