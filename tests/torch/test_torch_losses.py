"""Each loss against values worked out by hand on 1-2 row tensors."""

import math

import pytest
import torch

from _support.torch_models import stage
from nas_distill.distill.torch.distiller import plan_stage
from nas_distill.distill.torch.losses import canonical_loss_type, distillation_loss, task_loss

S = torch.tensor([[0.0, 0.0]])  # softmax = (1/2, 1/2)
T = torch.tensor([[math.log(3.0), 0.0]])  # softmax = (3/4, 1/4)


def test_kl_at_t1():
    # KL(p_t || p_s) = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert distillation_loss("KL", S, T).item() == pytest.approx(expected, abs=1e-6)


def test_kl_at_t2_scaled_by_t_squared():
    # t/2 = (ln 3 / 2, 0) -> p_t = (sqrt3, 1) / (sqrt3 + 1); s/2 stays uniform
    r3 = math.sqrt(3.0)
    p = (r3 / (r3 + 1), 1 / (r3 + 1))
    expected = 4 * (p[0] * math.log(p[0] / 0.5) + p[1] * math.log(p[1] / 0.5))
    assert distillation_loss("KL", S, T, 2.0).item() == pytest.approx(expected, abs=1e-6)


def test_soft_ce():
    # -(3/4 ln 1/2 + 1/4 ln 1/2) = ln 2, times T^2
    assert distillation_loss("CE", S, T).item() == pytest.approx(math.log(2), abs=1e-6)
    assert distillation_loss("CE", S, T, 2.0).item() == pytest.approx(4 * math.log(2), abs=1e-6)


def test_mse_l1_ignore_temperature():
    s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 2.0]])
    assert distillation_loss("MSE", s, t).item() == pytest.approx(2.0)  # (4 + 0) / 2
    assert distillation_loss("MSE", s, t, 4.0).item() == pytest.approx(2.0)
    assert distillation_loss("L1", s, t).item() == pytest.approx(1.0)  # (2 + 0) / 2


def test_cosine():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    # rows: 1 - 1/sqrt2, 1 - (-1) = 2; mean
    expected = ((1 - 1 / math.sqrt(2)) + 2.0) / 2
    assert distillation_loss("CosineSimilarity", s, t).item() == pytest.approx(expected, abs=1e-6)


def test_kl_averages_over_token_positions():
    # (batch=1, seq=2, classes=2): same row twice -> the same value as one row
    s3, t3 = S.expand(2, 2).unsqueeze(0), T.expand(2, 2).unsqueeze(0)
    assert distillation_loss("KL", s3, t3).item() == pytest.approx(distillation_loss("KL", S, T).item())


def test_task_loss():
    assert task_loss(S, torch.tensor([0])).item() == pytest.approx(math.log(2), abs=1e-6)
    # float labels = regression: MSE
    assert task_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 2.0])).item() == pytest.approx(1.0)


def test_loss_type_names():
    assert canonical_loss_type("kl") == "KL"
    assert canonical_loss_type("cosinesimilarity") == "CosineSimilarity"
    with pytest.raises(ValueError, match="known: MSE, KL, L1, CE, CosineSimilarity"):
        canonical_loss_type("hinge")
    with pytest.raises(ValueError, match="shape"):
        distillation_loss("MSE", torch.zeros(2, 3), torch.zeros(2, 4))


def test_stage_plans_default_weights():
    p = plan_stage(stage(kind="knowledge_transfer", mappings=[("a",), ("b",), ("c", "d"), ("e", 1)]))
    assert [t.weight for t in p.terms] == pytest.approx([0.25] * 4)
    assert {t.kind for t in p.terms} == {"MSE"}
    p = plan_stage(stage(mappings=[("a",), ("b",)], loss_types=["KL", "L1"], loss_weights=[0.3, 0.7]))
    assert [(t.kind, t.weight) for t in p.terms] == [("KL", 0.3), ("L1", 0.7)]
    p = plan_stage(stage())  # regular, no mappings: logits KL
    assert [(t.kind, t.weight, t.mapping) for t in p.terms] == [("KL", 1.0, None)]
    with pytest.raises(ValueError, match="2 loss weights for 3 mappings"):
        plan_stage(stage(mappings=[("a",), ("b",), ("c",)], loss_weights=[0.5, 0.5]))
