"""``nas-distill demo``: the quickest real search that exists (a placeholder the lead will replace).

The digits task (:mod:`nas_distill.tasks.digits`): a small ViT teacher trained once and cached in the run
folder, ViT students flash-distilled by the built-in distiller for a few dozen steps, measured for
accuracy and latency, on a grid, through the same CLI path as any user task (``task:`` entry point).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TEACHER_STEPS = 400
DEMO_SPACE = {
    "hidden_size": [32, 64],
    "num_hidden_layers": [1, 2],
    "num_attention_heads": [2, 4],
    "intermediate_size": [64],
}


def demo_task(config) -> dict[str, Any]:
    """Task entry point: the digits teacher, students and data."""
    from .tasks import digits

    train, val, _ = digits.datasets()
    teacher, _ = digits.load_or_train_teacher(config.study.run_dir, steps=TEACHER_STEPS)
    return {"model_builder": digits.student_builder, "teacher_model": teacher,
            "train_dataset": train, "eval_dataset": val}


def demo_config(run_dir: str, max_trials: int) -> dict[str, Any]:
    return {
        "task": "nas_distill.demo:demo_task",
        "model": {"framework": "pytorch"},
        "auto_distillation": {
            "search": {
                "search_space": DEMO_SPACE,
                "search_algorithm": "grid",
                "metrics": ["accuracy", "latency"],
                "higher_is_better": [True, False],
                "max_trials": max_trials,
            },
            "flash_distillation": {"regular_distillation": {"train_steps": 60, "loss_types": "KL"},
                                   "batch_size": 64},
            "evaluation": {"latency_repeats": 5, "latency_warmup": 2},
            "study": {"run_dir": str(run_dir), "study_name": "demo"},
        },
    }


def main(run_dir: str = "runs/demo", max_trials: int = 6, workers: int = 1, debug: bool = False) -> int:
    import yaml

    from .workers import ProgressPrinter, run_local, run_worker

    folder = Path(run_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "demo.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(str(folder), max_trials), sort_keys=False))
    print(f"demo: digits ViT students, {max_trials} trials, config {config_path}", flush=True)
    if workers > 1:
        code = run_local(config_path, workers, debug=debug)
    else:
        code = run_worker(config_path, progress=ProgressPrinter(enabled=True), label="w0")
    if code == 0:
        from .results import status_text, study_results
        from .study import load_study, resolve_storage_url

        study = load_study(resolve_storage_url(None, folder), "demo")
        print(status_text(study_results(study), max_trials=max_trials))
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(os.environ.get("NAS_DISTILL_DEMO_DIR", "runs/demo")))
