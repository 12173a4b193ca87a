"""Workers dying (issue #7, item 1): SIGKILL random workers of a 4-worker torch search, again and again.

Real parts throughout: ``nas-distill worker`` processes on one SQLite study, a tiny BERT teacher saved and
loaded back, BERT students flash-distilled by the built-in distiller with the on-disk teacher cache. The
task module (tests/_support/reliability_torch_task.py) reports each worker's phase in a file and stretches the
phases a little (teacher forwards, student training forwards, the COMPLETE tell) so a kill lands inside
the phase the test picks. Each kill is counted for a phase only when the victim's phase file, read again
after its death, still names that phase (the process died before leaving it).

After the kills (at least 5: teacher-cache fill, training, tell) and the replacement workers finishing
the search: exactly ``max_trials`` COMPLETE trials, no architecture COMPLETE twice, nothing RUNNING or
WAITING, every killed trial FAIL with ``WorkerLost``, every cache entry verified by its manifest's
checksums and no temporary or broken cache folder left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from _support.common import write_config  # noqa: E402

TESTS = Path(__file__).resolve().parent
MAX_TRIALS = 9
SPACE = {"hidden_size": [16, 32], "num_hidden_layers": [1, 2], "num_attention_heads": [2, 4],
         "intermediate_size": [32, 64]}  # 16 points
# Two kills while the teacher cache fills (the second hits the worker that took the lock over), then
# training and tell, twice each.
PLAN = ["cache", "cache", "train", "tell", "train", "tell"]


def _config(run_dir: Path) -> dict:
    return {
        "task": "_support.reliability_torch_task:make_task",
        "model": {"framework": "pytorch"},
        "auto_distillation": {
            "search": {"search_space": SPACE, "search_algorithm": "grid", "metrics": ["accuracy", "params"],
                       "higher_is_better": [True, False], "max_trials": MAX_TRIALS},
            "flash_distillation": {
                "regular_distillation": {"loss_types": [["KL"]], "add_origin_loss": [True],
                                         "temperature": [2.0], "train_steps": [12]},
                "batch_size": 16,
                "device": "cpu",
            },
            "evaluation": {"batch_size": 32, "device": "cpu"},
            "study": {"run_dir": str(run_dir), "study_name": "kills", "heartbeat_interval": 1,
                      "grace_period": 2},
        },
    }


class Workers:
    """``nas-distill worker`` processes started (and replaced) by the test."""

    def __init__(self, cfg: str, env: dict, logs: Path):
        self.cfg, self.env, self.logs = cfg, env, logs
        self.procs: dict[int, subprocess.Popen] = {}
        self.count = 0

    def start(self) -> subprocess.Popen:
        label = f"w{self.count}"
        self.count += 1
        log = open(self.logs / f"{label}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "nas_distill.cli", "worker", self.cfg, "--label", label,
                                 "--threads", "1"], env=dict(self.env, NAS_DISTILL_WORKER=label),
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[proc.pid] = proc
        return proc

    def alive(self) -> dict[int, subprocess.Popen]:
        return {pid: p for pid, p in self.procs.items() if p.poll() is None}

    def kill_all(self) -> None:
        for p in self.alive().values():
            p.kill()
            p.wait()

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(self.logs.glob("*.log")))


def _phase(phase_dir: Path, pid: int) -> dict | None:
    try:
        return json.loads((phase_dir / f"{pid}.json").read_text())
    except (OSError, ValueError):
        return None


def _running_trial_pids(db: Path) -> set[int]:
    """Pids of the workers that hold a RUNNING trial (their ``worker`` user attr), read with sqlite3."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT a.value_json FROM trial_user_attributes a JOIN trials t "
                                "ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'worker'"
                                ).fetchall()
    except sqlite3.Error:
        return set()
    return {json.loads(value).get("pid") for (value,) in rows}


def _victim(workers: Workers, phase_dir: Path, phase: str, timeout: float,
            db: Path | None = None) -> tuple[int, dict] | None:
    """A live worker whose phase file names ``phase`` (polled), or None after ``timeout`` s. With ``db``:
    only a worker that holds a RUNNING trial (a student trains in the dry run too, before any trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in workers.alive():
            state = _phase(phase_dir, pid)
            if state and state["phase"] == phase and (db is None or pid in _running_trial_pids(db)):
                return pid, state
        time.sleep(0.02)
    return None


@pytest.mark.serial
@pytest.mark.slow
def test_repeated_kill9_during_cache_fill_training_and_tell(tmp_path):
    from nas_distill.distill.torch import cache as cache_mod
    from nas_distill.workers import prepare_study

    teacher_dir = tmp_path / "teacher"
    from _support import reliability_torch_task as task
    torch.manual_seed(1)
    transformers.BertForSequenceClassification(task.bert_config(hidden_size=48)).save_pretrained(teacher_dir)

    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", _config(run_dir))
    prepare_study(cfg)  # the study exists before any worker starts
    phase_dir = tmp_path / "phases"
    phase_dir.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               ND_REL_TEACHER=str(teacher_dir), ND_REL_PHASE_DIR=str(phase_dir), ND_REL_TEACHER_DELAY="0.8",
               ND_REL_STUDENT_DELAY="0.08", ND_REL_TELL_DELAY="1.0", OMP_NUM_THREADS="1")
    workers = Workers(cfg, env, logs)
    hits: Counter = Counter()
    missed: list[str] = []
    killed: list[int] = []
    try:
        for _ in range(4):
            workers.start()
        for phase in PLAN:
            found = _victim(workers, phase_dir, phase, timeout=90,
                            db=run_dir / "study.db" if phase in ("train", "tell") else None)
            if found is None:
                missed.append(phase)
                continue
            pid, before = found
            os.kill(pid, signal.SIGKILL)
            workers.procs[pid].wait(timeout=30)
            killed.append(pid)
            after = _phase(phase_dir, pid)
            if after == before:  # died before leaving the phase
                hits[phase] += 1
            else:
                missed.append(f"{phase}->{after and after['phase']}")
            workers.start()  # a replacement joins the study
        deadline = time.monotonic() + 150
        for proc in list(workers.alive().values()):
            proc.wait(timeout=max(1, deadline - time.monotonic()))
    except BaseException:
        workers.kill_all()
        print(workers.log_tail())
        raise
    finally:
        workers.kill_all()

    print(f"kills by phase: {dict(hits)}; missed: {missed}; workers started: {workers.count}")
    survivors = [p for pid, p in workers.procs.items() if pid not in killed]
    assert all(p.returncode == 0 for p in survivors), workers.log_tail()
    assert sum(hits.values()) >= 5, (hits, missed)
    assert hits["cache"] >= 1 and hits["train"] >= 1 and hits["tell"] >= 1, (hits, missed)

    study = optuna.load_study(study_name="kills", storage=f"sqlite:///{run_dir / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == MAX_TRIALS, Counter(t.state.name for t in trials)
    archs = [json.dumps(t.params, sort_keys=True) for t in complete]
    assert len(set(archs)) == MAX_TRIALS, "an architecture was completed twice"
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # A killed worker's unfinished trials ended FAIL / WorkerLost (swept by the others), never COMPLETE.
    killed_failed = [t for t in trials if (t.user_attrs.get("worker") or {}).get("pid") in killed
                     and t.state == TrialState.FAIL and t.user_attrs.get("error_type") != "Discarded"]
    assert killed_failed and all(t.user_attrs.get("error_type") == "WorkerLost" for t in killed_failed), \
        [(t.number, t.user_attrs.get("error_type")) for t in killed_failed]
    lost = [t for t in trials if t.user_attrs.get("error_type") == "WorkerLost"]
    assert len(lost) >= hits["train"] + hits["tell"]  # each of those kills left a trial behind
    # A kill during tell leaves the metrics written but the state not: the trial is FAIL, and its arch
    # was trained again by another worker (once).
    told_dead = [t for t in lost if "accuracy" in t.user_attrs]
    assert told_dead
    redone = 0
    for t in told_dead:
        redo = [c for c in complete if c.params == t.params]
        assert len(redo) <= 1
        if redo:
            assert redo[0].user_attrs["worker"]["pid"] != t.user_attrs["worker"]["pid"]
            redone += 1
    assert redone >= 1

    # The teacher cache: every entry verifies, nothing half-written left that a reader could pick up.
    root = run_dir / "teacher_cache"
    names = sorted(os.listdir(root))
    entries = [n for n in names if (root / n).is_dir() and not n.startswith(".") and ".broken-" not in n]
    leftovers = [n for n in names if (root / n).is_dir() and n not in entries]
    assert len(entries) == 1, names
    assert leftovers == [], names
    for fp in entries:
        entry = cache_mod.read_entry(str(root), fp, verify=True)
        assert entry is not None and entry.arrays, f"cache entry {fp} does not verify"
    # And every COMPLETE trial trained against it (one fill for the whole study).
    assert all(t.user_attrs.get("accuracy") is not None for t in complete)
