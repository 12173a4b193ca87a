"""The TensorFlow / Keras 3 flash-distillation engine (the twin of ``nas_distill.distill.torch``).

Public entry points::

    KerasFlashDistiller(teacher, (x, y), flash_settings, cache_dir=...)   # once per study and worker
    KerasFlashDistiller.from_config(config, teacher, (x, y))               # cache in <run_dir>/teacher_cache
        .prepare()                      # load or build the shared teacher cache (optional; lazy)
        .distill(student, seed=...)     # -> DistillResult (per-stage timings, final losses)
    evaluate(model, (x, y), metrics, settings=config.evaluation)         # accuracy, latency, params, size

Importing this package imports TensorFlow and Keras (never torch); ``import nas_distill`` imports
neither. Keras must run on the TensorFlow backend (``KERAS_BACKEND=tensorflow``, Keras' default).
"""

from .distiller import DistillationDiverged, DistillResult, KerasFlashDistiller, StageResult
from .evaluate import evaluate
from .losses import LOSS_TYPES, distillation_loss, task_loss

__all__ = [
    "KerasFlashDistiller",
    "DistillResult",
    "StageResult",
    "DistillationDiverged",
    "evaluate",
    "LOSS_TYPES",
    "distillation_loss",
    "task_loss",
]
