"""A machine's timings: one at a time, and never while a worker of the machine is in a training step.

A latency is only meaningful when nothing else loads the machine while it is timed. Every worker on a
machine takes :func:`measurement_lock` around each timing, and holds a :class:`training_load` while it
trains, calling :meth:`training_load.pause_point` between training steps:

* trainings share the machine with each other (a shared ``flock`` on ``nas-distill-measure.lock``);
* a measurement first takes ``nas-distill-measure.turnstile`` (so no training resumes, and the other
  measurements wait, saying who holds it), then the lock exclusively: it waits until every training of the machine has
  reached its next pause point (one training step), and they wait there until it is done.

The turnstile is a :func:`~nas_distill.setup_lock.setup_lock` (its holder's pid, host and step in the file). The locks
are POSIX ``flock``s: the kernel releases them when their holder dies, however it dies (SIGKILL
included), so a dead holder never blocks the others. The files are in a per-machine folder
(``nas-distill-<uid>`` in the system's temporary folder, or ``$NAS_DISTILL_LOCK_DIR``), not in the run
folder, because a run folder may be shared by several machines over a network file system and machines
do not load each other.

Where ``fcntl`` does not exist (Windows) the locks are no-ops: measurements are then not serialised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from .setup_lock import setup_lock

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "NAS_DISTILL_LOCK_DIR"
MEASUREMENT_LOCK_NAME = "nas-distill-measure.lock"
TURNSTILE_NAME = "nas-distill-measure.turnstile"


def lock_dir() -> Path:
    """The per-machine folder of the lock files: ``$NAS_DISTILL_LOCK_DIR``, else ``nas-distill-<uid>`` in
    the temporary folder (one per user: another user's lock file would not open for writing)."""
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV])
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"nas-distill-{uid}"


def measurement_lock_path() -> Path:
    return lock_dir() / MEASUREMENT_LOCK_NAME


# Re-entrant within a process: a second flock on a new descriptor of the same file would wait for the
# process's own lock. One RLock per path keeps the process's other threads out as well.
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_DEPTH: dict[str, int] = {}
_GUARD = threading.Lock()


@contextlib.contextmanager
def _reentrant_lock(path: Path, step: str, then: Callable[[], ContextManager]) -> Iterator[None]:
    """:func:`~nas_distill.setup_lock.setup_lock` on ``path``, then ``then()``; re-entrant in one thread."""
    key = os.path.abspath(path)
    with _GUARD:
        local = _THREAD_LOCKS.setdefault(key, threading.RLock())
    with local:
        if _DEPTH.get(key):
            _DEPTH[key] += 1
            try:
                yield
            finally:
                _DEPTH[key] -= 1
            return
        with setup_lock(key, step), then():
            _DEPTH[key] = 1
            try:
                yield
            finally:
                _DEPTH[key] = 0


# This process's trainings (normally one): a measurement taken inside one steps out of it first, or it
# would wait for its own shared lock.
_ACTIVE_LOADS: list["training_load"] = []


@contextlib.contextmanager
def measurement_lock() -> Iterator[None]:
    """The machine-wide lock around every latency (or other timing) measurement: no other measurement,
    and every training of the machine paused at a step boundary, while the block runs."""
    for load in _ACTIVE_LOADS:
        load._leave()  # taken again at its next pause point
    with _reentrant_lock(lock_dir() / TURNSTILE_NAME, "timing a model", then=_trainings_paused):
        yield


@contextlib.contextmanager
def _trainings_paused() -> Iterator[None]:
    """The shared lock of the trainings, exclusively: every training of the machine is at a pause point.
    Waits one training step at most, so it says nothing while it waits."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(measurement_lock_path(), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class training_load:
    """Held by a worker while it trains: shared with the machine's other trainings, paused for a
    measurement at :meth:`pause_point` (call it between training steps). The shared lock is taken at
    the first pause point, so setup before the first step (a teacher-cache fill) never holds up a
    measurement."""

    def __init__(self):
        self._fds: tuple[int, int] | None = None
        self._holding = False

    def __enter__(self) -> "training_load":
        try:
            import fcntl  # noqa: F401 - POSIX only

            lock_dir().mkdir(parents=True, exist_ok=True)
            turnstile = os.open(lock_dir() / TURNSTILE_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                self._fds = (turnstile, os.open(measurement_lock_path(), os.O_RDWR | os.O_CREAT, 0o600))
            except OSError:
                os.close(turnstile)
                raise
        except (ImportError, OSError) as exc:  # no lock folder: train anyway, unpaused
            log.debug("training without the measurement lock: %s", exc)
            return self
        _ACTIVE_LOADS.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fds is None:
            return
        _ACTIVE_LOADS.remove(self)
        self._leave()
        for fd in self._fds:
            os.close(fd)
        self._fds = None

    def pause_point(self) -> None:
        """Between two training steps: wait here while a measurement is waiting or running."""
        if self._fds is None:
            return
        import fcntl

        turnstile, _ = self._fds
        if self._holding:
            try:
                fcntl.flock(turnstile, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a measurement holds the turnstile: step aside until it is done
                self._leave()
            else:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
                return
        self._enter()

    def _enter(self) -> None:
        import fcntl

        turnstile, shared = self._fds
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # behind any measurement waiting or running
        try:
            fcntl.flock(shared, fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        self._holding = True

    def _leave(self) -> None:
        if self._holding and self._fds is not None:
            import fcntl

            fcntl.flock(self._fds[1], fcntl.LOCK_UN)
        self._holding = False
