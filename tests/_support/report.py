"""Realistic nas-distill studies for the report, browser and dashboard tests.

A study here looks like one the orchestrator writes: params = the arch dict, user attrs ``arch``,
``params`` (parameter count), each metric, ``timings``, ``worker``, and on failure ``error_type`` /
``error``; study user attrs hold a config; metric names are set. One small real file is uploaded to a
``FileSystemArtifactStore`` as a trial's "student checkpoint".
"""

from __future__ import annotations

import datetime as dt
import random
import warnings
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

SPACE = {
    "hidden_size": [64, 128, 256, 384],
    "intermediate_size": [256, 512, 1024],
    "num_attention_heads": [2, 4, 8],
    "num_hidden_layers": [1, 2, 3, 4],
}
DISTRIBUTIONS = {k: CategoricalDistribution(v) for k, v in SPACE.items()}


def _metrics(arch: dict, rng: random.Random) -> tuple[float, float, int]:
    size = arch["hidden_size"] * arch["num_hidden_layers"]
    n_params = 12 * arch["hidden_size"] ** 2 * arch["num_hidden_layers"] + arch["intermediate_size"] * 3000
    accuracy = min(0.99, 0.55 + 0.25 * (size / 1536) ** 0.5 + rng.uniform(-0.03, 0.03))
    latency = 0.4 + size / 250 + arch["intermediate_size"] / 900 + rng.uniform(0, 0.4)
    return round(accuracy, 4), round(latency, 3), n_params


def make_study(
    tmp_path: Path,
    *,
    n_complete: int = 24,
    n_fail: int = 3,
    n_running: int = 1,
    metrics: tuple[tuple[str, str], ...] = (("accuracy", "maximize"), ("latency", "minimize")),
    name: str = "nas-distill",
    artifact: bool = True,
    seed: int = 0,
) -> tuple[optuna.Study, str, Path]:
    """A SQLite study with complete, failed and running trials; returns (study, storage URL, artifacts)."""
    rng = random.Random(seed)
    url = f"sqlite:///{tmp_path / (name + '.db')}"
    study = optuna.create_study(storage=url, study_name=name, directions=[d for _, d in metrics])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([m for m, _ in metrics])
    study.set_user_attr("config", {"search_algorithm": "bo", "max_trials": n_complete + n_fail, "seed": 42})
    start = dt.datetime(2026, 11, 29, 6, 0, 0)
    trials = []
    kinds = ["COMPLETE"] * n_complete + ["FAIL"] * n_fail + ["RUNNING"] * n_running
    rng.shuffle(kinds)
    for i, kind in enumerate(kinds):
        arch = {k: rng.choice(v) for k, v in SPACE.items()}
        acc, lat, n_params = _metrics(arch, rng)
        size_mb = round(n_params * 4 / 2**20, 3)
        values_by_name = {"accuracy": acc, "latency": lat, "model_size_mb": size_mb, "params": n_params}
        attrs = {"arch": arch, "params": n_params, "worker": f"host-a:{1000 + i % 2}",
                 "timings": {"build_s": 0.1, "distill_s": 12.0 + i, "evaluate_s": 1.5}}
        t0 = start + dt.timedelta(seconds=30 * i)
        if kind == "COMPLETE":
            attrs.update({m: values_by_name[m] for m, _ in metrics})
            trials.append(optuna.trial.create_trial(
                state=TrialState.COMPLETE, params=arch, distributions=DISTRIBUTIONS,
                values=[values_by_name[m] for m, _ in metrics], user_attrs=attrs,
            ))
        elif kind == "FAIL":
            attrs.update({"error_type": "RuntimeError",
                          "error": "CUDA out of memory. Tried to allocate 2.00 GiB </script><b>x</b>"})
            trials.append(optuna.trial.create_trial(
                state=TrialState.FAIL, params=arch, distributions=DISTRIBUTIONS, user_attrs=attrs))
        else:
            trials.append(optuna.trial.create_trial(
                state=TrialState.RUNNING, params=arch, distributions=DISTRIBUTIONS, user_attrs=attrs))
        trials[-1].datetime_start = t0
        if kind != "RUNNING":
            trials[-1].datetime_complete = t0 + dt.timedelta(seconds=14 + i)
    study.add_trials(trials)
    artifact_dir = tmp_path / "artifacts"
    if artifact:
        # As the orchestrator does: the checkpoint is uploaded while the trial runs, then it is told.
        from optuna.artifacts import FileSystemArtifactStore, upload_artifact

        artifact_dir.mkdir(exist_ok=True)
        ckpt = tmp_path / "student.pt"
        ckpt.write_bytes(b"student-checkpoint\x00" * 64)
        arch = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2}
        study.enqueue_trial(arch)
        trial = study.ask(DISTRIBUTIONS)
        acc, lat, n_params = _metrics(arch, rng)
        values_by_name = {"accuracy": acc, "latency": lat, "model_size_mb": round(n_params * 4 / 2**20, 3),
                          "params": n_params}
        for key, value in {"arch": arch, "params": n_params, "worker": "host-a:1000",
                           **{m: values_by_name[m] for m, _ in metrics}}.items():
            trial.set_user_attr(key, value)
        upload_artifact(artifact_store=FileSystemArtifactStore(str(artifact_dir)), file_path=str(ckpt),
                        study_or_trial=trial)
        study.tell(trial, [values_by_name[m] for m, _ in metrics])
    return study, url, artifact_dir
