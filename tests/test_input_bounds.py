"""Input that would cost minutes, gigabytes or a live study is refused up front, naming the field.

* A YAML alias bomb (about 1 KB expanding to 10^10 values) is refused in under a second and under 50 MB,
  by the config loader and by every command (read-only ones included); a config file over the size cap
  too. Anchors and aliases of ordinary size still work.
* Heartbeat bounds: an interval that would busy-loop the storage, and a grace period shorter than two
  beats (live trials would be swept as dead).
* A study name the storage cannot hold (too long, a NUL byte) is a config error, not Optuna's "invalid
  data in the commit".
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc

import pytest
import yaml

from _support.common import task_config, write_config
from nas_distill import AutoDistillationConfig, ConfigError
from nas_distill.yamlio import MAX_CONFIG_BYTES, load_yaml


def alias_bomb(levels: int = 12, width: int = 12) -> str:
    lines = ["auto_distillation:", "  search:", "    search_space:", "      a: [1, 2]", "  bomb:",
             f"    l0: &l0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_fast_and_small(tmp_path):
    text = alias_bomb()
    assert 900 < len(text.encode()) < 1100  # about 1 KB, 12^12 leaves once expanded
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="alias bomb") as info:
        AutoDistillationConfig(str(path))
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"alias bomb of {len(text.encode())} bytes refused in {seconds * 1000:.1f} ms, "
          f"peak {peak / 2**20:.2f} MiB")
    assert str(info.value).startswith(str(path))
    assert seconds < 1.0 and peak < 50 * 2**20


def test_ordinary_anchors_and_aliases_still_load():
    text = ("defaults: &d {learning_rate: 0.001, batch_size: 32}\n"
            "stages: [*d, *d]\n")
    data = load_yaml(text, "cfg.yaml")
    assert data["stages"] == [yaml.safe_load(text)["defaults"]] * 2


def test_recursive_alias_is_refused():
    with pytest.raises(ConfigError, match="alias bomb"):
        load_yaml("a: &a [1, *a]\n", "cfg.yaml")


def test_oversized_config_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("auto_distillation: {}\n" + "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="bytes are refused"):
        AutoDistillationConfig(str(path))


@pytest.mark.slow
def test_every_command_refuses_the_bomb_in_one_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    for command in (["run", path], ["worker", path], ["status", path], ["pareto", path], ["report", path],
                    ["export", path, "-o", tmp_path / "out"]):
        started = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "nas_distill.cli", *map(str, command)], capture_output=True,
                             text=True, timeout=60, env=dict(os.environ, OMP_NUM_THREADS="1"))
        elapsed = time.perf_counter() - started
        assert res.returncode == 2, (command, res.stderr)
        assert "alias bomb" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert elapsed < 30, (command, elapsed)  # the process start included; the 24 s of a bomb is not


# ------------------------------------------------------------------------------------ heartbeats
def _config(tmp_path, **study) -> dict:
    """The test task's config without its ``task`` entry (a CLI key, not the config class's)."""
    data = task_config(tmp_path / "run", **study)
    del data["task"]
    return data


@pytest.mark.parametrize("study, field, words", [
    ({"heartbeat_interval": 1e-9}, "heartbeat_interval", "between 1 and 86400"),
    ({"heartbeat_interval": 10**6, "grace_period": 10**7}, "heartbeat_interval", "between 1 and 86400"),
    ({"heartbeat_interval": 10, "grace_period": 5}, "grace_period", "at least 2 x heartbeat_interval"),
    ({"heartbeat_interval": 10, "grace_period": 19}, "grace_period", "at least 2 x heartbeat_interval"),
])
def test_heartbeat_bounds(tmp_path, study, field, words):
    data = _config(tmp_path, **study)
    with pytest.raises(ConfigError, match=words) as info:
        AutoDistillationConfig(data)
    assert str(info.value).startswith(f"study.{field}")


def test_heartbeat_within_bounds_is_kept(tmp_path):
    cfg = AutoDistillationConfig(_config(tmp_path, heartbeat_interval=1, grace_period=2))
    assert (cfg.study.heartbeat_interval, cfg.study.grace_period) == (1, 2)


# ------------------------------------------------------------------------------------ study names
@pytest.mark.parametrize("name, words", [("n" * 513, "at most 512 characters"), ("a\x00b", "no control")])
def test_unstorable_study_names_are_config_errors(tmp_path, name, words):
    from nas_distill import study as sm

    with pytest.raises(ConfigError, match=words) as info:
        AutoDistillationConfig(_config(tmp_path, study_name=name))
    assert str(info.value).startswith("study.study_name")
    with pytest.raises(ConfigError, match=words):  # the --study flag and the Python API reach here
        sm.open_study(f"sqlite:///{tmp_path / 's.db'}", name, metrics=["acc"], higher_is_better=[True])
    assert not (tmp_path / "s.db").exists()


def test_cli_run_with_a_too_long_study_name_says_so(tmp_path, task_module):
    cfg = write_config(tmp_path / "cfg.yaml", task_config(tmp_path / "run", max_trials=1))
    res = subprocess.run([sys.executable, "-m", "nas_distill.cli", "run", cfg, "--study", "n" * 600],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "at most 512 characters" in res.stderr, res.stderr
    assert "invalid data in the commit" not in res.stderr


# ------------------------------------------------------------------------------------ huge spaces
def test_spaces_past_64_bit_indices_are_refused_for_grid_and_random():
    space = {f"k{i}": list(range(100)) for i in range(10)}  # 10^20 points > 2^63
    for algorithm in ("grid", "random"):
        with pytest.raises(ConfigError, match=r"search\.search_space: 1e\+20 points.*2\*\*63") as info:
            AutoDistillationConfig({"auto_distillation": {"search": {"search_space": space,
                                                                     "search_algorithm": algorithm}}})
        assert algorithm in str(info.value)
    cfg = AutoDistillationConfig({"auto_distillation": {"search": {"search_space": space,
                                                                   "search_algorithm": "tpe"}}})
    assert cfg.search_algorithm == "tpe"


# ------------------------------------------------------------------------------------ imported results
def test_an_imported_infinity_is_refused_and_nothing_is_half_imported(tmp_path):
    import json as json_mod

    from nas_distill import study as sm
    from nas_distill.results import import_results, read_results

    path = tmp_path / "results.json"
    path.write_text('{"metrics": ["acc"], "trials": [{"arch": {"a": 1}, "values": [0.5]},'
                    ' {"arch": {"a": 2}, "values": [Infinity]}]}')  # JSON as Python writes inf
    results = read_results(path)
    assert json_mod.loads(path.read_text())["trials"][1]["values"] == [float("inf")]
    study = sm.open_study(f"sqlite:///{tmp_path / 's.db'}", "imp", metrics=["acc"], higher_is_better=[True])
    with pytest.raises(ValueError, match=r"trials\[1\]\.values must be finite.*nothing was imported"):
        import_results(study, results, metrics=["acc"], search_space={"a": [1, 2]}, source=str(path))
    assert study.get_trials() == []
    results["trials"].pop()
    assert import_results(study, results, metrics=["acc"], search_space={"a": [1, 2]}, source=str(path)) == 1
