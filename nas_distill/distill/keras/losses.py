"""Distillation losses for the Keras engine (TensorFlow ops): the same definitions as the torch engine.

Conventions (identical to ``nas_distill/distill/torch/losses.py``; worked numpy examples in
``tests/keras/test_keras_losses.py``):

* ``KL``: ``KL(softmax(t/T) || softmax(s/T)) * T**2`` over the last dimension, summed over classes,
  averaged over every other position (batch, and sequence for token features).
* ``CE``: soft cross-entropy ``-sum(softmax(t/T) * log_softmax(s/T)) * T**2``, same averaging.
* ``MSE`` / ``L1``: elementwise mean; the temperature does not apply.
* ``CosineSimilarity``: ``1 - cos(s, t)`` along the last dimension, averaged (cosine as in torch:
  ``s.t / max(|s| |t|, 1e-8)``).
* task loss: sparse cross-entropy on integer labels (label ``-100`` ignored, as in torch), MSE on float
  labels (regression).

Every loss returns a 0-d float32 tensor; inputs are cast to float32 first (float16 cache entries never
change the arithmetic of the loss itself).
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from nas_distill.distill.losses_common import LOSS_TYPES, canonical_loss_type  # noqa: F401


def _flat(x: tf.Tensor) -> tf.Tensor:
    # No reshape needed: summing over the last axis and then averaging over every remaining position is
    # the torch engine's "flatten to rows, then batchmean" (and a 1-D input is one row).
    return tf.cast(x, tf.float32)


def _soften(x: tf.Tensor, temperature: float) -> tf.Tensor:
    # T is a Python number: at T == 1 the graph gets no division at all (one op less per term and step)
    return x if temperature == 1.0 else x / temperature


def _rescale(loss: tf.Tensor, temperature: float) -> tf.Tensor:
    return loss if temperature == 1.0 else loss * (temperature ** 2)


def kl_loss(student: tf.Tensor, teacher: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
    s, t = _flat(student), _flat(teacher)
    log_p_s = tf.nn.log_softmax(_soften(s, temperature), axis=-1)
    log_p_t = tf.nn.log_softmax(_soften(t, temperature), axis=-1)
    per_row = tf.reduce_sum(tf.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return _rescale(tf.reduce_mean(per_row), temperature)


def soft_ce_loss(student: tf.Tensor, teacher: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
    s, t = _flat(student), _flat(teacher)
    p_t = tf.nn.softmax(_soften(t, temperature), axis=-1)
    per_row = -tf.reduce_sum(p_t * tf.nn.log_softmax(_soften(s, temperature), axis=-1), axis=-1)
    return _rescale(tf.reduce_mean(per_row), temperature)


def mse_loss(student: tf.Tensor, teacher: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
    return tf.reduce_mean(tf.square(tf.cast(student, tf.float32) - tf.cast(teacher, tf.float32)))


def l1_loss(student: tf.Tensor, teacher: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
    return tf.reduce_mean(tf.abs(tf.cast(student, tf.float32) - tf.cast(teacher, tf.float32)))


def cosine_loss(student: tf.Tensor, teacher: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
    s, t = tf.cast(student, tf.float32), tf.cast(teacher, tf.float32)
    dot = tf.reduce_sum(s * t, axis=-1)
    norms = tf.norm(s, axis=-1) * tf.norm(t, axis=-1)
    return tf.reduce_mean(1.0 - dot / tf.maximum(norms, 1e-8))


LOSS_FUNCTIONS: dict[str, Callable[[tf.Tensor, tf.Tensor, float], tf.Tensor]] = {
    "KL": kl_loss,
    "CE": soft_ce_loss,
    "MSE": mse_loss,
    "L1": l1_loss,
    "CosineSimilarity": cosine_loss,
}


def distillation_loss(kind: str, student: tf.Tensor, teacher: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
    """One student-vs-teacher loss of type ``kind`` (see the module docstring).

    Shapes are checked on what is known when the step is traced (a ``None`` batch size matches anything).
    """
    # numpy arrays arrive as they are when tf.function runs eagerly (tf.config.run_functions_eagerly)
    student, teacher = tf.convert_to_tensor(student), tf.convert_to_tensor(teacher)
    if not student.shape.is_compatible_with(teacher.shape):
        raise ValueError(
            f"{kind} loss: student output of shape {tuple(student.shape)} vs teacher output of shape "
            f"{tuple(teacher.shape)}"
        )
    return LOSS_FUNCTIONS[canonical_loss_type(kind)](student, teacher, temperature)


def task_loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """The loss against the labels: cross-entropy for integer labels, MSE for float (regression)."""
    # tensors, or numpy arrays / lists (as they arrive when tf.function runs eagerly): one dtype API
    logits, labels = tf.cast(logits, tf.float32), tf.convert_to_tensor(labels)
    if labels.dtype.is_floating:
        return tf.reduce_mean(tf.square(tf.reshape(logits, tf.shape(labels)) - tf.cast(labels, tf.float32)))
    labels = tf.reshape(tf.cast(labels, tf.int32), (-1,))
    logits = tf.reshape(logits, (-1, tf.shape(logits)[-1]))
    keep = tf.not_equal(labels, -100)  # torch's ignore_index
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(keep, labels, tf.zeros_like(labels)), logits=logits)
    weights = tf.cast(keep, tf.float32)
    return tf.reduce_sum(per_example * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
