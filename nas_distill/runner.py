"""The trial loop: ask the shared study -> build -> train -> evaluate -> tell, until the budget is spent.

One :class:`TrialRunner` is one worker. ``AutoDistillation.search()`` runs one in-process; ``nas-distill
run --workers N`` runs one per process; under ``torch.distributed`` every rank runs one and rank 0 alone
talks to the study (it broadcasts each architecture as JSON bytes in a tensor, so no pickle crosses the
wire; all ranks train; rank 0 tells).

Per trial, in order:

1. Sweep stale trials (dead workers) to FAIL; their archs come back as WAITING retries.
2. Ask the searcher (``advisor``) for an architecture; the trial's heartbeat starts at once.
3. Budget (:func:`nas_distill.study.budget_position`): no trial is asked while every slot is held by a
   running trial; a trial trains only if fewer than ``max_trials`` counted trials come first; otherwise
   it waits for a slot, or, once the budget is spent (a last-moment race between workers), it is given
   up (PRUNED, ``pruned_reason``, its point released) and the worker stops. While waiting, if a retry
   (WAITING trial) exists, ours is given up the same way and the worker asks again, which pops the
   retry. The study never ends with more than ``max_trials`` COMPLETE.
4. Answer from the store: an arch that is already COMPLETE (a model-based sampler may propose it again),
   or that already failed for a reason of its own (``InvalidArchitecture``, NaN, OOM, ...), is not
   trained again: the trial is told PRUNED with ``duplicate_of`` (it holds the point, costs no slot).
5. Build (``model_builder(arch)``; with ``model_cls``: ``save_pretrained`` + ``from_pretrained``), train,
   evaluate, save the student to the artifact store; record ``arch``, ``params``, every metric,
   ``timings``, ``worker``, ``artifact_id``; tell COMPLETE with the raw metric values.
   Any exception -> FAIL with ``error_type`` / ``error``, and the search goes on. ``KeyboardInterrupt``
   (Ctrl-C, or SIGTERM as turned into one by :mod:`nas_distill.workers`) -> FAIL with ``error_type=
   'Interrupted'``, ``error='interrupted ...'``, a retry is enqueued, and the interrupt propagates.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import breaker
from . import console
from . import study as study_mod
from .engines import engine_of, parameter_count
from .engines.students import rebuild_with, save_student_artifact

log = logging.getLogger(__name__)

#: Consecutive trials answered from the store after which a worker concludes the sampler is stuck.
MAX_CONSECUTIVE_REPEATS = 200


class Interrupted(KeyboardInterrupt):
    """A worker was asked to stop (SIGTERM / SIGINT). ``signal_name`` says which."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name


@dataclass
class Progress:
    """What a progress line shows; passed to the runner's ``progress`` callback."""

    worker: str
    trial_number: int | None
    done: int
    max_trials: int
    stage: str
    eta_s: float | None = None
    last: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    """What one worker did."""

    completed: int = 0
    failed: int = 0
    repeats: int = 0
    discarded: int = 0
    stop_reason: str = ""
    #: COMPLETE trials of the whole study (every worker's) when this worker stopped.
    study_complete: int = 0
    #: The study ended with its budget: ``max_trials`` counted COMPLETE trials, or every point of a
    #: smaller space COMPLETE. False after a circuit-breaker stop or a search that ran out of archs.
    budget_met: bool = False


class TrialRunner:
    """Run trials of ``ad`` (an :class:`~nas_distill.autodistill.AutoDistillation`) against its study.

    Args:
        ad: the AutoDistillation whose searcher, builder, train / eval functions and study are used.
        max_trials: COMPLETE trials the study should end with (default ``ad.max_trials``).
        artifact_store: where trained students go (default ``<run_dir>/artifacts``); ``False``: nowhere.
        progress: called with a :class:`Progress` at each stage.
        poll_interval: seconds between budget / exhaustion re-checks while waiting on other workers.
        model_cls: the seed's ``model_cls`` (rebuild the student with ``from_pretrained``).
        new_run: this loop starts a run (``nas-distill run``, ``search()``), not a worker joining one:
            the circuit breaker is re-armed (see :mod:`nas_distill.breaker`).
        stop_after_failures: the breaker's K (default: the config's ``study.stop_after_failures``).
        check_setup: run the dry run first (off only where the process that started this one ran it).
    """

    def __init__(
        self,
        ad,
        *,
        max_trials: int | None = None,
        artifact_store: Any = None,
        progress: Callable[[Progress], None] | None = None,
        poll_interval: float = 0.5,
        model_cls: Any = None,
        worker_label: str | None = None,
        new_run: bool = False,
        stop_after_failures: int | None = None,
        check_setup: bool = True,
    ):
        self.ad = ad
        self.new_run = new_run
        self.check_setup = check_setup
        if stop_after_failures is None:
            study_settings = getattr(getattr(ad, "conf", None), "study", None)
            stop_after_failures = getattr(study_settings, "stop_after_failures", breaker.DEFAULT_K)
        self.stop_after_failures = int(stop_after_failures)
        self.max_trials = int(max_trials if max_trials is not None else ad.max_trials)
        self._artifact_store = artifact_store
        self.progress = progress
        self.poll_interval = poll_interval
        self.model_cls = model_cls
        self.worker_label = worker_label or os.environ.get("NAS_DISTILL_WORKER") or f"pid{os.getpid()}"
        self.summary = RunSummary()
        self._trial_seconds: list[float] = []
        self._done = 0
        self._dist = _dist_info()
        self._last_sweep = -1e9
        self._last_environment: str | None = None  # the previous trial's environmental failure, if any

    # ------------------------------------------------------------------ helpers
    @property
    def study(self):
        return self.ad.study

    @property
    def artifact_store(self):
        if self._artifact_store is None:
            self._artifact_store = study_mod.artifact_store(self.ad.run_dir)
        return self._artifact_store or None

    def _report(self, stage: str, number: int | None = None, **last: Any) -> None:
        if self.progress is None:
            return
        eta = None
        if self._trial_seconds:
            remaining = max(0, self.max_trials - self._done)
            per_trial = sum(self._trial_seconds) / len(self._trial_seconds)
            running = max(1, getattr(self, "_running_workers", 1))
            eta = remaining * per_trial / running
        try:
            self.progress(Progress(self.worker_label, number, self._done, self.max_trials, stage, eta, last))
        except Exception:  # noqa: BLE001 - a broken progress printer must not fail a trial
            log.debug("progress callback failed", exc_info=True)

    # ------------------------------------------------------------------ main loop
    def run(self) -> RunSummary:
        """Run trials until the study holds ``max_trials`` COMPLETE trials or the space is exhausted.

        First the dry run (:func:`check_setup`): a data, model or device problem is one ConfigError
        now, before the study is opened or any trial exists, whichever entry point started this loop.
        """
        if self.check_setup:
            check_setup(self.ad)
        self.study  # noqa: B018 - opened first: an unreachable storage is reported before a folder is made
        self._check_folders()
        rank, world = self._dist
        if rank == 0:
            if self.new_run:
                breaker.rearm(self.study)
            study_mod.record_budget(self.study, self.max_trials)
        if world > 1:
            return self._run_distributed(rank)
        while True:
            step = self._next_trial()
            if step is None:
                break
            trial, arch, heartbeat = step
            try:
                self._run_trial(trial, arch)
            finally:
                heartbeat.__exit__(None, None, None)
        self._settle()
        self._conclude()
        self._report("done")
        return self.summary

    def _conclude(self) -> None:
        """Fill in the summary's study-wide figures: was the budget met?"""
        from optuna.trial import TrialState

        trials = self.study._storage.get_all_trials(self.study._study_id, deepcopy=False,
                                                    states=(TrialState.COMPLETE,))
        self.summary.study_complete = study_mod.counted_complete(trials)
        space = getattr(self.ad.advisor, "space", None)
        wanted = min(self.max_trials, len(space)) if space is not None else self.max_trials
        self.summary.budget_met = self.summary.study_complete >= wanted or (
            space is not None and len({json.dumps(t.params, sort_keys=True) for t in trials}) >= len(space))

    def _check_folders(self) -> None:
        """The run folder and the artifact store exist and take a file, before any trial trains: a
        trial whose student cannot be saved would be trained for nothing."""
        field = "auto_distillation.study.run_dir"
        study_mod.check_writable(self.ad.run_dir, field)
        if self._artifact_store is None:  # the default store, <run_dir>/artifacts
            study_mod.check_writable(Path(self.ad.run_dir) / "artifacts", field)
        base = getattr(self.artifact_store, "_base_path", None)  # a FileSystemArtifactStore's folder
        if base is not None:
            study_mod.check_writable(base, field)

    def _settle(self, poll: float = 0.5) -> None:
        """Budget spent: leave no trial RUNNING or WAITING behind.

        A trial still RUNNING now is another worker's trial on its way to being discarded (seconds), or
        the trial of a dead worker (killed during its budget wait, or before the budget was found
        spent): stay until the stale sweep has failed it, a grace period and a beat at most. A WAITING
        retry (of a dead trial swept near the end) can no longer get a slot: it is recorded PRUNED
        (``pruned_reason``) instead of being left to a next run.
        """
        if not self.summary.stop_reason.startswith("budget reached"):
            return
        from optuna.trial import TrialState

        interval, grace, _ = study_mod._heartbeat_settings(self.study._storage)
        if interval is None and study_mod._rdb(self.study._storage) is None:
            return  # no heartbeats: a dead trial cannot be told from a live one
        deadline = time.monotonic() + float(grace or 30) + 2 * float(interval or 10) + 2
        storage, study_id = self.study._storage, self.study._study_id
        while True:
            for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
                try:
                    from .search.samplers import CLAIM_KEY, RELEASED

                    study_mod.set_user_attrs(self.study, t._trial_id, {
                        "pruned_reason": "budget reached before this retry could run"})
                    storage.set_trial_system_attr(t._trial_id, CLAIM_KEY, RELEASED)
                    storage.set_trial_state_values(t._trial_id, state=TrialState.PRUNED)
                except Exception as exc:  # noqa: BLE001 - popped or failed by another worker meanwhile
                    log.debug("discarding waiting trial %d: %s", t.number, exc)
            if not storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                return
            if time.monotonic() > deadline:
                log.warning("budget reached, but trials are still RUNNING after %.0f s; leaving them",
                            float(grace or 30) + 2 * float(interval or 10))
                return
            time.sleep(poll)
            self._sweep()

    def _next_trial(self):
        """Ask for the next trial to train: ``(trial, arch, heartbeat)``, or None to stop."""
        study = self.study
        repeats = 0
        while True:
            self._sweep()
            reason = breaker.stopped(study)
            if reason:
                self.summary.stop_reason = f"study stopped by the circuit breaker: {reason}"
                return None
            gate = self._budget_gate()
            if gate == "spent":
                return None
            if gate == "full":
                # Every slot is taken by a trial that is still running: asking now would only create a
                # trial to throw away. Wait until one finishes (budget spent) or fails (a slot frees).
                self._report("waiting")
                time.sleep(self.poll_interval)
                continue
            try:
                with warnings.catch_warnings():
                    # Optuna warns that heartbeats are meant for study.optimize; ours run their own thread.
                    warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
                    arch = self.ad._propose()
            except Exception as exc:
                from .errors import SearchSpaceExhausted

                if not isinstance(exc, SearchSpaceExhausted):
                    raise
                # Every point is held, but a held point may be a WAITING retry that only a study.ask()
                # pops (the searcher refuses to ask once the space is held): pop it ourselves.
                arch = self._pop_waiting()
                if arch is None:
                    if self._wait_for_others(f"search space exhausted ({exc})"):
                        continue
                    return None
            trial = self.ad.advisor.current_trial
            # The first beat also records who runs which arch (one transaction on RDB storages).
            heartbeat = study_mod.Heartbeat(study, trial._trial_id,
                                            attrs={"arch": arch, "worker": _worker(self)}).__enter__()
            try:
                verdict = self._admit(trial, arch)
            except BaseException:
                self._fail(trial, "Interrupted", "interrupted while waiting for a budget slot", retry=True)
                heartbeat.__exit__(None, None, None)
                raise
            if verdict == "train":
                return trial, arch, heartbeat
            heartbeat.__exit__(None, None, None)
            if verdict == "stop":
                return None
            if verdict == "yield":
                continue
            repeats += 1  # answered from the store
            if repeats >= MAX_CONSECUTIVE_REPEATS:
                self.summary.stop_reason = (
                    f"the sampler proposed {repeats} already-known architectures in a row; stopping"
                )
                log.warning(self.summary.stop_reason)
                return None

    def _sweep(self) -> None:
        """Fail stale trials (dead workers), at most once per tenth of the grace period (at least 1 s
        apart): staleness is measured in grace periods, and a sweep is a read of every RUNNING trial.
        With cheap trials and many workers a once-a-second sweep was one storage read per trial
        (``bench/load.py``); a tenth of the grace period delays the detection of a dead worker by 10%."""
        now = time.monotonic()
        if now - self._last_sweep >= self._sweep_interval():
            self._last_sweep = now
            study_mod.fail_stale_trials(self.study)

    def _sweep_interval(self) -> float:
        interval = getattr(self, "_sweep_every", None)
        if interval is None:
            _, grace, _ = study_mod._heartbeat_settings(self.study._storage)
            interval = self._sweep_every = max(1.0, float(grace or 0) / 10)
        return interval

    def _budget_gate(self) -> str:
        """Before asking: ``'spent'`` (stop), ``'full'`` (every slot is held by a running trial: wait) or
        ``'open'`` (ask). Reads the study only near the end of the search.

        ``self._done`` is a lower bound of the counted COMPLETE trials (they never decrease); while it
        plus the trials seen running is below ``max_trials`` no read is needed. A WAITING retry keeps
        the gate open: only an ask pops it.
        """
        # The first check of a worker always reads: a worker started on a study whose budget is already
        # spent (the same command run again) must stop before asking, not leave a discarded trial behind.
        first = not getattr(self, "_budget_read", False)
        if not first and self._done < self.max_trials and \
                self._done + getattr(self, "_running_workers", 1) < self.max_trials:
            return "open"
        self._budget_read = True
        from optuna.trial import TrialState

        trials = self.study._storage.get_all_trials(
            self.study._study_id, deepcopy=False,
            states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))
        self._done = study_mod.counted_complete(trials)
        if self._done >= self.max_trials:
            self.summary.stop_reason = f"budget reached: {self.max_trials} trials complete"
            return "spent"
        running = sum(1 for t in trials if t.state == TrialState.RUNNING and study_mod.is_counted(t))
        self._running_workers = running
        if self._done + running >= self.max_trials and \
                not any(t.state == TrialState.WAITING for t in trials):
            return "full"
        return "open"

    def _pop_waiting(self) -> dict | None:
        """Ask the study for its oldest WAITING trial (an enqueued retry); its arch, or None."""
        from optuna.trial import TrialState

        study = self.study
        if not study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
            return None
        advisor = self.ad.advisor
        space = getattr(advisor, "space", None)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
            trial = study.ask()
        frozen = study._storage.get_trial(trial._trial_id)
        # an enqueue_trial() retry has fixed_params; a RetryStaleTrial copy has its params already
        fixed = frozen.system_attrs.get("fixed_params") or frozen.params
        if not fixed or space is None:
            # Another worker popped it first; we got a fresh trial: give it back.
            self._discard(trial, "another worker took the retry this trial was asked for", tell=study.tell)
            return None
        try:
            for key, values in zip(space.keys, space.values):
                trial.suggest_categorical(key, list(values))
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        advisor.current_trial = trial
        return {key: trial.params[key] for key in space.keys}

    def _wait_for_others(self, reason: str) -> bool:
        """Nothing new to ask: wait while other workers' trials might still free points. False = stop."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING,
                                                               TrialState.COMPLETE))
        if study_mod.counted_complete(trials) >= self.max_trials:
            self.summary.stop_reason = f"budget reached: {self.max_trials} trials complete"
            return False
        if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
            self._report("waiting")
            time.sleep(self.poll_interval)
            return True
        self.summary.stop_reason = reason
        return False

    def _admit(self, trial, arch) -> str:
        """``'train'``, ``'repeat'`` (answered from the store) or ``'stop'`` (trial discarded)."""
        from optuna.trial import TrialState

        # The first check reuses the claim's read of the study (made after this trial existed and held
        # its point, so it sees every trial the budget rule must count); later ones read afresh.
        take = getattr(getattr(self.ad.advisor, "sampler", None), "take_snapshot", None)
        snapshot = take(trial.number) if callable(take) else None
        while True:
            ahead, complete, trials = study_mod.budget_position(self.study, trial.number, snapshot)
            snapshot = None
            self._running_workers = sum(1 for t in trials if t.state == TrialState.RUNNING)
            self._done = complete
            if complete >= self.max_trials:
                self._discard(trial, f"budget reached: {complete} of {self.max_trials} trials complete")
                self.summary.stop_reason = f"budget reached: {self.max_trials} trials complete"
                return "stop"
            if ahead < self.max_trials:
                break
            if any(t.state == TrialState.WAITING for t in trials):
                # A retry of a dead / interrupted trial holds a slot: give ours up and pop the retry.
                self._discard(trial, "gave its slot to a waiting retry")
                return "yield"
            self._report("waiting", trial.number)
            time.sleep(self.poll_interval)
            self._sweep()
        known = self._known(arch, trial.number, trials)
        if known is not None:
            self._answer_from_store(trial, arch, known)
            return "repeat"
        return "train"

    def _known(self, arch: dict, number: int, trials) -> Any:
        """A COMPLETE trial of the same arch, else a lower-numbered RUNNING one training it now, else one
        that failed for a reason of the arch's own."""
        from optuna.trial import TrialState

        # One pass over the study (it runs once per trial, and the study grows to thousands of trials),
        # the arch compared first: it rules out nearly every trial at its first key.
        # Another worker may be training this arch right now (two model-based proposals can coincide):
        # the lower number trains, so two such trials never both step aside; if that worker dies, its
        # trial is failed and retried like any other.
        complete = running = failed = None
        not_arch_errors = study_mod.RETRYABLE_ERRORS + ("Discarded",)
        for t in trials:
            if t.number == number or not _same_arch(t.params, arch):
                continue
            if t.state == TrialState.COMPLETE:
                if complete is None or t.number < complete.number:
                    complete = t
            elif t.state == TrialState.RUNNING and t.number < number:
                if running is None or t.number < running.number:
                    running = t
            elif t.state == TrialState.FAIL and failed is None:
                error_type = t.user_attrs.get("error_type")
                if error_type and error_type not in not_arch_errors:
                    failed = t
        return next((t for t in (complete, running, failed) if t is not None), None)

    def _answer_from_store(self, trial, arch, known) -> None:
        from optuna.trial import TrialState

        attrs: dict[str, Any] = {"arch": arch, "duplicate_of": known.number, "worker": _worker(self)}
        if known.state == TrialState.COMPLETE:
            attrs.update({k: known.user_attrs[k] for k in ("params",) if k in known.user_attrs})
            for name, value in zip(self.ad.metrics, known.values or []):
                attrs[name] = value
            attrs["note"] = f"same architecture as COMPLETE trial {known.number}: not trained again"
        elif known.state == TrialState.RUNNING:
            attrs["note"] = f"same architecture is being trained by trial {known.number}: not trained twice"
        else:
            attrs["error_type"] = known.user_attrs.get("error_type")
            attrs["error"] = f"same architecture failed in trial {known.number}: {known.user_attrs.get('error')}"
        study_mod.set_user_attrs(self.study, trial._trial_id, attrs)
        self._tell(trial, state=TrialState.PRUNED)
        self.summary.repeats += 1
        console.trial_pruned(trial.number, attrs.get("note") or attrs["error"])

    def _discard(self, trial, reason: str, tell=None) -> None:
        """Give a trial up before it trained (a budget race, a slot handed to a retry): PRUNED with
        ``pruned_reason``, and its point released, so grid and random hand the arch out again."""
        from optuna.trial import TrialState

        from .search.samplers import CLAIM_KEY, RELEASED

        try:
            study_mod.set_user_attrs(self.study, trial._trial_id, {"pruned_reason": reason})
            self.study._storage.set_trial_system_attr(trial._trial_id, CLAIM_KEY, RELEASED)
            (tell or self._tell)(trial, state=TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 - already finished by a stale sweep: nothing to undo
            log.debug("discarding trial %d: %s", trial.number, exc)
            return
        console.trial_pruned(trial.number, f"not trained: {reason}")
        self.summary.discarded += 1

    def _tell(self, trial, values=None, state=None):
        advisor = self.ad.advisor
        if hasattr(advisor, "tell"):
            return advisor.tell(trial, values, state)
        return self.study.tell(trial, values, state)

    def _fail(self, trial, error_type: str, message: str, *, retry: bool, extra: dict | None = None) -> None:
        from optuna.trial import TrialState

        try:
            attrs = {"error_type": error_type, "error": message[:2000]}
            attrs.update(extra or {})
            study_mod.set_user_attrs(self.study, trial._trial_id, attrs)
            frozen = self._tell(trial, state=TrialState.FAIL)
        except Exception as exc:  # noqa: BLE001 - e.g. a stale sweep failed it first
            log.warning("could not record the failure of trial %d: %s", trial.number, exc)
            return
        if retry and frozen is not None:
            try:
                study_mod.retry_trial(self.study, frozen)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not enqueue a retry of trial %d: %s", trial.number, exc)

    def _check_breaker(self) -> None:
        """After a failure of ours: trip the circuit breaker when the study's failures say the setup is
        broken (see :mod:`nas_distill.breaker`); every worker stops before its next ask."""
        try:
            breaker.check(self.study, self.stop_after_failures, self.worker_label)
        except Exception as exc:  # noqa: BLE001 - the breaker must never fail a trial of its own
            log.warning("circuit breaker check failed: %s", exc)

    # ------------------------------------------------------------------ one trial
    def _run_trial(self, trial, arch: dict) -> None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        number = trial.number
        started = time.perf_counter()
        timings: dict[str, float] = {}
        model = None
        console.trial_started(number, arch)
        try:
            model, metrics, values = self._build_train_eval(arch, timings, number)
            attrs: dict[str, Any] = {}
            count = parameter_count(model, metrics)
            if count is not None:
                attrs["params"] = count
            for name, value in zip(self.ad.metrics, values):
                attrs[name] = value
            self.ad.arch_metrics.record_trained(arch, dict(zip(self.ad.metrics, values)))
            if self.artifact_store is not None:
                t0 = time.perf_counter()
                self._report("save", number)
                artifact_id = save_student_artifact(model, arch, self.artifact_store, trial,
                                                    getattr(self.ad, "preprocessor", None))
                if artifact_id is not None:
                    attrs["artifact_id"] = artifact_id
                    timings["save"] = round(time.perf_counter() - t0, 4)
            timings["total"] = round(time.perf_counter() - started, 4)
            attrs["timings"] = timings
            study_mod.set_user_attrs(self.study, trial._trial_id, attrs)
            self._tell(trial, values)
            self._last_environment = None
            self.summary.completed += 1
            self._done += 1
            self._trial_seconds.append(time.perf_counter() - started)
            shown = dict(zip(self.ad.metrics, values))
            if "params" in attrs and "params" not in shown:
                shown["params"] = attrs["params"]
            console.trial_finished(number, shown, time.perf_counter() - started)
            self._report("complete", number, **dict(zip(self.ad.metrics, values)))
        except UpdateFinishedTrialError:
            log.warning("trial %d was finished by another worker (stale?); its result is dropped", number)
        except KeyboardInterrupt as exc:
            name = getattr(exc, "signal_name", "SIGINT")
            timings["total"] = round(time.perf_counter() - started, 4)
            self._fail(trial, "Interrupted", f"interrupted ({name})", retry=True, extra={"timings": timings})
            self.summary.failed += 1
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of user code is a FAIL, the search goes on
            from .errors import ConfigError, EnvironmentFailure, environment_cause

            timings["total"] = round(time.perf_counter() - started, 4)
            kind = type(exc).__name__
            message = str(exc) or kind
            environment = environment_cause(exc)
            if environment is not None:
                # The machine failed, not the architecture: the arch is retried, never answered from
                # the store as failed.
                kind, message = "Environment", f"environment: {environment}: {message}"
            console.trial_failed(number, kind, message, time.perf_counter() - started)
            self._fail(
                trial, kind, message, retry=isinstance(exc, ConfigError) or environment is not None,
                extra={"timings": timings, "traceback": traceback.format_exc()[-4000:]},
            )
            self.summary.failed += 1
            self._report("failed", number, error=kind)
            if isinstance(exc, ConfigError):
                # The setup is wrong (missing teacher, data, ...), not the architecture: every trial
                # would fail the same way. Stop; the arch is enqueued again for the fixed run.
                raise
            if environment is not None and environment == self._last_environment:
                self.summary.stop_reason = f"the same environmental failure twice: {message}"
                raise EnvironmentFailure(f"stopping this worker: the same environmental failure twice in "
                                         f"a row ({message}); their architectures will be retried",
                                         exc) from exc
            self._last_environment = environment
            self._check_breaker()
        finally:
            self.ad.student_model = None
            owner = engine_of(model)
            del model
            # Free the student's memory now, before the next one is built. Not
            # keras.backend.clear_session(): it would also reset Keras's global settings (dtype policy,
            # distribution, seed generator) under the live teacher and clear TF's kernel cache.
            if owner is not None:
                owner.release()

    def _build_train_eval(self, arch: dict, timings: dict, number: int | None):
        """Build, train and evaluate one student; returns ``(model, metrics, raw metric values)``."""
        t0 = time.perf_counter()
        self._report("build", number)
        model = self.ad.model_builder(dict(arch))
        if self.model_cls is not None:
            model = rebuild_with(model, self.model_cls, self.ad.run_dir)
        self.ad.student_model = model
        timings["build"] = round(time.perf_counter() - t0, 4)
        if self.ad._estimate_overridden():
            t0 = time.perf_counter()
            self._report("estimate", number)
            metrics = self.ad.estimate(model)
            timings["estimate"] = round(time.perf_counter() - t0, 4)
        else:
            t0 = time.perf_counter()
            self._report("train", number)
            model = self.ad._train(model)  # the model train_func returned, if it returned one
            self.ad.student_model = model
            timings["train"] = round(time.perf_counter() - t0, 4)
            t0 = time.perf_counter()
            self._report("eval", number)
            metrics = self.ad._evaluate(model)
            timings["eval"] = round(time.perf_counter() - t0, 4)
        values = self.ad.raw_metric_values(metrics)
        return model, metrics, values

    # ------------------------------------------------------------------ torch.distributed
    def _run_distributed(self, rank: int) -> RunSummary:
        """Rank 0 asks and tells; every rank trains the same architecture."""
        import torch
        import torch.distributed as dist

        while True:
            step = None
            if rank == 0:
                step = self._next_trial()
                message = {"stop": True} if step is None else {"number": step[0].number, "arch": step[1]}
            else:
                message = None
            message = broadcast_json(message, src=0)
            if message.get("stop"):
                break
            arch = message["arch"]
            if rank == 0:
                trial, _, heartbeat = step
                try:
                    self._run_trial_rank0(trial, arch, dist, torch)
                finally:
                    heartbeat.__exit__(None, None, None)
            else:
                ok = 1
                try:
                    model, _, _ = self._build_train_eval(arch, {}, message["number"])
                    del model
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001
                    log.warning("rank %d: trial %d failed: %s", rank, message["number"], exc)
                    ok = 0
                flag = torch.tensor([ok], dtype=torch.int64)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                self.ad.student_model = None
                gc.collect()
        if rank == 0:
            self._conclude()
        else:
            self.summary.budget_met = True  # rank 0 alone talks to the study, and says how it ended
        self._report("done")
        return self.summary

    def _run_trial_rank0(self, trial, arch, dist, torch) -> None:
        """Rank 0's trial: like :meth:`_run_trial`, plus an all-reduce of every rank's success."""
        original = self._build_train_eval

        def build_train_eval_synced(arch_, timings, number):
            ok, error = 1, None
            try:
                out = original(arch_, timings, number)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - re-raised after the collective, below
                ok, error, out = 0, exc, None
            flag = torch.tensor([ok], dtype=torch.int64)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if error is not None:
                raise error
            if int(flag.item()) == 0:
                raise RuntimeError("another rank failed this trial (see its log)")
            return out

        self._build_train_eval = build_train_eval_synced  # type: ignore[method-assign]
        try:
            self._run_trial(trial, arch)
        finally:
            self._build_train_eval = original  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------- helpers
def check_setup(ad) -> None:
    """The dry run (:mod:`nas_distill.dryrun`, then :mod:`nas_distill.rehearsal`): a data, model or
    device problem is one ConfigError now, before the study is opened or any trial exists."""
    from .dryrun import dry_run
    from .rehearsal import rehearse

    console.step_started("dry run", "the data, the models and a few students of the space")
    t0 = time.perf_counter()
    dry_run(ad)
    rehearse(ad)
    log.info("dry run passed in %.1f s", time.perf_counter() - t0)


def _same_arch(params: dict, arch: dict) -> bool:
    # A plain loop, not all(<generator>): called for every trial of the study per trial (see _known).
    for key, value in arch.items():
        if key not in params:
            return False
        other = params[key]
        if other != value or type(other) is not type(value):
            return False
    return True


def _worker(runner: TrialRunner) -> dict[str, Any]:
    ident = study_mod.worker_identity()
    ident["worker"] = runner.worker_label
    rank, world = runner._dist
    if world > 1:
        ident["world_size"] = world
    return ident


def _dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised torch.distributed group, else ``(0, 1)``.

    Only looks when torch is already imported: a process that never imported torch is not distributed.
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return 0, 1
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_json(obj: Any, src: int = 0) -> Any:
    """Broadcast a JSON-able object from ``src`` to every rank as UTF-8 bytes in a uint8 tensor.

    Used instead of ``broadcast_object_list``, which pickles.
    """
    import torch
    import torch.distributed as dist

    if dist.get_rank() == src:
        payload = json.dumps(obj).encode("utf-8")
        size = torch.tensor([len(payload)], dtype=torch.int64)
    else:
        payload = b""
        size = torch.tensor([0], dtype=torch.int64)
    dist.broadcast(size, src=src)
    n = int(size.item())
    if dist.get_rank() == src:
        buffer = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    else:
        buffer = torch.empty(n, dtype=torch.uint8)
    dist.broadcast(buffer, src=src)
    return json.loads(bytes(buffer.tolist()).decode("utf-8")) if dist.get_rank() != src else obj
