"""The one trial table of ``status``, ``pareto`` and ``report``: every architecture key in its own column
(read back from the text and compared with the trials), no second ``params`` column, plain numbers."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys

import optuna
import pytest

from _support.report import make_study
from nas_distill.records import MetricInfo, TrialRecord
from nas_distill.reporting.data import collect
from nas_distill.reporting.table import trials_table

LONG_SPACE = {
    "hidden_size": [64, 128, 256],
    "intra_bottleneck_size": [64, 96, 128],
    "num_attention_heads": [1, 2, 4],
    "intermediate_size": [384, 512, 640],
    "num_feedforward_networks": [2, 4, 6],
    "hidden_act": ["gelu", "relu"],
}


def _rows(n: int = 7) -> list[TrialRecord]:
    rows = []
    for i in range(n):
        arch = {k: v[(i * (j + 1)) % len(v)] for j, (k, v) in enumerate(LONG_SPACE.items())}
        rows.append(TrialRecord(number=i, state="COMPLETE", arch=arch, values=[0.5 + i / 100, 1.25 * (i + 1)],
                                n_params=10_000 * (i + 1), duration_s=None, worker=None, error=None))
    return rows


METRICS = [MetricInfo("accuracy", "maximize", None), MetricInfo("latency", "minimize", "ms")]


def parse_table(text: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Read a text table back: one ``{header: cell}`` per trial (blocks joined on ``#``), and the legend."""
    lines = text.splitlines()
    legend_at = next((i for i, line in enumerate(lines) if line.startswith("keys: ")), len(lines))
    legend = dict(pair.split("=") for pair in " ".join(lines[legend_at:])[len("keys: "):].split(", ") if pair)
    rows: dict[str, dict[str, str]] = {}
    i = 0
    while i < legend_at:
        if not lines[i].strip():
            i += 1
            continue
        header, rule = lines[i], lines[i + 1]
        spans = [m.span() for m in re.finditer(r"-+", rule)]
        ends = [a for a, _ in spans[1:]] + [None]

        def cut(line: str, spans=spans, ends=ends) -> list[str]:
            return [line[a:end].strip() for (a, _), end in zip(spans, ends)]

        names = cut(header)
        i += 2
        while i < legend_at and lines[i].strip():
            cells = cut(lines[i])
            rows.setdefault(cells[0], {}).update(zip(names, cells))
            i += 1
    return list(rows.values()), legend


def test_every_key_has_its_column_at_any_width():
    rows = _rows()
    for width in (200, 100, 60, 40):
        text = trials_table(rows, METRICS, width=width)
        assert max(len(line) for line in text.splitlines()) <= width
        parsed, legend = parse_table(text)
        assert len(parsed) == len(rows)
        for row, cells in zip(rows, parsed):
            shown = {legend.get(name, name): value for name, value in cells.items()}
            for key, value in row.arch.items():
                assert shown[key] == str(value), (width, key)
            assert shown["accuracy ↑"] == f"{row.values[0]:.4g}"
            assert shown["params"] == str(row.n_params)
        # Full key names when they fit, short ones with a legend when they do not.
        assert (legend == {}) == (width == 200)


def test_params_as_an_objective_is_one_column_and_numbers_are_plain():
    rows = [TrialRecord(number=0, state="COMPLETE", arch={"h": 1}, values=[0.000123, 8_380_416.0],
                        n_params=8_380_416, duration_s=None, worker=None, error=None)]
    metrics = [MetricInfo("accuracy", "maximize", None), MetricInfo("params", "minimize", "count")]
    text = trials_table(rows, metrics, width=100)
    header = text.splitlines()[0].split("  ")
    assert [h.strip() for h in header if h.strip()] == ["#", "h", "accuracy ↑", "params ↓"]
    assert text.splitlines()[2].split() == ["0", "1", "0.000123", "8380416"]
    assert not re.search(r"\de[-+]\d|\dk\b|\dM\b", text)


def _cli(*args, width: int):
    env = dict(os.environ, COLUMNS=str(width))
    return subprocess.run([sys.executable, "-m", "nas_distill.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.slow
def test_status_pareto_and_report_show_the_same_table(tmp_path):
    study, url, _ = make_study(tmp_path, n_complete=12, n_fail=2, n_running=0,
                               metrics=(("accuracy", "maximize"), ("latency", "minimize"), ("params", "minimize")))
    best = sorted(t.number for t in study.best_trials)
    status = _cli("status", "--storage", url, "--study", study.study_name, width=70)
    pareto = _cli("pareto", "--storage", url, "--study", study.study_name, width=70)
    assert status.returncode == 0 and pareto.returncode == 0, status.stderr + pareto.stderr
    table = pareto.stdout.strip("\n")
    assert table in status.stdout  # status shows the very same Pareto table
    parsed, legend = parse_table(table)
    by_number = {t.number: t for t in study.trials}
    assert sorted(int(r["#"]) for r in parsed) == best
    for cells in parsed:
        trial = by_number[int(cells["#"])]
        shown = {legend.get(name, name): value for name, value in cells.items()}
        assert {k: shown[k] for k in trial.params} == {k: str(v) for k, v in trial.params.items()}
        assert shown["params ↓"] == str(int(trial.values[2]))  # a float count, shown plain
        assert "params" not in shown  # params is an objective: no second column
    assert max(len(line) for line in status.stdout.splitlines()) <= 70

    report = _cli("report", "--storage", url, "--study", study.study_name, "--run-dir", tmp_path / "run",
                  "-o", tmp_path / "r.html", width=70)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "r.html").read_text()
    heads = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", page)]
    data = collect(optuna.load_study(study_name=study.study_name, storage=url), importances=False)
    assert heads == (["#", "state", "pareto", *data.param_names, "accuracy (fraction) ↑", "latency (ms) ↓",
                      "params (count) ↓", "time_s", "worker", "error"])


def test_the_readme_extra_for_trials_dataframe_installs_pandas(tmp_path):
    import tomllib

    from _support.common import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    extra = re.search(r"trials_dataframe\(\)`\s+needs pandas, which the `(\w+)` extra installs", readme).group(1)
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(re.match(r"pandas\b", req) for req in extras[extra])
    study, url, _ = make_study(tmp_path, n_complete=3, n_fail=1, n_running=0)
    frame = optuna.load_study(study_name=study.study_name, storage=url).trials_dataframe()
    assert len(frame) == 4 and "params_hidden_size" in frame.columns
