"""How well the latency predictor predicts students it never saw, on the demo and text spaces.

Usage::

    OMP_NUM_THREADS=1 python bench/latency_predictor.py [--space demo|text|all] [--splits 20]
        [--train-fraction 0.6] [--threads 1] [--save measured.json | --load measured.json]

Every student of the space is built untrained and measured by the pipeline itself
(:class:`nas_distill.arch_metrics.ArchMetrics`, the built-in evaluator's latency and parameter count,
under the machine's measurement lock) into a throwaway study. Then, ``--splits`` times, a random
``--train-fraction`` of the students fits :class:`nas_distill.latency_predictor.MetricPredictor` and the
rest are predicted; the table gives the held-out errors, and beside them the measurement's own noise:
the same students measured a second time, compared with their first measurement (a predictor cannot
beat it). Spaces: the demo's 108 ViT students of 8x8 digits, and the text example's 72 BERT students
(``examples/text_classification.yaml``: bert-base vocabulary, 64 tokens, batch 1). ``--save`` writes
the measurements as JSON; ``--load`` reads them back instead of measuring (to compare fits on one set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas_distill import AutoDistillation  # noqa: E402
from nas_distill.arch_metrics import ArchMetrics  # noqa: E402
from nas_distill.latency_predictor import MetricPredictor, relative_errors  # noqa: E402
from nas_distill.search.space import SearchSpace  # noqa: E402

TEXT_SPACE = {"hidden_size": [128, 256, 384, 512], "num_hidden_layers": [2, 4, 6],
              "num_attention_heads": [4, 8], "intermediate_size": [512, 1024, 1536]}


def demo_setup():
    from nas_distill.tasks import digits

    _, val, _ = digits.datasets()
    return digits.STUDENT_SPACE, digits.student_builder, val


def text_setup():
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    from nas_distill.builders import from_config

    class Tokens:
        def __init__(self, n=8, length=64):
            g = torch.Generator().manual_seed(0)
            self.ids = torch.randint(1000, 30000, (n, length), generator=g)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                    "labels": torch.tensor(i % 2)}

    return TEXT_SPACE, from_config(BertConfig(num_labels=2), AutoModelForSequenceClassification), Tokens()


def measure_space(space, builder, eval_data, threads: int, folder: str):
    config = {"search": {"search_space": space, "metrics": ["accuracy", "latency", "params"],
                         "search_algorithm": "random"},
              "evaluation": {"latency_warmup": 5, "latency_repeats": 20, "threads": threads},
              "study": {"run_dir": folder, "study_name": "latency-bench"}}
    ad = AutoDistillation(builder, config)
    ad.eval_dataset = eval_data
    metrics = ArchMetrics(ad)
    points = [SearchSpace(space).point(i) for i in range(len(SearchSpace(space)))]
    metrics.measure(points)
    archs = [p for p in points if metrics.values(p)]
    first = np.array([metrics.values(a)["latency"] for a in archs])
    rng = np.random.default_rng(1)
    again = sorted(rng.choice(len(archs), size=min(12, len(archs)), replace=False))
    second = np.array([metrics.measure_model(builder(dict(archs[i])))["latency"] for i in again])
    noise = np.abs(relative_errors(second, first[again])) * 100
    return archs, first, np.array([metrics.values(a)["params"] for a in archs]), noise


def held_out(space, archs, values, splits: int, fraction: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(splits):
        order = rng.permutation(len(archs))
        cut = int(round(fraction * len(archs)))
        train, test = order[:cut], order[cut:]
        p = MetricPredictor(space).fit([archs[i] for i in train], values[train])
        errors.append(np.abs(relative_errors(p.predict([archs[i] for i in test]), values[test])) * 100)
    return np.concatenate(errors)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", choices=["demo", "text", "all"], default="all")
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--train-fraction", type=float, default=0.6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", help="write the measurements to this JSON file")
    ap.add_argument("--load", help="read the measurements from this JSON file instead of measuring")
    args = ap.parse_args()
    saved = json.loads(Path(args.load).read_text()) if args.load else {}
    setups = {"demo": demo_setup, "text": text_setup}
    names = list(setups) if args.space == "all" else [args.space]
    print(f"held-out error of the latency predictor: {args.splits} random splits, "
          f"{args.train_fraction:.0%} of the students fit, the rest predicted")
    print(f"{'space':<6} {'students':>8} {'metric':<8} {'median %':>9} {'mean %':>7} {'p90 %':>6} "
          f"{'max %':>6} {'within 10%':>10} | {'re-measure median % / max %':>28}")
    for name in names:
        if args.load:
            space, archs, latency, params, noise = (saved[name][k] for k in ("space", "archs", "latency",
                                                                              "params", "noise"))
            latency, params, noise = np.array(latency), np.array(params), np.array(noise)
        else:
            import torch

            torch.set_num_threads(args.threads)
            space, builder, data = setups[name]()
            with tempfile.TemporaryDirectory() as folder:
                archs, latency, params, noise = measure_space(space, builder, data, args.threads, folder)
            saved[name] = {"space": space, "archs": archs, "latency": latency.tolist(),
                           "params": params.tolist(), "noise": noise.tolist()}
        for metric, values in (("latency", latency), ("params", params)):
            e = held_out(space, archs, values, args.splits, args.train_fraction)
            remeasure = f"{np.median(noise):.1f} / {noise.max():.1f}" if metric == "latency" else "exact"
            print(f"{name:<6} {len(archs):>8} {metric:<8} {np.median(e):>9.2f} {e.mean():>7.2f} "
                  f"{np.percentile(e, 90):>6.1f} {e.max():>6.1f} {np.mean(e <= 10):>10.0%} | {remeasure:>28}")
        print(f"{'':<6} latency range {latency.min():.2f} - {latency.max():.2f} ms")
    if args.save:
        Path(args.save).write_text(json.dumps(saved))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
