"""The task behind the report and dashboard tests' studies (``_support.report.make_study`` runs a real
search with it): plain-Python students whose figures follow from their architecture, so a search of a few
dozen trials takes seconds, and a training that fails on chosen trainings.

A student is not a torch module on purpose: after each torch student the runner runs ``gc.collect()``,
which takes about a second in a test process holding many objects. It has what the runner needs to count
and save a student (``num_parameters()``, ``save_pretrained(folder)``), as a Hugging Face model has.

* ``accuracy`` rises with ``hidden_size * num_hidden_layers``, ``latency`` (ms) and ``model_size_mb`` grow
  with it, plus a little noise fixed by the architecture: a real trade-off with a front of several trials.
* ``params``: the student's parameter count (the runner records the same count as ``n_params``).
* ``fail_at``: the 1-based trainings that raise a ``RuntimeError`` (a shape error, with markup in the
  message, which every page must escape). Not an out-of-memory error: the runner retries those on
  another worker and stops a worker that meets one twice.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

SPACE = {
    "hidden_size": [64, 128, 256, 384],
    "intermediate_size": [256, 512, 1024],
    "num_attention_heads": [2, 4, 8],
    "num_hidden_layers": [1, 2, 3, 4],
}
ERROR = "mat1 and mat2 shapes cannot be multiplied (64x12 and 16x4) </script><b>x</b>"


class Student:
    """The parameter count of a BERT-like encoder of the architecture, and a config file when saved."""

    def __init__(self, arch: dict):
        self.arch = dict(arch)

    def num_parameters(self) -> int:
        hidden, inner, layers = self.arch["hidden_size"], self.arch["intermediate_size"], self.arch["num_hidden_layers"]
        return layers * (4 * hidden * hidden + 2 * hidden * inner + 9 * hidden + inner)

    def save_pretrained(self, folder: str) -> None:
        (Path(folder) / "config.json").write_text(json.dumps({"model_type": "report-test", **self.arch}))


def _noise(arch: dict, salt: str) -> float:
    """A number in [0, 1) fixed by the architecture (the same on every run)."""
    return zlib.crc32(repr((sorted(arch.items()), salt)).encode()) / 2**32


def figures(student: Student) -> dict[str, float]:
    arch = student.arch
    size = arch["hidden_size"] * arch["num_hidden_layers"]
    n_params = student.num_parameters()
    accuracy = min(0.99, 0.55 + 0.25 * (size / 1536) ** 0.5 + 0.06 * (_noise(arch, "acc") - 0.5))
    latency = 0.4 + size / 250 + arch["intermediate_size"] / 900 + 0.4 * _noise(arch, "lat")
    return {"accuracy": round(accuracy, 4), "latency": round(latency, 3),
            "model_size_mb": round(n_params * 4 / 2**20, 6), "params": float(n_params)}


def make_task(config, fail_at=()):
    trainings = []

    def train(student):
        trainings.append(student.arch)
        if len(trainings) in set(fail_at):
            raise RuntimeError(ERROR)

    return {"model_builder": Student, "train_func": train, "eval_func": figures}
