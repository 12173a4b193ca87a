"""The study's storage behind one handle: ``open_study`` returns a :class:`StudyStore`.

Modules, one job each: :mod:`.urls` (settings -> URLs), :mod:`.secrets` (password masking),
:mod:`.open` (storages and studies), :mod:`.handle` (the handle), :mod:`.retry` and :mod:`.classify`
(riding out outages), :mod:`.heartbeat`, :mod:`.stale` (dead workers' trials), :mod:`.attrs` and
:mod:`.sql` (trial records), :mod:`.atomic` (one finisher per trial), :mod:`.budget`,
:mod:`.journal_lock`, :mod:`.files` (artifact store, write check) and :mod:`.optuna_internals` (every
private Optuna name used).

The names below are imported on first use, so the leaf modules (``secrets``, ``classify``, ``urls``)
can be imported by the config checks and the error helpers without the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "open_study": "open", "load_study": "open", "make_storage": "open", "open_storage": "open",
    "DEFAULT_STUDY_NAME": "open",
    "StudyStore": "handle", "store_of": "handle",
    "Heartbeat": "heartbeat", "HEARTBEAT_ATTR": "heartbeat",
    "resolve_storage_url": "urls", "storage_file": "urls", "require_shared_storage": "urls",
    "mask_url": "secrets", "mask_secrets": "secrets",
    "artifact_store": "files", "check_writable": "files",
    "worker_identity": "attrs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
