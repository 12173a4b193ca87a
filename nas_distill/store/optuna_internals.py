"""Every private Optuna name nas-distill uses, in one place, each checked against the installed Optuna.

Why private names at all: Optuna has no public way to batch several writes of a trial in one
transaction, to make a state change conditional (one finisher across workers), to read a study's storage
and id back from a ``Study``, or to compute a hypervolume; doing without would cost a commit per
attribute or a race on every finish. Kept here so that an Optuna release that moves one of them fails
with one clear error naming the version (:class:`OptunaInternalsError`) instead of an ``AttributeError``
deep inside a worker, and so that the next upgrade has one file to check.

Used (module-level names, checked on import):

* ``optuna.storages._rdb.models``, ``optuna.storages._rdb.storage._create_scoped_session``: batched and
  conditional SQL writes (:mod:`.atomic`, :mod:`.attrs`, :mod:`.stale`).
* ``optuna.storages._CachedStorage``: the cache ``optuna.create_study`` puts in front of an
  ``RDBStorage``, which the retrying wrapper goes around (:mod:`.retry`).
* ``optuna.storages._heartbeat.BaseHeartbeat``: the heartbeat interface the retrying wrapper forwards.
* ``optuna.storages.journal._file.BaseJournalFileLock``: the journal lock's base (:mod:`.journal_lock`).
* ``optuna._hypervolume.compute_hypervolume``: :mod:`nas_distill.search.pareto`.

Private attributes (read through the functions below, checked when used): ``Study._storage``,
``Study._study_id``, ``FrozenTrial._trial_id`` / ``Trial._trial_id``, the ``_backend`` of a wrapping
storage, ``JournalFileBackend._lock``, ``RDBStorage._set_trial_attr_without_commit`` and
``BaseHeartbeat._get_stale_trial_ids``.
"""

from __future__ import annotations

import importlib
from typing import Any

import optuna

__all__ = ["OptunaInternalsError", "resolve", "models", "create_scoped_session", "CachedStorage",
           "BaseHeartbeat", "BaseJournalFileLock", "compute_hypervolume", "study_storage", "study_id",
           "trial_id", "backend_of", "journal_lock_of", "set_trial_attr_without_commit",
           "get_stale_trial_ids", "STALE_TRIAL_IDS"]

#: The Optuna releases these names were checked against (``pyproject.toml`` allows the same range).
TESTED_VERSIONS = ">=5.0,<6"


class OptunaInternalsError(ImportError):
    """An Optuna internal nas-distill relies on is missing from the installed Optuna."""

    def __init__(self, name: str, detail: str = ""):
        super().__init__(f"optuna {optuna.__version__} has no {name}{f' ({detail})' if detail else ''}; "
                         f"nas-distill uses this Optuna internal and was tested with optuna{TESTED_VERSIONS}: "
                         f"install a version in that range")
        self.name = name


def resolve(spec: str) -> Any:
    """``'package.module:attr'`` -> the object; :class:`OptunaInternalsError` when it is missing."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OptunaInternalsError(module_name, str(exc)) from None
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        raise OptunaInternalsError(f"{module_name}.{attr}") from None


models = resolve("optuna.storages._rdb.models")
create_scoped_session = resolve("optuna.storages._rdb.storage:_create_scoped_session")
CachedStorage = resolve("optuna.storages:_CachedStorage")
BaseHeartbeat = resolve("optuna.storages._heartbeat:BaseHeartbeat")
BaseJournalFileLock = resolve("optuna.storages.journal._file:BaseJournalFileLock")
compute_hypervolume = resolve("optuna._hypervolume:compute_hypervolume")
#: The heartbeat method the retrying wrapper forwards besides the public ones.
STALE_TRIAL_IDS = "_get_stale_trial_ids"
for _cls, _name in ((BaseHeartbeat, STALE_TRIAL_IDS),
                    (optuna.storages.RDBStorage, "_set_trial_attr_without_commit"),
                    (models, "TrialModel"), (models, "TrialHeartbeatModel"), (models, "TrialUserAttributeModel"),
                    (models, "TrialValueModel")):
    if not hasattr(_cls, _name):
        raise OptunaInternalsError(f"{getattr(_cls, '__qualname__', _cls.__name__)}.{_name}")


def _attr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise OptunaInternalsError(f"{type(obj).__module__}.{type(obj).__qualname__}.{name}") from None


def study_storage(study: optuna.Study) -> Any:
    """The storage a study talks to (``Study`` keeps it private)."""
    return _attr(study, "_storage")


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage (``Study`` keeps it private)."""
    return _attr(study, "_study_id")


def trial_id(trial: Any) -> int:
    """The storage id of a ``Trial`` or ``FrozenTrial`` (both keep it private)."""
    return _attr(trial, "_trial_id")


def backend_of(storage: Any) -> Any:
    """The storage a wrapper (``_CachedStorage``, our retrying wrapper, ``JournalStorage``'s backend)
    holds in ``_backend``, or None. Read from the instance dict: wrappers forward unknown attributes."""
    return storage.__dict__.get("_backend") if hasattr(storage, "__dict__") else None


def journal_lock_of(storage: Any) -> Any:
    """The file lock of a ``JournalStorage`` on a ``JournalFileBackend``, or None."""
    return getattr(backend_of(storage), "_lock", None)


def set_trial_attr_without_commit(rdb: Any, session: Any, model: Any, trial_id: int, key: str, value: Any) -> None:
    """Optuna's own per-attribute upsert inside the caller's session."""
    rdb._set_trial_attr_without_commit(session, model, trial_id, key, value)


def get_stale_trial_ids(storage: Any, study_id: int) -> list[int]:
    return getattr(storage, STALE_TRIAL_IDS)(study_id)
