"""Keras teacher cache: zero teacher calls when warm, same results, corruption rebuilt, concurrent
fillers, the float16 rule, the fingerprint, augmentation bypass."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from _support.flash import cache_entries, damage_cache_entry
from _support.keras_models import digits, flash, mlp, stage
from nas_distill.distill.keras import KerasFlashDistiller
from nas_distill.distill.keras import cache as cache_mod
from nas_distill.distill.keras.cache import read_entry

KT = dict(name="kt", kind="knowledge_transfer", mappings=[("dense_1", "t_1"), ("dense_2", "t_2")], train_steps=3)
STAGES = [stage(**KT), stage(train_steps=3, add_origin_loss=True, temperature=2.0)]


def calls(teacher):
    return teacher.get_layer("calls").calls


def test_warm_disk_cache_means_zero_teacher_calls_and_the_same_result(teacher, train_data, tmp_path):
    first = KerasFlashDistiller(teacher, train_data, flash(STAGES, cache_dir=str(tmp_path)))
    assert first.prepare() == "disk"
    assert calls(teacher) == 4  # the cold cache ran the teacher once over the data (256 rows / 64)
    s1 = mlp((16, 16), name="student", seed=2)
    r1 = first.distill(s1, seed=3)
    # a new distiller (as in another trial / worker) on the same folder: no teacher forward at all
    second = KerasFlashDistiller(teacher, train_data, flash(STAGES, cache_dir=str(tmp_path)))
    s2 = mlp((16, 16), name="student", seed=2)
    r2 = second.distill(s2, seed=3)
    assert calls(teacher) == 4 and r1.teacher_forward_calls == r2.teacher_forward_calls == 0
    assert r2.teacher_cache == "disk" and len(cache_entries(tmp_path)) == 1
    assert [s.final_loss for s in r1.stages] == [s.final_loss for s in r2.stages]
    assert all(np.array_equal(a, b) for a, b in zip(s1.get_weights(), s2.get_weights()))
    # the live teacher (cache disabled) runs once per step, and trains the student almost identically
    live = KerasFlashDistiller(teacher, train_data, flash(STAGES, cache=False))
    r3 = live.distill(mlp((16, 16), name="student", seed=2), seed=3)
    assert r3.teacher_forward_calls == calls(teacher) - 4 == 6
    assert r3.final_loss == pytest.approx(r1.final_loss, rel=1e-2)  # float16 cache entries: close, not equal


def test_cached_targets_match_the_live_teacher(teacher, train_data, tmp_path, monkeypatch):
    from nas_distill.distill.keras import distiller as distiller_mod

    monkeypatch.setattr(distiller_mod, "IN_MEMORY_FLOAT32_MAX_BYTES", 0)  # a "large" cache: memory-mapped
    d = KerasFlashDistiller(teacher, train_data, flash([stage(**KT)], cache_dir=str(tmp_path)))
    d.prepare()
    assert all(isinstance(a, np.memmap) and a.dtype == np.float16 for a in d._cached.values())
    assert np.isfinite(d.distill(mlp((16, 16), seed=2)).final_loss)  # float16 targets straight into the step
    x = train_data[0][[5, 0, 17]]
    full = KerasFlashDistiller(teacher, train_data, flash([stage(**KT)], cache=False))._teacher_fn([None, "t_1"])(x)
    np.testing.assert_allclose(np.asarray(d._cached[None][[5, 0, 17]], np.float32), full[0], atol=1e-2)
    np.testing.assert_allclose(np.asarray(d._cached["t_1"][[5, 0, 17]], np.float32), full[1], atol=1e-2)


def test_memory_cache_and_features_over_budget_are_computed_live(teacher, train_data):
    d = KerasFlashDistiller(teacher, train_data, flash([stage(**KT)], budget_mb=0.0))
    res = d.distill(mlp((16, 16), seed=2))
    assert res.teacher_cache == "memory" and set(d._cached) == {None}  # logits only
    assert res.teacher_forward_calls == 3  # the features come from the live teacher, each step


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-manifest"])
def test_corrupt_cache_entry_is_rebuilt(teacher, train_data, tmp_path, damage):
    settings = flash([stage(**KT)], cache_dir=str(tmp_path))
    KerasFlashDistiller(teacher, train_data, settings).prepare()
    fp, path, good = damage_cache_entry(tmp_path, damage)
    assert read_entry(str(tmp_path), fp) is None  # never trusted
    before = calls(teacher)
    KerasFlashDistiller(teacher, train_data, settings).prepare()
    assert calls(teacher) > before  # rebuilt from the teacher
    assert path.read_bytes() == good
    assert read_entry(str(tmp_path), fp) is not None
    assert cache_entries(tmp_path) == [fp]  # the broken copy is gone


@pytest.mark.parametrize("use_lock", [True, False], ids=["flock", "rename-only"])
def test_two_distillers_filling_one_cache_dir_leave_one_valid_entry(teacher, train_data, tmp_path, monkeypatch,
                                                                    use_lock):
    if not use_lock:
        monkeypatch.setattr(cache_mod, "fcntl", None)  # only the atomic rename protects the entry
    settings = flash([stage(**KT)], cache_dir=str(tmp_path))
    distillers = [KerasFlashDistiller(teacher, train_data, settings) for _ in range(2)]
    barrier, errors = threading.Barrier(2), []

    def fill(d):
        try:
            barrier.wait(30)
            d.prepare()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=fill, args=(d,)) for d in distillers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    (fp,) = cache_entries(tmp_path)  # one entry, no temporary folder left
    assert read_entry(str(tmp_path), fp) is not None
    a, b = (d._cached for d in distillers)
    assert set(a) == set(b) == {None, "t_1", "t_2"}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    if use_lock:
        assert calls(teacher) == 4  # the second waited for the first instead of running the teacher


def test_float16_only_when_lossless(teacher, train_data, tmp_path):
    kernel, bias = teacher.get_layer("logits").get_weights()
    teacher.get_layer("logits").set_weights([kernel * 1e4, bias])  # logits in the thousands
    KerasFlashDistiller(teacher, train_data, flash([stage(**KT)], cache_dir=str(tmp_path))).prepare()
    (fp,) = cache_entries(tmp_path)
    manifest = json.loads((tmp_path / fp / "manifest.json").read_text())
    dtypes = {info["key"]: info["dtype"] for info in manifest["arrays"].values()}
    assert dtypes == {None: "float32", "t_1": "float16", "t_2": "float16"}
    for name in os.listdir(tmp_path / fp):
        if name.endswith(".npy"):
            np.load(tmp_path / fp / name, allow_pickle=False)  # plain arrays: would raise on objects


def test_fingerprint_depends_on_weights_data_keys_and_architecture(teacher, train_data):
    fields = {"x": train_data[0], "labels": train_data[1]}
    a = cache_mod.fingerprint(teacher, fields, ["t_1"])
    assert a == cache_mod.fingerprint(teacher, dict(fields), ["t_1"])
    assert a != cache_mod.fingerprint(teacher, fields, ["t_2"])
    assert a != cache_mod.fingerprint(teacher, {**fields, "x": train_data[0][::-1]}, ["t_1"])
    assert a != cache_mod.fingerprint(teacher, fields, ["t_1"], extra={"device": "gpu"})
    same_weights = mlp((48, 48), name="teacher", seed=1, prefix="t", count_calls=True, activation="tanh")
    assert a != cache_mod.fingerprint(same_weights, fields, ["t_1"])  # same weights, another activation
    kernel, bias = teacher.get_layer("logits").get_weights()
    teacher.get_layer("logits").set_weights([kernel, bias + 1e-3])
    assert a != cache_mod.fingerprint(teacher, fields, ["t_1"])


def test_augmentation_bypasses_the_cache(teacher, train_data, tmp_path):
    d = KerasFlashDistiller(teacher, train_data, flash([stage(train_steps=2)], cache_dir=str(tmp_path),
                                                       augmentation=True))
    res = d.distill(mlp((8,), seed=2))
    assert res.teacher_cache == "bypassed" and res.teacher_forward_calls == 2
    assert not os.listdir(tmp_path)  # nothing cached
    x, y = digits(64)
    off = KerasFlashDistiller(teacher, (x, y), flash([stage(train_steps=1)], cache=False, cache_dir=str(tmp_path)))
    assert off.prepare() == "disabled" and not os.listdir(tmp_path)
