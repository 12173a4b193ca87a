"""A search whose every trial failed raises; the old API's names and defaults."""

from __future__ import annotations

import json

import pytest
import yaml
from optuna.trial import TrialState

from _support.seed_compat import old_test_config
from nas_distill import AutoDistillation, AutoDistillationConfig, FlashDistillationConfig, Metric, SearchFailed

SPACE = {"a": [1, 2, 3], "b": ["x", "y"]}


def conf(run_dir, **search):
    return {"search": {"search_space": SPACE, "search_algorithm": "grid", "metrics": ["acc"], **search},
            "study": {"run_dir": str(run_dir)}}


# ------------------------------------------------------------------------------- item 3: SearchFailed
def test_every_trial_failing_raises_naming_the_first_failure(tmp_path):
    config = conf(tmp_path / "run", max_trials=4)
    config["study"]["stop_after_failures"] = 0  # every arch tried: the circuit breaker is tests/test_breaker.py's
    agent = AutoDistillation(lambda arch: dict(arch), config)
    agent.train_func = lambda model: None

    def eval_func(model):
        raise RuntimeError(f"boom on a={model['a']}")

    agent.eval_func = eval_func
    with pytest.raises(SearchFailed) as info:
        agent.search()
    failed = sorted(agent.study.get_trials(states=(TrialState.FAIL,)), key=lambda t: t.number)
    assert len(failed) == len(SPACE["a"]) * len(SPACE["b"])  # every arch tried once, none completed
    first = failed[0]
    assert info.value.failed == len(failed) and info.value.first_error_type == "RuntimeError"
    assert info.value.first_error == f"boom on a={first.params['a']}"
    assert f"all {len(failed)} trial(s)" in str(info.value)
    assert f"RuntimeError: boom on a={first.params['a']}" in str(info.value)


def test_a_search_with_some_completed_trials_returns_them(tmp_path):
    agent = AutoDistillation(lambda arch: dict(arch), conf(tmp_path / "run", max_trials=6))
    agent.train_func = lambda model: None

    def eval_func(model):
        if model["b"] == "x":
            raise RuntimeError("no x")
        return {"acc": float(model["a"])}

    agent.eval_func = eval_func
    assert agent.search() == [{"a": 3, "b": "y"}]


# --------------------------------------------------------------------------------- item 7: old names
def test_metric_takes_every_old_field_positionally():
    metric = Metric("eval_loss", False, False, 0.05, 0.3)  # name, greater_is_better, is_relative, criterion,
    assert (metric.name, metric.greater_is_better, metric.is_relative, metric.criterion, metric.weight_ratio) == (
        "eval_loss", False, False, 0.05, 0.3)
    assert (Metric("f1").is_relative, Metric("f1").criterion, Metric("f1").weight_ratio) == (True, 0.01, None)
    cfg = AutoDistillationConfig(search_space=SPACE, metrics=[metric, {"name": "latency", "is_relative": True,
                                                                       "criterion": 0.1, "weight_ratio": 0.5}])
    assert cfg.metrics == ["eval_loss", "latency"] and cfg.higher_is_better == [False, False]


def test_config_attribute_access_and_old_defaults():
    cfg = old_test_config("BO", 3)
    assert cfg.config.auto_distillation.search.search_space == SPACE_OLD
    assert cfg.config.auto_distillation.search.max_trials == 3
    kt = cfg.config.auto_distillation.flash_distillation.knowledge_transfer
    assert kt.block_names == ["bert.encoder.layer.0"] and kt.train_steps == [3]
    assert cfg.config["auto_distillation"]["search"]["metrics"] == ["eval_loss"]
    with pytest.raises(AttributeError, match="no config key 'nope'"):
        _ = cfg.config.auto_distillation.nope
    # the old defaults: 500 train steps per stage, 3 trials, BO
    bare = AutoDistillationConfig(search_space=SPACE, knowledge_transfer=FlashDistillationConfig(
        layer_mappings_for_knowledge_transfer=[[("s.0", "t.0")], [("s.1", "t.1")]]))
    assert [s.train_steps for s in bare.flash.stages] == [500, 500]
    assert (bare.max_trials, bare.search_algorithm) == (3, "bo")
    # where the old system had no config field: the optimizer, and regular distillation without mappings
    assert (bare.flash.optimizer, bare.flash.learning_rate) == ("adamw", 1e-3)
    logits = AutoDistillationConfig(search_space=SPACE, regular_distillation=FlashDistillationConfig(
        train_steps=[5])).flash.stages[0]
    assert (logits.mappings, logits.loss_types, logits.block_names) == ((), ("KL",), ())


SPACE_OLD = {"hidden_size": [16, 32], "intermediate_size": [32, 64]}


def test_empty_block_names_train_every_parameter():
    for block_names in ("", [""], None):
        cfg = AutoDistillationConfig(search_space=SPACE, knowledge_transfer={
            "block_names": block_names, "layer_mappings_for_knowledge_transfer": [[("s.0", "t.0")]]})
        assert [s.block_names for s in cfg.flash.stages] == [()]  # no block: every parameter trains
    cfg = AutoDistillationConfig(search_space=SPACE, knowledge_transfer={
        "block_names": ["s.0", ""], "layer_mappings_for_knowledge_transfer": [[("s.0", "t.0")], [("s.1", "t.1")]]})
    assert [s.block_names for s in cfg.flash.stages] == [("s.0",), ()]
    assert AutoDistillationConfig(cfg.to_dict()) == cfg  # round trip keeps '' as "all parameters"


def test_agent_has_the_old_attributes(tmp_path):
    import torch

    cfg = old_test_config("Grid", 2, study={"run_dir": str(tmp_path / "run")})
    agent = AutoDistillation(lambda arch: torch.nn.Linear(arch["hidden_size"], arch["intermediate_size"]), cfg)
    assert agent.search_space_keys == ["hidden_size", "intermediate_size"]
    assert agent.flash_block_names == ["bert.encoder.layer.0"] and agent.flash_train_steps == [3]
    assert agent.regular_block_names == [""] and agent.regular_train_steps == [5]
    assert agent.flash_distillation_config.regular_distillation.add_origin_loss == [True]
    assert agent.count_model_parameters(torch.nn.Linear(16, 32)) == 16 * 32 + 32
    agent.train_func = lambda model: None
    agent.eval_func = lambda model: {"eval_loss": float(model.weight.shape[1])}
    agent.search()
    assert agent.model_paras_num == {(16, 32): 16 * 32 + 32, (16, 64): 16 * 64 + 64}


def test_seed_none_draws_a_fresh_seed_recorded_in_the_study(tmp_path):
    seeds = []
    for i in range(2):
        cfg = AutoDistillationConfig(search_space=SPACE, search_algorithm="random", metrics=["acc"], seed=None,
                                     max_trials=1, study={"run_dir": str(tmp_path / f"r{i}")})
        assert cfg.seed is None
        agent = AutoDistillation(lambda arch: dict(arch), cfg)
        agent.train_func = lambda model: None
        agent.eval_func = lambda model: {"acc": 1.0}
        agent.search()
        assert 0 <= agent.seed < 2**32
        assert agent.study.user_attrs["seed"] == agent.seed
        seeds.append(agent.seed)
    assert seeds[0] != seeds[1]
    # YAML null is a fresh seed too; a missing seed is the default 42, and round trips keep both
    assert AutoDistillationConfig(yaml.safe_load("search: {search_space: {a: [1]}, seed: null}")).seed is None
    default = AutoDistillationConfig(search_space=SPACE)
    assert default.seed == 42 and AutoDistillationConfig(json.loads(json.dumps(default.to_dict()))).seed == 42
    fresh = AutoDistillationConfig(search_space=SPACE, seed=None)
    assert AutoDistillationConfig(fresh.to_dict()).seed is None
    default.seed = None
    assert default.seed is None
