"""Teacher cache: zero teacher calls when warm, fp16 only when lossless, concurrency, corruption,
augmentation bypass."""

import json
import logging
import multiprocessing as mp
import os

import numpy as np
import pytest
import torch

from _support import torch_cache_worker
from _support.flash import cache_entries, damage_cache_entry
from _support.torch_models import (
    ListDataset,
    NoisyDataset,
    flash,
    make_image_examples,
    save_and_load,
    stage,
    vit_config,
)
from nas_distill.distill.torch import FlashDistiller
from nas_distill.distill.torch import cache as cache_mod
from nas_distill.distill.torch.cache import read_entry, storage_dtype

KT = dict(name="kt", kind="knowledge_transfer",
          mappings=[("bert.encoder.layer.0", "bert.encoder.layer.1"), ("bert.encoder.layer.1",)],
          train_steps=2)


class CallCounter:
    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1


def test_warm_disk_cache_means_zero_teacher_calls(bert_teacher, bert_student, text_data, tmp_path):
    stages = [stage(**KT), stage(train_steps=2, add_origin_loss=True)]
    first = FlashDistiller(bert_teacher, text_data, flash(stages, cache_dir=str(tmp_path)))
    counter = CallCounter(bert_teacher)
    try:
        assert first.prepare() == "disk"
        assert counter.calls > 0  # the cold cache ran the teacher once over the data
        counter.calls = 0
        # a new distiller (as in another trial / worker) on the same folder: no teacher forward at all
        second = FlashDistiller(bert_teacher, text_data, flash(stages, cache_dir=str(tmp_path)))
        res = second.distill(bert_student, seed=0)
        assert counter.calls == 0 and res.teacher_forward_calls == 0
        assert len(cache_entries(tmp_path)) == 1
        # the live teacher runs when the cache is disabled
        live = FlashDistiller(bert_teacher, text_data, flash(stages, cache=False))
        res = live.distill(bert_student, seed=0)
        assert counter.calls == res.teacher_forward_calls == 4
    finally:
        counter.handle.remove()


def test_cached_targets_match_live_teacher(bert_teacher, text_data, tmp_path):
    d = FlashDistiller(bert_teacher, text_data, flash([stage(**KT)], cache_dir=str(tmp_path)))
    d.prepare()
    idx = torch.tensor([5, 0, 17])
    batch = d.data.batch(idx)
    with torch.no_grad():
        out = bert_teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                           output_hidden_states=True)
    assert torch.allclose(d._gather_cached(None, idx).float(), out.logits, atol=1e-2)
    assert torch.allclose(d._gather_cached("bert.encoder.layer.1", idx).float(), out.hidden_states[2], atol=1e-2)


def test_features_over_budget_are_computed_live(bert_teacher, bert_student, text_data):
    d = FlashDistiller(bert_teacher, text_data, flash([stage(**KT)]))
    d.settings.teacher_cache.__dict__["feature_budget_mb"] = 0.0  # frozen dataclass: test-only override
    counter = CallCounter(bert_teacher)
    try:
        res = d.distill(bert_student)
    finally:
        counter.handle.remove()
    assert set(d._cached) == {None}  # logits only
    assert res.teacher_forward_calls == 2


def test_fp16_only_when_lossless():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    assert storage_dtype(x) == np.float16
    assert storage_dtype(x, "float32") == np.float32
    assert storage_dtype(x * 1000) == np.float32  # rounding error ~0.5 at |x| ~ 1000
    assert storage_dtype(x * 1e5) == np.float32  # overflows float16
    assert storage_dtype(x * 1e-6) == np.float32  # subnormal: relative error too large
    assert storage_dtype(np.zeros((2, 2), np.float32)) == np.float16


def test_cache_stores_fp32_when_teacher_logits_are_large(bert_teacher, text_data, tmp_path):
    import copy

    teacher = copy.deepcopy(bert_teacher)
    with torch.no_grad():
        teacher.classifier.weight.mul_(1e4)
    d = FlashDistiller(teacher, text_data, flash([stage(**KT)], cache_dir=str(tmp_path)))
    d.prepare()
    (fp,) = cache_entries(tmp_path)
    manifest = json.loads((tmp_path / fp / "manifest.json").read_text())
    dtypes = {info["key"]: info["dtype"] for info in manifest["arrays"].values()}
    assert dtypes[None] == "float32"  # logits: float16 would distort them
    assert dtypes["bert.encoder.layer.1"] == "float16"  # layer-normed features: lossless enough


@pytest.mark.slow  # two spawned interpreters importing torch + transformers: ~10-20 s each
@pytest.mark.parametrize("use_lock", [True, False], ids=["flock", "rename-only"])
def test_two_processes_fill_one_cache(bert_teacher, tmp_path, use_lock):
    teacher_path = str(tmp_path / "teacher")
    bert_teacher.save_pretrained(teacher_path)
    cache_dir = str(tmp_path / "cache")
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    outs = [str(tmp_path / f"out{i}") for i in range(2)]
    procs = [ctx.Process(target=torch_cache_worker.fill_cache, args=(teacher_path, cache_dir, use_lock, start, o))
             for o in outs]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    digests = [open(o).read() for o in outs]
    assert digests[0] == digests[1]
    (fp,) = cache_entries(cache_dir)
    assert read_entry(cache_dir, fp) is not None


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-manifest"])
def test_corrupt_cache_is_rebuilt(bert_teacher, text_data, tmp_path, damage):
    settings = flash([stage(**KT)], cache_dir=str(tmp_path))
    FlashDistiller(bert_teacher, text_data, settings).prepare()
    fp, path, good = damage_cache_entry(tmp_path, damage)
    assert read_entry(str(tmp_path), fp) is None  # never trusted
    counter = CallCounter(bert_teacher)
    try:
        d = FlashDistiller(bert_teacher, text_data, settings)
        d.prepare()
    finally:
        counter.handle.remove()
    assert counter.calls > 0  # rebuilt from the teacher
    assert path.read_bytes() == good
    assert read_entry(str(tmp_path), fp) is not None
    assert cache_entries(tmp_path) == [fp]  # the broken copy is gone


def test_leftover_temp_folder_of_a_dead_writer_is_removed(bert_teacher, text_data, tmp_path):
    settings = flash([stage(**KT)], cache_dir=str(tmp_path))
    FlashDistiller(bert_teacher, text_data, settings).prepare()
    (fp,) = cache_entries(tmp_path)
    os.rename(tmp_path / fp, tmp_path / f".tmp-{fp[:16]}-dead")  # as if the writer died before publishing
    assert read_entry(str(tmp_path), fp) is None
    FlashDistiller(bert_teacher, text_data, settings).prepare()
    assert cache_entries(tmp_path) == [fp]


def test_no_pickle_in_cache_files(bert_teacher, text_data, tmp_path):
    FlashDistiller(bert_teacher, text_data, flash([stage(**KT)], cache_dir=str(tmp_path))).prepare()
    (fp,) = cache_entries(tmp_path)
    for name in os.listdir(tmp_path / fp):
        if name.endswith(".npy"):
            np.load(tmp_path / fp / name, allow_pickle=False)  # would raise on an object array


def test_fingerprint_depends_on_weights_and_data(bert_teacher, text_data):
    from nas_distill.distill.torch.data import CollatedData

    fields = CollatedData.from_dataset(text_data).fields
    a = cache_mod.fingerprint(bert_teacher, fields, ["x"])
    assert a == cache_mod.fingerprint(bert_teacher, fields, ["x"])
    assert a != cache_mod.fingerprint(bert_teacher, fields, ["y"])
    other = dict(fields, input_ids=fields["input_ids"].flip(0))
    assert a != cache_mod.fingerprint(bert_teacher, other, ["x"])
    import copy

    t2 = copy.deepcopy(bert_teacher)
    with torch.no_grad():
        t2.classifier.bias.add_(1e-3)
    assert a != cache_mod.fingerprint(t2, fields, ["x"])


@pytest.fixture(scope="module")
def vit_teacher(tmp_path_factory):
    import transformers

    torch.manual_seed(0)
    return save_and_load(transformers.ViTForImageClassification(vit_config()), tmp_path_factory.mktemp("vit"))


def test_augmented_dataset_is_detected_and_bypassed(vit_teacher, tmp_path, caplog):
    import transformers

    student = transformers.ViTForImageClassification(vit_config(hidden_size=16, num_attention_heads=2))
    data = NoisyDataset(make_image_examples(16))
    with caplog.at_level(logging.WARNING):
        d = FlashDistiller(vit_teacher, data, flash([stage(train_steps=2)], cache_dir=str(tmp_path)))
    assert "augmentation" in caplog.text
    res = d.distill(student)
    assert res.teacher_cache == "bypassed" and res.teacher_forward_calls == 2
    assert not os.listdir(tmp_path)  # nothing cached


def test_augmentation_setting_bypasses_cache(vit_teacher, tmp_path):
    import transformers

    student = transformers.ViTForImageClassification(vit_config(hidden_size=16, num_attention_heads=2))
    data = ListDataset(make_image_examples(16))
    d = FlashDistiller(vit_teacher, data, flash([stage(train_steps=2)], cache_dir=str(tmp_path), augmentation=True))
    res = d.distill(student)
    assert res.teacher_cache == "bypassed" and res.teacher_forward_calls == 2
