"""Task entry point for the kill test (tests/test_reliability_kills.py): real torch, real teacher cache.

A tiny BERT teacher saved by the test with ``save_pretrained`` and loaded here with ``from_pretrained``
(``ND_REL_TEACHER``), 64 synthetic token sequences, BERT students built from the arch; training and
evaluation are the built-in flash distiller and evaluator, so the teacher-output cache is the real one.

What is added for the test, in this module only, is a way to see (and stretch) the phases a worker is in,
so the test can SIGKILL it inside a chosen one. Each worker writes its current phase to
``$ND_REL_PHASE_DIR/<pid>.json`` (atomically: temp file + rename):

* ``cache``: the teacher ran a forward, i.e. this worker is filling the teacher cache (only the worker
  holding the cache lock runs the teacher); each teacher forward sleeps ``ND_REL_TEACHER_DELAY`` s.
* ``train``: a student forward in training mode; each sleeps ``ND_REL_STUDENT_DELAY`` s.
* ``eval``: a student forward in eval mode.
* ``tell``: ``Study.tell`` with values (the trial's COMPLETE) was called; it sleeps ``ND_REL_TELL_DELAY``
  s, then runs the real tell; ``told`` when it returned.
"""

from __future__ import annotations

import json
import os
import time

from _support.torch_models import N_LABELS, SEQ, VOCAB, bert_config

_state = {"phase": None, "seq": 0}


def mark(phase: str) -> None:
    if _state["phase"] == phase:
        return
    folder = os.environ.get("ND_REL_PHASE_DIR")
    _state["phase"] = phase
    _state["seq"] += 1
    if not folder:
        return
    path = os.path.join(folder, f"{os.getpid()}.json")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"phase": phase, "seq": _state["seq"], "time": time.time()}, f)
    os.replace(tmp, path)


def _delay(name: str) -> float:
    return float(os.environ.get(name, "0") or 0)


def examples(n: int = 64, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
    labels = torch.randint(0, N_LABELS, (n,), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]


def model_builder(arch):
    import transformers

    model = transformers.BertForSequenceClassification(bert_config(**arch))
    delay = _delay("ND_REL_STUDENT_DELAY")

    def student_phase(module, args):
        mark("train" if module.training else "eval")
        if module.training and delay:
            time.sleep(delay)

    model.register_forward_pre_hook(student_phase)
    return model


def _slow_tell():
    """Wrap ``optuna.study.Study.tell``: mark ``tell``, sleep, run the real tell, mark ``told``."""
    import optuna

    original = optuna.study.Study.tell
    if getattr(original, "_nd_rel", False):
        return
    delay = _delay("ND_REL_TELL_DELAY")

    def tell(self, trial, values=None, state=None, skip_if_finished=False):
        if values is None:
            return original(self, trial, values, state, skip_if_finished)
        mark("tell")
        time.sleep(delay)
        out = original(self, trial, values, state, skip_if_finished)
        mark("told")
        return out

    tell._nd_rel = True
    optuna.study.Study.tell = tell


def make_task(config):
    import torch
    import transformers

    teacher = transformers.BertForSequenceClassification.from_pretrained(os.environ["ND_REL_TEACHER"],
                                                                         local_files_only=True).eval()
    delay = _delay("ND_REL_TEACHER_DELAY")

    def teacher_phase(module, args, kwargs):
        mark("cache")
        if delay:
            time.sleep(delay)

    teacher.register_forward_pre_hook(teacher_phase, with_kwargs=True)
    _slow_tell()
    torch.manual_seed(0)
    data = examples()
    return {"model_builder": model_builder, "teacher_model": teacher, "train_dataset": data,
            "eval_dataset": data[:32]}
