"""Tracing a trial's training step without leaving TensorFlow state behind in a long-lived worker.

A worker distils hundreds of students in one process; every trial traces new step functions. Two pieces
of TensorFlow state outlive them unless released (measured on TensorFlow 2.21 / Keras 3.15 with the
Keras digits task: about 5 MiB of RSS per trial without these two releases, see
``tests/keras/test_keras_memory.py``):

1. **Custom-gradient registrations.** Keras' optimizer sums the gradients with
   ``tf.distribute.get_replica_context().all_reduce`` (a no-op sum under the default strategy), which is
   a ``tf.custom_gradient``. In graph mode ``tf.custom_gradient`` registers its gradient function in
   TensorFlow's global gradient registry under a unique ``CustomGradient-<uid>`` name and never removes
   it; that function's closure holds the traced graph's tensors, so every step graph (a few MiB of
   Python ``Operation`` / ``Tensor`` objects) stayed alive for the life of the process. The registration
   is only read while the gradient of that graph is built, i.e. during the trace itself (the step
   computes its gradients inside the trace), so :func:`trace` removes the ones that belong to the
   graph it traced as soon as the trace is done.
2. **The eager kernel cache.** TensorFlow caches one kernel per distinct op and attributes; creating
   variables (the optimizer's slots, every trial) adds entries that are never evicted (about 0.6 MiB per
   trial with AdamW). :func:`clear_kernel_cache` empties it once per trial; the kernels still in use are
   rebuilt on their next call (milliseconds).
"""

from __future__ import annotations

import logging
import types
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)


def _gradient_registry() -> dict | None:
    """TensorFlow's global gradient registry (name -> entry), or None if this TensorFlow lacks it."""
    from tensorflow.python.framework import ops

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


def _graphs_in_closure(fn: Any, depth: int = 3) -> set:
    """The graphs of the tensors a registered gradient function holds (through nested closures)."""
    graphs: set = set()
    if depth < 0 or not isinstance(fn, types.FunctionType):
        return graphs
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, types.FunctionType):
                graphs |= _graphs_in_closure(v, depth - 1)
            else:
                graph = getattr(v, "graph", None)
                if graph is not None and hasattr(v, "op"):
                    graphs.add(graph)
    return graphs


def _within(graph: Any, root: Any) -> bool:
    """``graph`` is ``root`` or a graph nested in it (a cond / while body inside the step)."""
    seen = 0
    while graph is not None and seen < 64:
        if graph is root:
            return True
        graph, seen = getattr(graph, "outer_graph", None), seen + 1
    return False


def release_custom_gradients(graph: Any, names_before: set) -> int:
    """Remove the ``CustomGradient-*`` registrations made since ``names_before`` whose function holds
    tensors of ``graph`` (another thread's registrations are left alone). Returns how many."""
    registry = _gradient_registry()
    if registry is None:
        return 0
    released = 0
    for name in [n for n in list(registry) if n not in names_before and str(n).startswith("CustomGradient-")]:
        entry = registry.get(name)
        fn = entry.get("type") if isinstance(entry, dict) else None
        if any(_within(g, graph) for g in _graphs_in_closure(fn)):
            registry.pop(name, None)
            released += 1
    return released


def trace(fn: Callable, args: Sequence[Any]) -> Any:
    """Trace the ``tf.function`` ``fn`` for ``args`` and return its concrete function, releasing the
    custom-gradient registrations the trace made (see the module docstring)."""
    registry = _gradient_registry()
    before = set(registry) if registry is not None else set()
    concrete = fn.get_concrete_function(*args)
    released = release_custom_gradients(concrete.graph, before)
    logger.debug("traced %s; released %d custom-gradient registrations", getattr(fn, "__name__", fn), released)
    return concrete


def clear_kernel_cache() -> None:
    """Empty TensorFlow's eager kernel cache (see the module docstring); a no-op if the API is gone."""
    from tensorflow.python.eager import context

    clear = getattr(context.context(), "clear_kernel_cache", None)
    if clear is not None:
        clear()
