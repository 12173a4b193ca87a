"""The one reading of a study (``nas_distill.records``): every reader shows the same Pareto front, and a
study written before the parameter count was named ``n_params`` (it was the user attribute ``params``)
still reads everywhere the count is shown."""

from __future__ import annotations

import csv
import io
import json
import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from nas_distill import cli
from nas_distill.export import student_summary
from nas_distill.records import parameter_count, read_study
from nas_distill.report import write_report
from nas_distill.reporting.html import DATA_BLOCK_ID

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {"width": [8, 16, 32, 64], "depth": [1, 2, 3]}


def _count(arch: dict) -> int:
    return 100 * arch["width"] * arch["depth"] + 7


def _old_study(tmp_path) -> tuple[optuna.Study, str]:
    """A SQLite study as the runner wrote it while the count was the user attribute ``params``; the last
    trial is written the current way (``n_params``), as a resumed search would add it."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    study = optuna.create_study(storage=url, study_name="old", directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency"])
    study.set_user_attr("search_space", SPACE)
    dist = {k: CategoricalDistribution(v) for k, v in SPACE.items()}
    archs = [{"width": w, "depth": d} for w in SPACE["width"] for d in SPACE["depth"]]
    for i, arch in enumerate(archs):
        accuracy = round(0.5 + 0.1 * SPACE["width"].index(arch["width"]) + 0.03 * arch["depth"] - 0.01 * (i % 3), 4)
        latency = round(0.2 * arch["width"] / 8 + arch["depth"] * 0.5 + 0.05 * (i % 2), 3)
        name = "n_params" if i == len(archs) - 1 else "params"
        study.add_trial(optuna.trial.create_trial(
            params=arch, distributions=dist, values=[accuracy, latency],
            user_attrs={"arch": arch, name: _count(arch), "worker": "old-host:1", "accuracy": accuracy,
                        "latency": latency}))
    trial = study.ask(dist)  # a failed trial is read too, and is on no front
    study.tell(trial, state=TrialState.FAIL)
    return study, url


def _main(capsys, *argv) -> str:
    assert cli.main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


def test_every_reader_shows_the_same_front_and_the_old_count(tmp_path, capsys):
    study, url = _old_study(tmp_path)
    best = sorted(t.number for t in study.best_trials)  # Optuna's own front, computed independently
    assert 1 < len(best) < len(study.trials) - 1
    counts = {t.number: _count(t.params) for t in study.trials if t.state == TrialState.COMPLETE}
    assert sum(1 for t in study.trials if "params" in t.user_attrs) == len(counts) - 1  # both names present

    records = read_study(study)
    assert records.pareto_numbers == best
    assert {t.number: t.n_params for t in records.complete} == counts
    assert [t.state for t in records.trials].count("FAIL") == 1

    target = ("--storage", url, "--study", "old")
    front = json.loads(_main(capsys, "pareto", *target, "--json"))
    assert sorted(t["number"] for t in front["trials"]) == best
    assert {t["number"]: t["params"] for t in front["trials"]} == {n: counts[n] for n in best}

    rows = list(csv.DictReader(io.StringIO(_main(capsys, "pareto", *target, "--csv"))))
    assert {int(r["trial"]): int(r["params"]) for r in rows} == {n: counts[n] for n in best}

    table = _main(capsys, "pareto", *target).splitlines()
    head = table[0].split()
    assert head[:3] == ["#", "width", "depth"] and head[-1] == "params"
    assert {int(line.split()[0]): int(line.split()[-1]) for line in table[2:]} == {n: counts[n] for n in best}
    assert "\n".join(table) in _main(capsys, "status", *target)  # status shows the same table

    status = json.loads(_main(capsys, "status", *target, "--json"))
    assert sorted(t["number"] for t in status["pareto"]) == best and status["counts"] == {"COMPLETE": 12, "FAIL": 1}

    page = write_report(study, tmp_path / "report", png=False, importances=False).read_text(encoding="utf-8")
    block = json.loads(re.search(rf'id="{DATA_BLOCK_ID}">(.*?)</script>', page, re.DOTALL).group(1))
    assert block["pareto_trial_numbers"] == best
    assert {t["number"]: t["n_params"] for t in block["trials"] if t["state"] == "COMPLETE"} == counts

    for trial in study.trials[:-1]:
        assert student_summary(study, trial, {})["params"] == counts[trial.number]


@pytest.mark.parametrize("attrs, expected", [
    ({"n_params": 12, "params": 99}, 12),  # the current name wins
    ({"params": 99}, 99),
    ({"params": 12.0}, 12),
    ({"params": "many"}, None),
    ({"params": True}, None),
    ({}, None),
])
def test_parameter_count_reads_either_name(attrs, expected):
    assert parameter_count(attrs) == expected
