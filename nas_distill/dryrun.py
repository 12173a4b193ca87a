"""The dry run: data and model problems found once, before the first trial, as one ConfigError.

With the built-in distiller and evaluator (``teacher_model`` + ``train_dataset`` / ``eval_dataset`` set,
no ``train_func`` / ``eval_func``), a broken setup would otherwise surface inside the first trial, after
the study and a RUNNING trial exist, or worse, as a silently useless search (labels out of range train
nothing useful; NaN inputs give NaN losses). :func:`dry_run` checks, cheaply (one pass over the labels
and inputs with numpy, at most a few student builds, no forward pass, no training):

* every configured metric is one the built-in evaluator measures, or ``eval_func`` /
  ``compute_metrics`` produces (:func:`check_metrics`, its own step);
* each dataset is readable and not empty;
* integer labels lie in ``[0, n_labels)`` of the teacher (``-100``, the Hugging Face ignore index, is
  allowed), and no float field (inputs, float labels) holds NaN or infinity;
* the teacher and a student built from the search space have the same number of labels;
* every layer the flash-distillation stages name (``block_names``, the student / teacher side of each
  layer mapping) exists in the student / the teacher.

Every problem is a :class:`~nas_distill.errors.ConfigError` naming the field, e.g.
``train_dataset: label 12 at index 37 is out of range for a teacher with 10 labels``.

Frameworks: the data and the models are read through the search's engine (:mod:`nas_distill.engines`):
``'pytorch'`` reads torch-style datasets through :mod:`nas_distill.distill.torch.data`; ``'tensorflow'``
reads ``(x, y)`` numpy tuples and never imports torch (a Keras model's label count is the last dimension
of ``model.output``). Anything the dry run cannot read the same way the engine will (an unknown model
type, a ``tf.data`` pipeline) is left to the engine: the dry run only refuses what it is sure about.

A student layer missing from the first architecture may exist in a bigger one (a mapping on layer 5
while some archs have 4 layers): a student-side name is refused only when the smallest-index, the
last and the per-key largest architectures all lack it; such archs then fail as trials, not the setup.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from .engines import Engine, engine, engine_of
from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["dry_run", "check_dataset", "check_metrics", "num_labels"]

IGNORE_INDEX = -100  # the Hugging Face convention for "no label here"
LABEL_KEYS = ("labels", "label")


# ------------------------------------------------------------------------------------------ entry
def dry_run(ad: Any) -> None:
    """Check ``ad``'s data and models before its first trial; raises :class:`ConfigError`.

    Runs only for the parts the built-in engines will use, and once per set of (teacher, datasets,
    builder) objects: a second ``search()`` with the same objects does not scan again.
    """
    check_metrics(ad)
    builtin = not _estimate_overridden(ad)
    teacher = getattr(ad, "teacher_model", None)
    train = getattr(ad, "train_dataset", None)
    evaluation = getattr(ad, "eval_dataset", None)
    use_train = builtin and getattr(ad, "train_func", None) is None and teacher is not None and train is not None
    use_eval = builtin and getattr(ad, "eval_func", None) is None and evaluation is not None
    if not (use_train or use_eval):
        return
    key = (id(teacher), id(train), id(evaluation), id(ad.model_builder), use_train, use_eval)
    if getattr(ad, "_dry_run_key", None) == key:
        return
    search_engine = _engine(ad)
    teacher_labels = num_labels(teacher) if teacher is not None else None
    students = _Students(ad)
    student_labels = None
    if teacher_labels is not None or use_eval:
        student = students.first()
        student_labels = num_labels(student) if student is not None else None
    if teacher_labels is not None and student_labels is not None and teacher_labels != student_labels:
        raise ConfigError(
            "model_builder",
            f"the student built from arch {students.first_arch} has {student_labels} labels, the teacher "
            f"has {teacher_labels}; build the student with the teacher's label count (num_labels)",
        )
    labels = teacher_labels if teacher_labels is not None else student_labels
    if use_train:
        check_dataset(train, "train_dataset", labels, reader=search_engine)
        _check_layers(ad, teacher, students, search_engine)
    if use_eval:
        check_dataset(evaluation, "eval_dataset", labels, reader=search_engine)
    ad._dry_run_key = key


# ------------------------------------------------------------------------------------------ metrics
def check_metrics(ad: Any) -> None:
    """Every configured metric must be one that something will produce, or the search trains every
    trial only to fail it at evaluation. With ``eval_func`` (or an overridden ``estimate``) the user
    produces them; else the built-in evaluator knows its own names, and any other name must come from
    ``ad.compute_metrics``, which is asked once here, on the first batch of the evaluation data through
    the first student of the space (untrained), the way the evaluator will call it."""
    if _estimate_overridden(ad) or getattr(ad, "eval_func", None) is not None:
        return
    search_engine = _engine(ad)
    known = search_engine.metrics
    from .vocabulary import unknown_metrics

    names = list(getattr(ad, "metrics", []) or [])
    unknown = unknown_metrics(names, known)
    if not unknown:
        return
    field = f"search.metrics[{names.index(unknown[0])}]"
    compute = getattr(ad, "compute_metrics", None)
    if compute is None or not search_engine.takes_compute_metrics:
        how = ("set eval_func(model) -> {name: value}, or compute_metrics(EvalPrediction) -> dict returning it"
               if search_engine.takes_compute_metrics else "set eval_func(model) -> {name: value}")
        raise ConfigError(field, f"the built-in evaluator cannot measure {unknown[0]!r} (it knows "
                                 f"{', '.join(known)}, with or without 'eval_'); {how}")
    produced = _compute_metrics_names(ad, compute, search_engine)
    if produced is None:
        return  # nothing to run it on yet (no eval_dataset): the evaluation itself will say so
    from .evaluate import metric_from

    missing = [n for n in unknown if metric_from(dict.fromkeys(produced, 0), n) is None]
    if missing:
        raise ConfigError(f"search.metrics[{names.index(missing[0])}]",
                          f"compute_metrics returned {sorted(produced)}, not {missing[0]!r} (with or without "
                          f"'eval_'), and the built-in evaluator does not measure it")


def _compute_metrics_names(ad: Any, compute: Any, search_engine: Engine) -> Optional[list[str]]:
    """The keys ``compute`` returns for the first batch of ``ad.eval_dataset`` through the first buildable
    student; None when there is no evaluation data or no student to run."""
    data = getattr(ad, "eval_dataset", None)
    if data is None:
        return None
    student = _Students(ad).first()
    if student is None:
        return None
    settings = getattr(getattr(ad, "conf", None), "evaluation", None)
    try:
        return search_engine.compute_metrics_names(student, data, settings, compute)
    except Exception as exc:  # noqa: BLE001 - the user's function failing on real outputs is a setup error
        raise ConfigError("compute_metrics", f"failed on the first evaluation batch: "
                                             f"{type(exc).__name__}: {exc}") from exc


def _estimate_overridden(ad: Any) -> bool:
    method = getattr(ad, "_estimate_overridden", None)
    return bool(method()) if callable(method) else False


def _engine(ad: Any) -> Engine:
    return engine(getattr(ad, "framework", "pytorch"))


def _model_engine(model: Any, default: Engine) -> Engine:
    """The engine ``model`` belongs to (a Keras student of a torch search is read as Keras)."""
    return engine_of(model) or default


# ------------------------------------------------------------------------------------------ models
def num_labels(model: Any) -> Optional[int]:
    """The label count of a classifier, or ``None`` when it cannot be told without running it.

    Hugging Face ``*Classification`` models: ``config.num_labels``; else what the model's engine reads
    (a Keras model: the last dimension of ``model.output``).
    """
    if model is None:
        return None
    config = getattr(model, "config", None)
    count = getattr(config, "num_labels", None)
    if isinstance(count, int) and type(model).__name__.endswith("Classification"):
        return count
    owner = engine_of(model)
    return owner.num_labels(model) if owner is not None else None


class _Students:
    """Students built on demand from a few archs of the space: first, last, and each key's largest."""

    def __init__(self, ad: Any):
        self.ad = ad
        self._built: list[tuple[dict, Any]] = []
        self._candidates: Optional[Iterator[dict]] = None
        self.first_arch: Optional[dict] = None

    def _archs(self) -> Iterator[dict]:
        from .search.space import SearchSpace

        space = SearchSpace(self.ad.search_space)
        seen = []
        largest = {}
        for key, values in zip(space.keys, space.values):
            numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            largest[key] = max(numeric) if numeric else values[-1]
        for arch in (space.point(0), space.point(len(space) - 1), largest):
            if arch not in seen:
                seen.append(arch)
                yield arch

    def _build(self, arch: dict) -> Any:
        try:
            return self.ad.model_builder(dict(arch))
        except Exception as exc:  # noqa: BLE001 - an arch that cannot be built is a trial's failure
            log.info("dry run: arch %s cannot be built (%s); trying another", arch, exc)
            return None

    def __iter__(self) -> Iterator[tuple[dict, Any]]:
        yield from self._built
        if self._candidates is None:
            self._candidates = self._archs()
        for arch in self._candidates:
            model = self._build(arch)
            if model is None:
                continue
            if self.first_arch is None:
                self.first_arch = arch
            self._built.append((arch, model))
            yield arch, model

    def first(self) -> Any:
        for _, model in self:
            return model
        return None


def _stage_references(stages: Iterable[Any]) -> Iterator[tuple[str, str, str]]:
    """``(field path, role, layer name)`` for every layer the stages name."""
    for stage in stages:
        kind, _, index = str(stage.name).rpartition("_")
        base = f"flash_distillation.{kind}"
        for name in stage.block_names:
            yield f"{base}.block_names[{index}]", "student", name
        for j, mapping in enumerate(stage.mappings):
            where = f"{base}.layer_mappings_for_knowledge_transfer[{index}][{j}]"
            yield where, "student", mapping.student_layer
            yield where, "teacher", mapping.teacher_layer


def _check_layers(ad: Any, teacher: Any, students: _Students, search_engine: Engine) -> None:
    stages = list(getattr(ad.conf.flash, "stages", []) or [])
    if not stages:
        return
    teacher_engine = _model_engine(teacher, search_engine)
    teacher_names = teacher_engine.layer_names(teacher)
    student_names: dict[int, Optional[set[str]]] = {}
    for field, role, name in _stage_references(stages):
        if role == "teacher":
            problem = teacher_engine.missing_layer(teacher, teacher_names, name, "teacher")
            if problem:
                raise ConfigError(field, problem)
            continue
        problems = []
        for i, (_, student) in enumerate(students):
            student_engine = _model_engine(student, search_engine)
            names = student_names.setdefault(i, student_engine.layer_names(student))
            problem = student_engine.missing_layer(student, names, name, "student")
            if problem is None:
                break
            problems.append(problem)
        else:
            if problems:
                others = f" nor in {len(problems) - 1} other arch(s) of the space" if len(problems) > 1 else ""
                raise ConfigError(field, f"{problems[0]} (built from arch {students.first_arch}{others})")


# ------------------------------------------------------------------------------------------ data
def check_dataset(data: Any, field: str, n_labels: Optional[int], *, keras: bool = False,
                  reader: Optional[Engine] = None) -> None:
    """Refuse an empty dataset, labels outside ``[0, n_labels)``, NaN / infinity in float fields: the
    data as the engine ``reader`` reads it (by default the torch engine, the Keras one with ``keras``)."""
    if reader is None:
        reader = engine("tensorflow" if keras else "pytorch")
    seen = 0
    for offset, fields in reader.dataset_rows(data, field):
        seen += 1
        for key, arr in fields.items():
            _check_array(field, key, arr, offset, n_labels)
    if seen == 0:
        raise ConfigError(field, "the dataset is empty (0 examples)")


def _check_array(field: str, key: str, arr: np.ndarray, offset: int, n_labels: Optional[int]) -> None:
    """``arr``: a batch of one field, rows = examples from index ``offset``."""
    kind = arr.dtype.kind
    if kind in "fc":
        bad = ~np.isfinite(arr)
        if bad.any():
            at = tuple(np.argwhere(bad)[0])
            raise ConfigError(field, f"{key!r} of example {offset + int(at[0])} holds {arr[at].item()!r} "
                                     f"(NaN or infinity in the data)")
        return
    if key not in LABEL_KEYS or kind not in "iu" or not n_labels or n_labels < 2:
        return  # regression (one output) or unknown label count: no range to check
    bad = ((arr < 0) | (arr >= n_labels)) & (arr != IGNORE_INDEX)
    if bad.any():
        at = tuple(np.argwhere(bad)[0])
        raise ConfigError(field, f"label {int(arr[at])} at index {offset + int(at[0])} is out of range for a "
                                 f"teacher with {n_labels} labels (expected 0 to {n_labels - 1})")
