"""nas-distill: auto-distillation on a shared Optuna study.

The public names follow the seed API (``AutoDistillation``, the searchers, ``create_search_space_pool``,
``find_pareto_front``). They are resolved lazily so that ``import nas_distill`` (and the CLI's ``--help``)
never imports torch, tensorflow or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "AutoDistillation": "nas_distill.autodistill",
    "AutoDistillationConfig": "nas_distill.config",
    "FlashDistillationConfig": "nas_distill.config",
    "Metric": "nas_distill.config",
    "Searcher": "nas_distill.search.searchers",
    "GridSearcher": "nas_distill.search.searchers",
    "RandomSearcher": "nas_distill.search.searchers",
    "BayesianOptimizationSearcher": "nas_distill.search.searchers",
    "create_search_space_pool": "nas_distill.search.space",
    "SearchSpace": "nas_distill.search.space",
    "find_pareto_front": "nas_distill.search.pareto",
    "hypervolume": "nas_distill.search.pareto",
    "ConfigError": "nas_distill.errors",
    "InvalidArchitecture": "nas_distill.errors",
    "SearchSpaceExhausted": "nas_distill.errors",
    "SearchFailed": "nas_distill.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nas_distill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
