"""Cross-process exclusive locks on files: one holder at a time, on this machine or on one run folder.

A latency is only meaningful when nothing else loads the machine while it is timed, so every worker on a
machine takes :func:`measurement_lock` around each timing. The lock is a POSIX ``flock`` on a file: the
kernel releases it when its holder dies, however it dies (SIGKILL included), so a dead holder never
blocks the others. Its file is in a per-machine folder (the system's temporary folder, or
``$NAS_DISTILL_LOCK_DIR``), not in the run folder, because a run folder may be shared by several machines
over a network file system and machines do not load each other.

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


def measurement_lock() -> contextlib.AbstractContextManager:
    """The machine-wide lock around every latency (or other timing) measurement."""
    return file_lock(measurement_lock_path(), what="measurement lock")
