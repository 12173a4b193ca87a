"""The live progress bar of ``run`` / ``worker`` on a terminal: done / running / failed counts and ETA.

The counts come from the study itself (polled once a second from a thread, through a storage of its
own), so the bar is right whatever runs the trials: this process, the workers ``run`` started, or
workers on other machines. Log lines keep flowing above the bar (rich redirects stdout while it is live).
Off a terminal, with ``-q`` or with ``--log-format json`` there is no bar: the log lines say it all.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Optional

from .vocabulary import stopped_early

log = logging.getLogger(__name__)


def wanted(verbosity: int, log_format: str, stream=None) -> bool:
    stream = stream or sys.stdout
    return log_format == "plain" and verbosity >= 0 and bool(getattr(stream, "isatty", lambda: False)())


def study_counts(study) -> dict[str, int]:
    """``{'done', 'running', 'failed', 'stopped', 'pruned'}`` of the study: done counts the trials that used
    a slot; stopped, the trials the pruner stopped early; pruned, the other PRUNED trials (never trained:
    a repeat of a known arch, or given up in a race for the last slot), as the workers' last lines count
    them."""
    from optuna.trial import TrialState

    from . import breaker
    from .store import optuna_internals
    from .study import counted_complete, is_counted

    trials = optuna_internals.study_storage(study).get_all_trials(optuna_internals.study_id(study), deepcopy=False)
    stopped = sum(1 for t in trials if stopped_early(t))
    return {
        "done": counted_complete(trials),
        "running": sum(1 for t in trials if t.state == TrialState.RUNNING and is_counted(t)),
        "failed": sum(1 for t in trials if breaker._own_failure(t)),
        "stopped": stopped,
        "pruned": sum(1 for t in trials if t.state == TrialState.PRUNED) - stopped,
    }


class LiveProgress:
    """A rich progress bar over the study ``study_name`` in ``storage_url``, ``budget`` trials long.

    Use as a context manager; does nothing when ``enabled`` is false. The study may not exist yet when
    the bar starts (the dry run comes first): the bar waits for it.
    """

    def __init__(self, storage_url: str, study_name: str, budget: int, *, enabled: bool = True,
                 interval: float = 1.0):
        self.storage_url, self.study_name, self.budget = storage_url, study_name, int(budget)
        self.enabled = enabled
        self.interval = interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._progress = None
        self._task = None
        self._study = None

    def __enter__(self) -> "LiveProgress":
        if not self.enabled:
            return self
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("running {task.fields[running]}  failed {task.fields[failed]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            redirect_stdout=True, redirect_stderr=False, transient=False,
        )
        self._task = self._progress.add_task(self.study_name, total=self.budget, running=0, failed=0)
        self._progress.start()
        self._thread = threading.Thread(target=self._poll, name="progress", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while True:
            self._refresh()
            if self._stop.wait(self.interval):
                return

    def _refresh(self) -> None:
        try:
            if self._study is None and self._study_may_exist():
                from .study import load_study

                self._study = load_study(self.storage_url, self.study_name)
            if self._study is not None:
                self.update(study_counts(self._study))
        except Exception as exc:  # noqa: BLE001 - no study yet, a storage blip: try again
            log.debug("progress: %s", exc)

    def _study_may_exist(self) -> bool:
        # Opening a SQLite or journal URL creates the file: never before the dry run has let the run create it.
        from pathlib import Path

        from .study import _is_journal, _journal_path, _sqlite_path

        path = _journal_path(self.storage_url) if _is_journal(self.storage_url) else _sqlite_path(self.storage_url)
        return path is None or Path(path).exists()

    def update(self, counts: dict[str, int]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=min(counts["done"], self.budget),
                                  running=counts["running"], failed=counts["failed"])

    def __exit__(self, *exc) -> None:
        if self._progress is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._refresh()  # the last trials may have finished since the last poll
        self._progress.stop()
