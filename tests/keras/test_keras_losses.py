"""Keras losses against hand-computed values, the same definitions as the torch engine, and the loss
of one real engine step (weights, temperature, task loss) against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from _support.keras_models import digits, flash, mlp, stage
from nas_distill.distill.keras import KerasFlashDistiller
from nas_distill.distill.keras.losses import distillation_loss, task_loss
from nas_distill.distill.losses_common import canonical_loss_type

LN3, LN2 = math.log(3.0), math.log(2.0)
# Teacher probabilities (0.75, 0.25) vs student (0.5, 0.5):
KL_T1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812...


def loss(kind, s, t, temperature=1.0):
    return float(distillation_loss(kind, tf.constant(s, tf.float32), tf.constant(t, tf.float32), temperature))


def test_kl_and_ce_by_hand_at_t1_and_t2():
    s = [[0.0, 0.0]]
    assert loss("KL", s, [[LN3, 0.0]]) == pytest.approx(KL_T1, rel=1e-6)
    assert loss("CE", s, [[LN3, 0.0]]) == pytest.approx(LN2, rel=1e-6)  # -(0.75 + 0.25) * ln 0.5
    # T = 2: same probabilities from logits twice as large, and the T**2 factor
    assert loss("KL", s, [[2 * LN3, 0.0]], 2.0) == pytest.approx(4 * KL_T1, rel=1e-6)
    assert loss("CE", s, [[2 * LN3, 0.0]], 2.0) == pytest.approx(4 * LN2, rel=1e-6)
    assert loss("kl", s, s, 3.0) == pytest.approx(0.0, abs=1e-7)  # aliases accepted


def test_soft_losses_average_over_every_position():
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    T = 1.5

    def log_softmax(a):
        a = a / T
        return a - np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)) - a.max(-1, keepdims=True)

    lp_t, lp_s = log_softmax(t), log_softmax(s)
    kl = (np.exp(lp_t) * (lp_t - lp_s)).sum(-1).mean() * T**2
    ce = -(np.exp(lp_t) * lp_s).sum(-1).mean() * T**2
    assert loss("KL", s, t, T) == pytest.approx(kl, rel=1e-5)
    assert loss("CE", s, t, T) == pytest.approx(ce, rel=1e-5)


def test_mse_l1_cosine_ignore_temperature():
    s, t = [[1.0, 2.0], [0.0, -1.0]], [[0.0, 0.0], [1.0, 1.0]]
    assert loss("MSE", s, t, 3.0) == pytest.approx((1 + 4 + 1 + 4) / 4)
    assert loss("L1", s, t, 3.0) == pytest.approx((1 + 2 + 1 + 2) / 4)
    # cos([1, 0], [1, 1]) = 1/sqrt(2); cos([0, 1], [0, 1]) = 1
    assert loss("cosine", [[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 2.0]], 3.0) == pytest.approx(
        ((1 - 2**-0.5) + 0.0) / 2, rel=1e-6)


def test_task_loss_classification_with_ignored_labels_and_regression():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]], np.float32)
    labels = np.array([0, 2, -100])  # the last one is ignored, as torch's ignore_index
    expected = np.mean([-math.log(math.exp(2) / (math.exp(2) + 2)), -math.log(1 / (math.e + 2))])
    assert float(task_loss(tf.constant(logits), tf.constant(labels))) == pytest.approx(expected, rel=1e-6)
    assert float(task_loss(tf.constant([[1.0], [3.0]]), tf.constant([0.0, 1.0]))) == pytest.approx(2.5)


def test_shape_mismatch_and_unknown_type_are_errors():
    with pytest.raises(ValueError, match="student output of shape"):
        loss("MSE", [[1.0, 2.0]], [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="known: MSE, KL"):
        canonical_loss_type("hinge")


def test_same_values_as_the_torch_engine():
    torch = pytest.importorskip("torch")
    from nas_distill.distill.torch import losses as torch_losses

    rng = np.random.default_rng(1)
    s, t = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((4, 6)).astype(np.float32)
    for kind in ("KL", "CE", "MSE", "L1", "CosineSimilarity"):
        ours = loss(kind, s, t, 2.5)
        theirs = float(torch_losses.distillation_loss(kind, torch.from_numpy(s), torch.from_numpy(t), 2.5))
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6), kind
    assert torch_losses.canonical_loss_type is canonical_loss_type  # one vocabulary, re-exported


def test_one_engine_step_weighs_the_terms_as_configured():
    """First-step loss of a real stage (whole data in one batch: the order does not matter for a mean)
    == 0.3 * KL_T + 0.7 * CE_T + task CE, computed in numpy from the models' outputs."""
    x, y = digits(64)
    teacher, student = mlp((24,), name="t", seed=1, prefix="t"), mlp((8,), name="s", seed=2)
    T = 2.0
    t_logits = np.asarray(teacher(x, training=False), np.float64) / T
    s_raw = np.asarray(student(x, training=False), np.float64)
    s_logits = s_raw / T

    def log_softmax(a):
        m = a.max(-1, keepdims=True)
        return a - m - np.log(np.exp(a - m).sum(-1, keepdims=True))

    lp_t, lp_s = log_softmax(t_logits), log_softmax(s_logits)
    kl = (np.exp(lp_t) * (lp_t - lp_s)).sum(-1).mean() * T**2
    ce = -(np.exp(lp_t) * lp_s).sum(-1).mean() * T**2
    task = -log_softmax(s_raw)[np.arange(64), y].mean()
    st = stage(loss_types=["KL", "CE"], loss_weights=[0.3, 0.7], add_origin_loss=True, train_steps=1,
               temperature=T)
    res = KerasFlashDistiller(teacher, (x, y), flash([st], cache=False, batch_size=64)).distill(student)
    assert res.final_loss == pytest.approx(0.3 * kl + 0.7 * ce + task, rel=1e-5)


def test_numpy_inputs_when_tf_functions_run_eagerly(monkeypatch):
    """Under ``tf.config.run_functions_eagerly(True)`` the step receives the numpy rows themselves."""
    from nas_distill.distill.keras import distiller as distiller_mod

    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    expected_ce = np.mean([-math.log(math.exp(2) / (math.exp(2) + 2)), -math.log(1 / (math.e + 2))])
    x, y = digits(64)
    st = stage(loss_types=["KL"], add_origin_loss=True, train_steps=2, temperature=2.0)

    def final_loss():
        teacher, student = mlp((24,), name="t", seed=1, prefix="t"), mlp((8,), name="s", seed=2)
        return KerasFlashDistiller(teacher, (x, y), flash([st], batch_size=32)).distill(student).final_loss

    graph_loss = final_loss()
    monkeypatch.setattr(distiller_mod, "RESIDENT_MAX_BYTES", 0)  # the numpy-rows step
    tf.config.run_functions_eagerly(True)
    try:
        assert float(task_loss(logits, np.array([0, 2]))) == pytest.approx(expected_ce, rel=1e-6)
        assert float(task_loss(np.array([[1.0], [3.0]], np.float32), np.array([0.0, 1.0]))) == pytest.approx(2.5)
        assert float(distillation_loss("MSE", np.ones((2, 3), np.float32), np.zeros((2, 3), np.float16))) == 1.0
        eager_loss = final_loss()  # cached teacher logits and labels reach the losses as numpy arrays
    finally:
        tf.config.run_functions_eagerly(False)
    assert eager_loss == pytest.approx(graph_loss, rel=1e-5)
