"""The dry run's students: a setup that cannot work stops before the first trial, one line, exit 2.

Real tiny BERT teacher and students (transformers, built locally), the built-in flash distiller and
evaluator, the real CLI. Each bad setup must be refused before the study exists: no study file, no
trial trained. The good setup next to them proves the refusal is about the one thing changed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from _support.common import REPO_ROOT, tiny_bert_task

pytest.importorskip("transformers")

TASK = tiny_bert_task(12)


def config(run_dir, *, space=None, metrics=("accuracy", "params"), device="cpu", max_trials=2):
    return {
        "task": "nd_rehearsal_task:make_task",
        "auto_distillation": {
            "search": {"search_space": space or {"intermediate_size": [8, 16], "num_attention_heads": [1, 2]},
                       "search_algorithm": "grid", "metrics": list(metrics), "max_trials": max_trials},
            "flash_distillation": {"regular_distillation": {"train_steps": [2]}, "batch_size": 4,
                                   "device": device},
            "evaluation": {"batch_size": 4, "latency_repeats": 1, "latency_warmup": 0},
            "study": {"run_dir": str(run_dir), "study_name": "rehearsal"},
        },
    }


@pytest.fixture
def rehearsal_task(tmp_path, monkeypatch):
    (tmp_path / "nd_rehearsal_task.py").write_text(TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run_cli(tmp_path, data, *extra):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO_ROOT)]), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "nas_distill.cli", "run", str(path), *extra],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


BAD_SETUPS = {
    # name: (config changes, the one line expected on stderr after "nas-distill: config error: ", a regex;
    # the metric typo may be caught by the metric-name check or by the students' evaluation)
    "metric typo": (dict(metrics=("accurcy", "params")), r"search\.metrics(\[0\])?: .*'accurcy'"),
    "unknown device": (dict(device="gpu"), r"flash_distillation\.device: 'gpu' is not a device torch knows"),
    "key the builder rejects": (
        dict(space={"intermediate_size": [8, 16], "hiden_size": [16]}),
        r"search\.search_space\.hiden_size: every student fails, and the error names this key"),
    "value that breaks its students": (
        dict(space={"intermediate_size": [8, 16], "num_attention_heads": [1, 2, 3]}),
        r"search\.search_space\.num_attention_heads: value 3 breaks every student tried with it"),
}


@pytest.mark.slow
def test_each_bad_setup_is_one_config_error_line_before_any_study(rehearsal_task, capsys, monkeypatch):
    """Each bad setup through the CLI's main (one process: torch is imported once): exit 2, one stderr
    line naming the key and value, no study file, and the dry run said on stdout that it started. Then
    the same config with nothing broken passes the dry run and trains its trials."""
    from nas_distill import cli

    tmp_path = rehearsal_task
    monkeypatch.setenv("NAS_DISTILL_WORKER", "t0")  # run_worker sets it; restored afterwards
    for name, (changes, expected) in BAD_SETUPS.items():
        run_dir = tmp_path / name.replace(" ", "-")
        path = tmp_path / f"{run_dir.name}.yaml"
        path.write_text(yaml.safe_dump(config(run_dir, **changes)))
        code = cli.main(["run", str(path)])
        out, err = capsys.readouterr()
        assert code == 2, (name, out[-2000:], err[-2000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and re.match("nas-distill: config error: " + expected, lines[0]), (name, lines)
        assert not (run_dir / "study.db").exists(), name
        assert " dry run started" in out and " trial " not in out, name

    run_dir = tmp_path / "good"
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(config(run_dir)))
    assert cli.main(["run", str(path)]) == 0
    out, _ = capsys.readouterr()
    steps = [line.split(" ", 3)[3] for line in out.splitlines() if " started" in line]
    assert [s.split(":")[0] for s in steps[:3]] == ["search started", "dry run started",
                                                    "teacher cache fill started"], steps
    assert any(s.startswith("teacher cache fill started") and "(entry " in s for s in steps)  # the shared one
    import optuna

    study = optuna.load_study(study_name="rehearsal", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


@pytest.mark.slow
def test_the_real_command_exits_2_with_one_line_and_no_study(rehearsal_task):
    """The same as a user sees it, in a process of its own, with several workers asked for."""
    tmp_path = rehearsal_task
    run_dir = tmp_path / "typo"
    res = run_cli(tmp_path, config(run_dir, metrics=("accurcy",)), "--workers", "2")
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert re.match("nas-distill: config error: " + BAD_SETUPS["metric typo"][1], res.stderr)
    assert not (run_dir / "study.db").exists()


def test_the_students_tried_cover_every_value_and_both_extremes():
    """Which students the dry run builds, computed independently from the space."""
    from nas_distill.rehearsal import extreme_archs, value_archs
    from nas_distill.search.space import SearchSpace

    space = SearchSpace({"h": [64, 32, 128], "act": ["gelu", "relu"], "n": [2, 1]})
    small, large = extreme_archs(space)
    assert small == {"h": 32, "act": "gelu", "n": 1} and large == {"h": 128, "act": "relu", "n": 2}
    for key, values in {"h": [64, 32, 128], "act": ["gelu", "relu"], "n": [2, 1]}.items():
        for value in values:
            tried = value_archs(space, key, value)
            assert tried[0] == dict(small, **{key: value})
            assert tried[-1] == dict(large, **{key: value}) and all(a[key] == value for a in tried)


def test_a_value_failing_only_with_the_smallest_student_is_left_to_the_trials(tmp_path):
    """A value that works in the largest student (a combination problem, not a broken value) passes."""
    from nas_distill import AutoDistillation
    from nas_distill.errors import ConfigError, InvalidArchitecture
    from nas_distill.rehearsal import rehearse

    built = []

    def builder(arch):
        built.append(dict(arch))
        if arch["heads"] == 4 and arch["width"] == 8:  # 4 heads need width 16
            raise InvalidArchitecture("width 8 is too narrow for 4 heads")
        if arch["heads"] == 3:
            raise InvalidArchitecture("3 heads never work")
        return dict(arch)

    conf = {"auto_distillation": {"search": {"search_space": {"width": [8, 16], "heads": [1, 4]},
                                             "metrics": ["acc"]},
                                  "study": {"run_dir": str(tmp_path / "r")}}}
    ad = AutoDistillation(builder, conf)
    ad.train_func, ad.eval_func = (lambda m: None), (lambda m: {"acc": 1.0})
    rehearse(ad)  # heads=4 fails with width 8, works with width 16: not the value's fault
    assert {"width": 8, "heads": 4} in built and {"width": 16, "heads": 4} in built
    assert not (tmp_path / "r" / "study.db").exists()

    conf["auto_distillation"]["search"]["search_space"]["heads"] = [1, 3]
    ad = AutoDistillation(builder, conf)
    ad.train_func, ad.eval_func = (lambda m: None), (lambda m: {"acc": 1.0})
    with pytest.raises(ConfigError) as info:
        rehearse(ad)
    assert str(info.value).startswith("search.search_space.heads: value 3 breaks every student tried with it")


def test_each_student_is_freed_before_the_next_and_the_collector_is_left_as_found(tmp_path):
    """A student held only by a reference cycle is gone when the next one is built (the collection after
    each student frees it), and the collector's frozen set is as it was before, also after a refusal."""
    import gc
    import weakref

    from nas_distill import AutoDistillation
    from nas_distill.errors import ConfigError, InvalidArchitecture
    from nas_distill.rehearsal import rehearse

    class Student:
        def __init__(self, arch):
            self.arch = arch
            self.me = self  # a cycle: only the collector frees it

    previous: list[weakref.ref] = []
    alive_at_build = []
    frozen_at_build = []

    def builder(arch):
        alive_at_build.append(sum(ref() is not None for ref in previous))
        frozen_at_build.append(gc.get_freeze_count())
        if arch["heads"] == 3:
            raise InvalidArchitecture("3 heads never work")
        student = Student(dict(arch))
        previous.append(weakref.ref(student))
        return student

    def make(heads):
        conf = {"auto_distillation": {"search": {"search_space": {"width": [8, 16], "heads": heads},
                                                 "metrics": ["acc"]},
                                      "study": {"run_dir": str(tmp_path / "r")}}}
        ad = AutoDistillation(builder, conf)
        ad.train_func, ad.eval_func = (lambda m: None), (lambda m: {"acc": 1.0})
        return ad

    before = gc.get_freeze_count()
    rehearse(make([1, 4]))
    assert len(alive_at_build) >= 4 and set(alive_at_build) == {0}, alive_at_build
    assert gc.get_freeze_count() == before
    with pytest.raises(ConfigError):
        rehearse(make([1, 3]))
    assert gc.get_freeze_count() == before
    # The students of a rehearsal are built with the objects made before it set aside (when the process
    # had frozen nothing itself): that is what keeps each student's collection short.
    if before == 0:
        assert all(count > 0 for count in frozen_at_build)
