"""Evaluation metrics."""

import pytest
import torch

from _support.torch_models import ListDataset
from nas_distill.config import EvaluationSettings
from nas_distill.distill.torch.evaluate import METRICS, evaluate, latency


class FirstTokenClassifier(torch.nn.Module):
    """logits = one-hot(input_ids[:, 0] % 3): predictions are known in advance."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)  # 8 parameters
        self.register_buffer("scale", torch.ones(4))  # 4 buffer values

    def forward(self, input_ids, attention_mask=None):
        return torch.nn.functional.one_hot(input_ids[:, 0] % 3, 3).float()


def data():
    ids = [0, 1, 2, 4]  # predictions 0, 1, 2, 1
    labels = [0, 1, 2, 2]  # 3 of 4 right
    return ListDataset([{"input_ids": torch.tensor([i, 7]), "labels": torch.tensor(label)}
                        for i, label in zip(ids, labels)])


def test_accuracy_params_size():
    m = evaluate(FirstTokenClassifier(), data(), ["accuracy", "params", "model_size_mb"],
                 EvaluationSettings(batch_size=3, device="cpu"))
    assert m == {"accuracy": 0.75, "params": 8, "model_size_mb": pytest.approx((8 * 4 + 4 * 4) / 2**20)}


def test_user_metric_fn():
    seen = {}

    def fn(preds, labels):
        seen["p"], seen["l"] = preds.tolist(), labels.tolist()
        return 42.0

    m = evaluate(FirstTokenClassifier(), data(), ["accuracy"], EvaluationSettings(device="cpu"), metric_fn=fn)
    assert m == {"accuracy": 42.0} and seen == {"p": [0, 1, 2, 1], "l": [0, 1, 2, 2]}


def test_latency_restores_threads():
    before = torch.get_num_threads()
    s = EvaluationSettings(latency_batch_size=2, latency_warmup=1, latency_repeats=3, threads=1, device="cpu")
    ms = latency(FirstTokenClassifier(), data(), s)
    assert ms > 0 and torch.get_num_threads() == before


def test_unknown_metric_lists_known_ones():
    with pytest.raises(ValueError, match="unknown metric 'f1'; known metrics: " + ", ".join(METRICS)):
        evaluate(FirstTokenClassifier(), data(), ["accuracy", "f1"])


def test_eval_prefix_alias():
    m = evaluate(FirstTokenClassifier(), data(), ["eval_accuracy", "params"], EvaluationSettings(device="cpu"))
    assert m == {"eval_accuracy": 0.75, "params": 8}
