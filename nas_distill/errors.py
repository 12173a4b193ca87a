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
