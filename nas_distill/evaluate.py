"""Stage 3 of a trial: measure a trained student.

Metric names a config may select (``cfg.metrics``):

==================  ===========================================================================
``accuracy``        argmax of the logits vs the labels on the evaluation data, or the user's
                    ``metric_fn(predictions, labels) -> float`` (numpy arrays)
``latency``         milliseconds per batch of ``latency_batch_size``: warm-up runs, then the median
                    of ``latency_repeats`` timed runs, at a fixed thread count
``params``          number of parameters
``model_size_mb``   parameter + buffer bytes / 2**20
==================  ===========================================================================

Each name may carry the Hugging Face Trainer's ``eval_`` prefix (``eval_accuracy``); the result is keyed
by the name as given.

This file holds the PyTorch measurements (torch imported inside the functions); a Keras backend adds
its own.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, Iterable, Optional, Sequence

METRICS = ("accuracy", "latency", "params", "model_size_mb")


def base_metric(name: str) -> str:
    """``'eval_accuracy'`` -> ``'accuracy'``: the seed's configs name metrics the way the Hugging Face
    Trainer reports them (``eval_`` prefix). The result keeps the name the config used."""
    if name not in METRICS and name.startswith("eval_") and name[5:] in METRICS:
        return name[5:]
    return name


def check_metric_names(names: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """The names, validated: an unknown one raises ``ValueError`` listing the known ones."""
    known = list(METRICS) + [n for n in extra if n not in METRICS]
    names = list(names)
    for name in names:
        if base_metric(name) not in known:
            raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(known)} "
                             f"(an 'eval_' prefix is accepted)")
    return names


def _settings(settings: Any) -> Any:
    if settings is None:
        from nas_distill.config import EvaluationSettings

        return EvaluationSettings()
    return settings


def _device(model: Any, device: Any) -> Any:
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def torch_threads(threads: Optional[int]):
    """Run the block with ``torch.set_num_threads(threads)`` (``None``: unchanged), restored after."""
    import torch

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
    from nas_distill.distill.torch.data import CollatedData, prepare_data

    if _LAST_EVAL[0] is data:
        return _LAST_EVAL[1]
    prepared = prepare_data(data)
    if not isinstance(prepared, CollatedData):
        # An evaluation set must be stable: augmenting it would make the metric noise.
        raise ValueError("the evaluation data returns different values on two reads of the same index")
    _LAST_EVAL[:] = [data, prepared]
    return prepared


def predict(model: Any, data: Any, batch_size: int = 64, device: Any = "auto"):
    """``(predictions, labels)`` as numpy arrays: argmax class ids (or squeezed values for a single
    output, i.e. regression) over ``data`` in order; ``labels`` is ``None`` when the data has none."""
    import numpy as np
    import torch

    from nas_distill.distill.torch.distiller import input_keys, model_logits

    dev = _device(model, device)
    prepared = _eval_fields(data)
    keys = input_keys(model, list(prepared.fields))
    model.to(dev)
    was_training = model.training
    model.eval()
    preds = []
    try:
        with torch.inference_mode():
            for start in range(0, len(prepared), batch_size):
                idx = torch.arange(start, min(len(prepared), start + batch_size))
                batch = prepared.batch(idx)
                logits = model_logits(model(**{k: batch[k].to(dev) for k in keys})).float()
                if logits.shape[-1] == 1:
                    preds.append(logits.reshape(-1).cpu().numpy())
                else:
                    preds.append(logits.argmax(-1).cpu().numpy())
    finally:
        model.train(was_training)
    labels = prepared.fields.get("labels")
    return np.concatenate(preds), (None if labels is None else labels.cpu().numpy())


def accuracy(model: Any, data: Any, settings: Any = None,
             metric_fn: Optional[Callable[[Any, Any], float]] = None) -> float:
    """Fraction of argmax predictions equal to the labels, or ``metric_fn(predictions, labels)``."""
    s = _settings(settings)
    preds, labels = predict(model, data, int(s.batch_size), s.device)
    if metric_fn is not None:
        return float(metric_fn(preds, labels))
    if labels is None:
        raise ValueError("accuracy needs 'labels' in the evaluation data (or pass metric_fn)")
    return float((preds.reshape(labels.shape) == labels).mean())


def latency(model: Any, data: Any, settings: Any = None) -> float:
    """Milliseconds per forward of a batch of ``latency_batch_size`` examples taken from ``data``.

    ``latency_warmup`` untimed runs, then the median of ``latency_repeats`` runs timed with
    ``time.perf_counter`` (CUDA synchronised), under ``torch.set_num_threads(threads)`` (restored).
    The median, not the mean, so one scheduler hiccup does not move the metric.
    """
    import torch

    from nas_distill.distill.torch.distiller import input_keys

    s = _settings(settings)
    dev = _device(model, s.device)
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
             metric_fn: Optional[Callable[[Any, Any], float]] = None) -> dict[str, float]:
    """``{name: value}`` for each of ``metrics`` (see the module docstring), in the given order.

    Names are checked before anything runs, so a typo fails fast with the list of known metrics.
    """
    names = check_metric_names(metrics)
    out: dict[str, float] = {}
    for name in names:
        base = base_metric(name)
        if base == "accuracy":
            out[name] = accuracy(model, data, settings, metric_fn)
        elif base == "latency":
            out[name] = latency(model, data, settings)
        elif base == "params":
            out[name] = count_params(model)
        elif base == "model_size_mb":
            out[name] = model_size_mb(model)
    return out
