"""Worker processes on one shared study: exact budget, dead workers, signals, torch.distributed.

Every test runs real processes (``python -m nas_distill.cli ...``) on a real storage (SQLite file or the
throwaway PostgreSQL server of conftest.py) with the test task (pure-Python students whose training
sleeps a little).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from _support.common import task_config, write_config

PY = sys.executable


def _cli(*args: str) -> list[str]:
    return [PY, "-m", "nas_distill.cli", *args]


def _study(url: str, name: str):
    return optuna.load_study(study_name=name, storage=url)


def _complete(study):
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def _sqlite_url(run_dir: Path) -> str:
    return f"sqlite:///{run_dir / 'study.db'}"


def _run_workers(tmp_path, storage, study_name, workers, max_trials, train_seconds="0.2", timeout=240):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", task_config(run_dir, storage=storage, study_name=study_name,
                                                          max_trials=max_trials))
    env = dict(os.environ, ND_TEST_TRAIN_SECONDS=train_seconds)
    res = subprocess.run(_cli("run", cfg, "--workers", str(workers)), env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


def _assert_exact_budget(study, max_trials):
    complete = _complete(study)
    assert len(complete) == max_trials
    archs = {json.dumps(t.params, sort_keys=True) for t in complete}
    assert len(archs) == max_trials  # all distinct
    # A normal search ends with no FAIL trial: a trial that lost the race for the last slot is PRUNED
    # with its reason, and holds no point of the space.
    from nas_distill.search.samplers import CLAIM_KEY, RELEASED

    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.FAIL], [t.user_attrs for t in trials]
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert "budget" in t.user_attrs["pruned_reason"] or "retry" in t.user_attrs["pruned_reason"]
            assert t.system_attrs[CLAIM_KEY] == RELEASED
    workers = {t.user_attrs["worker"]["pid"] for t in complete}
    return complete, workers


@pytest.mark.serial
@pytest.mark.slow
def test_four_workers_sqlite_exact_budget(tmp_path, task_module):
    run_dir = _run_workers(tmp_path, None, "sq", workers=4, max_trials=12)
    study = _study(_sqlite_url(run_dir), "sq")
    complete, workers = _assert_exact_budget(study, 12)
    assert len(workers) >= 2, "the work was not shared between processes"
    for t in complete:
        assert set(t.params) == {"a", "b"}
        assert t.user_attrs["arch"] == t.params
        assert t.user_attrs["acc"] == t.values[0]
        assert {"build", "train", "eval", "total"} <= set(t.user_attrs["timings"])
        assert {"host", "pid"} <= set(t.user_attrs["worker"])


@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.postgres
def test_four_workers_postgres_exact_budget(tmp_path, task_module, postgres_url, fresh_pg_study_name):
    _run_workers(tmp_path, postgres_url, fresh_pg_study_name, workers=4, max_trials=12)
    study = _study(postgres_url, fresh_pg_study_name)
    _, workers = _assert_exact_budget(study, 12)
    assert len(workers) >= 2


@pytest.mark.serial
@pytest.mark.slow
def test_three_workers_journal_exact_budget(tmp_path, task_module):
    journal = tmp_path / "run" / "study.log"
    _run_workers(tmp_path, str(journal), "jr", workers=3, max_trials=10)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    _assert_exact_budget(optuna.load_study(study_name="jr", storage=storage), 10)


def _wait_running_trial_of(url, name, label, timeout=60):
    """The first RUNNING trial recorded by worker ``label`` (polls the study)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            study = _study(url, name)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                worker = t.user_attrs.get("worker") or {}
                if worker.get("worker") == label and "arch" in t.user_attrs:
                    return t
        except Exception:  # noqa: BLE001 - the study (or its folder) does not exist yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"worker {label} never ran a trial")


@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_kill9_worker_trial_failed_and_retried(tmp_path, task_module, backend, request):
    if backend == "postgres":
        url = request.getfixturevalue("postgres_url")
        name = request.getfixturevalue("fresh_pg_study_name")
    else:
        url, name = _sqlite_url(tmp_path / "run"), "kill"
    max_trials = 8
    cfg = write_config(tmp_path / "cfg.yaml", task_config(tmp_path / "run", storage=url, study_name=name,
                                                          max_trials=max_trials, heartbeat_interval=1,
                                                          grace_period=2))
    env = dict(os.environ, ND_TEST_TRAIN_SECONDS="1.0")
    parent = subprocess.Popen(_cli("run", cfg, "--workers", "3"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        victim = _wait_running_trial_of(url, name, "w1")
        victim_pid = victim.user_attrs["worker"]["pid"]
        killed_at = time.time()
        os.kill(victim_pid, signal.SIGKILL)
        _, err = parent.communicate(timeout=180)
    finally:
        if parent.poll() is None:
            parent.kill()
    study = _study(url, name)
    complete = _complete(study)
    assert len(complete) == max_trials
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == max_trials
    dead = study.trials[victim.number]
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs.get("error_type") == "WorkerLost"
    redo = [t for t in complete if t.params == dead.params]
    assert len(redo) == 1 and redo[0].user_attrs["worker"]["pid"] != victim_pid
    assert redo[0].user_attrs.get("retry_of") == victim.number
    # Detected within the grace period (2 s) plus a sweep interval, not at the end of the study.
    assert redo[0].datetime_start.timestamp() - killed_at < 15


@pytest.mark.slow
def test_sigterm_marks_trial_interrupted(tmp_path, task_module):
    url, name = _sqlite_url(tmp_path / "run"), "term"
    cfg = write_config(tmp_path / "cfg.yaml", task_config(tmp_path / "run", study_name=name, max_trials=4))
    env = dict(os.environ, ND_TEST_TRAIN_SECONDS="30", NAS_DISTILL_WORKER="solo")
    proc = subprocess.Popen(_cli("worker", cfg, "--label", "solo"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        trial = _wait_running_trial_of(url, name, "solo")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130)
    assert "Traceback" not in err
    frozen = _study(url, name).trials[trial.number]
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs["error_type"] == "Interrupted"
    assert "interrupted" in frozen.user_attrs["error"]
    # Its architecture waits to be retried by the next worker.
    waiting = [t for t in _study(url, name).get_trials(states=(TrialState.WAITING,))]
    assert [t.user_attrs.get("retry_of") for t in waiting] == [trial.number]


GLOO_SCRIPT = r'''
import os, sys, json
import torch, torch.distributed as dist, torch.multiprocessing as mp

def work(rank, world, init, url, run_dir):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    from nas_distill import AutoDistillation
    conf = {"auto_distillation": {"search": {
        "search_space": {"width": [4, 8, 16], "depth": [1, 2]}, "search_algorithm": "grid",
        "metrics": ["score"], "max_trials": 3}, "study": {"storage": url, "study_name": "ddp",
        "run_dir": run_dir}}}
    def builder(arch):
        layers = [torch.nn.Linear(4, arch["width"])] + [torch.nn.Linear(arch["width"], arch["width"])
                  for _ in range(arch["depth"] - 1)] + [torch.nn.Linear(arch["width"], 1)]
        return torch.nn.Sequential(*layers)
    def train(model):
        torch.manual_seed(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(3):
            x = torch.randn(8, 4)
            loss = model(x).pow(2).mean()
            opt.zero_grad(); loss.backward()
            for p in model.parameters():  # data-parallel: average the gradients over the ranks
                dist.all_reduce(p.grad); p.grad /= world
            opt.step()
    def evaluate(model):
        with torch.no_grad():
            out = model(torch.ones(2, 4)).sum()
        dist.all_reduce(out)  # every rank takes part, as real DDP evaluation would
        return {"score": float(out) / world}
    ad = AutoDistillation(builder, conf)
    ad.train_func, ad.eval_func = train, evaluate
    best = ad.search()
    if rank == 0:
        with open(os.path.join(run_dir, "best.json"), "w") as f:
            json.dump(best, f)
    dist.barrier()
    dist.destroy_process_group()

if __name__ == "__main__":
    init, url, run_dir = sys.argv[1:4]
    mp.spawn(work, args=(2, init, url, run_dir), nprocs=2, join=True)
'''


@pytest.mark.slow
def test_gloo_two_ranks_complete_three_trials(tmp_path):
    from _support.common import free_port

    script = tmp_path / "ddp_search.py"
    script.write_text(GLOO_SCRIPT)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    url = _sqlite_url(run_dir)
    res = subprocess.run([PY, str(script), f"tcp://127.0.0.1:{free_port()}", url, str(run_dir)],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    study = _study(url, "ddp")
    complete = _complete(study)
    assert len(complete) == 3
    assert all(t.user_attrs["worker"]["world_size"] == 2 for t in complete)
    # Only rank 0 talks to the study: no trial is asked by rank 1 (none FAIL / RUNNING left over).
    assert len(study.trials) == 3
    best = json.loads((run_dir / "best.json").read_text())
    assert best and all(set(b) == {"width", "depth"} for b in best)


@pytest.mark.serial
@pytest.mark.slow
def test_ctrl_c_on_run_stops_every_worker_cleanly(tmp_path, task_module):
    """Ctrl-C in a terminal sends SIGINT to the whole process group: the parent and its workers."""
    url, name = _sqlite_url(tmp_path / "run"), "ctrlc"
    cfg = write_config(tmp_path / "cfg.yaml", task_config(tmp_path / "run", study_name=name, max_trials=8))
    env = dict(os.environ, ND_TEST_TRAIN_SECONDS="30")
    proc = subprocess.Popen(_cli("run", cfg, "--workers", "2"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_running_trial_of(url, name, "w0")
        _wait_running_trial_of(url, name, "w1")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    study = _study(url, name)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    interrupted = [t for t in study.trials if t.user_attrs.get("error_type") == "Interrupted"]
    assert len(interrupted) == 2 and all("SIGINT" in t.user_attrs["error"] for t in interrupted)
    # Resume with more workers than retries: each interrupted arch is trained by exactly one of them.
    resumed = subprocess.run(_cli("run", cfg, "--workers", "4"), env=dict(env, ND_TEST_TRAIN_SECONDS="0.3"),
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = _study(url, name)
    complete = _complete(study)
    assert len(complete) == 8 and len({json.dumps(t.params, sort_keys=True) for t in complete}) == 8
    for t in interrupted:
        trained = [c for c in study.trials if c.params == t.params and c.number != t.number
                   and (c.state == TrialState.COMPLETE or c.user_attrs.get("error_type") == "Interrupted")]
        assert len(trained) == 1 and trained[0].user_attrs.get("retry_of") == t.number, \
            [(c.number, c.state.name, c.user_attrs.get("retry_of")) for c in trained]
