"""What a training engine does for a search: build its distiller, evaluate, count parameters, save and
load a student, read data for the dry run, release memory.

The torch engine (:mod:`.torch`) and the Keras engine (:mod:`.keras`) implement it; the pipeline, the
trial loop, the dry run and the student files call only this interface.
"""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)


def loaded(module: str) -> Any:
    """``module`` if this process has imported it, else None (asking never imports a framework)."""
    return sys.modules.get(module)


def numpy_rows(data: Any, field: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """An ``(x, y)`` numpy tuple as one batch of numeric fields; anything else (a ``tf.data`` pipeline)
    is not scanned."""
    if not isinstance(data, (tuple, list)) or len(data) not in (1, 2):
        log.info("dry run: %s is not an (x, y) tuple; not scanned", field)
        yield 0, {}
        return
    x, y = data[0], (data[1] if len(data) == 2 else None)
    inputs = x if isinstance(x, Mapping) else {"x": x}
    fields: dict[str, np.ndarray] = {}
    for key, value in inputs.items():
        try:
            fields[str(key)] = np.asarray(value)
        except Exception:  # noqa: BLE001 - ragged: the engine reports it with its own message
            continue
    if y is not None:
        fields["labels"] = np.asarray(y)
    lengths = {len(a) for a in fields.values() if a.ndim > 0}
    if not lengths or min(lengths) == 0:
        return
    yield 0, {k: a for k, a in fields.items() if a.dtype.kind in "biufc"}


def first_tuple_rows(data: Any, n: int) -> Any:
    """The first ``n`` examples of an ``(x, y)`` tuple; anything else as it is (a ``tf.data`` pipeline:
    the engine reads what it needs)."""
    if isinstance(data, (tuple, list)) and len(data) in (1, 2):
        x = data[0]
        x = {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]
        return (x, data[1][:n]) if len(data) == 2 else (x,)
    return data


class Engine:
    """One framework's way of training, measuring and storing students."""

    #: the ``model.framework`` value of this engine
    framework: str = ""
    #: the metric names its evaluator measures
    metrics: Sequence[str] = ()
    #: whether its evaluator takes a Trainer-style ``compute_metrics`` for other names
    takes_compute_metrics = False

    # ---- models
    def owns(self, model: Any) -> bool:
        """``model`` is a model of this framework (looks only when the framework is already imported)."""
        raise NotImplementedError

    def count_parameters(self, model: Any) -> int:
        raise NotImplementedError

    def num_labels(self, model: Any) -> Optional[int]:
        """The label count, when the model tells it without running (beyond a Hugging Face config)."""
        return None

    def release(self) -> None:
        """Free a dropped student's memory now, before the next one is built (~50 ms)."""
        gc.collect()

    # ---- training and measuring
    def distiller_class(self) -> type:
        raise NotImplementedError

    def make_distiller(self, teacher: Any, train_data: Any, settings: Any, *, cache_dir: Optional[str],
                       stages: Optional[Sequence[Any]] = None) -> Any:
        """The flash distiller of one teacher and training set, for every trial of a worker."""
        return self.distiller_class()(teacher, train_data, settings, stages=stages, cache_dir=cache_dir)

    def evaluate(self, model: Any, data: Any, metrics: Sequence[str], *, settings: Any = None,
                 metric_fn: Any = None, compute_metrics: Any = None) -> dict[str, float]:
        raise NotImplementedError

    # ---- student files
    def save(self, model: Any, folder: Path) -> None:
        """Write ``model``'s weights (and, where the format has it, its architecture) into ``folder``."""
        raise NotImplementedError

    def load(self, folder: Path, model_cls: Any = None, *, source: str = "", **kwargs: Any) -> Any:
        """The student saved in ``folder`` (by :meth:`save` or ``save_pretrained``), as ``model_cls``,
        without running any code the files could carry; ``kwargs`` go to ``from_pretrained``."""
        raise NotImplementedError

    # ---- the dry run's reading of the data and models
    def check_devices(self, flash_device: Any, eval_device: Any, training: bool, evaluating: bool) -> None:
        """ConfigError when a configured device is not usable here."""

    def dataset_rows(self, data: Any, field: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(offset, {field name: numpy batch})`` over a dataset, for the dry run's scan."""
        return numpy_rows(data, field)

    def first_rows(self, data: Any, n: int) -> Any:
        """The first ``n`` examples of a dataset, in a form the engine trains on and evaluates."""
        return first_tuple_rows(data, n)

    def layer_names(self, model: Any) -> Optional[set[str]]:
        """Every layer name of ``model`` when they can be listed at once (else None: ask one by one)."""
        return None

    def missing_layer(self, model: Any, names: Optional[set[str]], name: str, role: str) -> Optional[str]:
        """Why ``model`` lacks layer ``name`` (a message), or None when it has it or cannot be asked."""
        return None
