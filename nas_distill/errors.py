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
