"""Stage plans: a ``DistillStage`` normalised into weighted loss terms (no framework imports).

Both engines run the same plan, so a config's stages mean the same thing in PyTorch and in Keras: which
outputs are compared, with which loss type and weight, at which temperature, for how many steps, and
which blocks of the student train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .losses_common import canonical_loss_type
from .mappings import LayerMapping, Output, parse_layer_mapping

LOGITS = None  # the key of the model's logits among teacher outputs (a feature key is a string)


def feature_key(layer: str, output: Output) -> str:
    """A teacher (or student) output's stable name: ``'encoder.layer.1'`` or ``'encoder.layer.1@0'``."""
    return layer if output is None else f"{layer}@{output}"


@dataclass(frozen=True)
class LossTerm:
    """One weighted loss between a student output and a teacher output (``None`` side = logits)."""

    kind: str
    weight: float
    mapping: Optional[LayerMapping]

    @property
    def teacher_key(self) -> Optional[str]:
        m = self.mapping
        return LOGITS if m is None else feature_key(m.teacher_layer, m.teacher_output)

    @property
    def matcher_key(self) -> str:
        m = self.mapping
        if m is None:
            return "logits"
        return feature_key(m.student_layer, m.student_output) + "->" + self.teacher_key


@dataclass(frozen=True)
class StagePlan:
    name: str
    kind: str
    block_names: tuple[str, ...]
    terms: tuple[LossTerm, ...]
    add_origin_loss: bool
    train_steps: int
    temperature: float

    @property
    def student_layers(self) -> set[str]:
        return {t.mapping.student_layer for t in self.terms if t.mapping is not None}

    @property
    def teacher_keys(self) -> set:
        return {t.teacher_key for t in self.terms}

    @property
    def needs_student_logits(self) -> bool:
        return self.add_origin_loss or any(t.mapping is None for t in self.terms)


def _broadcast(values: Sequence, n: int, what: str, stage: str) -> list:
    values = list(values or ())
    if len(values) == 1 and n > 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"stage {stage!r}: {len(values)} {what} for {n} mappings")
    return values


def plan_stage(stage: Any) -> StagePlan:
    """Normalise a ``DistillStage`` (or any object with its fields) into loss terms.

    Mappings present: one term per mapping; ``loss_types`` one per mapping or one for all (default
    ``MSE``); ``loss_weights`` likewise (default ``1/n``). No mappings: the models' logits, with each of
    ``loss_types`` (default ``KL``) weighted by ``loss_weights`` (default ``1/len(loss_types)``).
    """
    name = getattr(stage, "name", "stage")
    kind = getattr(stage, "kind", "regular_distillation")
    mappings = [parse_layer_mapping(m, f"{name}.mappings") for m in (getattr(stage, "mappings", ()) or ())]
    types = list(getattr(stage, "loss_types", ()) or ())
    weights = list(getattr(stage, "loss_weights", ()) or ())
    if mappings:
        n = len(mappings)
        types = _broadcast(types or ["MSE"], n, "loss types", name)
        weights = _broadcast(weights or [1.0 / n], n, "loss weights", name)
        terms = [LossTerm(canonical_loss_type(t), float(w), m) for t, w, m in zip(types, weights, mappings)]
    else:
        types = types or ["KL"]
        weights = _broadcast(weights or [1.0 / len(types)], len(types), "loss weights", name)
        terms = [LossTerm(canonical_loss_type(t), float(w), None) for t, w in zip(types, weights)]
    steps = int(getattr(stage, "train_steps", 100))
    temperature = float(getattr(stage, "temperature", 1.0))
    if steps < 0 or temperature <= 0:
        raise ValueError(f"stage {name!r}: train_steps must be >= 0 and temperature > 0")
    return StagePlan(name, kind, tuple(getattr(stage, "block_names", ()) or ()), tuple(terms),
                     bool(getattr(stage, "add_origin_loss", False)), steps, temperature)


def default_stage() -> Any:
    """Regular distillation on logits (KL, T=1) plus nothing else, 100 steps: used when none is given."""
    from types import SimpleNamespace

    return SimpleNamespace(name="regular_distillation", kind="regular_distillation", block_names=(),
                           mappings=(), loss_types=("KL",), loss_weights=(1.0,), add_origin_loss=False,
                           train_steps=100, temperature=1.0)
