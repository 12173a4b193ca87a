"""The ``nas-distill`` command line: fast help, run / status / pareto / report / export, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest

from _support.common import task_config, write_config

PY = sys.executable


def cli(*args, env=None, timeout=180):
    return subprocess.run([PY, "-m", "nas_distill.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_help_is_fast_and_imports_neither_torch_nor_optuna():
    code = ("import sys\nfrom nas_distill import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint('HEAVY', sorted(m for m in ('torch', 'optuna', 'transformers', 'sqlalchemy')"
            " if m in sys.modules))")
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    for command in ("run", "worker", "status", "pareto", "report", "dashboard", "export", "demo"):
        assert command in res.stdout
    res = cli("run", "--help")
    assert "--workers" in res.stdout and "--storage" in res.stdout and "--run-dir" in res.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    res = cli("run", tmp_path / "missing.yaml")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "missing.yaml" in res.stderr

    bad = write_config(tmp_path / "bad.yaml", {"auto_distillation": {"search": {"search_space": {"a": []}}},
                                               "task": "x:y"})
    res = cli("run", bad)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "search_space" in res.stderr

    res = cli("status", "--run-dir", tmp_path / "nowhere")
    assert res.returncode != 0 and "Traceback" not in res.stderr and "no study" in res.stderr

    res = cli("run", tmp_path / "missing.yaml", "--debug")
    assert "Traceback" in res.stderr


def test_run_then_read_the_study(tmp_path, task_module):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", task_config(run_dir, study_name="cli", max_trials=5))
    res = cli("run", cfg)  # stdout is a pipe here, as under nohup, CI or docker compose
    assert res.returncode == 0, res.stderr
    assert_trial_lines_match_the_study(res.stdout, run_dir / "study.db", "cli", ["acc", "cost"])
    lines = res.stdout.splitlines()
    assert "search started: study 'cli'" in lines[0] and "budget 5 trials, workers 1" in lines[0]
    summary = [line for line in lines if " search finished after " in line]
    assert len(summary) == 1 and "5 of 5 trials complete, 0 failed, 0 pruned (exit 0)" in summary[0]
    assert lines[-1].split(" ", 3)[3].startswith(f"next: nas-distill status {cfg}")

    res = cli("status", cfg)
    assert res.returncode == 0, res.stderr
    assert "5 of 5 trials complete" in res.stdout
    assert "acc" in res.stdout and "cost" in res.stdout and "Pareto" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 100

    res = cli("pareto", "--run-dir", run_dir, "--study", "cli", "--json")
    front = json.loads(res.stdout)
    assert front["metrics"] == ["acc", "cost"] and front["trials"]
    assert all(t["pareto"] for t in front["trials"])

    res = cli("pareto", cfg, "--csv")
    rows = list(csv.reader(io.StringIO(res.stdout)))
    assert rows[0][:3] == ["trial", "acc", "cost"] and len(rows) - 1 == len(front["trials"])

    res = cli("pareto", cfg)
    assert res.stdout.splitlines()[0].split() == ["#", "a", "b", "acc", "↑", "cost", "↓"]
    assert len(res.stdout.splitlines()) == 2 + len(front["trials"])

    out = tmp_path / "report.html"
    res = cli("report", cfg, "-o", out)
    assert res.returncode == 0, res.stderr
    page = out.read_text()
    # the rich report (nas_distill.report): plotly inlined, no external scripts or CDN
    assert "<table" in page and "Pareto" in page and "<script src=" not in page

    # a worker joining the same study continues it (here with a budget one larger), and the override is
    # the budget status shows from then on
    res = cli("worker", cfg, "--max-trials", "6", "--log-format", "json")
    assert res.returncode == 0, res.stderr
    import optuna

    study = optuna.load_study(study_name="cli", storage=f"sqlite:///{run_dir / 'study.db'}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6 and len({json.dumps(t.params, sort_keys=True) for t in complete}) == 6
    records = [json.loads(line) for line in res.stdout.splitlines()]  # every line is one JSON object
    new_trial = max(complete, key=lambda t: t.number)
    finished = [r for r in records if r.get("event") == "trial_finished"]
    assert [(r["trial"], r["metrics"]) for r in finished] == \
        [(new_trial.number, dict(zip(["acc", "cost"], new_trial.values)))]
    assert records[0]["event"] == "search_started" and records[0]["budget"] == 6
    assert [r for r in records if r.get("event") == "search_finished"][0]["complete"] == 6
    assert "6 of 6 trials complete" in cli("status", cfg).stdout
    status = json.loads(cli("status", cfg, "--json").stdout)
    assert (status["max_trials"], status["complete"], status["budget_met"]) == (6, 6, True)
    assert status["counts"] == {"COMPLETE": 6} and status["stopped"] is None
    assert sorted(t["number"] for t in status["pareto"]) == sorted(t.number for t in study.best_trials)


LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+) trial (\d+) (started|finished in [0-9.]+ s): (.*)$")


def assert_trial_lines_match_the_study(stdout: str, db, name: str, metrics: list[str]) -> None:
    """Every COMPLETE trial of the study has a 'started' line with its arch and a 'finished' line with
    its metrics, and no other trial has any."""
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    expected = {}
    for t in study.trials:
        if t.state.name == "COMPLETE":
            arch = " ".join(f"{k}={t.params[k]}" for k in sorted(t.params))
            values = " ".join(f"{m}={v:.4g}" for m, v in zip(metrics, t.values))
            expected[t.number] = {"started": arch, "finished": values}
    seen: dict[int, dict[str, str]] = {}
    for line in stdout.splitlines():
        match = LINE.match(line)
        if match:
            kind = "started" if match.group(3) == "started" else "finished"
            seen.setdefault(int(match.group(2)), {})[kind] = match.group(4)
    assert seen == expected and len(expected) == study.user_attrs.get("max_trials", len(expected))


EXPORT_TASK = '''
def make_task(config):
    from transformers import BertConfig, BertForSequenceClassification

    def build(arch):
        cfg = BertConfig(vocab_size=50, hidden_size=arch["hidden"], num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=16, num_labels=2)
        return BertForSequenceClassification(cfg)

    def evaluate(model):
        return {"acc": float(model.config.hidden_size), "cost": float(model.num_parameters())}

    return {"model_builder": build, "train_func": lambda model: None, "eval_func": evaluate}
'''


@pytest.mark.slow
def test_export_writes_a_from_pretrained_folder(tmp_path, monkeypatch):
    (tmp_path / "nd_export_task.py").write_text(EXPORT_TASK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    run_dir = tmp_path / "run"
    cfg = task_config(run_dir, study_name="exp", max_trials=2, space={"hidden": [8, 16]},
                      task="nd_export_task:make_task")
    cfg_path = write_config(tmp_path / "cfg.yaml", cfg)
    res = cli("run", cfg_path, env=env)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "student"
    res = cli("export", cfg_path, "-o", out, env=env)  # default: the best of the first metric
    assert res.returncode == 0, res.stderr
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(out)
    assert model.config.hidden_size == 16
    assert json.loads((out / "arch.json").read_text()) == {"hidden": 16}
    res = cli("export", cfg_path, "--trial", 99, "-o", tmp_path / "x", env=env)
    assert res.returncode != 0 and "no trial 99" in res.stderr


def test_status_tells_discarded_and_duplicate_trials_from_failures(tmp_path):
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    from nas_distill import results
    from nas_distill import study as sm

    study = sm.open_study(f"sqlite:///{tmp_path / 's.db'}", "why", metrics=["acc"], higher_is_better=[True])
    dist = {"a": CategoricalDistribution([1, 2, 3])}
    ended = [
        (TrialState.COMPLETE, {}),
        (TrialState.FAIL, {"error_type": "Discarded"}),
        (TrialState.FAIL, {"error_type": "Discarded"}),
        (TrialState.FAIL, {"error_type": "WorkerLost"}),
        (TrialState.PRUNED, {"duplicate_of": 0}),
    ]
    for state, attrs in ended:
        trial = study.ask(dist)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    records = results.read_status(optuna.load_study(study_name="why", storage=f"sqlite:///{tmp_path / 's.db'}"))
    assert records.reasons == {"FAIL": {"Discarded": 2, "WorkerLost": 1}, "PRUNED": {"duplicate": 1}}
    lines = results.status_text(records, max_trials=1).splitlines()
    assert lines[0] == "study 'why': 1 of 1 trials complete"
    assert lines[1] == "trials: complete 1, fail 3 (Discarded 2, WorkerLost 1), pruned 1 (duplicate 1)"
    assert "never trained" in lines[2]
