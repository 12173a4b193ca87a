"""Stage 3 of a trial for Keras models: measure a trained student.

The same metrics, names and method as :mod:`nas_distill.distill.torch.evaluate` (the torch measurements):

==================  ===========================================================================
``accuracy``        argmax of the logits vs the labels on the evaluation data, or the user's
                    ``metric_fn(predictions, labels) -> float`` (numpy arrays)
``latency``         milliseconds per batch of ``latency_batch_size``: ``latency_warmup`` untimed
                    runs (at least one: it traces the compiled forward), then the median of
                    ``latency_repeats`` runs timed with ``time.perf_counter``
``params``          ``model.count_params()``
``model_size_mb``   bytes of every weight (trainable and not) / 2**20
==================  ===========================================================================

Names may carry the ``eval_`` prefix; the result is keyed by the name as given. The forward pass is a
``tf.function`` (graph mode, ``training=False``), as a deployment would run it; timing eager calls would
measure Python overhead rather than the model.

Threads: TensorFlow fixes its thread pools when its runtime starts. ``settings.threads`` is applied when
that is still possible; afterwards it is checked, and a mismatch is logged once (set it before the first
TensorFlow op, or run the worker with the wanted count).
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from nas_distill.evaluate import measure_each
from nas_distill.vocabulary import KERAS_METRICS as METRICS
from nas_distill.vocabulary import base_metric, check_metric_names

from .data import KerasData, ModelInputs
from .distiller import resolve_device

logger = logging.getLogger(__name__)
_WARNED_THREADS: set = set()


def _settings(settings: Any) -> Any:
    if settings is None:
        from nas_distill.settings import EvaluationSettings

        return EvaluationSettings()
    return settings


def apply_threads(threads: Optional[int]) -> None:
    """Use ``threads`` intra-op threads if TensorFlow still allows it; log once when it does not."""
    if threads is None:
        return
    threads = int(threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # the runtime is initialised: the pools are fixed
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current != threads and threads not in _WARNED_THREADS:
            _WARNED_THREADS.add(threads)
            logger.warning("evaluation.threads=%d cannot be applied: TensorFlow already started with %s "
                           "intra-op threads", threads, current or "default")


def _forward(model: Any, inputs: ModelInputs):
    def keras_eval_forward(x):  # the name lets the distiller's log filter recognise it
        return model(inputs.pack(x), training=False)

    return tf.function(keras_eval_forward, autograph=False)


def count_params(model: Any) -> int:
    return int(model.count_params())


def model_size_mb(model: Any) -> float:
    return float(sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights) / 2**20)


def predict(model: Any, data: Any, batch_size: int = 64, device: Any = "auto"):
    """``(predictions, labels)`` as numpy arrays: argmax class ids (or squeezed values for a single
    output, i.e. regression) over ``data`` in order; ``labels`` is ``None`` when the data has none."""
    prepared = KerasData.from_tuple(data, "eval_data")
    inputs = ModelInputs(model, "model")
    inputs.check(prepared)
    forward = _forward(model, inputs)
    n = len(prepared)
    bs = max(1, int(batch_size))
    preds = []
    with tf.device(resolve_device(device)[1]):
        for start in range(0, n, bs):
            idx = np.arange(start, min(n, start + bs))
            out = forward(prepared.take_x(idx))
            logits = np.asarray(out[0] if isinstance(out, (list, tuple)) else out, dtype=np.float32)
            logits = logits.reshape(len(idx), -1)
            preds.append(logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1))
    return np.concatenate(preds), prepared.y


def accuracy(model: Any, data: Any, settings: Any = None,
             metric_fn: Optional[Callable[[Any, Any], float]] = None) -> float:
    """Fraction of argmax predictions equal to the labels, or ``metric_fn(predictions, labels)``."""
    s = _settings(settings)
    data = KerasData.from_tuple(data, "eval_data")
    if metric_fn is None and data.y is None:
        raise ValueError("accuracy needs labels (y) in the evaluation data (or pass metric_fn)")
    preds, labels = predict(model, data, int(s.batch_size), s.device)
    if metric_fn is not None:
        return float(metric_fn(preds, labels))
    return float((preds.reshape(labels.shape) == labels).mean())


def latency(model: Any, data: Any, settings: Any = None) -> float:
    """Milliseconds per forward of a batch of ``latency_batch_size`` examples taken from ``data``
    (cycled when the data is shorter): untimed warm-up runs, then the median of the timed repeats.
    The result is fetched to numpy inside the timed region, so an asynchronous device is synchronised."""
    s = _settings(settings)
    apply_threads(s.threads)
    prepared = KerasData.from_tuple(data, "eval_data")
    inputs = ModelInputs(model, "model")
    inputs.check(prepared)
    size = int(s.latency_batch_size)
    x = prepared.take_x(np.arange(size) % len(prepared))
    forward = _forward(model, inputs)
    times = []
    with tf.device(resolve_device(s.device)[1]):
        x = tf.nest.map_structure(tf.convert_to_tensor, x)
        for _ in range(max(1, int(s.latency_warmup))):
            tf.nest.map_structure(np.asarray, forward(x))
        for _ in range(max(1, int(s.latency_repeats))):
            t0 = time.perf_counter()
            tf.nest.map_structure(np.asarray, forward(x))
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def evaluate(model: Any, eval_data: Any, metrics: Sequence[str] = ("accuracy",), settings: Any = None,
             metric_fn: Optional[Callable[[Any, Any], float]] = None) -> dict[str, float]:
    """``{name: value}`` for each of ``metrics`` (see the module docstring), in the given order.

    Names are checked before anything runs, so a typo fails fast with the list of known metrics.
    """
    names = check_metric_names(metrics, known=METRICS)
    eval_data = KerasData.from_tuple(eval_data, "eval_data")  # validated once, before any metric runs
    if metric_fn is None and eval_data.y is None and any(base_metric(n) == "accuracy" for n in names):
        raise ValueError("accuracy needs labels (y) in the evaluation data (or pass metric_fn)")
    return measure_each(names, {
        "accuracy": lambda name: accuracy(model, eval_data, settings, metric_fn),
        "latency": lambda name: latency(model, eval_data, settings),
        "params": lambda name: count_params(model),
        "model_size_mb": lambda name: model_size_mb(model),
    })
