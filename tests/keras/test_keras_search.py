"""The TensorFlow / Keras path end to end: search, study, Pareto front, export, seed API, ``model_cls``.

Real parts only: the Keras digits task (:mod:`nas_distill.tasks.keras_digits`: scikit-learn's digits, a
Keras MLP teacher trained for a few epochs and reloaded from ``model.keras``), the built-in Keras flash
distiller and evaluator, Optuna studies in SQLite, worker processes, the ``nas-distill`` CLI. Training
steps are cut to a few dozen so the tests stay short; the students still learn well above chance.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("sklearn")

import optuna  # noqa: E402
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from _support.common import REPO_ROOT, write_config  # noqa: E402
from nas_distill import AutoDistillation  # noqa: E402
from nas_distill.tasks import keras_digits  # noqa: E402

EXAMPLE = REPO_ROOT / "examples" / "keras_digits.yaml"
CHANCE = 0.1  # ten balanced classes


def keras_config(run_dir, *, max_trials: int, study_name: str = "keras-digits", kt_steps: int = 10,
                 rd_steps: int = 40) -> dict:
    """examples/keras_digits.yaml with a short budget (same stages, fewer steps, quick latency)."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["task"] = {"entry": data["task"], "args": {"teacher_epochs": 10}}
    conf = data["auto_distillation"]
    conf["search"]["max_trials"] = max_trials
    conf["flash_distillation"]["knowledge_transfer"]["train_steps"] = [kt_steps]
    conf["flash_distillation"]["regular_distillation"]["train_steps"] = [rd_steps]
    conf["evaluation"] = {"latency_warmup": 1, "latency_repeats": 3}
    conf["study"] = {"run_dir": str(run_dir), "study_name": study_name, "heartbeat_interval": 2,
                     "grace_period": 60}
    return data


def brute_force_front(values, higher):
    """Indices of the non-dominated points, straight from the definition (the test's own oracle)."""
    signed = [[v if h else -v for v, h in zip(p, higher)] for p in values]
    return [i for i, p in enumerate(signed)
            if not any(all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p))
                       for j, q in enumerate(signed) if j != i)]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas_distill.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def complete_trials(study):
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


# ------------------------------------------------------------------- two worker processes, one study
@pytest.mark.slow
def test_two_workers_on_one_sqlite_study_end_with_a_correct_pareto_front(tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "keras.yaml", keras_config(run_dir, max_trials=4))
    proc = cli("run", config, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]

    study = optuna.load_study(study_name="keras-digits", storage=f"sqlite:///{run_dir / 'study.db'}")
    complete = complete_trials(study)
    assert len(complete) == 4, [(t.number, t.state.name, t.user_attrs.get("error")) for t in study.trials]
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == 4
    for t in complete:
        accuracy, latency = t.values
        assert 0.0 <= accuracy <= 1.0 and latency > 0
        # params counted from the trained Keras model equal a fresh build's count for that arch
        assert t.user_attrs["n_params"] == keras_digits.student_builder(t.params).count_params()
        assert t.user_attrs["artifact_id"]
    assert max(t.values[0] for t in complete) > 3 * CHANCE, [t.values for t in complete]
    # one whole teacher file, no temporary folder left behind
    assert (run_dir / "keras_teacher" / "model.keras").is_file()
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".keras-teacher-")]

    expected = {complete[i].number for i in brute_force_front([t.values for t in complete], [True, False])}
    pareto = cli("pareto", config, "--json")
    assert pareto.returncode == 0, pareto.stderr
    assert {t["number"] for t in json.loads(pareto.stdout)["trials"]} == expected
    # the seed API's answer on the same study (no new trials: the budget is spent)
    data = keras_config(run_dir, max_trials=4)
    data.pop("task")
    agent = AutoDistillation(keras_digits.student_builder, data)
    best = agent.search()
    by_number = {t.number: t.params for t in complete}
    assert sorted(json.dumps(a, sort_keys=True) for a in best) == \
        sorted(json.dumps(by_number[n], sort_keys=True) for n in expected)
    assert len(complete_trials(agent.study)) == 4


@pytest.mark.slow
def test_workers_started_together_train_the_teacher_once(tmp_path):
    """Two processes load the teacher of one empty run folder at once: one trains, the other waits on the
    lock and loads that file. Each child logs every training it starts to a shared file."""
    script = """
import sys
from nas_distill.tasks import keras_digits

train = keras_digits.train_teacher

def logged(*args, **kwargs):
    with open(sys.argv[2], "a") as log:
        log.write("trained\\n")
    return train(*args, **kwargs)

keras_digits.train_teacher = logged
model, metrics = keras_digits.load_or_train_teacher(sys.argv[1], epochs=2)
assert metrics["epochs"] == 2 and model.count_params() == metrics["params"]
"""
    log = tmp_path / "trainings.log"
    children = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "run"), str(log)],
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
    assert log.read_text().splitlines() == ["trained"]


# -------------------------------------------------------------------------- the seed API, in process
class RecordingAutoDistillation(AutoDistillation):
    """The built-in Keras training and evaluation, plus the logits each trained student gives on the
    evaluation data (kept by trial number) and the class of the model that was trained."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logits: dict[int, np.ndarray] = {}
        self.trained: dict[int, tuple[type, bool]] = {}  # class, and whether it is the builder's object

    def estimate(self, model):
        metrics = super().estimate(model)  # KerasFlashDistiller + the Keras evaluate
        number = self.advisor.current_trial.number
        self.logits[number] = np.asarray(model.predict(self.eval_dataset[0], verbose=0))
        self.trained[number] = (type(model), getattr(model, "from_builder", False))
        return metrics


def seed_api_config(run_dir, **kw) -> dict:
    data = keras_config(run_dir, **kw)
    data.pop("task")
    data.pop("model")  # framework comes from the constructor argument
    return data


@pytest.fixture(scope="module")
def in_process_search(tmp_path_factory):
    """``AutoDistillation(builder, cfg, framework='tensorflow')`` with teacher and data set: 2 trials."""
    run_dir = tmp_path_factory.mktemp("keras-seed") / "run"
    splits = keras_digits.load_splits()
    teacher, _ = keras_digits.load_or_train_teacher(run_dir, epochs=10)
    agent = RecordingAutoDistillation(keras_digits.student_builder, seed_api_config(run_dir, max_trials=2),
                                      framework="tensorflow")
    agent.teacher_model = teacher
    agent.train_dataset = splits["train"]
    agent.eval_dataset = splits["val"]
    best = agent.search()
    return agent, best, run_dir


@pytest.mark.slow
def test_seed_api_runs_keras_trials_with_the_builtin_engine(in_process_search):
    agent, best, _ = in_process_search
    assert agent.framework == "tensorflow"
    from nas_distill.distill.keras.distiller import KerasFlashDistiller

    assert isinstance(agent._distiller, KerasFlashDistiller)
    assert [s.name for s in agent.flash_distillers] == ["knowledge_transfer_0"]
    assert [s.name for s in agent.regular_distillers] == ["regular_distillation_0"]
    complete = complete_trials(agent.study)
    assert len(complete) == 2, [t.user_attrs.get("error") for t in agent.study.trials]
    x_val, y_val = agent.eval_dataset
    for t in complete:
        assert t.user_attrs["n_params"] == keras_digits.student_builder(t.params).count_params()
        # the recorded accuracy is the trained model's, on the evaluation split
        accuracy = float(np.mean(agent.logits[t.number].argmax(-1) == y_val))
        assert t.values[0] == pytest.approx(accuracy)
        assert t.values[0] > 3 * CHANCE
    expected = [complete[i].params for i in brute_force_front([t.values for t in complete], [True, False])]
    assert sorted(json.dumps(a, sort_keys=True) for a in best) == \
        sorted(json.dumps(a, sort_keys=True) for a in expected)


@pytest.mark.slow
def test_exported_keras_student_reloads_with_the_same_predictions(in_process_search, tmp_path, capsys):
    from nas_distill.cli import main

    agent, _, run_dir = in_process_search
    x_val, y_val = agent.eval_dataset
    out = tmp_path / "export"
    assert main(["export", "--run-dir", str(run_dir), "--study", "keras-digits", "-o", str(out)]) == 0
    number = int(re.search(r"trial (\d+) ->", capsys.readouterr().out).group(1))
    trial = agent.study.trials[number]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "arch.json", "model.keras", "nas_distill.json"]
    assert json.loads((out / "arch.json").read_text()) == trial.params
    summary = json.loads((out / "nas_distill.json").read_text())
    assert (summary["trial"], summary["architecture"]) == (number, trial.params)
    assert summary["metrics"] == dict(zip(agent.study.metric_names, trial.values))
    reloaded = keras.saving.load_model(out / "model.keras", safe_mode=True)
    logits = np.asarray(reloaded.predict(x_val, verbose=0))
    np.testing.assert_allclose(logits, agent.logits[number], rtol=1e-5, atol=1e-6)
    assert float(np.mean(logits.argmax(-1) == y_val)) == pytest.approx(trial.values[0])
    # the Pareto student exported by default is the most accurate one on the front
    front = [t for t in complete_trials(agent.study) if t.params in agent.best_model_archs]
    assert trial.values[0] == max(t.values[0] for t in front)


# ------------------------------------------------------------------------------------------- model_cls
class DigitsMLP(keras.Model):
    """A functional ``keras.Model`` subclass (not registered with Keras: model_cls supplies it)."""

    def __init__(self, hidden_size=16, num_hidden_layers=1, **kwargs):
        inputs = keras.Input((keras_digits.NUM_FEATURES,), name="pixels")
        x = inputs
        for i in range(num_hidden_layers):
            x = keras.layers.Dense(hidden_size, activation="relu", name=f"hidden.{i}")(x)
        logits = keras.layers.Dense(keras_digits.NUM_LABELS, name="logits")(x)
        super().__init__(inputs, logits, **kwargs)
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers

    def get_config(self):
        return {"hidden_size": self.hidden_size, "num_hidden_layers": self.num_hidden_layers, "name": self.name}


def test_rebuild_with_a_keras_model_cls_keeps_class_and_weights(tmp_path):
    from nas_distill.engines.students import rebuild_with

    model = DigitsMLP(8, 2)
    x = keras_digits.load_splits()["val"][0][:16]
    rebuilt = rebuild_with(model, DigitsMLP, str(tmp_path))
    assert type(rebuilt) is DigitsMLP and rebuilt is not model
    assert (rebuilt.hidden_size, rebuilt.num_hidden_layers) == (8, 2)
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert not list(tmp_path.iterdir())  # the temporary .keras folder is gone
    # a builder whose models are not model_cls: a clear error (the trial is recorded FAIL with it)
    plain = keras_digits.student_builder({"hidden_size": 16, "num_hidden_layers": 1})
    with pytest.raises(TypeError, match="model_cls DigitsMLP"):
        rebuild_with(plain, DigitsMLP, str(tmp_path))


@pytest.mark.slow
def test_search_with_a_keras_model_cls_trains_the_reloaded_student(tmp_path):
    splits = keras_digits.load_splits()
    teacher, _ = keras_digits.load_or_train_teacher(tmp_path / "teacher-run", epochs=10)
    built = []

    def builder(arch):
        model = DigitsMLP(**arch)
        model.from_builder = True  # a plain attribute: not saved, so a reloaded model lacks it
        built.append(arch)
        return model

    data = seed_api_config(tmp_path / "run", max_trials=2)
    data["auto_distillation"]["search"]["search_space"] = {"hidden_size": [16, 32], "num_hidden_layers": [1]}
    data["auto_distillation"]["search"]["search_algorithm"] = "grid"
    data["auto_distillation"]["flash_distillation"].pop("knowledge_transfer")  # no `body` block here
    agent = RecordingAutoDistillation(builder, data, framework="tf")
    agent.teacher_model, agent.train_dataset, agent.eval_dataset = teacher, splits["train"], splits["val"]
    agent.search(model_cls=DigitsMLP)
    complete = complete_trials(agent.study)
    assert len(complete) == 2, [t.user_attrs.get("error") for t in agent.study.trials]
    # the dry run's students (the smallest and the largest: every value of the space), then one per trial
    assert built[:2] == [{"hidden_size": 16, "num_hidden_layers": 1}, {"hidden_size": 32, "num_hidden_layers": 1}]
    assert sorted(built[2:], key=str) == sorted((t.params for t in complete), key=str)
    # what trained was a DigitsMLP reloaded from its .keras file, not the builder's object
    assert sorted(agent.trained.values(), key=str) == [(DigitsMLP, False), (DigitsMLP, False)]
    assert all(t.values[0] > 3 * CHANCE for t in complete)
