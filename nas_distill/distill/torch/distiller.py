"""Flash distillation of one candidate student from a frozen teacher (PyTorch).

One :class:`FlashDistiller` serves a whole study in one worker process: it holds the teacher, the
collated training data and the teacher-output cache. :meth:`FlashDistiller.distill` trains one student:

1. knowledge-transfer stages in order, each training only the parameters of its block (module-path
   prefixes, matched exactly: ``encoder.layer.1`` never unfreezes ``encoder.layer.10``) on intermediate
   layer losses over its layer mappings;
2. regular distillation: logit distillation (or the stage's mappings), optionally plus the task loss.

Per step the work is: gather a batch by index (one ``index_select`` per field), gather the teacher's
outputs for those indices from the cache (or run the teacher under ``inference_mode`` with hooks on the
mapped modules only), one student forward with hooks on its mapped modules, the loss, backward, step.

This module knows nothing of Optuna; the orchestrator passes a per-trial ``seed`` and records the
returned :class:`DistillResult`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import time
from typing import Any, Optional, Sequence

import numpy as np
import torch

from nas_distill.distill.base import FlashDistillerBase, LossLog, optimizer_key
from nas_distill.distill.mappings import LayerMapping, Output, parse_layer_mapping  # noqa: F401

# Plans and results are framework-neutral (shared with the Keras engine); re-exported from here.
from nas_distill.distill.plans import (  # noqa: F401
    LOGITS,
    LossTerm,
    StagePlan,
    _broadcast,
    default_stage,
    feature_key,
    plan_stage,
)
from nas_distill.distill.results import DistillationDiverged, DistillResult, StageResult  # noqa: F401
from nas_distill.errors import InvalidArchitecture, NasDistillError  # noqa: F401

from . import cache as cache_mod
from .data import CollatedData, batch_indices, prepare_data
from .hooks import OutputCapture, resolve_modules, use_eager_attention
from .losses import distillation_loss, task_loss
from .matchers import FeatureMatchers

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def resolve_device(device: Any = "auto") -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def in_block(name: str, prefixes: Sequence[str]) -> bool:
    """Exact module-path prefix match: ``a.b.1`` covers ``a.b.1`` and ``a.b.1.x``, never ``a.b.10``."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def model_logits(output: Any) -> torch.Tensor:
    """The logits of a model's return value (ModelOutput ``.logits``, else its first tensor)."""
    logits = getattr(output, "logits", None)
    if logits is not None:
        return logits
    if isinstance(output, dict):
        return next(iter(output.values()))
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def input_keys(model: torch.nn.Module, available: Sequence[str]) -> list[str]:
    """The batch fields ``model.forward`` accepts by name (labels excluded: we compute losses)."""
    params = inspect.signature(model.forward).parameters
    keys = [k for k in available if k != "labels" and k in params]
    if keys:
        return keys
    return [k for k in available if k != "labels"]


def make_optimizer(name: str, params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The torch optimizer of the config's name; ConfigError naming ``flash_distillation.optimizer``
    for an unknown one (as the Keras engine)."""
    key = optimizer_key(name)
    if key == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


class _Counter:
    """Counts a module's forward calls (a forward pre-hook costs one Python call per forward)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1

    def remove(self):
        self._handle.remove()



@dataclasses.dataclass
class _Trial:
    """One student's training: its projections, and what :meth:`FlashDistiller._end_trial` restores."""

    matchers: FeatureMatchers
    was_training: bool
    previous_attn: Any
    counter: _Counter


@contextlib.contextmanager
def _train_only(student: torch.nn.Module, block_names: Sequence[str]):
    """Only the parameters of ``block_names`` (all without blocks) require grad inside the block; yields
    them. Every parameter's flag is restored after."""
    flags = {n: p.requires_grad for n, p in student.named_parameters()}
    trainable = []
    for n, p in student.named_parameters():
        on = in_block(n, block_names) if block_names else True
        p.requires_grad_(on)
        if on:
            trainable.append(p)
    try:
        yield trainable
    finally:
        for n, p in student.named_parameters():
            p.requires_grad_(flags[n])


# --------------------------------------------------------------------------------------------------
# the distiller
# --------------------------------------------------------------------------------------------------
class FlashDistiller(FlashDistillerBase):
    """Flash distillation from one teacher on one training set, for every trial of a study.

    Args:
        teacher: the frozen teacher (put in eval mode, ``requires_grad_(False)``, moved to the device).
        train_data: a DataLoader, map-style Dataset of dicts, or ``datasets.Dataset`` (see ``data.py``).
        settings: a ``FlashSettings`` (optimizer, lr, weight decay, batch size, device, teacher cache,
            augmentation, stages). ``None`` = the defaults.
        stages: overrides ``settings.stages``; when both are empty one regular-distillation stage on
            the logits is used.
        cache_dir: overrides ``settings.teacher_cache.dir``: the folder shared by every worker of the
            study (e.g. ``<run_dir>/teacher_cache``). No folder = an in-process cache only.
    """

    batch_indices = staticmethod(batch_indices)
    cache_module = cache_mod

    def __init__(self, teacher: torch.nn.Module, train_data: Any, settings: Any = None, *,
                 stages: Optional[Sequence[Any]] = None, cache_dir: Optional[str] = None,
                 device: Any = None):
        self._init_common(settings, cache_dir, stages)
        self.device = resolve_device(device if device is not None else self.settings.device)
        self.device_type = self.device.type
        self.teacher = teacher.eval().requires_grad_(False).to(self.device)
        self.data = prepare_data(train_data, augmentation=bool(self.settings.augmentation))
        if isinstance(self.data, CollatedData):
            self.data = self.data.to(self.device)
        # Fail early (before any trial) if the teacher lacks a mapped module.
        self._teacher_feature_keys = sorted({k for p in self.plans for k in p.teacher_keys if k is not None})
        self._teacher_layers = {k: self._teacher_term(k) for k in self._teacher_feature_keys}
        resolve_modules(self.teacher, {layer for layer, _ in self._teacher_layers.values()}, "teacher")
        use_eager_attention(self.teacher, self._teacher_layers.values())
        self._teacher_inputs = input_keys(self.teacher, self._fields())

    def _autocast(self):
        """bf16 autocast on CUDA (a fresh context each time: autocast objects hold their entry state)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- data / cache -------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self.data.live

    def _fields(self) -> list[str]:
        if isinstance(self.data, CollatedData):
            return list(self.data.fields)
        return list(self.data.batch(torch.arange(min(1, len(self.data)))).keys())

    def _teacher_term(self, key: str) -> tuple[str, Output]:
        for plan in self.plans:
            for term in plan.terms:
                if term.teacher_key == key:
                    return term.mapping.teacher_layer, term.mapping.teacher_output
        raise KeyError(key)

    def _fingerprint(self, extra: dict) -> str:
        return cache_mod.fingerprint(self.teacher, self.data.fields, self._teacher_feature_keys, extra=extra)

    def _hold_cached(self, arrays: dict) -> dict:
        if self.device.type == "cpu":
            return arrays  # memmaps: pages shared with the other workers through the OS cache
        return {k: torch.from_numpy(np.array(a)).to(self.device) for k, a in arrays.items()}

    def _run_teacher_over_data(self, budget_mb: float, dtype: str):
        """Teacher logits for every example, plus mapped features while they fit ``budget_mb``."""
        n = len(self.data)
        keys = self._teacher_feature_keys
        layers = {layer for layer, _ in self._teacher_layers.values()}
        itemsize = 2 if str(dtype) in ("float16", "fp16", "half") else 4
        arrays: dict[str, np.ndarray] = {}
        chosen: list[str] = []
        bs = max(int(self.settings.batch_size), 64)
        with OutputCapture(self.teacher, layers, "teacher") as cap:
            for start in range(0, n, bs):
                idx = torch.arange(start, min(n, start + bs), device=self.device)
                batch = self.data.batch(idx)
                with torch.inference_mode(), self._autocast():
                    out = self.teacher(**{k: batch[k] for k in self._teacher_inputs})
                logits = model_logits(out).float().cpu().numpy()
                if start == 0:
                    arrays["logits"] = np.empty((n,) + logits.shape[1:], np.float32)
                    budget = float(budget_mb) * 2**20
                    for i, key in enumerate(keys):
                        layer, output = self._teacher_layers[key]
                        shape = tuple(cap.get(layer, output).shape[1:])
                        size = n * int(np.prod(shape)) * itemsize
                        if size <= budget:
                            budget -= size
                            chosen.append(key)
                            arrays[f"feature-{i}"] = np.empty((n,) + shape, np.float32)
                        else:
                            logger.info("teacher feature %s (%.1f MiB) exceeds the cache budget; "
                                        "computed live", key, size / 2**20)
                arrays["logits"][start:start + len(idx)] = logits
                for key in chosen:
                    layer, output = self._teacher_layers[key]
                    value = cap.get(layer, output).float().cpu().numpy()
                    arrays[f"feature-{keys.index(key)}"][start:start + len(idx)] = value
                cap.clear()
        names = {"logits": None}
        names.update({f"feature-{keys.index(k)}": k for k in chosen})
        return arrays, names

    def _gather_cached(self, key, idx_cpu: torch.Tensor) -> torch.Tensor:
        arr = self._cached[key]
        if isinstance(arr, torch.Tensor):
            return arr.index_select(0, idx_cpu.to(arr.device))
        return torch.from_numpy(arr[idx_cpu.numpy()])

    # ---- training ------------------------------------------------------------------------------
    def check_student(self, student: torch.nn.Module) -> None:
        """Raise InvalidArchitecture when a mapped layer or a block is missing from ``student``."""
        resolve_modules(student, {layer for p in self.plans for layer in p.student_layers}, "student")
        names = [n for n, _ in student.named_parameters()]
        for plan in self.plans:
            for block in plan.block_names:
                if not any(in_block(n, [block]) for n in names):
                    raise InvalidArchitecture(f"stage {plan.name!r}: block {block!r} matches no student "
                                              f"parameter")

    def _begin_trial(self, student: torch.nn.Module, seed: int) -> _Trial:
        self.check_student(student)
        student.to(self.device)
        was_training = student.training
        student.train()
        torch.manual_seed(int(seed))
        matchers = self.matchers = FeatureMatchers(self.device)
        # Attention-probability mappings need eager attention while training; the student gets its own
        # implementation back afterwards (it changes the latency the evaluator measures).
        previous_attn = use_eager_attention(student, [(t.mapping.student_layer, t.mapping.student_output)
                                                      for p in self.plans for t in p.terms if t.mapping])
        return _Trial(matchers, was_training, previous_attn, _Counter(self.teacher))

    def _end_trial(self, student: torch.nn.Module, trial: _Trial) -> int:
        trial.counter.remove()
        student.train(trial.was_training)
        if trial.previous_attn is not None:
            student.set_attn_implementation(trial.previous_attn)
        return trial.counter.calls

    def _run_stage(self, student, plan: StagePlan, trial: _Trial, order_seed: int) -> StageResult:
        s = self.settings
        matchers = trial.matchers
        live_keys = [k for k in plan.teacher_keys if k not in self._cached]
        live_layers = {self._teacher_layers[k][0] for k in live_keys if k is not None}
        # Skip the layers after the deepest mapped one when a stage needs no logits from that model.
        student_needs_logits = plan.add_origin_loss or any(t.mapping is None for t in plan.terms)
        student_inputs = input_keys(student, self._fields())
        log = LossLog(plan, self._check_every())
        t0 = time.perf_counter()
        with _train_only(student, plan.block_names) as trainable, \
                OutputCapture(student, plan.student_layers, "student",
                              stop_early=not student_needs_logits, only_in_run=True) as student_caps, \
                OutputCapture(self.teacher, live_layers, "teacher",
                              stop_early=None not in live_keys, only_in_run=True) as teacher_caps:
            optimizer = make_optimizer(s.optimizer, trainable + list(matchers.parameters()),
                                       float(s.learning_rate), float(s.weight_decay))
            matchers.on_new_parameters = lambda ps: optimizer.add_param_group({"params": ps})
            try:
                for step, idx in self._steps(plan, order_seed):
                    if self.after_step is not None:
                        # The callback may have measured the student on the evaluation device, which the
                        # evaluator leaves it on: back to the training device (a no-op when it is there).
                        student.to(self.device)
                    if self.data.live:  # re-read on the CPU example by example: moved like a collated one
                        batch = {k: v.to(self.device) for k, v in self.data.batch(idx).items()}
                    else:
                        batch = self.data.batch(idx.to(self.device))
                    targets = self._targets(plan, idx, batch, live_keys, teacher_caps)
                    with self._autocast():
                        s_out = student_caps.run(student, **{k: batch[k] for k in student_inputs})
                        loss = self._stage_loss(plan, matchers, student_caps, s_out, targets, batch)
                    student_caps.clear()
                    if not loss.requires_grad:
                        raise InvalidArchitecture(
                            f"stage {plan.name!r}: the loss does not depend on any trainable parameter "
                            f"(blocks {list(plan.block_names)} lie after every mapped student layer?)"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    log.record(step, loss.detach())
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
            finally:
                matchers.on_new_parameters = None
        return log.result(time.perf_counter() - t0)

    def _targets(self, plan: StagePlan, idx: torch.Tensor, batch: dict, live_keys: list,
                 teacher_caps: OutputCapture) -> dict:
        """The teacher's outputs for the batch: from the cache first, the live teacher only for what the
        cache lacks."""
        targets = {k: self._gather_cached(k, idx) for k in plan.teacher_keys if k in self._cached}
        if live_keys:
            with torch.inference_mode(), self._autocast():
                t_out = teacher_caps.run(self.teacher, **{k: batch[k] for k in self._teacher_inputs})
            for k in live_keys:  # clone: inference tensors cannot be saved for backward
                v = model_logits(t_out) if k is None else teacher_caps.get(*self._teacher_layers[k])
                targets[k] = v.clone()
            teacher_caps.clear()
        return targets

    def _stage_loss(self, plan: StagePlan, matchers: FeatureMatchers, student_caps: OutputCapture,
                    s_out: Any, targets: dict, batch: dict) -> torch.Tensor:
        """The stage's loss on one batch: its weighted terms, plus the task loss with add_origin_loss."""
        loss = None
        for term in plan.terms:
            t_val = targets[term.teacher_key].to(self.device, non_blocking=True)
            if term.mapping is None:
                s_val = model_logits(s_out)
            else:
                s_val = student_caps.get(term.mapping.student_layer, term.mapping.student_output)
                if s_val.shape[:-1] != t_val.shape[:-1]:
                    raise InvalidArchitecture(
                        f"stage {plan.name!r}, mapping {term.matcher_key}: student output "
                        f"shape {tuple(s_val.shape)} cannot be matched to the teacher's "
                        f"{tuple(t_val.shape)} (only the last dimension may differ)"
                    )
                s_val = matchers(term.matcher_key, s_val, t_val.shape[-1])
            value = term.weight * distillation_loss(term.kind, s_val, t_val, plan.temperature)
            loss = value if loss is None else loss + value
        if plan.add_origin_loss:
            if "labels" not in batch:
                raise ValueError(f"stage {plan.name!r}: add_origin_loss needs 'labels' in the data")
            loss = loss + task_loss(model_logits(s_out), batch["labels"])
        return loss
