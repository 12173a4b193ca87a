"""``model = train_func(model)``: the model train_func returns is the one evaluated, saved and counted;
``None`` keeps the model trained in place (the seed's loop)."""

from __future__ import annotations

import tarfile

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file

from _support.seed_compat import N_CLASSES, N_IN, Data, Net
from nas_distill import AutoDistillation
from nas_distill.study import artifact_store


def oracle() -> Net:
    """A different, bigger model that gets every label right: what a train_func may hand back."""
    net = Net(hidden=N_IN)
    with torch.no_grad():
        net.body[0].weight.copy_(torch.eye(N_IN))
        net.body[0].bias.zero_()
        net.body[1].weight.copy_(torch.eye(N_CLASSES, N_IN))
        net.body[1].bias.zero_()
    return net


def accuracy_of(model, data) -> float:
    with torch.no_grad():
        return float((model(data.x).argmax(-1) == data.y).float().mean())


def conf(run_dir, max_trials=2):
    return {"search": {"search_space": {"width": [1, 2]}, "search_algorithm": "grid", "max_trials": max_trials,
                       "metrics": ["accuracy", "params"]},
            "study": {"run_dir": str(run_dir)}}


def builder(arch):
    torch.manual_seed(arch["width"])
    with torch.no_grad():
        net = Net()
        net.body.weight.mul_(0.0)  # every logit equal: argmax is class 0 everywhere
        net.body.bias.zero_()
    return net


def test_returned_model_is_evaluated_saved_and_counted(tmp_path):
    data = Data()
    returned = []

    def train_func(model):
        new = oracle()
        returned.append(new)
        return new

    agent = AutoDistillation(builder, conf(tmp_path / "run"))
    agent.train_func = train_func
    agent.eval_dataset = data
    agent.search()

    complete = agent.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2 and len(returned) == 2
    untrained = accuracy_of(builder({"width": 1}), data)
    assert untrained == pytest.approx(float((data.y == 0).float().mean()))  # argmax 0 everywhere
    for trial in complete:
        # evaluated: the returned model's accuracy (1.0), not the built one's
        assert trial.values[0] == pytest.approx(accuracy_of(returned[0], data)) == 1.0
        assert trial.values[0] != pytest.approx(untrained)
        # counted: the returned model's parameters
        assert trial.values[1] == trial.user_attrs["n_params"] == sum(p.numel() for p in oracle().parameters())
        # saved: the returned model's weights
        archive = tmp_path / f"t{trial.number}.tar"
        optuna.artifacts.download_artifact(artifact_store=artifact_store(tmp_path / "run"), file_path=str(archive),
                                           artifact_id=trial.user_attrs["artifact_id"])
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path / f"t{trial.number}", filter="data")
        saved = load_file(str(tmp_path / f"t{trial.number}" / "model.safetensors"))
        assert set(saved) == set(oracle().state_dict())
        for key, value in oracle().state_dict().items():
            assert np.array_equal(saved[key].numpy(), value.numpy())


def test_none_keeps_the_model_trained_in_place_and_estimate_uses_the_returned_one(tmp_path):
    data = Data()

    def train_in_place(model):
        with torch.no_grad():
            model.body.weight.copy_(torch.eye(N_CLASSES, N_IN))

    agent = AutoDistillation(builder, conf(tmp_path / "run", max_trials=1))
    agent.train_func = train_in_place
    agent.eval_dataset = data
    agent.search()
    [trial] = agent.study.get_trials(states=(TrialState.COMPLETE,))
    expected = builder({"width": 1})
    train_in_place(expected)
    assert trial.values[0] == pytest.approx(accuracy_of(expected, data)) == 1.0

    # estimate(): train, then evaluate what train_func returned
    agent.train_func = lambda model: oracle()
    metrics = agent.estimate(builder({"width": 2}))
    assert metrics == {"accuracy": 1.0, "params": sum(p.numel() for p in oracle().parameters())}
