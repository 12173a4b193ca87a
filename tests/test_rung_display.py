"""The pruner's rung records as every reader shows them: the records model, ``nas-distill status``, the
report's learning curves and the figure pushed to optuna-dashboard.

The studies are real SQLite studies written by hand in the stored form (trial user attrs ``rungs`` and,
on a trial the pruner stopped, ``early_stop``), beside trials without any rung record, a repeat
(``duplicate_of``) and a trial given up before training (``pruned_reason``). Every expectation is
computed here from the raw user attrs Optuna hands back, not from the code under test.
"""

from __future__ import annotations

import io
import json
import logging
import re
import wsgiref.util

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from nas_distill import cli
from nas_distill.records import read_study
from nas_distill.report import write_report
from nas_distill.reporting.dashboard import HYPERVOLUME_FIGURE_ID, LEARNING_CURVES_FIGURE_ID, push_figures
from nas_distill.reporting.data import collect
from nas_distill.reporting.figures import learning_curves_figure
from nas_distill.reporting.html import DATA_BLOCK_ID
from nas_distill.results import read_status, status_text

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {"width": [8, 16, 32, 64], "depth": [1, 2, 3]}
DIST = {k: CategoricalDistribution(v) for k, v in SPACE.items()}
STOP_REASON = "accuracy {acc} is not in the top 1/3 of the 4 trials at step {step} at least as slow"
WIDE = 160  # no table abbreviates or wraps at this width


def _rung(rng, step: int, of: int, latency: float) -> dict:
    # Two decimals: the table prints 4 significant digits, so what it shows is the stored number itself.
    return {"step": step, "of": of, "values": {"accuracy": round(float(rng.uniform(0.1, 0.9)), 2)},
            "known": {"latency": latency}}


def _plan(seed: int = 0) -> list[tuple[TrialState, dict, list[float] | None, dict]]:
    """(state, arch, values, user attrs) of every trial; rung values drawn from a seeded generator."""
    rng = np.random.default_rng(seed)
    archs = [{"width": w, "depth": d} for w in SPACE["width"] for d in SPACE["depth"]]
    plan = []

    def add(state, rungs=None, **attrs):
        arch = archs[len(plan)]
        latency = round(0.1 * arch["width"] + arch["depth"], 2)
        if rungs is not None:
            attrs["rungs"] = [_rung(rng, step, of, latency) for step, of in rungs]
        values = [round(float(rng.uniform(0.5, 0.95)), 3), latency] if state == TrialState.COMPLETE else None
        plan.append((state, arch, values, attrs))

    add(TrialState.COMPLETE, rungs=[(22, 200), (67, 200)])
    add(TrialState.PRUNED, rungs=[(22, 200), (67, 200)],
        early_stop={"by": "pareto-asha", "step": 67, "of": 200, "compared_with": [0]})
    add(TrialState.PRUNED, rungs=[(20, 180)],
        early_stop={"by": "pareto-asha", "step": 20, "of": 180, "compared_with": []})
    add(TrialState.COMPLETE)  # trained before pruning was switched on: no rung records
    add(TrialState.PRUNED, duplicate_of=1)
    add(TrialState.PRUNED, pruned_reason="lost the race for the last budget slot")
    add(TrialState.FAIL, rungs=[(22, 200)], error_type="RuntimeError", error="boom")
    add(TrialState.COMPLETE, rungs=[(22, 200), (67, 200)])
    add(TrialState.COMPLETE, rungs=[(22, 200), (67, 200)])
    add(TrialState.RUNNING, rungs=[(22, 200)])
    for *_, attrs in plan:
        if "early_stop" in attrs:
            stop = attrs["early_stop"]
            acc = attrs["rungs"][-1]["values"]["accuracy"]
            stop["reason"] = STOP_REASON.format(acc=acc, step=stop["step"])
    return plan


def _study(tmp_path, *, rungs: bool = True, name: str = "rungs") -> tuple[optuna.Study, str]:
    """The planned trials in a SQLite study; ``rungs=False``: the same trials without any rung record."""
    url = f"sqlite:///{tmp_path / (name + '.db')}"
    study = optuna.create_study(storage=url, study_name=name, directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency"])
    study.set_user_attr("search_space", SPACE)
    for state, arch, values, attrs in _plan():
        attrs = {"arch": arch, **{k: v for k, v in attrs.items() if rungs or k not in ("rungs", "early_stop")}}
        if state == TrialState.RUNNING:  # as a live worker leaves it: asked, attrs set as rungs are reached
            trial = study.ask(DIST)
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            continue
        study.add_trial(optuna.trial.create_trial(params=arch, distributions=DIST, values=values, state=state,
                                                  user_attrs=attrs))
    return study, url


def _stopped(study) -> dict[int, dict]:
    """``{number: early_stop attr}`` of the trials the pruner stopped, from Optuna's own trials."""
    return {t.number: t.user_attrs["early_stop"] for t in study.trials
            if t.state == TrialState.PRUNED and "early_stop" in t.user_attrs}


def _expected_curves(study) -> dict[int, tuple[list[int], list[float]]]:
    """``{number: (steps, accuracies)}``: the rung points, then the final accuracy at ``of`` if COMPLETE."""
    out = {}
    for t in study.trials:
        rungs = t.user_attrs.get("rungs")
        if not rungs:
            continue
        steps = [r["step"] for r in rungs]
        values = [r["values"]["accuracy"] for r in rungs]
        if t.state == TrialState.COMPLETE:
            steps.append(rungs[-1]["of"])
            values.append(t.values[0])
        out[t.number] = (steps, values)
    return out


def _main(capsys, *argv) -> str:
    assert cli.main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


def _table_rows(lines: list[str], title: str) -> tuple[list[str], list[str]]:
    """The header and the rows of the table under the line ``title``."""
    start = lines.index(title)
    header = lines[start + 1]
    rows = []
    for line in lines[start + 3:]:
        if not line or not line[0].isdigit():
            break
        rows.append(line)
    return header, rows


def _rung_points(cell: str) -> list[tuple[float, int]]:
    return [(float(v), int(s)) for v, s in re.findall(r"(\d[\d.]*)@(\d+)", cell)]


def test_records_hold_the_stored_rungs_and_tell_stopped_trials_from_discarded_and_repeats(tmp_path):
    study, _ = _study(tmp_path)
    records = read_study(study)
    by_number = {t.number: t for t in records.trials}
    for trial in study.trials:
        stored = trial.user_attrs.get("rungs", [])
        assert [r.to_json() for r in by_number[trial.number].rungs] == stored
    stopped = _stopped(study)
    assert len(stopped) == 2
    assert [t.number for t in records.stopped_early] == sorted(stopped)
    assert {n: by_number[n].early_stop.to_json() for n in stopped} == stopped
    assert records.steps_saved == sum(s["of"] - s["step"] for s in stopped.values())
    assert read_status(study).reasons["PRUNED"] == {"stopped early": 2, "duplicate": 1, "discarded": 1}
    # Rung records alone (a COMPLETE, FAIL or RUNNING trial) never make a trial "stopped early".
    assert {t.number for t in records.trials if t.rungs and not t.stopped_early} == \
        {t.number for t in study.trials if "rungs" in t.user_attrs} - set(stopped)


def test_status_shows_the_rungs_the_stopped_trials_and_the_steps_saved(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDE))
    study, url = _study(tmp_path)
    target = ("--storage", url, "--study", study.study_name)
    lines = _main(capsys, "status", *target).splitlines()
    stopped = _stopped(study)
    saved = sum(s["of"] - s["step"] for s in stopped.values())
    planned = sum(s["of"] for s in stopped.values())
    assert f"pruner: {len(stopped)} trials stopped early, {saved} training steps saved " \
           f"(of the {planned} they planned)" in lines
    assert "pruned 4 (stopped early 2, discarded 1, duplicate 1)" in lines[1]

    attrs = {t.number: t.user_attrs for t in study.trials}
    header, rows = _table_rows(lines, "Stopped early by the pruner:")
    assert header.split() == ["#", "width", "depth", "rungs"]
    assert [int(r.split()[0]) for r in rows] == sorted(stopped)
    for row in rows:
        number = int(row.split()[0])
        stop = stopped[number]
        assert _rung_points(row) == [(r["values"]["accuracy"], r["step"]) for r in attrs[number]["rungs"]]
        assert row.endswith(f" stopped at {stop['step']}/{stop['of']}")
        assert f"  #{number} at step {stop['step']} of {stop['of']}: {stop['reason']}" in lines

    header, rows = _table_rows(lines, "Pareto front:")
    assert header.split()[-1] == "rungs"
    front = {t.number for t in study.best_trials}
    assert {int(r.split()[0]) for r in rows} == front
    with_rungs = set()
    for row in rows:
        number = int(row.split()[0])
        cell = row[header.index("rungs"):]
        expected = [(r["values"]["accuracy"], r["step"]) for r in attrs[number].get("rungs", [])]
        assert _rung_points(cell) == expected
        if not expected:
            assert cell.strip() == "-"
        with_rungs.add(bool(expected))
    assert with_rungs == {True, False}  # the front holds trials with and without rung records

    data = json.loads(_main(capsys, "status", *target, "--json"))
    assert data["stopped_early"] == sorted(stopped) and data["steps_saved"] == saved


def test_trials_without_rung_records_show_as_before(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDE))
    plain, plain_url = _study(tmp_path, rungs=False, name="plain")
    with_rungs, url = _study(tmp_path)
    plain_lines = _main(capsys, "status", "--storage", plain_url, "--study", "plain").splitlines()
    assert not any(line.startswith(("pruner:", "Stopped early")) or "rungs" in line for line in plain_lines)
    header, plain_rows = _table_rows(plain_lines, "Pareto front:")
    assert header.split() == ["#", "width", "depth", "accuracy", "↑", "latency", "↓"]

    # The same trials with rung records: every row keeps its cells; the rungs column only adds to it.
    rung_lines = _main(capsys, "status", "--storage", url, "--study", "rungs").splitlines()
    rung_header, rung_rows = _table_rows(rung_lines, "Pareto front:")
    assert rung_header.startswith(header)
    assert [r[:len(header)].rstrip() for r in rung_rows] == [r.rstrip() for r in plain_rows]

    out = tmp_path / "report"
    write_report(plain, out, importances=False)
    page = (out / "report.html").read_text()
    assert "Learning curves" not in page and not (out / "learning_curves.png").exists()
    block = json.loads(re.search(rf'id="{DATA_BLOCK_ID}">(.*?)</script>', page, re.S).group(1))
    assert all(set(t) == {"number", "state", "params", "values", "n_params", "duration_s", "worker", "error",
                          "pareto"} for t in block["trials"])
    assert push_figures(plain_url) == {"plain": [HYPERVOLUME_FIGURE_ID]}


def test_learning_curves_hold_exactly_the_rung_points(tmp_path):
    study, _ = _study(tmp_path)
    expected = _expected_curves(study)
    stopped = _stopped(study)
    figure = learning_curves_figure(collect(study, importances=False))
    traces = {trace.meta: trace for trace in figure.data}
    assert {n: (list(t.x), list(t.y)) for n, t in traces.items()} == expected
    for number, trace in traces.items():
        assert (trace.line.dash == "dash") == (number in stopped)
        assert (list(trace.marker.symbol)[-1] == "x") == (number in stopped)
        hover = " ".join(trace.hovertemplate.replace("<br>", " ").split())
        assert (number in stopped) == (f"stopped early: {stopped.get(number, {}).get('reason')}" in hover)
    assert figure.layout.xaxis.title.text == "training step"
    assert figure.layout.yaxis.title.text == "accuracy (fraction)"

    out = tmp_path / "report"
    write_report(study, out, importances=False)
    page = (out / "report.html").read_text()
    assert "<h2>Learning curves</h2>" in page
    assert "<th>rungs</th>" in page
    for number, stop in stopped.items():  # the trial table's rungs cell of each stopped trial ends with its stop
        row = re.search(rf'<tr class="PRUNED" data-trial="{number}">(.*?)</tr>', page).group(1)
        assert f"stopped at {stop['step']}/{stop['of']}</td>" in row
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    block = json.loads(re.search(rf'id="{DATA_BLOCK_ID}">(.*?)</script>', page, re.S).group(1))
    attrs = {t.number: t.user_attrs for t in study.trials}
    assert {t["number"]: t["rungs"] for t in block["trials"] if "rungs" in t} == \
        {n: a["rungs"] for n, a in attrs.items() if "rungs" in a}
    assert {t["number"]: t["early_stop"] for t in block["trials"] if "early_stop" in t} == stopped


def _dashboard_figures(url: str, study_name: str) -> dict[str, dict]:
    """The study's pushed figures as optuna-dashboard's own API serves them (its WSGI app, in process)."""
    from optuna_dashboard import wsgi

    from nas_distill.reporting.dashboard import open_storage

    app = wsgi(open_storage(url))

    def get(path: str) -> dict:
        environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
        wsgiref.util.setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda s, h, *_: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:200])
        return json.loads(body)

    (summary,) = [s for s in get("/api/studies")["study_summaries"] if s["study_name"] == study_name]
    detail = get(f"/api/studies/{summary['study_id']}")
    return {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}


def test_dashboard_gets_the_learning_curves(tmp_path):
    study, url = _study(tmp_path)
    assert push_figures(url) == {study.study_name: [HYPERVOLUME_FIGURE_ID, LEARNING_CURVES_FIGURE_ID]}
    figures = _dashboard_figures(url, study.study_name)
    assert sorted(figures) == sorted([HYPERVOLUME_FIGURE_ID, LEARNING_CURVES_FIGURE_ID])
    traces = figures[LEARNING_CURVES_FIGURE_ID]["data"]
    assert {t["meta"]: (t["x"], t["y"]) for t in traces} == \
        {n: (steps, values) for n, (steps, values) in _expected_curves(study).items()}

    # A rung reached by a running trial changes what the live dashboard refreshes on; nothing else does.
    from nas_distill.reporting.dashboard import _progress_key
    from nas_distill.store.optuna_internals import study_storage, trial_id

    before = _progress_key(study)
    assert _progress_key(study) == before
    (running,) = [t for t in study.trials if t.state == TrialState.RUNNING]
    more = running.user_attrs["rungs"] + [{"step": 67, "of": 200, "values": {"accuracy": 0.6}, "known": {}}]
    study_storage(study).set_trial_user_attr(trial_id(running), "rungs", more)
    assert _progress_key(study) == (before[0], before[1] + 1)


def test_malformed_rung_records_are_ignored_with_a_debug_line(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    study = optuna.create_study(storage=url, study_name="bad", directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency"])
    good = {"step": 3, "of": 9, "values": {"accuracy": 0.5}, "known": {}}
    bad_attrs = [
        (TrialState.COMPLETE, {"rungs": "not a list"}),
        (TrialState.COMPLETE, {"rungs": [good, {"step": "7", "of": 9, "values": {"accuracy": 0.6}}, 5,
                                         {"step": 4, "of": 9, "values": {"accuracy": "high"}},
                                         {"step": 5, "of": 9, "values": {}}, {"step": 6, "of": 0,
                                                                               "values": {"accuracy": 1}}]}),
        (TrialState.PRUNED, {"rungs": [good], "early_stop": "soon"}),
        (TrialState.PRUNED, {"rungs": [good], "early_stop": {"step": -1, "of": 9, "reason": "x"}}),
        # No reason: still read; malformed lists of the trials compared with: left out, the stop kept.
        (TrialState.PRUNED, {"rungs": None, "early_stop": {"step": 3, "of": 9, "compared_with": "all",
                                                           "finished": [1, "two"]}}),
    ]
    archs = [{"width": w, "depth": 1} for w in SPACE["width"]] + [{"width": 8, "depth": 2}]
    for i, (state, attrs) in enumerate(bad_attrs):
        study.add_trial(optuna.trial.create_trial(
            params=archs[i], distributions=DIST, state=state, user_attrs={"arch": archs[i], **attrs},
            values=[0.5 + i / 100, 1.0 + i] if state == TrialState.COMPLETE else None))
    with caplog.at_level(logging.DEBUG, logger="nas_distill.records"):
        records = read_status(study)
    assert [[r.to_json() for r in t.rungs] for t in records.trials] == [[], [good], [good], [good], []]
    assert [t.number for t in records.stopped_early] == [4]
    assert records.reasons["PRUNED"] == {"pruned": 2, "stopped early": 1}
    ignored = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum("ignoring" in m for m in ignored) == 1 + 5 + 2 + 2  # per bad attr or bad entry
    assert records.trials[4].early_stop.to_json() == {"by": "pruner", "step": 3, "of": 9, "reason": ""}
    assert any(m.startswith("trial 0: ignoring user attr 'rungs'") for m in ignored)
    assert any(m.startswith("trial 2: ignoring user attr 'early_stop'") for m in ignored)
    # Every reader still works on it.
    assert "pruner: 1 trial stopped early, 6 training steps saved" in status_text(records, width=WIDE)
    write_report(study, tmp_path / "report", importances=False)
    assert push_figures(url) == {"bad": [HYPERVOLUME_FIGURE_ID, LEARNING_CURVES_FIGURE_ID]}


@pytest.mark.slow
def test_a_real_pruned_search_is_shown_from_what_it_stored(pruned_search, caplog):
    """The records the runner writes (the session's real search with the pruner on,
    tests/_support/pruning_task.py) are all read, none left out, and shown as stored."""
    study = optuna.load_study(study_name="pruning", storage=pruned_search.storage_url)
    stopped = _stopped(study)
    assert stopped, [(t.number, t.state.name) for t in study.trials]
    with caplog.at_level(logging.DEBUG, logger="nas_distill.records"):
        records = read_status(study)
    assert not [r for r in caplog.records if "ignoring" in r.getMessage()]
    assert {t.number: [r.to_json() for r in t.rungs] for t in records.trials if t.rungs} == \
        {t.number: t.user_attrs["rungs"] for t in study.trials if "rungs" in t.user_attrs}
    assert {t.number: t.early_stop.to_json() for t in records.stopped_early} == stopped
    saved = sum(s["of"] - s["step"] for s in stopped.values())
    assert records.steps_saved == saved
    text = status_text(records, width=WIDE)
    plural = "s" if len(stopped) != 1 else ""
    assert f"pruner: {len(stopped)} trial{plural} stopped early, {saved} training steps saved" in text
    figure = learning_curves_figure(collect(study, importances=False))
    assert {t.meta: (list(t.x), list(t.y)) for t in figure.data} == _expected_curves(study)
