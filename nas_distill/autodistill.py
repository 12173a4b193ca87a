"""AutoDistillation: the seed API's pipeline (propose -> build -> flash-distil -> evaluate -> tell).

Code written against the seed API runs unchanged::

    ad = AutoDistillation(model_builder, "config.yaml")     # or a dict / AutoDistillationConfig
    ad.train_func = train_func                               # optional: train_func(model)
    ad.eval_func = eval_func                                 # optional: eval_func(model) -> metrics
    best_archs = ad.search()                                 # the Pareto-optimal archs, as dicts

``eval_func`` may return a dict keyed by metric name, a list / tuple in the config's ``metrics`` order,
or a bare number when there is one metric. Without ``train_func`` / ``eval_func``, and with
``teacher_model``, ``train_dataset`` and ``eval_dataset`` set, the built-in flash distiller of the
framework's engine (:mod:`nas_distill.engines`; settings from the config's ``flash_distillation``
section) trains and its evaluator measures:

* ``'pytorch'``: :class:`nas_distill.distill.torch.distiller.FlashDistiller` and
  :func:`nas_distill.distill.torch.evaluate.evaluate` (torch modules, torch-style datasets);
* ``'tensorflow'``: :class:`nas_distill.distill.keras.distiller.KerasFlashDistiller` and
  :func:`nas_distill.distill.keras.evaluate.evaluate` (functional ``keras.Model`` students with named
  layers; data as a tuple ``(x, y)`` of numpy arrays). A Keras search never imports torch (its ``bo``
  sampler is numpy and scipy only).

Every trial lives in one Optuna study (``study`` section of the config: storage URL, study name, run
folder), so any number of processes can run ``search()`` on the same study and share the budget
(``max_trials`` COMPLETE trials in total) and the results; see :mod:`nas_distill.study` and
:mod:`nas_distill.runner`. The answer is the Pareto front of the study's COMPLETE trials, never a
weighted sum.

Extra keyword arguments (not in the seed): ``storage``, ``study_name``, ``run_dir`` override the config's
``study`` section; ``max_trials`` overrides the search budget.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import weakref
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import study as study_mod
from .errors import ConfigError
from .store import optuna_internals

log = logging.getLogger(__name__)

__all__ = ["AutoDistillation", "load_config"]


def load_config(conf: Any):
    """An :class:`~nas_distill.config.AutoDistillationConfig` from a path, a dict or a config object."""
    from . import config as config_mod

    cls = getattr(config_mod, "AutoDistillationConfig", None)
    if cls is None:  # pragma: no cover - only while config.py is being written
        raise ConfigError("config", "nas_distill.config.AutoDistillationConfig is not available")
    if isinstance(conf, cls):
        return conf
    if isinstance(conf, (str, os.PathLike)) and os.path.isfile(conf):  # False for a NUL / over-long path
        from .config_file import read_config_file, split_task

        data, task = split_task(read_config_file(conf))
        if task is not None:  # a CLI config (with a task entry point) used from Python: fine
            return cls(data)
    if isinstance(conf, (str, os.PathLike)):
        for name in ("from_yaml", "from_file", "load"):
            loader = getattr(cls, name, None)
            if loader is not None:
                return loader(str(conf))
    if isinstance(conf, Mapping):
        conf = {k: v for k, v in conf.items() if k != "task"}
        for name in ("from_dict",):
            loader = getattr(cls, name, None)
            if loader is not None:
                return loader(dict(conf))
    return cls(conf)


def _config_dict(conf: Any) -> dict:
    to_dict = getattr(conf, "to_dict", None)
    if callable(to_dict):
        try:
            return to_dict()
        except Exception:  # noqa: BLE001 - the record is informative only
            log.debug("config.to_dict() failed", exc_info=True)
    return {}


def _framework_name(value: Any) -> str:
    """``'pytorch'`` / ``'tensorflow'`` from the argument (same spellings as the config's
    ``model.framework``); ConfigError otherwise."""
    from .vocabulary import FRAMEWORK_ALIASES as _FRAMEWORK_ALIASES

    key = value.strip().lower() if isinstance(value, str) else None
    if key not in _FRAMEWORK_ALIASES:
        raise ConfigError("framework", f"expected 'pytorch' or 'tensorflow', got {value!r}")
    return _FRAMEWORK_ALIASES[key]


def sampler_seed(seed: int | None) -> int | None:
    """The sampler seed for this process: the config's seed, made distinct per worker.

    Model-based samplers (GP, TPE, NSGA-II) draw their start-up points from their own RNG: workers sharing
    one study with one seed would all propose the same archs. A worker (``NAS_DISTILL_WORKER`` set by
    ``nas-distill run``/``worker``) mixes its label into the seed; a single in-process search keeps the
    config's seed, so seed-API use stays reproducible. Grid and Random seed per trial number anyway.
    """
    label = os.environ.get("NAS_DISTILL_WORKER")
    if seed is None or not label:
        return seed
    return (seed + zlib.crc32(label.encode())) % 2**32


class AutoDistillation:
    """The whole pipeline of auto-distillation: model exploration, flash distillation, evaluation.

    Args:
        model_builder: ``model_builder(arch: dict) -> student model``.
        conf_fname_or_obj: a YAML path, a dict in the seed layout, or an ``AutoDistillationConfig``.
        framework: ``'pytorch'`` (default) or ``'tensorflow'`` (aliases ``'torch'``, ``'tf'``); the
            config's ``model.framework`` wins when the argument is left at its default.
    """

    def __init__(
        self,
        model_builder: Callable[[dict], Any],
        conf_fname_or_obj: Any,
        framework: str = "pytorch",
        *,
        storage: str | None = None,
        study_name: str | None = None,
        run_dir: str | os.PathLike | None = None,
        max_trials: int | None = None,
    ):
        if not callable(model_builder):
            raise ConfigError("model_builder", f"expected a callable arch -> model, got {model_builder!r}")
        self.model_builder = model_builder
        framework = _framework_name(framework)
        self.framework = framework
        self._teacher_model = None
        self._student_model = None
        self._train_func = None
        self._eval_func = None
        self._searcher = None
        self._study = None
        self._arch_metrics = None
        self._proposal = None  # (trial, heartbeat, finalizer) of a model_arch_proposition awaiting feedback
        self.train_dataset = None
        self.eval_dataset = None
        self.metric_fn = None  # optional metric_fn(predictions, labels) for the built-in evaluator
        # optional compute_metrics(EvalPrediction) -> dict, as transformers' Trainer takes it: other eval_*
        # metrics for the built-in (PyTorch) evaluator
        self.compute_metrics = None
        self.flash_distillers: list[Any] = []
        self.regular_distillers: list[Any] = []
        self._distiller = None
        self._rung_data = None  # (the evaluation set, its slice for the pruner's rungs)
        self.search_results: dict[tuple, dict[str, float]] = {}
        self.model_paras_num: dict[tuple, int] = {}  # arch vector -> parameter count (the seed's attribute)
        self.resumed_search_results: dict[tuple, dict[str, float]] = {}
        self._loaded_results: list[tuple[dict, str]] = []  # (results, source) of each load_search_results
        self.best_model_archs: list[dict[str, Any]] = []
        self.model_paths: dict[tuple, str] = {}
        self._overrides = {"storage": storage, "study_name": study_name,
                           "run_dir": None if run_dir is None else str(run_dir)}
        self._max_trials_override = max_trials
        self.init_by_cfg(conf_fname_or_obj)
        if framework == "pytorch":  # the default: the config's model.framework decides
            self.framework = getattr(self.conf, "framework", None) or framework

    # ------------------------------------------------------------------ seed properties
    @property
    def teacher_model(self):
        """Getter of teacher model."""
        return self._teacher_model

    @teacher_model.setter
    def teacher_model(self, model):
        self._teacher_model = model
        self._distiller = None

    @property
    def student_model(self):
        """Getter of student model (the one being trained, during a trial)."""
        return self._student_model

    @student_model.setter
    def student_model(self, model):
        self._student_model = model

    @property
    def searcher(self):
        """The searcher (an Optuna sampler wrapper) that proposes architectures.

        Built, and its study opened, on first use, not when read: reading it creates no file before the
        first proposal (the study's place may still change with ``search(res_save_path)``).
        """
        if self._searcher is None:
            self._searcher = _LazySearcher(self)
        return self._searcher

    @searcher.setter
    def searcher(self, searcher):
        self._searcher = searcher

    advisor = searcher  # the seed's name of it

    @property
    def train_func(self):
        """Getter of train function: ``train_func(model)`` trains the student in place."""
        return self._train_func

    @train_func.setter
    def train_func(self, func):
        if func is not None and not callable(func):
            raise ConfigError("train_func", f"expected a callable model -> None, got {func!r}")
        self._train_func = func

    @property
    def eval_func(self):
        """Getter of evaluation function: ``eval_func(model)`` -> metrics (dict, sequence or number)."""
        return self._eval_func

    @eval_func.setter
    def eval_func(self, func):
        if func is not None and not callable(func):
            raise ConfigError("eval_func", f"expected a callable model -> metrics, got {func!r}")
        self._eval_func = func

    # ------------------------------------------------------------------ config
    def init_by_cfg(self, conf_fname_or_obj: Any) -> None:
        """Use auto distillation config to init the instance of autodistillation."""
        conf = load_config(conf_fname_or_obj)
        self.conf = conf
        self.search_space = dict(conf.search_space)
        self.search_algorithm = conf.search_algorithm
        self.metrics = list(conf.metrics)
        self.higher_is_better = [bool(h) for h in conf.higher_is_better]
        self.max_trials = int(self._max_trials_override or conf.max_trials)
        # seed None: a fresh seed for this run, recorded in the study (user attr "seed") when it opens.
        self.seed_drawn = conf.seed is None
        self.seed = secrets.randbelow(2**32) if self.seed_drawn else conf.seed
        study = conf.study
        self.storage = self._overrides["storage"] or study.storage
        self.study_name = self._overrides["study_name"] or study.study_name
        self.run_dir = self._overrides["run_dir"] or study.run_dir
        if not self._location_given():
            # The seed's folder: the study and the results live in ./AutoDistillationResults (or in
            # search(res_save_path)'s), never in a folder the user did not name.
            from .seed_results import FOLDER

            self.run_dir = os.path.abspath(FOLDER)
        self.heartbeat_interval = study.heartbeat_interval
        self.grace_period = study.grace_period
        self.init_search_cfg(conf)

    def init_search_cfg(self, config: Any) -> None:
        """Init the searcher's settings from the config (it is created when first used: it opens the study)."""
        self._search_cfg = config
        self._searcher = None
        self._study = None
        self._arch_metrics = None

    @property
    def storage_url(self) -> str:
        return study_mod.resolve_storage_url(self.storage, self.run_dir)

    @property
    def study(self):
        """The shared Optuna study (created or loaded on first use)."""
        if self._study is None:
            searcher = self._searcher
            if isinstance(searcher, _LazySearcher):  # not built yet: nothing to ask (it asks us)
                searcher = object.__getattribute__(searcher, "_real")
            if searcher is not None and getattr(searcher, "_study", None) is not None:
                self._study = searcher.study
            else:
                # The run folder is ours to create (the default storage, artifacts and teacher cache live
                # there); a storage file elsewhere must already have its folder (study.make_storage), and
                # nothing is created when it does not.
                run_dir = Path(self.run_dir).resolve()
                storage_file = study_mod.storage_file(self.storage_url)
                if storage_file is not None and Path(storage_file).resolve().parent == run_dir:
                    run_dir.mkdir(parents=True, exist_ok=True)
                self._study = study_mod.open_study(
                    self.storage_url,
                    self.study_name,
                    metrics=self.metrics,
                    higher_is_better=self.higher_is_better,
                    config=_config_dict(self.conf),
                    search_space=self.search_space,
                    heartbeat_interval=self.heartbeat_interval,
                    grace_period=self.grace_period,
                )
                run_dir.mkdir(parents=True, exist_ok=True)
                if self.seed_drawn:
                    self._study.set_user_attr("seed", self.seed)
        return self._study

    def _make_searcher(self):
        from .search.searchers import make_searcher

        cfg = self._search_cfg
        extra = {}
        if self.arch_metrics.enabled:
            extra["known_objectives"] = self.arch_metrics.known_objectives
        return make_searcher(cfg.search_algorithm, cfg.search_space, seed=sampler_seed(self.seed),
                             study=self.study, **extra)

    @property
    def arch_metrics(self):
        """The study's metrics fixed by the architecture (:mod:`nas_distill.arch_metrics`); measured and
        handed to the searcher when it can use them."""
        if self._arch_metrics is None:
            from .arch_metrics import ArchMetrics

            # A user's eval_func is called on untrained students only when the config declares
            # architecture metrics: it may be costly, or count on a trained model.
            builtin = self.eval_func is None and self.eval_dataset is not None
            declared = self.eval_func is not None and bool(getattr(self.conf, "architecture_metrics", None))
            self._arch_metrics = ArchMetrics(
                self, enabled=self._searcher_takes_known_objectives(),
                measure_untrained=not self._estimate_overridden() and (builtin or declared))
        return self._arch_metrics

    def _searcher_takes_known_objectives(self) -> bool:
        from .search.searchers import canonical_algorithm

        algorithm = self._search_cfg.search_algorithm
        return isinstance(algorithm, str) and canonical_algorithm(algorithm) == "bo"

    # ------------------------------------------------------------------ proposing / measuring
    def model_arch_proposition(self) -> dict[str, Any]:
        """Propose architecture of the model based on search algorithm for next search iteration.

        The proposal is a RUNNING trial of the study until ``advisor.feedback(...)`` tells its result. A
        heartbeat keeps it alive meanwhile; it is failed as ``Abandoned`` when the next proposal, a
        ``search()`` or :meth:`close` comes first, or when this object is collected or the interpreter
        exits; if the process dies, its heartbeat lapses and the next worker's sweep fails it.
        """
        self._abandon_proposal("a new proposal was made before feedback on this one")
        arch = self._propose()
        trial = getattr(self.searcher, "current_trial", None)
        if trial is None:  # a searcher of the user's own, not asking the study: nothing to keep alive
            return arch
        heartbeat = study_mod.Heartbeat(self.study, optuna_internals.trial_id(trial), attrs={"arch": arch}).__enter__()
        self._proposal = (trial, heartbeat, weakref.finalize(
            self, _abandon, self.study, trial, heartbeat, "the agent was closed before feedback"))
        return arch

    def _propose(self) -> dict[str, Any]:
        """The searcher's next architecture (its trial is ``searcher.current_trial``); the trial loop's
        entry point, which keeps its own heartbeat."""
        self.arch_metrics.refresh()
        return self.searcher.suggestion()

    def _proposal_told(self) -> None:
        """Feedback arrived for the pending proposal: stop its heartbeat, nothing to abandon."""
        proposal, self._proposal = self._proposal, None
        if proposal is not None:
            trial, heartbeat, finalizer = proposal
            finalizer.detach()
            heartbeat.__exit__(None, None, None)

    def _abandon_proposal(self, reason: str) -> None:
        proposal, self._proposal = self._proposal, None
        if proposal is not None:
            _, _, finalizer = proposal
            finalizer.detach()
            _abandon(self.study, proposal[0], proposal[1], reason)

    def close(self) -> None:
        """Fail a proposal that never got feedback (``Abandoned``). The study and its files stay."""
        self._abandon_proposal("the agent was closed before feedback")

    def __enter__(self) -> "AutoDistillation":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def search_space_keys(self) -> list[str]:
        """The search space's keys, sorted: the order of an arch vector (the seed's attribute)."""
        return sorted(self.search_space)

    def count_model_parameters(self, model) -> int:
        """Parameter count of a torch module or a Keras model (or anything with ``num_parameters()``)."""
        from .engines import parameter_count

        count = parameter_count(model)
        if count is None:
            raise TypeError(f"cannot count the parameters of a {type(model).__name__}")
        return count

    # The seed's per-kind views of the flash-distillation stages: one entry per stage, '' for a stage
    # that trains every parameter.
    def _stages_of(self, kind: str) -> list[Any]:
        return [s for s in (getattr(self.conf.flash, "stages", None) or []) if s.kind == kind]

    @staticmethod
    def _block_name(stage) -> Any:
        names = list(stage.block_names)
        return "" if not names else names[0] if len(names) == 1 else names

    @property
    def flash_distillation_config(self):
        """The config's ``flash_distillation`` section, readable by attribute (the seed's attribute)."""
        return self.conf.config.auto_distillation.flash_distillation

    @property
    def flash_block_names(self) -> list[Any]:
        return [self._block_name(s) for s in self._stages_of("knowledge_transfer")]

    @property
    def flash_train_steps(self) -> list[int]:
        return [s.train_steps for s in self._stages_of("knowledge_transfer")]

    @property
    def regular_block_names(self) -> list[Any]:
        return [self._block_name(s) for s in self._stages_of("regular_distillation")]

    @property
    def regular_train_steps(self) -> list[int]:
        return [s.train_steps for s in self._stages_of("regular_distillation")]

    def params_vec2params_dict(self, paras_vec: Sequence[Any]) -> dict[str, Any]:
        """Transfer the vector (values in sorted-key order) into a dict holding the parameters."""
        keys = sorted(self.search_space)
        paras_vec = list(paras_vec)
        if len(paras_vec) != len(keys):
            raise ValueError(f"expected {len(keys)} values (keys {keys}), got {paras_vec!r}")
        return dict(zip(keys, paras_vec))

    def create_distillers(self) -> None:
        """Create the flash (knowledge transfer) and regular distillers from the config.

        One distiller of the framework runs every stage (knowledge transfer blocks, then regular
        distillation): :class:`~nas_distill.distill.torch.distiller.FlashDistiller` for ``'pytorch'``,
        :class:`~nas_distill.distill.keras.distiller.KerasFlashDistiller` for ``'tensorflow'``.
        ``flash_distillers`` / ``regular_distillers`` list its stages of each kind, as the seed's
        attributes did.
        """
        engine = self.engine
        missing = [n for n in ("teacher_model", "train_dataset") if getattr(self, n) is None]
        if missing:
            raise ConfigError(
                missing[0],
                "the built-in flash distillation needs teacher_model and train_dataset "
                "(or set train_func / eval_func)",
            )
        flash = self.conf.flash
        # One cache folder for both engines: entries are keyed by a fingerprint of the teacher and data
        # (distill/cache_store.py), so a torch teacher and a Keras teacher never share one.
        cache_dir = flash.teacher_cache.dir or str(Path(self.run_dir) / "teacher_cache")
        self._distiller = engine.make_distiller(self.teacher_model, self.train_dataset, flash, cache_dir=cache_dir)
        stages = list(getattr(flash, "stages", []) or [])
        self.flash_distillers = [s for s in stages if s.kind == "knowledge_transfer"]
        self.regular_distillers = [s for s in stages if s.kind == "regular_distillation"]

    @property
    def engine(self):
        """The training engine of ``framework`` (:mod:`nas_distill.engines`)."""
        from .engines import engine

        return engine(self.framework)

    def _train(self, model, after_step: Callable[[int, int], None] | None = None) -> Any:
        """Train ``model``; returns the model to evaluate and save.

        As in the seed's loop (``model = train_func(model)``), a ``train_func`` that returns a model hands
        over that model (a new one, or a wrapper); one that returns ``None`` trained ``model`` in place.
        ``after_step``: the built-in distiller's callback after every step (the pruner's rungs).
        """
        if self.train_func is not None:
            returned = self.train_func(model)
            return model if returned is None else returned
        if self._distiller is None:
            self.create_distillers()
        from .machine_lock import training_load

        seed = (self.seed or 0) + int(getattr(getattr(self.searcher, "current_trial", None), "number", 0) or 0)
        # Shares the machine with other trainings, and pauses between steps while a latency is timed.
        with training_load() as load:
            self._distiller.before_step = load.pause_point
            self._distiller.after_step = after_step
            try:
                self._distiller.distill(model, seed=seed)
            finally:
                self._distiller.before_step = None
                self._distiller.after_step = None
        return model

    def _evaluate(self, model, metrics: Sequence[str] | None = None, data: Any = None) -> Any:
        """Measure ``model`` (``metrics``: a subset of the config's; ``eval_func`` answers all of them) on
        ``data`` (default: the evaluation set; ``eval_func`` reads its own).

        Timed metrics (latency) are taken under the machine's measurement lock, so no two workers of a
        machine time a model at once (:mod:`nas_distill.machine_lock`)."""
        from .arch_metrics import timed_metric_names
        from .machine_lock import measurement_lock

        names = list(self.metrics if metrics is None else metrics)
        timed = timed_metric_names(names, getattr(self.conf, "architecture_metrics", None) or ())
        if self.eval_func is not None:
            with measurement_lock() if timed else contextlib.nullcontext():
                return self.eval_func(model)
        if self.eval_dataset is None:
            raise ConfigError("eval_dataset", "set eval_dataset (or eval_func) to measure the students")
        from .vocabulary import base_metric

        engine = self.engine

        def measure(subset):
            if not subset:
                return {}
            # compute_metrics costs a pass over the evaluation set: only for the names it answers
            others = any(base_metric(n) not in engine.metrics for n in subset)
            return engine.evaluate(model, self.eval_dataset if data is None else data, subset,
                                   settings=self.conf.evaluation,
                                   metric_fn=self.metric_fn, compute_metrics=self.compute_metrics if others else None)

        out = measure([n for n in names if n not in timed])
        if timed:
            with measurement_lock():
                out.update(measure(timed))
        return {n: out[n] for n in names}

    def rung_data(self) -> Any:
        """The evaluation slice of the pruner's rungs: the first ``search.rung_examples`` examples of the
        evaluation set (None with an ``eval_func``: it reads its own data)."""
        if self.eval_func is not None or self.eval_dataset is None:
            return None
        if self._rung_data is None or self._rung_data[0] is not self.eval_dataset:
            self._rung_data = (self.eval_dataset, self.engine.first_rows(self.eval_dataset,
                                                                         int(self.conf.rung_examples)))
        return self._rung_data[1]

    def _estimate_overridden(self) -> bool:
        return type(self).estimate is not AutoDistillation.estimate

    def estimate(self, model) -> Any:
        """Train and evaluate the model. Returns its metrics (as ``eval_func`` gives them)."""
        return self._evaluate(self._train(model))

    # ------------------------------------------------------------------ metrics
    def _metrics_list(self, metrics: Any) -> list[float]:
        """Raw metric values in ``self.metrics`` order, from a dict, a sequence or a number."""
        if hasattr(metrics, "tolist") and not isinstance(metrics, (dict, str)):
            metrics = metrics.tolist()
        if isinstance(metrics, Mapping):
            missing = [m for m in self.metrics if m not in metrics]
            if missing:
                raise ValueError(f"eval_func returned {sorted(metrics)}; missing metric(s) {missing}")
            values = [metrics[m] for m in self.metrics]
        elif isinstance(metrics, (list, tuple)):
            if len(metrics) != len(self.metrics):
                raise ValueError(
                    f"eval_func returned {len(metrics)} value(s), expected {len(self.metrics)} "
                    f"(metrics {self.metrics})"
                )
            values = list(metrics)
        else:
            if len(self.metrics) != 1:
                raise ValueError(f"eval_func returned one number, expected {len(self.metrics)} ({self.metrics})")
            values = [metrics]
        out = []
        for name, value in zip(self.metrics, values):
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"metric {name!r} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise FloatingPointError(f"metric {name!r} is {value}")
            out.append(float(value))
        return out

    def raw_metric_values(self, metrics: Any) -> list[float]:
        """Metric values in ``metrics`` order, as measured (what the study stores)."""
        return self._metrics_list(metrics)

    def metrics_conversion(self, metrics: Any) -> list[float]:
        """Convert the metrics to a list in ``metrics`` order, every one higher-is-better (seed)."""
        values = self._metrics_list(metrics)
        return [v if h else -v for v, h in zip(values, self.higher_is_better)]

    # ------------------------------------------------------------------ search
    def search(self, res_save_path: str | os.PathLike | None = None, model_cls: Any = None) -> list[dict]:
        """Auto distillation search process.

        Runs trials on the shared study until it holds ``max_trials`` COMPLETE trials (counting every
        worker's) or the space is exhausted. With ``model_cls``, each student is saved and rebuilt before
        training (seed behaviour): ``save_pretrained`` + ``model_cls.from_pretrained`` for torch / Hugging
        Face models; for a ``keras.Model``, saved as ``.keras`` and reloaded by
        ``keras.saving.load_model(..., safe_mode=True)`` (with ``custom_objects={model_cls.__name__:
        model_cls}`` when ``model_cls`` subclasses ``keras.Model``).

        Results folder (the seed's): ``<res_save_path or the current folder>/AutoDistillationResults/``;
        without ``res_save_path`` and with a named storage / run folder, the run folder. Unless the config
        names ``study.storage`` or ``study.run_dir``, the study and the trained students live there too,
        so two searches with different ``res_save_path`` never share a study.
        Results found there at the start (``lastest_results.json``, an old ``lastest_results.npy`` or
        the old texts) are imported first and answered from the store, never retrained. Each completed
        trial writes ``Trial_{k}_results.txt``; the end writes ``Final_results.txt`` and
        ``lastest_results.json`` (see :mod:`nas_distill.seed_results`).

        Returns:
            The Pareto-optimal architectures found (dicts), best trade-offs of all metrics.

        Raises:
            SearchFailed: no trial completed and trials failed; names the first failure.
        """
        from . import seed_results
        from .runner import TrialRunner

        folder = Path(res_save_path if res_save_path is not None else os.getcwd()) / seed_results.FOLDER
        if not self._location_given():
            self._move_study_to(folder)
        elif res_save_path is None:
            folder = Path(self.run_dir)
        self._abandon_proposal("search() started before feedback on this proposal")
        if seed_results.has_results(folder):
            imported = self.load_search_results(folder)
            log.info("resumed from %s: %d result(s) imported", folder, imported)
        user_progress = getattr(self, "progress", None)

        def progress(event) -> None:
            if event.stage == "complete":
                self._write_trial_file(folder, event.done)
            if user_progress is not None:
                user_progress(event)

        runner = TrialRunner(self, model_cls=model_cls, progress=progress)
        self.last_run = runner.run()
        self.find_best_model_archs()
        if not self.best_model_archs:
            self._raise_if_all_failed()
        self.dump_search_results(folder / seed_results.FINAL_TEXT)
        self.results_folder = folder
        return self.best_model_archs

    def _location_given(self) -> bool:
        """A storage or run folder was named (config or constructor): it wins over the seed's folder."""
        return self.conf.study_location_given or any(self._overrides[k] for k in ("storage", "run_dir"))

    def _move_study_to(self, folder: Path) -> None:
        """Place the study (and the students, the teacher cache) in ``folder``; a study opened elsewhere
        before is let go (it stays where it is)."""
        if self._study is not None and Path(self.run_dir).resolve() == folder.resolve():
            return
        self._abandon_proposal("the study moved to the search's results folder before feedback")
        self.run_dir = str(folder)
        self._study = None
        self._searcher = None
        self._distiller = None
        # Results loaded by hand before search() (the seed's load_search_results-then-search) belong to
        # this search: they follow the study into its folder.
        for results, source in self._loaded_results:
            self._import(results, source)

    def _import(self, results: Mapping[str, Any], source: str) -> int:
        from .results import import_results

        return import_results(self.study, results, metrics=self.metrics, search_space=self.search_space,
                              source=source)

    def _write_trial_file(self, folder: Path, k: int) -> None:
        from . import seed_results

        try:
            seed_results.write_results(self.study, seed_results.trial_file(folder, k), table=False)
        except OSError as exc:  # the results are in the study either way
            log.warning("could not write %s: %s", seed_results.trial_file(folder, k), exc)

    def _raise_if_all_failed(self) -> None:
        """No COMPLETE trial, and trials failed: the search produced nothing; say why instead of ``[]``."""
        from optuna.trial import TrialState

        from .errors import SearchFailed

        failed = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if t.user_attrs.get("error_type") != "Discarded"]
        if not failed:
            return
        first = min(failed, key=lambda t: t.number)
        kind = first.user_attrs.get("error_type") or "unknown error"
        error = first.user_attrs.get("error") or "no message recorded"
        raise SearchFailed(
            f"all {len(failed)} trial(s) of study {self.study_name!r} failed; the first, trial {first.number} "
            f"(arch {first.user_attrs.get('arch') or dict(first.params)}), with {kind}: {error}",
            failed=len(failed), first_error_type=kind, first_error=error,
        )

    def _sync_results(self, complete) -> None:
        """Rebuild ``search_results`` (arch vector -> metrics) and ``model_paras_num`` from the study's
        COMPLETE trials (:class:`nas_distill.records.TrialRecord`)."""
        self.search_results = {
            tuple(rec.arch[k] for k in sorted(rec.arch)): dict(zip(self.metrics, rec.values)) for rec in complete
        }
        self.model_paras_num = {
            tuple(rec.arch[k] for k in sorted(rec.arch)): rec.n_params for rec in complete if rec.n_params is not None
        }

    def find_best_model_archs(self) -> list[dict[str, Any]]:
        """Find the model architectures on the Pareto front of every COMPLETE trial of the study."""
        from .records import read_study

        records = read_study(self.study)
        self._sync_results(records.complete)
        seen = set()
        archs = []
        for rec in records.pareto:
            key = tuple(sorted(rec.arch.items(), key=lambda kv: kv[0]))
            if key not in seen:
                seen.add(key)
                archs.append(dict(rec.arch))
        self.best_model_archs = archs
        return archs

    # ------------------------------------------------------------------ results files
    def dump_search_results(self, path: str | os.PathLike) -> None:
        """Write the study's results at ``path`` in the seed's text format, and ``lastest_results.json``
        beside it (the seed wrote ``lastest_results.npy`` there)."""
        from .seed_results import write_results

        write_results(self.study, path)

    def load_search_results(self, path: str | os.PathLike) -> int:
        """Load previous search results into this study (answered from the store, never retrained).

        ``path``: a results folder (``lastest_results.json``, or the seed's ``lastest_results.npy`` read by
        a restricted unpickler that admits only plain data, or its ``Final_results.txt`` /
        ``Trial_*_results.txt``), one of those files, a results JSON, or a storage URL
        (``sqlite:///...``, ``postgresql+psycopg://...``, optionally ``#study_name``). Imported trials are
        COMPLETE with ``imported_from`` set; they do not use the ``max_trials`` budget. Returns how many
        trials were imported (already present archs are skipped).
        """
        from .results import read_results
        from .seed_results import read_results_folder

        text = str(path)
        if "://" in text:
            results = read_results(path)
        else:
            results = read_results_folder(path, self.search_space, self.metrics)
        self.resumed_search_results = {
            tuple(r["arch"][k] for k in sorted(r["arch"])): dict(zip(results["metrics"], r["values"]))
            for r in results["trials"]
        }
        source = study_mod.mask_url(text)
        imported = self._import(results, source)
        self._loaded_results.append((results, source))
        return imported


def _abandon(study, trial, heartbeat, reason: str) -> None:
    """Fail a proposed trial that never got feedback (if it is still RUNNING); stop its heartbeat."""
    from optuna.trial import TrialState

    heartbeat.__exit__(None, None, None)
    try:
        trial_id = optuna_internals.trial_id(trial)
        if optuna_internals.study_storage(study).get_trial(trial_id).state != TrialState.RUNNING:
            return
        study_mod.set_user_attrs(study, trial_id, {"error_type": "Abandoned", "error": reason})
        study.tell(trial, state=TrialState.FAIL)
    except Exception as exc:  # noqa: BLE001 - at interpreter exit the storage may be gone: the sweep will do
        log.debug("could not fail abandoned trial %s: %s", getattr(trial, "number", "?"), exc)


class _LazySearcher:
    """``agent.searcher`` (the seed's ``agent.advisor``) before the searcher exists: builds it (and opens
    the study) on first use, then stands for it. ``feedback`` / ``tell`` also end a pending
    ``model_arch_proposition``'s heartbeat."""

    def __init__(self, agent: AutoDistillation):
        object.__setattr__(self, "_agent", agent)
        object.__setattr__(self, "_real", None)

    def _searcher(self):
        real = object.__getattribute__(self, "_real")
        if real is None:
            real = object.__getattribute__(self, "_agent")._make_searcher()
            object.__setattr__(self, "_real", real)
        return real

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._searcher(), name)
        if name in ("feedback", "tell", "tell_raw") and callable(value):
            agent = object.__getattribute__(self, "_agent")

            def told(*args: Any, **kwargs: Any) -> Any:
                out = value(*args, **kwargs)
                pending = agent._proposal
                if pending is not None:
                    from optuna.trial import TrialState

                    trial = pending[0]
                    storage = optuna_internals.study_storage(agent.study)
                    if storage.get_trial(optuna_internals.trial_id(trial)).state != TrialState.RUNNING:
                        agent._proposal_told()
                return out

            return told
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._searcher(), name, value)

    def __repr__(self) -> str:
        real = object.__getattribute__(self, "_real")
        return repr(real) if real is not None else "<searcher, not built yet>"
