"""The dry run's students: every value of the space built, trained one step and evaluated on one batch.

A search whose setup cannot work should stop before its first trial, not after every trial has trained
and failed. After :func:`nas_distill.dryrun.dry_run` has checked the data and the layer names,
:func:`rehearse` tries a few students of the space the way a trial will, on the configured device:

* the smallest student (each key at its smallest value; the first value for non-numeric keys) and the
  largest (each key at its largest; the last value);
* for each key, one student per distinct value: the smallest student with that value, or, when that one
  fails, the largest with it.

Each is built with ``model_builder``; with the built-in engines it is also trained one step per
distillation stage on one batch (the teacher's outputs cached in memory) and evaluated on one batch (one
latency run), and
the configured metrics must come out. With a user's ``train_func`` / ``eval_func`` only building is
tried: those functions may take as long as a trial.

What fails is one :class:`~nas_distill.errors.ConfigError` naming the field and value:

* an unusable device: ``flash_distillation.device: 'gpu' is not a device torch knows ...``;
* both the smallest and the largest student fail: the setup is broken for every student (the field
  of the step that failed: ``model_builder``, ``flash_distillation``, ``evaluation``, or the search key
  the error names, e.g. a key the builder rejects);
* a value no student can use: ``search.search_space.intermediate_size: value -1 breaks every student
  tried with it ...``.

A value that fails in one combination but works in another is left to the trials (the combination
fails there, as an architecture's own failure).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import re
import time
from typing import Any, Optional

from .engines import engine
from .errors import ConfigError
from .search.space import SearchSpace

log = logging.getLogger(__name__)

__all__ = ["rehearse", "extreme_archs", "value_archs"]

PHASE_FIELDS = {"build": "model_builder", "train": "flash_distillation", "evaluate": "evaluation"}


# ------------------------------------------------------------------------------------------ archs
def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def extreme_archs(space: SearchSpace) -> tuple[dict, dict]:
    """The smallest and the largest student: every key at its smallest / largest value (numbers by
    value, other values by their order in the space)."""
    small, large = {}, {}
    for key, values in zip(space.keys, space.values):
        numbers = [v for v in values if _numeric(v)]
        small[key] = min(numbers) if len(numbers) == len(values) else values[0]
        large[key] = max(numbers) if len(numbers) == len(values) else values[-1]
    return small, large


def value_archs(space: SearchSpace, key: str, value: Any) -> list[dict]:
    """The students tried for one value of one key: the smallest with it, then the largest with it."""
    small, large = extreme_archs(space)
    out = []
    for base in (small, large):
        arch = dict(base, **{key: value})
        if arch not in out:
            out.append(arch)
    return out


# ------------------------------------------------------------------------------------------ one trial
@dataclasses.dataclass
class Failure:
    phase: str  # 'build' | 'train' | 'evaluate'
    arch: dict
    error: BaseException

    def text(self) -> str:
        message = " ".join(str(self.error).split())[:300] or type(self.error).__name__
        return f"{self.phase} failed for {self.arch}: {type(self.error).__name__}: {message}"


class _Trial:
    """Build, train one step and evaluate one batch, the way a trial of ``ad`` does, on small data."""

    def __init__(self, ad: Any):
        self.ad = ad
        overridden = _estimate_overridden(ad)
        self.train = (not overridden and getattr(ad, "train_func", None) is None
                      and ad.teacher_model is not None and ad.train_dataset is not None)
        self.evaluate = not overridden and getattr(ad, "eval_func", None) is None and ad.eval_dataset is not None
        self.engine = engine(getattr(ad, "framework", "pytorch"))
        self._distiller = None
        self._eval_data = None

    # -- setup, once
    def prepare(self) -> None:
        if not (self.train or self.evaluate):
            return
        self.engine.check_devices(self.ad.conf.flash.device, self.ad.conf.evaluation.device, self.train,
                                  self.evaluate)
        if self.train:
            flash = self.ad.conf.flash
            # The teacher's outputs on the one batch are cached in memory (never on disk: the dry run
            # writes nothing), so the teacher runs once for all the students, not once per step.
            settings = dataclasses.replace(flash, teacher_cache=dataclasses.replace(flash.teacher_cache, dir=None))
            stages = [_one_step(s) for s in (getattr(flash, "stages", None) or [])] or [_one_step(_default())]
            data = self.engine.first_rows(self.ad.train_dataset, max(1, int(flash.batch_size)))
            try:
                self._distiller = self.engine.make_distiller(self.ad.teacher_model, data, settings, stages=stages,
                                                             cache_dir=None)
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - the engine refuses the teacher, data or settings
                raise ConfigError("flash_distillation", f"the distiller cannot start: {type(exc).__name__}: "
                                                        f"{' '.join(str(exc).split())[:300]}") from None
        if self.evaluate:
            self._eval_data = self.engine.first_rows(self.ad.eval_dataset,
                                                     max(1, int(self.ad.conf.evaluation.batch_size)))

    # -- one student
    def __call__(self, arch: dict) -> Optional[Failure]:
        phase = "build"
        model = None
        try:
            model = self.ad.model_builder(dict(arch))
            if self._distiller is not None:
                phase = "train"
                self._distiller.distill(model, seed=0)
            if self._eval_data is not None:
                phase = "evaluate"
                settings = dataclasses.replace(self.ad.conf.evaluation, latency_warmup=0, latency_repeats=1)
                metrics = self.engine.evaluate(model, self._eval_data, self.ad.metrics, settings=settings,
                                               metric_fn=getattr(self.ad, "metric_fn", None),
                                               compute_metrics=getattr(self.ad, "compute_metrics", None))
                try:
                    self.ad.raw_metric_values(metrics)
                except FloatingPointError:
                    pass  # one batch after one step may legitimately give a NaN; the names are there
            return None
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - judged by the caller, across students
            return Failure(phase, dict(arch), exc)
        finally:
            del model
            gc.collect()


def _estimate_overridden(ad: Any) -> bool:
    method = getattr(ad, "_estimate_overridden", None)
    return bool(method()) if callable(method) else False


def _one_step(stage: Any) -> Any:
    if dataclasses.is_dataclass(stage):
        return dataclasses.replace(stage, train_steps=1)
    stage.train_steps = 1
    return stage


def _default() -> Any:
    from .distill.plans import default_stage

    return default_stage()


# ------------------------------------------------------------------------------------------ judging
def _quoted(failure: Failure, names: list[str]) -> Optional[str]:
    """The first of ``names`` the error message quotes (``unexpected keyword argument 'hiden_size'``)."""
    text = str(failure.error)
    for name in names:
        if re.search(rf"['\"`]{re.escape(name)}['\"`]", text):
            return name
    return None


def rehearse(ad: Any) -> None:
    """Try the students above; raise :class:`ConfigError` when the setup or a value cannot work."""
    key = tuple(id(getattr(ad, name, None)) for name in
                ("teacher_model", "train_dataset", "eval_dataset", "model_builder", "train_func", "eval_func",
                 "search_space"))
    if getattr(ad, "_rehearsal_key", None) == key:
        return  # the same objects passed before (a second search() in one process)
    space = SearchSpace(ad.search_space)
    trial = _Trial(ad)
    t0 = time.perf_counter()
    trial.prepare()
    tried: dict[str, Optional[Failure]] = {}

    def attempt(arch: dict) -> Optional[Failure]:
        key = repr(sorted(arch.items()))
        if key not in tried:
            tried[key] = trial(arch)
        return tried[key]

    with _collecting_students_only():
        _try_students(ad, space, attempt)
    ad._rehearsal_key = key
    log.info("dry run: %d students built%s in %.1f s", len(tried),
             ", trained one step and evaluated on one batch" if trial.train or trial.evaluate else "",
             time.perf_counter() - t0)


@contextlib.contextmanager
def _collecting_students_only():
    """Each student's ``gc.collect()`` walks only the objects made since the rehearsal started.

    That collection frees the student's reference cycles before the next student is built. A full one
    also walks every object made before (the imports, the teacher, the data): ~60 ms in a worker, for
    each of the ~30 students of a rehearsal, in every worker. Those objects are set aside
    (``gc.freeze``) meanwhile and handed back to the collector after (``gc.unfreeze``), so garbage among
    them is freed by a later collection. A process that froze objects itself keeps its own choice.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _try_students(ad: Any, space: SearchSpace, attempt) -> None:
    small, large = extreme_archs(space)
    first, second = attempt(small), attempt(large)
    if first is not None and (second is not None or small == large):
        key = _quoted(first, list(space.keys))
        if key is not None:
            raise ConfigError(f"search.search_space.{key}",
                              f"every student fails, and the error names this key: {first.text()}")
        metric = _quoted(first, list(ad.metrics)) if first.phase == "evaluate" else None
        if metric is not None:
            raise ConfigError("search.metrics", f"metric {metric!r}: every student fails to produce it: "
                                                f"{first.text()}")
        others = f"; the largest too ({type(second.error).__name__})" if second is not None and small != large \
            else ""
        raise ConfigError(PHASE_FIELDS[first.phase], f"every student fails: the smallest: {first.text()}{others}")
    for key, values in zip(space.keys, space.values):
        for value in values:
            failures = []
            for arch in value_archs(space, key, value):
                failure = attempt(arch)
                if failure is None:
                    break
                failures.append(failure)
            else:
                raise ConfigError(f"search.search_space.{key}",
                                  f"value {value!r} breaks every student tried with it: {failures[0].text()}")
