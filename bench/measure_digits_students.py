"""Measure every student of a digits ViT space once, for ``search_quality.py``'s ``digits`` space.

What it does
    Runs the demo task (``nas_distill.demo``: scikit-learn's digits, the cached ViT teacher) through the
    real pipeline (``run_worker`` in ``--workers`` processes, one torch thread each) with the grid over every point
    of :data:`SPACE`: each student is flash-distilled and measured by the built-in evaluator. Then it
    writes one row per student (arch, validation accuracy, latency in ms, parameter count) to
    ``bench/data/digits_students.csv``.

How it differs from ``nas-distill demo`` (to keep the CPU time modest on a shared machine)
    * the space adds depth 4 to the demo's and leaves out its widest hidden size (128, the teacher's):
      3 hidden sizes x 4 depths x 3 head counts x 3 MLP widths = 108 students;
    * flash distillation is shortened to 50 knowledge-transfer steps + 150 logit-distillation steps (the
      demo: 150 + 450), so accuracies are those of a briefly distilled student;
    * latency: the evaluator's median of 30 runs at batch 1 after 5 warm-up runs, one torch thread, on
      this 2-core machine while other jobs shared it (load average 5-20), by 2 worker processes (the
      grid hands each student to exactly one); so latencies carry that load's noise.

The stored table came from a run of this script whose space also had hidden size 128 (144 students),
stopped once the grid had done its first 108 points (hidden size 32, 64, 96: the grid's slowest key is
hidden_size, so those are exactly this space) to spare the shared machine the widest students; the rows
were written by :func:`export`. Measuring took about 13 CPU-minutes, teacher included.

Usage::

    python bench/measure_digits_students.py [--run-dir /tmp/digits-students] [--workers 2] \
        [--out bench/data/digits_students.csv]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SPACE = {
    "hidden_size": [32, 64, 96],
    "num_hidden_layers": [1, 2, 3, 4],
    "num_attention_heads": [1, 2, 4],
    "intermediate_size": [64, 128, 256],
}
KNOWLEDGE_TRANSFER_STEPS = 50
DISTILLATION_STEPS = 150
COLUMNS = [*sorted(SPACE), "accuracy", "latency_ms", "params"]


def config(run_dir: Path) -> dict:
    from nas_distill.demo import demo_config

    n_points = 1
    for values in SPACE.values():
        n_points *= len(values)
    data = demo_config(str(run_dir), max_trials=n_points)
    search = data["auto_distillation"]["search"]
    search.update(search_space=SPACE, search_algorithm="grid", metrics=["accuracy", "latency", "params"],
                  higher_is_better=[True, False, False])
    flash = data["auto_distillation"]["flash_distillation"]
    flash["knowledge_transfer"]["train_steps"] = [KNOWLEDGE_TRANSFER_STEPS]
    flash["regular_distillation"]["train_steps"] = [DISTILLATION_STEPS]
    data["auto_distillation"]["study"]["study_name"] = "digits-students"
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="/tmp/digits-students")
    parser.add_argument("--out", default=str(Path(__file__).parent / "data" / "digits_students.csv"))
    parser.add_argument("--workers", type=int, default=2, help="worker processes on the one study (default 2)")
    args = parser.parse_args(argv)

    from nas_distill.tasks import digits
    from nas_distill.workers import run_worker

    started = time.perf_counter()
    folder = Path(args.run_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data = config(folder)
    digits.load_or_train_teacher(folder)  # once, before the workers start
    ctx = multiprocessing.get_context("spawn")
    helpers = [ctx.Process(target=run_worker, args=(data,), kwargs={"threads": 1, "label": f"w{i}"})
               for i in range(1, args.workers)]
    for process in helpers:
        process.start()
    code = run_worker(data, threads=1, label="w0")
    for process in helpers:
        process.join()
    if code != 0 or any(process.exitcode for process in helpers):
        return code or 1
    count = export(folder, args.out)
    print(f"{count} students written to {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


def export(folder: Path, out: str) -> int:
    """Write one CSV row per COMPLETE student of the study in ``folder`` that lies in :data:`SPACE`."""
    from nas_distill.search.space import SearchSpace
    from nas_distill.study import load_study, resolve_storage_url

    space = SearchSpace(SPACE)
    study = load_study(resolve_storage_url(None, folder), "digits-students")
    rows = [{**t.params, "accuracy": t.values[0], "latency_ms": t.values[1], "params": int(t.values[2])}
            for t in study.trials if t.values is not None and t.params in space]
    rows.sort(key=lambda row: [row[k] for k in sorted(SPACE)])
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


if __name__ == "__main__":
    sys.exit(main())
