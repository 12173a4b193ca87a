"""Is a failure the machine's (a full disk, no memory, a device error, a storage gone) rather than the
architecture's? A worker that meets the same environmental failure again stops instead of failing every
architecture of the space (:class:`~nas_distill.errors.EnvironmentFailure`).

Kept apart from :mod:`nas_distill.errors` so that the exceptions stay a leaf every layer may import;
this check needs the storage's error classification.
"""

from __future__ import annotations

import errno as errno_mod

from .store.classify import classify

__all__ = ["environment_cause"]


#: errno values of OS errors that are the machine's, not the architecture's.
_ENVIRONMENT_ERRNOS = ("EACCES", "EPERM", "ENOSPC", "EROFS", "EIO", "EDQUOT", "ENOMEM", "EMFILE", "ENFILE",
                       "ESTALE", "EFBIG")
_MEMORY_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "resource exhausted")
_DEVICE_MESSAGES = ("cuda error", "device-side assert", "cudnn_status", "cublas_status", "nccl error",
                    "hip error")


def environment_cause(exc: BaseException) -> str | None:
    """A short name for the environmental failure behind ``exc`` (its causes included), or None when
    the failure may be the architecture's own.

    Environmental: an OS error such as a permission, a read-only or full disk, an I/O error; no memory
    (``MemoryError``, a device's out-of-memory); a device error; a storage that stayed unreachable past
    its retry window. The name (e.g. ``PermissionError[EACCES]``) tells one failure from another, so the
    worker can stop when the same one repeats.
    """
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            code = errno_mod.errorcode.get(error.errno, "")
            if code in _ENVIRONMENT_ERRNOS:
                return f"{type(error).__name__}[{code}]"
        if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
            return type(error).__name__
        if isinstance(error, RuntimeError):
            text = str(error).lower()
            if any(m in text for m in _MEMORY_MESSAGES):
                return "OutOfMemory"
            if any(m in text for m in _DEVICE_MESSAGES):
                return "DeviceError"
        if classify(error) is not None:
            return "StorageUnreachable"
        error = error.__cause__ or error.__context__
    return None
