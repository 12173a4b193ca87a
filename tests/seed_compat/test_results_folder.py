"""Where the study and the result files live (``AutoDistillationResults/``), and the old result files."""

from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState

from nas_distill import AutoDistillation

SPACE = {"a": [1, 2, 3], "b": ["x", "y"]}
ALL = "=" * 30 + " All Search Results " + "=" * 30
BEST = "=" * 30 + " Best Search Results " + "=" * 30


def metrics_of(arch):
    return {"acc": float(arch["a"]) + (0.5 if arch["b"] == "y" else 0.0), "size": float(arch["a"] * 1000)}


def conf(max_trials=3, study=None):
    data = {"search": {"search_space": SPACE, "search_algorithm": "grid", "max_trials": max_trials,
                       "metrics": ["acc", "size"], "higher_is_better": [True, False]}}
    if study:
        data["study"] = study
    return data


def agent_for(config, trained=None):
    agent = AutoDistillation(lambda arch: dict(arch), config)
    agent.train_func = (lambda model: trained.append(dict(model))) if trained is not None else (lambda m: None)
    agent.eval_func = metrics_of
    return agent


def line(arch, params_millions="nan"):
    """An old results line, formatted here: keys sorted, metrics as a dict in the config's order."""
    return f"a_{arch['a']},b_{arch['b']}: {metrics_of(arch)} Paras: {params_millions}M"


def test_without_res_save_path_everything_lives_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    agent = agent_for(conf())
    _ = agent.advisor  # reading it creates nothing
    assert list(tmp_path.iterdir()) == []
    agent.search()
    folder = tmp_path / "AutoDistillationResults"
    assert agent.storage_url == f"sqlite:///{folder / 'study.db'}"
    assert sorted(p.name for p in folder.iterdir() if p.is_file() and "-" not in p.name) == [  # not WAL files
        "Final_results.txt", "Trial_1_results.txt", "Trial_2_results.txt", "Trial_3_results.txt",
        "lastest_results.json", "lastest_results.txt", "study.db"]
    assert [p.name for p in tmp_path.iterdir()] == ["AutoDistillationResults"]


def test_each_res_save_path_has_its_own_study_and_the_same_one_resumes(tmp_path):
    trained = {"A": [], "B": [], "A2": []}
    first = agent_for(conf(max_trials=2), trained["A"])
    first.search(res_save_path=tmp_path / "A")
    second = agent_for(conf(max_trials=3), trained["B"])
    second.search(res_save_path=tmp_path / "B")
    assert first.storage_url != second.storage_url
    # grid order: the same first archs in both studies, each trained in its own
    assert len(trained["A"]) == 2 and len(trained["B"]) == 3 and trained["B"][:2] == trained["A"]
    study_a = optuna.load_study(study_name="nas-distill", storage=first.storage_url)
    assert len(study_a.get_trials(states=(TrialState.COMPLETE,))) == 2
    # the same res_save_path again: the same study, its 2 results kept; a budget of 3 trains 1 more
    again = agent_for(conf(max_trials=3), trained["A2"])
    again.search(res_save_path=tmp_path / "A")
    assert again.storage_url == first.storage_url
    assert len(trained["A2"]) == 1 and trained["A2"][0] not in trained["A"]
    assert len(again.study.get_trials(states=(TrialState.COMPLETE,))) == 3


def test_a_configured_run_dir_or_storage_wins(tmp_path):
    agent = agent_for(conf(study={"run_dir": str(tmp_path / "run")}))
    agent.search(res_save_path=tmp_path / "res")
    assert agent.storage_url == f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    folder = tmp_path / "res" / "AutoDistillationResults"
    assert (folder / "Final_results.txt").is_file() and not (folder / "study.db").exists()
    # a named run folder and no res_save_path: the files go to the run folder, none to the current one
    quiet = agent_for(conf(study={"run_dir": str(tmp_path / "run3")}))
    quiet.search()
    assert (tmp_path / "run3" / "Final_results.txt").is_file() and not (tmp_path / "AutoDistillationResults").exists()
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    other = agent_for(conf(study={"storage": url}))
    other.search(res_save_path=tmp_path / "res2")
    assert other.storage_url == url
    assert (tmp_path / "res2" / "AutoDistillationResults" / "Trial_3_results.txt").is_file()


def test_result_files_in_the_old_line_formats(tmp_path):
    agent = agent_for(conf(max_trials=4))
    best = agent.search(res_save_path=tmp_path)
    folder = tmp_path / "AutoDistillationResults"
    complete = sorted(agent.study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    archs = [t.params for t in complete]
    # Trial_k: the first k results, then the front of those k
    for k in range(1, 5):
        text = (folder / f"Trial_{k}_results.txt").read_text().splitlines()
        assert text[:2] == [ALL, ""]
        assert text[2:2 + k] == [line(a) for a in archs[:k]]
        assert text[2 + k:2 + k + 4] == ["", "", "", BEST]
    final = (folder / "Final_results.txt").read_text()
    # front of the 4 grid archs (a ascending, then b): higher acc and lower size trade off
    expected_front = [a for a in archs if not any(
        metrics_of(o)["acc"] >= metrics_of(a)["acc"] and metrics_of(o)["size"] <= metrics_of(a)["size"] and o != a
        and (metrics_of(o)["acc"] > metrics_of(a)["acc"] or metrics_of(o)["size"] < metrics_of(a)["size"])
        for o in archs)]
    assert final == "\n".join([ALL, ""] + [line(a) for a in archs] + ["", "", "", BEST, ""] +
                              [f"{i}. {line(a)}" for i, a in enumerate(expected_front, 1)]) + "\n"
    assert sorted(map(json.dumps, best)) == sorted(map(json.dumps, expected_front))
    latest = json.loads((folder / "lastest_results.json").read_text())
    assert [t["arch"] for t in latest["trials"]] == archs and latest["metrics"] == ["acc", "size"]
    table = (folder / "lastest_results.txt").read_text()  # the same results as a readable table
    assert "Pareto front" in table and all(str(metrics_of(a)["size"]) in table or
                                           f"{metrics_of(a)['size']:g}" in table for a in archs)
