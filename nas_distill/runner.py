"""The trial loop: ask the shared study -> admit -> train -> tell, until the budget is spent.

One :class:`TrialRunner` is one worker. ``AutoDistillation.search()`` runs one in-process; ``nas-distill
run --workers N`` runs one per process; under ``torch.distributed`` every rank runs one and rank 0 alone
talks to the study (:mod:`nas_distill.distributed`).

Per trial, in order:

1. Sweep stale trials (dead workers) to FAIL; their archs come back as WAITING retries.
2. Ask the searcher for an architecture; the trial's heartbeat beats while the trial is
   admitted and trained.
3. Admit (:mod:`nas_distill.admission`). Budget: no trial is asked while every slot is held by a
   running trial; a trial trains only if fewer than ``max_trials`` counted trials come first; otherwise
   it waits for a slot, or, once the budget is spent (a last-moment race between workers), it is given
   up (PRUNED, ``pruned_reason``, its point released) and the worker stops. While waiting, if a retry
   (WAITING trial) exists, ours is given up the same way and the worker asks again, which pops the
   retry. The study never ends with more than ``max_trials`` COMPLETE. Then the answer from the store:
   an arch that is already COMPLETE (a model-based sampler may propose it again), or that already
   failed for a reason of its own (``InvalidArchitecture``, NaN, OOM, ...), is not trained again: the
   trial is told PRUNED with ``duplicate_of`` (it holds the point, costs no slot).
4. Train: build (``model_builder(arch)``; with ``model_cls``: ``save_pretrained`` + ``from_pretrained``),
   train, evaluate, save the student to the artifact store.
5. Tell: record ``arch``, ``n_params``, every metric, ``timings``, ``worker``, ``artifact_id``
   (:mod:`nas_distill.trial_record`); tell COMPLETE with the raw metric values. Any exception -> FAIL
   with ``error_type`` / ``error``, and the search goes on. ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM as
   turned into one by :mod:`nas_distill.workers`) -> FAIL with ``error_type='Interrupted'``,
   ``error='interrupted ...'``, a retry is enqueued, and the interrupt propagates.

At the end (:mod:`nas_distill.run_end`): no trial is left RUNNING or WAITING once the budget is spent,
and the summary says whether the study met its budget.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from . import admission, breaker, console, distributed, run_end, rungs, trial_record
from .engines import engine_of, parameter_count
from .engines.students import rebuild_with, save_student_artifact
from .errors import ConfigError, EnvironmentFailure, SearchSpaceExhausted
from .store import Heartbeat, StudyStore, artifact_store, check_writable, store_of
from .store.budget import record_budget
from .store.optuna_internals import trial_id
from .vocabulary import EARLY_STOP_ATTR

log = logging.getLogger(__name__)

#: Consecutive trials answered from the store after which a worker concludes the sampler is stuck.
MAX_CONSECUTIVE_REPEATS = 200

#: What admission decided for an asked trial (see :meth:`TrialRunner.loop`).
TRAIN, REPEAT, YIELD, STOP = "train", "repeat", "yield", "stop"


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
    #: trials the pruner stopped at a rung
    stopped: int = 0
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
        self.budget = admission.Budget(int(max_trials if max_trials is not None else ad.max_trials))
        self._artifact_store = artifact_store
        self.progress = progress
        self.poll_interval = poll_interval
        self.model_cls = model_cls
        self.worker_label = worker_label or os.environ.get("NAS_DISTILL_WORKER") or f"pid{os.getpid()}"
        self.summary = RunSummary()
        self._trial_seconds: list[float] = []
        self._rank, self._world = distributed.rank_and_world()
        self._store: StudyStore | None = None  # the study's storage handle, once the study is open
        self._last_sweep = -1e9
        self._sweep_every: float | None = None  # read from the storage's heartbeat settings on first use
        self._last_environment: str | None = None  # the previous trial's environmental failure, if any

    # ------------------------------------------------------------------ helpers
    @property
    def study(self):
        return self.ad.study

    @property
    def store(self) -> StudyStore:
        if self._store is None:
            self._store = store_of(self.study)
        return self._store

    @property
    def max_trials(self) -> int:
        return self.budget.max_trials

    @property
    def artifact_store(self):
        if self._artifact_store is None:
            self._artifact_store = artifact_store(self.ad.run_dir)
        return self._artifact_store or None

    def _report(self, stage: str, number: int | None = None, **last: Any) -> None:
        if self.progress is None:
            return
        eta = None
        if self._trial_seconds:
            remaining = max(0, self.max_trials - self.budget.done)
            per_trial = sum(self._trial_seconds) / len(self._trial_seconds)
            eta = remaining * per_trial / max(1, self.budget.running)
        try:
            self.progress(Progress(self.worker_label, number, self.budget.done, self.max_trials, stage, eta, last))
        except Exception:  # noqa: BLE001 - a broken progress printer must not fail a trial
            log.debug("progress callback failed", exc_info=True)

    def _worker(self) -> dict[str, Any]:
        return trial_record.worker_attrs(self.worker_label, self._world)

    # ------------------------------------------------------------------ the run
    def run(self) -> RunSummary:
        """Run trials until the study holds ``max_trials`` COMPLETE trials or the space is exhausted.

        First the dry run (:func:`check_setup`): a data, model or device problem is one ConfigError
        now, before the study is opened or any trial exists, whichever entry point started this loop.
        """
        if self.check_setup:
            check_setup(self.ad)
        if self._world > 1 and rungs.pruning_on(self.ad.conf):
            raise ConfigError("search.pruner", f"{self.ad.conf.pruner!r} cannot stop one student on every "
                                               f"torch.distributed rank at once; set search.pruner: none")
        self.study  # noqa: B018 - opened first: an unreachable storage is reported before a folder is made
        self._check_folders()
        if self._rank == 0:
            if self.new_run:
                breaker.rearm(self.store)
            record_budget(self.study, self.max_trials)
        if self._world > 1:
            distributed.run(self, self._rank)
        else:
            self.loop(self.train)
            if self.summary.stop_reason.startswith("budget reached"):
                run_end.settle(self.store, self._sweep)
        if self._rank == 0:
            self.summary.study_complete, self.summary.budget_met = run_end.budget_met(
                self.store, self.max_trials, getattr(self.ad.searcher, "space", None))
        else:
            self.summary.budget_met = True  # rank 0 alone talks to the study, and says how it ended
        self._report("done")
        return self.summary

    def _check_folders(self) -> None:
        """The run folder and the artifact store exist and take a file, before any trial trains: a
        trial whose student cannot be saved would be trained for nothing."""
        field = "auto_distillation.study.run_dir"
        check_writable(self.ad.run_dir, field)
        if self._artifact_store is None:  # the default store, <run_dir>/artifacts
            check_writable(Path(self.ad.run_dir) / "artifacts", field)
        base = getattr(self.artifact_store, "_base_path", None)  # a FileSystemArtifactStore's folder
        if base is not None:
            check_writable(base, field)

    def loop(self, train: Callable[[Any, dict], None]) -> None:
        """Ask, admit, ``train`` (which tells), until the budget is spent or nothing is left to ask."""
        repeats = 0  # trials answered from the store in a row
        while True:
            asked = self._ask()
            if asked is None:
                return
            trial, arch = asked
            with self._heartbeat(trial, arch):
                verdict = self._admit_or_give_up(trial, arch)
                if verdict == TRAIN:
                    train(trial, arch)
            if verdict == STOP:
                return
            if verdict == TRAIN:
                repeats = 0
            elif verdict == REPEAT:
                repeats += 1
                if repeats >= MAX_CONSECUTIVE_REPEATS:
                    self.summary.stop_reason = (
                        f"the sampler proposed {repeats} already-known architectures in a row; stopping")
                    log.warning(self.summary.stop_reason)
                    return

    def _heartbeat(self, trial, arch: dict) -> Heartbeat:
        """The trial's heartbeat, as a context manager; its first beat also records who runs which arch
        (one transaction on RDB storages)."""
        return self.store.heartbeat(trial, attrs={"arch": arch, "worker": self._worker()})

    # ------------------------------------------------------------------ ask
    def _ask(self) -> tuple[Any, dict] | None:
        """The next trial and its architecture, or None to stop (``summary.stop_reason`` says why)."""
        while True:
            self._sweep()
            reason = breaker.stopped(self.store)
            if reason:
                self.summary.stop_reason = f"study stopped by the circuit breaker: {reason}"
                return None
            gate = self.budget.gate(self.store)
            if gate == admission.SPENT:
                self.summary.stop_reason = self.budget.spent_reason
                return None
            if gate == admission.FULL:
                # Every slot is taken by a trial that is still running: asking now would only create a
                # trial to throw away. Wait until one finishes (budget spent) or fails (a slot frees).
                self._report("waiting")
                time.sleep(self.poll_interval)
                continue
            try:
                with _no_heartbeat_warning():
                    arch = self.ad._propose()
            except SearchSpaceExhausted as exc:
                # Every point is held, but a held point may be a WAITING retry that only a study.ask()
                # pops (the searcher refuses to ask once the space is held): pop it ourselves.
                arch = self._pop_waiting()
                if arch is None:
                    if self._wait_for_others(f"search space exhausted ({exc})"):
                        continue
                    return None
            return self.ad.searcher.current_trial, arch

    def _sweep(self) -> None:
        """Fail stale trials (dead workers), at most once per tenth of the grace period (at least 1 s
        apart): staleness is measured in grace periods, and a sweep is a read of every RUNNING trial.
        With cheap trials and many workers a once-a-second sweep was one storage read per trial
        (``bench/load.py``); a tenth of the grace period delays the detection of a dead worker by 10%."""
        if self._sweep_every is None:
            self._sweep_every = max(1.0, float(self.store.grace_period or 0) / 10)
        now = time.monotonic()
        if now - self._last_sweep >= self._sweep_every:
            self._last_sweep = now
            self.store.fail_stale_trials()

    def _pop_waiting(self) -> dict | None:
        """Ask the study for its oldest WAITING trial (an enqueued retry); its arch, or None."""
        study = self.study
        if not self.store.all_trials(states=(TrialState.WAITING,)):
            return None
        searcher = self.ad.searcher
        space = getattr(searcher, "space", None)
        with _no_heartbeat_warning():
            trial = study.ask()
        frozen = self.store.trial(trial_id(trial))
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
        searcher.current_trial = trial
        return {key: trial.params[key] for key in space.keys}

    def _wait_for_others(self, reason: str) -> bool:
        """Nothing new to ask: wait while other workers' trials might still free points. False = stop."""
        pending = self.budget.others_pending(self.store)
        if pending == admission.WAIT:
            self._report("waiting")
            time.sleep(self.poll_interval)
            return True
        self.summary.stop_reason = self.budget.spent_reason if pending == admission.SPENT else reason
        return False

    # ------------------------------------------------------------------ admit
    def _admit_or_give_up(self, trial, arch: dict) -> str:
        """:meth:`_admit`; interrupted meanwhile (the budget wait can be long), the trial is failed and
        its arch retried."""
        try:
            return self._admit(trial, arch)
        except BaseException:
            self._fail(trial, "Interrupted", "interrupted while waiting for a budget slot", retry=True)
            raise

    def _admit(self, trial, arch: dict) -> str:
        """:data:`TRAIN`, :data:`REPEAT` (answered from the store), :data:`YIELD` (slot given to a
        waiting retry) or :data:`STOP` (budget spent); the last three tell the trial."""
        # The first check reuses the claim's read of the study (made after this trial existed and held
        # its point, so it sees every trial the budget rule must count); later ones read afresh.
        take = getattr(getattr(self.ad.searcher, "sampler", None), "take_snapshot", None)
        snapshot = take(trial.number) if callable(take) else None
        while True:
            place, trials = self.budget.place(self.store, trial.number, snapshot)
            snapshot = None
            if place == admission.SPENT:
                self._discard(trial, f"budget reached: {self.budget.done} of {self.max_trials} trials complete")
                self.summary.stop_reason = self.budget.spent_reason
                return STOP
            if place == admission.YIELD:
                # A retry of a dead / interrupted trial holds a slot: give ours up and pop the retry.
                self._discard(trial, "gave its slot to a waiting retry")
                return YIELD
            if place == admission.HAS_SLOT:
                break
            self._report("waiting", trial.number)
            time.sleep(self.poll_interval)
            self._sweep()
        known = admission.known_trial(trials, arch, trial.number)
        if known is None:
            return TRAIN
        self._answer_from_store(trial, arch, known)
        return REPEAT

    # ------------------------------------------------------------------ train
    def train(self, trial, arch: dict, fit: Callable[..., Any] | None = None) -> None:
        """Build, train, evaluate and save one student (``fit``: :meth:`fit` unless given); tell the
        trial COMPLETE, or FAIL with its reason."""
        from optuna.exceptions import UpdateFinishedTrialError

        clock = trial_record.Clock()
        model = None
        console.trial_started(trial.number, arch)
        try:
            model, metrics, values = (fit or self.fit)(arch, trial.number, clock, trial)
            self._tell_trained(trial, arch, model, metrics, values, clock)
        except rungs.StoppedEarly as stop:
            self._tell_stopped(trial, stop, clock)
        except UpdateFinishedTrialError:
            log.warning("trial %d was finished by another worker (stale?); its result is dropped", trial.number)
        except KeyboardInterrupt as exc:
            name = getattr(exc, "signal_name", "SIGINT")
            self._fail(trial, "Interrupted", f"interrupted ({name})", retry=True, extra={"timings": clock.stop()})
            self.summary.failed += 1
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of user code is a FAIL, the search goes on
            self._tell_failed(trial, exc, clock)
        finally:
            self.ad.student_model = None
            owner = engine_of(model)
            del model
            # Free the student's memory now, before the next one is built. Not
            # keras.backend.clear_session(): it would also reset Keras's global settings (dtype policy,
            # distribution, seed generator) under the live teacher and clear TF's kernel cache.
            if owner is not None:
                owner.release()

    def fit(self, arch: dict, number: int | None, clock: trial_record.Clock, trial: Any = None):
        """Build, train and evaluate one student; returns ``(model, metrics, raw metric values)``. With
        ``trial`` and the pruner on, the student is evaluated at its rungs and may be stopped there
        (:class:`~nas_distill.rungs.StoppedEarly`)."""
        t0 = time.perf_counter()
        self._report("build", number)
        model = self.ad.model_builder(dict(arch))
        if self.model_cls is not None:
            model = rebuild_with(model, self.model_cls, self.ad.run_dir)
        self.ad.student_model = model
        clock.lap("build", t0)
        if self.ad._estimate_overridden():
            t0 = time.perf_counter()
            self._report("estimate", number)
            metrics = self.ad.estimate(model)
            clock.lap("estimate", t0)
        else:
            t0 = time.perf_counter()
            self._report("train", number)
            monitor = self._rung_monitor(trial, arch, model)
            model = self.ad._train(model, after_step=monitor)  # the model train_func returned, if any
            self.ad.student_model = model
            clock.lap("train", t0)
            t0 = time.perf_counter()
            self._report("eval", number)
            metrics = self.ad._evaluate(model)
            clock.lap("eval", t0)
        values = self.ad.raw_metric_values(metrics)
        return model, metrics, values

    def _rung_monitor(self, trial: Any, arch: dict, model: Any) -> rungs.RungMonitor | None:
        if trial is None or not rungs.pruning_on(self.ad.conf):
            return None
        if self.ad._distiller is None:
            self.ad.create_distillers()
        steps = self.ad._distiller.rung_steps(self.ad.conf.rungs)
        return rungs.RungMonitor(self.ad, self.store, trial, arch, model, steps)

    def _save(self, trial, arch: dict, model: Any, clock: trial_record.Clock) -> dict[str, Any]:
        """Save the student to the artifact store: ``{'artifact_id': ...}``, or nothing."""
        if self.artifact_store is None:
            return {}
        t0 = time.perf_counter()
        self._report("save", trial.number)
        artifact_id = save_student_artifact(model, arch, self.artifact_store, trial,
                                            getattr(self.ad, "preprocessor", None))
        if artifact_id is None:
            return {}
        clock.lap("save", t0)
        return {"artifact_id": artifact_id}

    # ------------------------------------------------------------------ tell
    def _tell_trained(self, trial, arch: dict, model: Any, metrics: Any, values: list, clock) -> None:
        attrs = trial_record.trained_attrs(self.ad.metrics, values, parameter_count(model, metrics))
        self.ad.arch_metrics.record_trained(arch, dict(zip(self.ad.metrics, values)))
        attrs.update(self._save(trial, arch, model, clock))
        attrs["timings"] = clock.stop()
        self.store.set_user_attrs(trial_id(trial), attrs)
        self._tell(trial, values)
        self._last_environment = None
        self.summary.completed += 1
        self.budget.done += 1
        self._trial_seconds.append(clock.elapsed())
        console.trial_finished(trial.number, trial_record.shown_metrics(self.ad.metrics, values, attrs),
                               clock.elapsed())
        self._report("complete", trial.number, **dict(zip(self.ad.metrics, values)))

    def _tell_failed(self, trial, exc: Exception, clock: trial_record.Clock) -> None:
        """Record a failed trial, and raise when this worker must stop: a ConfigError (the setup is
        wrong, every trial would fail alike), or the same environmental failure twice in a row."""
        timings = clock.stop()
        kind, message, environment = trial_record.failure_kind(exc)
        console.trial_failed(trial.number, kind, message, clock.elapsed())
        self._fail(
            trial, kind, message, retry=isinstance(exc, ConfigError) or environment is not None,
            extra={"timings": timings, "traceback": traceback.format_exc()[-4000:]},
        )
        self.summary.failed += 1
        self._report("failed", trial.number, error=kind)
        if isinstance(exc, ConfigError):
            # The setup is wrong (missing teacher, data, ...), not the architecture: every trial would
            # fail the same way. Stop; the arch is enqueued again for the fixed run.
            raise exc
        if environment is not None and environment == self._last_environment:
            self.summary.stop_reason = f"the same environmental failure twice: {message}"
            raise EnvironmentFailure(f"stopping this worker: the same environmental failure twice in "
                                     f"a row ({message}); their architectures will be retried", exc) from exc
        self._last_environment = environment
        self._check_breaker()

    def _tell_stopped(self, trial, stop: rungs.StoppedEarly, clock: trial_record.Clock) -> None:
        """Record a student the pruner stopped: PRUNED with ``early_stop`` (its ``rungs`` are stored)."""
        self.store.set_user_attrs(trial_id(trial), {EARLY_STOP_ATTR: stop.record, "timings": clock.stop()})
        self._tell(trial, state=TrialState.PRUNED)
        self._last_environment = None
        self.summary.stopped += 1
        console.trial_pruned(trial.number, str(stop))
        self._report("stopped", trial.number)

    def _answer_from_store(self, trial, arch: dict, known) -> None:
        attrs = admission.answer_attrs(known, arch, self.ad.metrics, self._worker())
        self.store.set_user_attrs(trial_id(trial), attrs)
        self._tell(trial, state=TrialState.PRUNED)
        self.summary.repeats += 1
        console.trial_pruned(trial.number, attrs.get("note") or attrs["error"])

    def _discard(self, trial, reason: str, tell=None) -> None:
        """Give a trial up before it trained (a budget race, a slot handed to a retry): PRUNED with
        ``pruned_reason``, and its point released, so grid and random hand the arch out again."""
        from .search.samplers import CLAIM_KEY, RELEASED

        try:
            self.store.set_user_attrs(trial_id(trial), {"pruned_reason": reason})
            self.store.storage.set_trial_system_attr(trial_id(trial), CLAIM_KEY, RELEASED)
            (tell or self._tell)(trial, state=TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 - already finished by a stale sweep: nothing to undo
            log.debug("discarding trial %d: %s", trial.number, exc)
            return
        console.trial_pruned(trial.number, f"not trained: {reason}")
        self.summary.discarded += 1

    def _tell(self, trial, values=None, state=None):
        searcher = self.ad.searcher
        if hasattr(searcher, "tell"):
            return searcher.tell(trial, values, state)
        return self.study.tell(trial, values, state)

    def _fail(self, trial, error_type: str, message: str, *, retry: bool, extra: dict | None = None) -> None:
        try:
            attrs = {"error_type": error_type, "error": message[:2000]}
            attrs.update(extra or {})
            self.store.set_user_attrs(trial_id(trial), attrs)
            frozen = self._tell(trial, state=TrialState.FAIL)
        except Exception as exc:  # noqa: BLE001 - e.g. a stale sweep failed it first
            log.warning("could not record the failure of trial %d: %s", trial.number, exc)
            return
        if retry and frozen is not None:
            try:
                self.store.retry_trial(frozen)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not enqueue a retry of trial %d: %s", trial.number, exc)

    def _check_breaker(self) -> None:
        """After a failure of ours: trip the circuit breaker when the study's failures say the setup is
        broken (see :mod:`nas_distill.breaker`); every worker stops before its next ask."""
        try:
            breaker.check(self.store, self.stop_after_failures, self.worker_label)
        except Exception as exc:  # noqa: BLE001 - the breaker must never fail a trial of its own
            log.warning("circuit breaker check failed: %s", exc)


# --------------------------------------------------------------------------------------- helpers
def check_setup(ad) -> None:
    """The dry run (:mod:`nas_distill.dryrun`, then :mod:`nas_distill.rehearsal`): a data, model or
    device problem is one ConfigError now, before the study is opened or any trial exists."""
    from .dryrun import dry_run
    from .rehearsal import rehearse

    rungs.check_pruning(ad)
    console.step_started("dry run", "the data, the models and a few students of the space")
    t0 = time.perf_counter()
    dry_run(ad)
    rehearse(ad)
    log.info("dry run passed in %.1f s", time.perf_counter() - t0)


@contextlib.contextmanager
def _no_heartbeat_warning() -> Iterator[None]:
    # Optuna warns that heartbeats are meant for study.optimize; ours run their own thread.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        yield
