"""Exceptions that callers are expected to catch by type."""


class NasDistillError(Exception):
    """Base class of every error nas-distill raises on purpose."""


class ConfigError(NasDistillError, ValueError):
    """A configuration value is invalid. The message names the field path and the bad value."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class InvalidArchitecture(NasDistillError, ValueError):
    """A proposed student architecture cannot be built (e.g. hidden size not divisible by heads).

    The orchestrator records the trial as failed with this message; the search goes on.
    """


class SearchSpaceExhausted(NasDistillError):
    """Every point of the search space has been claimed by a trial; there is nothing new to propose."""


class SearchFailed(NasDistillError, RuntimeError):
    """Every trial of a search failed: there is no result to return. The message names the first
    failure; ``failed``, ``first_error_type`` and ``first_error`` hold the figures."""

    def __init__(self, message: str, *, failed: int = 0, first_error_type: str = "", first_error: str = ""):
        super().__init__(message)
        self.failed = failed
        self.first_error_type = first_error_type
        self.first_error = first_error


class EnvironmentFailure(NasDistillError, RuntimeError):
    """The worker's environment failed the same way twice in a row (a folder it cannot write, a full
    disk, an unreachable storage, no memory, a device error): the worker stops instead of failing every
    architecture of the space. ``cause`` is the last failure."""

    def __init__(self, message: str, cause: BaseException | None = None):
        self.cause = cause
        super().__init__(message)


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
    import errno as errno_mod

    from .store.classify import classify

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
