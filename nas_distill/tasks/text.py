"""Text classification task: a Hugging Face sequence-classification teacher, its tokenizer, and data
from local CSV / JSONL files or a Hugging Face dataset.

Use it from a config::

    task:
      entry: nas_distill.tasks.text:text_task
      args:
        teacher: path/or/hub-name          # AutoModelForSequenceClassification + AutoTokenizer
        data: {train: train.csv, eval: dev.jsonl}   # or one file (split by eval_split, seed 0),
                                                     # or a datasets name: "glue/sst2"
        text_column: text
        label_column: label
        max_length: 64

The data is tokenised once (padding to ``max_length``, truncation) into a dataset of dicts
(``input_ids``, ``attention_mask``, ``token_type_ids`` when the tokenizer gives them, ``labels``).
Labels are ints, or strings mapped through the teacher config's ``label2id`` (when it names them) or
else to the index of their sorted unique values. Students come from
``builders.from_config(student_base or the teacher's config, AutoModelForSequenceClassification)``.

Every bad input raises :class:`~nas_distill.errors.ConfigError` naming the field (``task.args.data``,
``task.args.text_column``, ...).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

FIELD = "task.args"
SPLIT_SEED = 0
_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".ndjson")
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


# ------------------------------------------------------------------------------------------ reading
def _read_file(path: str, field: str) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(field, f"no such file: {p}")
    suffix = p.suffix.lower()
    rows: list[dict[str, Any]] = []
    if suffix in (".csv", ".tsv"):
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            rows = [dict(r) for r in reader]
    elif suffix in (".jsonl", ".ndjson", ".json"):
        text = p.read_text(encoding="utf-8")
        stripped = text.lstrip()
        if suffix == ".json" and stripped.startswith("["):
            rows = json.loads(text)
        else:
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(field, f"{p} line {n} is not valid JSON: {exc}") from None
        if not all(isinstance(r, Mapping) for r in rows):
            raise ConfigError(field, f"{p}: every JSON line must be an object")
    else:
        raise ConfigError(field, f"unsupported file type {suffix!r} for {p} (use .csv, .tsv or .jsonl)")
    if not rows:
        raise ConfigError(field, f"{p} holds no rows")
    return rows


def _looks_like_file(spec: str) -> bool:
    return spec.lower().endswith(_FILE_SUFFIXES) or os.path.exists(spec)


def _read_hf_dataset(spec: str, field: str) -> tuple[list[dict], list[dict] | None]:
    """``name`` or ``name/config`` via ``datasets.load_dataset``: (train rows, eval rows or None)."""
    try:
        import datasets  # noqa: F401
        from datasets import load_dataset
    except ImportError:
        raise ConfigError(field, f"{spec!r} is neither an existing file nor loadable: the Hugging Face "
                                 f"'datasets' package is not installed (pip install datasets), or give "
                                 f"local CSV / JSONL paths") from None
    errors = []
    ds = None
    attempts = [(spec,)]
    if "/" in spec:
        head, tail = spec.rsplit("/", 1)
        attempts.append((head, tail))
    for attempt in attempts:
        try:
            ds = load_dataset(*attempt)
            break
        except Exception as exc:  # noqa: BLE001 - reported below with every attempt
            errors.append(f"load_dataset{attempt!r}: {exc}")
    if ds is None:
        raise ConfigError(field, f"cannot load dataset {spec!r}: " + "; ".join(errors))
    if "train" not in ds:
        raise ConfigError(field, f"dataset {spec!r} has no 'train' split (splits: {sorted(ds)})")
    eval_rows = None
    for name in ("validation", "validation_matched", "test"):
        if name in ds:
            eval_rows = [dict(r) for r in ds[name]]
            break
    return [dict(r) for r in ds["train"]], eval_rows


def load_rows(data: Any, eval_split: float = 0.2) -> tuple[list[dict], list[dict]]:
    """``data`` (path, ``{train, eval}`` paths, or a datasets name) -> (train rows, eval rows)."""
    field = f"{FIELD}.data"
    if isinstance(data, os.PathLike):
        data = os.fspath(data)
    if isinstance(data, Mapping):
        unknown = set(data) - {"train", "eval"}
        if unknown or "train" not in data:
            raise ConfigError(field, f"expected a path or {{train: path, eval: path}}, got keys {sorted(data)}")
        train = _read_file(os.fspath(data["train"]), f"{field}.train")
        if data.get("eval") is not None:
            return train, _read_file(os.fspath(data["eval"]), f"{field}.eval")
        rows, eval_rows = train, None
    elif isinstance(data, str) and data:
        if _looks_like_file(data):
            rows, eval_rows = _read_file(data, field), None
        else:
            rows, eval_rows = _read_hf_dataset(data, field)
    else:
        raise ConfigError(field, f"expected a file path, {{train, eval}} paths or a dataset name, got {data!r}")
    if eval_rows is not None:
        return rows, eval_rows
    if not (isinstance(eval_split, (int, float)) and 0 < eval_split < 1):
        raise ConfigError(f"{FIELD}.eval_split", f"expected a fraction in (0, 1), got {eval_split!r}")
    if len(rows) < 2:
        raise ConfigError(field, f"{len(rows)} row(s) cannot be split into train and eval")
    order = list(range(len(rows)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * eval_split)))
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


# ------------------------------------------------------------------------------------------- labels
def _check_column(rows: Sequence[Mapping], column: str, arg: str, where: str) -> None:
    for i, row in enumerate(rows):
        if column not in row:
            raise ConfigError(f"{FIELD}.{arg}", f"column {column!r} not found in {where} row {i}; columns "
                                                f"found: {sorted(row)}")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def label_ids(raw: Sequence[Any], teacher_config: Any) -> list[int]:
    """Labels as ints in ``range(teacher num_labels)`` (see the module docstring for the rules)."""
    field = f"{FIELD}.label_column"
    num_labels = int(getattr(teacher_config, "num_labels", 0) or 0)
    ints = [_as_int(v) for v in raw]
    if all(v is not None for v in ints):
        ids = ints
        distinct = sorted(set(ids))
        how = f"integer labels {distinct}"
    else:
        values = [str(v).strip() for v in raw]
        label2id = dict(getattr(teacher_config, "label2id", None) or {})
        distinct_s = sorted(set(values))
        custom = label2id and not all(_DEFAULT_LABEL.match(str(k)) for k in label2id)
        if custom and all(v in label2id for v in distinct_s):
            ids = [int(label2id[v]) for v in values]
            how = f"labels {distinct_s} (via the teacher's label2id)"
        elif custom:
            missing = [v for v in distinct_s if v not in label2id]
            raise ConfigError(field, f"labels {missing} are not in the teacher's label2id "
                                     f"{sorted(label2id)}")
        else:
            mapping = {v: i for i, v in enumerate(distinct_s)}
            ids = [mapping[v] for v in values]
            how = f"labels {distinct_s} (sorted, mapped to 0..{len(distinct_s) - 1})"
        distinct = sorted(set(ids))
    if len(distinct) != num_labels or (distinct and (distinct[0] < 0 or distinct[-1] >= num_labels)):
        raise ConfigError(field, f"the data has {len(distinct)} distinct label(s) ({how}) but the teacher "
                                 f"has num_labels={num_labels}")
    return ids


# --------------------------------------------------------------------------------------- tokenising
class TokenizedDataset:
    """A torch-style dataset of dicts of int64 tensors (``input_ids``, ``attention_mask``, ...,
    ``labels``), tokenised once."""

    def __init__(self, features: Mapping[str, Any], labels: Sequence[int]):
        import torch

        self.features = {k: torch.as_tensor(v, dtype=torch.long) for k, v in features.items()}
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        for k, v in self.features.items():
            if len(v) != len(self.labels):
                raise ValueError(f"{k}: {len(v)} rows but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        item = {k: v[index] for k, v in self.features.items()}
        item["labels"] = self.labels[index]
        return item


def tokenize(tokenizer: Any, texts: Sequence[str], labels: Sequence[int], max_length: int) -> TokenizedDataset:
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length)
    keep = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    return TokenizedDataset(keep, labels)


# ------------------------------------------------------------------------------------------- entry
def text_task(
    config: Any,
    teacher: str,
    data: Any,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 64,
    eval_split: float = 0.2,
    student_base: Any = None,
) -> dict[str, Any]:
    """Task entry point (``task: {entry: nas_distill.tasks.text:text_task, args: {...}}``)."""
    if not isinstance(teacher, (str, os.PathLike)) or not os.fspath(teacher):
        raise ConfigError(f"{FIELD}.teacher", f"expected a local path or a hub name, got {teacher!r}")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
        raise ConfigError(f"{FIELD}.max_length", f"expected a positive int, got {max_length!r}")
    for arg, value in (("text_column", text_column), ("label_column", label_column)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{FIELD}.{arg}", f"expected a column name, got {value!r}")

    train_rows, eval_rows = load_rows(data, eval_split)
    for rows, where in ((train_rows, "train"), (eval_rows, "eval")):
        if not rows:
            raise ConfigError(f"{FIELD}.data", f"the {where} data is empty")
        _check_column(rows, text_column, "text_column", where)
        _check_column(rows, label_column, "label_column", where)

    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from ..builders import from_config

    teacher = os.fspath(teacher)
    try:
        teacher_config = AutoConfig.from_pretrained(teacher)
        tokenizer = AutoTokenizer.from_pretrained(teacher)
        teacher_model = AutoModelForSequenceClassification.from_pretrained(teacher)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{FIELD}.teacher", f"cannot load a sequence-classification teacher and its "
                                              f"tokenizer from {teacher!r}: {exc}") from None
    teacher_model.eval()

    raw = [r[label_column] for r in train_rows] + [r[label_column] for r in eval_rows]
    ids = label_ids(raw, teacher_model.config)
    train_ids, eval_ids = ids[: len(train_rows)], ids[len(train_rows):]
    texts_train = ["" if r[text_column] is None else str(r[text_column]) for r in train_rows]
    texts_eval = ["" if r[text_column] is None else str(r[text_column]) for r in eval_rows]
    train_dataset = tokenize(tokenizer, texts_train, train_ids, max_length)
    eval_dataset = tokenize(tokenizer, texts_eval, eval_ids, max_length)

    try:
        model_builder = from_config(student_base if student_base is not None else teacher_config,
                                    AutoModelForSequenceClassification)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{FIELD}.student_base", f"cannot load a student base config from "
                                                   f"{student_base!r}: {exc}") from None
    return {"model_builder": model_builder, "teacher_model": teacher_model,
            "train_dataset": train_dataset, "eval_dataset": eval_dataset, "preprocessor": tokenizer}
