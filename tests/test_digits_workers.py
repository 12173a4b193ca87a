"""The digits task with two workers on a fresh run folder: the teacher is trained once (one worker
trains, the other waits and says so), and an exported student runs in ``transformers.pipeline`` from its
folder alone, in a process that cannot import nas_distill.

One real search (tiny teacher and training steps) serves both tests; it runs with umask 077, as for a
user whose files are private by default, so group-readable exports are the export's doing.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import optuna
import pytest

from _support.common import write_config

PY = sys.executable

COUNTING_TASK = '''
"""The demo task, counting each training of the teacher (one line per training, with the pid)."""
import os

from nas_distill import demo
from nas_distill.tasks import digits

_train = digits.train_teacher


def counted(out_dir, **kwargs):
    with open(os.environ["ND_TEACHER_TRAININGS"], "a") as log:
        log.write(f"{os.getpid()}\\n")
    return _train(out_dir, **kwargs)


digits.train_teacher = counted


def task(config, teacher_steps):
    return demo.demo_task(config, teacher_steps=teacher_steps)
'''


def _private_umask():
    os.umask(0o077)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from nas_distill.demo import demo_config

    tmp = tmp_path_factory.mktemp("digits-workers")
    (tmp / "tasks").mkdir()
    (tmp / "tasks" / "nd_teacher_count.py").write_text(COUNTING_TASK)
    run_dir = tmp / "run"
    data = demo_config(str(run_dir), max_trials=1)
    data["task"] = {"entry": "nd_teacher_count:task", "args": {"teacher_steps": 40}}
    flash = data["auto_distillation"]["flash_distillation"]
    flash["knowledge_transfer"]["train_steps"] = [10]
    flash["regular_distillation"]["train_steps"] = [20]
    data["auto_distillation"]["evaluation"].update(latency_warmup=0, latency_repeats=2)
    cfg = write_config(tmp / "cfg.yaml", data)
    env = dict(os.environ, ND_TEACHER_TRAININGS=str(tmp / "trainings.txt"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(tmp / "tasks"), os.environ.get("PYTHONPATH", "")]))
    started = time.perf_counter()
    # Two `worker` commands started together (as on two machines or under docker compose): each runs the
    # dry run, which needs the teacher, so they meet at the teacher lock. (`run --workers 2` would train
    # the teacher once in its launcher, before any worker starts.)
    procs = [subprocess.Popen([PY, "-m", "nas_distill.cli", "worker", cfg, "--debug"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=_private_umask) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    return {"tmp": tmp, "run_dir": run_dir, "cfg": cfg, "env": env,
            "output": "\n".join(out + err for out, err in outs), "seconds": time.perf_counter() - started}


@pytest.mark.slow
def test_two_workers_on_a_fresh_folder_train_the_teacher_once(digits_run):
    trainings = (digits_run["tmp"] / "trainings.txt").read_text().split()
    assert len(trainings) == 1, trainings
    waiting = [line for line in digits_run["output"].splitlines()
               if "waiting while pid" in line and "training the teacher" in line]
    assert waiting and f"waiting while pid {trainings[0]} on " in waiting[0]
    assert "is training the teacher" in waiting[0]
    assert (digits_run["run_dir"] / "teacher" / "config.json").is_file()
    assert (digits_run["run_dir"] / "teacher.lock").read_text() == ""  # released by a finished holder
    study = optuna.load_study(study_name="digits-demo", storage=f"sqlite:///{digits_run['run_dir'] / 'study.db'}")
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 1


PIPELINE_SCRIPT = textwrap.dedent('''
    import json, sys
    sys.modules["nas_distill"] = None  # any import of this package now fails
    import numpy as np
    from transformers import pipeline

    folder, images, out = sys.argv[1:4]
    classify = pipeline("image-classification", model=folder)
    predictions = [classify(image, top_k=1)[0]["label"] for image in np.load(images)]
    json.dump(predictions, open(out, "w"))
''')


@pytest.mark.slow
def test_exported_student_runs_in_a_pipeline_from_its_folder_alone(digits_run, tmp_path):
    from nas_distill.tasks import digits

    out = tmp_path / "student"
    res = subprocess.run([PY, "-m", "nas_distill.cli", "export", digits_run["cfg"], "-o", out],
                         env=digits_run["env"], capture_output=True, text=True, timeout=120,
                         preexec_fn=_private_umask)
    assert res.returncode == 0, res.stderr
    number = int(res.stdout.split()[1])
    study = optuna.load_study(study_name="digits-demo", storage=f"sqlite:///{digits_run['run_dir'] / 'study.db'}")
    trial = study.trials[number]

    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "arch.json", "nas_distill.json",
            "README.md"} <= files
    for path in [out, *out.iterdir()]:  # written under umask 077, yet readable by the group
        assert path.stat().st_mode & stat.S_IRGRP, path
    summary = json.loads((out / "nas_distill.json").read_text())
    assert summary["trial"] == number and summary["architecture"] == trial.params
    assert summary["metrics"] == dict(zip(study.metric_names, trial.values))
    assert summary["labels"] == [str(i) for i in range(10)]
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and f"trial {number}" in card
    assert all(f"`{k}` | {v}" in card for k, v in trial.params.items())

    # The validation split the search measured, as 0-255 grey images (8, 8, 1).
    splits = digits.load_splits()
    images = np.round(splits.x_val.numpy()[:, 0, :, :, None] * 255).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "run_pipeline.py"
    script.write_text(PIPELINE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run([PY, str(script), str(out), str(tmp_path / "images.npy"), str(tmp_path / "pred.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    predicted = json.loads((tmp_path / "pred.json").read_text())
    accuracy = float(np.mean([p == str(int(y)) for p, y in zip(predicted, splits.y_val.numpy())]))
    # The search's own figure for this student on the same images (8-bit rounding may flip one or two).
    assert abs(accuracy - trial.values[0]) <= 2 / len(predicted), (accuracy, trial.values[0])
