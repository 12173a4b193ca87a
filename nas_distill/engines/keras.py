"""The Keras 3 engine (TensorFlow backend): functional ``keras.Model`` students, ``(x, y)`` numpy data.

Keras and TensorFlow are imported inside the methods: importing this module imports no framework, and
a Keras search never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from nas_distill.vocabulary import KERAS_METRICS

from .base import Engine, loaded

#: the file a Keras student is saved as (Keras 3's zip: config + weights)
KERAS_FILE = "model.keras"


class KerasEngine(Engine):
    framework = "tensorflow"

    metrics = KERAS_METRICS

    # ---- models
    def owns(self, model: Any) -> bool:
        keras = loaded("keras")
        return keras is not None and isinstance(model, getattr(keras, "Model", ()))

    def count_parameters(self, model: Any) -> int:
        return int(model.count_params())  # trainable and not (batch-norm statistics), like numel()

    def num_labels(self, model: Any) -> Optional[int]:
        """The last dimension of ``model.output``."""
        try:
            shape = model.output.shape
        except Exception:  # noqa: BLE001 - not built, several outputs, ...: unknown
            return None
        last = shape[-1] if len(shape) else None
        return int(last) if isinstance(last, (int, np.integer)) and last > 0 else None

    # ---- training and measuring
    def distiller_class(self) -> type:
        from nas_distill.distill.keras.distiller import KerasFlashDistiller

        return KerasFlashDistiller

    def evaluate(self, model: Any, data: Any, metrics: Sequence[str], *, settings: Any = None,
                 metric_fn: Any = None, compute_metrics: Any = None) -> dict[str, float]:
        """``compute_metrics`` is a torch-evaluator feature: not used here."""
        from nas_distill.distill.keras.evaluate import evaluate

        return evaluate(model, data, metrics, settings=settings, metric_fn=metric_fn)

    # ---- student files
    def save(self, model: Any, folder: Path) -> None:
        model.save(str(folder / KERAS_FILE))

    def load(self, folder: Path, model_cls: Any = None, *, source: str = "", **kwargs: Any) -> Any:
        """``keras.saving.load_model(safe_mode=True)`` (no lambdas / arbitrary code), with ``model_cls``
        registered as a custom object when it is a ``keras.Model`` subclass; the model must be one
        (``source``: where the saved model came from, for that error)."""
        import keras

        custom = {}
        if isinstance(model_cls, type) and issubclass(model_cls, keras.Model):
            custom[model_cls.__name__] = model_cls
        path = str(Path(folder) / KERAS_FILE)
        model = keras.saving.load_model(path, custom_objects=custom, safe_mode=True)
        if isinstance(model_cls, type) and not isinstance(model, model_cls):
            raise TypeError(f"model_cls {model_cls.__name__}: the student reloaded from its .keras file is "
                            f"a {type(model).__name__}" + (f" ({source})" if source else ""))
        return model

    # ---- the dry run
    def missing_layer(self, model: Any, names: Optional[set[str]], name: str, role: str) -> Optional[str]:
        if not self.owns(model):
            return None
        try:
            from nas_distill.distill.keras.layers import LayerNotFound, resolve_layer
        except ImportError:  # pragma: no cover - the Keras engine is not installed
            return None
        try:
            resolve_layer(model, name, role)
        except LayerNotFound as exc:
            return f"the {exc}"  # names the layer, lists the ones there, suggests a close one
        return None
