"""A worker distils hundreds of students in one process: memory must not grow per trial.

Before the fix every trial left its traced step graphs alive (Keras' optimizer registers a
``tf.custom_gradient`` in TensorFlow's global gradient registry, which held the graph) and new kernels in
TensorFlow's eager kernel cache: about 5 MiB of RSS per trial on the Keras digits task (see
``nas_distill/distill/keras/tracing.py``).
"""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest

from _support.keras_models import flash, mlp, stage
from nas_distill.distill.keras import KerasFlashDistiller, evaluate

WARMUP, TRIALS = 5, 25
# Live graphs are counted after every GRAPH_EVERY-th trial (from the first after warm-up to the last): a
# leaked graph stays alive, so it shows in every later count; each count collects and scans every live
# object (~0.5 s).
GRAPH_EVERY = 6


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def live_graphs() -> int:
    """Live traced graphs and functions: each trial's step graph was what leaked (a few MiB each)."""
    from tensorflow.python.eager.polymorphic_function.concrete_function import ConcreteFunction
    from tensorflow.python.framework.func_graph import FuncGraph

    gc.collect()
    with warnings.catch_warnings():  # isinstance on every live object wakes deprecated module proxies
        warnings.simplefilter("ignore")
        return sum(isinstance(o, (FuncGraph, ConcreteFunction)) for o in gc.get_objects())


def slope(values) -> float:
    """Least-squares growth per trial (less sensitive to RSS noise than last minus first)."""
    return float(np.polyfit(np.arange(len(values)), values, 1)[0])


@pytest.mark.slow
def test_distill_many_students_in_one_process_memory_stays_flat(teacher, train_data, eval_data):
    # Every trial runs what a worker's trial runs: a block stage with a feature matcher (a Dense of its
    # own), a regular stage with the labels, the teacher live for the unmapped feature, and evaluation.
    stages = [stage("kt", "knowledge_transfer", block_names=["dense_1"], mappings=[("dense_1", "t_1")],
                    train_steps=3),
              stage("rd", train_steps=3, add_origin_loss=True)]
    d = KerasFlashDistiller(teacher, train_data, flash(stages, cache=True, budget_mb=0))
    rss, graphs = [], []
    for i in range(WARMUP + TRIALS):
        student = mlp((8 + 8 * (i % 3), 8), name="student", seed=i)  # widths vary, as a search's do
        d.distill(student, seed=i)
        evaluate(student, eval_data, ["accuracy", "latency"])
        del student
        if i >= WARMUP:
            if (i - WARMUP) % GRAPH_EVERY == 0 or i == WARMUP + TRIALS - 1:
                graphs.append(live_graphs())
            rss.append(rss_mib())
    # The traced graphs of finished trials are all freed: the count does not move after warm-up (before
    # the fix it grew by the two step graphs of every trial).
    assert max(graphs) == min(graphs), graphs
    # RSS: the per-trial target is < 0.5 MiB (it was ~5 MiB). Measured slope after the fix: within
    # +-0.1 MiB per trial (allocator noise of a few MiB either way over the run).
    assert slope(rss) < 0.5, [round(r, 1) for r in rss]
