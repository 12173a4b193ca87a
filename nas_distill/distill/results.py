"""What a flash distillation returns, and how it fails: shared by the PyTorch and Keras engines.

No framework imports, so the orchestrator can catch :class:`DistillationDiverged` and read a
:class:`DistillResult` without knowing which engine produced it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nas_distill.errors import NasDistillError


class DistillationDiverged(NasDistillError, FloatingPointError):
    """The distillation loss became NaN or infinite. The orchestrator records the trial as failed."""


@dataclass
class StageResult:
    name: str
    kind: str
    steps: int
    seconds: float
    final_loss: float  # loss of the last step
    mean_loss_last: float  # mean loss over the last 10% of steps (less noisy)


@dataclass
class DistillResult:
    stages: list[StageResult] = field(default_factory=list)
    seconds: float = 0.0
    teacher_cache: str = "disabled"  # 'disk' | 'memory' | 'disabled' | 'bypassed'
    teacher_forward_calls: int = 0  # teacher forwards during this trial (0 with a warm, complete cache)

    @property
    def final_loss(self) -> float:
        return self.stages[-1].final_loss if self.stages else float("nan")

    def as_dict(self) -> dict:
        """JSON-able summary (for the trial's user attributes)."""
        d = asdict(self)
        d["final_loss"] = self.final_loss
        return d


def stage_result(name: str, kind: str, steps: int, seconds: float, losses: list[float]) -> StageResult:
    """A StageResult from the losses recorded during a stage (last value, mean of the last 10%)."""
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    return StageResult(name, kind, steps, seconds, losses[-1] if losses else float("nan"),
                       float(sum(tail) / len(tail)))
