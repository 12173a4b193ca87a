"""What `run` prints: a live progress bar on a terminal, and only warnings and errors with `-q`.

(Plain lines off a terminal and `--log-format json` are checked against the study in test_cli.py.)
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from _support.common import task_config, write_config

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _read_all(fd, proc, timeout=180) -> str:
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_on_a_terminal_a_live_bar_counts_done_running_failed(tmp_path, task_module):
    cfg = write_config(tmp_path / "cfg.yaml", task_config(tmp_path / "run", study_name="tty", max_trials=5))
    main, child = pty.openpty()
    env = dict(os.environ, ND_TEST_TRAIN_SECONDS="1.2", COLUMNS="150")
    # --max-trials overrides the config's 5: the bar counts to 3
    proc = subprocess.Popen([sys.executable, "-m", "nas_distill.cli", "run", cfg, "--max-trials", "3"],
                            stdin=child, stdout=child,
                            stderr=child, env=env, close_fds=True)
    os.close(child)
    try:
        text = _read_all(main, proc)
    finally:
        os.close(main)
    assert proc.wait(timeout=60) == 0, text[-3000:]
    screen = [line for line in ANSI.sub("", text).replace("\r", "\n").splitlines() if line.strip()]
    bars = [line for line in screen if re.search(r"\d+/3 running \d+  failed \d+", line)]
    assert bars, screen[-20:]
    assert any("3/3 running 0  failed 0" in line for line in bars), bars[-5:]
    assert any(re.search(r"[0-2]/3 running 1 ", line) for line in bars), bars  # seen mid-trial
    assert "ETA" in bars[-1]
    # the log lines still come, above the bar
    assert sum(1 for line in screen if re.search(r" w0 trial \d finished in ", line)) == 3


@pytest.mark.slow
def test_quiet_prints_warnings_and_errors_only(tmp_path, task_module, capsys, monkeypatch):
    from nas_distill import cli

    monkeypatch.setenv("NAS_DISTILL_WORKER", "w0")  # run_worker sets it; restored afterwards
    cfg = write_config(tmp_path / "cfg.yaml", task_config(tmp_path / "run", study_name="q", max_trials=2))
    assert cli.main(["run", cfg, "-q"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert cli.main(["run", cfg, "-v", "--max-trials", "3"]) == 0
    out, _ = capsys.readouterr()
    assert re.search(r" w0 trial 2 finished in ", out) and "search finished after" in out


@pytest.mark.slow
def test_teacher_training_says_it_started(tmp_path, caplog):
    """The long step a first run takes (the digits teacher, here 2 steps) is announced before it runs."""
    from nas_distill.tasks import digits

    with caplog.at_level("INFO", logger="nas_distill"):
        digits.train_teacher(tmp_path / "teacher", steps=2, threads=1)
    messages = [r.getMessage() for r in caplog.records]
    started = [i for i, m in enumerate(messages) if m.startswith("teacher training started: a ViT")]
    finished = [i for i, m in enumerate(messages) if m.startswith("teacher trained in")]
    assert started and finished and started[0] < finished[0], messages


def test_the_banner_masks_the_storage_password(caplog):
    from nas_distill import cli

    target = {"url": "postgresql+psycopg://ann:s3cret-pw@db.example:5432/nas", "name": "s", "budget": 7,
              "algorithm": "bo", "space": 12, "metrics": ["accuracy"], "stop_after_failures": 3}
    with caplog.at_level("INFO", logger="nas_distill"):
        cli._banner(target, 4)
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "search_started"]
    assert "s3cret-pw" not in record.getMessage() and "s3cret-pw" not in str(record.fields)
    assert "postgresql+psycopg://ann:***@db.example:5432/nas" in record.getMessage()
    assert record.fields["budget"] == 7 and record.fields["workers"] == 4
