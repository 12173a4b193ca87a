"""The HTML / PNG report of a study (``nas_distill.report``).

Studies are written by a real search (``_support.report.make_study``): complete trials, trainings that ran
failed, a trial left running by a lost worker, students in the artifact store. The Pareto trials the page shows
are read back from its embedded JSON block and its table and compared with ``study.best_trials``.
"""

from __future__ import annotations

import html as html_lib
import json
import re
import struct
from pathlib import Path

import numpy as np
import optuna
import pytest

from _support.report import make_study
from nas_distill.records import metric_unit
from nas_distill.report import write_report
from nas_distill.reporting.data import collect
from nas_distill.reporting.html import DATA_BLOCK_ID
from nas_distill.search.pareto import hypervolume

optuna.logging.set_verbosity(optuna.logging.WARNING)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _data_block(page: str) -> dict:
    match = re.search(
        rf'<script type="application/json" id="{DATA_BLOCK_ID}">(.*?)</script>', page, re.S
    )
    assert match, "the embedded JSON data block is missing"
    return json.loads(match.group(1))


def _table_pareto_numbers(page: str) -> list[int]:
    return sorted(int(n) for n in re.findall(r'<tr class="COMPLETE pareto" data-trial="(\d+)"', page))


def _png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def _best_numbers(study: optuna.Study) -> list[int]:
    return sorted(t.number for t in study.best_trials)


@pytest.fixture(scope="module")
def two_objective(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report2")
    study, _, _ = make_study(tmp)
    out = write_report(study, tmp / "out")
    return study, out


def test_page_has_metric_names_units_and_every_section(two_objective):
    study, out = two_objective
    assert out == out.parent / "report.html" and out.is_file()
    page = out.read_text(encoding="utf-8")
    # Axis titles and plot titles (inside the plotly figure JSON) carry names and units.
    assert re.search(r'"xaxis":\{[^}]*"title":\{"text":"latency \(ms\)"', page)
    assert re.search(r'"yaxis":\{[^}]*"title":\{"text":"accuracy \(fraction\)"', page)
    assert "Pareto front: accuracy (fraction, higher is better) vs latency (ms, lower is better)" in page
    assert "Hypervolume over trials (accuracy, latency)" in page
    assert "Parameter importance per objective" in page
    # Hover text: trial number, the arch and every metric with its unit (plotly's JSON escapes "<").
    hover = page.replace("\\u003c", "<").replace("\\u003e", ">")
    assert re.search(r"trial #\d+ \(Pareto\)<br>hidden_size=\d+<br>intermediate_size=\d+", hover)
    assert re.search(r"<br>accuracy: 0\.\d+ fraction<br>latency: [\d.]+ ms<br>params: [\d.]+[kM]?", hover)
    # plotly.js is inlined exactly once (the file works offline): no external script, three plots.
    assert page.count("plotly.js v") == 1
    assert "<script src=" not in page and '<link rel="stylesheet" href' not in page
    assert page.count('class="plotly-graph-div"') == 3
    # Failed trials show their error, HTML-escaped (the message contains markup on purpose).
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in page
    assert "</script><b>x</b>" not in page.split(f'id="{DATA_BLOCK_ID}"')[0]
    assert html_lib.escape("</script><b>x</b>") in page


def test_pareto_trials_are_the_studys_best_trials(two_objective):
    study, out = two_objective
    page = out.read_text(encoding="utf-8")
    data = _data_block(page)
    best = _best_numbers(study)
    assert len(best) >= 3
    assert data["pareto_trial_numbers"] == best
    assert _table_pareto_numbers(page) == best
    assert [m["name"] for m in data["metrics"]] == ["accuracy", "latency"]
    assert [m["unit"] for m in data["metrics"]] == ["fraction", "ms"]
    assert len(data["trials"]) == len(study.trials)
    states = {t["state"] for t in data["trials"]}
    assert states == {"COMPLETE", "FAIL", "RUNNING"}
    failed = [t for t in data["trials"] if t["state"] == "FAIL"]
    assert failed and all(t["error"].startswith("RuntimeError: mat1 and mat2") for t in failed)
    assert data["importances"].keys() == {"accuracy", "latency"}


def test_hypervolume_history_uses_the_worst_observed_reference(two_objective):
    study, out = two_objective
    data = _data_block(out.read_text(encoding="utf-8"))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    values = np.array([t.values for t in complete])
    assert data["reference_point"] == [values[:, 0].min(), values[:, 1].max()]
    history = data["hypervolume_history"]
    assert [n for n, _ in history] == sorted(t.number for t in complete)
    hvs = [hv for _, hv in history]
    assert all(b >= a - 1e-12 for a, b in zip(hvs, hvs[1:])), "hypervolume must never decrease"
    signed = values * np.array([1.0, -1.0])
    expected = hypervolume(signed, [values[:, 0].min(), -values[:, 1].max()])
    assert hvs[-1] == pytest.approx(expected) and expected > 0


def test_png_copies_are_real_images(two_objective):
    _, out = two_objective
    for name in ("pareto", "hypervolume", "importance"):
        path = out.parent / f"{name}.png"
        assert path.is_file(), f"{name}.png missing"
        width, height = _png_size(path)
        assert width >= 600 and height >= 300
        assert path.stat().st_size > 20_000, f"{name}.png is suspiciously small"
    image = pytest.importorskip("matplotlib.image").imread(out.parent / "pareto.png")[..., :3]
    red = (image[..., 0] > 0.7) & (image[..., 1] < 0.3) & (image[..., 2] < 0.3)
    assert red.sum() > 200, "the Pareto front (red) is not visible in pareto.png"
    assert len(np.unique((image * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


def test_zero_complete_trials_give_a_clear_page(tmp_path):
    study, _, _ = make_study(tmp_path, n_complete=0, n_fail=2, n_running=1)
    out = write_report(study, tmp_path / "out")
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert 'id="no-complete-trials"' in page and "No complete trials yet" in page
    data = _data_block(page)
    assert data["pareto_trial_numbers"] == [] and data["hypervolume_history"] == []
    assert len(data["trials"]) == 3
    assert "RuntimeError" in page
    assert not list((tmp_path / "out").glob("*.png"))


def test_empty_study(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'e.db'}", directions=["maximize", "minimize"])
    page = write_report(study, tmp_path / "out").read_text(encoding="utf-8")
    assert "No complete trials yet" in page and _data_block(page)["trials"] == []


def test_single_objective_best_so_far(tmp_path):
    study, _, _ = make_study(tmp_path, metrics=(("accuracy", "maximize"),), n_complete=12)
    out = write_report(study, tmp_path / "out")
    page = out.read_text(encoding="utf-8")
    assert "Best so far: accuracy (fraction, higher is better)" in page
    assert _data_block(page)["pareto_trial_numbers"] == _best_numbers(study)
    assert _png_size(tmp_path / "out" / "pareto.png")[0] >= 600


def test_three_objectives_scatter_matrix(tmp_path):
    metrics = (("accuracy", "maximize"), ("latency", "minimize"), ("model_size_mb", "minimize"))
    study, _, _ = make_study(tmp_path, metrics=metrics, n_complete=20)
    out = write_report(study, tmp_path / "out")
    page = out.read_text(encoding="utf-8")
    assert '"type":"splom"' in page
    assert "model_size_mb (MiB)" in page
    assert _data_block(page)["pareto_trial_numbers"] == _best_numbers(study)
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 20_000


def test_importance_needs_two_varied_trials(tmp_path):
    study, _, _ = make_study(tmp_path, n_complete=1, n_fail=1, n_running=0)
    page = write_report(study, tmp_path / "out").read_text(encoding="utf-8")
    assert "Parameter importance needs at least 2 complete trials" in page
    assert not (tmp_path / "out" / "importance.png").exists()


def test_units_from_metric_names():
    assert metric_unit("accuracy", [0.5, 0.9]) == "fraction"
    assert metric_unit("accuracy", [55.0, 91.2]) == "%"
    assert metric_unit("latency") == "ms"
    assert metric_unit("latency_ms") == "ms"
    assert metric_unit("params") == "count"
    assert metric_unit("model_size_mb") == "MiB"
    assert metric_unit("perplexity") is None
    assert metric_unit("latency", overrides={"latency": "s"}) == "s"


def test_collect_agrees_with_best_trials_with_ties(tmp_path):
    """Identical metric vectors are all on the front (Optuna keeps ties too)."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"h": optuna.distributions.CategoricalDistribution([1, 2, 3])}
    for h, v in [(1, (0.9, 2.0)), (2, (0.9, 2.0)), (3, (0.8, 3.0)), (1, (0.95, 5.0))]:
        study.add_trial(optuna.trial.create_trial(params={"h": h}, distributions=dist, values=list(v)))
    data = collect(study, importances=False)
    assert data.pareto_numbers == _best_numbers(study) == [0, 1, 3]


# ----------------------------------------------------------------------------------------- browser
@pytest.mark.slow
def test_report_renders_in_headless_chromium(two_objective, tmp_path):
    from _support.browser import dump_dom, find_chromium, screenshot

    find_chromium()
    _, out = two_objective
    url = out.resolve().as_uri()
    dom = dump_dom(url)
    assert dom.console == [], f"console messages while loading the report: {dom.console}"
    assert dom.stdout.count('class="main-svg"') >= 3, "plotly did not render the figures"
    assert "Pareto front: accuracy (fraction" in dom.stdout

    shot_path = tmp_path / "shot.png"
    shot = screenshot(url, shot_path)
    assert shot.console == [], shot.console
    width, height = _png_size(shot_path)
    assert (width, height) == (1280, 1600)
    image = pytest.importorskip("matplotlib.image").imread(shot_path)[..., :3]
    non_white = (image < 0.95).any(axis=-1).mean()
    assert non_white > 0.03, f"the screenshot is nearly blank ({non_white:.1%} non-white)"
    # The Pareto markers and line (#d62728) are drawn.
    red = (np.abs(image - np.array([0xD6, 0x27, 0x28]) / 255).max(axis=-1) < 0.08).sum()
    assert red > 300, f"the Pareto front is not visible in the screenshot ({red} red pixels)"
