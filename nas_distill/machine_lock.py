"""Cross-process locks on files: one holder at a time (a run folder's teacher, a machine's timings).

A latency is only meaningful when nothing else loads the machine while it is timed. Every worker on a
machine takes :func:`measurement_lock` around each timing, and holds a :class:`training_load` while it
trains, calling :meth:`training_load.pause_point` between training steps:

* trainings share the machine with each other (a shared ``flock`` on ``nas-distill-measure.lock``);
* a measurement first takes ``nas-distill-measure.turnstile`` (so no training resumes, and the other
  measurements wait), then the lock exclusively: it waits until every training of the machine has
  reached its next pause point (one training step), and they wait there until it is done.

The locks are POSIX ``flock``s: the kernel releases them when their holder dies, however it dies
(SIGKILL included), so a dead holder never blocks the others. The files are in a per-machine folder (the
system's temporary folder, or ``$NAS_DISTILL_LOCK_DIR``), not in the run folder, because a run folder may
be shared by several machines over a network file system and machines do not load each other.

Where ``fcntl`` does not exist (Windows) the locks are no-ops: measurements are then not serialised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "NAS_DISTILL_LOCK_DIR"
MEASUREMENT_LOCK_NAME = "nas-distill-measure.lock"
TURNSTILE_NAME = "nas-distill-measure.turnstile"
#: How often a waiting process says who holds the lock (seconds).
WAIT_REPORT_S = 30.0


def lock_dir() -> Path:
    """The per-machine folder of the lock files: ``$NAS_DISTILL_LOCK_DIR`` or the temporary folder."""
    return Path(os.environ.get(LOCK_DIR_ENV) or tempfile.gettempdir())


def measurement_lock_path() -> Path:
    return lock_dir() / MEASUREMENT_LOCK_NAME


def _open_lock_file(path: Path) -> int:
    """A descriptor on ``path`` (created readable and writable by every user of the machine, so two users'
    workers still serialise; read-only when another user created it: flock works on any descriptor)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | os.O_RDWR, 0o666)
    except PermissionError:
        return os.open(path, getattr(os, "O_NOFOLLOW", 0) | os.O_RDONLY)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # umask would otherwise keep other users out
    return fd


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text
    return "another process"


# Re-entrant within a process: a second flock on a new descriptor of the same file would wait for the
# process's own lock. One RLock per path keeps the process's other threads out as well.
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_DEPTH: dict[str, int] = {}
_GUARD = threading.Lock()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, what: str = "lock") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block (re-entrant in one thread); wait for it, saying
    every :data:`WAIT_REPORT_S` seconds who holds it. The holder writes its pid and host into the file."""
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
        with _flock(Path(key), what):
            _DEPTH[key] = 1
            try:
                yield
            finally:
                _DEPTH[key] = 0


@contextlib.contextmanager
def _flock(path: Path, what: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = _open_lock_file(path)
    try:
        waited_since = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if waited_since is None or now - waited_since >= WAIT_REPORT_S:
                    log.info("waiting for the %s (%s), held by %s", what, path, _holder(fd))
                    waited_since = now
                time.sleep(0.05)
        with contextlib.suppress(OSError):  # a read-only descriptor cannot say who holds it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# This process's trainings (normally one): a measurement taken inside one steps out of it first, or it
# would wait for its own shared lock.
_ACTIVE_LOADS: list["training_load"] = []


@contextlib.contextmanager
def measurement_lock() -> Iterator[None]:
    """The machine-wide lock around every latency (or other timing) measurement: no other measurement,
    and every training of the machine paused at a step boundary, while the block runs."""
    for load in _ACTIVE_LOADS:
        load._leave()  # taken again at its next pause point
    with file_lock(lock_dir() / TURNSTILE_NAME, what="measurement turnstile"), \
            file_lock(measurement_lock_path(), what="measurement lock"):
        yield


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

            turnstile = _open_lock_file(lock_dir() / TURNSTILE_NAME)
            try:
                self._fds = (turnstile, _open_lock_file(measurement_lock_path()))
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
