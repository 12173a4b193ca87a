"""Seed-API parity of AutoDistillation on the shared study: search, estimate, results files, resume.

Students are real code: pure-Python functions of the arch for the algorithm sweep, and tiny torch MLPs
trained for a few steps on scikit-learn's digits where a real model matters.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from optuna.trial import TrialState

from nas_distill import AutoDistillation, InvalidArchitecture

SPACE = {"a": [1, 2, 3, 4], "b": [1, 2, 3], "c": ["x", "y"]}


def seed_conf(run_dir, algorithm="Grid", max_trials=10, metrics=("acc", "latency", "size"),
              higher=(True, False, False), space=SPACE, study_name="seed"):
    return {
        "model": {"framework": "pytorch"},
        "auto_distillation": {
            "search": {
                "search_space": space,
                "search_algorithm": algorithm,
                "metrics": list(metrics),
                "higher_is_better": list(higher),
                "max_trials": max_trials,
                "seed": 7,
            },
            "study": {"run_dir": str(run_dir), "study_name": study_name},
        },
    }


def metrics_of(arch):
    """A deterministic trade-off: bigger is more accurate but slower and larger."""
    bonus = 0.5 if arch["c"] == "y" else 0.0
    return {
        "acc": arch["a"] * 2.0 + arch["b"] + bonus - 0.3 * (arch["a"] == 4) * arch["b"],
        "latency": arch["a"] * arch["b"] + (0.25 if arch["c"] == "y" else 0.0),
        "size": float(arch["a"] + 2 * arch["b"]),
    }


def brute_force_front(points, higher):
    """Indices of non-dominated points, by definition (O(n^2)); the test's own oracle."""
    signed = [[v if h else -v for v, h in zip(p, higher)] for p in points]
    front = []
    for i, p in enumerate(signed):
        dominated = any(all(q[k] >= p[k] for k in range(len(p))) and any(q[k] > p[k] for k in range(len(p)))
                        for j, q in enumerate(signed) if j != i)
        if not dominated:
            front.append(i)
    return front


@pytest.mark.parametrize("algorithm", ["Grid", "Random", "BO"])
def test_seed_script_returns_pareto_front_of_what_it_recorded(tmp_path, algorithm):
    calls = []

    def model_builder(arch):
        return dict(arch)

    def train_func(model):
        calls.append(("train", tuple(sorted(model.items()))))

    def eval_func(model):
        calls.append(("eval", tuple(sorted(model.items()))))
        return metrics_of(model)

    # --- a script written against the seed API, unchanged ---
    agent = AutoDistillation(model_builder, seed_conf(tmp_path / "run", algorithm, max_trials=10))
    agent.train_func = train_func
    agent.eval_func = eval_func
    best_model_archs = agent.search()
    # ---------------------------------------------------------

    complete = [t for t in agent.study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 10
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == 10
    # estimate = train then eval, once per trained arch
    trained = [c for c in calls if c[0] == "train"]
    assert len(trained) == 10 and calls[0][0] == "train" and calls[1][0] == "eval"
    # the study stores raw metric values in its own directions
    assert [d.name for d in agent.study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert agent.study.metric_names == ["acc", "latency", "size"]
    for t in complete:
        assert t.values == pytest.approx([metrics_of(t.params)[m] for m in ("acc", "latency", "size")])
    expected = brute_force_front([t.values for t in complete], [True, False, False])
    expected_archs = sorted(json.dumps(complete[i].params, sort_keys=True) for i in expected)
    assert sorted(json.dumps(a, sort_keys=True) for a in best_model_archs) == expected_archs
    assert all(isinstance(a, dict) and set(a) == set(SPACE) for a in best_model_archs)
    # and Optuna agrees
    assert sorted(json.dumps(t.params, sort_keys=True) for t in agent.study.best_trials) == expected_archs


def test_properties_and_helpers(tmp_path):
    agent = AutoDistillation(lambda arch: arch, seed_conf(tmp_path / "run"))
    assert agent.framework == "pytorch"
    assert agent.teacher_model is None and agent.student_model is None
    agent.teacher_model = "teacher"
    assert agent.teacher_model == "teacher"
    f = lambda model: None  # noqa: E731
    agent.train_func = f
    agent.eval_func = f
    assert agent.train_func is f and agent.eval_func is f
    assert agent.params_vec2params_dict([2, 3, "x"]) == {"a": 2, "b": 3, "c": "x"}
    assert agent.metrics_conversion({"acc": 1.0, "latency": 2.0, "size": 3.0}) == [1.0, -2.0, -3.0]
    assert agent.metrics_conversion([1.0, 2.0, 3.0]) == [1.0, -2.0, -3.0]
    with pytest.raises(ValueError, match="missing metric"):
        agent.metrics_conversion({"acc": 1.0})
    arch = agent.model_arch_proposition()
    assert set(arch) == set(SPACE) and arch in [dict(zip(sorted(SPACE), v)) for v in
                                                 __import__("itertools").product(*[SPACE[k] for k in sorted(SPACE)])]
    assert agent.advisor.current_trial.params == arch
    assert agent.train_dataset is None and agent.eval_dataset is None


def test_scalar_metric_and_list_metrics(tmp_path):
    conf = seed_conf(tmp_path / "run", max_trials=3, metrics=["acc"], higher=[True])
    agent = AutoDistillation(lambda arch: arch, conf)
    agent.train_func = lambda m: None
    agent.eval_func = lambda m: np.float32(m["a"] + m["b"])  # a bare number, numpy even
    best = agent.search()
    assert len(best) == 1
    values = [t.values[0] for t in agent.study.trials if t.state == TrialState.COMPLETE]
    assert best[0]["a"] + best[0]["b"] == max(values)

    agent2 = AutoDistillation(lambda arch: arch, seed_conf(tmp_path / "run2", max_trials=3))
    agent2.train_func = lambda m: None
    agent2.eval_func = lambda m: [1.0, float(m["a"]), 2.0]  # a list in metrics order
    agent2.search()
    assert len([t for t in agent2.study.trials if t.state == TrialState.COMPLETE]) == 3


def test_failures_are_recorded_and_the_search_goes_on(tmp_path):
    def builder(arch):
        if arch["a"] == 1 and arch["b"] == 1:
            raise InvalidArchitecture("a=1, b=1 cannot be built")
        return dict(arch)

    def eval_func(model):
        if model["a"] == 1 and model["b"] == 2:
            return {"acc": float("nan"), "latency": 1.0, "size": 1.0}
        if model["a"] == 1 and model["b"] == 3:
            raise RuntimeError("boom in user code")
        return metrics_of(model)

    conf = seed_conf(tmp_path / "run", "Grid", max_trials=6)
    # The grid hands out the failing archs first; this test is about going on, not the circuit breaker.
    conf["auto_distillation"]["study"]["stop_after_failures"] = 0
    agent = AutoDistillation(builder, conf)
    agent.train_func = lambda m: None
    agent.eval_func = eval_func
    agent.search()
    trials = agent.study.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    failed = {t.user_attrs["error_type"]: t for t in trials if t.state == TrialState.FAIL}
    assert {"InvalidArchitecture", "FloatingPointError", "RuntimeError"} <= set(failed)
    assert "cannot be built" in failed["InvalidArchitecture"].user_attrs["error"]
    assert "boom" in failed["RuntimeError"].user_attrs["error"]
    assert "nan" in failed["FloatingPointError"].user_attrs["error"].lower()
    # a failing arch is never trained twice: a repeat is answered from the store (PRUNED)
    failing = [t.params for t in failed.values()]
    for params in failing:
        assert sum(1 for t in trials if t.params == params and t.state == TrialState.FAIL) == 1


def test_resume_continues_the_same_study_without_retraining(tmp_path):
    trained = []

    def run(max_trials):
        agent = AutoDistillation(lambda arch: dict(arch), seed_conf(tmp_path / "run", "Random", max_trials))
        agent.train_func = lambda m: trained.append(tuple(sorted(m.items())))
        agent.eval_func = metrics_of
        return agent, agent.search()

    run(4)
    assert len(trained) == 4
    agent, best = run(7)  # the same command again, with a bigger budget: continues
    assert len(trained) == 7 and len(set(trained)) == 7
    assert len([t for t in agent.study.trials if t.state == TrialState.COMPLETE]) == 7
    agent, _ = run(7)  # nothing left to do: no trial is even asked
    assert len(trained) == 7
    assert len(agent.study.trials) == 7


def test_dump_and_load_search_results(tmp_path):
    agent = AutoDistillation(lambda arch: dict(arch), seed_conf(tmp_path / "a", "Grid", 5))
    agent.train_func = lambda m: None
    agent.eval_func = metrics_of
    best = agent.search(res_save_path=str(tmp_path / "res"))
    folder = tmp_path / "res" / "AutoDistillationResults"
    data = json.loads((folder / "lastest_results.json").read_text())
    assert "Best Search Results" in (folder / "Final_results.txt").read_text()
    assert data["metrics"] == ["acc", "latency", "size"] and len(data["trials"]) == 5
    assert sorted(json.dumps(t["arch"], sort_keys=True) for t in data["trials"] if t["pareto"]) == \
        sorted(json.dumps(a, sort_keys=True) for a in best)

    agent.dump_search_results(tmp_path / "copy" / "results.txt")
    assert (tmp_path / "copy" / "results.txt").exists()
    assert json.loads((tmp_path / "copy" / "lastest_results.json").read_text())["trials"] == data["trials"]

    trained = []
    other = AutoDistillation(lambda arch: dict(arch), seed_conf(tmp_path / "b", "Grid", 7))
    other.train_func = lambda m: trained.append(m)
    other.eval_func = metrics_of
    assert other.load_search_results(str(tmp_path / "copy")) == 5
    assert len(other.resumed_search_results) == 5
    assert other.load_search_results(str(tmp_path / "copy" / "lastest_results.json")) == 0  # already there
    other.search()
    # 7 new trainings; the 5 imported archs are answered from the store, never retrained
    imported = {json.dumps(t["arch"], sort_keys=True) for t in data["trials"]}
    assert len(trained) == 7
    assert not imported & {json.dumps(m, sort_keys=True) for m in trained}

    # a storage URL works as a source too
    third = AutoDistillation(lambda arch: dict(arch), seed_conf(tmp_path / "c", "Grid", 1))
    assert third.load_search_results(f"sqlite:///{tmp_path / 'a' / 'study.db'}#seed") == 5


class JsonModel:
    """A model with the transformers save/load protocol, in a few lines of real code."""

    def __init__(self, arch, trained=False):
        self.arch, self.trained = dict(arch), trained

    def save_pretrained(self, path):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"arch": self.arch, "trained": self.trained}, f)

    @classmethod
    def from_pretrained(cls, path):
        with open(os.path.join(path, "config.json")) as f:
            data = json.load(f)
        model = cls(data["arch"], data["trained"])
        model.rebuilt = True
        return model


def test_model_cls_rebuilds_students_with_from_pretrained(tmp_path):
    seen = []
    agent = AutoDistillation(JsonModel, seed_conf(tmp_path / "run", "Grid", 2))

    def train(model):
        seen.append(getattr(model, "rebuilt", False))
        model.trained = True

    agent.train_func = train
    agent.eval_func = lambda model: metrics_of(model.arch)
    agent.search(model_cls=JsonModel)
    assert seen == [True, True]
    # the trained student was saved in the artifact store and linked from its trial
    for t in agent.study.trials:
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["artifact_id"]


# ------------------------------------------------------------------------- real torch students
def _digits():
    from _support.pruning_task import digits

    train, test = digits()
    return train.x, train.y, test.x, test.y


class MLP:
    """Factory for a tiny torch MLP student: forward(x) -> logits."""

    @staticmethod
    def build(arch):
        import torch

        layers, width = [], 64
        for _ in range(arch["depth"]):
            layers += [torch.nn.Linear(width, arch["hidden"]), torch.nn.ReLU()]
            width = arch["hidden"]
        layers.append(torch.nn.Linear(width, 10))
        return torch.nn.Sequential(*layers)


@pytest.mark.slow
def test_torch_mlp_students_on_digits(tmp_path):
    import torch

    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te = _digits()

    def train_func(model):
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(30):
            idx = torch.randint(0, len(x_tr), (64,))
            loss = torch.nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def eval_func(model):
        with torch.no_grad():
            acc = float((model(x_te).argmax(-1) == y_te).float().mean())
        params = sum(p.numel() for p in model.parameters())
        return {"accuracy": acc, "params": float(params)}

    conf = seed_conf(tmp_path / "run", "BO", 5, metrics=["accuracy", "params"], higher=[True, False],
                     space={"hidden": [8, 16, 32], "depth": [1, 2]})
    agent = AutoDistillation(MLP.build, conf)
    agent.train_func, agent.eval_func = train_func, eval_func
    best = agent.search()
    complete = [t for t in agent.study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 5
    assert max(t.values[0] for t in complete) > 0.5  # it really learned something
    expected = brute_force_front([t.values for t in complete], [True, False])
    assert sorted(json.dumps(complete[i].params, sort_keys=True) for i in expected) == \
        sorted(json.dumps(a, sort_keys=True) for a in best)
    for t in complete:
        assert t.user_attrs["n_params"] == t.values[1]  # counted from the torch module
        assert t.user_attrs["artifact_id"]


@pytest.mark.slow
def test_builtin_flash_distiller_when_no_train_func(tmp_path):
    """teacher_model + train_dataset + eval_dataset, no train/eval func: the built-in engine runs."""
    import torch

    from _support.pruning_task import Net, digits, teacher

    torch.set_num_threads(1)
    train, test = digits()
    conf = seed_conf(tmp_path / "run", "Grid", 2, metrics=["accuracy", "params"], higher=[True, False],
                     space={"hidden": [8, 16]})
    conf["auto_distillation"]["flash_distillation"] = {"learning_rate": 0.01,
                                                       "regular_distillation": {"train_steps": 60}}
    agent = AutoDistillation(lambda arch: Net(arch["hidden"]), conf)
    agent.teacher_model = teacher(train)
    agent.train_dataset = train
    agent.eval_dataset = test
    agent.search()
    complete = [t for t in agent.study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2, [t.user_attrs.get("error") for t in agent.study.trials]
    assert all(t.values[0] > 0.3 for t in complete), [t.values for t in complete]


def test_missing_pieces_fail_the_trial_with_a_clear_reason(tmp_path):
    agent = AutoDistillation(lambda arch: dict(arch), seed_conf(tmp_path / "run", "Grid", 1,
                                                                 space={"a": [1]}))
    from nas_distill import ConfigError

    agent.eval_func = lambda m: {"acc": 1.0, "latency": 1.0, "size": 1.0}
    with pytest.raises(ConfigError, match="teacher_model"):  # a setup problem stops the search at once
        agent.search()  # no train_func, no teacher / datasets
    trial = agent.study.trials[0]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["error_type"] == "ConfigError" and "teacher_model" in trial.user_attrs["error"]
    # its arch waits for the fixed setup, and is trained then
    agent.train_func = lambda m: None
    agent.search()
    trials = agent.study.trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], [t.user_attrs for t in trials]
