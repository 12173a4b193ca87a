"""Teacher-output cache for the Keras engine: the fingerprint of a Keras teacher and its data arrays.

Everything else (layout, atomic publishing, flock, sha256 verification, float16 rule) is
:mod:`nas_distill.distill.cache_store`, shared with the torch engine, re-exported here: one format
and one key recipe for both engines.

Key: sha256 of the teacher's architecture (its class and, when it serialises, its config), every weight
(path, dtype, shape, bytes; non-trainable ones such as BatchNorm statistics included), the training
arrays, the teacher-side mapping keys and ``extra`` (device type, feature budget, storage dtype).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

from nas_distill.distill import cache_store as _store
from nas_distill.distill.cache_store import (  # noqa: F401  (re-exported)
    CacheEntry,
    in_memory_entry,
    read_entry,
    storage_dtype,
    write_entry,
)

# Tests set this to None to exercise the lock-free path (only the atomic rename protects the entry).
fcntl = _store.fcntl


def _architecture(model: Any) -> str:
    """The model's config as JSON, or its class name when it does not serialise (a subclassed model)."""
    try:
        return json.dumps(model.get_config(), sort_keys=True, default=str)
    except Exception:  # NotImplementedError for subclassed models, odd custom objects
        return type(model).__qualname__


def fingerprint(teacher: Any, fields: dict[str, np.ndarray], feature_keys: Iterable[str],
                extra: Any = None) -> str:
    """sha256 of the teacher (architecture and weights), the data arrays, the feature keys and ``extra``."""
    h = _store.new_fingerprint("keras:" + type(teacher).__qualname__)
    h.update(_architecture(teacher).encode())
    for i, v in enumerate(teacher.weights):
        _store.hash_array(h, f"w:{i}:{v.path}", v.numpy())
    for key in sorted(fields):
        _store.hash_array(h, "d:" + key, fields[key])
    return _store.finish_fingerprint(h, feature_keys, extra)

