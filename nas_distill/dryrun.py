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

Frameworks: ``'pytorch'`` reads torch-style datasets through :mod:`nas_distill.distill.torch.data`
(imported only on that path); ``'tensorflow'`` reads ``(x, y)`` numpy tuples and never imports torch
(Keras models are recognised by duck typing; their label count is the last dimension of
``model.output``). Anything the dry run cannot read the same way the engine will (an unknown model
type, a ``tf.data`` pipeline) is left to the engine: the dry run only refuses what it is sure about.

A student layer missing from the first architecture may exist in a bigger one (a mapping on layer 5
while some archs have 4 layers): a student-side name is refused only when the smallest-index, the
last and the per-key largest architectures all lack it; such archs then fail as trials, not the setup.
"""

from __future__ import annotations

import difflib
import logging
import sys
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np

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
    keras = getattr(ad, "framework", "pytorch") == "tensorflow"
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
        check_dataset(train, "train_dataset", labels, keras=keras)
        _check_layers(ad, teacher, students, keras=keras)
    if use_eval:
        check_dataset(evaluation, "eval_dataset", labels, keras=keras)
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
    keras = getattr(ad, "framework", "pytorch") == "tensorflow"
    if keras:
        from .distill.keras.evaluate import METRICS as known
    else:
        from .evaluate import METRICS as known
    from .evaluate import unknown_metrics

    names = list(getattr(ad, "metrics", []) or [])
    unknown = unknown_metrics(names, known)
    if not unknown:
        return
    field = f"search.metrics[{names.index(unknown[0])}]"
    compute = getattr(ad, "compute_metrics", None)
    if compute is None or keras:
        how = ("set eval_func(model) -> {name: value}" if keras else
               "set eval_func(model) -> {name: value}, or compute_metrics(EvalPrediction) -> dict returning it")
        raise ConfigError(field, f"the built-in evaluator cannot measure {unknown[0]!r} (it knows "
                                 f"{', '.join(known)}, with or without 'eval_'); {how}")
    produced = _compute_metrics_names(ad, compute)
    if produced is None:
        return  # nothing to run it on yet (no eval_dataset): the evaluation itself will say so
    from .evaluate import metric_from

    missing = [n for n in unknown if metric_from(dict.fromkeys(produced, 0), n) is None]
    if missing:
        raise ConfigError(f"search.metrics[{names.index(missing[0])}]",
                          f"compute_metrics returned {sorted(produced)}, not {missing[0]!r} (with or without "
                          f"'eval_'), and the built-in evaluator does not measure it")


def _compute_metrics_names(ad: Any, compute: Any) -> Optional[list[str]]:
    """The keys ``compute`` returns for the first batch of ``ad.eval_dataset`` through the first buildable
    student; None when there is no evaluation data or no student to run."""
    data = getattr(ad, "eval_dataset", None)
    if data is None:
        return None
    import torch

    from .evaluate import call_compute_metrics, eval_pass

    student = _Students(ad).first()
    if student is None:
        return None
    settings = getattr(getattr(ad, "conf", None), "evaluation", None)
    batch = int(getattr(settings, "batch_size", 64) or 64)
    try:
        n = min(batch, len(data))
        head = torch.utils.data.Subset(data, range(n)) if n < len(data) else data
        result = eval_pass(student, head, batch, getattr(settings, "device", "auto"), keep_logits=True)
        return list(call_compute_metrics(compute, result.logits, result.labels))
    except Exception as exc:  # noqa: BLE001 - the user's function failing on real outputs is a setup error
        raise ConfigError("compute_metrics", f"failed on the first evaluation batch: "
                                             f"{type(exc).__name__}: {exc}") from exc


def _estimate_overridden(ad: Any) -> bool:
    method = getattr(ad, "_estimate_overridden", None)
    return bool(method()) if callable(method) else False


# ------------------------------------------------------------------------------------------ models
def num_labels(model: Any) -> Optional[int]:
    """The label count of a classifier, or ``None`` when it cannot be told without running it.

    Hugging Face ``*Classification`` models: ``config.num_labels``; Keras models: the last dimension of
    ``model.output`` (duck-typed: keras is never imported here).
    """
    if model is None:
        return None
    config = getattr(model, "config", None)
    count = getattr(config, "num_labels", None)
    if isinstance(count, int) and type(model).__name__.endswith("Classification"):
        return count
    if _is_keras(model):
        try:
            shape = model.output.shape
        except Exception:  # noqa: BLE001 - not built, several outputs, ...: unknown
            return None
        last = shape[-1] if len(shape) else None
        return int(last) if isinstance(last, (int, np.integer)) and last > 0 else None
    return None


def _is_keras(model: Any) -> bool:
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(model, getattr(keras, "Model", ()))


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


def _layer_names(model: Any, keras: bool) -> Optional[set[str]]:
    if keras or _is_keras(model):
        return None  # resolved one by one (names and outer/inner paths), see _missing
    named = getattr(model, "named_modules", None)
    return {name for name, _ in named()} if callable(named) else None


def _missing(model: Any, names: Optional[set[str]], name: str, role: str) -> Optional[str]:
    """Why ``model`` lacks layer ``name`` (a message), or None when it has it or cannot be asked."""
    if names is not None:
        from .builders import check_layers
        from .errors import InvalidArchitecture

        try:
            check_layers(model, [name], role)
        except InvalidArchitecture:
            hint = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
            return f"the {role} has no module named {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        return None
    if _is_keras(model):
        try:
            from .distill.keras.layers import LayerNotFound, resolve_layer
        except ImportError:  # pragma: no cover - the Keras engine is not installed
            return None
        try:
            resolve_layer(model, name, role)
        except LayerNotFound as exc:
            return f"the {exc}"  # names the layer, lists the ones there, suggests a close one
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


def _check_layers(ad: Any, teacher: Any, students: _Students, *, keras: bool) -> None:
    stages = list(getattr(ad.conf.flash, "stages", []) or [])
    if not stages:
        return
    teacher_names = _layer_names(teacher, keras)
    student_names: dict[int, Optional[set[str]]] = {}
    for field, role, name in _stage_references(stages):
        if role == "teacher":
            problem = _missing(teacher, teacher_names, name, "teacher")
            if problem:
                raise ConfigError(field, problem)
            continue
        problems = []
        for i, (arch, student) in enumerate(students):
            problem = _missing(student, student_names.setdefault(i, _layer_names(student, keras)), name, "student")
            if problem is None:
                break
            problems.append(problem)
        else:
            if problems:
                others = f" nor in {len(problems) - 1} other arch(s) of the space" if len(problems) > 1 else ""
                raise ConfigError(field, f"{problems[0]} (built from arch {students.first_arch}{others})")


# ------------------------------------------------------------------------------------------ data
def check_dataset(data: Any, field: str, n_labels: Optional[int], *, keras: bool = False) -> None:
    """Refuse an empty dataset, labels outside ``[0, n_labels)``, NaN / infinity in float fields."""
    if keras or isinstance(data, tuple):
        rows = _numpy_rows(data, field)
    else:
        rows = _torch_rows(data, field)
    seen = 0
    for offset, fields in rows:
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


def _torch_rows(data: Any, field: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Batches of numpy fields from a torch-style dataset: whole columns at once for a Hugging Face
    dataset, else one example at a time (no collation: memory stays one example)."""
    from .distill.torch.data import _columns, read_example, unwrap_dataset

    try:
        dataset = unwrap_dataset(data)
        n = len(dataset)
    except (TypeError, ValueError) as exc:
        raise ConfigError(field, str(exc)) from None
    if n == 0:
        return
    columns = _columns(dataset)
    if columns is not None:
        yield 0, {k: _numpy(v) for k, v in columns.items()}
        return
    for i in range(n):
        try:
            example = read_example(dataset, i)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise ConfigError(field, f"example {i} cannot be read: {exc}") from None
        yield i, {k: _numpy(v)[None] for k, v in example.items()}


def _numpy(tensor: Any) -> np.ndarray:
    if tensor.is_floating_point() and tensor.dtype.itemsize < 4:  # bfloat16 has no numpy dtype
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


def _numpy_rows(data: Any, field: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """The Keras engine's ``(x, y)`` numpy tuple as one batch; anything else (a ``tf.data`` pipeline) is
    not scanned."""
    if not isinstance(data, (tuple, list)) or len(data) not in (1, 2):
        log.info("dry run: %s is not an (x, y) tuple; not scanned", field)
        yield 0, {}
        return
    x, y = data[0], (data[1] if len(data) == 2 else None)
    inputs = x if isinstance(x, Mapping) else {"x": x}
    fields: dict[str, np.ndarray] = {}
    for key, value in inputs.items():
        try:
            fields[str(key)] = np.asarray(value)
        except Exception:  # noqa: BLE001 - ragged: the engine reports it with its own message
            continue
    if y is not None:
        fields["labels"] = np.asarray(y)
    lengths = {len(a) for a in fields.values() if a.ndim > 0}
    if not lengths or min(lengths) == 0:
        return
    yield 0, {k: a for k, a in fields.items() if a.dtype.kind in "biufc"}
