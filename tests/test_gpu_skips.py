"""Where CUDA is absent, the GPU tests are collected (their module imports here) and every one of them is
skipped for the CUDA reason; none errors, none runs."""

from __future__ import annotations

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from _support.common import REPO_ROOT

GPU_TESTS = REPO_ROOT / "tests" / "test_gpu.py"


@pytest.mark.slow  # a pytest subprocess importing torch and transformers: ~10 s
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: `pytest -m gpu` runs the GPU tests")
def test_gpu_tests_are_collected_and_skipped_without_cuda(tmp_path):
    from test_gpu import NO_CUDA

    tree = ast.parse(GPU_TESTS.read_text())
    defined = sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"))
    report = tmp_path / "gpu.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
         f"--junitxml={report}", str(GPU_TESTS)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {c.get("name"): [(child.tag, child.get("message", "")) for child in c] for c in cases}
    assert sorted(outcomes) == defined and len(defined) >= 8
    assert all(result == [("skipped", NO_CUDA)] for result in outcomes.values()), outcomes
    assert f"{len(defined)} skipped" in proc.stdout and NO_CUDA in proc.stdout
