"""Throughput of the orchestration: trials/hour with 1 vs 2 workers, and overhead per trial vs plain Optuna.

    python bench/throughput.py [--trials 12] [--steps 3000] [--overhead-trials 60] [--keep DIR]

Part 1, scaling. A small real distillation task: MLP students (width x depth x activation) distilled
for ``--steps`` steps (KL on the logits of an MLP teacher + cross-entropy, AdamW, batch 64) on
scikit-learn's digits, accuracy on a held-out split and parameter count as the two objectives. The same
config runs through ``nas-distill run CONFIG --workers N`` (N = 1, then 2; torch threads = 1 per worker)
on a fresh SQLite study each time. Trials/hour = COMPLETE trials / (last completion - first start),
read from the study (process start-up, i.e. imports and the teacher, is excluded; it is printed too).
Goal: 2 workers >= 1.8x the trials/hour of 1 on 2 cores.

Part 2, overhead. The same loop with no-op ``train_func`` / ``eval_func`` (``AutoDistillation.search``
with the random searcher: stale sweep, ask, budget check, heartbeat, records, tell) against plain Optuna
``study.ask()`` + ``suggest_categorical`` per key + ``study.tell`` on the same kind of storage (SQLite
files opened by ``nas_distill.study.make_storage``), once with the same sampler (``SpaceRandomSampler``,
whose claim protocol is part of the sampler, not of the orchestration) and once with Optuna's
``RandomSampler``. Goals: orchestration <= 1.5x plain Optuna with the same sampler, and <= 2% of a real
trial of part 1.

This file is also the task module of part 1 (``task: throughput:make_task``, with ``bench/`` on
PYTHONPATH).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SPACE = {"hidden": [16, 32, 48, 64, 96, 128], "depth": [1, 2, 3], "act": ["relu", "gelu"]}


# --------------------------------------------------------------------------------------- the task
def _data():
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _mlp(hidden: int, depth: int, act: str):
    import torch

    layers, width = [], 64
    for _ in range(depth):
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU() if act == "relu" else torch.nn.GELU()]
        width = hidden
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers)


def make_task(config):
    """Task entry point: a teacher trained at start-up, a KD train_func and an eval_func."""
    import torch

    steps = int(os.environ.get("ND_BENCH_STEPS", "3000"))
    x_tr, y_tr, x_te, y_te = _data()
    torch.manual_seed(0)
    teacher = _mlp(256, 2, "relu")
    opt = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(teacher(x_tr), y_tr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()
    with torch.no_grad():
        teacher_logits = teacher(x_tr)

    def train_func(student):
        torch.manual_seed(1)
        opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            idx = torch.randint(0, len(y_tr), (64,), generator=g)
            logits = student(x_tr[idx])
            kd = torch.nn.functional.kl_div(torch.log_softmax(logits / 2, -1),
                                            torch.softmax(teacher_logits[idx] / 2, -1), reduction="batchmean")
            loss = kd + 0.5 * torch.nn.functional.cross_entropy(logits, y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def eval_func(student):
        with torch.no_grad():
            acc = float((student(x_te).argmax(-1) == y_te).float().mean())
        return {"accuracy": acc, "params": float(sum(p.numel() for p in student.parameters()))}

    return {"model_builder": lambda arch: _mlp(arch["hidden"], arch["depth"], arch["act"]),
            "train_func": train_func, "eval_func": eval_func}


def _config(run_dir: Path, trials: int) -> dict:
    return {
        "task": "throughput:make_task",
        "auto_distillation": {
            "search": {"search_space": SPACE, "search_algorithm": "grid", "metrics": ["accuracy", "params"],
                       "higher_is_better": [True, False], "max_trials": trials},
            "study": {"run_dir": str(run_dir), "study_name": "throughput"},
        },
    }


# -------------------------------------------------------------------------------------- part 1
def scaling(workers: int, trials: int, steps: int, root: Path) -> dict:
    import optuna
    import yaml

    run_dir = root / f"scale-{workers}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cfg = run_dir / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_config(run_dir, trials)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
               ND_BENCH_STEPS=str(steps))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "nas_distill.cli", "run", str(cfg), "--workers", str(workers),
                          "--threads", "1"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"run --workers {workers} failed:\n{res.stderr[-2000:]}")
    study = optuna.load_study(study_name="throughput", storage=f"sqlite:///{run_dir / 'study.db'}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    start = min(t.datetime_start for t in complete)
    end = max(t.datetime_complete for t in complete)
    span = (end - start).total_seconds()
    per_trial = statistics.median(t.user_attrs["timings"]["total"] for t in complete)
    return {"workers": workers, "complete": len(complete), "span_s": span, "wall_s": wall,
            "per_hour": 3600 * len(complete) / span, "trial_s": per_trial}


# -------------------------------------------------------------------------------------- part 2
def overhead(n: int, root: Path) -> dict:
    import optuna

    from nas_distill import AutoDistillation
    from nas_distill.study import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"a": list(range(10)), "b": list(range(10)), "c": list(range(10))}

    from nas_distill.search.samplers import SpaceRandomSampler

    def plain(name, sampler):
        """Plain Optuna on our storage: ask, one suggest per key, tell."""
        storage = make_storage(f"sqlite:///{root / (name + '.db')}")
        study = optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"],
                                    sampler=sampler)
        for _ in range(3):  # warm-up (connections, caches), like the 3 warm-up trials below
            t = study.ask()
            arch = {k: t.suggest_categorical(k, v) for k, v in space.items()}
            study.tell(t, [1.0, 1.0])
        t0 = time.perf_counter()
        for _ in range(n):
            trial = study.ask()
            arch = {k: trial.suggest_categorical(k, v) for k, v in space.items()}
            study.tell(trial, [float(arch["a"]), float(arch["b"])])
        return (time.perf_counter() - t0) / n

    plain_random = plain("plain_random", optuna.samplers.RandomSampler(seed=0))
    plain_same = plain("plain_same", SpaceRandomSampler(space, seed=0))

    # ours: the whole AutoDistillation loop with no-op train / eval
    conf = {"auto_distillation": {"search": {"search_space": space, "search_algorithm": "random",
                                             "metrics": ["acc", "lat"], "higher_is_better": [True, False],
                                             "max_trials": 3},
                                  "study": {"run_dir": str(root / "ours"), "study_name": "ours"}}}
    ad = AutoDistillation(lambda arch: arch, conf)
    ad.train_func = lambda model: None
    ad.eval_func = lambda model: {"acc": float(model["a"]), "lat": float(model["b"])}
    ad.search()  # warm-up: 3 trials
    ad.max_trials = 3 + n
    t0 = time.perf_counter()
    ad.search()
    ours = (time.perf_counter() - t0) / n
    complete = [t for t in ad.study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3 + n, len(complete)
    return {"plain_ms": 1000 * plain_same, "plain_random_ms": 1000 * plain_random, "ours_ms": 1000 * ours}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="trials per scaling run (default 12)")
    parser.add_argument("--steps", type=int, default=3000, help="distillation steps per trial (default 3000)")
    parser.add_argument("--overhead-trials", type=int, default=60, help="no-op trials timed (default 60)")
    parser.add_argument("--keep", help="keep the runs in this folder")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    root = Path(args.keep or tempfile.mkdtemp(prefix="nas-distill-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        print(f"cores: {os.cpu_count()}, load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        runs = [scaling(w, args.trials, args.steps, root) for w in (1, 2)]
        print("\nPart 1: completed trials/hour (torch threads = 1 per worker, SQLite study)")
        print(f"{'workers':>7}  {'complete':>8}  {'span s':>7}  {'wall s':>7}  {'trial s':>7}  {'trials/hour':>11}")
        for r in runs:
            print(f"{r['workers']:>7}  {r['complete']:>8}  {r['span_s']:>7.1f}  {r['wall_s']:>7.1f}  "
                  f"{r['trial_s']:>7.2f}  {r['per_hour']:>11.0f}")
        speedup = runs[1]["per_hour"] / runs[0]["per_hour"]
        print(f"speed-up 2 vs 1 workers: {speedup:.2f}x (goal >= 1.8x)")

        o = overhead(args.overhead_trials, root)
        ratio = o["ours_ms"] / o["plain_ms"]
        share = o["ours_ms"] / 1000 / runs[0]["trial_s"]
        print(f"\nPart 2: orchestration per trial, no-op train/eval, {args.overhead_trials} trials, "
              "same SQLite storage")
        print(f"plain Optuna ask/suggest/tell, RandomSampler:            {o['plain_random_ms']:6.1f} ms")
        print(f"plain Optuna ask/suggest/tell, our SpaceRandomSampler:   {o['plain_ms']:6.1f} ms")
        print(f"nas-distill search loop (random searcher):               {o['ours_ms']:6.1f} ms")
        print(f"orchestration vs plain Optuna with the same sampler: {ratio:.2f}x (goal <= 1.5x); "
              f"vs RandomSampler: {o['ours_ms'] / o['plain_random_ms']:.2f}x")
        print(f"share of a real trial ({runs[0]['trial_s']:.2f} s): {100 * share:.2f}% (goal <= 2%)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
