"""Architecture metrics on the Keras path: the Keras evaluator measures untrained students once per arch,
a second worker reuses them, and torch is never imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from nas_distill.tasks import keras_digits

SCRIPT = """
import json, sys
from nas_distill import AutoDistillation
from nas_distill.arch_metrics import ArchMetrics
from nas_distill.tasks import keras_digits

def worker():
    config = {"model": {"framework": "tensorflow"},
              "search": {"search_space": keras_digits.STUDENT_SPACE, "search_algorithm": "bo",
                         "metrics": ["accuracy", "latency", "params", "model_size_mb"]},
              "evaluation": {"latency_warmup": 1, "latency_repeats": 3},
              "study": {"run_dir": sys.argv[1], "study_name": "keras-am"}}
    ad = AutoDistillation(keras_digits.student_builder, config)
    ad.eval_dataset = keras_digits.load_splits()["val"]
    metrics = ArchMetrics(ad)
    metrics.refresh()
    return metrics

first, second = worker(), worker()
archs = [{"hidden_size": w, "num_hidden_layers": d} for w in keras_digits.STUDENT_SPACE["hidden_size"]
         for d in keras_digits.STUDENT_SPACE["num_hidden_layers"]]
print(json.dumps({"measured": [first.measured_here, second.measured_here],
                  "values": [second.values(a) for a in archs], "known": [second.known_objectives(a) for a in archs],
                  "archs": archs, "torch": "torch" in sys.modules}))
"""


def keras_mlp_params(arch: dict) -> int:
    """Parameters of keras_digits.build_mlp by formula: hidden layers, embedding, logits."""
    w, d = arch["hidden_size"], arch["num_hidden_layers"]
    n_in, emb, labels = keras_digits.NUM_FEATURES, keras_digits.EMBEDDING_WIDTH, keras_digits.NUM_LABELS
    return n_in * w + w + (d - 1) * (w * w + w) + w * emb + emb + emb * labels + labels


@pytest.mark.slow
def test_keras_students_measured_once_and_reused_without_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_DISTILL_LOCK_DIR", str(tmp_path / "locks"))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["measured"] == [12, 0]
    assert out["torch"] is False
    for arch, values, known in zip(out["archs"], out["values"], out["known"]):
        params = keras_mlp_params(arch)
        assert values["params"] == params
        assert values["model_size_mb"] == pytest.approx(params * 4 / 2**20)  # float32 weights
        assert values["latency"] > 0
        # metrics [accuracy, latency, params, model_size_mb]: all three minimised, so negated
        assert known == {"1": -values["latency"], "2": -params, "3": -values["model_size_mb"]}
