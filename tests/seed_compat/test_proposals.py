"""``model_arch_proposition()`` without feedback leaves no RUNNING trial behind, and reading ``advisor``
creates no file before the first proposal."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from optuna.trial import TrialState

from nas_distill import AutoDistillation
from nas_distill import study as study_mod

SPACE = {"a": [1, 2, 3, 4]}


def conf(run_dir, **study):
    return {"search": {"search_space": SPACE, "search_algorithm": "grid", "metrics": ["acc"], "max_trials": 2},
            "study": {"run_dir": str(run_dir), **study}}


def states(url):
    study = optuna.load_study(study_name="nas-distill", storage=url)
    return [(t.state, t.user_attrs.get("error_type")) for t in study.trials]


def test_reading_the_advisor_creates_nothing(tmp_path):
    agent = AutoDistillation(lambda arch: arch, conf(tmp_path / "run"))
    advisor = agent.advisor
    assert "not built yet" in repr(advisor)
    assert not (tmp_path / "run").exists()
    assert advisor.params_vec2params_dict([3]) == {"a": 3}  # using it builds it
    assert (tmp_path / "run" / "study.db").exists()


def test_close_next_proposal_and_search_fail_the_abandoned_one(tmp_path):
    agent = AutoDistillation(lambda arch: arch, conf(tmp_path / "run"))
    agent.model_arch_proposition()
    first = agent.advisor.current_trial
    assert agent.study._storage.get_trial(first._trial_id).state == TrialState.RUNNING
    agent.model_arch_proposition()  # a second proposal before feedback on the first
    assert states(agent.storage_url) == [(TrialState.FAIL, "Abandoned"), (TrialState.RUNNING, None)]
    agent.close()
    assert states(agent.storage_url) == [(TrialState.FAIL, "Abandoned")] * 2
    # feedback ends a proposal normally and stops its heartbeat
    arch = agent.model_arch_proposition()
    heartbeat = agent._proposal[1]
    agent.advisor.feedback(float(arch["a"]))
    assert agent._proposal is None and not heartbeat._thread.is_alive()
    assert states(agent.storage_url)[-1] == (TrialState.COMPLETE, None)
    agent.close()  # nothing pending: nothing changes
    assert states(agent.storage_url)[-1] == (TrialState.COMPLETE, None)
    # with-statement, and search() abandons a pending proposal before it runs
    with AutoDistillation(lambda arch: arch, conf(tmp_path / "run2")) as other:
        other.model_arch_proposition()
        other.train_func = lambda model: None
        other.eval_func = lambda model: {"acc": float(model["a"])}
        other.search()
    got = states(other.storage_url)
    assert got[0] == (TrialState.FAIL, "Abandoned") and got.count((TrialState.COMPLETE, None)) == 2
    assert not [s for s in got if s[0] == TrialState.RUNNING]


def test_a_collected_agent_fails_its_proposal(tmp_path):
    agent = AutoDistillation(lambda arch: arch, conf(tmp_path / "run"))
    agent.model_arch_proposition()
    url = agent.storage_url
    del agent
    gc.collect()
    assert states(url) == [(TrialState.FAIL, "Abandoned")]


@pytest.mark.slow
def test_a_dead_process_proposal_is_failed_when_its_heartbeat_lapses(tmp_path):
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    script = textwrap.dedent(f"""
        import os
        from nas_distill import AutoDistillation
        conf = {conf(tmp_path / "run", heartbeat_interval=1, grace_period=2)!r}
        agent = AutoDistillation(lambda arch: arch, conf)
        agent.model_arch_proposition()
        os._exit(0)  # dies without closing: no finalizer runs
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert states(url) == [(TrialState.RUNNING, None)]
    study = optuna.load_study(study_name="nas-distill", storage=study_mod.make_storage(
        url, heartbeat_interval=1, grace_period=2))
    deadline = time.monotonic() + 30  # a loaded machine may delay the sweep's view; the rule is the grace
    while states(url)[0][0] == TrialState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.5)
        study_mod.fail_stale_trials(study)
    assert states(url)[0][0] == TrialState.FAIL
