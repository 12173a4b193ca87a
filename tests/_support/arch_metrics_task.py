"""A tiny torch task for the architecture-metrics tests: MLP students of random features.

Also a worker for the multi-process tests::

    python arch_metrics_task.py <run_dir> <barrier_dir> <workers> <label> <intervals_file>

waits until ``<workers>`` processes stand at the barrier, then does what a pipeline worker does before
its first suggestion (``arch_metrics.refresh()``: measure the untrained candidates the study lacks),
then times 3 "trained" students (the trial's evaluation); prints ``{"measured": n}``. Its ``eval_func``
times with the built-in evaluator and appends ``<label> <start> <end>`` to ``<intervals_file>`` from
inside the measurement.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

SPACE = {"width": [8, 16, 32, 64], "depth": [1, 2, 3]}
# 16 x 6 x 3 = 288 points: more than arch_metrics.MEASURE_ALL_LIMIT.
LARGE_SPACE = {"width": [4 * i for i in range(1, 17)], "depth": [1, 2, 3, 4, 5, 6], "act": ["relu", "gelu", "tanh"]}
N_IN, N_OUT = 16, 4


class MLP(torch.nn.Module):
    def __init__(self, width: int, depth: int, act: str = "relu"):
        super().__init__()
        layers, n = [], N_IN
        for _ in range(depth):
            layers += [torch.nn.Linear(n, width), {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU,
                                                    "tanh": torch.nn.Tanh}[act]()]
            n = width
        layers.append(torch.nn.Linear(n, N_OUT))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def build(arch: dict) -> MLP:
    return MLP(**arch)


def mlp_params(arch: dict) -> int:
    """The parameter count of ``build(arch)``, by formula (independent of torch's count)."""
    w, d = arch["width"], arch["depth"]
    return N_IN * w + w + (d - 1) * (w * w + w) + w * N_OUT + N_OUT


class Data:
    def __init__(self, n: int = 32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, N_IN, generator=g)
        self.y = torch.randint(0, N_OUT, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def config(run_dir, *, space=None, metrics=("accuracy", "latency", "params"), algorithm="bo", study_name="am",
           storage=None, **search):
    study = {"run_dir": str(run_dir), "study_name": study_name}
    if storage:
        study["storage"] = storage
    return {"search": {"search_space": space or SPACE, "metrics": list(metrics), "search_algorithm": algorithm,
                       **search},
            "evaluation": {"latency_warmup": 1, "latency_repeats": 3, "threads": 1},
            "study": study}


def make_ad(run_dir, **kwargs):
    from nas_distill import AutoDistillation

    ad = AutoDistillation(build, config(run_dir, **kwargs))
    ad.eval_dataset = Data()
    return ad


def _barrier(folder: Path, label: str, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / label).write_text("ready")
    while len(list(folder.iterdir())) < n:
        time.sleep(0.01)


def main(run_dir: str, barrier: str, workers: str, label: str, intervals: str) -> None:
    from nas_distill.arch_metrics import ArchMetrics
    from nas_distill.distill.torch.evaluate import latency

    torch.set_num_threads(1)
    ad = make_ad(run_dir)
    data = ad.eval_dataset

    def eval_func(model):
        start = time.time()
        value = latency(model, data, ad.conf.evaluation)
        end = time.time()
        with open(intervals, "a") as fh:  # one short append per line: lines never mix
            fh.write(f"{label} {start!r} {end!r}\n")
        return {"accuracy": 0.0, "latency": value, "params": sum(p.numel() for p in model.parameters())}

    ad.eval_func = eval_func
    metrics = ArchMetrics(ad)
    _barrier(Path(barrier), label, int(workers))
    metrics.refresh()
    for width in (8, 16, 32):
        ad._evaluate(build({"width": width, "depth": 2}))
    print(json.dumps({"measured": metrics.measured_here}))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(*sys.argv[1:])
