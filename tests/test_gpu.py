"""The torch engine on a CUDA device: device resolution, bf16 autocast, the teacher cache, the evaluator
and one search, each against a computation on the CPU or outside the engine.

Every test is marked ``gpu`` and skipped where ``torch.cuda.is_available()`` is false (``pytest -m gpu``
selects them; ``bench/gpu_check.sh`` runs them on a lent accelerator). Models are tiny and built from
configs, so each test takes seconds on a GPU.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import transformers

from _support.flash import cache_entries
from _support.torch_models import (
    ListDataset,
    NoisyDataset,
    bert_config,
    flash,
    make_image_examples,
    make_text_examples,
    stage,
    vit_config,
)
from nas_distill.distill.torch import FlashDistiller, distillation_loss, task_loss
from nas_distill.distill.torch.distiller import model_logits, resolve_device
from nas_distill.distill.torch.evaluate import evaluate, latency
from nas_distill.engines.torch import TorchEngine, _check_device
from nas_distill.errors import ConfigError
from nas_distill.settings import EvaluationSettings

NO_CUDA = "needs a CUDA device: torch.cuda.is_available() is False"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The knowledge-transfer stage of the cache tests: one mapped hidden state, so a feature is cached too.
KT = dict(name="kt", kind="knowledge_transfer", mappings=[("bert.encoder.layer.0", "bert.encoder.layer.1")],
          train_steps=2)


def bert(seed: int, **kw) -> transformers.BertForSequenceClassification:
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(bert_config(**kw)).eval()


def on_cuda(module: torch.nn.Module) -> bool:
    return all(p.device.type == "cuda" for p in module.parameters())


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}


def within(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    """``a`` and ``b`` agree to ``rel`` of ``b``'s largest magnitude (bf16 keeps 8 significant bits)."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max()) <= rel * float(b.abs().max()) + 1e-4


class CallCounter:
    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1


# ------------------------------------------------------------------------------------------ device
def test_auto_resolves_to_cuda_and_the_distiller_puts_everything_there():
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    teacher = bert(1, hidden_size=48)
    d = FlashDistiller(teacher, ListDataset(make_text_examples(16)), flash([stage(train_steps=1)], device="auto"))
    assert d.device.type == "cuda" and d.device_type == "cuda"
    assert on_cuda(teacher)
    assert all(v.device.type == "cuda" for v in d.data.fields.values())


def test_the_dry_run_device_check_accepts_cuda_and_names_the_field_of_a_missing_gpu():
    TorchEngine().check_devices("cuda", "cuda:0", True, True)  # usable: no error
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU
    with pytest.raises(ConfigError, match=r"flash_distillation\.device.*not usable on this machine"):
        _check_device(missing, "flash_distillation.device", True)
    _check_device(missing, "evaluation.device", False)  # not checked when nothing is evaluated


# ------------------------------------------------------------------------------------------ training
def test_training_on_cuda_moves_and_changes_the_student(tmp_path):
    teacher, student = bert(1, hidden_size=48), bert(2)
    before = snapshot(student)
    stages = [stage(**KT), stage(train_steps=4, add_origin_loss=True)]
    d = FlashDistiller(teacher, ListDataset(make_text_examples()),
                       flash(stages, device="cuda", cache_dir=str(tmp_path), learning_rate=1e-2))
    result = d.distill(student, seed=0)
    assert on_cuda(student)
    after = snapshot(student)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert "bert.embeddings.word_embeddings.weight" in changed and "classifier.weight" in changed
    assert result.teacher_cache == "disk" and result.teacher_forward_calls == 0
    assert all(s.steps and torch.isfinite(torch.tensor(s.final_loss)) for s in result.stages)
    # the 32-to-48 projection of the mapped hidden state lives on the GPU too, and was trained
    (key,) = d.matchers.projections.keys()
    proj = d.matchers.projections[key]
    assert on_cuda(proj) and not torch.equal(proj.weight.detach().cpu(), d.matchers.initial[key][0].cpu())


def test_bf16_autocast_loss_is_finite_and_close_to_the_fp32_loss():
    teacher, student = bert(1, hidden_size=48), bert(2)
    d = FlashDistiller(teacher, ListDataset(make_text_examples()), flash([stage(train_steps=1)], device="cuda"))
    student.to("cuda")
    batch = d.data.batch(torch.arange(16, device="cuda"))
    inputs = {k: batch[k] for k in TEXT_INPUTS}
    with torch.no_grad():
        t_logits = model_logits(teacher(**inputs)).float()
        fp32 = model_logits(student(**inputs))
        with d._autocast():
            bf16 = model_logits(student(**inputs))
            loss_bf16 = distillation_loss("KL", bf16, t_logits, 2.0) + task_loss(bf16, batch["labels"])
    loss_fp32 = distillation_loss("KL", fp32, t_logits, 2.0) + task_loss(fp32, batch["labels"])
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16  # autocast really is on
    assert loss_bf16.dtype == torch.float32 and torch.isfinite(loss_bf16)
    assert abs(float(loss_bf16) - float(loss_fp32)) <= 1e-2 * abs(float(loss_fp32))


def test_the_first_loss_on_cuda_matches_the_cpu_one():
    """One step (its loss is taken before the update): bf16 on the GPU against fp32 on the CPU."""
    teacher, student = bert(1, hidden_size=48), bert(2)
    data = ListDataset(make_text_examples())
    stages = [stage(train_steps=1, add_origin_loss=True)]
    losses = {}
    for device in ("cpu", "cuda"):
        d = FlashDistiller(copy.deepcopy(teacher), data, flash(stages, device=device))
        losses[device] = d.distill(copy.deepcopy(student), seed=3).final_loss
    assert abs(losses["cuda"] - losses["cpu"]) <= 1e-2 * abs(losses["cpu"]), losses


def test_augmented_data_trains_on_cuda():
    """Augmented data is re-read on the CPU for every batch and has to reach the GPU."""
    torch.manual_seed(1)
    teacher = transformers.ViTForImageClassification(vit_config()).eval()
    student = transformers.ViTForImageClassification(vit_config(hidden_size=16, num_attention_heads=2))
    before = snapshot(student)
    d = FlashDistiller(teacher, NoisyDataset(make_image_examples(16)),
                       flash([stage(train_steps=2, add_origin_loss=True)], device="cuda", augmentation=True))
    result = d.distill(student)
    assert result.teacher_cache == "bypassed" and result.teacher_forward_calls == 2
    assert on_cuda(student)
    assert not torch.equal(before["classifier.weight"], snapshot(student)["classifier.weight"])


def test_a_rung_evaluated_on_the_cpu_does_not_stop_training_on_cuda():
    """The pruner's rungs evaluate the student mid-training on ``evaluation.device``, which may differ."""
    teacher, student = bert(1, hidden_size=48), bert(2)
    data = ListDataset(make_text_examples())
    d = FlashDistiller(teacher, data, flash([stage(train_steps=4, add_origin_loss=True)], device="cuda"))
    rungs = {}

    def rung(done, total):
        if done == 2:
            rungs[done] = evaluate(student, data, ["accuracy"], settings=EvaluationSettings(device="cpu"))
            assert not on_cuda(student)  # the evaluator left it on the CPU

    d.after_step = rung
    before = snapshot(student)
    result = d.distill(student, seed=0)
    assert list(rungs) == [2] and 0 <= rungs[2]["accuracy"] <= 1
    assert on_cuda(student) and all(torch.isfinite(torch.tensor(s.final_loss)) for s in result.stages)
    assert not torch.equal(before["classifier.weight"], snapshot(student)["classifier.weight"])


# ------------------------------------------------------------------------------------------ teacher cache
def test_teacher_cache_built_on_cuda_reloads_and_matches_a_fresh_forward(tmp_path):
    teacher = bert(1, hidden_size=48)
    data = ListDataset(make_text_examples())
    settings = flash([stage(**KT)], device="cuda", cache_dir=str(tmp_path))
    first = FlashDistiller(teacher, data, settings)
    assert first.prepare() == "disk"
    assert {k: v.device.type for k, v in first._cached.items()} == {None: "cuda", "bert.encoder.layer.1": "cuda"}

    # The cached outputs are the teacher's: a plain fp32 forward, outside the engine, on a few examples.
    idx = torch.tensor([5, 0, 17, 40])
    batch = first.data.batch(idx.to("cuda"))
    with torch.no_grad():
        fresh = teacher(**{k: batch[k] for k in TEXT_INPUTS}, output_hidden_states=True)
    logits, hidden = fresh.logits, fresh.hidden_states[2]
    assert within(first._gather_cached(None, idx), logits, 0.05)
    assert within(first._gather_cached("bert.encoder.layer.1", idx), hidden, 0.05)
    # ... and the comparison can fail: other examples' outputs are further apart than the tolerance
    assert not within(first._gather_cached("bert.encoder.layer.1", idx.roll(1)), hidden, 0.05)

    # A second distiller (another trial or worker) loads the entry from disk, with no teacher forward.
    counter = CallCounter(teacher)
    try:
        second = FlashDistiller(teacher, data, settings)
        assert second.prepare() == "disk" and counter.calls == 0
        assert all(torch.equal(second._cached[k], first._cached[k]) for k in first._cached)
        assert second.distill(bert(2), seed=0).teacher_forward_calls == 0
        # The device type is part of the key: a CPU distiller (fp32, no autocast) builds its own entry.
        FlashDistiller(teacher, data, dataclasses.replace(settings, device="cpu")).prepare()
        assert counter.calls > 0 and len(cache_entries(tmp_path)) == 2
    finally:
        counter.handle.remove()


# ------------------------------------------------------------------------------------------ evaluator
def test_evaluator_on_cuda_agrees_with_the_cpu():
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(vit_config())
    data = ListDataset(make_image_examples(40))
    x = torch.stack([e["pixel_values"] for e in data.items])
    y = torch.stack([e["labels"] for e in data.items])
    with torch.no_grad():
        logits = model.eval()(pixel_values=x).logits  # on the CPU, before the evaluator moves the model
    model.train()
    settings = EvaluationSettings(device="cuda", batch_size=16, latency_warmup=2, latency_repeats=5)
    got = evaluate(model, data, ["accuracy", "loss", "params", "latency"], settings=settings)
    assert on_cuda(model) and model.training  # moved to the device, its mode restored
    assert abs(got["accuracy"] - float((logits.argmax(-1) == y).float().mean())) <= 1 / len(y)
    assert abs(got["loss"] - float(torch.nn.functional.cross_entropy(logits, y))) <= 1e-2 * got["loss"]
    assert got["params"] == sum(p.numel() for p in model.parameters())
    assert 0 < got["latency"] < 1000


class MatmulChain(torch.nn.Module):
    """Twenty 4096-wide matrix products per forward: milliseconds of GPU work behind far shorter launches."""

    def __init__(self, width: int = 4096, depth: int = 20):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(width, width) / width**0.5)
        self.depth = depth

    def forward(self, x):
        for _ in range(self.depth):
            x = torch.tanh(x @ self.weight)
        return x


def test_latency_on_cuda_waits_for_the_gpu():
    """The timed region must include the kernels, not just their launches: compared with CUDA events."""
    torch.manual_seed(0)
    model = MatmulChain().cuda().eval()
    rows = [{"x": r} for r in torch.randn(1024, 4096)]
    settings = EvaluationSettings(device="cuda", latency_batch_size=1024, latency_warmup=3, latency_repeats=10)
    measured = latency(model, ListDataset(rows), settings)
    x = torch.stack([r["x"] for r in rows]).cuda()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    events = []
    with torch.inference_mode():
        for _ in range(10):
            start.record()
            model(x)
            end.record()
            torch.cuda.synchronize()
            events.append(start.elapsed_time(end))
    gpu_ms = sorted(events)[len(events) // 2]
    assert gpu_ms > 1  # GPU work for which its 40 launches (~0.2 ms) are a small part
    assert 0.7 * gpu_ms <= measured <= 5 * gpu_ms + 5, (measured, gpu_ms)


# ------------------------------------------------------------------------------------------ a search
def digits_mlp(hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


def test_search_on_cuda_end_to_end(tmp_path):
    from optuna.trial import TrialState

    from nas_distill import AutoDistillation
    from nas_distill.tasks.digits import load_splits

    s = load_splits()
    # nn.Sequential's forward takes `input`: the field the engine passes by name
    train = ListDataset([{"input": x, "labels": y} for x, y in zip(s.x_train, s.y_train)])
    val = ListDataset([{"input": x, "labels": y} for x, y in zip(s.x_val, s.y_val)])
    torch.manual_seed(0)
    teacher = digits_mlp(64).cuda()
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(teacher(s.x_train.cuda()), s.y_train.cuda())
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()

    run_dir = tmp_path / "run"
    conf = {
        "model": {"framework": "pytorch"},
        "auto_distillation": {
            "search": {"search_space": {"hidden": [8, 16]}, "search_algorithm": "Grid",
                       "metrics": ["accuracy", "latency"], "higher_is_better": [True, False], "max_trials": 2},
            "flash_distillation": {"device": "auto", "learning_rate": 0.01,
                                   "regular_distillation": {"train_steps": 60}},
            "evaluation": {"device": "cuda", "latency_warmup": 2, "latency_repeats": 5},
            "study": {"run_dir": str(run_dir), "study_name": "gpu"},
        },
    }
    agent = AutoDistillation(lambda arch: digits_mlp(arch["hidden"]), conf)
    agent.teacher_model = teacher
    agent.train_dataset, agent.eval_dataset = train, val
    agent.search()
    complete = [t for t in agent.study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2, [t.user_attrs.get("error") for t in agent.study.trials]
    assert all(t.values[0] > 0.3 and 0 < t.values[1] < 1000 for t in complete), [t.values for t in complete]
    # 'auto' trained on the GPU: the teacher cache the search filled is the entry an explicit 'cuda'
    # distiller of the same settings finds, without running the teacher.
    (entry,) = cache_entries(run_dir / "teacher_cache")
    counter = CallCounter(teacher)
    try:
        cuda = FlashDistiller.from_config(agent.conf, teacher, agent.train_dataset, device="cuda")
        assert cuda.prepare() == "disk" and counter.calls == 0
        assert cache_entries(run_dir / "teacher_cache") == [entry]
    finally:
        counter.handle.remove()
