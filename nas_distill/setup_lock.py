"""One worker does a shared setup step (train the teacher, fill the teacher cache); the others wait, saying so.

Workers started together on a fresh run folder all find the teacher (or its cache) missing. Without a
lock each would spend minutes computing the same thing, silently. :func:`setup_lock` serialises them on
a lock file next to the result: the first takes it and works; each other worker logs who holds it and
what for, waits (a line every :data:`REPORT_EVERY_S` seconds), and, once the lock is free, finds the
result done and only loads it.

The lock is a POSIX ``flock``: the kernel releases it when its holder dies, however it dies, so a
waiting worker takes over a dead holder's lock at once and redoes the step (the result itself is
always published atomically, so a half-written one is never seen). The lock file records its holder
(pid, host, step, start time) for the waiting lines; a record left behind is how a taker knows that the
previous holder died mid-step, which it logs. Where ``fcntl`` does not exist the step runs unlocked (the
atomic publication still keeps one whole result).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

log = logging.getLogger(__name__)

#: How often a waiting worker says it is still waiting.
REPORT_EVERY_S = 30.0
_POLL_S = 0.2


def _read_holder(handle: Any) -> dict[str, Any] | None:
    handle.seek(0)
    text = handle.read()
    try:
        holder = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict[str, Any] | None, step: str) -> str:
    """``pid 12 on host-a is training the teacher, started 40 s ago``."""
    if not holder:
        return f"another worker is {step}"
    since = holder.get("since")
    age = f", started {time.time() - since:.0f} s ago" if isinstance(since, (int, float)) else ""
    return f"pid {holder.get('pid')} on {holder.get('host')} is {holder.get('step') or step}{age}"


def _try_lock(handle: Any) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def setup_lock(path: str | os.PathLike, step: str) -> Iterator[None]:
    """Hold the exclusive lock ``path`` while doing ``step`` (words such as ``"training the teacher"``).

    Blocks, logging who holds it, until it is free. The caller checks again, once inside, whether the
    result it wants exists by now (the previous holder usually made it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a+", encoding="utf-8") as handle:
        if not _try_lock(handle):
            log.info("waiting while %s (lock %s)", _describe(_read_holder(handle), step), path)
            last = time.monotonic()
            while not _try_lock(handle):
                time.sleep(_POLL_S)
                if time.monotonic() - last >= REPORT_EVERY_S:
                    last = time.monotonic()
                    log.info("still waiting while %s", _describe(_read_holder(handle), step))
        try:
            stale = _read_holder(handle)
            if stale:
                log.warning("taking over %s: its holder (pid %s on %s) stopped before finishing %s", path.name,
                            stale.get("pid"), stale.get("host"), stale.get("step") or step)
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "step": step,
                                     "since": time.time()}))
            handle.flush()
            yield
            handle.seek(0)
            handle.truncate()  # finished: no record left, so the next taker knows nobody died here
            handle.flush()
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
