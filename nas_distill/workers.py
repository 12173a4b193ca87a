"""Worker processes: load the user's task (:mod:`nas_distill.task_entry`), run trials on the shared
study, stop cleanly on signals.

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
killed outright (they notice they were re-parented: :func:`watch_parent`). A worker killed outright
(``kill -9``, OOM killer, power loss) stops beating: after the grace period another worker's stale
sweep marks its trial FAIL (``WorkerLost``) and retries the architecture.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import breaker
from .config_file import config_and_task, read_config_file, split_task  # noqa: F401 - the last two: imported from here by tests
from .store.budget import record_budget
from .task_entry import build_autodistill, shared_settings

log = logging.getLogger(__name__)

EXIT_OK = 0
#: The worker stopped before the study met its budget (circuit breaker, out of architectures).
EXIT_INCOMPLETE = 3
EXIT_INTERRUPTED = 130


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

    _label_this_worker(label)
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
    return _worker_done(summary, runner.max_trials)


def _label_this_worker(label: str | None) -> None:
    if label:
        os.environ["NAS_DISTILL_WORKER"] = label
    elif not os.environ.get("NAS_DISTILL_WORKER"):
        # Workers started by hand or by docker compose: a unique label, so model-based samplers get
        # distinct seeds (autodistill.sampler_seed) instead of proposing the same archs in lock-step.
        import socket

        os.environ["NAS_DISTILL_WORKER"] = f"{socket.gethostname()}-{os.getpid()}"


def _worker_done(summary: Any, max_trials: int) -> int:
    """Log the worker's last line; its exit code."""
    stopped = f"{summary.stopped} stopped early, " if summary.stopped else ""
    line = (f"worker done: {summary.completed} trained, {stopped}{summary.failed} failed, "
            f"{summary.repeats + summary.discarded} pruned; the study has {summary.study_complete} of "
            f"{max_trials} trials complete ({summary.stop_reason or 'nothing left to run'})")
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
    from .autodistill import AutoDistillation

    data, _ = config_and_task(config)
    cfg = shared_settings(data, storage, run_dir)
    ad = AutoDistillation(lambda arch: arch, cfg, storage=storage, study_name=study_name,
                          run_dir=run_dir or cfg.study.run_dir, max_trials=max_trials)
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
    base_env = dict(os.environ if env is None else env)
    with _WorkerGroup(relay) as group:
        for i in range(workers):
            label = f"w{i}"
            child_env = dict(base_env, NAS_DISTILL_WORKER=label, OMP_NUM_THREADS=str(threads),
                             MKL_NUM_THREADS=str(threads), NAS_DISTILL_STORAGE=url,
                             **{PARENT_PID_ENV: str(os.getpid())})
            group.start(worker_command(str(config), study_name=name, run_dir=folder, task=task, max_trials=budget,
                                       threads=threads, label=label, debug=debug, output=output), child_env)
        codes = group.wait()
    if group.interrupted:
        return EXIT_INTERRUPTED if group.interrupted[0] == "SIGINT" else EXIT_OK
    if all(c == 0 for c in codes):
        return EXIT_OK
    return EXIT_INCOMPLETE if EXIT_INCOMPLETE in codes else 1


class _WorkerGroup:
    """Worker subprocesses that receive the SIGINT / SIGTERM this process receives, and are stopped
    (terminated, killed after 30 s) if still running when the group is left."""

    def __init__(self, relay: bool):
        self.relay = relay
        self.procs: list[subprocess.Popen] = []
        self.relays: list[threading.Thread] = []
        self.interrupted: list[str] = []  # the names of the signals forwarded
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _WorkerGroup:
        self._previous = {s: signal.signal(s, self._forward) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _forward(self, signum, frame) -> None:
        self.interrupted.append(signal.Signals(signum).name)
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signum)

    def start(self, cmd: list[str], env: dict[str, str]) -> None:
        if self.relay:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1)
            self.relays.append(_relay_lines(proc.stdout))
        else:
            proc = subprocess.Popen(cmd, env=env)
        self.procs.append(proc)

    def wait(self) -> list[int]:
        """Every worker's exit code, in start order."""
        codes = []
        for p in self.procs:
            while True:
                try:
                    codes.append(p.wait())
                    break
                except KeyboardInterrupt:  # pragma: no cover - handler replaced above
                    continue
        return codes

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        for thread in self.relays:
            thread.join(timeout=5)


def _relay_lines(pipe) -> threading.Thread:
    """Copy a worker's output lines to this process's stdout (whatever it is at the time of each line:
    a live progress bar redirects it), from a thread."""
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

