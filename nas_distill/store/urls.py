"""Storage settings -> storage URLs, and the files SQLite and journal URLs write to.

* ``None``: ``sqlite:///<run_dir>/study.db`` (embedded, nothing to start).
* ``sqlite:///path`` / a bare ``.db`` path: SQLite; ``postgresql+psycopg://...``: any SQLAlchemy URL.
* ``journal:///path`` or a path ending in ``.log`` / ``.journal`` / ``.jsonl``: a journal file.

The folder of a SQLite or journal file must exist (:func:`require_folder`): a typo in a path must not
quietly start a new, empty study somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from ..vocabulary import DEFAULT_RUN_DIR

__all__ = ["resolve_storage_url", "require_shared_storage", "is_journal", "journal_path", "sqlite_path",
           "storage_file", "require_folder"]


def is_journal(url: str) -> bool:
    return url.startswith("journal://") or url.endswith((".log", ".journal", ".jsonl"))


def resolve_storage_url(storage: str | None, run_dir: str | os.PathLike | None = None) -> str:
    """Normalise a storage setting to a URL.

    ``None`` -> ``sqlite:///<run_dir>/study.db``; a bare path ending in ``.db`` / ``.sqlite`` -> an
    absolute ``sqlite:///`` URL; a bare journal path -> ``journal:///<absolute path>``.
    """
    if storage is None or storage == "":
        folder = Path(run_dir or DEFAULT_RUN_DIR).resolve()
        return f"sqlite:///{folder / 'study.db'}"
    storage = str(storage)
    if "://" not in storage:
        path = Path(storage).expanduser().resolve()
        if is_journal(storage):
            return f"journal:///{path}"
        if storage.endswith((".db", ".sqlite", ".sqlite3")):
            return f"sqlite:///{path}"
        raise ConfigError(
            "study.storage",
            f"expected a storage URL (sqlite:///..., postgresql+psycopg://..., journal:///...) "
            f"or a .db / .log path, got {storage!r}",
        )
    return storage


def require_shared_storage(url: str) -> None:
    """A ConfigError for an in-memory SQLite URL: such a study lives and dies with one process, so the
    workers of a command-line search would each search alone and nothing would be saved."""
    if url in ("sqlite://", "sqlite:///:memory:") or (url.startswith("sqlite") and "mode=memory" in url):
        raise ConfigError("study.storage", f"{url} is private to one process and lost when it exits; use a "
                                           f"file (sqlite:///runs/<name>/study.db) or PostgreSQL")


def journal_path(url: str) -> str:
    if url.startswith("journal://"):
        rest = url[len("journal://") :]
        return rest[1:] if rest.startswith("//") else rest  # journal:///abs -> /abs
    return url


def sqlite_path(url: str) -> str | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :]
    return path if path not in ("", ":memory:") else None


def storage_file(url: str) -> str | None:
    """The file a SQLite or journal storage URL writes to (absolute as given), else ``None``."""
    url = resolve_storage_url(url)
    return journal_path(url) if is_journal(url) else sqlite_path(url)


def require_folder(path: str) -> None:
    """A storage file's folder must exist. Only the run folder (``study.run_dir``, where the default
    storage lives) is created, by :class:`~nas_distill.autodistill.AutoDistillation`."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise ConfigError("study.storage", f"the folder {folder} of {path} does not exist; create it, or leave "
                                           "study.storage unset to use <run_dir>/study.db")
