"""Training and evaluation data for the Keras engine: ``(x, y)`` numpy arrays, validated once.

``x`` is one array (a single-input model) or a dict of arrays keyed by the models' input names; ``y`` is
one label per example, shape ``(n,)`` (integers for classification, floats for regression) or ``None``.
Every example has a stable integer index (its row), which is what the teacher cache is keyed by; a
batch is a gather of rows by index.

:class:`ModelInputs` packs a batch into the structure a given model was built with (one tensor, a list
or a dict of input tensors), so a teacher and a student may read different fields of one dict.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Union

import numpy as np

from nas_distill.errors import ConfigError

Arrays = Union[np.ndarray, dict]


def _as_array(value: Any, field: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise ConfigError(field, f"expected a numpy array, got {type(value).__name__} ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise ConfigError(field, f"expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise ConfigError(field, "expected an array with one row per example, got a scalar")
    return arr


class KerasData:
    """Validated ``(x, y)``: ``x`` an array or a dict of arrays with ``n`` rows, ``y`` ``(n,)`` or None."""

    live = False  # numpy arrays never change between reads (augmentation is a setting, see distiller)

    def __init__(self, x: Arrays, y: Optional[np.ndarray], field: str = "train_data"):
        self.field = field
        if isinstance(x, dict):
            if not x:
                raise ConfigError(f"{field}.x", "the dict of input arrays is empty")
            self.x = {}
            for k, v in x.items():
                if not isinstance(k, str):
                    raise ConfigError(f"{field}.x", f"input names must be strings, got {k!r}")
                self.x[k] = _as_array(v, f"{field}.x[{k!r}]")
            lengths = {k: len(v) for k, v in self.x.items()}
            if len(set(lengths.values())) != 1:
                raise ConfigError(f"{field}.x", f"input arrays have different lengths: {lengths}")
            self.n = next(iter(lengths.values()))
        else:
            self.x = _as_array(x, f"{field}.x")
            self.n = len(self.x)
        if self.n == 0:
            raise ConfigError(f"{field}.x", "the data has no examples")
        self.y = None
        if y is not None:
            y = _as_array(y, f"{field}.y")
            if y.ndim != 1:
                raise ConfigError(f"{field}.y", f"expected labels of shape (n,) = ({self.n},), got {y.shape}")
            if len(y) != self.n:
                raise ConfigError(f"{field}.y", f"{len(y)} labels for {self.n} examples")
            self.y = y

    @classmethod
    def from_tuple(cls, data: Any, field: str = "train_data") -> "KerasData":
        if isinstance(data, KerasData):
            return data
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ConfigError(field, f"expected a tuple (x, y) of numpy arrays, got {type(data).__name__}"
                                     + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
        return cls(data[0], data[1], field)

    def __len__(self) -> int:
        return self.n

    def take_x(self, idx: np.ndarray) -> Arrays:
        if isinstance(self.x, dict):
            return {k: np.take(v, idx, axis=0) for k, v in self.x.items()}
        return np.take(self.x, idx, axis=0)

    def fields(self) -> dict[str, np.ndarray]:
        """Every array by a stable name (for the cache fingerprint)."""
        out = {f"x:{k}": v for k, v in self.x.items()} if isinstance(self.x, dict) else {"x": self.x}
        if self.y is not None:
            out["labels"] = self.y
        return out


class ModelInputs:
    """How one model takes its inputs: the structure it was built with, and the names in it.

    ``pack(x)`` turns a batch (an array, or a dict of arrays / tensors) into that structure. Works on
    numpy arrays and on tensors alike (it only selects), so it runs inside a traced step too.
    """

    def __init__(self, model: Any, role: str = "model"):
        from .layers import input_structure

        try:
            struct = input_structure(model)
        except (AttributeError, ValueError) as exc:
            raise ConfigError(role, f"{type(model).__name__} has no defined inputs ({exc}); use a functional "
                                    f"model, or build a Sequential one (give it an input shape or call it "
                                    f"once)") from None
        self.role = role
        if isinstance(struct, dict):
            self.kind, self.names = "dict", list(struct)
            self.shapes = [tuple(t.shape) for t in struct.values()]
        elif isinstance(struct, (list, tuple)):
            self.kind, self.names = "list", [t.name for t in struct]
            self.shapes = [tuple(t.shape) for t in struct]
        else:
            self.kind, self.names, self.shapes = "single", [struct.name], [tuple(struct.shape)]

    def check(self, data: KerasData) -> None:
        """Clear errors, before any work, when ``data`` cannot feed this model."""
        if isinstance(data.x, dict):
            missing = [n for n in self.names if n not in data.x]
            if missing:
                raise ConfigError(f"{data.field}.x", f"the {self.role} takes inputs {self.names}; missing from "
                                                     f"the data: {missing} (data keys: {sorted(data.x)})")
            arrays = [data.x[n] for n in self.names]
        else:
            if len(self.names) != 1:
                raise ConfigError(f"{data.field}.x", f"the {self.role} takes {len(self.names)} inputs "
                                                     f"{self.names}; pass x as a dict keyed by those names")
            arrays = [data.x]
        for name, shape, arr in zip(self.names, self.shapes, arrays):
            want = shape[1:]
            got = arr.shape[1:]
            if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
                raise ConfigError(f"{data.field}.x", f"the {self.role}'s input {name!r} expects examples of "
                                                     f"shape {want}, the data has {got}")

    def pack(self, x: Any) -> Any:
        if isinstance(x, dict):
            values = [x[n] for n in self.names]
        else:
            values = [x]
        if self.kind == "single":
            return values[0]
        if self.kind == "list":
            return values
        return dict(zip(self.names, values))


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> Iterator[np.ndarray]:
    """``steps`` batches of example indices, reshuffled every epoch by a generator seeded with ``seed``.

    The order depends only on ``(n, batch_size, steps, seed)``. Batches never straddle an epoch boundary
    (a short last batch is dropped when the data holds more than one batch), so every batch has the same
    size and the compiled step is traced once.
    """
    rng = np.random.default_rng(int(seed))
    bs = min(int(batch_size), n)
    per_epoch = n // bs
    produced = 0
    while produced < steps:
        perm = rng.permutation(n)
        for b in range(per_epoch):
            if produced >= steps:
                return
            yield perm[b * bs:(b + 1) * bs]
            produced += 1
