"""Load: 16 worker processes, 2,000 no-op trials, one PostgreSQL study; nothing lost, nothing twice.

The scenario is ``bench/load.py`` (one scenario, two callers: this test checks it, the benchmark prints
its figures): 16 real ``nas-distill worker`` processes run the real trial loop (stale sweep, ask with the
claim protocol, budget check, heartbeat, records, tell) on one study of the session's throwaway
PostgreSQL server. The trials do nothing (metrics are functions of the arch), so every second goes to the
orchestration and the study under concurrency: the most contention the budget and claim rules face.

Searcher: ``random`` (a 2,048-point space, 2,000 trials: by the end 98% of the space is held, so the
claim protocol's conflict path is exercised hard). ``grid`` would serialise every worker on the same
smallest free index; BO (GPSampler / TPE) costs O(n^2) model fitting per trial at 2,000 trials, which
would measure the model, not the orchestration.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from optuna.trial import TrialState

from _support.common import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.serial]

WORKERS = 16
TRIALS = 2000
#: RSS a worker may gain between warm-up and its peak beyond the trials Optuna's cache keeps (see the
#: end of the test). Measured: ~1 MiB (allocator arenas); a leak of 100 KB per trial a worker runs (each
#: runs ~125) would exceed it.
LEAK_SLACK_MIB = 12.0


def _bench_load():
    spec = importlib.util.spec_from_file_location("nd_bench_load", REPO_ROOT / "bench" / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cached_bytes_per_trial(url: str, study_name: str) -> float:
    """What one finished trial of this study costs in Optuna's ``_CachedStorage`` (every worker's study
    goes through one, and it keeps every finished trial for the life of the process, by design: that is
    what makes its reads incremental). Measured with tracemalloc on a fresh cache of the final study."""
    import gc
    import tracemalloc

    import optuna

    rdb = optuna.storages.RDBStorage(url)
    try:
        gc.collect()
        tracemalloc.start()
        try:
            cached = optuna.storages._CachedStorage(rdb)
            study_id = cached.get_study_id_from_name(study_name)
            before = tracemalloc.get_traced_memory()[0]
            trials = cached.get_all_trials(study_id, deepcopy=False)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        return (after - before) / max(1, len(trials))
    finally:
        rdb.engine.dispose()


def _rows(url: str, sql: str, **params):
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text(sql), params).all()
    finally:
        engine.dispose()


def test_sixteen_workers_two_thousand_trials_nothing_lost_nothing_twice(tmp_path, postgres_url,
                                                                       fresh_pg_study_name):
    load = _bench_load()
    result = load.run_load(postgres_url, fresh_pg_study_name, tmp_path / "run", workers=WORKERS, trials=TRIALS,
                           timeout_s=1500)
    print("\n" + load.report(result, TRIALS))  # the figures, in the test log (pytest -s or on failure)

    # Every worker stopped by itself, cleanly.
    failed = {f.label: result.stderr_tails[f.label] for f in result.workers if f.exit_code != 0}
    assert not failed, f"workers exited non-zero: {failed}"
    assert all("Traceback" not in tail for tail in result.stderr_tails.values()), result.stderr_tails

    # The rows themselves, not Optuna's view (its cache keys trials by number and would hide a duplicate).
    numbers = [n for (n,) in _rows(postgres_url, "SELECT t.number FROM trials t JOIN studies s USING (study_id) "
                                                 "WHERE s.study_name = :name ORDER BY t.number",
                                   name=fresh_pg_study_name)]
    assert numbers == list(range(len(numbers))), "trial numbers are not unique and dense"

    summary = load.study_summary(postgres_url, fresh_pg_study_name)
    trials = summary["trials"]
    assert len(trials) == len(numbers)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    complete = by_state[TrialState.COMPLETE]
    # Exactly the budget, every architecture once.
    assert len(complete) == TRIALS
    archs = [json.dumps(t.params, sort_keys=True) for t in complete]
    assert len(set(archs)) == TRIALS, "an architecture was completed twice"
    # Recorded once and whole: the values are the ones the eval of that arch gives, the records agree.
    for t in complete:
        arch = t.params
        assert t.values == [float(arch["a"] * 10 + arch["b"]), float(arch["a"] * arch["c"])], t.number
        assert t.user_attrs["arch"] == arch and t.user_attrs["acc"] == t.values[0]
        assert t.user_attrs["worker"]["worker"] in {f.label for f in result.workers}
    # Nothing left behind.
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    # Every other trial is accounted for: no FAIL at all (no worker was taken for dead, nothing failed in
    # the trial itself), and the only PRUNED trials are ones a worker created in a race for the last
    # slot, found the budget spent (or its slot needed by a retry) and gave back untrained, with the
    # reason. The random sampler never hands out a held point, so nothing is answered from the store.
    assert not by_state[TrialState.FAIL], summary["reasons"]
    assert all("budget" in t.user_attrs.get("pruned_reason", "") or "retry" in t.user_attrs.get("pruned_reason", "")
               for t in by_state[TrialState.PRUNED])
    # A worker gives back at most the trial it holds when the budget runs out (and one per retry).
    assert len(by_state[TrialState.PRUNED]) <= WORKERS
    # The work was shared.
    per_worker = {f.label: sum(1 for t in complete if t.user_attrs["worker"]["worker"] == f.label)
                  for f in result.workers}
    assert sum(per_worker.values()) == TRIALS and min(per_worker.values()) > 0, per_worker

    # Memory of each worker is flat. From warm-up (10% of the trials) to the end a worker legitimately
    # grows by the trials Optuna's _CachedStorage keeps (the study grew by ~90% of its final size
    # meanwhile); anything beyond that plus a slack for allocator noise would be a leak.
    per_trial = _cached_bytes_per_trial(postgres_url, fresh_pg_study_name)
    cache_growth_mib = per_trial * (len(trials) - TRIALS // 10) / 2**20
    for f in result.workers:
        assert f.rss_warm_kib is not None and f.hwm_kib is not None, f
        # The peak (VmHWM), not the last sample: that one may fall in the exit, after memory was freed.
        growth_mib = (f.hwm_kib - f.rss_warm_kib) / 1024
        assert growth_mib <= cache_growth_mib + LEAK_SLACK_MIB, (
            f"{f.label}: RSS peaked {growth_mib:.1f} MiB above its warm-up figure; the study cache accounts "
            f"for {cache_growth_mib:.1f} MiB ({per_trial:.0f} B per trial)")
