"""The metrics old configs ask for: ``eval_loss`` / ``eval_accuracy`` from the built-in evaluator, any other
``eval_*`` from a Trainer-style ``compute_metrics(EvalPrediction)``, and a metric nothing can produce
refused by the dry run before any training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from sklearn.metrics import f1_score

from _support.seed_compat import VOCAB, Data, MaskedLMData, Net
from nas_distill import AutoDistillation, ConfigError
from nas_distill.config import EvaluationSettings
from nas_distill.distill.torch.evaluate import evaluate

SPACE = {"width": [1, 2, 3]}


def builder(arch):
    torch.manual_seed(arch["width"])
    return Net()


def conf(run_dir, metrics, max_trials=3):
    return {"search": {"search_space": SPACE, "search_algorithm": "grid", "max_trials": max_trials,
                       "metrics": metrics},
            "evaluation": {"batch_size": 7},
            "study": {"run_dir": str(run_dir)}}


def test_eval_loss_and_accuracy_whatever_the_batch_size():
    data = Data(n=23)
    model = builder({"width": 2})
    with torch.no_grad():
        logits = model(data.x)
    expected_loss = float(F.cross_entropy(logits, data.y))
    expected_acc = float((logits.argmax(-1) == data.y).float().mean())
    for batch in (1, 5, 23, 64):
        got = evaluate(model, data, ["eval_loss", "eval_accuracy", "loss"], EvaluationSettings(batch_size=batch))
        assert got["eval_loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert got["loss"] == got["eval_loss"]
        assert got["eval_accuracy"] == pytest.approx(expected_acc)


class TokenTagger(torch.nn.Module):
    """Per-token logits over the vocabulary, like a masked-LM head (plain torch: no model download)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, VOCAB)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, next_sentence_label=None):
        return self.head(self.embed(input_ids))


def test_eval_loss_of_token_labels_counts_every_labelled_position():
    """Masked-LM labels (-100 = ignored): the mean over labelled positions of the whole set, not a mean of
    per-batch means (batches hold different numbers of labelled positions)."""
    model = TokenTagger()
    data = MaskedLMData(9, seed=3)
    data.labels[0, :] = data.ids[0, :]  # example 0: every position labelled, the others two
    with torch.no_grad():
        logits = model(data.ids)
    expected = float(F.cross_entropy(logits.reshape(-1, VOCAB), data.labels.reshape(-1), ignore_index=-100))
    per_batch_means = np.mean([float(F.cross_entropy(logits[i:i + 2].reshape(-1, VOCAB),
                                                     data.labels[i:i + 2].reshape(-1), ignore_index=-100))
                               for i in range(0, 9, 2)])
    assert abs(per_batch_means - expected) > 1e-3  # the data tells the two apart
    for batch in (2, 4, 9):
        got = evaluate(model, data, ["eval_loss"], EvaluationSettings(batch_size=batch))["eval_loss"]
        assert got == pytest.approx(expected, rel=1e-5)


def test_compute_metrics_gives_other_eval_metrics_in_a_search(tmp_path):
    data = Data(n=40)
    seen = []

    def compute_metrics(prediction):
        seen.append(prediction.predictions.shape)
        preds = np.argmax(prediction.predictions, axis=-1)
        return {"f1": f1_score(prediction.label_ids, preds, average="macro"), "accuracy": 0.123}

    agent = AutoDistillation(builder, conf(tmp_path / "run", ["eval_f1", "eval_loss", "eval_accuracy"]))
    agent.train_func = lambda model: None
    agent.eval_dataset = data
    agent.compute_metrics = compute_metrics
    agent.search()
    complete = agent.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    for trial in complete:
        model = builder(trial.params)
        with torch.no_grad():
            logits = model(data.x)
        f1 = f1_score(data.y.numpy(), logits.argmax(-1).numpy(), average="macro")
        assert trial.values[0] == pytest.approx(f1)
        assert trial.values[1] == pytest.approx(float(F.cross_entropy(logits, data.y)), rel=1e-5)
        assert trial.values[2] == 0.123  # compute_metrics' own value wins, as in the Trainer
    # the whole set's logits, as the Trainer hands them over (the dry run asks once on one batch first,
    # then evaluates its few students on one evaluation batch)
    assert seen[0] == (7, 3) and seen[-3:] == [(40, 3)] * 3


@pytest.mark.parametrize("compute", [None, lambda p: {"f1": 1.0}])
def test_a_metric_nothing_produces_is_refused_before_any_training(tmp_path, compute):
    trained = []
    agent = AutoDistillation(builder, conf(tmp_path / "run", ["eval_loss", "eval_bleu"]))
    agent.train_func = trained.append
    agent.eval_dataset = Data()
    agent.compute_metrics = compute
    with pytest.raises(ConfigError, match=r"search\.metrics\[1\]: .*'eval_bleu'") as info:
        agent.search()
    assert ("compute_metrics returned ['f1']" in str(info.value)) == (compute is not None)
    assert trained == [] and not (tmp_path / "run").exists()  # no training, no study file


def test_eval_func_may_produce_any_metric(tmp_path):
    agent = AutoDistillation(builder, conf(tmp_path / "run", ["eval_bleu"], max_trials=2))
    agent.train_func = lambda model: None
    agent.eval_func = lambda model: {"eval_bleu": float(model.body.bias.detach().sum())}
    agent.search()
    complete = agent.study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.values[0] for t in complete] == pytest.approx(
        [float(builder(t.params).body.bias.detach().sum()) for t in complete])
