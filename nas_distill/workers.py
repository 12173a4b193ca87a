"""Worker processes: load the user's task, run trials on the shared study, stop cleanly on signals.

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

Processes
---------
``nas-distill run CONFIG --workers N`` opens (creates) the study once, then starts N subprocesses of
``nas-distill worker CONFIG --study NAME`` with ``NAS_DISTILL_WORKER=w<i>``, the storage URL in
``NAS_DISTILL_STORAGE`` (kept off the command line, where ``ps`` would show a password) and torch
threads = cores // N each (``--threads`` overrides). The same ``worker`` command joins the study from
any machine that reaches the storage (PostgreSQL) and shares the run folder (artifacts).

Signals
-------
SIGTERM and SIGINT (Ctrl-C) raise :class:`~nas_distill.runner.Interrupted` in the worker's main
thread: the running trial is told FAIL with ``error_type='Interrupted'`` / ``error='interrupted
(SIGTERM)'``, its architecture is enqueued again, and the worker exits with code 0 (SIGTERM) or 130
(SIGINT), without a traceback. Workers started by ``run`` also stop that way when the launcher itself is
killed outright (they notice they were re-parented: :func:`watch_parent`). A worker killed outright (``kill -9``, OOM killer, power loss) stops
beating: after the grace period another worker's stale sweep marks its trial FAIL (``WorkerLost``)
and retries the architecture.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from . import study as study_mod
from .errors import ConfigError
from .yamlio import read_config_file

log = logging.getLogger(__name__)

TASK_KEYS = ("model_builder", "train_func", "eval_func", "teacher_model", "train_dataset", "eval_dataset",
             "metric_fn", "model_cls", "preprocessor")
EXIT_OK = 0
#: The worker stopped before the study met its budget (circuit breaker, out of architectures).
EXIT_INCOMPLETE = 3
EXIT_INTERRUPTED = 130


# ------------------------------------------------------------------------------------ config + task
def split_task(data: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """``(config without 'task', task spec or None)``."""
    data = dict(data)
    return data, data.pop("task", None)


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
    from .autodistill import AutoDistillation, load_config

    data = read_config_file(config) if isinstance(config, (str, os.PathLike)) else dict(config)
    data, spec = split_task(data)
    spec = task or spec
    if spec is None:
        raise ConfigError("task", "the config names no task entry point ('task: package.module:function' "
                                  "at the top level, or --task)")
    cfg = load_config(data)
    study_mod.require_shared_storage(study_mod.resolve_storage_url(storage or cfg.study.storage,
                                                                   run_dir or cfg.study.run_dir))
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


# ------------------------------------------------------------------------------------------ signals
class _SignalGuard:
    """Turn SIGTERM / SIGINT into :class:`~nas_distill.runner.Interrupted` in the main thread."""

    def __init__(self):
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        from .runner import Interrupted

        # A second signal while the first is being handled must not interrupt the cleanup.
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


#: Set by ``run_local`` in each worker's environment: the launcher's pid, which the worker watches.
PARENT_PID_ENV = "NAS_DISTILL_PARENT_PID"


def watch_parent(parent_pid: int, interval: float = 1.0) -> threading.Thread:
    """Stop this worker (SIGTERM to itself) once the process ``parent_pid`` is no longer its parent.

    Why: a launcher killed outright (``kill -9``, the OOM killer) cannot forward a signal, and its
    workers would go on training, unseen, until the budget is spent. An orphan is re-parented, so a
    changed ``getppid()`` is the sign; SIGTERM takes the usual clean path (running trial failed and
    retried, exit 0).
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        log.warning("the run launcher (pid %d) is gone; this worker stops", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="nas-distill-parent-watch", daemon=True)
    thread.start()
    return thread


def set_threads(threads: int | None) -> None:
    """Torch intra-op threads for this process (env for a torch not yet imported, and the live one).

    TensorFlow reads its thread pools' sizes from the environment once, when its runtime starts: set here
    before a Keras task imports it, a worker does not take every core (TF's default) next to the others.
    """
    if not threads:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(threads))


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


# ------------------------------------------------------------------------------------------ workers
def run_worker(
    config: str | os.PathLike | Mapping[str, Any],
    *,
    task: Any = None,
    storage: str | None = None,
    study_name: str | None = None,
    run_dir: str | None = None,
    max_trials: int | None = None,
    threads: int | None = None,
    progress: Callable[[Any], None] | None = None,
    label: str | None = None,
    new_run: bool = False,
    check_setup: bool = True,
    opened: dict[str, Any] | None = None,
) -> int:
    """One worker: run trials on the shared study until the budget is spent. Returns an exit code:
    :data:`EXIT_OK` when the study met its budget, :data:`EXIT_INCOMPLETE` when it stopped short.

    ``new_run``: this worker starts a run (re-arms the circuit breaker); ``check_setup=False``: the
    process that started this worker already ran the dry run. ``opened``: a dict that receives the
    study the worker ran on (key ``"study"``), so a caller can read the end state from a storage whose
    cache already holds every trial instead of loading the whole study again.
    """
    from .runner import Interrupted, TrialRunner

    if label:
        os.environ["NAS_DISTILL_WORKER"] = label
    elif not os.environ.get("NAS_DISTILL_WORKER"):
        # Workers started by hand or by docker compose: a unique label, so model-based samplers get
        # distinct seeds (autodistill.sampler_seed) instead of proposing the same archs in lock-step.
        import socket

        os.environ["NAS_DISTILL_WORKER"] = f"{socket.gethostname()}-{os.getpid()}"
    set_threads(threads)
    parent = os.environ.get(PARENT_PID_ENV, "")
    with _SignalGuard():
        if parent.isdigit() and int(parent) == os.getppid():  # not a value inherited from elsewhere
            watch_parent(int(parent))
        try:
            ad = build_autodistill(config, task=task, storage=storage, study_name=study_name,
                                   run_dir=run_dir, max_trials=max_trials)
            set_threads(threads)  # the task may have imported torch
            runner = TrialRunner(ad, progress=progress, model_cls=getattr(ad, "model_cls", None),
                                 worker_label=label, new_run=new_run, check_setup=check_setup)
            summary = runner.run()
            if opened is not None:  # only now: reading runner.study before the dry run would create it
                opened["study"] = runner.study
        except Interrupted as exc:
            log.warning("worker %s interrupted (%s); its running trial is marked failed", label or os.getpid(),
                        exc.signal_name)
            return EXIT_INTERRUPTED if exc.signal_name == "SIGINT" else EXIT_OK
    line = (f"worker done: {summary.completed} trained, {summary.failed} failed, "
            f"{summary.repeats + summary.discarded} pruned; the study has {summary.study_complete} of "
            f"{runner.max_trials} trials complete ({summary.stop_reason or 'nothing left to run'})")
    if summary.budget_met:
        log.info(line)
        return EXIT_OK
    log.error(line)
    return EXIT_INCOMPLETE


def worker_command(config: str, *, study_name: str, run_dir: str | None, task: Any,
                   max_trials: int | None, threads: int | None, label: str, debug: bool = False,
                   output: tuple[str, ...] = ()) -> list[str]:
    # The storage URL travels in the environment (NAS_DISTILL_STORAGE), not on the command line, where
    # any user of the machine could read a password in it (ps).
    cmd = [sys.executable, "-m", "nas_distill.cli", "worker", str(config), "--study", study_name,
           "--label", label, "--launched-by-run"]
    if run_dir:
        cmd += ["--run-dir", str(run_dir)]
    if isinstance(task, str):
        cmd += ["--task", task]
    if max_trials:
        cmd += ["--max-trials", str(max_trials)]
    if threads:
        cmd += ["--threads", str(threads)]
    if debug:
        cmd.append("--debug")
    return cmd + list(output)


def prepare_study(config, *, task=None, storage=None, study_name=None, run_dir=None, max_trials=None):
    """Open (create) the study once before the workers start; returns (storage URL, name, run dir)."""
    from .autodistill import load_config

    data = read_config_file(config) if isinstance(config, (str, os.PathLike)) else dict(config)
    data, _ = split_task(data)
    cfg = load_config(data)
    study_mod.require_shared_storage(study_mod.resolve_storage_url(storage or cfg.study.storage,
                                                                   run_dir or cfg.study.run_dir))
    from .autodistill import AutoDistillation

    ad = AutoDistillation(lambda arch: arch, cfg, storage=storage, study_name=study_name,
                          run_dir=run_dir or cfg.study.run_dir, max_trials=max_trials)
    from . import breaker
    from .study import record_budget

    study = ad.study  # creates the study and records the config once
    breaker.rearm(study)  # a new run: an earlier circuit-breaker stop no longer holds
    record_budget(study, ad.max_trials)
    return ad.storage_url, ad.study_name, str(Path(ad.run_dir).resolve()), ad.max_trials


def preflight(config, *, task=None, storage=None, study_name=None, run_dir=None, max_trials=None) -> None:
    """The dry run, in the launching process, before the study exists: a broken setup is one
    ConfigError and no study is created (the workers then skip it). Trains the teacher here too, once,
    when the task trains it on first use."""
    from .runner import check_setup

    ad = build_autodistill(config, task=task, storage=storage, study_name=study_name, run_dir=run_dir,
                           max_trials=max_trials)
    check_setup(ad)
    del ad
    import gc

    gc.collect()


def run_local(
    config: str | os.PathLike,
    workers: int,
    *,
    task: Any = None,
    storage: str | None = None,
    study_name: str | None = None,
    run_dir: str | None = None,
    max_trials: int | None = None,
    threads: int | None = None,
    debug: bool = False,
    env: Mapping[str, str] | None = None,
    output: tuple[str, ...] = (),
    relay: bool = False,
) -> int:
    """Start ``workers`` worker subprocesses on this machine and wait for them.

    First the dry run, here (:func:`preflight`): a broken setup stops before the study exists. SIGINT /
    SIGTERM received here are forwarded to every worker (each fails its running trial and exits
    cleanly). ``output``: the log flags the workers get (``-q``, ``-v``, ``--log-format json``).
    ``relay``: the workers' lines pass through this process's stdout (under a live progress bar) instead
    of going to the terminal directly. Returns 0 when every worker exited with 0, 130 when interrupted,
    :data:`EXIT_INCOMPLETE` when the study stopped short of its budget, else 1.
    """
    preflight(config, task=task, storage=storage, study_name=study_name, run_dir=run_dir, max_trials=max_trials)
    url, name, folder, budget = prepare_study(config, task=task, storage=storage, study_name=study_name,
                                              run_dir=run_dir, max_trials=max_trials)
    threads = threads or default_threads(workers)
    procs: list[subprocess.Popen] = []
    relays: list[Any] = []
    base_env = dict(os.environ if env is None else env)
    interrupted: list[str] = []

    def forward(signum, frame):
        interrupted.append(signal.Signals(signum).name)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(workers):
            label = f"w{i}"
            child_env = dict(base_env, NAS_DISTILL_WORKER=label, OMP_NUM_THREADS=str(threads),
                             MKL_NUM_THREADS=str(threads), NAS_DISTILL_STORAGE=url,
                             **{PARENT_PID_ENV: str(os.getpid())})
            cmd = worker_command(str(config), study_name=name, run_dir=folder, task=task,
                                 max_trials=budget, threads=threads, label=label, debug=debug, output=output)
            if relay:
                proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, bufsize=1)
                relays.append(_relay_lines(proc.stdout))
            else:
                proc = subprocess.Popen(cmd, env=child_env)
            procs.append(proc)
        codes = []
        for p in procs:
            while True:
                try:
                    codes.append(p.wait())
                    break
                except KeyboardInterrupt:  # pragma: no cover - handler replaced above
                    continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        for thread in relays:
            thread.join(timeout=5)
    if interrupted:
        return EXIT_INTERRUPTED if interrupted[0] == "SIGINT" else EXIT_OK
    if all(c == 0 for c in codes):
        return EXIT_OK
    return EXIT_INCOMPLETE if EXIT_INCOMPLETE in codes else 1


def _relay_lines(pipe) -> Any:
    """Copy a worker's output lines to this process's stdout (whatever it is at the time of each line:
    a live progress bar redirects it), from a thread."""
    import threading

    def copy() -> None:
        for line in pipe:
            sys.stdout.write(line)
            sys.stdout.flush()
        pipe.close()

    thread = threading.Thread(target=copy, name="relay", daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------------------------------ progress
class ProgressPrinter:
    """One line per worker event (trial i of max, stage, ETA) on a TTY; silent otherwise."""

    def __init__(self, stream=None, enabled: bool | None = None):
        self.stream = stream or sys.stdout
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last: tuple | None = None

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        key = (p.trial_number, p.stage)
        if key == self._last:
            return
        self._last = key
        trial = f"trial #{p.trial_number}" if p.trial_number is not None else "idle"
        eta = f"  ETA {format_seconds(p.eta_s)}" if p.eta_s is not None and p.stage != "done" else ""
        extra = "".join(f"  {k}={v:.4g}" if isinstance(v, float) else f"  {k}={v}" for k, v in p.last.items())
        line = f"[{p.worker}] {p.done}/{p.max_trials} done  {trial}  {p.stage}{eta}{extra}"
        self.stream.write(line[:160] + "\n")
        self.stream.flush()


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass (used by tests and the CLI)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
