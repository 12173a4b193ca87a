"""Stage 3 of a trial for PyTorch models: measure a trained student.

The metrics, their names (``eval_`` prefix accepted) and ``compute_metrics`` are described in
:mod:`nas_distill.evaluate`; this module measures them on torch modules and torch-style datasets.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from nas_distill.evaluate import call_compute_metrics, measure_each
from nas_distill.vocabulary import METRICS, base_metric, check_metric_names

from .data import CollatedData, prepare_data
from .distiller import input_keys, model_logits, resolve_device
from .losses import task_loss

__all__ = ["METRICS", "evaluate", "latency", "eval_pass", "count_params", "model_size_mb"]


def _settings(settings: Any) -> Any:
    if settings is None:
        from nas_distill.settings import EvaluationSettings

        return EvaluationSettings()
    return settings


@contextlib.contextmanager
def torch_threads(threads: Optional[int]):
    """Run the block with ``torch.set_num_threads(threads)`` (``None``: unchanged), restored after."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def model_size_mb(model: Any) -> float:
    tensors = list(model.parameters()) + list(model.buffers())
    return float(sum(t.numel() * t.element_size() for t in tensors) / 2**20)


# The evaluation set is the same object in every trial of a worker: collate it once (one entry, holding
# a reference to the data so its id cannot be reused by another object).
_LAST_EVAL: list = [None, None]


def _eval_fields(data: Any):
    if _LAST_EVAL[0] is data:
        return _LAST_EVAL[1]
    prepared = prepare_data(data)
    if not isinstance(prepared, CollatedData):
        # An evaluation set must be stable: augmenting it would make the metric noise.
        raise ValueError("the evaluation data returns different values on two reads of the same index")
    _LAST_EVAL[:] = [data, prepared]
    return prepared


@dataclass
class EvalPass:
    """What one forward pass over the evaluation data gives: argmax class ids (or squeezed values for a
    single output, i.e. regression), labels (None without), the logits when asked for, the task loss
    (None without labels or when not asked for)."""

    predictions: Any
    labels: Any
    logits: Any = None
    loss: Optional[float] = None


def eval_pass(model: Any, data: Any, batch_size: int = 64, device: Any = "auto", *,
              keep_logits: bool = False, with_loss: bool = False) -> EvalPass:
    """One pass of ``model`` over ``data`` in order (inference mode, eval mode, restored after)."""
    import numpy as np

    dev = resolve_device(device)
    prepared = _eval_fields(data)
    keys = input_keys(model, list(prepared.fields))
    labels_all = prepared.fields.get("labels")
    with_loss = with_loss and labels_all is not None
    model.to(dev)
    was_training = model.training
    model.eval()
    preds, kept = [], []
    loss_sum, loss_count = 0.0, 0
    try:
        with torch.inference_mode():
            for start in range(0, len(prepared), batch_size):
                idx = torch.arange(start, min(len(prepared), start + batch_size))
                batch = prepared.batch(idx)
                logits = model_logits(model(**{k: batch[k].to(dev) for k in keys})).float()
                if keep_logits:
                    kept.append(logits.cpu().numpy())
                if with_loss:
                    # task_loss is a mean over the batch's counted positions: weight it back by their
                    # number, so the result is the mean over the whole set whatever the batch size.
                    labels = batch["labels"].to(dev)
                    count = int(labels.numel()) if labels.dtype.is_floating_point else int((labels != -100).sum())
                    if count:
                        loss_sum += float(task_loss(logits, labels)) * count
                        loss_count += count
                if logits.shape[-1] == 1:
                    preds.append(logits.reshape(-1).cpu().numpy())
                else:
                    preds.append(logits.argmax(-1).cpu().numpy())
    finally:
        model.train(was_training)
    return EvalPass(
        predictions=np.concatenate(preds),
        labels=None if labels_all is None else labels_all.cpu().numpy(),
        logits=np.concatenate(kept) if keep_logits else None,
        loss=(loss_sum / loss_count if loss_count else float("nan")) if with_loss else None,
    )


def _accuracy_of(result: EvalPass, metric_fn: Optional[Callable[[Any, Any], float]] = None) -> float:
    if metric_fn is not None:
        return float(metric_fn(result.predictions, result.labels))
    if result.labels is None:
        raise ValueError("accuracy needs 'labels' in the evaluation data (or pass metric_fn)")
    return float((result.predictions.reshape(result.labels.shape) == result.labels).mean())


def latency(model: Any, data: Any, settings: Any = None) -> float:
    """Milliseconds per forward of a batch of ``latency_batch_size`` examples taken from ``data``.

    ``latency_warmup`` untimed runs, then the median of ``latency_repeats`` runs timed with
    ``time.perf_counter`` (CUDA synchronised), under ``torch.set_num_threads(threads)`` (restored).
    The median, not the mean, so one scheduler hiccup does not move the metric.
    """
    s = _settings(settings)
    dev = resolve_device(s.device)
    prepared = _eval_fields(data)
    n = min(int(s.latency_batch_size), len(prepared))
    idx = torch.arange(n) if n == int(s.latency_batch_size) else torch.arange(int(s.latency_batch_size)) % n
    batch = prepared.batch(idx)
    inputs = {k: batch[k].to(dev) for k in input_keys(model, list(batch))}
    model.to(dev)
    was_training = model.training
    model.eval()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    try:
        with torch_threads(s.threads), torch.inference_mode():
            for _ in range(int(s.latency_warmup)):
                model(**inputs)
            sync()
            for _ in range(max(1, int(s.latency_repeats))):
                t0 = time.perf_counter()
                model(**inputs)
                sync()
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)


def evaluate(model: Any, data: Any, metrics: Sequence[str] = ("accuracy",), settings: Any = None,
             metric_fn: Optional[Callable[[Any, Any], float]] = None,
             compute_metrics: Optional[Callable[[Any], Mapping[str, Any]]] = None) -> dict[str, float]:
    """``{name: value}`` for each of ``metrics`` (see the module docstring), in the given order.

    Names are checked before anything runs, so a typo fails fast with the list of known metrics (any
    name is accepted with ``compute_metrics``: it is checked against what that returns). Accuracy, loss
    and ``compute_metrics`` share one forward pass over the data.
    """
    names = list(metrics) if compute_metrics is not None else check_metric_names(metrics)
    s = _settings(settings)
    needs_pass = compute_metrics is not None or any(base_metric(n) in ("accuracy", "loss") for n in names)
    result = None
    if needs_pass:
        result = eval_pass(model, data, int(s.batch_size), s.device, keep_logits=compute_metrics is not None,
                           with_loss=any(base_metric(n) == "loss" for n in names))
    user = call_compute_metrics(compute_metrics, result.logits, result.labels) if compute_metrics else {}

    def loss(name: str) -> float:
        if result.loss is None:
            raise ValueError(f"{name} needs 'labels' in the evaluation data")
        return result.loss

    return measure_each(names, {
        "accuracy": lambda name: _accuracy_of(result, metric_fn),
        "loss": loss,
        "latency": lambda name: latency(model, data, settings),
        "params": lambda name: count_params(model),
        "model_size_mb": lambda name: model_size_mb(model),
    }, user)
