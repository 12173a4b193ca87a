"""The user's task: the Python entry point a config names, called in every worker process.

How a worker started from the command line gets the user's Python code
----------------------------------------------------------------------
The config names a *task entry point* at its top level (next to ``model`` / ``auto_distillation``)::

    task: "my_package.my_module:make_task"          # or
    task: {entry: "my_package.my_module:make_task", args: {data_dir: /data}}

(``nas-distill run|worker --task MODULE:FUNCTION`` overrides it.) The function is imported in every
worker process (the module must be importable there: installed, or on ``PYTHONPATH``) and called as
``make_task(config, **args)`` (or ``make_task(**args)`` when it takes no positional parameter), where
``config`` is the validated :class:`~nas_distill.config.AutoDistillationConfig`. It returns a mapping
(or an object with these attributes)::

    model_builder   required   arch dict -> student model
    train_func      optional   train_func(model): trains in place           } or the built-in flash
    eval_func       optional   eval_func(model) -> metrics                  } distiller + evaluator:
    teacher_model   optional   the teacher                                  } teacher_model,
    train_dataset   optional   training data                                } train_dataset and
    eval_dataset    optional   evaluation data                              } eval_dataset
    metric_fn       optional   metric_fn(predictions, labels) for the built-in evaluator
    model_cls       optional   the seed's model_cls (rebuild students with from_pretrained)
    preprocessor    optional   the students' image processor or tokenizer (saved with each student, so
                               an exported student runs in ``transformers.pipeline`` on its own)
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from .config_file import config_and_task
from .errors import ConfigError
from .store import require_shared_storage, resolve_storage_url

TASK_KEYS = ("model_builder", "train_func", "eval_func", "teacher_model", "train_dataset", "eval_dataset",
             "metric_fn", "model_cls", "preprocessor")


def load_task_function(spec: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    """``"pkg.mod:func"`` or ``{entry: "pkg.mod:func", args: {...}}`` -> (function, kwargs)."""
    args: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"entry", "args"}
        if unknown:
            raise ConfigError("task", f"unknown key(s) {sorted(unknown)}; expected 'entry' and 'args'")
        args = dict(spec.get("args") or {})
        spec = spec.get("entry")
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError("task", f"expected 'package.module:function', got {spec!r}")
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("task", f"cannot import {module_name!r} ({exc}); is it on PYTHONPATH?") from None
    func = module
    for part in func_name.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise ConfigError("task", f"{module_name!r} has no attribute {func_name!r}")
    if not callable(func):
        raise ConfigError("task", f"{spec!r} is not callable")
    return func, args


def call_task(func: Callable[..., Any], args: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """Call the task function and normalise what it returns to a dict of :data:`TASK_KEYS`."""
    params = [p for p in inspect.signature(func).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in args]
    result = func(config, **args) if params else func(**args)
    if not isinstance(result, Mapping):
        result = {k: getattr(result, k) for k in TASK_KEYS if hasattr(result, k)}
    unknown = set(result) - set(TASK_KEYS)
    if unknown:
        raise ConfigError("task", f"the task returned unknown key(s) {sorted(unknown)}; known: {TASK_KEYS}")
    if not callable(result.get("model_builder")):
        raise ConfigError("task", "the task must return a callable 'model_builder'")
    return dict(result)


def build_autodistill(
    config: str | os.PathLike | Mapping[str, Any],
    *,
    task: Any = None,
    storage: str | None = None,
    study_name: str | None = None,
    run_dir: str | None = None,
    max_trials: int | None = None,
):
    """An :class:`~nas_distill.autodistill.AutoDistillation` wired from a config file and its task."""
    from .autodistill import AutoDistillation

    data, spec = config_and_task(config)
    spec = task or spec
    if spec is None:
        raise ConfigError("task", "the config names no task entry point ('task: package.module:function' "
                                  "at the top level, or --task)")
    cfg = shared_settings(data, storage, run_dir)
    func, args = load_task_function(spec)
    pieces = call_task(func, args, cfg)
    ad = AutoDistillation(pieces["model_builder"], cfg, storage=storage, study_name=study_name,
                          run_dir=run_dir or cfg.study.run_dir, max_trials=max_trials)
    for key in ("train_func", "eval_func", "teacher_model", "train_dataset", "eval_dataset", "metric_fn",
                "preprocessor"):
        if pieces.get(key) is not None:
            setattr(ad, key, pieces[key])
    ad.model_cls = pieces.get("model_cls")
    return ad


def shared_settings(data: Mapping[str, Any], storage: str | None, run_dir: str | None):
    """The validated settings of a run whose workers share a study: its storage must be one that every
    worker process can reach (not in-memory)."""
    from .autodistill import load_config

    cfg = load_config(data)
    require_shared_storage(resolve_storage_url(storage or cfg.study.storage, run_dir or cfg.study.run_dir))
    return cfg
