"""Training data for flash distillation: collate once, then index.

Flash distillation trains every candidate student on the same few hundred batches. Collating the
dataset into one tensor per field up front (``CollatedData``) makes a batch a single ``index_select``
per field, with no per-step Python collation, and gives every example a stable integer index, which is
what the teacher cache is keyed by.

Accepted inputs: a ``torch.utils.data.DataLoader`` (its ``.dataset`` is used), any map-style dataset
whose items are dicts of array-likes (the transformers convention: ``input_ids``, ``attention_mask``,
``token_type_ids``, ``labels`` or ``pixel_values``), and Hugging Face ``datasets.Dataset`` objects,
handled duck-typed (``__len__`` / ``__getitem__`` / ``with_format``) so ``datasets`` is not a
dependency.

Augmentation: a dataset that returns different values for the same index on two reads cannot be
collated once (that would freeze one random draw) nor cached. :func:`is_deterministic` detects it;
:class:`LiveData` then re-reads the dataset for every batch.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Fields that are model inputs or labels in the transformers convention; anything else numeric is kept
# too (a custom model may want it), strings and other non-numeric fields are dropped.
LABEL_KEYS = ("labels", "label")


def unwrap_dataset(data: Any) -> Any:
    """The indexable dataset behind ``data`` (a DataLoader's ``.dataset``; HF datasets as numpy)."""
    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    with_format = getattr(data, "with_format", None)
    if callable(with_format) and hasattr(data, "column_names"):
        # Hugging Face datasets: numpy format gives arrays instead of Python lists, and never pickles.
        data = with_format("numpy")
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(
            f"training data must be a DataLoader, a map-style Dataset or a datasets.Dataset; "
            f"got {type(data).__name__}"
        )
    return data


def _to_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (str, bytes)):
        return None
    try:
        arr = np.asarray(value)
    except Exception:  # ragged or exotic values: not a field we can batch
        return None
    if arr.dtype.kind not in "biuf":
        return None
    # torch.as_tensor keeps 0-d scalars 0-d (np.ascontiguousarray would make them 1-d)
    return torch.as_tensor(arr)


def read_example(dataset: Any, index: int) -> dict[str, torch.Tensor]:
    """One example as a dict of tensors (``label`` renamed ``labels``, non-numeric fields dropped)."""
    item = dataset[int(index)]
    if not isinstance(item, Mapping):
        raise TypeError(
            f"dataset items must be dicts of model inputs (input_ids, attention_mask, labels, ...); "
            f"item {index} is a {type(item).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in item.items():
        tensor = _to_tensor(value)
        if tensor is None:
            continue
        out["labels" if key == "label" else key] = tensor
    return out


def stack_examples(examples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack examples field by field; 1-D sequences of unequal length are right-padded with 0.

    Padding with 0 is safe for pre-tokenised text because the padded ``attention_mask`` is 0 there.
    """
    keys = list(examples[0].keys())
    out = {}
    for key in keys:
        values = [ex[key] for ex in examples]
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            if not all(v.dim() == 1 for v in values):
                raise ValueError(f"field {key!r} has examples of different shapes {sorted(shapes)[:3]}")
            width = max(v.shape[0] for v in values)
            values = [torch.nn.functional.pad(v, (0, width - v.shape[0])) for v in values]
        out[key] = torch.stack(values)
    return out


def is_deterministic(dataset: Any, probes: int = 3) -> bool:
    """True when reading a few indices twice gives identical tensors (no random augmentation)."""
    n = len(dataset)
    if n == 0:
        return True
    picks = sorted({0, n // 2, n - 1})[:probes]
    for i in picks:
        a, b = read_example(dataset, i), read_example(dataset, i)
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
            return False
    return True


def _columns(dataset: Any) -> dict[str, torch.Tensor] | None:
    """Whole numeric columns of a Hugging Face dataset in one read (``dataset[:]``), or ``None`` when
    that is not possible (not column-based, or ragged rows that need padding: the per-example path)."""
    if not hasattr(dataset, "column_names"):
        return None
    try:
        columns = dataset[:]
    except Exception:
        return None
    if not isinstance(columns, Mapping):
        return None
    out = {}
    for key, value in columns.items():
        arr = value if isinstance(value, torch.Tensor) else np.asarray(value)
        kind = "f" if isinstance(arr, torch.Tensor) else arr.dtype.kind
        if kind not in "biuf":
            if kind == "O":  # ragged (unequal lengths): let the per-example path pad it
                return None
            continue
        if arr.shape[0] != len(dataset):
            return None
        out["labels" if key == "label" else key] = torch.as_tensor(arr)
    return out or None


class CollatedData:
    """Every example of a deterministic dataset, collated into one tensor per field.

    ``fields[k][i]`` is field ``k`` of example ``i``. :meth:`batch` gathers a batch by example index.
    """

    live = False

    def __init__(self, fields: dict[str, torch.Tensor]):
        if not fields:
            raise ValueError("the training data has no numeric fields")
        lengths = {v.shape[0] for v in fields.values()}
        if len(lengths) != 1:
            raise ValueError(f"collated fields have different lengths: {lengths}")
        self.fields = fields
        self.n = lengths.pop()

    @classmethod
    def from_dataset(cls, data: Any) -> "CollatedData":
        dataset = unwrap_dataset(data)
        if len(dataset) == 0:
            raise ValueError("the training data is empty")
        fast = _columns(dataset)
        if fast is not None:
            return cls(fast)
        return cls(stack_examples([read_example(dataset, i) for i in range(len(dataset))]))

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.index_select(0, indices) for k, v in self.fields.items()}

    def to(self, device: torch.device) -> "CollatedData":
        """Move every field to ``device`` once, so a batch is gathered there with no copy per step."""
        return CollatedData({k: v.to(device) for k, v in self.fields.items()})


class LiveData:
    """A dataset that must be re-read for every batch (random augmentation): nothing is collated."""

    live = True

    def __init__(self, data: Any):
        self.dataset = unwrap_dataset(data)
        self.n = len(self.dataset)

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return stack_examples([read_example(self.dataset, int(i)) for i in indices])


def prepare_data(data: Any, augmentation: bool = False) -> CollatedData | LiveData:
    """Collate ``data`` once, or wrap it live when augmentation is configured or detected."""
    if isinstance(data, (CollatedData, LiveData)):
        return data
    if augmentation:
        return LiveData(data)
    dataset = unwrap_dataset(data)
    if not is_deterministic(dataset):
        logger.warning(
            "the training dataset returns different values for the same index on two reads "
            "(random augmentation?); the teacher cache is bypassed and batches are read live"
        )
        return LiveData(dataset)
    return CollatedData.from_dataset(dataset)


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` batches of example indices: reshuffled every epoch by a generator seeded with ``seed``.

    The order depends only on ``(n, batch_size, steps, seed)``, so the same seed gives the same batches
    in every process. Batches never straddle an epoch boundary (a short last batch is dropped when the
    data holds more than one batch).
    """
    gen = torch.Generator().manual_seed(int(seed))
    bs = min(batch_size, n)
    per_epoch = n // bs
    produced = 0
    while produced < steps:
        perm = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            if produced >= steps:
                return
            yield perm[b * bs:(b + 1) * bs]
            produced += 1
