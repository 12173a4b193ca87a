"""The pruner on the TensorFlow / Keras path: a real Keras search (the Keras digits task, the built-in Keras
flash distiller) evaluates its students at the rungs and stops some there, by the same rule as torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("keras")
pytest.importorskip("sklearn")

import optuna  # noqa: E402
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from _support.common import REPO_ROOT, write_config  # noqa: E402
from nas_distill.search.pruner import RungResult, decide  # noqa: E402
from nas_distill.tasks import keras_digits  # noqa: E402
from nas_distill.vocabulary import EARLY_STOP_ATTR, RUNGS_ATTR  # noqa: E402

KT_STEPS, RD_STEPS = 10, 45


def pruning_config(run_dir) -> dict:
    """examples/keras_digits.yaml, short, every point of its 12-point space, params as the known
    objective (exact: the decisions do not depend on timing noise), the pruner on. Random order (seeded):
    a grid from small to large never has enough larger students at a rung to compare with. Seed 1's order
    brings weak larger students after enough finished ones for the second rung to have shown that it
    ranks students as the end does; the first rung, 5 of 45 regular steps in, sits near chance and
    stops nobody."""
    data = yaml.safe_load((REPO_ROOT / "examples" / "keras_digits.yaml").read_text())
    data["task"] = {"entry": data["task"], "args": {"teacher_epochs": 10}}
    conf = data["auto_distillation"]
    conf["search"].update(search_algorithm="random", metrics=["accuracy", "params"], higher_is_better=[True, False],
                          max_trials=12, pruner="pareto-asha", rung_examples=200, seed=1)
    conf["flash_distillation"]["knowledge_transfer"]["train_steps"] = [KT_STEPS]
    conf["flash_distillation"]["regular_distillation"]["train_steps"] = [RD_STEPS]
    conf["evaluation"] = {"latency_warmup": 1, "latency_repeats": 3}
    conf["study"] = {"run_dir": str(run_dir), "study_name": "keras-pruning"}
    return data


@pytest.mark.slow
def test_a_keras_search_prunes_by_the_rule(tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "keras.yaml", pruning_config(run_dir))
    proc = subprocess.run([sys.executable, "-m", "nas_distill.cli", "run", config], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = optuna.load_study(study_name="keras-pruning", storage=f"sqlite:///{run_dir / 'study.db'}").trials
    # Rungs fall after the knowledge transfer: 1/9 and 1/3 of the regular-distillation steps.
    rung_steps = [KT_STEPS + round(RD_STEPS / 9), KT_STEPS + round(RD_STEPS / 3)]
    stopped = [t for t in trials if EARLY_STOP_ATTR in t.user_attrs]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert stopped and complete, [(t.number, t.state.name, t.user_attrs.get("error")) for t in trials]
    # The run's last line counts them as the workers' lines and `status` do: stopped early, not "pruned".
    others_pruned = sum(1 for t in trials if t.state == TrialState.PRUNED) - len(stopped)
    assert (f"{len(complete)} of 12 trials complete, 0 failed, {len(stopped)} stopped early, {others_pruned} pruned"
            in proc.stderr + proc.stdout), (proc.stderr + proc.stdout)[-2000:]
    by_number = {t.number: t for t in trials}

    def result(t, step, finished=False):
        record = next(r for r in t.user_attrs[RUNGS_ATTR] if r["step"] == step)
        assert record["of"] == KT_STEPS + RD_STEPS
        assert record["known"]["params"] == keras_digits.student_builder(t.params).count_params()
        final = (-t.values[0],) if finished else None
        return RungResult(t.number, (-record["values"]["accuracy"],), (record["known"]["params"],), final)

    for t in complete:
        assert [r["step"] for r in t.user_attrs[RUNGS_ATTR]] == rung_steps
    for t in stopped:
        assert t.state == TrialState.PRUNED
        stop = t.user_attrs[EARLY_STOP_ATTR]
        assert stop["step"] in rung_steps
        # the ones finished then with their final values: what showed the rung predicts
        assert set(stop["finished"]) <= set(stop["compared_with"])
        others = [result(by_number[n], stop["step"], finished=n in stop["finished"]) for n in stop["compared_with"]]
        assert not decide(result(t, stop["step"]), others, 3).keep
