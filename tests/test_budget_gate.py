"""The budget stays clean: no trial is asked once every slot is spent or held, and a trial that loses the
last-moment race for the last slot is PRUNED with its reason (never FAIL) and frees its point.

Real SQLite studies and the real trial loop (``AutoDistillation.search()``); the other worker's moves
are made at a chosen moment by the test, on the same study, through Optuna's public API.
"""

from __future__ import annotations

import threading
import time

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from nas_distill import AutoDistillation
from nas_distill import study as study_mod
from nas_distill.search.samplers import CLAIM_KEY, RELEASED, held_indices
from nas_distill.search.space import SearchSpace

SPACE = {"a": [1, 2, 3], "b": [1, 2]}
DISTRIBUTIONS = {k: CategoricalDistribution(v) for k, v in SPACE.items()}


def conf(run_dir, max_trials):
    return {"search": {"search_space": SPACE, "search_algorithm": "grid", "metrics": ["acc"],
                       "max_trials": max_trials},
            "study": {"run_dir": str(run_dir), "study_name": "gate", "heartbeat_interval": 1,
                      "grace_period": 30}}


def agent_of(cls, run_dir, max_trials, trained):
    agent = cls(lambda arch: dict(arch), conf(run_dir, max_trials))
    agent.train_func = lambda model: trained.append(dict(model))
    agent.eval_func = lambda model: {"acc": float(model["a"] * 10 + model["b"])}
    return agent


def test_a_trial_losing_the_race_for_the_last_slot_is_pruned_with_its_reason(tmp_path):
    """Between this worker's budget check and its ask, another worker completes the last slot."""
    trained: list[dict] = []

    class RacedAgent(AutoDistillation):
        raced = False

        def _propose(self):
            if not RacedAgent.raced:  # the other worker finishes right now: the budget is spent
                RacedAgent.raced = True
                self.study.add_trial(optuna.trial.create_trial(
                    params={"a": 3, "b": 2}, distributions=DISTRIBUTIONS, value=32.0))
            return super()._propose()

    agent = agent_of(RacedAgent, tmp_path / "run", 1, trained)
    agent.search()
    trials = agent.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    ours = trials[1]
    assert ours.user_attrs["pruned_reason"] == "budget reached: 1 of 1 trials complete"
    assert ours.system_attrs[CLAIM_KEY] == RELEASED  # its arch stays free for a larger budget
    assert ours.params not in [t.params for t in trials[:1]]
    assert trained == []  # it never trained
    assert len(held_indices(agent.study, SearchSpace(SPACE))) == 1  # only the completed trial holds one


def test_no_trial_is_asked_while_every_slot_is_held_by_a_running_trial(tmp_path):
    """Another worker holds the last slot: this one waits, asks nothing, and stops once it completes."""
    run_dir = tmp_path / "run"
    trained: list[dict] = []
    agent = agent_of(AutoDistillation, run_dir, 1, trained)
    study = agent.study
    other = study.ask(DISTRIBUTIONS)
    heartbeat = study_mod.Heartbeat(study, other._trial_id).__enter__()  # a live worker's trial

    def finish_later():
        time.sleep(2.0)
        study.tell(other, 11.0)
        heartbeat.__exit__(None, None, None)

    thread = threading.Thread(target=finish_later)
    thread.start()
    started = time.monotonic()
    agent.search()
    waited = time.monotonic() - started
    thread.join()
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE]  # nothing asked, nothing discarded
    assert trained == [] and waited >= 1.5


SHORT_TASK = """
from nas_distill.errors import InvalidArchitecture

def make_task(config):
    def build(arch):
        if arch == {"a": 2, "b": 2}:
            raise InvalidArchitecture("a=2 with b=2 cannot be built")
        return dict(arch)

    return {"model_builder": build, "train_func": lambda model: None,
            "eval_func": lambda model: {"acc": float(model["a"] * 10 + model["b"])}}
"""


def test_a_search_that_runs_out_of_architectures_short_of_its_budget_exits_3(tmp_path, monkeypatch):
    """4 points, one of which cannot be built, and a budget of 4: 3 complete, the worker says 3 of 4."""
    from nas_distill.workers import EXIT_INCOMPLETE, run_worker

    (tmp_path / "nd_short_task.py").write_text(SHORT_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NAS_DISTILL_WORKER", "s0")  # run_worker sets it; restored afterwards
    data = {"task": "nd_short_task:make_task",
            "auto_distillation": conf(tmp_path / "run", 4)}
    data["auto_distillation"]["search"]["search_space"] = {"a": [1, 2], "b": [1, 2]}
    assert run_worker(data, label="s0") == EXIT_INCOMPLETE
    study = optuna.load_study(study_name="gate", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted((t.params["a"], t.params["b"]) for t in complete) == [(1, 1), (1, 2), (2, 1)]
