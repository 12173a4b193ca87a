"""The PyTorch engine: torch modules and Hugging Face models, torch-style datasets.

torch is imported inside the methods: importing this module imports no framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from nas_distill.errors import ConfigError
from nas_distill.vocabulary import METRICS

from .base import Engine, first_tuple_rows, loaded, numpy_rows


class TorchEngine(Engine):
    framework = "pytorch"
    takes_compute_metrics = True

    metrics = METRICS

    # ---- models
    def owns(self, model: Any) -> bool:
        torch = loaded("torch")
        return torch is not None and isinstance(model, torch.nn.Module)

    def count_parameters(self, model: Any) -> int:
        from nas_distill.distill.torch.evaluate import count_params

        return count_params(model)

    # ---- training and measuring
    def distiller_class(self) -> type:
        from nas_distill.distill.torch.distiller import FlashDistiller

        return FlashDistiller

    def evaluate(self, model: Any, data: Any, metrics: Sequence[str], *, settings: Any = None,
                 metric_fn: Any = None, compute_metrics: Any = None) -> dict[str, float]:
        from nas_distill.distill.torch.evaluate import evaluate

        return evaluate(model, data, metrics, settings=settings, metric_fn=metric_fn,
                        compute_metrics=compute_metrics)

    def compute_metrics_names(self, model: Any, data: Any, settings: Any, compute: Any) -> list[str]:
        """The keys ``compute`` returns for the first evaluation batch of ``data`` through ``model``."""
        import torch

        from nas_distill.distill.torch.evaluate import eval_pass
        from nas_distill.evaluate import call_compute_metrics

        batch = int(getattr(settings, "batch_size", 64) or 64)
        n = min(batch, len(data))
        head = torch.utils.data.Subset(data, range(n)) if n < len(data) else data
        result = eval_pass(model, head, batch, getattr(settings, "device", "auto"), keep_logits=True)
        return list(call_compute_metrics(compute, result.logits, result.labels))

    # ---- student files
    def save(self, model: Any, folder: Path) -> None:
        from safetensors.torch import save_file

        # Shared / non-contiguous tensors are copied: safetensors stores plain tensors only.
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))

    def load(self, folder: Path, model_cls: Any = None, *, source: str = "", **kwargs: Any) -> Any:
        return model_cls.from_pretrained(str(folder), **kwargs)

    # ---- the dry run
    def check_devices(self, flash_device: Any, eval_device: Any, training: bool, evaluating: bool) -> None:
        _check_device(flash_device, "flash_distillation.device", training)
        _check_device(eval_device, "evaluation.device", evaluating)

    def dataset_rows(self, data: Any, field: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        if isinstance(data, tuple):
            return numpy_rows(data, field)
        return _torch_rows(data, field)

    def first_rows(self, data: Any, n: int) -> Any:
        if isinstance(data, tuple):
            return first_tuple_rows(data, n)
        from nas_distill.distill.torch.data import read_example, unwrap_dataset

        dataset = unwrap_dataset(data)
        return [read_example(dataset, i) for i in range(min(n, len(dataset)))]

    def layer_names(self, model: Any) -> Optional[set[str]]:
        named = getattr(model, "named_modules", None)
        return {name for name, _ in named()} if callable(named) else None

    def missing_layer(self, model: Any, names: Optional[set[str]], name: str, role: str) -> Optional[str]:
        if names is None:
            return None
        import difflib

        from nas_distill.builders import check_layers
        from nas_distill.errors import InvalidArchitecture

        try:
            check_layers(model, [name], role)
        except InvalidArchitecture:
            hint = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
            return f"the {role} has no module named {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        return None


def _check_device(device: Any, field: str, used: bool) -> None:
    """The configured torch device exists and takes a tensor (``'gpu'`` is no torch device)."""
    if not used or device in (None, "auto"):
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(field, f"{device!r} is not a device torch knows; use 'auto', 'cpu', 'cuda', "
                                 f"'cuda:<index>' or 'mps'") from None
    try:
        torch.zeros(1, device=dev)
    except Exception as exc:  # noqa: BLE001 - not compiled in, no such GPU, driver missing
        raise ConfigError(field, f"{device!r} is not usable on this machine: "
                                 f"{' '.join(str(exc).split())[:200]}") from None


def _torch_rows(data: Any, field: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Batches of numpy fields from a torch-style dataset: whole columns at once for a Hugging Face
    dataset, else one example at a time (no collation: memory stays one example)."""
    from nas_distill.distill.torch.data import _columns, read_example, unwrap_dataset

    try:
        dataset = unwrap_dataset(data)
        n = len(dataset)
    except (TypeError, ValueError) as exc:
        raise ConfigError(field, str(exc)) from None
    if n == 0:
        return
    columns = _columns(dataset)
    if columns is not None:
        yield 0, {k: _numpy(v) for k, v in columns.items()}
        return
    for i in range(n):
        try:
            example = read_example(dataset, i)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise ConfigError(field, f"example {i} cannot be read: {exc}") from None
        yield i, {k: _numpy(v)[None] for k, v in example.items()}


def _numpy(tensor: Any) -> np.ndarray:
    if tensor.is_floating_point() and tensor.dtype.itemsize < 4:  # bfloat16 has no numpy dtype
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()
