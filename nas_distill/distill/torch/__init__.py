"""The PyTorch flash-distillation engine.

Public entry points::

    FlashDistiller(teacher, train_data, flash_settings, cache_dir=...)   # once per study and worker
    FlashDistiller.from_config(config, teacher, train_data)              # same; cache in <run_dir>/teacher_cache
        .prepare()                      # load or build the shared teacher cache (optional; lazy)
        .distill(student, seed=...)     # -> DistillResult (per-stage timings, final losses)

Importing this package imports torch; ``import nas_distill`` does not.
"""

from .distiller import DistillationDiverged, DistillResult, FlashDistiller, StageResult
from .losses import LOSS_TYPES, distillation_loss, task_loss

__all__ = [
    "FlashDistiller",
    "DistillResult",
    "StageResult",
    "DistillationDiverged",
    "LOSS_TYPES",
    "distillation_loss",
    "task_loss",
]
