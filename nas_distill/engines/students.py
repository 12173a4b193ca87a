"""A trained student on disk: saved by the trial loop, packed into the study's artifact store, unpacked
by ``export`` and the demo, loaded again. One folder layout for every engine:

* ``save_pretrained`` (safetensors) when the model has it; else the engine's format: a Keras model as
  ``model.keras`` (Keras 3's zip: config + weights, reloadable with ``keras.saving.load_model(path,
  safe_mode=True)``), a torch module's ``state_dict`` as ``model.safetensors``;
* ``arch.json``, and the task's ``preprocessor`` (an image processor or tokenizer: anything with
  ``save_pretrained``), so the folder runs in ``transformers.pipeline`` alone.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from . import engine_of
from .base import loaded
from .keras import KERAS_FILE

__all__ = ["save_student", "save_student_artifact", "extract_student", "download_student", "load_student",
           "rebuild_with"]


def _savable(model: Any) -> bool:
    return hasattr(model, "save_pretrained") or engine_of(model) is not None


def save_student(model: Any, arch: dict, folder: str | os.PathLike, preprocessor: Any = None) -> bool:
    """Write a trained student to ``folder`` (see the module docstring). False: not a model."""
    folder = Path(folder)
    if not _savable(model):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        transformers = loaded("transformers")
        if transformers is not None:  # no "Writing model shards" bar per trial
            transformers.utils.logging.disable_progress_bar()
        model.save_pretrained(str(folder))
    else:
        engine_of(model).save(model, folder)
    if preprocessor is not None and hasattr(preprocessor, "save_pretrained"):
        preprocessor.save_pretrained(str(folder))
    (folder / "arch.json").write_text(json.dumps(arch, indent=2, sort_keys=True))
    return True


def save_student_artifact(model: Any, arch: dict, store: Any, trial: Any, preprocessor: Any = None) -> str | None:
    """Save ``model`` (see :func:`save_student`) as a tar in the artifact store, linked from ``trial``."""
    if not _savable(model):
        return None  # nothing we know how to save (e.g. a user's plain-Python student)
    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory(prefix="nas-distill-student-") as tmp:
        folder = Path(tmp) / "student"
        if not save_student(model, arch, folder, preprocessor):
            return None
        archive = Path(tmp) / f"student-trial-{trial.number}.tar"
        with tarfile.open(archive, "w") as tar:
            for path in sorted(folder.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
        return upload_artifact(
            artifact_store=store, file_path=str(archive), study_or_trial=trial, mimetype="application/x-tar"
        )


def extract_student(archive: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Unpack a student archive written by :func:`save_student_artifact` into ``out_dir`` (safely).

    Only an uncompressed tar of plain files and folders inside ``out_dir`` is unpacked: the store holds
    plain tars, and a compressed member (30 KB that inflate to gigabytes) or a sparse one could fill the
    disk; without compression the files cannot add up to more than the archive itself.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        tar = tarfile.open(archive, "r:")
    except tarfile.ReadError as exc:
        raise ValueError(f"refusing to extract {Path(archive).name}: not an uncompressed tar ({exc})") from None
    with tar:
        for member in tar.getmembers():
            if member.issparse():
                raise ValueError(f"refusing to extract {member.name!r}: a sparse member")
            target = (out / member.name).resolve()
            # is_relative_to, not a string prefix: "../out-evil/x" starts with "<...>/out" too
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(out.resolve()):
                raise ValueError(f"refusing to extract {member.name!r}: not a plain file inside {out}")
        try:
            tar.extractall(out, filter="data")
        except TypeError:  # Python without extraction filters; members were checked above
            tar.extractall(out)
    return out


def download_student(store: Any, artifact_id: str, out_dir: str | os.PathLike) -> Path:
    """The student folder of ``artifact_id`` from the artifact store, unpacked into ``out_dir``."""
    from optuna.artifacts import download_artifact

    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "student.tar")
        download_artifact(artifact_store=store, file_path=archive, artifact_id=artifact_id)
        return extract_student(archive, out_dir)


def load_student(folder: str | os.PathLike, model_cls: Any = None, *, source: str = "", **kwargs: Any) -> Any:
    """The student saved in ``folder``: a ``model.keras`` through the Keras engine (safe mode), else
    ``model_cls.from_pretrained(folder, **kwargs)``."""
    from . import engine

    folder = Path(folder)
    framework = "tensorflow" if (folder / KERAS_FILE).is_file() else "pytorch"
    return engine(framework).load(folder, model_cls, source=source, **kwargs)


def rebuild_with(model: Any, model_cls: Any, run_dir: str) -> Any:
    """Seed ``model_cls`` semantics: save the student, then rebuild it from what was saved.

    torch / Hugging Face: ``save_pretrained`` + ``model_cls.from_pretrained``. Keras: ``model.keras`` +
    ``keras.saving.load_model(safe_mode=True)``, with ``model_cls`` registered as a custom object when it
    is a ``keras.Model`` subclass; the rebuilt model must be one.
    """
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=".student-", dir=run_dir)
    try:
        owner = engine_of(model)
        if owner is not None and not hasattr(model, "save_pretrained"):
            owner.save(model, Path(folder))
        else:
            model.save_pretrained(folder)
        return load_student(folder, model_cls, source=f"the builder returned a {type(model).__name__}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
