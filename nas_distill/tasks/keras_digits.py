"""The digits task on the TensorFlow / Keras 3 path (``model: {framework: tensorflow}``).

The same data and splits as :mod:`nas_distill.tasks.digits` (scikit-learn's 1,797 8x8 digits, stratified,
seed 0: 1,257 train / 180 validation / 360 test), as numpy arrays: ``x`` is ``(n, 64)`` float32 in [0, 1],
``y`` int64 labels. The search measures students on the validation split.

Models are functional ``keras.Model`` s with named layers, so a config can map them::

    pixels -> body -> features -> logits (10)
    body:     hidden.0 -> ... -> hidden.{depth-1} -> embedding (32 wide, ReLU)   (a nested functional model)

``body`` is the feature extractor as one named block; ``features`` (an identity layer) names its output
in the outer model's graph, where a mapped layer must be (a nested model's own ``output`` belongs to its
inner graph). A knowledge-transfer stage with ``block_names: [body]`` and the mapping ``features ->
features`` trains all of the body (and nothing else) to reproduce the teacher's 32-wide features;
regular distillation then trains everything on the logits.

Teacher: hidden width 256, depth 2, trained once (Adam, cross-entropy) and cached as
``<run_dir>/keras_teacher/model.keras`` (+ ``teacher_metrics.json``); loaded with ``safe_mode=True``.
Workers started together train it once: the first takes the lock (``setup_lock``), the others wait, saying
so, and load its file.
Students: the same layout over :data:`STUDENT_SPACE` (width and depth of the hidden layers); the
``embedding`` layer keeps the teacher's width, so the ``features -> features`` mapping compares like
with like.

Entry point: ``task: nas_distill.tasks.keras_digits:keras_digits_task`` (``examples/keras_digits.yaml``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from ..errors import InvalidArchitecture
from ..setup_lock import setup_lock

log = logging.getLogger(__name__)

NUM_LABELS = 10
NUM_FEATURES = 64
EMBEDDING_WIDTH = 32
TEACHER_ARCH = {"hidden_size": 256, "num_hidden_layers": 2}

#: The student space of the example (12 points; every one is a valid model).
STUDENT_SPACE = {"hidden_size": [16, 32, 64, 128], "num_hidden_layers": [1, 2, 3]}

TEACHER_FOLDER = "keras_teacher"
TEACHER_FILE = "model.keras"


def _keras():
    """``keras`` on the TensorFlow backend (the framework this task is for), quiet about CPU features."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


# ------------------------------------------------------------------------------------------- data
def load_splits(seed: int = 0) -> dict[str, tuple[Any, Any]]:
    """``{'train': (x, y), 'val': (x, y), 'test': (x, y)}`` as numpy arrays (no torch involved).

    The two stratified splits are those of :func:`nas_distill.tasks.digits.load_splits` (same sizes,
    labels and ``random_state``, so the same samples), flattened to 64 features.
    """
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(len(digits.images), NUM_FEATURES)
    y = digits.target.astype(np.int64)
    x_trval, x_test, y_trval, y_test = train_test_split(x, y, test_size=360, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_trval, y_trval, test_size=180, stratify=y_trval, random_state=seed
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


# ----------------------------------------------------------------------------------------- models
def _check_arch(arch: dict) -> tuple[int, int]:
    unknown = set(arch) - set(STUDENT_SPACE)
    missing = set(STUDENT_SPACE) - set(arch)
    if unknown or missing:
        raise InvalidArchitecture(
            f"the Keras digits MLP takes keys {sorted(STUDENT_SPACE)}; unknown {sorted(unknown)}, "
            f"missing {sorted(missing)}"
        )
    width, depth = arch["hidden_size"], arch["num_hidden_layers"]
    for key, value in (("hidden_size", width), ("num_hidden_layers", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArchitecture(f"{key} must be a positive int, got {value!r}")
    return width, depth


def build_mlp(hidden_size: int, num_hidden_layers: int, *, seed: int, name: str):
    """The functional MLP every model of this task is (see the module docstring for the layer names).

    Initial weights come from ``seed`` (seeded initialisers), so one arch always starts from the same
    weights, whichever worker builds it and whatever ran before in that process.
    """
    keras = _keras()

    def dense(units: int, layer_name: str, index: int, activation: str | None = "relu"):
        return keras.layers.Dense(
            units,
            activation=activation,
            name=layer_name,
            kernel_initializer=keras.initializers.GlorotUniform(seed=(seed + index) % 2**31),
        )

    body_inputs = keras.Input((NUM_FEATURES,), name="features")
    x = body_inputs
    for i in range(num_hidden_layers):
        x = dense(hidden_size, f"hidden.{i}", i)(x)
    x = dense(EMBEDDING_WIDTH, "embedding", num_hidden_layers)(x)
    body = keras.Model(body_inputs, x, name="body")
    inputs = keras.Input((NUM_FEATURES,), name="pixels")
    features = keras.layers.Identity(name="features")(body(inputs))
    logits = dense(NUM_LABELS, "logits", num_hidden_layers + 1, activation=None)(features)
    return keras.Model(inputs, logits, name=name)


def student_builder(arch: dict):
    """``model_builder(arch)``: a functional Keras MLP student (seeded by the arch itself)."""
    width, depth = _check_arch(arch)
    seed = zlib.crc32(json.dumps(arch, sort_keys=True).encode())
    return build_mlp(width, depth, seed=seed, name="student")


# ---------------------------------------------------------------------------------------- teacher
def accuracy(model, x, y, batch_size: int = 512) -> float:
    import numpy as np

    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def train_teacher(out_dir: str | os.PathLike, *, epochs: int = 40, batch_size: int = 64, lr: float = 3e-3,
                  seed: int = 0) -> Path:
    """Train the teacher and write ``model.keras`` + ``teacher_metrics.json`` to ``out_dir`` (atomically:
    into a temporary folder, renamed at the end, so a reader never sees half a teacher). A few seconds."""
    keras = _keras()
    log.info("teacher training started: a Keras MLP on the digits, %d epochs, into %s", epochs, out_dir)
    out_dir = Path(out_dir)
    splits = load_splits()
    x_train, y_train = splits["train"]
    keras.utils.set_random_seed(seed)
    model = build_mlp(**TEACHER_ARCH, seed=seed, name="teacher")
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    started = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    seconds = time.perf_counter() - started
    metrics = {
        "train_accuracy": accuracy(model, x_train, y_train),
        "val_accuracy": accuracy(model, *splits["val"]),
        "test_accuracy": accuracy(model, *splits["test"]),
        "train_seconds": round(seconds, 2),
        "epochs": epochs,
        "params": int(model.count_params()),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".keras-teacher-", dir=out_dir.parent))
    try:
        model.save(tmp / TEACHER_FILE)
        (tmp / "teacher_metrics.json").write_text(json.dumps(metrics, indent=2))
        if not out_dir.exists():  # else another process finished first: keep theirs
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("Keras teacher trained in %.1f s: %s", seconds, metrics)
    return out_dir


def load_or_train_teacher(run_dir: str | os.PathLike, **train_kwargs: Any):
    """The cached teacher of ``run_dir`` (trained on first use, by one process). Returns (model, metrics)."""
    keras = _keras()
    folder = Path(run_dir) / TEACHER_FOLDER
    path = folder / TEACHER_FILE
    if not path.exists():
        # Workers started together: the first trains, the others wait here, then find its file.
        with setup_lock(Path(run_dir) / f"{TEACHER_FOLDER}.lock", "training the Keras teacher"):
            if not path.exists():
                train_teacher(folder, **train_kwargs)
    model = keras.saving.load_model(path, safe_mode=True)
    model.trainable = False
    metrics_file = folder / "teacher_metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return model, metrics


# ------------------------------------------------------------------------------------- entry point
def keras_digits_task(config, teacher_epochs: int = 40) -> dict[str, Any]:
    """Task entry point: ``{model_builder, teacher_model, train_dataset, eval_dataset}``.

    ``teacher_epochs`` (``task: {entry: ..., args: {teacher_epochs: N}}``) only matters when the teacher
    is trained, i.e. the first time a run folder is used.
    """
    framework = getattr(config, "framework", "tensorflow")
    if framework != "tensorflow":
        from ..errors import ConfigError

        raise ConfigError("model.framework", f"the Keras digits task needs 'tensorflow', got {framework!r}")
    splits = load_splits()
    teacher, _ = load_or_train_teacher(config.study.run_dir, epochs=teacher_epochs)
    return {"model_builder": student_builder, "teacher_model": teacher,
            "train_dataset": splits["train"], "eval_dataset": splits["val"]}
