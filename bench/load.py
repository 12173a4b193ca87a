"""Load: N worker processes with no-op trials on one PostgreSQL study, until M trials are COMPLETE.

    python bench/load.py --storage postgresql+psycopg://user@127.0.0.1:5432/db [--workers 16]
                         [--trials 2000] [--algorithm random] [--keep DIR]

(The storage URL may also come from ``$NAS_DISTILL_STORAGE``; the study is a fresh one, named after the
time.) Each worker is a real ``nas-distill worker`` process running the real trial loop
(:class:`nas_distill.runner.TrialRunner`: stale sweep, ask with the claim protocol, budget check, answer
from the store, heartbeat, records, tell); the trial itself does nothing (``train_func`` is a no-op,
``eval_func`` returns metrics computed from the arch), so what is measured is the orchestration and
the study under concurrency. This file is also the task module (``task: load:make_task``, with
``bench/`` on ``PYTHONPATH``) and the scenario ``tests/test_reliability_load.py`` runs and checks.

Printed: wall time and COMPLETE trials/s; what the study holds at the end (by state, with the reasons
of any FAIL / PRUNED); per worker, resident memory (VmRSS from ``/proc``) when it was first seen
running a trial, at warm-up (10% of the trials COMPLETE), at the end (last sample before it exited)
and its peak (VmHWM), and its CPU seconds; the CPU seconds all workers spent per COMPLETE trial in each tenth
of the run (flat = no per-trial cost that grows with the study); and the server's reads of the trial
tables per COMPLETE trial (``pg_stat_user_tables``: statements that scanned ``trials`` and rows read
from it and its attr / param / value tables).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: 16 x 8 x 4 x 4 = 2,048 points: enough for 2,000 distinct COMPLETE trials.
SPACE = {"a": list(range(1, 17)), "b": list(range(1, 9)), "c": [16, 32, 64, 128], "d": ["relu", "gelu", "silu", "tanh"]}
#: Trial tables whose reads are counted (Optuna's schema).
TRIAL_TABLES = ("trials", "trial_params", "trial_values", "trial_user_attributes", "trial_system_attributes")


# --------------------------------------------------------------------------------------- the task
def make_task(config):
    """Task entry point: no-op students; metrics are functions of the arch (cheap, deterministic)."""

    def model_builder(arch):
        return dict(arch)

    def train_func(model):
        return None

    def eval_func(model):
        return {"acc": float(model["a"] * 10 + model["b"]), "cost": float(model["a"] * model["c"])}

    return {"model_builder": model_builder, "train_func": train_func, "eval_func": eval_func}


def load_config(run_dir, storage: str, study_name: str, max_trials: int, algorithm: str = "random") -> dict:
    """The config of the scenario (heartbeat 10 s, grace 60 s: 16 processes on 2 cores may starve a
    heartbeat thread for seconds, and a live trial wrongly swept as lost would be a false FAIL)."""
    return {
        "task": "load:make_task",
        "model": {"framework": "pytorch"},
        "auto_distillation": {
            "search": {"search_space": SPACE, "search_algorithm": algorithm, "metrics": ["acc", "cost"],
                       "higher_is_better": [True, False], "max_trials": max_trials, "seed": 7},
            "study": {"storage": storage, "study_name": study_name, "run_dir": str(run_dir),
                      "heartbeat_interval": 10, "grace_period": 60},
        },
    }


# ------------------------------------------------------------------------------ process figures
def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a live process in KiB (``/proc/<pid>/status``); {} once it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return out


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (``/proc/<pid>/stat``), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class WorkerFigures:
    label: str
    pid: int
    rss_first_kib: int | None = None  # when the worker was first seen running a trial
    rss_warm_kib: int | None = None  # when 10% of the trials were COMPLETE (and it had run one)
    rss_end_kib: int | None = None  # last sample while alive
    hwm_kib: int | None = None  # peak RSS (VmHWM) at the last sample
    cpu_s: float = 0.0
    exit_code: int | None = None


@dataclass
class LoadResult:
    study_name: str
    storage: str
    workers: list[WorkerFigures]
    wall_s: float
    #: (COMPLETE count, sum of the workers' CPU seconds) sampled while the run went on
    cpu_timeline: list[tuple[int, float]] = field(default_factory=list)
    reads: dict[str, int] = field(default_factory=dict)  # pg_stat deltas over the run
    stderr_tails: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------ server counters
def _engine(url: str):
    import sqlalchemy

    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)


def _complete_count(engine, study_name: str) -> int:
    import sqlalchemy

    with engine.connect() as conn:
        return int(conn.execute(sqlalchemy.text(
            "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = :name AND t.state = 'COMPLETE'"), {"name": study_name}).scalar() or 0)


def _active_labels(engine, study_name: str) -> set[str]:
    """Labels of the workers that have recorded a trial (the ``worker`` user attr of its first beat)."""
    import json

    import sqlalchemy

    with engine.connect() as conn:
        values = conn.execute(sqlalchemy.text(
            "SELECT DISTINCT ua.value_json FROM trial_user_attributes ua JOIN trials t USING (trial_id) "
            "JOIN studies s USING (study_id) WHERE s.study_name = :name AND ua.key = 'worker'"),
            {"name": study_name}).scalars().all()
    return {json.loads(v).get("worker") for v in values}


def table_reads(engine) -> dict[str, int]:
    """Cumulative server counters: statements scanning ``trials``; rows read from the trial tables.

    ``pg_stat_user_tables`` is updated when a backend reports its statistics (at the latest when it
    exits), so take the closing reading after every worker has exited.
    """
    import sqlalchemy

    names = ", ".join(f"'{t}'" for t in TRIAL_TABLES)
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text(
            "SELECT relname, coalesce(seq_scan, 0) + coalesce(idx_scan, 0), "
            "coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
            f"FROM pg_stat_user_tables WHERE relname IN ({names})")).all()
    out = {"trials_scans": 0, "rows_read": 0}
    for relname, scans, rows_read in rows:
        if relname == "trials":
            out["trials_scans"] += int(scans)
        out["rows_read"] += int(rows_read)
    return out


def _settled_reads(engine, timeout_s: float = 5.0) -> dict[str, int]:
    """:func:`table_reads` once the exited workers' counters are in: a backend reports its statistics
    as it exits, asynchronously to our reading, so read until two readings 0.25 s apart agree (a
    figure of the benchmark only; nothing is asserted on it)."""
    last = table_reads(engine)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = table_reads(engine)
        if now == last:
            break
        last = now
    return last


# ------------------------------------------------------------------------------------ the scenario
def run_load(storage: str, study_name: str, run_dir: Path, *, workers: int = 16, trials: int = 2000,
             algorithm: str = "random", timeout_s: float = 900, sample_every_s: float = 0.25) -> LoadResult:
    """Create the study, start ``workers`` ``nas-distill worker`` processes, sample them until all exit."""
    import yaml

    sys.path.insert(0, str(REPO))
    from nas_distill.workers import prepare_study

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "load.yaml"
    cfg_path.write_text(yaml.safe_dump(load_config(run_dir, storage, study_name, trials, algorithm),
                                       sort_keys=False))
    prepare_study(str(cfg_path), task="load:make_task")  # the study exists before the workers start

    engine = _engine(storage)
    reads_before = table_reads(engine)
    pythonpath = os.pathsep.join([str(HERE), str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(os.environ, NAS_DISTILL_STORAGE=storage, PYTHONPATH=pythonpath, OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    procs, figures, logs = [], [], []
    started = time.perf_counter()
    for i in range(workers):
        label = f"w{i}"
        log = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, "-m", "nas_distill.cli", "worker", str(cfg_path), "--study", study_name,
               "--label", label, "--threads", "1"]
        procs.append(subprocess.Popen(cmd, env=dict(env, NAS_DISTILL_WORKER=label), stdout=subprocess.DEVNULL,
                                      stderr=log))
        figures.append(WorkerFigures(label, procs[-1].pid))
        logs.append(log)
    result = LoadResult(study_name, storage, figures, 0.0)
    warm_at = max(1, trials // 10)
    active: set[str] = set()
    try:
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not finish {trials} trials within {timeout_s} s")
            complete = _complete_count(engine, study_name)
            if len(active) < len(figures):
                active |= _active_labels(engine, study_name)
            cpu_total = 0.0
            for proc, fig in zip(procs, figures):
                status = _proc_status(proc.pid) if proc.poll() is None else {}
                cpu = _proc_cpu_s(proc.pid) if proc.poll() is None else None
                if cpu is not None:
                    fig.cpu_s = cpu
                cpu_total += fig.cpu_s
                rss = status.get("VmRSS")
                if rss is None or fig.label not in active:
                    continue  # exited, or still starting up (imports): not a figure of the trial loop
                fig.rss_end_kib, fig.hwm_kib = rss, status.get("VmHWM")
                if fig.rss_first_kib is None:
                    fig.rss_first_kib = rss
                if complete >= warm_at and fig.rss_warm_kib is None:
                    fig.rss_warm_kib = rss
            result.cpu_timeline.append((complete, cpu_total))
            time.sleep(sample_every_s)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        result.wall_s = time.perf_counter() - started
        for proc, fig, log in zip(procs, figures, logs):
            fig.exit_code = proc.returncode
            log.seek(0)
            result.stderr_tails[fig.label] = log.read()[-3000:]
            log.close()
    after = _settled_reads(engine)
    result.reads = {k: after[k] - reads_before.get(k, 0) for k in after}
    result.cpu_timeline.append((_complete_count(engine, study_name), sum(f.cpu_s for f in figures)))
    engine.dispose()
    return result


def cpu_per_trial_by_tenth(timeline: list[tuple[int, float]], trials: int) -> list[float | None]:
    """Workers' CPU seconds per COMPLETE trial in each tenth of the run (by COMPLETE count)."""
    out: list[float | None] = []
    for tenth in range(10):
        lo, hi = trials * tenth / 10, trials * (tenth + 1) / 10
        inside = [(c, cpu) for c, cpu in timeline if lo <= c <= hi]
        if len(inside) < 2 or inside[-1][0] == inside[0][0]:
            out.append(None)
            continue
        out.append((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]))
    return out


def _reason(trial) -> str:
    """Why a failed or pruned trial ended: its error type, else ``duplicate`` / ``discarded`` / ``?``."""
    attrs = trial.user_attrs
    if attrs.get("error_type"):
        return attrs["error_type"]
    return "duplicate" if "duplicate_of" in attrs else "discarded" if "pruned_reason" in attrs else "?"


def study_summary(storage: str, study_name: str) -> dict:
    """What the study holds: counts by state and the reasons (``error_type`` / ``duplicate_of`` /
    ``pruned_reason``)."""
    import collections

    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    by_state = collections.Counter(t.state.name for t in trials)
    reasons = collections.Counter(f"{t.state.name}:{_reason(t)}" for t in trials if t.state.name in ("FAIL", "PRUNED"))
    return {"trials": trials, "by_state": dict(by_state), "reasons": dict(reasons)}


def _mib(kib: int | None) -> str:
    return "   n/a" if kib is None else f"{kib / 1024:6.1f}"


def report(result: LoadResult, trials: int) -> str:
    summary = study_summary(result.storage, result.study_name)
    complete = summary["by_state"].get("COMPLETE", 0)
    lines = [
        f"{len(result.workers)} workers, {trials} trials, study {result.study_name}",
        f"wall {result.wall_s:.1f} s (process start-up included), {complete / result.wall_s:.1f} COMPLETE trials/s",
        f"study: {len(summary['trials'])} trials by state {summary['by_state']}; FAIL/PRUNED reasons "
        f"{summary['reasons'] or '{}'}",
        "",
        "worker  exit  RSS MiB: first   warm    end   peak  growth warm->end  CPU s",
    ]
    for f in result.workers:
        growth = None if f.rss_warm_kib is None or f.rss_end_kib is None else f.rss_end_kib - f.rss_warm_kib
        lines.append(f"{f.label:>6}  {f.exit_code!s:>4}  {'':7}{_mib(f.rss_first_kib)} {_mib(f.rss_warm_kib)} "
                     f"{_mib(f.rss_end_kib)} {_mib(f.hwm_kib)}  {_mib(growth):>16}  {f.cpu_s:5.1f}")
    tenths = cpu_per_trial_by_tenth(result.cpu_timeline, trials)
    lines += ["", "workers' CPU ms per COMPLETE trial, by tenth of the run: "
              + " ".join("n/a" if v is None else f"{1000 * v:.0f}" for v in tenths)]
    if result.reads and complete:
        lines.append(f"server reads per COMPLETE trial: {result.reads['trials_scans'] / complete:.1f} statements "
                     f"scanning 'trials', {result.reads['rows_read'] / complete:.0f} rows read from the trial tables")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=os.environ.get("NAS_DISTILL_STORAGE"),
                        help="PostgreSQL URL (default $NAS_DISTILL_STORAGE)")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--algorithm", default="random", choices=["random", "grid"])
    parser.add_argument("--keep", help="keep the run folder here")
    args = parser.parse_args(argv)
    if not args.storage:
        parser.error("--storage (or $NAS_DISTILL_STORAGE) is required")
    run_dir = Path(args.keep or tempfile.mkdtemp(prefix="nas-distill-load-"))
    name = f"load-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    print(f"cores: {os.cpu_count()}, load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    result = run_load(args.storage, name, run_dir, workers=args.workers, trials=args.trials,
                      algorithm=args.algorithm)
    print(report(result, args.trials))
    bad = {f.label: result.stderr_tails[f.label] for f in result.workers if f.exit_code != 0}
    for label, tail in bad.items():
        print(f"\n--- {label} stderr ---\n{tail}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
