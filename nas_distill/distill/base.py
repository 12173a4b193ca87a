"""What the PyTorch and Keras flash distillers share: the stage loop, the teacher cache, the divergence
check and the optimizer names.

A framework's distiller subclasses :class:`FlashDistillerBase` and supplies the framework's parts: its
data (``self.data``, with ``len()``), its cache module (the teacher fingerprint), its batch-index
generator, how a trial begins and ends (:meth:`_begin_trial` / :meth:`_end_trial`) and how one stage
trains (:meth:`_run_stage`, which walks :meth:`_steps` and records each loss in a :class:`LossLog`).

No framework import here: the orchestrator and both engines read it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any, Callable, Iterator, Optional, Sequence

from nas_distill.distill import cache_store
from nas_distill.distill.plans import StagePlan, default_stage, plan_stage
from nas_distill.distill.results import DistillationDiverged, DistillResult, StageResult, stage_result
from nas_distill.errors import ConfigError
from nas_distill.vocabulary import KNOWLEDGE_TRANSFER, OPTIMIZERS


def optimizer_key(name: Any) -> str:
    """The canonical optimizer name; ConfigError naming ``flash_distillation.optimizer`` otherwise."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ConfigError("flash_distillation.optimizer",
                          f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return key


def stage_seed(seed: int, index: int) -> int:
    """The batch-order seed of stage ``index`` of a trial seeded ``seed``."""
    return int(seed) * 1009 + index


class LossLog:
    """The losses of one stage, read every ``check_every`` steps (and at the last): reading a loss waits
    for the device, so an accelerator reads it rarely. A NaN / infinite loss stops the trial."""

    def __init__(self, plan: StagePlan, check_every: int):
        self.plan = plan
        self.check_every = check_every
        self.values: list[float] = []

    def record(self, step: int, loss: Any) -> None:
        if step % self.check_every and step != self.plan.train_steps - 1:
            return
        value = float(loss)
        if not math.isfinite(value):
            raise DistillationDiverged(
                f"stage {self.plan.name!r}, step {step}: the loss is {value}; lower the learning "
                f"rate or check the data and the layer mappings"
            )
        self.values.append(value)

    def result(self, seconds: float) -> StageResult:
        return stage_result(self.plan.name, self.plan.kind, self.plan.train_steps, seconds, self.values)


class FlashDistillerBase:
    """One teacher and one training set for every trial of a study; see the engines' subclasses."""

    #: ``batch_indices(n, batch_size, steps, seed)`` of the engine's data module.
    batch_indices: Callable[[int, int, int, int], Iterator[Any]]
    #: the engine's cache module (its ``fingerprint``, and ``fcntl``, None for the lock-free path)
    cache_module: Any
    device_type: str
    data: Any

    def _init_common(self, settings: Any, cache_dir: Optional[str], stages: Optional[Sequence[Any]]) -> None:
        if settings is None:
            from nas_distill.settings import FlashSettings

            settings = FlashSettings()
        self.settings = settings
        #: Called before every training step when set (the pipeline pauses there while a latency is
        #: being measured on the machine).
        self.before_step: Optional[Callable[[], None]] = None
        #: Called after every training step with ``(steps done, steps of the trial)``, counted over every
        #: stage (the pipeline evaluates the student at its rungs there; see :meth:`rung_steps`). What it
        #: raises ends the trial's training; the student is in training mode when it is called.
        self.after_step: Optional[Callable[[int, int], None]] = None
        self._steps_done = 0
        self.cache_dir = cache_dir if cache_dir is not None else settings.teacher_cache.dir
        raw_stages = list(stages if stages is not None else settings.stages) or [default_stage()]
        self.plans = [plan_stage(s) for s in raw_stages]
        self._cached: dict = {}  # teacher key (None = logits) -> array indexed by example index
        self.matchers: Any = None  # the last trial's projections (inspection only)
        self.cache_status = "pending"
        self.prepare_seconds = 0.0

    @classmethod
    def from_config(cls, config: Any, teacher: Any, train_data: Any, **kwargs: Any):
        """The distiller of a study: ``config.flash`` settings and stages, and the teacher cache in
        ``config.flash.teacher_cache.dir`` or, by default, ``<config.study.run_dir>/teacher_cache``
        (the folder every worker of the study on this machine shares)."""
        flash = config.flash
        cache_dir = flash.teacher_cache.dir
        if cache_dir is None:
            cache_dir = os.path.join(config.study.run_dir, "teacher_cache")
        return cls(teacher, train_data, flash, cache_dir=cache_dir, **kwargs)

    # ---- teacher cache ------------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """Augmented data: the teacher's outputs differ per read, so nothing is cached."""
        raise NotImplementedError

    def _cache_enabled(self) -> bool:
        return cache_store.cache_wanted(self.settings.teacher_cache, self.live)

    def _device_scope(self):
        """The context the engine's work runs in (a TensorFlow device scope; nothing for torch)."""
        return contextlib.nullcontext()

    def _fingerprint(self, extra: dict) -> str:
        raise NotImplementedError

    def _run_teacher_over_data(self, budget_mb: float, dtype: str):
        raise NotImplementedError

    def _hold_cached(self, arrays: dict) -> dict:
        """The cache arrays as the training steps read them."""
        return arrays

    def prepare(self) -> str:
        """Load or build the teacher cache (once per distiller). Returns the cache status:
        ``'disk'``, ``'memory'`` (no folder), ``'disabled'`` or ``'bypassed'`` (augmentation)."""
        if self.cache_status != "pending":
            return self.cache_status
        start = time.perf_counter()
        if not self._cache_enabled():
            self.cache_status = "bypassed" if self.live else "disabled"
            return self.cache_status
        with self._device_scope():
            entry, self.cache_status = cache_store.obtain_entry(
                self.cache_dir, self.settings.teacher_cache, self.device_type, self._fingerprint,
                self._run_teacher_over_data, lock=self.cache_module.fcntl is not None,
            )
        self._cached = self._hold_cached(entry.by_key())
        self.prepare_seconds = time.perf_counter() - start
        return self.cache_status

    # ---- one trial ----------------------------------------------------------------------------------
    def _begin_trial(self, student: Any, seed: int) -> Any:
        """Check and set up ``student`` for training; returns what the stages and the end need."""
        raise NotImplementedError

    def _end_trial(self, student: Any, trial: Any) -> int:
        """Undo :meth:`_begin_trial`'s temporary changes; returns the teacher forwards of the trial."""
        raise NotImplementedError

    def _run_stage(self, student: Any, plan: StagePlan, trial: Any, order_seed: int) -> StageResult:
        raise NotImplementedError

    def _check_every(self) -> int:
        return 1 if self.device_type == "cpu" else 25

    def _steps(self, plan: StagePlan, order_seed: int) -> Iterator[tuple[int, Any]]:
        """``(step, example indices)`` of the stage, pausing at :attr:`before_step` before each."""
        batches = type(self).batch_indices(len(self.data), int(self.settings.batch_size), plan.train_steps,
                                           order_seed)
        for step, idx in enumerate(batches):
            if self.before_step is not None:
                self.before_step()
            yield step, idx
            self._steps_done += 1
            if self.after_step is not None:
                self.after_step(self._steps_done, self.total_steps)

    @property
    def total_steps(self) -> int:
        """The training steps of one trial, every stage included."""
        return sum(plan.train_steps for plan in self.plans)

    def rung_steps(self, fractions: Sequence[float]) -> list[int]:
        """The steps (counted over every stage) at which a trial is evaluated part-way: each fraction of
        the regular-distillation steps, after every knowledge-transfer stage. A student's predictions
        mean nothing before its output layer has trained on the task, so no rung falls in knowledge
        transfer; a trial of knowledge transfer alone places its rungs over all its steps."""
        first = 0
        for plan in self.plans:
            if plan.kind != KNOWLEDGE_TRANSFER:
                break
            first += plan.train_steps
        if first == self.total_steps:
            first = 0
        span = self.total_steps - first
        steps = {first + min(max(1, round(f * span)), span - 1) for f in fractions if span > 1}
        return sorted(steps)

    def distill(self, student: Any, seed: int = 0) -> DistillResult:
        """Train ``student`` in place through every stage; returns timings and final losses.

        Same student weights + same ``seed`` give the same results on CPU. Raises
        :class:`DistillationDiverged` on a NaN/inf loss and InvalidArchitecture when the student lacks a
        mapped layer or block, or cannot be matched to the teacher.
        """
        self.prepare()
        self._steps_done = 0
        trial = self._begin_trial(student, int(seed))
        result = DistillResult(teacher_cache=self.cache_status)
        start = time.perf_counter()
        calls = 0
        try:
            with self._device_scope():
                for i, plan in enumerate(self.plans):
                    result.stages.append(self._run_stage(student, plan, trial, stage_seed(seed, i)))
        finally:
            calls = self._end_trial(student, trial)
        result.seconds = time.perf_counter() - start
        result.teacher_forward_calls = calls
        return result
