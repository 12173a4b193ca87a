"""A small torch task for the pruner's tests (and other tests of real torch students): MLP students of
scikit-learn's digits, distilled from an MLP teacher trained here in a second.

Also a worker for the two-worker test::

    python pruning_task.py <run_dir> <storage URL> <label>

runs the search of :func:`config` on the shared study.
"""

from __future__ import annotations

import os
import sys

import torch

SPACE = {"hidden": [4, 8, 16, 32, 64], "depth": [1, 2, 3]}
TRAIN_STEPS = 90


class Net(torch.nn.Module):
    def __init__(self, hidden: int, depth: int = 1):
        super().__init__()
        layers, n = [], 64
        for _ in range(depth):
            layers += [torch.nn.Linear(n, hidden), torch.nn.ReLU()]
            n = hidden
        self.body = torch.nn.Sequential(*layers, torch.nn.Linear(n, 10))

    def forward(self, x):
        return self.body(x)


def build(arch: dict) -> Net:
    return Net(arch["hidden"], arch["depth"])


def net_params(arch: dict) -> int:
    """The parameter count of ``build(arch)``, by formula."""
    h, d = arch["hidden"], arch["depth"]
    return 64 * h + h + (d - 1) * (h * h + h) + h * 10 + 10


class Data:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    return Data(x[:1400], y[:1400]), Data(x[1400:], y[1400:])


def teacher(train: Data) -> Net:
    torch.manual_seed(0)
    net = Net(64)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(net(train.x), train.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def config(run_dir, *, storage=None, algorithm="grid", max_trials=15, **search) -> dict:
    study = {"run_dir": str(run_dir), "study_name": "pruning"}
    if storage:
        study["storage"] = storage
    return {"search": {"search_space": SPACE, "metrics": ["accuracy", "params"], "search_algorithm": algorithm,
                       "max_trials": max_trials, "seed": 0, "pruner": "pareto-asha", "rung_examples": 200,
                       **search},
            "flash_distillation": {"learning_rate": 0.01, "batch_size": 32,
                                   "regular_distillation": {"train_steps": TRAIN_STEPS}},
            "study": study}


# The search the test session runs once (tests/conftest.py: pruned_run) and its readers reopen: bo, so the
# same study also shows bo fed by the students the pruner stopped (grid with the pruner on runs in the
# two-worker test).
SHARED_SEARCH = {"algorithm": "bo", "max_trials": 10}


def make_ad(run_dir, **kwargs):
    from nas_distill import AutoDistillation

    train, test = digits()
    ad = AutoDistillation(build, config(run_dir, **kwargs))
    ad.teacher_model = teacher(train)
    ad.train_dataset = train
    ad.eval_dataset = test
    return ad


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    run_dir, storage, label = sys.argv[1:4]
    os.environ["NAS_DISTILL_WORKER"] = label
    make_ad(run_dir, storage=storage).search()
