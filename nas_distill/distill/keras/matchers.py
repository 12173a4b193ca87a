"""Feature matchers: learned projections from a student feature's width to the teacher's (Keras).

A student feature of width 32 cannot be compared with a teacher feature of width 64 directly; a
``Dense(64)`` per mapping is trained together with the student (it lives in the optimizer's variable
list, not in the student, so it is never saved with the student). Unlike the torch engine, the widths are
known before the first step (from the models' symbolic outputs), so each projection is created and built
up front, before the training step is traced; it is kept for the rest of the trial (later stages reuse
it).
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np


class FeatureMatchers:
    """``Dense(teacher_dim)`` projections keyed by mapping, created when the widths differ.

    ``seed`` makes the initial weights reproducible without touching Keras' global random state.
    ``initial`` keeps a copy of each projection's first weights (a few small matrices per trial), so a
    caller or a test can see how far they moved.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.projections: dict[str, keras.layers.Dense] = {}
        self.initial: dict[str, list[np.ndarray]] = {}

    def get(self, key: str, student_dim: int, teacher_dim: int) -> Optional[keras.layers.Dense]:
        """The projection for mapping ``key`` (``None`` when the widths are equal)."""
        if student_dim == teacher_dim:
            return None
        proj = self.projections.get(key)
        if proj is None:
            init = keras.initializers.GlorotUniform(seed=self.seed * 7919 + len(self.projections))
            proj = keras.layers.Dense(int(teacher_dim), kernel_initializer=init,
                                      name=f"matcher_{len(self.projections)}")
            proj.build((None, int(student_dim)))
            self.projections[key] = proj
            self.initial[key] = [np.array(w) for w in proj.get_weights()]
        else:
            kernel_in, kernel_out = proj.kernel.shape
            if kernel_in != student_dim or kernel_out != teacher_dim:
                raise ValueError(f"mapping {key!r}: widths changed from {kernel_in}->{kernel_out} to "
                                 f"{student_dim}->{teacher_dim} within one trial")
        return proj

    @property
    def variables(self) -> list:
        return [v for proj in self.projections.values() for v in proj.trainable_weights]
