"""Distillation losses: student output vs teacher output, and the task loss.

Conventions (worked examples are in ``tests/torch/test_losses.py``):

* ``KL``: ``KL(softmax(t/T) || softmax(s/T)) * T**2`` over the last dimension, summed over classes,
  averaged over every other position (batch, and sequence for token features).
* ``CE``: soft cross-entropy ``-sum(softmax(t/T) * log_softmax(s/T)) * T**2``, same averaging.
  The ``T**2`` factor keeps gradient magnitudes comparable across temperatures (Hinton et al.).
* ``MSE`` / ``L1``: elementwise mean; the temperature does not apply (they are not soft losses).
* ``CosineSimilarity``: ``1 - cos(s, t)`` along the last dimension, averaged.

Every loss returns a 0-d float32 tensor; inputs are upcast so bf16 autocast or fp16 cache entries never
change the arithmetic of the loss itself.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# The names are shared with the Keras engine (no torch there): re-exported from the neutral module.
from nas_distill.distill.losses_common import _ALIASES, LOSS_TYPES, canonical_loss_type  # noqa: F401


def _flat(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, -1)


def kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    s, t = _flat(student), _flat(teacher)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    # sum over classes / rows == 'batchmean' on the flattened rows
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def soft_ce_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    s, t = _flat(student), _flat(teacher)
    p_t = F.softmax(t / temperature, dim=-1)
    return -(p_t * F.log_softmax(s / temperature, dim=-1)).sum(-1).mean() * temperature**2


def mse_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return F.mse_loss(student.float(), teacher.float())


def l1_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return F.l1_loss(student.float(), teacher.float())


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


LOSS_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "KL": kl_loss,
    "CE": soft_ce_loss,
    "MSE": mse_loss,
    "L1": l1_loss,
    "CosineSimilarity": cosine_loss,
}


def distillation_loss(
    kind: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """One student-vs-teacher loss of type ``kind`` (see the module docstring)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"{kind} loss: student output of shape {tuple(student.shape)} vs teacher output of shape "
            f"{tuple(teacher.shape)}"
        )
    return LOSS_FUNCTIONS[canonical_loss_type(kind)](student, teacher, temperature)


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss against the labels: cross-entropy for integer labels, MSE for float (regression)."""
    logits = logits.float()
    if labels.dtype.is_floating_point:
        return F.mse_loss(logits.reshape(labels.shape), labels.float())
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
