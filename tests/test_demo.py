"""`nas-distill demo` end to end through the real CLI, on the real digits data.

The full teacher (3,000 steps, ~100 s) is what `make demo` trains; here a short teacher is trained into the
run folder first, and the demo must reuse it (the cache the demo relies on between runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_reuses_the_cached_teacher(tmp_path):
    from nas_distill.tasks import digits

    run_dir = tmp_path / "demo"
    digits.train_teacher(run_dir / "teacher", steps=40, threads=1)  # any teacher: the point is its reuse
    teacher_mtime = (run_dir / "teacher" / "config.json").stat().st_mtime

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    res = subprocess.run(
        [sys.executable, "-m", "nas_distill.cli", "demo", "--run-dir", str(run_dir), "--max-trials", "2",
         "--workers", "2"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "Pareto front" in out and "accuracy" in out and "latency" in out
    assert "teacher: val accuracy" in out
    assert "test accuracy" in out and "of the teacher's" in out
    report_lines = [line for line in out.splitlines() if line.startswith("report: ")]
    assert report_lines and Path(report_lines[0].split(": ", 1)[1]).is_file()

    # The teacher was reused, not retrained.
    assert (run_dir / "teacher" / "config.json").stat().st_mtime == teacher_mtime
    study = optuna.load_study(study_name="digits-demo", storage=f"sqlite:///{run_dir / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 2
    assert study.metric_names == ["accuracy", "latency"]
    assert all(t.user_attrs.get("artifact_id") for t in complete)
