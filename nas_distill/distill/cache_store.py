"""Teacher-output cache on disk: the framework-neutral part (numpy only), shared by both engines.

The teacher is frozen, so its outputs on the (fixed, deterministic) training examples are the same in
every trial. An engine computes them once per study and stores them here; a trial with a warm cache
never runs the teacher. Each engine computes the fingerprint from its own tensors with the helpers
below (:func:`new_fingerprint`, :func:`hash_bytes`, :func:`finish_fingerprint`), so the two engines use
one key recipe and one on-disk format.

Key: a sha256 of the teacher's weights (every weight's name, dtype, shape and bytes), the training
arrays, the teacher-side layer mappings and the device type. Nothing temperature- or student-dependent
is in the key (raw logits are cached), so every trial of a study hits the same entry.

Layout (one folder per fingerprint)::

    <root>/<fingerprint>/logits.npy         raw teacher logits, one row per example index
    <root>/<fingerprint>/feature-<i>.npy    mapped teacher features that fit the budget
    <root>/<fingerprint>/manifest.json      written last: file names, dtypes, shapes, sizes, sha256

Safety and concurrency:

* Arrays are plain ``.npy`` files read with ``np.load(..., allow_pickle=False, mmap_mode='r')``: nothing
  is ever unpickled, and workers share the file pages through the OS page cache.
* A writer builds the entry in a private temporary folder inside ``<root>`` (same file system), fsyncs
  every file, writes the manifest last, fsyncs, then publishes the folder with one atomic ``os.rename``.
  A reader therefore sees either no entry or a complete one. The lock ``<root>/<fingerprint>.lock``
  (:func:`nas_distill.setup_lock.setup_lock`) makes a second worker wait for the first, saying so,
  instead of computing the same outputs; correctness does not depend on it (the rename is what is
  atomic).
* A reader trusts an entry only when the manifest parses and every file has the recorded size and
  sha256. A truncated or corrupt entry is moved aside, deleted and rebuilt.

Precision: ``float16`` storage is used per array only when it is lossless enough on the actual data (see
:func:`storage_dtype`); otherwise that array is stored as ``float32``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from typing import Any, Callable, Iterable, Optional

import numpy as np

from ..setup_lock import setup_lock

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# float16 is accepted for an array when its largest rounding error stays below both bounds: an absolute
# one (logit / feature units; values up to |x| ~ 32 pass) and one relative to the array's largest
# magnitude (rejects tiny-scale data that would fall into float16's subnormal range).
FP16_MAX_ABS_ERROR = 1e-2
FP16_MAX_REL_ERROR = 1e-3
_HASH_CHUNK = 1 << 22

try:  # POSIX advisory locks; elsewhere the atomic rename alone keeps the cache consistent
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


# --------------------------------------------------------------------------------------------------
# fingerprint
# --------------------------------------------------------------------------------------------------
def new_fingerprint(model_kind: str) -> "hashlib._Hash":
    """A sha256 started with the format version and the teacher's kind (its class name)."""
    h = hashlib.sha256()
    h.update(f"nas-distill teacher cache v{FORMAT_VERSION}\n{model_kind}\n".encode())
    return h


def hash_bytes(h: "hashlib._Hash", name: str, dtype: str, shape: tuple, data: Any) -> None:
    """Add one named array: a ``name|dtype|shape`` header line, then its raw bytes (a buffer)."""
    h.update(f"{name}|{dtype}|{tuple(shape)}\n".encode())
    if len(memoryview(data).cast("B")):
        h.update(memoryview(data).cast("B"))


def hash_array(h: "hashlib._Hash", name: str, array: np.ndarray) -> None:
    """:func:`hash_bytes` for a numpy array (made contiguous first)."""
    a = np.ascontiguousarray(array)
    hash_bytes(h, name, a.dtype.name, a.shape, a.reshape(-1).view(np.uint8))


def finish_fingerprint(h: "hashlib._Hash", feature_keys: Iterable[str], extra: Any = None) -> str:
    """Add the teacher feature keys and ``extra`` (JSON), return the hex digest."""
    h.update(json.dumps({"features": sorted(feature_keys), "extra": extra}, sort_keys=True,
                        default=str).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# precision
# --------------------------------------------------------------------------------------------------
def storage_dtype(array: np.ndarray, preferred: str = "float16") -> np.dtype:
    """``float16`` when storing ``array`` in it is lossless enough, else ``float32``.

    The check runs on the data itself: every value must stay finite and the largest rounding error must
    be within :data:`FP16_MAX_ABS_ERROR` and :data:`FP16_MAX_REL_ERROR` times the largest magnitude.
    """
    if str(preferred) not in ("float16", "fp16", "half") or array.size == 0:
        return np.dtype(np.float32)
    a = np.asarray(array, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        h = a.astype(np.float16)
    if not np.isfinite(h).all():
        return np.dtype(np.float32)
    err = float(np.max(np.abs(h.astype(np.float32) - a)))
    scale = float(np.max(np.abs(a)))
    if err <= FP16_MAX_ABS_ERROR and err <= FP16_MAX_REL_ERROR * scale or err == 0.0:
        return np.dtype(np.float16)
    return np.dtype(np.float32)


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------
def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_HASH_CHUNK)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_file(path: str, write: Callable[[Any], None]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


class CacheEntry:
    """A complete, validated set of cached teacher outputs: ``arrays[name]`` (read-only memmaps or
    in-memory arrays) and ``keys[name]`` (the feature key, ``None`` for logits)."""

    def __init__(self, arrays: dict[str, np.ndarray], keys: dict[str, Optional[str]], path: str = ""):
        self.arrays = arrays
        self.keys = keys
        self.path = path

    def by_key(self) -> dict[Optional[str], np.ndarray]:
        return {self.keys[name]: arr for name, arr in self.arrays.items()}

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))


def write_entry(root: str, fp: str, arrays: dict[str, np.ndarray], keys: dict[str, Optional[str]],
                dtype: str = "float16") -> str:
    """Publish ``arrays`` as the entry ``<root>/<fp>`` atomically; returns the entry path.

    If another writer published the same fingerprint first, its (valid) entry is kept and ours dropped.
    """
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{fp[:16]}-", dir=root)
    try:
        manifest = {"version": FORMAT_VERSION, "fingerprint": fp, "arrays": {}}
        for name, array in arrays.items():
            store = storage_dtype(array, dtype)
            data = np.ascontiguousarray(array, dtype=store)
            fname = f"{name}.npy"
            path = os.path.join(tmp, fname)
            _write_file(path, lambda f, data=data: np.save(f, data, allow_pickle=False))
            manifest["arrays"][name] = {
                "file": fname, "key": keys.get(name), "dtype": store.name, "shape": list(data.shape),
                "bytes": os.path.getsize(path), "sha256": _sha256_file(path),
            }
        # The manifest goes last: its presence (and checksums) is what makes the entry complete.
        text = json.dumps(manifest, indent=1, sort_keys=True).encode()
        _write_file(os.path.join(tmp, MANIFEST), lambda f: f.write(text))
        _fsync_dir(tmp)
        final = os.path.join(root, fp)
        try:
            os.rename(tmp, final)  # atomic; fails if another writer already published the entry
        except OSError:
            if read_entry(root, fp) is None:  # what is there is broken: replace it
                _discard(final)
                os.rename(tmp, final)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(root)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _discard(path: str) -> None:
    """Move a broken entry aside atomically (readers never see half a deletion), then delete it."""
    if not os.path.exists(path):
        return
    trash = f"{path}.broken-{uuid.uuid4().hex[:8]}"
    with contextlib.suppress(OSError):
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def read_entry(root: str, fp: str, verify: bool = True) -> Optional[CacheEntry]:
    """The entry ``<root>/<fp>`` if it is complete and intact, else ``None`` (never a partial one)."""
    path = os.path.join(root, fp)
    try:
        with open(os.path.join(path, MANIFEST), "rb") as f:
            manifest = json.loads(f.read().decode())
        if manifest.get("version") != FORMAT_VERSION or manifest.get("fingerprint") != fp:
            return None
        arrays, keys = {}, {}
        for name, info in manifest["arrays"].items():
            file = os.path.join(path, os.path.basename(info["file"]))
            if os.path.getsize(file) != info["bytes"]:
                return None
            if verify and _sha256_file(file) != info["sha256"]:
                return None
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
            if arr.dtype.name != info["dtype"] or list(arr.shape) != info["shape"]:
                return None
            arrays[name], keys[name] = arr, info.get("key")
        return CacheEntry(arrays, keys, path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _locked(root: str, fp: str, enabled: bool = True):
    if not enabled:
        return contextlib.nullcontext()
    return setup_lock(os.path.join(root, f"{fp}.lock"), f"filling the teacher cache {fp[:16]}")


def load_or_build(
    root: str,
    fp: str,
    build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Optional[str]]]],
    dtype: str = "float16",
    lock: bool = True,
) -> tuple[CacheEntry, bool]:
    """The entry for ``fp``, built with ``build()`` when missing or broken. Returns ``(entry, built)``.

    ``lock=False`` skips the advisory lock (two workers may then both build; the rename keeps one).
    """
    entry = read_entry(root, fp)
    if entry is not None:
        return entry, False
    locking = lock and fcntl is not None
    with _locked(root, fp, locking):
        entry = read_entry(root, fp)  # another worker may have finished while we waited
        if entry is not None:
            return entry, False
        if os.path.exists(os.path.join(root, fp)):
            logger.warning("teacher cache entry %s is incomplete or corrupt; rebuilding it", fp[:16])
            _discard(os.path.join(root, fp))
        if locking:
            # We hold the lock, so no live writer of this entry exists: any temporary folder of it is
            # left over from a worker that died mid-write.
            for name in os.listdir(root):
                if name.startswith(f".tmp-{fp[:16]}-"):
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        logger.info("teacher cache fill started: the teacher's outputs on the training data (entry %s)", fp[:16])
        arrays, keys = build()
        write_entry(root, fp, arrays, keys, dtype)
    entry = read_entry(root, fp)
    if entry is None:
        raise RuntimeError(f"teacher cache entry {fp[:16]} in {root} failed validation right after writing")
    return entry, True


def in_memory_entry(arrays: dict[str, np.ndarray], keys: dict[str, Optional[str]],
                    dtype: str = "float16") -> CacheEntry:
    """The same precision rules as on disk, for a cache that lives only in this process."""
    stored = {n: np.ascontiguousarray(a, dtype=storage_dtype(a, dtype)) for n, a in arrays.items()}
    return CacheEntry(stored, dict(keys))


# ------------------------------------------------------------------------------ what a distiller uses
def cache_wanted(cache_settings: Any, live: bool) -> bool:
    """Whether a distiller should use the teacher cache: not when the settings turn it off, nor when the
    training data is augmented (``live``: the teacher's outputs differ per read)."""
    enabled = cache_settings.enabled
    if enabled is False or str(enabled).lower() in ("false", "off", "no", "0"):
        return False
    if live:
        if enabled is True:
            logger.warning("teacher cache requested but the training data is augmented; bypassing it")
        return False
    return True


def obtain_entry(
    cache_dir: Optional[str],
    cache_settings: Any,
    device_type: str,
    fingerprint_of: Callable[[dict], str],
    build: Callable[[float, str], tuple[dict[str, np.ndarray], dict[str, Optional[str]]]],
    lock: bool = True,
) -> tuple[CacheEntry, str]:
    """The teacher-output entry a distiller trains from, and the cache status (``'disk'`` | ``'memory'``).

    With ``cache_dir``: the shared on-disk entry keyed by ``fingerprint_of(extra)`` (the engine's
    fingerprint of its teacher and data, plus the device type, feature budget and storage dtype in
    ``extra``), built with ``build(feature_budget_mb, dtype)`` by whichever worker gets there first.
    Without: ``build`` runs in this process and the entry lives in memory, under the same precision rules.
    """
    dtype = str(cache_settings.dtype)
    budget = cache_settings.feature_budget_mb
    if not cache_dir:
        logger.info("teacher cache fill started: the teacher's outputs on the training data (in memory)")
        arrays, keys = build(budget, dtype)
        return in_memory_entry(arrays, keys, dtype), "memory"
    fp = fingerprint_of({"device": device_type, "budget_mb": float(budget), "dtype": dtype})
    entry, built = load_or_build(str(cache_dir), fp, lambda: build(budget, dtype), dtype, lock=lock)
    logger.info("teacher cache %s: %s (%.1f MiB)", fp[:16], "built" if built else "loaded", entry.nbytes / 2**20)
    return entry, "disk"

