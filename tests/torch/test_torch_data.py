"""Training data: collation, DataLoaders, duck-typed HF datasets, deterministic order."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from _support.torch_models import ListDataset, NoisyDataset, make_image_examples, make_text_examples
from nas_distill.distill.torch.data import CollatedData, LiveData, batch_indices, prepare_data


class FakeHFDataset:
    """Duck-typed ``datasets.Dataset``: column_names, with_format, rows as dicts of lists."""

    def __init__(self, rows, fmt=None):
        self.rows, self.fmt = rows, fmt
        self.column_names = list(rows[0])

    def with_format(self, fmt):
        return self if fmt == self.fmt else FakeHFDataset(self.rows, fmt)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):  # column access, as datasets gives it
            self.column_reads = getattr(self, "column_reads", 0) + 1
            cols = {k: [r[k] for r in self.rows[i]] for k in self.column_names}
            if self.fmt != "numpy":
                return cols
            out = {}
            for k, v in cols.items():
                try:
                    out[k] = np.asarray(v)
                except ValueError:  # ragged
                    out[k] = np.asarray(v, dtype=object)
            return out
        row = self.rows[i]
        return {k: (np.asarray(v) if self.fmt == "numpy" else v) for k, v in row.items()}


def test_collate_dataset_and_dataloader():
    items = make_text_examples(10)
    data = prepare_data(ListDataset(items))
    assert isinstance(data, CollatedData) and len(data) == 10
    assert torch.equal(data.fields["input_ids"][3], items[3]["input_ids"])
    loader = torch.utils.data.DataLoader(ListDataset(items), batch_size=4)
    assert torch.equal(prepare_data(loader).fields["labels"], data.fields["labels"])
    batch = data.batch(torch.tensor([4, 1]))
    assert torch.equal(batch["input_ids"][1], items[1]["input_ids"])


def test_hf_style_dataset_label_renamed_and_padded():
    rows = [{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "label": 1, "text": "abc"},
            {"input_ids": [4, 5], "attention_mask": [1, 1], "label": 0, "text": "de"}]
    data = prepare_data(FakeHFDataset(rows))
    assert set(data.fields) == {"input_ids", "attention_mask", "labels"}  # strings dropped
    assert data.fields["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert data.fields["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert data.fields["labels"].tolist() == [1, 0]


def test_augmented_dataset_is_read_live():
    assert isinstance(prepare_data(NoisyDataset(make_image_examples(4))), LiveData)
    assert isinstance(prepare_data(ListDataset(make_image_examples(4)), augmentation=True), LiveData)


def test_batch_order_is_deterministic_per_seed():
    a = [b.tolist() for b in batch_indices(10, 4, 7, seed=3)]
    assert a == [b.tolist() for b in batch_indices(10, 4, 7, seed=3)]
    assert a != [b.tolist() for b in batch_indices(10, 4, 7, seed=4)]
    assert len(a) == 7 and all(len(b) == 4 for b in a)
    assert sorted(a[0] + a[1]) == sorted(set(a[0] + a[1]))  # no repeats within an epoch
    assert [len(b) for b in batch_indices(3, 8, 2, 0)] == [3, 3]  # fewer examples than a batch


def test_rejects_non_dict_items():
    with pytest.raises(TypeError, match="dicts"):
        prepare_data(ListDataset([torch.zeros(3)]))


def test_hf_style_dataset_read_by_columns():
    rows = [{"input_ids": [i, i + 1], "label": i % 2, "text": "x"} for i in range(5)]
    ds = FakeHFDataset(rows).with_format("numpy")
    data = CollatedData.from_dataset(ds)
    assert ds.column_reads == 1
    assert data.fields["input_ids"].tolist() == [[i, i + 1] for i in range(5)]
    assert data.fields["labels"].tolist() == [0, 1, 0, 1, 0] and set(data.fields) == {"input_ids", "labels"}


@given(st.lists(st.sampled_from(["a", "a.b", "a.b.1", "a.b.10", "a.b.1x", "a.b.1.c", "c"]), max_size=3),
       st.sampled_from(["a", "a.b", "a.b.1", "a.b.10.w", "a.b.1.c.d", "a.b.11", "c.d", "ca"]))
def test_in_block_matches_whole_path_components(prefixes, name):
    from nas_distill.distill.torch.distiller import in_block

    parts = name.split(".")
    expected = any(p.split(".") == parts[: len(p.split("."))] for p in prefixes)
    assert in_block(name, prefixes) == expected


@given(st.integers(1, 40), st.integers(1, 16), st.integers(0, 30), st.integers(0, 2**31))
def test_batches_cover_each_example_once_per_epoch(n, bs, steps, seed):
    batches = [b.tolist() for b in batch_indices(n, bs, steps, seed)]
    assert len(batches) == steps
    size = min(bs, n)
    per_epoch = n // size
    for e in range(0, steps, per_epoch):
        epoch = [i for b in batches[e:e + per_epoch] for i in b]
        assert len(epoch) == len(set(epoch)) and all(0 <= i < n for i in epoch)
