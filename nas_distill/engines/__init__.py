"""The training engines, one per framework, behind one interface (:class:`~.base.Engine`).

``engine("pytorch")`` / ``engine("tensorflow")`` gives the engine a search uses; :func:`engine_of` the
engine a model belongs to. Importing this package imports no framework: an engine imports its own when
it works, and :func:`engine_of` looks only at frameworks the process has already imported (a torch run
never imports Keras to ask whether a student is a Keras model).
"""

from __future__ import annotations

from typing import Any, Optional

from nas_distill.errors import ConfigError
from nas_distill.vocabulary import FRAMEWORKS

from .base import Engine

__all__ = ["Engine", "engine", "engine_of", "parameter_count"]

_ENGINES: dict[str, Engine] = {}


def engine(framework: str) -> Engine:
    """The engine of ``framework`` (``'pytorch'`` or ``'tensorflow'``, as ``model.framework`` spells it)."""
    found = _ENGINES.get(framework)
    if found is not None:
        return found
    if framework == FRAMEWORKS[0]:
        from .torch import TorchEngine as cls
    elif framework == FRAMEWORKS[1]:
        from .keras import KerasEngine as cls
    else:
        raise ConfigError("model.framework", f"expected 'pytorch' or 'tensorflow', got {framework!r}")
    _ENGINES[framework] = found = cls()
    return found


def engine_of(model: Any) -> Optional[Engine]:
    """The engine whose framework ``model`` is a model of (a torch module, a Keras model), else None."""
    for framework in FRAMEWORKS:
        candidate = engine(framework)
        if candidate.owns(model):
            return candidate
    return None


def parameter_count(model: Any, metrics: Any = None) -> Optional[int]:
    """Parameter count of a torch module / a Keras model / anything with ``num_parameters()``; else a
    'params' metric; else None."""
    owner = engine_of(model)
    if owner is not None:
        return owner.count_parameters(model)
    counter = getattr(model, "num_parameters", None)
    if callable(counter):
        try:
            return int(counter())
        except Exception:  # noqa: BLE001
            return None
    if isinstance(metrics, dict) and isinstance(metrics.get("params"), (int, float)):
        return int(metrics["params"])
    return None
