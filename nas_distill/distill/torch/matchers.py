"""Feature matchers: learned projections from a student feature's width to the teacher's.

A student of hidden size 128 cannot be compared with a teacher of hidden size 384 directly; a
``Linear(128, 384)`` per mapping is trained together with the student (it lives in the optimizer, not
in the student, so it is never saved with the student). One projection is created per mapping the first
time the two widths are seen, and kept for the rest of the trial (every later stage reuses it).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch


class FeatureMatchers(torch.nn.Module):
    """Lazily created ``Linear(student_dim, teacher_dim)`` projections, one per mapping key.

    ``on_new_parameters`` is called with the parameters of each new projection so the caller can add
    them to its optimizer (matchers appear during the first step, after the optimizer exists).
    """

    def __init__(self, device: Optional[torch.device] = None):
        super().__init__()
        self.projections = torch.nn.ModuleDict()
        self.device = device
        self.on_new_parameters: Optional[Callable[[list], None]] = None
        # Initial weights of each projection (a copy, taken once at creation): lets a caller or a test
        # see how far the projections moved. Negligible cost: a few small matrices per trial.
        self.initial: dict[str, list[torch.Tensor]] = {}

    @staticmethod
    def _key(key: str) -> str:
        # ModuleDict keys may not contain '.', and mapping keys are module paths.
        return key.replace(".", "__")

    def forward(self, key: str, student: torch.Tensor, teacher_dim: int) -> torch.Tensor:
        student_dim = student.shape[-1]
        if student_dim == teacher_dim:
            return student
        k = self._key(key)
        proj = self.projections[k] if k in self.projections else None
        if proj is None:
            proj = torch.nn.Linear(student_dim, teacher_dim, device=self.device or student.device)
            self.projections[k] = proj
            self.initial[k] = [p.detach().clone() for p in proj.parameters()]
            if self.on_new_parameters is not None:
                self.on_new_parameters(list(proj.parameters()))
        elif proj.in_features != student_dim or proj.out_features != teacher_dim:
            raise ValueError(
                f"mapping {key!r}: widths changed from {proj.in_features}->{proj.out_features} to "
                f"{student_dim}->{teacher_dim} within one trial"
            )
        return proj(student)
