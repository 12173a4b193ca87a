"""``setup_lock``: a waiting worker says who holds the lock, and takes over the lock of a holder killed
mid-step (a real second process, killed with SIGKILL)."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

from nas_distill.setup_lock import setup_lock

HOLDER = """
import sys, time
from nas_distill.setup_lock import setup_lock
with setup_lock(sys.argv[1], "training the teacher"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_waiter_says_so_and_takes_over_a_killed_holder(tmp_path, caplog):
    lock = tmp_path / "teacher.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        acquired = threading.Event()

        def wait_for_lock():
            with setup_lock(lock, "training the teacher"):
                acquired.set()

        with caplog.at_level(logging.INFO, logger="nas_distill.setup_lock"):
            waiter = threading.Thread(target=wait_for_lock)
            waiter.start()
            deadline = time.monotonic() + 10
            while "waiting while" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            assert re.search(rf"waiting while pid {holder.pid} on \S+ is training the teacher, started \d+ s ago",
                             caplog.text)
            time.sleep(0.5)
            assert not acquired.is_set()  # really waiting
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=10)
            waiter.join(timeout=10)
        assert acquired.is_set()
        assert f"taking over teacher.lock: its holder (pid {holder.pid} on " in caplog.text
        assert lock.read_text() == ""  # this holder finished: no record left behind
    finally:
        if holder.poll() is None:
            holder.kill()
