"""A failing machine is not a failing architecture.

* A run folder whose ``artifacts`` cannot be written: ``run`` stops before the first trial with one line
  and a non-zero exit (no training thrown away); once the folder is writable again, the same command
  trains every architecture of its budget.
* A folder that turns unwritable in the middle of a search: the trial is failed with the reason
  ``environment``, its architecture is retried (never answered from the store as failed), and the worker
  stops after the same environmental failure twice; the next search trains every architecture.
* The classification itself, on real exceptions.

A folder is made unwritable with permissions, or, for root (whom permissions do not stop), by mounting a
read-only tmpfs over it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from _support.common import task_config, write_config
from nas_distill import AutoDistillation
from nas_distill.environment import environment_cause
from nas_distill.errors import EnvironmentFailure


@contextlib.contextmanager
def unwritable(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"running as root without mount: cannot make a folder unwritable ({mounted.stderr})")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _trials(run_dir: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'study.db'}").get_trials()


@pytest.mark.slow
def test_unwritable_artifacts_stop_before_training_and_the_rerun_trains_everything(tmp_path, task_module):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", task_config(run_dir, study_name="ro", max_trials=5))
    cmd = [sys.executable, "-m", "nas_distill.cli", "run", cfg]
    with unwritable(run_dir / "artifacts"):
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode != 0
    assert "cannot write to" in first.stderr and "artifacts" in first.stderr, first.stderr
    try:
        trials = _trials(run_dir, "ro")
    except KeyError:  # stopped before the study was even created
        trials = []
    assert [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)] == []  # nothing trained
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    complete = [t for t in _trials(run_dir, "ro") if t.state == TrialState.COMPLETE]
    assert len(complete) == 5 and len({tuple(sorted(t.params.items())) for t in complete}) == 5


def _torch_search(run_dir: Path, on_eval=None) -> AutoDistillation:
    import torch

    space = {"width": [2, 3, 4, 5]}
    config = {"auto_distillation": {"search": {"search_space": space, "search_algorithm": "grid",
                                               "metrics": ["acc"], "max_trials": 4},
                                    "study": {"run_dir": str(run_dir), "study_name": "env"}}}
    ad = AutoDistillation(lambda arch: torch.nn.Linear(arch["width"], 2), config)
    ad.train_func = lambda model: None

    def eval_func(model):
        if on_eval is not None:
            on_eval()
        return {"acc": float(model.in_features)}

    ad.eval_func = eval_func
    return ad


@pytest.mark.slow
def test_folder_turning_unwritable_fails_trials_as_environment_then_stops(tmp_path):
    run_dir = tmp_path / "run"
    evals = []
    stack = contextlib.ExitStack()

    def break_after_first():
        evals.append(1)
        if len(evals) == 2:  # the second student trains, then cannot be saved
            stack.enter_context(unwritable(run_dir / "artifacts"))

    with stack:
        with pytest.raises(EnvironmentFailure, match="same environmental failure twice"):
            _torch_search(run_dir, break_after_first).search()
    trials = _trials(run_dir, "env")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 2 and len(evals) == 3
    for t in failed:
        assert t.user_attrs["error_type"] == "Environment"
        assert t.user_attrs["error"].startswith("environment: ")
        assert any(code in t.user_attrs["error"] for code in ("EROFS", "EACCES"))
    assert failed[1].user_attrs.get("retry_of") == failed[0].number  # the arch was retried, not blacklisted
    # The folder is writable again: the next search trains every architecture, none answered from the store.
    _torch_search(run_dir).search()
    trials = _trials(run_dir, "env")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["width"] for t in complete) == [2, 3, 4, 5]
    assert not [t for t in trials if t.state == TrialState.PRUNED]


def test_environment_causes_are_told_from_the_architectures_own():
    assert environment_cause(PermissionError(errno.EACCES, "denied")) == "PermissionError[EACCES]"
    assert environment_cause(OSError(errno.ENOSPC, "No space left on device")) == "OSError[ENOSPC]"
    assert environment_cause(MemoryError()) == "MemoryError"
    assert environment_cause(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")) == "OutOfMemory"
    try:  # a wrapped cause counts: the driver's error under the library's
        try:
            raise sqlite3.OperationalError("unable to open database file")
        except sqlite3.OperationalError as inner:
            raise ValueError("saving failed") from inner
    except ValueError as outer:
        assert environment_cause(outer) == "StorageUnreachable"
    for own in (ValueError("hidden size not divisible by heads"), FileNotFoundError(errno.ENOENT, "x"),
                RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ZeroDivisionError()):
        assert environment_cause(own) is None
