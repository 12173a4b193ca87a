"""evaluate() for Keras models: accuracy by hand, params / size, latency with warm-up and repeats
honoured, metric names checked like the torch evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _support.keras_models import mlp
from nas_distill.config import EvaluationSettings
from nas_distill.distill.keras.evaluate import evaluate
from nas_distill.errors import ConfigError


def test_accuracy_params_and_size_by_hand(eval_data):
    x, y = eval_data
    model = mlp((16,), seed=4)
    logits = np.asarray(model(x, training=False))
    expected = float((logits.argmax(-1) == y).mean())
    out = evaluate(model, (x, y), ["accuracy", "params", "eval_model_size_mb"],
                   settings=EvaluationSettings(batch_size=7, device="cpu"))  # batches that do not divide n
    assert out["accuracy"] == expected
    assert out["params"] == model.count_params() == 64 * 16 + 16 + 16 * 10 + 10
    assert out["eval_model_size_mb"] == model.count_params() * 4 / 2**20  # float32, nothing else


def test_user_metric_fn_gets_predictions_and_labels(eval_data):
    model = mlp((16,), seed=4)
    seen = {}

    def metric_fn(preds, labels):
        seen["preds"], seen["labels"] = preds, labels
        return 0.25

    assert evaluate(model, eval_data, ["accuracy"], metric_fn=metric_fn) == {"accuracy": 0.25}
    assert seen["preds"].shape == (200,) and np.array_equal(seen["labels"], eval_data[1])
    regression = mlp((4,), n_out=1, seed=4)
    out = evaluate(regression, eval_data, ["accuracy"], metric_fn=lambda p, t: float(p.shape[0]))
    assert out["accuracy"] == 200.0  # single output: squeezed values, one per example


def test_latency_honours_warmup_repeats_and_batch_size(eval_data):
    model = mlp((16,), seed=4, count_calls=True)
    settings = EvaluationSettings(latency_batch_size=3, latency_warmup=2, latency_repeats=5, device="cpu")
    ms = evaluate(model, eval_data, ["latency"], settings=settings)["latency"]
    assert ms > 0 and math.isfinite(ms)
    assert model.get_layer("calls").calls == 2 + 5  # warm-up runs + timed repeats, nothing else
    big = EvaluationSettings(latency_batch_size=512, latency_warmup=1, latency_repeats=3, device="cpu")
    assert evaluate(model, eval_data, ["latency"], settings=big)["latency"] > 0  # more rows than the data


def test_metric_names_and_data_are_checked_first(eval_data):
    model = mlp((16,), seed=4, count_calls=True)
    with pytest.raises(ValueError, match="unknown metric 'acc'.*accuracy, latency, params, model_size_mb"):
        evaluate(model, eval_data, ["params", "acc"])
    with pytest.raises(ConfigError, match="eval_data.y: 3 labels for 200 examples"):
        evaluate(model, (eval_data[0], eval_data[1][:3]), ["accuracy"])
    with pytest.raises(ValueError, match="accuracy needs labels"):
        evaluate(model, (eval_data[0], None), ["accuracy"])
    assert model.get_layer("calls").calls == 0
