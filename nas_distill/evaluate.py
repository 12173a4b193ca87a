"""Stage 3 of a trial: measure a trained student.

Metric names a config may select (``cfg.metrics``):

==================  ===========================================================================
``accuracy``        argmax of the logits vs the labels on the evaluation data, or the user's
                    ``metric_fn(predictions, labels) -> float`` (numpy arrays)
``latency``         milliseconds per batch of ``latency_batch_size``: warm-up runs, then the median
                    of ``latency_repeats`` timed runs, at a fixed thread count
``params``          number of parameters
``model_size_mb``   parameter + buffer bytes / 2**20
``loss``            the task loss on the evaluation data, the one ``add_origin_loss`` trains with
                    (cross-entropy for integer labels, ignoring -100; MSE for float labels),
                    averaged over every labelled position of the whole set
==================  ===========================================================================

Each name may carry the Hugging Face Trainer's ``eval_`` prefix (``eval_accuracy``, ``eval_loss``); the
result is keyed by the name as given. Any other name comes from the user's ``compute_metrics``, called
the way the Trainer calls it: with an ``EvalPrediction(predictions=logits, label_ids=labels)`` over the
whole evaluation set, its keys read with or without the ``eval_`` prefix. When ``compute_metrics``
returns a name the built-in evaluator also knows, its value wins (as in the Trainer).

The names are :mod:`nas_distill.vocabulary`'s; this module holds what both engines' evaluators share
(no framework import). The measurements are the engines': :mod:`nas_distill.distill.torch.evaluate`
(PyTorch) and :mod:`nas_distill.distill.keras.evaluate` (Keras).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from .vocabulary import METRICS, base_metric, check_metric_names, unknown_metrics  # noqa: F401


def metric_from(results: Mapping[str, Any], name: str) -> Any:
    """``name``'s value in a Trainer-style metrics dict (keys with or without ``eval_``), else None."""
    for key in (name, name[5:] if name.startswith("eval_") else f"eval_{name}"):
        if key in results:
            return results[key]
    return None


def make_eval_prediction(logits: Any, labels: Any) -> Any:
    """A transformers ``EvalPrediction`` (a plain stand-in with the same two fields without
    transformers)."""
    try:
        from transformers import EvalPrediction
    except ImportError:  # pragma: no cover - transformers is a dependency of the torch path
        from types import SimpleNamespace

        return SimpleNamespace(predictions=logits, label_ids=labels)
    return EvalPrediction(predictions=logits, label_ids=labels)


def call_compute_metrics(compute_metrics: Callable[[Any], Mapping[str, Any]], logits: Any, labels: Any) -> dict:
    """``compute_metrics(EvalPrediction(logits, labels))``, checked to be a mapping of names."""
    results = compute_metrics(make_eval_prediction(logits, labels))
    if not isinstance(results, Mapping):
        raise TypeError(f"compute_metrics must return a dict of metric name -> number, got "
                        f"{type(results).__name__}")
    return dict(results)


def measure_each(names: Sequence[str], measures: Mapping[str, Callable[[str], Any]],
                 user: Mapping[str, Any] | None = None) -> dict[str, float]:
    """``{name: value}`` in ``names`` order: the value ``user`` (what ``compute_metrics`` returned) gives
    for the name (with or without ``eval_``), else ``measures[base name](name)``."""
    out: dict[str, float] = {}
    for name in names:
        value = metric_from(user, name) if user else None
        if value is None:
            measure = measures.get(base_metric(name))
            if measure is None:
                raise ValueError(f"metric {name!r}: compute_metrics returned {sorted(user or {})}, not this name "
                                 f"(with or without the 'eval_' prefix)")
            value = measure(name)
        out[name] = value
    return out

