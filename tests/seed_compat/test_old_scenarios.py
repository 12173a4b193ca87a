"""The old system's own test, rebuilt offline: BO / Grid / Random with 3 / 3 / 6 trials over a BERT
pre-training student space, knowledge transfer on ``bert.encoder.layer.0`` then regular distillation on
``cls`` (KL + the task loss), students from ``builders.from_config``, the teacher and data set as
``agent.teacher_model`` / ``train_dataset`` / ``eval_dataset``, ``eval_loss`` + ``latency`` measured by the
built-in evaluator, and ``search(res_save_path=...)`` three times in one process.

Every figure is checked against the test's own computation: the Pareto front by brute force, the
``eval_loss`` of a saved student by one forward pass over the whole evaluation set, the parameter counts
by summing the built students' tensors, the result files' lines by formatting the study's values.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import optuna
import pytest
import transformers
from optuna.trial import TrialState

from _support.seed_compat import (
    SPACE,
    MaskedLMData,
    arch_key,
    brute_force_front,
    make_teacher,
    masked_lm_loss,
    old_test_config,
    student_builder,
)
from nas_distill import AutoDistillation, Metric
from nas_distill.study import artifact_store

METRICS = [Metric(name="eval_loss", greater_is_better=False), Metric(name="latency", greater_is_better=False)]


def expected_line(arch, values, params):
    """The old ``Trial_*`` / ``Final_results.txt`` line, formatted here from the study's values."""
    arch_text = ",".join(f"{k}_{arch[k]}" for k in sorted(arch))
    metrics = {"eval_loss": values[0], "latency": values[1]}
    return f"{arch_text}: {metrics} Paras: {params / 10**6}M"


def load_student(study, trial, run_dir, out: Path):
    """The trained student saved with the trial, downloaded from the artifact store and loaded back."""
    out.mkdir(parents=True)
    archive = out / "student.tar"
    optuna.artifacts.download_artifact(artifact_store=artifact_store(run_dir), file_path=str(archive),
                                       artifact_id=trial.user_attrs["artifact_id"])
    with tarfile.open(archive) as tar:
        tar.extractall(out / "student", filter="data")
    return transformers.AutoModelForPreTraining.from_pretrained(out / "student", local_files_only=True)


@pytest.mark.slow
def test_old_scenario_bo_grid_random_three_searches_in_one_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the current folder when res_save_path is given
    teacher = make_teacher(tmp_path / "teacher")
    builder = student_builder(tmp_path / "teacher")
    train, evaluation = MaskedLMData(12, seed=0), MaskedLMData(8, seed=1)
    params_of = {arch_key(a): sum(p.numel() for p in builder(a).parameters())
                 for a in ({"hidden_size": h, "intermediate_size": i}
                           for h in SPACE["hidden_size"] for i in SPACE["intermediate_size"])}

    for algorithm in ("BO", "Grid", "Random"):
        max_trials = 6 if algorithm == "Random" else 3
        agent = AutoDistillation(builder, old_test_config(algorithm, max_trials, metrics=METRICS))
        agent.teacher_model = teacher
        agent.train_dataset = train
        agent.eval_dataset = evaluation
        best = agent.search(res_save_path=str(tmp_path / algorithm),
                            model_cls=transformers.AutoModelForPreTraining)

        folder = tmp_path / algorithm / "AutoDistillationResults"
        # its own study, in its own results folder
        assert agent.storage_url == f"sqlite:///{folder / 'study.db'}"
        study = optuna.load_study(study_name=agent.study_name, storage=agent.storage_url)
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(complete) == min(max_trials, len(params_of)), algorithm  # Random: 6 asked, 4 exist
        assert len({arch_key(t.params) for t in complete}) == len(complete)  # none trained twice
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in study.trials)
        assert not [t for t in study.trials if t.state == TrialState.FAIL and
                    t.user_attrs.get("error_type") != "Discarded"], [t.user_attrs for t in study.trials]

        # the answer is the Pareto front of what the study recorded
        front = brute_force_front([t.values for t in complete], [False, False])
        assert sorted(arch_key(a) for a in best) == sorted(arch_key(complete[i].params) for i in front)

        # parameter counts: the built students' tensors
        for t in complete:
            assert t.user_attrs["n_params"] == params_of[arch_key(t.params)]
            assert agent.model_paras_num[arch_key(t.params)] == params_of[arch_key(t.params)]

        # eval_loss: one forward pass of the saved student over the whole evaluation set
        first = complete[0]
        student = load_student(study, first, folder, tmp_path / "students" / algorithm)
        assert first.values[0] == pytest.approx(masked_lm_loss(student, evaluation), rel=1e-4)
        assert 0 < first.values[1] < 1000  # ms per batch of one

        # the old result files, in the old line formats
        trial_files = sorted(folder.glob("Trial_*_results.txt"))
        assert [p.name for p in trial_files] == [f"Trial_{k}_results.txt" for k in range(1, len(complete) + 1)]
        final = (folder / "Final_results.txt").read_text().splitlines()
        lines = {expected_line(t.params, t.values, params_of[arch_key(t.params)]) for t in complete}
        all_part = final[final.index("=" * 30 + " All Search Results " + "=" * 30) + 2:]
        all_part = all_part[:all_part.index("")]
        assert set(all_part) == lines
        best_part = final[final.index("=" * 30 + " Best Search Results " + "=" * 30) + 2:]
        assert sorted(line.split(". ", 1)[1] for line in best_part if line) == sorted(
            expected_line(complete[i].params, complete[i].values, params_of[arch_key(complete[i].params)])
            for i in front)
        # the k-th Trial file holds the first k results
        assert len([line for line in trial_files[0].read_text().splitlines()
                    if " Paras: " in line and ". " not in line[:4]]) >= 1
        assert (folder / "lastest_results.json").is_file() and not (folder / "lastest_results.npy").exists()

    # three studies, one per res_save_path; nothing in the current folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BO", "Grid", "Random", "students", "teacher"]
