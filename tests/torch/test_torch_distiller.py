"""Flash distiller: block freezing, matchers, determinism, divergence, three model families."""

import math

import pytest
import torch
import transformers

from _support.torch_models import (
    ListDataset,
    bert_config,
    flash,
    make_image_examples,
    make_text_examples,
    mobilebert_config,
    save_and_load,
    stage,
    vit_config,
)
from nas_distill.builders import from_config
from nas_distill.distill.torch import DistillationDiverged, FlashDistiller
from nas_distill.distill.torch.distiller import in_block
from nas_distill.distill.torch.evaluate import evaluate
from nas_distill.errors import ConfigError, InvalidArchitecture


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_in_block_is_an_exact_prefix():
    assert in_block("encoder.layer.1", ["encoder.layer.1"])
    assert in_block("encoder.layer.1.attention.q.weight", ["encoder.layer.1"])
    assert not in_block("encoder.layer.10.attention.q.weight", ["encoder.layer.1"])
    assert not in_block("encoder.layer.1x.w", ["encoder.layer.1"])


def test_block_stage_trains_only_its_block(bert_teacher, text_data):
    torch.manual_seed(0)
    student = transformers.BertForSequenceClassification(bert_config(num_hidden_layers=12))
    kt = stage("kt", "knowledge_transfer", block_names=["bert.encoder.layer.1"],
               mappings=[("bert.encoder.layer.1", "bert.encoder.layer.1")], train_steps=3)
    before = snapshot(student)
    FlashDistiller(bert_teacher, text_data, flash([kt], learning_rate=1e-2)).distill(student, seed=0)
    after = snapshot(student)
    inside = [n for n in before if n.startswith("bert.encoder.layer.1.")]
    outside = [n for n in before if n not in inside]
    assert any(n.startswith("bert.encoder.layer.10.") for n in outside)
    assert all(torch.equal(before[n], after[n]) for n in outside)
    assert any(not torch.equal(before[n], after[n]) for n in inside)
    # requires_grad flags are restored after the stage
    assert all(p.requires_grad for p in student.parameters())


def test_empty_block_names_train_everything(bert_teacher, bert_student, text_data):
    before = snapshot(bert_student)
    FlashDistiller(bert_teacher, text_data, flash([stage(train_steps=2)], learning_rate=1e-2)).distill(bert_student)
    after = snapshot(bert_student)
    assert not torch.equal(before["bert.embeddings.word_embeddings.weight"],
                           after["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


def test_matchers_get_gradients_and_change(bert_teacher, bert_student, text_data):
    st = stage("kt", "knowledge_transfer", mappings=[("bert.encoder.layer.0", "bert.encoder.layer.1")],
               train_steps=3)
    d = FlashDistiller(bert_teacher, text_data, flash([st], learning_rate=1e-2))
    d.distill(bert_student)
    (key, proj), = d.matchers.projections.items()
    assert (proj.in_features, proj.out_features) == (32, 48)
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert not torch.equal(proj.weight, d.matchers.initial[key][0])
    # never part of the student
    assert not any("projections" in n for n, _ in bert_student.named_parameters())


def test_same_arch_same_seed_identical_metrics(bert_teacher, text_data, tmp_path):
    bert_teacher.config.save_pretrained(tmp_path)  # builders read configs from a folder too
    builder = from_config(tmp_path, "auto")
    arch = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "num_hidden_layers": 2}
    stages = [stage("kt", "knowledge_transfer", block_names=["bert.encoder.layer.0"],
                    mappings=[("bert.encoder.layer.0",)], train_steps=3),
              stage("rd", train_steps=3, add_origin_loss=True, loss_types=["CE"], temperature=2.0)]
    d = FlashDistiller(bert_teacher, text_data, flash(stages, learning_rate=1e-2))
    runs = []
    for _ in range(2):
        student = builder(arch)
        res = d.distill(student, seed=7)
        metrics = evaluate(student, text_data, ["accuracy", "params"])
        runs.append((res.final_loss, [s.final_loss for s in res.stages], metrics, snapshot(student)))
    assert runs[0][:3] == runs[1][:3]
    assert all(torch.equal(runs[0][3][n], runs[1][3][n]) for n in runs[0][3])
    # a different seed gives a different data order, hence different weights
    student = builder(arch)
    assert d.distill(student, seed=8).final_loss != runs[0][0]


def test_nan_loss_raises(bert_student, text_data, model_dir):
    teacher = transformers.BertForSequenceClassification(bert_config(hidden_size=48))
    with torch.no_grad():
        teacher.classifier.weight.fill_(float("nan"))
    d = FlashDistiller(teacher, text_data, flash([stage(train_steps=2)], cache=False))
    with pytest.raises(DistillationDiverged, match="nan"):
        d.distill(bert_student)


def test_missing_student_layer_is_invalid_architecture(bert_teacher, bert_student, text_data):
    st = stage("kt", "knowledge_transfer", mappings=[("bert.encoder.layer.5", "bert.encoder.layer.1")],
               train_steps=1)
    with pytest.raises(InvalidArchitecture, match="bert.encoder.layer.5"):
        FlashDistiller(bert_teacher, text_data, flash([st])).distill(bert_student)
    st = stage("kt", "knowledge_transfer", block_names=["bert.encoder.layer.9"], train_steps=1)
    with pytest.raises(InvalidArchitecture, match="bert.encoder.layer.9"):
        FlashDistiller(bert_teacher, text_data, flash([st])).distill(bert_student)


def test_missing_teacher_layer_fails_at_construction(bert_teacher, text_data):
    st = stage("kt", "knowledge_transfer", mappings=[("bert.encoder.layer.0", "bert.encoder.layer.4")])
    with pytest.raises(InvalidArchitecture, match="teacher has no module named 'bert.encoder.layer.4'"):
        FlashDistiller(bert_teacher, text_data, flash([st]))


def test_unknown_optimizer_is_a_config_error_naming_the_field(bert_teacher, bert_student, text_data):
    """The same error type and field as the Keras engine's (tests/keras/test_keras_distiller.py)."""
    kt = stage("kt", "knowledge_transfer", block_names=["bert.encoder.layer.1"],
               mappings=[("bert.encoder.layer.1", "bert.encoder.layer.1")], train_steps=2)
    before = snapshot(bert_student)
    with pytest.raises(ConfigError, match="unknown optimizer 'lamb'; known: adamw, adam, sgd") as info:
        FlashDistiller(bert_teacher, text_data, flash([kt], optimizer="lamb")).distill(bert_student)
    assert info.value.field == "flash_distillation.optimizer"
    after = snapshot(bert_student)
    assert all(torch.equal(before[n], after[n]) for n in before)  # nothing trained
    # the stage froze every parameter outside its block before the optimizer failed: all restored
    assert all(p.requires_grad for p in bert_student.parameters())


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_other_optimizers(bert_teacher, bert_student, text_data, optimizer):
    settings = flash([stage(train_steps=2)], optimizer=optimizer)
    res = FlashDistiller(bert_teacher, text_data, settings).distill(bert_student)
    assert math.isfinite(res.final_loss)


FAMILIES = {
    "bert": (bert_config, transformers.BertForSequenceClassification, "bert.encoder.layer",
             make_text_examples, {"hidden_size": 32, "num_attention_heads": 2}),
    "mobilebert": (mobilebert_config, transformers.MobileBertForSequenceClassification,
                   "mobilebert.encoder.layer", make_text_examples, {"intra_bottleneck_size": 8,
                                                                    "num_attention_heads": 2}),
    "vit": (vit_config, transformers.ViTForImageClassification, "vit.layers", make_image_examples,
            {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_families_end_to_end(family, tmp_path):
    make_cfg, cls, layers, make_data, arch = FAMILIES[family]
    torch.manual_seed(0)
    teacher = save_and_load(cls(make_cfg()), tmp_path / "teacher")
    builder = from_config(tmp_path / "teacher", "auto")
    student = builder(arch)
    assert type(student) is cls
    data = ListDataset(make_data(32))
    stages = [stage("kt0", "knowledge_transfer", block_names=[f"{layers}.0"], mappings=[(f"{layers}.0",)],
                    train_steps=2),
              stage("kt1", "knowledge_transfer", block_names=[f"{layers}.1"],
                    mappings=[(f"{layers}.1", 0, f"{layers}.1", 0)], loss_types=["CosineSimilarity"],
                    train_steps=2),
              stage("rd", train_steps=2, add_origin_loss=True, loss_types=["KL"], temperature=2.0)]
    d = FlashDistiller(teacher, data, flash(stages, cache_dir=str(tmp_path / "cache")))
    res = d.distill(student, seed=1)
    assert [s.name for s in res.stages] == ["kt0", "kt1", "rd"]
    assert all(math.isfinite(s.final_loss) and s.seconds > 0 for s in res.stages)
    assert res.teacher_cache == "disk" and res.teacher_forward_calls == 0
    metrics = evaluate(student, data, ["accuracy", "params", "model_size_mb"])
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["params"] > 0
    assert res.as_dict()["stages"][0]["name"] == "kt0"


def test_knowledge_transfer_skips_layers_after_the_deepest_mapping(bert_teacher, bert_student, text_data):
    """No logits needed: neither model runs its layers past the mapped ones (nor its classifier)."""
    calls = {"student": 0, "teacher": 0}

    def counter(role):
        def hook(module, args):
            calls[role] += 1
        return hook

    handles = [bert_student.bert.encoder.layer[1].register_forward_pre_hook(counter("student")),
               bert_teacher.classifier.register_forward_pre_hook(counter("teacher"))]
    st = stage("kt", "knowledge_transfer", mappings=[("bert.encoder.layer.0", "bert.encoder.layer.0")],
               train_steps=2)
    try:
        res = FlashDistiller(bert_teacher, text_data, flash([st], cache=False)).distill(bert_student)
        assert calls == {"student": 0, "teacher": 0} and res.teacher_forward_calls == 2
        assert math.isfinite(res.final_loss)
        # with the task loss the student runs to its logits
        st = stage("kt", "knowledge_transfer", mappings=[("bert.encoder.layer.0",)], train_steps=2,
                   add_origin_loss=True)
        FlashDistiller(bert_teacher, text_data, flash([st], cache=False)).distill(bert_student)
        assert calls["student"] == 2
    finally:
        for h in handles:
            h.remove()


def test_attention_probability_mappings_switch_to_eager(text_data):
    """The seed's ``(…attention.self, '1')`` mapping: SDPA returns no probabilities, so eager is used
    for training and the student's implementation is restored afterwards."""
    torch.manual_seed(0)
    teacher = transformers.BertForSequenceClassification(bert_config(hidden_size=48))
    student = transformers.BertForSequenceClassification(bert_config())
    assert student.config._attn_implementation == "sdpa"
    st = stage("kt", "knowledge_transfer", block_names=["bert.encoder.layer.0"],
               mappings=[("bert.encoder.layer.0.attention.self", "1", "bert.encoder.layer.0.attention.self", "1"),
                         ("bert.encoder.layer.0.output", "bert.encoder.layer.0.output")],
               loss_types=["KL", "MSE"], train_steps=2)
    d = FlashDistiller(teacher, text_data, flash([st]))
    assert d._cached == {}  # lazily built
    res = d.distill(student)
    assert math.isfinite(res.final_loss)
    assert d._cached["bert.encoder.layer.0.attention.self@1"].shape == (48, 4, 16, 16)
    assert student.config._attn_implementation == "sdpa"


def test_unmatchable_shapes_are_invalid_architecture(bert_teacher, text_data):
    student = transformers.BertForSequenceClassification(bert_config(num_attention_heads=2))
    st = stage("kt", "knowledge_transfer",
               mappings=[("bert.encoder.layer.0.attention.self", "1", "bert.encoder.layer.0.attention.self", "1")],
               loss_types=["KL"], train_steps=1)
    with pytest.raises(InvalidArchitecture, match="only the last dimension may differ"):
        FlashDistiller(bert_teacher, text_data, flash([st])).distill(student)


def test_from_config_uses_the_run_dir_cache(bert_teacher, bert_student, text_data, tmp_path):
    from nas_distill.config import AutoDistillationConfig

    conf = AutoDistillationConfig({
        "model": {"framework": "pytorch"},
        "auto_distillation": {
            "search": {"search_space": {"hidden_size": [32]}},
            "flash_distillation": {
                "knowledge_transfer": {"block_names": [["bert.encoder.layer.0"]],
                                       "layer_mappings_for_knowledge_transfer": [[["bert.encoder.layer.0"]]],
                                       "train_steps": [2]},
                "regular_distillation": {"train_steps": [2], "add_origin_loss": [True]},
                "batch_size": 8, "device": "cpu"},
            "study": {"run_dir": str(tmp_path / "run")}}})
    d = FlashDistiller.from_config(conf, bert_teacher, text_data)
    res = d.distill(bert_student, seed=0)
    assert [s.kind for s in res.stages] == ["knowledge_transfer", "regular_distillation"]
    assert res.teacher_cache == "disk" and (tmp_path / "run" / "teacher_cache").is_dir()


def test_block_that_cannot_affect_the_loss_is_reported(bert_teacher, text_data):
    student = transformers.BertForSequenceClassification(bert_config(hidden_size=48))  # no matcher
    st = stage("kt", "knowledge_transfer", block_names=["bert.encoder.layer.1"],
               mappings=[("bert.encoder.layer.0",)], train_steps=1)
    with pytest.raises(InvalidArchitecture, match="does not depend on any trainable parameter"):
        FlashDistiller(bert_teacher, text_data, flash([st])).distill(student)


def test_after_step_counts_every_stage_and_an_evaluation_there_changes_nothing(bert_teacher, text_data):
    """The pipeline evaluates a student at its rungs from ``after_step``, in the middle of a stage whose
    capture hooks stop the student's forward early: that evaluation must see the whole forward, and the
    training must end exactly as without it."""
    kt = stage("kt", "knowledge_transfer", block_names=["bert.encoder.layer.0"],
               mappings=[("bert.encoder.layer.0", "bert.encoder.layer.0")], train_steps=4)
    rd = stage("rd", "regular_distillation", train_steps=5)
    settings = flash([kt, rd], learning_rate=1e-2)

    def trained(hook):
        torch.manual_seed(0)
        student = transformers.BertForSequenceClassification(bert_config(num_hidden_layers=2))
        d = FlashDistiller(bert_teacher, text_data, settings)
        d.after_step = hook(student) if hook else None
        d.distill(student, seed=3)
        return d, student

    calls, accuracies = [], []

    def evaluating(student):
        def hook(done, total):
            calls.append((done, total))
            if done in (2, 6):  # one mid knowledge transfer, one mid regular distillation
                accuracies.append(evaluate(student, text_data, ["accuracy"])["accuracy"])
                student.train()
        return hook

    d, with_hook = trained(evaluating)
    _, without = trained(None)
    assert calls == [(i, 9) for i in range(1, 10)]
    assert len(accuracies) == 2 and all(0.0 <= a <= 1.0 for a in accuracies)
    for (name, a), (_, b) in zip(with_hook.named_parameters(), without.named_parameters()):
        assert torch.equal(a, b), name
    # Rungs fall in regular distillation only: 1/9 and 1/3 of its 5 steps, after the 4 of knowledge transfer.
    assert d.total_steps == 9
    assert d.rung_steps([1 / 9, 1 / 3]) == [5, 6]
