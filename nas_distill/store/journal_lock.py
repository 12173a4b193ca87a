"""The journal file's lock, which knows its holder, so a dead holder costs nobody 30 seconds.

Every write to a journal study appends under one lock file (``<journal>.lock``). A worker killed inside
that critical section leaves the file behind; Optuna's locks then make every worker wait until the file
has been unchanged for their grace period (30 s) before breaking it. Meanwhile no heartbeat can be
written, so once the lock is broken the stale sweep would fail every live trial as lost and retrain it.

:class:`HolderJournalLock` creates the lock file exclusively (``O_EXCL``, like Optuna's
``JournalFileOpenLock``: the same file name, so both exclude each other) and writes ``<host> <pid>`` in
it. A waiter on the same host whose holder process no longer exists takes the lock over at once; a
holder elsewhere (or one that has not written its name yet) is broken after ``grace_period`` seconds of
an unchanged lock file, as Optuna does. A wait longer than :data:`STALL_S` is recorded
(``stall_ended``): the stale sweep (:func:`nas_distill.store.stale.fail_stale_trials`) then gives the live
workers a grace period to beat again before declaring anyone dead.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

from .optuna_internals import BaseJournalFileLock

log = logging.getLogger(__name__)

#: A wait for the journal lock longer than this (s) means its holder stalled: an append takes milliseconds.
STALL_S = 2.0
#: Seconds of an unchanged lock file after which a holder that cannot be checked is presumed dead
#: (Optuna's own default).
GRACE_S = 30.0
_LOCK_SUFFIX = ".lock"
_BROKEN_SUFFIX = ".broken"


class HolderJournalLock(BaseJournalFileLock):
    """See the module docstring. ``grace_period``: seconds of an unchanged lock file after which a holder
    that cannot be checked (another host) is presumed dead."""

    def __init__(self, filepath: str, grace_period: float | None = None):
        self._lock_file = filepath + _LOCK_SUFFIX
        self.grace_period = float(GRACE_S if grace_period is None else grace_period)
        self.stall_ended: float | None = None  # monotonic time the last long wait ended
        self._me = f"{socket.gethostname()} {os.getpid()}"

    def acquire(self) -> bool:
        started = time.monotonic()
        pause, seen_mtime, unchanged_since = 0.001, None, started
        while True:
            try:
                fd = os.open(self._lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                now = time.monotonic()
                holder = self._holder()
                if self._is_dead(holder):
                    self._take_over(holder, "its holder process is gone")
                    continue
                try:
                    mtime = os.stat(self._lock_file).st_mtime
                except FileNotFoundError:
                    continue  # released meanwhile
                if mtime != seen_mtime:
                    seen_mtime, unchanged_since = mtime, now
                elif now - unchanged_since > self.grace_period:
                    self._take_over(holder, f"unchanged for {self.grace_period:g} s")
                    continue
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
                continue
            try:
                os.write(fd, self._me.encode())
            finally:
                os.close(fd)
            waited = time.monotonic() - started
            if waited > STALL_S:
                self.stall_ended = time.monotonic()
                log.warning("waited %.1f s for the journal lock %s", waited, self._lock_file)
            return True

    def release(self) -> None:
        # Renamed before unlinking (as Optuna does): a rename is atomic, so two releasers cannot both
        # remove a lock that a third process has just created.
        moved = f"{self._lock_file}{uuid.uuid4().hex}{_BROKEN_SUFFIX}"
        try:
            os.rename(self._lock_file, moved)
            os.unlink(moved)
        except OSError:
            raise RuntimeError(f"did not possess the journal lock {self._lock_file}") from None

    def _holder(self) -> str | None:
        """The lock file's ``'<host> <pid>'`` (empty while its creator has not written it), or None."""
        try:
            with open(self._lock_file, encoding="utf-8") as handle:
                return handle.read(200).strip()
        except (OSError, UnicodeDecodeError):
            return None

    def _is_dead(self, holder: str | None) -> bool:
        host, _, pid = (holder or "").partition(" ")
        if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
            return False  # another machine's process, a holder still writing its name, or ourselves
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def _take_over(self, holder: str | None, why: str) -> None:
        """Remove the lock file of ``holder``. Another waiter may have removed it and taken the lock
        meanwhile: the file moved aside is then put back unless a third one took the name."""
        moved = f"{self._lock_file}{uuid.uuid4().hex}{_BROKEN_SUFFIX}"
        try:
            os.rename(self._lock_file, moved)
        except OSError:
            return  # gone already
        try:
            with open(moved, encoding="utf-8") as handle:
                now_holder = handle.read(200).strip()
        except (OSError, UnicodeDecodeError):
            now_holder = None
        if now_holder == holder:
            log.warning("took over the journal lock %s from %s: %s", self._lock_file, holder or "?", why)
        else:
            try:
                os.link(moved, self._lock_file)
            except OSError:
                log.warning("journal lock %s: moved a live holder's lock aside", self._lock_file)
        try:
            os.unlink(moved)
        except OSError:
            pass
