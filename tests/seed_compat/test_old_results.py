"""Resume from an old ``AutoDistillationResults/`` folder: the pickled ``lastest_results.npy`` the old system
wrote (written here the same way, ``np.save`` of a dict), read by a restricted unpickler; the old texts as a
fallback; imported results answered from the store, never retrained. A crafted pickle never runs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from optuna.trial import TrialState

from nas_distill import AutoDistillation
from nas_distill.seed_results import UnsafeResultsFile, load_old_npy

SPACE = {"hidden_size": [16, 32, 64], "num_layers": [1, 2]}
METRICS = ["eval_loss", "latency"]


def metrics_of(arch):
    return {"eval_loss": 1.0 / arch["hidden_size"] + 0.1 * arch["num_layers"],
            "latency": float(arch["hidden_size"] * arch["num_layers"])}


def conf(max_trials):
    return {"search": {"search_space": SPACE, "search_algorithm": "grid", "max_trials": max_trials,
                       "metrics": METRICS}}


def agent_for(max_trials, trained, run_dir=None):
    agent = AutoDistillation(lambda arch: dict(arch), conf(max_trials), run_dir=run_dir)
    agent.train_func = lambda model: trained.append(dict(model))
    agent.eval_func = metrics_of
    return agent


def old_results():
    """What the old system kept in search_results: arch vector (keys sorted) -> what eval_func returned,
    numpy scalars included."""
    return {
        (32, 1): {"eval_loss": np.float64(0.5), "latency": np.float32(3.0)},
        (64, 2): [0.25, 7],  # a list in metric order
        (16, 2): {"eval_loss": 0.75, "latency": 2.0},
    }


def write_old_folder(root):
    folder = root / "AutoDistillationResults"
    folder.mkdir(parents=True)
    np.save(folder / "lastest_results.npy", old_results(), allow_pickle=True)  # as the old system did
    return folder


def test_search_resumes_from_an_old_npy_without_retraining(tmp_path):
    write_old_folder(tmp_path)
    trained = []
    agent = agent_for(2, trained)
    agent.search(res_save_path=tmp_path)
    complete = agent.study.get_trials(states=(TrialState.COMPLETE,))
    imported = {(t.params["hidden_size"], t.params["num_layers"]): t for t in complete
                if "imported_from" in t.user_attrs}
    assert set(imported) == set(old_results())
    for vector, value in old_results().items():
        expected = [value[m] for m in METRICS] if isinstance(value, dict) else value
        assert imported[vector].values == pytest.approx([float(v) for v in expected])
    # 2 new trainings (the budget counts trained trials), none of an imported arch
    assert len(trained) == 2
    assert not {(m["hidden_size"], m["num_layers"]) for m in trained} & set(old_results())
    assert len(complete) == 5


def test_results_loaded_by_hand_follow_the_study_into_the_search_folder(tmp_path):
    old = write_old_folder(tmp_path / "old")
    trained = []
    agent = agent_for(2, trained)  # no storage named: the study goes where search() puts it
    assert agent.load_search_results(old) == 3
    agent.search(res_save_path=tmp_path / "new")
    assert agent.storage_url == f"sqlite:///{tmp_path / 'new' / 'AutoDistillationResults' / 'study.db'}"
    imported = {(t.params["hidden_size"], t.params["num_layers"]) for t in agent.study.trials
                if "imported_from" in t.user_attrs}
    assert imported == set(old_results())
    assert len(trained) == 2 and not {(m["hidden_size"], m["num_layers"]) for m in trained} & imported


def test_load_search_results_reads_npy_json_and_texts(tmp_path):
    folder = write_old_folder(tmp_path / "old")
    agent = agent_for(1, [])
    assert agent.load_search_results(folder) == 3
    assert agent.resumed_search_results[(64, 2)] == {"eval_loss": 0.25, "latency": 7.0}
    assert agent.load_search_results(folder / "lastest_results.npy") == 0  # already there

    # only the old texts: the latest Trial file (each holds every result so far)
    texts = tmp_path / "texts"
    texts.mkdir()
    lines = [f"hidden_size_{h},num_layers_{n}: {metrics_of({'hidden_size': h, 'num_layers': n})} Paras: 0.0123M"
             for h, n in [(16, 1), (64, 1)]]
    header = "=" * 30 + " All Search Results " + "=" * 30 + "\n\n"
    best = "\n\n\n" + "=" * 30 + " Best Search Results " + "=" * 30 + "\n\n"
    (texts / "Trial_1_results.txt").write_text(header + lines[0] + "\n" + best + "1. " + lines[0] + "\n")
    (texts / "Trial_2_results.txt").write_text(header + "\n".join(lines) + "\n" + best + "1. " + lines[1] + "\n")
    other = agent_for(1, [], run_dir=tmp_path / "other")
    assert other.load_search_results(texts) == 2
    for t in other.study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.values == pytest.approx([metrics_of(t.params)[m] for m in METRICS])
        assert t.user_attrs["n_params"] == 12300

    # our own lastest_results.json, written by a search, resumes a fresh study
    done = agent_for(2, [])
    done.search(res_save_path=tmp_path / "ours")
    fresh = agent_for(1, [], run_dir=tmp_path / "fresh")
    assert fresh.load_search_results(tmp_path / "ours" / "AutoDistillationResults") == 2


def test_old_results_with_other_metrics_are_refused_with_the_reason(tmp_path):
    folder = tmp_path / "AutoDistillationResults"
    folder.mkdir()
    np.save(folder / "lastest_results.npy", {(16, 1): {"accuracy": 0.9}}, allow_pickle=True)
    with pytest.raises(ValueError, match=r"holds metrics \['accuracy'\], this search needs"):
        agent_for(1, []).load_search_results(folder)


class Payload:
    """Runs a shell command when unpickled (the classic __reduce__ attack)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("wrap", [lambda p: {(16, 1): p}, lambda p: p, lambda p: {(16, 1): {"eval_loss": [p]}}])
def test_a_crafted_pickle_never_runs(tmp_path, wrap):
    marker = tmp_path / "pwned"
    path = tmp_path / "AutoDistillationResults" / "lastest_results.npy"
    path.parent.mkdir()
    np.save(path, wrap(Payload(marker)), allow_pickle=True)
    with pytest.raises(UnsafeResultsFile, match=r"refused to load (posix|os|nt)\.system"):
        load_old_npy(path)
    with pytest.raises(UnsafeResultsFile):
        agent_for(1, []).search(res_save_path=tmp_path)
    assert not marker.exists()
    # the same file, loaded the unsafe way in a separate process, does run the command: the test is real
    subprocess.run([sys.executable, "-c", f"import numpy; numpy.load({str(path)!r}, allow_pickle=True)"],
                   check=True, capture_output=True)
    assert marker.exists()


def test_other_globals_are_refused_too_and_plain_data_loads(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, {"a": 1}, allow_pickle=True)
    raw = path.read_bytes()
    header_end = raw.index(b"\n") + 1  # the .npy header of an object array, then the pickle stream
    # a protocol-3 pickle of builtins.eval("1+1"), behind the same valid header
    path.write_bytes(raw[:header_end] + b"\x80\x03cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R.")
    with pytest.raises(UnsafeResultsFile, match=r"builtins\.eval"):
        load_old_npy(path)
    loaded = load_old_npy(write_old_folder(tmp_path / "ok") / "lastest_results.npy")
    assert loaded.keys() == old_results().keys()
    assert loaded[(32, 1)] == {"eval_loss": 0.5, "latency": 3.0} and type(loaded[(32, 1)]["latency"]) is np.float32
    assert loaded[(64, 2)] == [0.25, 7]
