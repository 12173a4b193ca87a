"""AutoDistillationConfig: the three input forms, normalisation, round trips and validation messages."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _support.config import KT, RD, SEARCH, SPACE
from nas_distill import config as config_module
from nas_distill.config import (
    AutoDistillationConfig,
    DistillStage,
    EvaluationSettings,
    FlashDistillationConfig,
    FlashSettings,
    Metric,
    StudySettings,
    TeacherCacheSettings,
)
from nas_distill.distill.mappings import LayerMapping
from nas_distill.errors import ConfigError
from nas_distill.search.algorithms import ALGORITHM_ALIASES
from nas_distill.search_section import SEARCH_KEYS
from nas_distill.settings import keys_of
from nas_distill.stages import STAGE_KEYS
from nas_distill.vocabulary import LOSS_ALIASES, OPTIMIZERS

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "seed_layout.yaml"

# The inner mapping (what sits under `auto_distillation:`), every section present.
BASE = {
    "search": SEARCH,
    "flash_distillation": {
        "knowledge_transfer": KT,
        "regular_distillation": RD,
        "learning_rate": 0.01,
        "batch_size": 8,
        "teacher_cache": {"enabled": False, "feature_budget_mb": 10},
    },
    "evaluation": {"batch_size": 16, "latency_repeats": 3},
    "study": {"run_dir": "runs/t", "study_name": "t"},
}


def seed_layout(inner=BASE, framework="pytorch"):
    return {"model": {"name": "AutoDistillation", "framework": framework}, "auto_distillation": copy.deepcopy(inner)}


def keyword_form():
    return AutoDistillationConfig(
        search_space={"hidden_size": (64, 128), "num_layers": [1, 2]},
        search_algorithm="Random",
        metrics=[Metric("accuracy"), Metric("latency", greater_is_better=False)],
        max_trials=4,
        seed=7,
        knowledge_transfer=FlashDistillationConfig(
            block_names=["s.layer.0", "s.layer.1"],
            layer_mappings_for_knowledge_transfer=[
                [("s.layer.0", "t.layer.0")],
                [("s.layer.1", 1, "t.layer.3", 1), (("s.layer.1.out",), ("t.layer.3.out",))],
            ],
            loss_types=[["mse"], ["kl", "MSE"]],
            loss_weights=[[1], [0.3, 0.7]],
            add_origin_loss=[False, True],
            train_steps=[10, 20],
            temperature=[1, 2.0],
        ),
        regular_distillation=FlashDistillationConfig(loss_types="KL", add_origin_loss=True, train_steps=30,
                                                     temperature=3),
        framework="PyTorch",
        flash=FlashSettings(learning_rate=0.01, batch_size=8,
                            teacher_cache=TeacherCacheSettings(enabled=False, feature_budget_mb=10)),
        evaluation=EvaluationSettings(batch_size=16, latency_repeats=3),
        study={"run_dir": "runs/t", "study_name": "t"},
    )


def with_value(path: str, value, base=BASE):
    """A deep copy of ``base`` with the dotted ``path`` set to ``value`` (``a.b[1]`` indexes lists)."""
    data = copy.deepcopy(base)
    parts = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        parts.append(name)
        if rest:
            parts.extend(int(i) for i in rest.rstrip("]").split("]["))
    target = data
    for key in parts[:-1]:
        target = target[key]
    target[parts[-1]] = value
    return data


def error_of(data) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        AutoDistillationConfig(data)
    return info.value


# ----------------------------------------------------------------------------------- input forms
def test_yaml_dict_inner_and_keyword_forms_are_equal(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(seed_layout()))
    from_yaml = AutoDistillationConfig(str(path))
    from_pathlike = AutoDistillationConfig.from_yaml(path)
    from_dict = AutoDistillationConfig(seed_layout())
    from_inner = AutoDistillationConfig.from_dict(BASE)
    from_keywords = keyword_form()
    assert from_yaml == from_pathlike == from_dict == from_inner == from_keywords
    assert from_keywords.search_algorithm == "random"
    assert from_keywords.metrics == ["accuracy", "latency"]
    assert from_keywords.higher_is_better == [True, False]
    assert from_keywords.directions == ["maximize", "minimize"]


def test_normalised_stages():
    cfg = AutoDistillationConfig(BASE)
    kt0, kt1, rd0 = cfg.flash.stages
    assert kt0 == DistillStage(
        name="knowledge_transfer_0", kind="knowledge_transfer", block_names=("s.layer.0",),
        mappings=(LayerMapping("s.layer.0", "t.layer.0"),), loss_types=("MSE",), loss_weights=(1.0,),
        add_origin_loss=False, train_steps=10, temperature=1.0,
    )
    assert kt1.mappings == (
        LayerMapping("s.layer.1", "t.layer.3", 1, 1), LayerMapping("s.layer.1.out", "t.layer.3.out"))
    assert kt1.loss_types == ("KL", "MSE") and kt1.loss_weights == (0.3, 0.7) and kt1.add_origin_loss
    assert rd0.kind == "regular_distillation" and rd0.block_names == () and rd0.mappings == ()
    assert rd0.loss_types == ("KL",) and rd0.train_steps == 30 and rd0.temperature == 3.0
    assert cfg.stages is cfg.flash.stages
    # The seed lists are kept as given.
    assert cfg.knowledge_transfer.loss_types == ["MSE", ["KL", "MSE"]]
    assert cfg.regular_distillation.train_steps == [30]


def test_defaults_and_broadcast_scalars():
    cfg = AutoDistillationConfig(
        search_space=SPACE,
        knowledge_transfer={"block_names": ["a", "b", "c"],
                            "layer_mappings_for_knowledge_transfer": [[["a"], ["b"]], [["b"]], [["c", "x"]]],
                            "train_steps": 50, "loss_types": "cos"},
        regular_distillation={"train_steps": 5},
    )
    kt = cfg.flash.stages[:3]
    assert [s.train_steps for s in kt] == [50, 50, 50]
    assert kt[0].loss_types == ("CosineSimilarity", "CosineSimilarity") and kt[0].loss_weights == (0.5, 0.5)
    assert kt[1].loss_weights == (1.0,) and kt[0].temperature == 1.0 and not kt[0].add_origin_loss
    rd = cfg.flash.stages[3]
    assert rd.mappings == () and rd.loss_types == ("KL",) and rd.loss_weights == (1.0,) and rd.train_steps == 5
    assert (cfg.framework, cfg.search_algorithm, cfg.metrics, cfg.higher_is_better, cfg.max_trials, cfg.seed) == (
        "pytorch", "bo", ["accuracy"], [True], 3, 42)
    assert cfg.flash == FlashSettings(stages=cfg.flash.stages)
    assert cfg.evaluation == EvaluationSettings() and cfg.study == StudySettings()


def test_no_distillation_sections_means_no_stages():
    cfg = AutoDistillationConfig(search_space=SPACE)
    assert cfg.flash.stages == [] and cfg.knowledge_transfer is None and cfg.regular_distillation is None


def test_seed_layout_example_loads():
    cfg = AutoDistillationConfig(str(EXAMPLE))
    assert cfg.framework == "pytorch" and cfg.search_algorithm == "bo"
    assert cfg.metrics == ["eval_accuracy", "latency"] and cfg.higher_is_better == [True, False]
    kinds = [s.kind for s in cfg.flash.stages]
    assert kinds == ["knowledge_transfer"] * 3 + ["regular_distillation"]
    assert cfg.flash.stages[0].mappings[0] == LayerMapping(
        "mobilebert.encoder.layer.0.attention.self", "bert.encoder.layer.0.attention.self", 1, 1)
    assert cfg.flash.stages[-1].temperature == 2.0 and cfg.flash.stages[-1].add_origin_loss
    assert cfg.study.run_dir == "runs/mobilebert"


def test_to_dict_is_json_and_round_trips(tmp_path):
    for cfg in (AutoDistillationConfig(BASE), AutoDistillationConfig(str(EXAMPLE)), keyword_form()):
        data = cfg.to_dict()
        assert json.loads(json.dumps(data)) == data
        assert set(data) == {"model", "auto_distillation"}
        assert AutoDistillationConfig(data) == cfg
        assert AutoDistillationConfig(json.loads(json.dumps(data))) == cfg
        path = tmp_path / "again.yaml"
        path.write_text(cfg.to_yaml())
        assert AutoDistillationConfig(str(path)) == cfg
        assert AutoDistillationConfig(cfg) == cfg


def test_eq_and_repr():
    cfg = AutoDistillationConfig(BASE)
    other = AutoDistillationConfig(with_value("search.max_trials", 5))
    assert cfg != other and cfg != "config"
    text = repr(cfg)
    assert text.startswith("AutoDistillationConfig(") and "'random'" in text and "knowledge_transfer_1" in text


def test_setters_revalidate_and_leave_config_unchanged_on_error():
    cfg = AutoDistillationConfig(BASE)
    cfg.max_trials = 5
    assert cfg.max_trials == 5
    with pytest.raises(ConfigError, match=r"search\.max_trials: expected a positive integer, got 0"):
        cfg.max_trials = 0
    assert cfg.max_trials == 5
    cfg.search_algorithm = "NSGA-II"
    assert cfg.search_algorithm == "nsga2"
    cfg.metrics = ["accuracy", "params", "loss"]
    assert cfg.higher_is_better == [True, False, False]
    with pytest.raises(ConfigError, match="higher_is_better"):
        cfg.higher_is_better = [True]
    cfg.higher_is_better = [True, False, True]
    assert cfg.higher_is_better == [True, False, True]
    cfg.regular_distillation = None
    assert [s.kind for s in cfg.flash.stages] == ["knowledge_transfer"] * 2
    cfg.knowledge_transfer = FlashDistillationConfig(block_names=["x"], layer_mappings_for_knowledge_transfer=[[["x"]]])
    assert len(cfg.flash.stages) == 1 and cfg.flash.stages[0].block_names == ("x",)
    cfg.search_space = {"width": [1, 2, 3]}
    assert cfg.search_space == {"width": [1, 2, 3]}
    with pytest.raises(ConfigError, match=r"search\.search_space\.width: expected a non-empty list, got 3"):
        cfg.search_space = {"width": 3}
    cfg.framework = "tensorflow"
    assert cfg.framework == "tensorflow"
    cfg.evaluation = EvaluationSettings(threads=2)
    assert cfg.evaluation.threads == 2
    with pytest.raises(ConfigError, match=r"evaluation\.threads"):
        cfg.evaluation = {"threads": 0}


def test_input_lists_are_copied():
    space = {"hidden_size": [64, 128]}
    cfg = AutoDistillationConfig(search_space=space)
    space["hidden_size"].append(7)
    assert cfg.search_space == {"hidden_size": [64, 128]}
    cfg.search_space["hidden_size"].append(9)  # mutating the returned dict does not bypass validation
    assert cfg.search_space["hidden_size"] == [64, 128]
    assert AutoDistillationConfig(cfg).search_space["hidden_size"] == [64, 128]


def test_seed_positional_form_and_keyword_override(tmp_path):
    cfg = AutoDistillationConfig("pytorch", SPACE, "BO", [Metric("acc")], 3, 1)
    assert (cfg.framework, cfg.search_space, cfg.search_algorithm, cfg.max_trials, cfg.seed) == (
        "pytorch", SPACE, "bo", 3, 1)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(seed_layout()))
    cfg = AutoDistillationConfig(str(path), max_trials=2, metrics=["accuracy"])
    assert cfg.max_trials == 2 and cfg.metrics == ["accuracy"] and cfg.higher_is_better == [True]
    assert len(cfg.flash.stages) == 3


@pytest.mark.parametrize(
    "name, canonical",
    [("grid", "grid"), ("Random", "random"), ("BO", "bo"), ("bayesian", "bo"), ("TPE", "tpe"), ("gp", "gp"),
     ("nsga2", "nsga2"), ("NSGA-II", "nsga2"), ("nsga_ii", "nsga2"), ("TPESampler", "tpe")],
)
def test_search_algorithm_aliases(name, canonical):
    assert AutoDistillationConfig(search_space=SPACE, search_algorithm=name).search_algorithm == canonical


def test_sampler_instance_is_kept_and_written_by_class_name():
    import optuna

    sampler = optuna.samplers.TPESampler(seed=3)
    cfg = AutoDistillationConfig(search_space=SPACE, search_algorithm=sampler)
    assert cfg.search_algorithm is sampler
    assert cfg.to_dict()["auto_distillation"]["search"]["search_algorithm"] == "TPESampler"
    assert AutoDistillationConfig(cfg.to_dict()).search_algorithm == "tpe"
    assert cfg == AutoDistillationConfig(cfg)
    assert cfg != AutoDistillationConfig(search_space=SPACE, search_algorithm="tpe")


def test_metric_forms_and_default_directions():
    cfg = AutoDistillationConfig(search_space=SPACE, metrics=["accuracy", "latency", "params", "model_size_mb",
                                                              "eval_loss", "f1"])
    assert cfg.higher_is_better == [True, False, False, False, False, True]
    cfg = AutoDistillationConfig(search_space=SPACE, metrics=[{"name": "latency", "higher_is_better": True},
                                                              {"name": "acc", "greater_is_better": False}])
    assert cfg.higher_is_better == [True, False]
    assert AutoDistillationConfig(search_space=SPACE, metrics=Metric("f1")).metrics == ["f1"]
    assert AutoDistillationConfig(search_space=SPACE, metrics="latency").higher_is_better == [False]
    with pytest.raises(ConfigError, match=r"search\.higher_is_better\[0\]: True conflicts"):
        AutoDistillationConfig(search_space=SPACE, metrics=[Metric("a", False)], higher_is_better=[True])


def test_flash_settings_stages_round_trip():
    cfg = AutoDistillationConfig(BASE)
    rebuilt = AutoDistillationConfig(search_space=SPACE, search_algorithm="random", metrics=["accuracy", "latency"],
                                     max_trials=4, seed=7, flash=cfg.flash, evaluation=cfg.evaluation,
                                     study=cfg.study)
    assert rebuilt == cfg
    other = FlashSettings(stages=[DistillStage("x", "regular_distillation", loss_types=("KL",),
                                               loss_weights=(1.0,))])
    with pytest.raises(ConfigError, match="flash_distillation.stages"):
        AutoDistillationConfig(search_space=SPACE, flash=other, regular_distillation={"train_steps": 3})
    junk_mapping = FlashSettings(stages=[DistillStage("x", "knowledge_transfer", ("b",), mappings=(("a", 1, 2),))])
    with pytest.raises(ConfigError, match=r"layer_mappings_for_knowledge_transfer\[0\]\[0\]"):
        AutoDistillationConfig(search_space=SPACE, flash=junk_mapping)
    bad_order = FlashSettings(stages=[cfg.flash.stages[2], cfg.flash.stages[0]])
    with pytest.raises(ConfigError, match=r"flash_distillation\.stages\[1\]"):
        AutoDistillationConfig(search_space=SPACE, flash=bad_order)


# ----------------------------------------------------------------------------------- validation
KTP = "flash_distillation.knowledge_transfer"
RDP = "flash_distillation.regular_distillation"
MAPS = f"{KTP}.layer_mappings_for_knowledge_transfer"

VALIDATION_CASES = [
    # (dotted path to change, bad value, field path in the message, text in the message)
    ("search.search_space.hidden_size", 128, "search.search_space.hidden_size", "expected a non-empty list, got 128"),
    ("search.search_space.hidden_size", [], "search.search_space.hidden_size", "got []"),
    ("search.search_space.hidden_size", [64, 64], "search.search_space.hidden_size", "[64, 64]"),
    ("search.search_space.hidden_size", [[64]], "search.search_space.hidden_size", "[64]"),
    ("search.search_space", {}, "search.search_space", "empty mapping"),
    ("search.search_space", [1, 2], "search.search_space", "[1, 2]"),
    ("search.search_space", {3: [1]}, "search.search_space", "3"),
    ("search.search_space", None, "search.search_space", "got nothing"),
    ("search.search_algorithm", "annealing", "search.search_algorithm", "'annealing'"),
    ("search.search_algorithm", 3, "search.search_algorithm", "got 3"),
    ("search.metrics", ["acc", "acc"], "search.metrics[1]", "'acc'"),
    ("search.metrics", [], "search.metrics", "[]"),
    ("search.metrics", [3], "search.metrics[0]", "got 3"),
    ("search.higher_is_better", [True], "search.higher_is_better", "search.metrics has 2"),
    ("search.higher_is_better", [True, "yes"], "search.higher_is_better[1]", "'yes'"),
    ("search.higher_is_better", [True, 1], "search.higher_is_better[1]", "got 1"),
    ("search.max_trials", 0, "search.max_trials", "got 0"),
    ("search.max_trials", -3, "search.max_trials", "got -3"),
    ("search.max_trials", True, "search.max_trials", "got True"),
    ("search.max_trials", 2.5, "search.max_trials", "got 2.5"),
    ("search.max_trials", "10", "search.max_trials", "got '10'"),
    ("search.seed", -1, "search.seed", "got -1"),
    ("search.seed", False, "search.seed", "got False"),
    ("model", {"framework": "jax"}, "model.framework", "'jax'"),
    ("model", {"framwork": "pytorch"}, "model.framwork", "did you mean 'framework'"),
    (f"{KTP}.train_steps", [10], f"{KTP}.train_steps", f"{KTP}.block_names has 2), got 1"),
    (f"{KTP}.train_steps", [10, -5], f"{KTP}.train_steps[1]", "got -5"),
    (f"{KTP}.train_steps", [10, 0], f"{KTP}.train_steps[1]", "got 0"),
    (f"{KTP}.train_steps", [10, True], f"{KTP}.train_steps[1]", "got True"),
    (f"{KTP}.train_steps", "many", f"{KTP}.train_steps[0]", "'many'"),
    (f"{KTP}.loss_types", ["MSE", ["KL", "Huber"]], f"{KTP}.loss_types[1][1]", "'Huber'"),
    (f"{KTP}.loss_types", ["MSE", ["KL"]], f"{KTP}.loss_types[1]", f"{MAPS}[1] has 2), got 1"),
    (f"{KTP}.loss_types", ["MSE"], f"{KTP}.loss_types", "got 1 entries"),
    (f"{KTP}.loss_weights", [1.0, [-0.3, 0.7]], f"{KTP}.loss_weights[1][0]", "got -0.3"),
    (f"{KTP}.loss_weights", [1.0, [0.3, "x"]], f"{KTP}.loss_weights[1][1]", "'x'"),
    (f"{KTP}.temperature", [1.0, 0], f"{KTP}.temperature[1]", "got 0"),
    (f"{KTP}.temperature", [1.0, -2.0], f"{KTP}.temperature[1]", "got -2.0"),
    (f"{KTP}.temperature", [1.0, float("nan")], f"{KTP}.temperature[1]", "got nan"),
    (f"{KTP}.add_origin_loss", [False, "yes"], f"{KTP}.add_origin_loss[1]", "'yes'"),
    (f"{KTP}.add_origin_loss", [False, 1], f"{KTP}.add_origin_loss[1]", "got 1"),
    (f"{MAPS}", [[["s.layer.0"]], [[1, 2, 3]]], f"{MAPS}[1][0]", "[1, 2, 3]"),
    (f"{MAPS}", [[["s.layer.0"]], ["s.layer.1"]], f"{MAPS}[1][0]", "'s.layer.1'"),
    (f"{MAPS}", [[["s.layer.0"]], []], f"{MAPS}[1]", "got []"),
    (f"{MAPS}", [[["s.layer.0"]]], f"{MAPS}", "got 1 entries"),
    (f"{MAPS}", None, f"{MAPS}[0]", "got nothing"),
    (f"{KTP}.block_names", [], f"{KTP}.block_names", "got []"),
    (f"{KTP}.block_names", ["a", 5], f"{KTP}.block_names[1]", "got 5"),
    (f"{KTP}.block_names", ["a", "  "], f"{KTP}.block_names[1]", "got '  '"),
    (f"{KTP}.block_names", ["a", None], f"{KTP}.block_names[1]", "got None"),
    (f"{KTP}.loss_weights", [0, [0.3, 0.7]], f"{KTP}.loss_weights[0]", "got [0.0]"),
    (f"{RDP}.temperature", [0], f"{RDP}.temperature[0]", "got 0"),
    (f"{RDP}.loss_types", [["XE"]], f"{RDP}.loss_types[0][0]", "'XE'"),
    (f"{RDP}.train_steps", [30, 40], f"{RDP}.loss_types", "got 1 entries"),
    ("flash_distillation.learning_rate", 0, "flash_distillation.learning_rate", "got 0"),
    ("flash_distillation.learning_rate", -1e-3, "flash_distillation.learning_rate", "got -0.001"),
    ("flash_distillation.learning_rate", "fast", "flash_distillation.learning_rate", "'fast'"),
    ("flash_distillation.weight_decay", -0.1, "flash_distillation.weight_decay", "got -0.1"),
    ("flash_distillation.batch_size", 0, "flash_distillation.batch_size", "got 0"),
    ("flash_distillation.batch_size", True, "flash_distillation.batch_size", "got True"),
    ("flash_distillation.optimizer", "adamww", "flash_distillation.optimizer", "did you mean 'adamw'"),
    ("flash_distillation.device", "gpu0", "flash_distillation.device", "'gpu0'"),
    ("flash_distillation.augmentation", "no", "flash_distillation.augmentation", "'no'"),
    ("flash_distillation.teacher_cache", {"enabled": "sometimes"}, "flash_distillation.teacher_cache.enabled",
     "'sometimes'"),
    ("flash_distillation.teacher_cache", {"dtype": "int8"}, "flash_distillation.teacher_cache.dtype", "'int8'"),
    ("flash_distillation.teacher_cache", {"feature_budget_mb": -1},
     "flash_distillation.teacher_cache.feature_budget_mb", "got -1"),
    ("evaluation.latency_repeats", 0, "evaluation.latency_repeats", "got 0"),
    ("evaluation.latency_warmup", -1, "evaluation.latency_warmup", "got -1"),
    ("evaluation.threads", 0, "evaluation.threads", "got 0"),
    ("evaluation", [1], "evaluation", "got [1]"),
    ("study.heartbeat_interval", 0, "study.heartbeat_interval", "got 0"),
    ("study.grace_period", -5, "study.grace_period", "got -5"),
    ("study.stop_after_failures", -1, "study.stop_after_failures", "got -1"),
    ("study.stop_after_failures", 2.5, "study.stop_after_failures", "got 2.5"),
    ("study.study_name", "", "study.study_name", "got ''"),
    ("study.storage", 5, "study.storage", "got 5"),
]


@pytest.mark.parametrize("path, value, field, text", VALIDATION_CASES,
                         ids=[f"{c[0]}={c[1]!r}" for c in VALIDATION_CASES])
def test_each_rule_names_the_field_and_the_bad_value(path, value, field, text):
    err = error_of(with_value(path, value))
    assert isinstance(err, ValueError)  # ConfigError is a ValueError
    assert err.field == field, str(err)
    assert str(err).startswith(f"{field}: "), str(err)
    assert text in str(err), str(err)


def test_bool_is_not_an_int_anywhere():
    for path in ("search.max_trials", "flash_distillation.batch_size", "evaluation.batch_size", "search.seed"):
        assert "got True" in str(error_of(with_value(path, True)))


@pytest.mark.parametrize(
    "data, field, suggestion",
    [
        ({**BASE, "serach": {}}, "serach", "'search'"),
        (with_value("search.max_trial", 3), "search.max_trial", "'max_trials'"),
        (with_value("flash_distillation.knowledge_tranfer", {}), "flash_distillation.knowledge_tranfer",
         "'knowledge_transfer'"),
        (with_value(f"{KTP}.train_step", [1, 2]), f"{KTP}.train_step", "'train_steps'"),
        (with_value("study.heartbeat", 3), "study.heartbeat", "'heartbeat_interval'"),
        ({"modle": {}, "auto_distillation": BASE}, "modle", "'model'"),
    ],
)
def test_unknown_key_gets_did_you_mean(data, field, suggestion):
    err = error_of(data)
    assert err.field == field
    assert f"did you mean {suggestion}?" in str(err)


def test_lengths_mismatch_names_both_fields_and_lengths():
    err = error_of(with_value(f"{KTP}.block_names", ["a", "b", "c"]))
    assert err.field == f"{KTP}.layer_mappings_for_knowledge_transfer"
    assert f"{KTP}.block_names has 3" in str(err) and "got 2 entries" in str(err)


# ----------------------------------------------------------------------------------- YAML files
def test_yaml_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        AutoDistillationConfig(str(missing))
    for name, text, words in [
        ("list.yaml", "- 1\n- 2\n", "expected a YAML mapping at the top level, got list"),
        ("empty.yaml", "", "empty document"),
        ("broken.yaml", "search: [1, 2\n", "invalid YAML"),
        ("tabs.yaml", "search:\n\t- x\n", "invalid YAML"),
    ]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            AutoDistillationConfig(str(path))
        assert info.value.field == str(path) and words in str(info.value)
    with pytest.raises(ConfigError, match="directory"):
        AutoDistillationConfig(str(tmp_path))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="binary.yaml"):
        AutoDistillationConfig(str(binary))


def test_yaml_python_tags_are_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(
        "search:\n"
        f"  search_space: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(ConfigError) as info:
        AutoDistillationConfig(str(path))
    assert info.value.field == str(path) and "invalid YAML" in str(info.value)
    assert not marker.exists()
    # The same text through yaml.unsafe_load would have created the marker: the test is meaningful.
    yaml.unsafe_load(path.read_text())
    assert marker.exists()


def test_import_does_not_pull_heavy_modules():
    code = (
        "import sys, nas_distill.config as c; "
        "c.AutoDistillationConfig(search_space={'a': [1]}); "
        "bad = [m for m in ('torch', 'optuna', 'transformers', 'tensorflow') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------------- fuzzing
SECTIONS = ("search", "flash_distillation", "evaluation", "study", "model", "config", "auto_distillation")
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=6),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
not_none_junk = junk.filter(lambda v: v is not None)


def _not_positive_int(v):
    return not (isinstance(v, int) and not isinstance(v, bool) and v > 0)


def _not_positive_number(v):
    import math

    return not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0)


def _not_bool(v):
    return not isinstance(v, bool)


def _bad_choice(aliases):
    def check(v):
        if not isinstance(v, str):
            return True
        return v.strip().lower().replace("-", "").replace("_", "").replace(" ", "") not in aliases

    return check


positive_int_paths = [
    "search.max_trials", f"{KTP}.train_steps[0]", f"{RDP}.train_steps[0]", "flash_distillation.batch_size",
    "evaluation.batch_size", "evaluation.latency_batch_size", "evaluation.latency_repeats",
]
positive_number_paths = [
    f"{KTP}.temperature[1]", f"{RDP}.temperature[0]", "flash_distillation.learning_rate",
    "study.heartbeat_interval", "study.grace_period",
]
bool_paths = [f"{KTP}.add_origin_loss[0]", f"{RDP}.add_origin_loss[0]", "search.higher_is_better[1]"]
choice_paths = [
    ("search.search_algorithm", ALGORITHM_ALIASES),
    (f"{KTP}.loss_types[1][0]", LOSS_ALIASES),
    (f"{RDP}.loss_types[0][0]", LOSS_ALIASES),
    ("flash_distillation.optimizer", {o: o for o in OPTIMIZERS}),
]
section_keys = {
    "search": SEARCH_KEYS, "flash_distillation": config_module._FLASH_KEYS,
    "evaluation": keys_of(EvaluationSettings), "study": keys_of(StudySettings),
    KTP: STAGE_KEYS, RDP: STAGE_KEYS,
}
list_paths = [f"{KTP}.{k}" for k in ("train_steps", "loss_types", "loss_weights", "add_origin_loss", "temperature",
                                     "layer_mappings_for_knowledge_transfer")]


@st.composite
def bad_configs(draw):
    kind = draw(st.sampled_from(["int", "number", "bool", "choice", "unknown", "length", "space", "structure"]))
    if kind == "int":
        path = draw(st.sampled_from(positive_int_paths))
        return with_value(path, draw(not_none_junk.filter(_not_positive_int)))
    if kind == "number":
        path = draw(st.sampled_from(positive_number_paths))
        return with_value(path, draw(not_none_junk.filter(_not_positive_number)))
    if kind == "bool":
        path = draw(st.sampled_from(bool_paths))
        return with_value(path, draw(not_none_junk.filter(_not_bool)))
    if kind == "choice":
        path, aliases = draw(st.sampled_from(choice_paths))
        value = draw(st.one_of(st.text(max_size=8), not_none_junk).filter(_bad_choice(aliases)))
        return with_value(path, value)
    if kind == "unknown":
        section = draw(st.sampled_from(sorted(section_keys)))
        key = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in section_keys[section]))
        return with_value(f"{section}.{key}" if "." not in key and "[" not in key else section,
                          {**_get(section), key: 1} if ("." in key or "[" in key) else draw(junk))
    if kind == "length":
        path = draw(st.sampled_from(list_paths))
        current = _get(path)
        extra = draw(st.sampled_from(["drop", "add"]))
        return with_value(path, current[:-1] if extra == "drop" else current + [current[-1]])
    if kind == "space":
        value = draw(st.one_of(
            st.just({}), not_none_junk.filter(lambda v: not isinstance(v, dict) or not v),
            st.dictionaries(st.text(min_size=1, max_size=4), st.one_of(st.just([]), st.integers(), st.text(max_size=3),
                            st.lists(st.lists(st.integers(), max_size=2), min_size=1, max_size=2)),
                            min_size=1, max_size=3),
            st.dictionaries(st.integers(), st.just([1]), min_size=1, max_size=2),
        ))
        return with_value("search.search_space", value)
    # "structure": a section replaced by junk that is not a mapping (None is allowed: it means defaults)
    section = draw(st.sampled_from(["search", "flash_distillation", "evaluation", "study", KTP, RDP]))
    return with_value(section, draw(not_none_junk.filter(lambda v: not isinstance(v, dict) or section == "search")))


def _get(path):
    data = BASE
    for part in path.split("."):
        data = data[part]
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(bad_configs(), st.booleans())
def test_fuzz_bad_configs_always_raise_config_error_with_a_field_path(data, wrapped):
    payload = seed_layout(data) if wrapped else data
    with pytest.raises(ConfigError) as info:
        AutoDistillationConfig(payload)
    err = info.value
    assert err.field, str(err)
    assert err.field.split(".")[0].split("[")[0] in SECTIONS or err.field in SECTIONS, str(err)
    assert str(err).startswith(err.field + ": ")


json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=5), children, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(list(config_module._INNER_KEYS) + ["auto_distillation", "x"]), json_like,
                       max_size=4))
def test_fuzz_arbitrary_data_never_raises_anything_but_config_error(data):
    try:
        AutoDistillationConfig(data)
    except ConfigError as err:
        assert err.field


stage_junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(), st.text(max_size=4),
              st.sampled_from(["KL", "s.a", "1"])),
    lambda children: st.one_of(st.lists(children, max_size=3), st.tuples(children, children)),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.builds(DistillStage, name=stage_junk,
                          kind=st.one_of(st.sampled_from(["knowledge_transfer", "regular_distillation"]), stage_junk),
                          block_names=stage_junk, mappings=stage_junk, loss_types=stage_junk,
                          loss_weights=stage_junk, add_origin_loss=stage_junk, train_steps=stage_junk,
                          temperature=stage_junk), min_size=1, max_size=3))
def test_fuzz_flash_stage_objects(stages):
    """Hand-built DistillStage objects are validated like the seed lists, or round-trip when valid."""
    try:
        cfg = AutoDistillationConfig(search_space=SPACE, flash=FlashSettings(stages=stages))
    except ConfigError as err:
        assert err.field.startswith("flash_distillation"), str(err)
        return
    assert AutoDistillationConfig(cfg.to_dict()) == cfg


def test_cli_run_reports_a_config_it_cannot_read_in_one_line(tmp_path, capsys, monkeypatch):
    """A directory, a missing file and a non-UTF-8 file: one ``config error: <path>: ...`` line, exit 2."""
    from nas_distill import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "latin1.yaml").write_bytes("search: {search_space: {caf\xe9: [1]}}\n".encode("latin-1"))
    cases = {"folder": "expected a YAML file, got a directory", "missing.yaml": "config file not found",
             "latin1.yaml": "the config file is not UTF-8 text"}
    for name, words in cases.items():
        assert cli.main(["run", name]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.splitlines() == [captured.err.strip()]
        assert captured.err.startswith(f"nas-distill: config error: {name}: {words}"), captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "latin1.yaml"]  # nothing written


# ----------------------------------------------------------------------------------- schema and docs
def test_the_shipped_json_schema_is_the_generated_one(capsys):
    from nas_distill import cli
    from nas_distill.settings import SCHEMA_FILE, schema_text

    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), \
        "regenerate: nas-distill schema -o nas_distill/config.schema.json"
    assert cli.main(["schema"]) == 0
    assert capsys.readouterr().out == schema_text()


def test_the_json_schema_accepts_every_example_and_marks_what_the_loader_refuses(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from nas_distill.settings import config_json_schema
    from nas_distill.yamlio import read_config_file

    schema = config_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    examples = sorted((REPO_ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 5
    for path in examples:
        assert list(validator.iter_errors(read_config_file(path))) == [], path
    good = seed_layout(BASE)
    assert list(validator.iter_errors(good)) == []
    AutoDistillationConfig(good)
    for where, value in [(("evaluation", "batch_sze"), 3), (("evaluation", "batch_size"), 0),
                         (("flash_distillation", "augmentation"), "yes"), (("study", "heartbeat_interval"), 0.5),
                         (("flash_distillation", "teacher_cache", "enabled"), "sometimes"),
                         (("search", "max_trials"), 2.5), (("search", "seed"), -1)]:
        bad = copy.deepcopy(good)
        section = bad["auto_distillation"]
        for key in where[:-1]:
            section = section[key]
        section[where[-1]] = value
        errors = list(validator.iter_errors(bad))
        assert errors, (where, value)
        with pytest.raises(ConfigError) as info:  # the loader refuses it too, naming the same key
            AutoDistillationConfig(bad)
        assert info.value.field.startswith(".".join(where)), str(info.value)


def test_the_readme_config_reference_is_generated_from_the_settings():
    from nas_distill.settings import EvaluationSettings, StudySettings, keys_of, reference_table

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- config-reference:")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- end config-reference -->")
    table = reference_table()
    assert readme[start:end] == table, "README.md's config reference differs from settings.reference_table()"
    for section, cls in (("evaluation", EvaluationSettings), ("study", StudySettings)):
        for key in keys_of(cls):  # every declared key has its row
            assert f"| `{section}.{key}` |" in table
