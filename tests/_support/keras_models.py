"""Small Keras models and digits data for the Keras engine tests (imported by tests and conftest).

Generic on purpose (other Keras test files use it too): a functional MLP builder with named layers,
scikit-learn's digits as numpy arrays, settings helpers, and a layer that counts how often a model ran.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _support.flash import flash_settings, stage  # noqa: E402, F401  (stage: re-exported for the Keras tests)

N_FEATURES, N_CLASSES = 64, 10


def digits(n: int | None = None, offset: int = 0):
    """``(x, y)``: digits images as float32 in [0, 1], shape (n, 64), and int64 labels, shape (n,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    end = len(x) if n is None else offset + n
    return x[offset:end], y[offset:end]


class CallCounter(keras.layers.Layer):
    """Identity layer that counts the forward passes that run through it, in eager and in graph mode
    (a ``tf.numpy_function`` side effect, so it holds no variable and changes no weight fingerprint)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = 0

    def _tick(self):
        self.calls += 1
        return np.int64(self.calls)

    def call(self, x):
        tick = tf.numpy_function(self._tick, [], tf.int64, stateful=True)
        with tf.control_dependencies([tick]):
            return tf.identity(x)


def mlp(widths=(32, 32), name="mlp", seed=0, prefix="dense", count_calls=False, activation="relu",
        n_in=N_FEATURES, n_out=N_CLASSES, input_name="pixels", batchnorm=False):
    """A functional MLP: Input ``input_name`` -> Dense ``{prefix}_1`` ... ``{prefix}_k`` -> Dense ``logits``.

    ``batchnorm`` adds a BatchNormalization ``bn_<i>`` after each hidden Dense (moving statistics: weights
    that are not trainable but change in training mode).

    ``count_calls`` puts a :class:`CallCounter` named ``calls`` right after the input (``model.get_layer(
    'calls').calls`` counts forwards, whichever outputs a sub-model asks for).
    """
    keras.utils.set_random_seed(seed)
    inp = keras.Input((n_in,), name=input_name)
    h = CallCounter(name="calls")(inp) if count_calls else inp
    for i, w in enumerate(widths, start=1):
        h = keras.layers.Dense(w, activation=activation, name=f"{prefix}_{i}")(h)
        if batchnorm:
            h = keras.layers.BatchNormalization(name=f"bn_{i}")(h)
    out = keras.layers.Dense(n_out, name="logits")(h)
    return keras.Model(inp, out, name=name)


def weights_of(model, layer_name):
    return [np.array(w) for w in model.get_layer(layer_name).get_weights()]


def flash(stages, **kw):
    return flash_settings(stages, **{"batch_size": 32, **kw})
