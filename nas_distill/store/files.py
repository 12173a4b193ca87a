"""The run folder's files beside the study: the artifact store, and a write check before any work."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore

from ..errors import ConfigError

__all__ = ["artifact_store", "check_writable"]


def artifact_store(run_dir: str | os.PathLike) -> FileSystemArtifactStore:
    """The file-system artifact store of a run (``<run_dir>/artifacts``), shared by its workers."""
    path = Path(run_dir) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def check_writable(folder: str | os.PathLike, field: str) -> None:
    """Create ``folder`` and write (then remove) a file in it; a ConfigError naming ``field`` if either
    fails. Called before the first trial, so a run folder nobody can write costs no training."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-") as probe:
            probe.write(b"ok")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise ConfigError(field, f"cannot write to {folder}: {exc.strerror or exc}; fix its permissions or "
                                 f"free space, or choose another folder (--run-dir)") from None
