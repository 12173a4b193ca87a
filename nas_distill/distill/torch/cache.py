"""Teacher-output cache, shared by every trial and every worker process on a machine (PyTorch side).

The on-disk format, the atomic publishing, the locking, the checksums and the float16 rule live in
:mod:`nas_distill.distill.cache_store` (numpy only, shared with the Keras engine) and are re-exported
here. This module adds the fingerprint of a torch teacher and its collated training tensors.

Key: a sha256 fingerprint of the teacher's weights (every state-dict tensor's name, dtype, shape and
bytes), the collated training tensors, the teacher-side layer mappings and the device type. Nothing
temperature- or student-dependent is in the key (raw logits are cached), so every trial of a study hits
the same entry.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from nas_distill.distill import cache_store as _store
from nas_distill.distill.cache_store import (  # noqa: F401  (re-exported: the public names of this module)
    _HASH_CHUNK,
    FORMAT_VERSION,
    FP16_MAX_ABS_ERROR,
    FP16_MAX_REL_ERROR,
    MANIFEST,
    CacheEntry,
    _discard,
    _fsync_dir,
    _locked,
    _sha256_file,
    _write_file,
    in_memory_entry,
    read_entry,
    storage_dtype,
    write_entry,
)

# Tests set this to None to exercise the lock-free path (only the atomic rename protects the entry).
fcntl = _store.fcntl


def _hash_tensor(h: Any, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    # a uint8 view, because numpy has no bfloat16
    _store.hash_bytes(h, name, str(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy())


def fingerprint(
    teacher: torch.nn.Module,
    fields: dict[str, torch.Tensor],
    feature_keys: Iterable[str],
    extra: Any = None,
) -> str:
    """sha256 of the teacher's weights, the collated data, the teacher feature keys and ``extra``."""
    h = _store.new_fingerprint(type(teacher).__qualname__)
    for name, tensor in teacher.state_dict().items():
        _hash_tensor(h, "w:" + name, tensor)
    for key in sorted(fields):
        _hash_tensor(h, "d:" + key, fields[key])
    return _store.finish_fingerprint(h, feature_keys, extra)


def load_or_build(
    root: str,
    fp: str,
    build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Optional[str]]]],
    dtype: str = "float16",
) -> tuple[CacheEntry, bool]:
    """The entry for ``fp``, built with ``build()`` when missing or broken. Returns ``(entry, built)``."""
    return _store.load_or_build(root, fp, build, dtype, lock=fcntl is not None)
