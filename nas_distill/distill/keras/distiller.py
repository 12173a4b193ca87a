"""Flash distillation of one candidate student from a frozen teacher (TensorFlow / Keras 3).

The Keras twin of :class:`nas_distill.distill.torch.FlashDistiller`: the same stages (planned by
:mod:`nas_distill.distill.plans`), the same losses, the same teacher cache (format and key recipe in
:mod:`nas_distill.distill.cache_store`), the same :class:`DistillResult`. One
:class:`KerasFlashDistiller` serves a whole study in one worker process: it holds the teacher, the
validated training arrays and the teacher-output cache. :meth:`KerasFlashDistiller.distill` trains one
student:

1. knowledge-transfer stages in order, each training only the layers of its block (exact Keras layer
   names or ``outer/inner`` paths: ``dense_1`` never unfreezes ``dense_10``) on intermediate-layer
   losses over its layer mappings;
2. regular distillation: logit distillation (or the stage's mappings), optionally plus the task loss.

Per stage the step (teacher forward when the cache lacks something, student forward under a
``tf.GradientTape``, loss, gradients, optimizer update) is one ``tf.function``, traced once: every batch
has the same size. Per step the Python side passes the batch's example indices; the step gathers the
inputs, labels and cached teacher outputs from tensors kept on the device (or, for data too large for
that, the Python side gathers the rows with numpy). XLA (``jit_compile``) is used on GPUs by default and
falls back to the plain graph if the step does not compile; on CPU it is off by default (measured
slower than TensorFlow's oneDNN kernels for MLP students, see bench/README.md).

A worker runs hundreds of trials in one process: :mod:`.tracing` releases what TensorFlow would keep of
every trial's step (its graph, held by a gradient registration, and kernel-cache entries).

This module knows nothing of Optuna; the orchestrator passes a per-trial ``seed`` and records the
returned :class:`DistillResult`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from nas_distill.distill.base import FlashDistillerBase, LossLog, optimizer_key
from nas_distill.distill.plans import LOGITS, StagePlan, feature_key
from nas_distill.distill.results import DistillationDiverged, DistillResult, StageResult
from nas_distill.errors import ConfigError, InvalidArchitecture

from . import cache as cache_mod
from . import tracing
from .data import KerasData, ModelInputs, batch_indices
from .layers import LayerNotFound, layer_output, model_logits, output_model, resolve_layer, train_only
from .losses import distillation_loss, task_loss
from .matchers import FeatureMatchers

logger = logging.getLogger(__name__)

# A cache entry whose float32 size is at most this is held in process memory as float32: no float16
# conversion per step (it costs as much as a small student's layer). Larger entries stay memory-mapped,
# their pages shared with the other workers through the OS page cache.
IN_MEMORY_FLOAT32_MAX_BYTES = 256 * 2**20
# The training arrays and an in-memory cache whose bytes together are at most this are also held as
# tensors on the training device, and the step gathers its batch there by index: no numpy gather and
# host -> device copy of every input per step (about 5% of a small student's step on one CPU thread).
RESIDENT_MAX_BYTES = 256 * 2**20


class _OwnRetracingFilter(logging.Filter):
    """Every trial compiles the step (and the evaluator the forward) of a new student on purpose;
    TensorFlow's "frequent retracing" warning about those functions is noise in a worker's log. Other
    functions' warnings pass."""

    OWN = ("KerasFlashDistiller", "keras_eval_forward")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("tf.function retracing" in message and any(name in message for name in self.OWN))


tf.get_logger().addFilter(_OwnRetracingFilter())

__all__ = ["KerasFlashDistiller", "DistillResult", "StageResult", "DistillationDiverged", "make_optimizer",
           "resolve_device"]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def resolve_device(device: Any = "auto") -> tuple[str, str]:
    """``(device type, TensorFlow device name)``: ``('cpu', '/CPU:0')`` or ``('gpu', '/GPU:<i>')``."""
    text = str(device if device is not None else "auto").lower()
    gpus = tf.config.list_logical_devices("GPU")
    if text == "auto":
        return ("gpu", "/GPU:0") if gpus else ("cpu", "/CPU:0")
    kind, _, index = text.partition(":")
    if kind == "cpu":
        return "cpu", "/CPU:0"
    if kind in ("cuda", "gpu"):
        i = int(index or 0)
        if i >= len(gpus):
            raise ConfigError("flash_distillation.device",
                              f"{device!r}: TensorFlow sees {len(gpus)} GPU(s) on this machine")
        return "gpu", f"/GPU:{i}"
    raise ConfigError("flash_distillation.device",
                      f"{device!r} is not supported by the Keras engine (use auto, cpu, gpu or cuda[:i])")


def make_optimizer(name: str, learning_rate: float, weight_decay: float) -> keras.optimizers.Optimizer:
    """A Keras optimizer like the torch engine's (epsilon 1e-8 as torch's Adam/AdamW).

    Keras applies ``weight_decay`` decoupled (``w -= lr * wd * w``) for every optimizer; that is torch's
    AdamW, while torch's Adam / SGD add it to the gradient instead. Zero weight decay is identical.
    """
    key = optimizer_key(name)
    lr, wd = float(learning_rate), float(weight_decay)
    if key == "adamw" and wd == 0.0:
        # The same update without a decay of zero: Keras' AdamW would still compute and apply
        # ``w -= lr * 0 * w`` for every weight at every step.
        return keras.optimizers.Adam(learning_rate=lr, epsilon=1e-8)
    if key == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=wd, epsilon=1e-8)
    if key == "adam":
        return keras.optimizers.Adam(learning_rate=lr, weight_decay=wd or None, epsilon=1e-8)
    return keras.optimizers.SGD(learning_rate=lr, weight_decay=wd or None)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_model(model: Any, role: str) -> None:
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"the Keras engine needs the TensorFlow backend; Keras runs on "
                           f"{keras.backend.backend()!r} (set KERAS_BACKEND=tensorflow before importing keras)")
    if not isinstance(model, keras.Model):
        raise TypeError(f"the {role} must be a keras.Model (functional, or a built Sequential), "
                        f"got {type(model).__name__}")


def _stage_field(plan: StagePlan) -> str:
    return f"flash_distillation.{plan.kind}.layer_mappings_for_knowledge_transfer"


@dataclasses.dataclass
class _Trial:
    """One student's training: how it takes its inputs, its projections, the teacher calls before it."""

    student_inputs: ModelInputs
    matchers: FeatureMatchers
    teacher_calls_before: int


# --------------------------------------------------------------------------------------------------
# the distiller
# --------------------------------------------------------------------------------------------------
class KerasFlashDistiller(FlashDistillerBase):
    """Flash distillation from one Keras teacher on one training set, for every trial of a study.

    Args:
        teacher: the teacher ``keras.Model`` (functional or built Sequential); set non-trainable and
            always called with ``training=False``.
        train_data: ``(x, y)``: ``x`` an array or a dict of arrays keyed by the models' input names, ``y``
            labels of shape ``(n,)`` (or ``None`` when no stage uses the task loss).
        settings: a ``FlashSettings`` (optimizer, lr, weight decay, batch size, device, teacher cache,
            augmentation, stages). ``None`` = the defaults.
        cache_dir: overrides ``settings.teacher_cache.dir``: the folder shared by every worker of the
            study. No folder = an in-process cache only.
        stages: overrides ``settings.stages``; when both are empty one regular-distillation stage on the
            logits is used.
        jit_compile: compile each step with XLA: ``"auto"`` (on a GPU only), ``True`` or ``False``. A step
            XLA cannot compile (an op without an XLA kernel) runs without it, with a warning.

    Raises (at construction, before any work): ConfigError for bad data or settings and for a mapped
    teacher layer the teacher lacks.
    """

    batch_indices = staticmethod(batch_indices)
    cache_module = cache_mod

    def __init__(self, teacher: Any, train_data: Any, settings: Any = None, *,
                 cache_dir: Optional[str] = None, stages: Optional[Sequence[Any]] = None,
                 jit_compile: Any = "auto"):
        self._init_common(settings, cache_dir, stages)
        settings = self.settings
        self.device_type, self.device_name = resolve_device(settings.device)
        if jit_compile not in ("auto", True, False):
            raise ConfigError("jit_compile", f"{jit_compile!r}: expected 'auto', True or False")
        self.jit_compile = (self.device_type == "gpu") if jit_compile == "auto" else bool(jit_compile)
        _check_model(teacher, "teacher")
        self.teacher = teacher
        teacher.trainable = False  # frozen; also keeps its BatchNorm layers in inference mode
        self.data = KerasData.from_tuple(train_data, "train_data")
        self._teacher_inputs = ModelInputs(teacher, "teacher")
        self._teacher_inputs.check(self.data)
        # Resolve every mapped teacher layer now: a missing one fails before any trial.
        self._teacher_symbols: dict = {LOGITS: model_logits(teacher)}
        for plan in self.plans:
            for term in plan.terms:
                if term.mapping is not None and term.teacher_key not in self._teacher_symbols:
                    m = term.mapping
                    try:
                        self._teacher_symbols[term.teacher_key] = layer_output(
                            teacher, m.teacher_layer, m.teacher_output, "teacher")
                    except LayerNotFound as exc:
                        raise ConfigError(_stage_field(plan), f"stage {plan.name!r}: {exc}") from None
        self._teacher_feature_keys = sorted(k for k in self._teacher_symbols if k is not None)
        self._teacher_models: dict = {}
        self._teacher_fns: dict = {}
        self._resident: Optional[dict] = None  # device tensors: 'x', 'y', ('cache', key); {} = numpy path
        self.teacher_calls = 0  # teacher forwards (one per batch) over this distiller's life

    # ---- teacher -----------------------------------------------------------------------------------
    def _teacher_model(self, keys: Sequence):
        """A model sharing the teacher's layers that returns the outputs ``keys`` (None = logits)."""
        keys = tuple(keys)
        model = self._teacher_models.get(keys)
        if model is None:
            model = output_model(self.teacher, [self._teacher_symbols[k] for k in keys], "teacher_outputs")
            self._teacher_models[keys] = model
        return model

    def _teacher_fn(self, keys: Sequence):
        """The compiled teacher forward (``training=False``) returning the outputs ``keys`` as a list."""
        keys = tuple(keys)
        fn = self._teacher_fns.get(keys)
        if fn is None:
            model, pack = self._teacher_model(keys), self._teacher_inputs.pack
            fn = tf.function(lambda x: _as_list(model(pack(x), training=False)), reduce_retracing=True,
                             autograph=False)
            self._teacher_fns[keys] = fn
        return fn

    # ---- cache ---------------------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        return bool(self.settings.augmentation)

    def _device_scope(self):
        return tf.device(self.device_name)

    def _fingerprint(self, extra: dict) -> str:
        return cache_mod.fingerprint(self.teacher, self.data.fields(), self._teacher_feature_keys, extra=extra)

    def _hold_cached(self, arrays: dict) -> dict:
        if sum(a.size * 4 for a in arrays.values()) <= IN_MEMORY_FLOAT32_MAX_BYTES:
            arrays = {k: np.array(a, dtype=np.float32) for k, a in arrays.items()}
        return arrays

    def _run_teacher_over_data(self, budget_mb: float, dtype: str):
        """Teacher logits for every example, plus mapped features while they fit ``budget_mb``."""
        n = len(self.data)
        keys = self._teacher_feature_keys
        itemsize = 2 if str(dtype) in ("float16", "fp16", "half") else 4
        budget = float(budget_mb) * 2**20
        chosen: list[str] = []
        for key in keys:  # feature sizes are known from the teacher's graph: choose before running it
            shape = tuple(self._teacher_symbols[key].shape[1:])
            if any(d is None for d in shape):
                logger.info("teacher feature %s has a dynamic shape %s; computed live", key, shape)
                continue
            size = n * int(np.prod(shape)) * itemsize
            if size <= budget:
                budget -= size
                chosen.append(key)
            else:
                logger.info("teacher feature %s (%.1f MiB) exceeds the cache budget; computed live",
                            key, size / 2**20)
        fn = self._teacher_fn([LOGITS] + chosen)
        arrays: dict[str, np.ndarray] = {}
        names = ["logits"] + [f"feature-{keys.index(k)}" for k in chosen]
        bs = max(int(self.settings.batch_size), 64)
        for start in range(0, n, bs):
            idx = np.arange(start, min(n, start + bs))
            outs = fn(self.data.take_x(idx))
            self.teacher_calls += 1
            for name, value in zip(names, outs):
                value = np.asarray(value, dtype=np.float32)
                if name not in arrays:
                    arrays[name] = np.empty((n,) + value.shape[1:], np.float32)
                arrays[name][start:start + len(idx)] = value
        return arrays, {"logits": None, **{f"feature-{keys.index(k)}": k for k in chosen}}

    # ---- training ------------------------------------------------------------------------------------
    def _resident_arrays(self) -> dict:
        """The training arrays and the in-memory cache as tensors on the device (built once), or ``{}``
        when they are too large for that or the cache is memory-mapped (the step then takes numpy rows)."""
        if self._resident is not None:
            return self._resident
        arrays = list(self.data.fields().values()) + list(self._cached.values())
        mapped = any(isinstance(a, np.memmap) for a in self._cached.values())
        if mapped or sum(a.nbytes for a in arrays) > RESIDENT_MAX_BYTES:
            self._resident = {}
            return self._resident
        with tf.device(self.device_name):
            x = self.data.x
            resident: dict = {"x": ({k: tf.constant(v) for k, v in x.items()} if isinstance(x, dict)
                                    else tf.constant(x))}
            if self.data.y is not None:
                resident["y"] = tf.constant(self.data.y)
            for key, value in self._cached.items():
                resident[("cache", key)] = tf.constant(value)
        self._resident = resident
        return resident

    def check_student(self, student: Any) -> ModelInputs:
        """Raise InvalidArchitecture when the student cannot take the data, or lacks a mapped layer or a
        block; returns how the student takes its inputs."""
        _check_model(student, "student")
        try:
            inputs = ModelInputs(student, "student")
            inputs.check(self.data)
        except ConfigError as exc:
            raise InvalidArchitecture(str(exc)) from None
        for plan in self.plans:
            try:
                for term in plan.terms:
                    if term.mapping is not None:
                        layer_output(student, term.mapping.student_layer, term.mapping.student_output, "student")
                for block in plan.block_names:
                    resolve_layer(student, block, "student")
            except LayerNotFound as exc:
                raise InvalidArchitecture(f"stage {plan.name!r}: {exc}") from None
        return inputs

    def _begin_trial(self, student: Any, seed: int) -> _Trial:
        student_inputs = self.check_student(student)
        self.matchers = FeatureMatchers(seed=seed)
        return _Trial(student_inputs, self.matchers, self.teacher_calls)

    def _end_trial(self, student: Any, trial: _Trial) -> int:
        # Per-trial kernels (the optimizer's new variables) would stay cached for the worker's life.
        tracing.clear_kernel_cache()
        return self.teacher_calls - trial.teacher_calls_before

    def _stage_parts(self, student: Any, plan: StagePlan, matchers: FeatureMatchers):
        """The stage's student output model, the teacher keys read from the cache and those computed
        live, and one ``(kind, weight, teacher key, student output index, projection)`` per loss term.
        Shapes are checked here, on the models' symbolic outputs, before anything is traced."""
        needs_logits = plan.needs_student_logits
        s_symbols, s_index = ([model_logits(student)] if needs_logits else []), {}
        specs = []
        for term in plan.terms:
            t_symbol = self._teacher_symbols[term.teacher_key]
            t_shape = tuple(t_symbol.shape)
            if term.mapping is None:
                s_symbol, index = s_symbols[0], 0
            else:
                m = term.mapping
                key = feature_key(m.student_layer, m.student_output)
                if key not in s_index:
                    s_index[key] = len(s_symbols)
                    s_symbols.append(layer_output(student, m.student_layer, m.student_output, "student"))
                index = s_index[key]
                s_symbol = s_symbols[index]
            s_shape = tuple(s_symbol.shape)
            same_inner = len(s_shape) == len(t_shape) and all(
                a is None or b is None or a == b for a, b in zip(s_shape[1:-1], t_shape[1:-1]))
            if not same_inner or (term.mapping is None and s_shape[-1] != t_shape[-1]):
                raise InvalidArchitecture(
                    f"stage {plan.name!r}, mapping {term.matcher_key}: student output shape {s_shape} cannot "
                    f"be matched to the teacher's {t_shape} (only the last dimension of a mapped layer may "
                    f"differ; logits must have the same width)"
                )
            proj = None if term.mapping is None else matchers.get(term.matcher_key, s_shape[-1], t_shape[-1])
            specs.append((term.kind, term.weight, term.teacher_key, index, proj))
        s_model = output_model(student, s_symbols, "student_outputs")
        keys = sorted(plan.teacher_keys, key=lambda k: "" if k is None else "~" + k)
        cached_keys = [k for k in keys if k in self._cached]
        live_keys = [k for k in keys if k not in self._cached]
        return s_model, cached_keys, live_keys, specs

    def _make_step(self, plan: StagePlan, s_model, student_inputs: ModelInputs, cached_keys, live_keys,
                   specs, optimizer, variables: list, resident: dict, jit_compile: bool):
        # The teacher's layers go straight into the step's graph (one graph per stage, no nested call).
        t_model = self._teacher_model(live_keys) if live_keys else None
        teacher_pack = self._teacher_inputs.pack
        temperature = plan.temperature
        need_labels = plan.add_origin_loss
        student_pack = student_inputs.pack
        watched = [v.value for v in variables]  # the backing tf.Variables (what a tape can watch)

        if resident:  # one argument, the batch's example indices; the rows are gathered on the device
            def batch(idx):
                x = tf.nest.map_structure(lambda t: tf.gather(t, idx), resident["x"])
                y = tf.gather(resident["y"], idx) if need_labels else None
                return x, y, {k: tf.gather(resident[("cache", k)], idx) for k in cached_keys}
        else:  # flat positional arguments (x, [labels], cached targets...): the cheapest call to bind
            def batch(x, *rest):
                y = rest[0] if need_labels else None
                return x, y, dict(zip(cached_keys, rest[1:] if need_labels else rest))

        def step(*args):
            x, y, targets = batch(*args)
            if t_model is not None:  # outside the tape: nothing of the teacher is recorded
                targets.update(zip(live_keys, _as_list(t_model(teacher_pack(x), training=False))))
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(watched)  # only what trains: no gradients recorded for frozen layers
                outs = _as_list(s_model(student_pack(x), training=True))
                loss = None
                for kind, weight, t_key, index, proj in specs:
                    s_val = outs[index] if proj is None else proj(outs[index])
                    term = distillation_loss(kind, s_val, targets[t_key], temperature)
                    term = term if weight == 1.0 else weight * term
                    loss = term if loss is None else loss + term
                if need_labels:
                    loss = loss + task_loss(outs[0], y)
            grads = tape.gradient(loss, variables)
            pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
            if not pairs:  # raised while tracing, i.e. before the first update
                raise InvalidArchitecture(
                    f"stage {plan.name!r}: the loss does not depend on any trainable variable (blocks "
                    f"{list(plan.block_names)} lie after every mapped student layer?)"
                )
            optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
            return loss

        # autograph off: the step is straight-line Python over fixed lists, and an error raised while
        # tracing (InvalidArchitecture above) then reaches the caller as itself, not as a StagingError.
        return tf.function(step, autograph=False, jit_compile=jit_compile or None)

    def _run_stage(self, student: Any, plan: StagePlan, trial: _Trial, order_seed: int) -> StageResult:
        s = self.settings
        student_inputs, matchers = trial.student_inputs, trial.matchers
        if plan.add_origin_loss and self.data.y is None:
            raise ConfigError("train_data.y", f"stage {plan.name!r}: add_origin_loss needs labels in the data")
        s_model, cached_keys, live_keys, specs = self._stage_parts(student, plan, matchers)
        log = LossLog(plan, self._check_every())
        t0 = time.perf_counter()
        with train_only(student, plan.block_names, "student") as trainable:
            variables = trainable + matchers.variables
            if not variables:
                raise InvalidArchitecture(f"stage {plan.name!r}: blocks {list(plan.block_names)} have no "
                                          f"trainable variables")
            optimizer = make_optimizer(s.optimizer, s.learning_rate, s.weight_decay)
            optimizer.build(variables)
            resident = self._resident_arrays()

            def make(jit: bool):
                return self._make_step(plan, s_model, student_inputs, cached_keys, live_keys, specs,
                                       optimizer, variables, resident, jit)

            y_all = self.data.y
            concrete = None
            for step, idx in self._steps(plan, order_seed):
                if resident:
                    args = [tf.constant(idx, tf.int32)]
                else:
                    args = [self.data.take_x(idx)]
                    if plan.add_origin_loss:
                        args.append(np.take(y_all, idx, axis=0))
                    args.extend(np.take(self._cached[k], idx, axis=0) for k in cached_keys)
                if concrete is None:  # every batch has the same shapes: one trace per stage
                    concrete, loss = self._first_step(make, args, plan)
                else:
                    loss = concrete(*args)
                if live_keys:
                    self.teacher_calls += 1
                log.record(step, loss)
        return log.result(time.perf_counter() - t0)

    def _first_step(self, make, args: list, plan: StagePlan):
        """Trace the stage's step and run it once: ``(concrete step, loss)``. With XLA, a step that does
        not compile (XLA compiles at the first call, before anything runs) is traced again without it."""
        if self.jit_compile:
            concrete = tracing.trace(make(True), args)
            try:
                return concrete, concrete(*args)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                    tf.errors.InternalError) as exc:
                logger.warning("stage %r: the step does not compile with XLA (%s); running it without XLA "
                               "for this distiller", plan.name, str(exc).strip().splitlines()[0][:200])
                self.jit_compile = False
        concrete = tracing.trace(make(False), args)
        return concrete, concrete(*args)
