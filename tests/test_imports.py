"""Heavy frameworks are imported only by the path that uses them.

Each check runs in a fresh Python process (a test process has long since imported everything) and reads
that child's ``sys.modules`` at the end: ``import nas_distill`` and the CLI's ``--help`` import neither
torch nor TensorFlow / Keras; a PyTorch search (plain-Python students, then the torch flash distiller)
never imports TensorFlow / Keras; a TensorFlow search never imports torch, even past the start-up trials
of the ``bo`` sampler (Optuna's GP sampler would import torch there; ``bo`` is numpy and scipy only).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

from _support.common import task_config, write_config

HEAVY = ("torch", "tensorflow", "keras", "transformers", "jax")
TF_MODULES = ("tensorflow", "keras")

# Appended to every child script: what the child ended up importing, as the last line of stdout.
_REPORT = f"""
import json as _json, sys as _sys
print(_json.dumps(sorted(m for m in {HEAVY!r} if m in _sys.modules)))
"""


def _imported_by(script: str, *args: str, timeout: float = 240) -> set[str]:
    """Run ``script`` in a fresh interpreter; the heavy modules it imported."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script) + _REPORT, *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


def test_package_and_cli_help_import_no_framework():
    imported = _imported_by("""
        import runpy, sys
        import nas_distill, nas_distill.cli
        sys.argv = ["nas-distill", "--help"]
        try:
            runpy.run_module("nas_distill.cli", run_name="__main__")
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        for command in ("run", "export"):
            try:
                nas_distill.cli.main([command, "--help"])
            except SystemExit as exc:
                assert exc.code in (0, None), exc.code
    """)
    assert imported == set()


def test_pytorch_search_with_plain_python_students_imports_no_tensorflow(tmp_path, task_module):
    config = write_config(tmp_path / "c.yaml", task_config(tmp_path / "run", max_trials=3))
    imported = _imported_by("""
        import sys
        from nas_distill.workers import run_worker
        assert run_worker(sys.argv[1], label="w0") == 0
        from nas_distill.study import load_study, resolve_storage_url
        study = load_study(resolve_storage_url(None, sys.argv[2]), "test")
        assert sum(t.state.name == "COMPLETE" for t in study.trials) == 3
    """, config, str(tmp_path / "run"))
    assert not imported & set(TF_MODULES + ("torch",)), imported


@pytest.mark.slow
def test_pytorch_flash_distillation_search_imports_no_tensorflow(tmp_path):
    _needs("torch")
    imported = _imported_by("""
        import sys
        import torch
        import nas_distill.distill.torch.distiller  # the engine itself, and everything it imports
        from nas_distill import AutoDistillation

        torch.manual_seed(0)
        x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))

        class Data:
            def __len__(self):
                return len(y)

            def __getitem__(self, i):
                return {"x": x[i], "labels": y[i]}

        class Net(torch.nn.Module):
            def __init__(self, hidden):
                super().__init__()
                self.body = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(),
                                                torch.nn.Linear(hidden, 3))

            def forward(self, x):
                return self.body(x)

        def build(arch):
            return Net(arch["hidden"])

        conf = {"model": {"framework": "pytorch"}, "auto_distillation": {
            "search": {"search_space": {"hidden": [4, 8]}, "search_algorithm": "grid",
                       "metrics": ["accuracy", "params"], "max_trials": 2},
            "flash_distillation": {"regular_distillation": {"train_steps": 3}, "batch_size": 16},
            "evaluation": {"latency_warmup": 0, "latency_repeats": 1},
            "study": {"run_dir": sys.argv[1], "study_name": "imports"}}}
        agent = AutoDistillation(build, conf)
        agent.teacher_model, agent.train_dataset, agent.eval_dataset = build({"hidden": 16}), Data(), Data()
        agent.search()
        states = [t.state.name for t in agent.study.trials]
        assert states.count("COMPLETE") == 2, [t.user_attrs.get("error") for t in agent.study.trials]
    """, str(tmp_path / "run"))
    assert "torch" in imported
    assert not imported & set(TF_MODULES), imported


def test_tensorflow_search_past_the_bo_start_up_trials_imports_no_torch(tmp_path, task_module):
    """12 trials of 'bo' on the TensorFlow path, most of them past the sampler's start-up trials (its GP
    and EHVI are numpy and scipy only). Plain-Python students keep it fast."""
    data = task_config(tmp_path / "run", max_trials=12, algorithm="bo")
    data["model"]["framework"] = "tensorflow"
    config = write_config(tmp_path / "c.yaml", data)
    imported = _imported_by("""
        import sys
        from nas_distill.workers import build_autodistill
        from nas_distill.runner import TrialRunner
        from nas_distill.search.bo_sampler import SpaceBOSampler

        ad = build_autodistill(sys.argv[1])
        assert ad.framework == "tensorflow"
        sampler = ad.advisor.sampler
        assert isinstance(sampler, SpaceBOSampler), sampler
        TrialRunner(ad).run()
        assert sampler.score_candidates(ad.study).gain is not None  # the model ran
        assert sum(t.state.name == "COMPLETE" for t in ad.study.trials) == 12
    """, config)
    assert "torch" not in imported, imported


@pytest.mark.slow
def test_keras_search_imports_no_torch(tmp_path):
    _needs("tensorflow")
    _needs("sklearn")
    import yaml

    from _support.common import REPO_ROOT

    data = yaml.safe_load((REPO_ROOT / "examples" / "keras_digits.yaml").read_text())
    data["task"] = {"entry": data["task"], "args": {"teacher_epochs": 2}}
    ad_conf = data["auto_distillation"]
    ad_conf["search"]["max_trials"] = 2
    ad_conf["flash_distillation"]["knowledge_transfer"]["train_steps"] = [3]
    ad_conf["flash_distillation"]["regular_distillation"]["train_steps"] = [3]
    ad_conf["evaluation"] = {"latency_warmup": 0, "latency_repeats": 1}
    ad_conf["study"]["run_dir"] = str(tmp_path / "run")
    config = write_config(tmp_path / "keras.yaml", data)
    imported = _imported_by("""
        import sys
        from nas_distill.workers import run_worker
        from nas_distill.study import load_study, resolve_storage_url
        assert run_worker(sys.argv[1], label="w0") == 0
        study = load_study(resolve_storage_url(None, sys.argv[2]), "keras-digits")
        states = [t.state.name for t in study.trials]
        assert states.count("COMPLETE") == 2, [t.user_attrs.get("error") for t in study.trials]
    """, config, str(tmp_path / "run"))
    assert {"tensorflow", "keras"} <= imported
    assert "torch" not in imported, imported
