"""Two processes finish the same trial at the same moment, N times: how many trials had two winners?

Side by side in one run, on one SQLite file each: Optuna's ``RDBStorage`` (read, check, write) and
``nas_distill.store.atomic.AtomicRDBStorage`` (one conditional update). Each trial is finished by two
processes started together on a barrier, one telling COMPLETE, the other FAIL (an owner against a stale
sweep); a process "won" when the call returned True without raising.

    python bench/atomic_finish.py [--trials 200]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

CTX = multiprocessing.get_context("fork")


def _storage(kind: str, url: str):
    import optuna

    from nas_distill.store.atomic import AtomicRDBStorage

    cls = AtomicRDBStorage if kind == "atomic" else optuna.storages.RDBStorage
    return cls(url, engine_kwargs={"connect_args": {"timeout": 60}})


def _finisher(kind, url, trial_ids, state_name, barrier, results):
    import optuna
    from optuna.trial import TrialState

    storage = _storage(kind, url)
    state = TrialState[state_name]
    won = []
    for trial_id in trial_ids:
        barrier.wait()
        try:
            if storage.set_trial_state_values(trial_id, state=state, values=[1.0] if state_name == "COMPLETE"
                                              else None):
                won.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    results.put(won)


def race(kind: str, folder: Path, n: int) -> tuple[int, float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{folder / f'{kind}.db'}"
    storage = _storage(kind, url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], kind)
    ids = [storage.create_new_trial(study_id) for _ in range(n)]
    barrier, results = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_finisher, args=(kind, url, ids, s, barrier, results)) for s in ("COMPLETE", "FAIL")]
    started = time.perf_counter()
    for p in procs:
        p.start()
    won = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    seconds = time.perf_counter() - started
    both = len(set(won[0]) & set(won[1]))
    return both, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(kind, *race(kind, Path(tmp), args.trials)) for kind in ("optuna", "atomic")]
    print(f"{'storage':<28} {'trials with two winners':>24} {'seconds':>8}")
    for kind, both, seconds in rows:
        name = "optuna RDBStorage" if kind == "optuna" else "AtomicRDBStorage"
        print(f"{name:<28} {both:>17} of {args.trials:<4} {seconds:>8.1f}")
    print(f"time ratio atomic / optuna: {rows[1][2] / rows[0][2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
