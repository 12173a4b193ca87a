"""Headless Debian Chromium for the report tests: console messages, rendered DOM, screenshot.

One Chromium run per call, each with a fresh ``--user-data-dir``, offline-friendly flags and a virtual
time budget so plotly has finished drawing before the DOM is dumped or the screenshot taken.

Console messages: ``--enable-logging=stderr --v=0`` makes Chromium log every ``console.*`` call and
every uncaught exception as a ``CONSOLE`` line on stderr (without the level), so the report is held to
"no console output at all"; it logs nothing when all is well.

When Chromium is missing the caller skips, except under ``CI=true`` where that is a failure. Install:
``apt-get update && apt-get install -y chromium``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=8000",
]
_CONSOLE = re.compile(r":CONSOLE[:(]\S*\]?\s*(.*)$")


def find_chromium() -> str:
    """Path of the Chromium binary; skips the test (fails under ``CI=true``) when there is none."""
    for candidate in (os.environ.get("NAS_DISTILL_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    reason = "Chromium not found (apt-get update && apt-get install -y chromium)"
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"headless Chromium is required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class BrowserRun:
    console: list[str]
    stdout: str
    stderr: str


def run_chromium(url: str, *extra: str, timeout: float = 90.0) -> BrowserRun:
    """Run headless Chromium once on ``url`` with ``extra`` flags (``--dump-dom``, ``--screenshot=...``)."""
    binary = find_chromium()
    with tempfile.TemporaryDirectory(prefix="nas-distill-chromium-") as profile:
        proc = subprocess.run(
            [binary, *BASE_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             *extra, url],
            capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "HOME": profile},
        )
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    console = [m.group(1) for line in proc.stderr.splitlines() if (m := _CONSOLE.search(line))]
    return BrowserRun(console=console, stdout=proc.stdout, stderr=proc.stderr)


def screenshot(url: str, path: Path, width: int = 1280, height: int = 1600) -> BrowserRun:
    return run_chromium(url, f"--window-size={width},{height}", f"--screenshot={path}")


def dump_dom(url: str) -> BrowserRun:
    return run_chromium(url, "--dump-dom")
