"""Capture named modules' outputs with forward hooks.

Only the modules a stage maps get a hook (a hook costs a Python call per forward). Module names are
exact ``named_modules()`` paths; a name the model lacks raises :class:`InvalidArchitecture` naming it,
so a candidate whose depth cannot host a mapping fails as a trial instead of training nonsense.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from nas_distill.distill.mappings import Output, select_output
from nas_distill.errors import InvalidArchitecture


def resolve_modules(model: torch.nn.Module, names: Iterable[str], role: str = "model") -> dict:
    """``{name: module}`` for exact module paths; raises InvalidArchitecture on the first missing one."""
    modules = dict(model.named_modules())
    found = {}
    for name in names:
        if name not in modules:
            near = [m for m in modules if m and m.split(".")[-1] == name.split(".")[-1]][:3]
            hint = f" (modules with the same last part: {near})" if near else ""
            raise InvalidArchitecture(f"{role} has no module named {name!r}{hint}")
        found[name] = modules[name]
    return found


class StopForward(Exception):
    """Raised by a hook once every wanted output is captured, to skip the rest of the forward pass."""


class OutputCapture:
    """Forward hooks storing the raw output of each named module in ``self.outputs[name]``.

    Use as a context manager (hooks are removed on exit) or call :meth:`remove`. The stored value is the
    module's whole return value; :meth:`get` applies a mapping's ``output`` selector to it.

    ``stop_early=True``: when the caller needs nothing but these outputs (a knowledge-transfer stage
    without logits), the hook that completes the set raises :class:`StopForward`, so the layers after
    the deepest mapped one are never computed. Run the forward inside :meth:`run` to catch it.
    """

    def __init__(self, model: torch.nn.Module, names: Iterable[str], role: str = "model",
                 stop_early: bool = False, only_in_run: bool = False):
        self.outputs: dict[str, Any] = {}
        self._handles = []
        self._wanted = len(set(names))
        self.stop_early = stop_early and self._wanted > 0
        # only_in_run: the hooks act only inside run(), so that another forward while they are installed
        # (the pipeline evaluating the student at a rung, mid-stage) is neither captured nor stopped.
        self.only_in_run = only_in_run
        self._running = False
        for name, module in resolve_modules(model, sorted(set(names)), role).items():
            self._handles.append(module.register_forward_hook(self._make_hook(name)))

    def _make_hook(self, name: str):
        outputs = self.outputs

        def hook(module, args, output):
            if self.only_in_run and not self._running:
                return
            outputs[name] = output
            if self.stop_early and len(outputs) == self._wanted:
                raise StopForward

        return hook

    def run(self, fn, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)``; ``None`` when the forward was stopped early (outputs are captured)."""
        self._running = True
        try:
            return fn(*args, **kwargs)
        except StopForward:
            return None
        finally:
            self._running = False

    def get(self, name: str, output: Output = None) -> torch.Tensor:
        if name not in self.outputs:
            raise RuntimeError(f"module {name!r} was not called during the forward pass")
        value = select_output(self.outputs[name], output)
        if value is None:
            raise InvalidArchitecture(
                f"output {output!r} of module {name!r} is None; attention weights, for one, are only "
                f"returned by the eager attention implementation (see use_eager_attention)"
            )
        if not isinstance(value, torch.Tensor):
            raise InvalidArchitecture(
                f"output {output!r} of module {name!r} is a {type(value).__name__}, not a tensor"
            )
        return value

    def clear(self) -> None:
        self.outputs.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs.clear()

    def __enter__(self) -> "OutputCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def use_eager_attention(model: torch.nn.Module, layers_and_outputs: Iterable[tuple[str, Output]]) -> Any:
    """Switch a transformers model to eager attention when a mapping selects an output of an attention
    module (SDPA / flash kernels return ``None`` for the attention probabilities).

    Returns the previous implementation name to restore later, or ``None`` when nothing changed.
    """
    modules = dict(model.named_modules())
    wants = any(
        output is not None and "attention" in type(modules.get(layer)).__name__.lower()
        for layer, output in layers_and_outputs
    )
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if not wants or current in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        return None
    model.set_attn_implementation("eager")
    return current
