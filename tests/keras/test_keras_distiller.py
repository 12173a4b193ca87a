"""The Keras flash distiller: block-wise training by exact layer name, feature matchers, determinism,
clear errors (missing layers, bad data, divergence), and the contract the orchestrator relies on."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

from _support.keras_models import digits, flash, mlp, stage, weights_of
from nas_distill.distill.keras import DistillationDiverged, KerasFlashDistiller
from nas_distill.errors import ConfigError, InvalidArchitecture

TEN = tuple([8] * 10)  # dense_1 ... dense_10: 'dense_1' is a prefix of 'dense_10'


def changed(before, after):
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


def snapshot(model):
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in model.layers}


@pytest.mark.parametrize("block", ["dense_1", "dense_10"])
def test_block_stage_trains_only_the_exactly_named_layer(teacher, train_data, block):
    student = mlp(TEN, name="student", seed=2)
    before = snapshot(student)
    st = stage("kt", "knowledge_transfer", block_names=[block], mappings=[("dense_10", "t_2")], train_steps=3)
    KerasFlashDistiller(teacher, train_data, flash([st], cache=False)).distill(student)
    after = snapshot(student)
    moved = sorted(name for name in before if changed(before[name], after[name]))
    assert moved == [block]  # 'dense_1' never unfreezes 'dense_10' (nor the reverse)


def test_frozen_layers_bit_identical_including_batchnorm_statistics(teacher, train_data):
    student = mlp((16, 16), name="student", seed=2, batchnorm=True)
    student.get_layer("dense_2").trainable = False  # the user's own flag: restored afterwards
    before = snapshot(student)
    st = stage("rd", block_names=["dense_1", "bn_1"], train_steps=3, add_origin_loss=True)
    KerasFlashDistiller(teacher, train_data, flash([st], cache=False)).distill(student)
    after = snapshot(student)
    assert changed(before["dense_1"], after["dense_1"])
    assert changed(before["bn_1"], after["bn_1"])  # trains: gamma/beta and its moving statistics
    for name in ("dense_2", "bn_2", "logits"):
        assert not changed(before[name], after[name]), name  # bn_2's moving mean/variance too
    assert [layer.trainable for layer in student.layers if layer.name.startswith("dense")] == [True, False]


def test_empty_block_names_train_everything(teacher, train_data):
    student = mlp((16, 16), name="student", seed=2)
    before = snapshot(student)
    KerasFlashDistiller(teacher, train_data, flash([stage(train_steps=2)], cache=False)).distill(student)
    after = snapshot(student)
    assert all(changed(before[n], after[n]) for n in ("dense_1", "dense_2", "logits"))


def test_nested_block_path_trains_only_the_inner_layer(teacher, train_data):
    inner = mlp((16, 16), name="body", seed=3, n_out=12)  # dense_1, dense_2, logits inside 'body'
    inp = keras.Input((64,), name="image")
    student = keras.Model(inp, keras.layers.Dense(10, name="head")(inner(inp)), name="student")
    before = snapshot(inner) | {"head": weights_of(student, "head")}
    st = stage("kt", "knowledge_transfer", block_names=["body/dense_2"], mappings=[("body", "t_2")], train_steps=2)
    KerasFlashDistiller(teacher, train_data, flash([st], cache=False)).distill(student)
    after = snapshot(inner) | {"head": weights_of(student, "head")}
    assert sorted(n for n in before if changed(before[n], after[n])) == ["dense_2"]
    bad = stage("kt", "knowledge_transfer", block_names=["body"], mappings=[("body/dense_2", "t_2")])
    with pytest.raises(InvalidArchitecture, match="inside the nested layer 'body'"):
        KerasFlashDistiller(teacher, train_data, flash([bad], cache=False)).distill(student)


def test_matchers_only_when_widths_differ_and_they_learn(teacher, train_data):
    student = mlp((48, 16), name="student", seed=2)
    st = stage("kt", "knowledge_transfer", mappings=[("dense_1", "t_1"), ("dense_2", "t_2")], train_steps=3)
    d = KerasFlashDistiller(teacher, train_data, flash([st], cache=False))
    d.distill(student)
    assert list(d.matchers.projections) == ["dense_2->t_2"]  # 48 == 48: no projection for dense_1
    proj = d.matchers.projections["dense_2->t_2"]
    assert proj.kernel.shape == (16, 48)
    # moved from its initial weights: it received non-zero gradients (AdamW, no weight decay)
    assert changed(d.matchers.initial["dense_2->t_2"], proj.get_weights())


def test_same_seed_same_result_and_another_seed_differs(teacher, train_data):
    d = KerasFlashDistiller(teacher, train_data, flash([stage(train_steps=4, add_origin_loss=True)], cache=False))
    runs = []
    for seed in (5, 5, 6):
        student = mlp((16,), name="student", seed=2)
        res = d.distill(student, seed=seed)
        runs.append((res.final_loss, snapshot(student)))
    assert runs[0][0] == runs[1][0]
    assert not any(changed(runs[0][1][n], runs[1][1][n]) for n in runs[0][1])
    assert runs[2][0] != runs[0][0]  # another batch order


def test_optimizers_and_result_contract(teacher, train_data):
    for name in ("adam", "sgd"):
        st = stage(train_steps=2)
        res = KerasFlashDistiller(teacher, train_data, flash([st], cache=False, optimizer=name,
                                                             weight_decay=0.01)).distill(mlp((8,), seed=2))
        d = res.as_dict()
        assert d["teacher_cache"] == "disabled" and d["teacher_forward_calls"] == 2
        assert d["stages"][0]["steps"] == 2 and np.isfinite(d["final_loss"])
    # the same error type and field as the torch engine's (tests/torch/test_torch_distiller.py)
    with pytest.raises(ConfigError, match="unknown optimizer 'lamb'; known: adamw, adam, sgd") as info:
        KerasFlashDistiller(teacher, train_data, flash([st], cache=False, optimizer="lamb")).distill(mlp((8,)))
    assert info.value.field == "flash_distillation.optimizer"


def test_nan_loss_raises_distillation_diverged(train_data):
    bad = mlp((16,), name="teacher", seed=1, prefix="t")
    kernel, bias = bad.get_layer("logits").get_weights()
    bad.get_layer("logits").set_weights([np.full_like(kernel, np.nan), bias])
    d = KerasFlashDistiller(bad, train_data, flash([stage(train_steps=2)], cache=False))
    with pytest.raises(DistillationDiverged, match="nan") as info:
        d.distill(mlp((8,), seed=2))
    assert isinstance(info.value, FloatingPointError)


def test_missing_layers_are_clear_errors(teacher, train_data):
    student = mlp(TEN, name="student", seed=2)
    st = stage("kt", "knowledge_transfer", mappings=[("dense_11", "t_1")], train_steps=1)
    with pytest.raises(InvalidArchitecture, match=r"student has no layer named 'dense_11'.*'dense_1'"):
        KerasFlashDistiller(teacher, train_data, flash([st], cache=False)).distill(student)
    st = stage("kt", "knowledge_transfer", block_names=["dense"], mappings=[("dense_1", "t_1")], train_steps=1)
    with pytest.raises(InvalidArchitecture, match="no layer named 'dense'"):  # never a substring match
        KerasFlashDistiller(teacher, train_data, flash([st], cache=False)).distill(student)
    st = stage("kt", "knowledge_transfer", mappings=[("dense_1", 1, "t_1", None)], train_steps=1)
    with pytest.raises(InvalidArchitecture, match="layer 'dense_1': cannot select output 1"):
        KerasFlashDistiller(teacher, train_data, flash([st], cache=False)).distill(student)
    st = stage("kt", "knowledge_transfer", mappings=[("dense_1", "t_3")], train_steps=1)
    with pytest.raises(ConfigError, match=r"teacher has no layer named 't_3'.*did you mean") as info:
        KerasFlashDistiller(teacher, train_data, flash([st], cache=False))  # at construction
    assert info.value.field.endswith("layer_mappings_for_knowledge_transfer")


def test_unmatchable_or_unaffected_students_are_invalid_architectures(teacher, train_data):
    narrow = mlp((8,), n_out=3, seed=2)  # 3 logits vs the teacher's 10
    with pytest.raises(InvalidArchitecture, match="logits must have the same width"):
        KerasFlashDistiller(teacher, train_data, flash([stage(train_steps=1)], cache=False)).distill(narrow)
    st = stage("kt", "knowledge_transfer", block_names=["dense_2"], mappings=[("dense_1", "t_1")], train_steps=1)
    d = KerasFlashDistiller(teacher, train_data, flash([st], cache=False))
    with pytest.raises(InvalidArchitecture, match="does not depend on any trainable variable"):
        d.distill(mlp((48, 8), seed=2))


def test_bad_data_is_rejected_before_any_work(teacher):
    x, y = digits(64)
    cases = [
        ([x, y, y], "expected a tuple"),
        ((x, y[:10]), "10 labels for 64 examples"),
        ((x, y.reshape(-1, 1)), r"labels of shape \(n,\)"),
        ((x[:, :32], y), r"expects examples of shape \(64,\), the data has \(32,\)"),
        (({"image": x}, y), "missing from the data: \\['pixels'\\]"),
        ((x.astype(str), y), "numeric array"),
    ]
    for data, message in cases:
        with pytest.raises(ConfigError, match=message):
            KerasFlashDistiller(teacher, data, flash([stage(train_steps=1)], cache=False))
    d = KerasFlashDistiller(teacher, (x, None), flash([stage(train_steps=1, add_origin_loss=True)], cache=False))
    with pytest.raises(ConfigError, match="add_origin_loss needs labels"):
        d.distill(mlp((8,), seed=2))


def test_dict_inputs_and_a_sequential_student(teacher):
    x, y = digits(64)
    # dict x: each model reads its own inputs by name (the teacher 'pixels', this student 'pixels' + 'aux')
    pixels, aux = keras.Input((64,), name="pixels"), keras.Input((1,), name="aux")
    h = keras.layers.Dense(8, name="hidden")(keras.layers.Concatenate()([pixels, aux]))
    two_inputs = keras.Model({"pixels": pixels, "aux": aux}, keras.layers.Dense(10, name="out")(h))
    data = ({"pixels": x, "aux": y[:, None].astype("float32"), "unused": y}, y)
    st = stage("kt", "knowledge_transfer", block_names=["hidden"], mappings=[("hidden", "t_1")], train_steps=2)
    res = KerasFlashDistiller(teacher, data, flash([st, stage(train_steps=2)], cache=False)).distill(two_inputs)
    assert [s.name for s in res.stages] == ["kt", "rd"] and np.isfinite(res.final_loss)
    # a Sequential student built by calling it once (its input has no name of its own: x is an array)
    seq = keras.Sequential([keras.layers.Dense(8, name="hidden"), keras.layers.Dense(10, name="out")])
    seq(x[:2])
    before = weights_of(seq, "out")
    res = KerasFlashDistiller(teacher, (x, y), flash([st], cache=False)).distill(seq)
    assert np.isfinite(res.final_loss) and not changed(before, weights_of(seq, "out"))


def test_from_config_uses_the_run_dir_cache(teacher, train_data, tmp_path):
    from nas_distill.config import AutoDistillationConfig

    conf = AutoDistillationConfig({
        "model": {"framework": "tensorflow"},
        "auto_distillation": {
            "search": {"search_space": {"width": [8]}},
            "flash_distillation": {
                "knowledge_transfer": {"block_names": [["dense_1"]],
                                       "layer_mappings_for_knowledge_transfer": [[["dense_1", "t_1"]]],
                                       "train_steps": [2]},
                "regular_distillation": {"train_steps": [2], "add_origin_loss": [True]},
                "batch_size": 16, "device": "cpu"},
            "study": {"run_dir": str(tmp_path / "run")}}})
    d = KerasFlashDistiller.from_config(conf, teacher, train_data)
    assert d.prepare() == "disk" and (tmp_path / "run" / "teacher_cache").is_dir()
    res = d.distill(mlp((8,), seed=2), seed=0)
    assert [s.kind for s in res.stages] == ["knowledge_transfer", "regular_distillation"]
    assert res.teacher_cache == "disk" and res.teacher_forward_calls == 0


def test_importing_the_keras_engine_does_not_import_torch():
    code = ("import sys, nas_distill.distill.keras.distiller, nas_distill.distill.keras.evaluate, "
            "nas_distill.evaluate; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "KERAS_BACKEND": "tensorflow"})
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]


def test_nested_model_as_a_mapped_layer_in_sequential_and_functional_students(teacher, train_data):
    def body(name):
        inp = keras.Input((64,), name="features")
        return keras.Model(inp, keras.layers.Dense(48, name="embedding")(keras.layers.Dense(16, name="h")(inp)),
                           name=name)

    st = stage("kt", "knowledge_transfer", block_names=["body"], mappings=[("body", "t_2")], train_steps=2)
    d = KerasFlashDistiller(teacher, train_data, flash([st], cache=False))
    # a Sequential student: its nested model's output lives in the graph Keras builds for the Sequential
    seq = keras.Sequential([keras.Input((64,), name="pixels"), body("body"), keras.layers.Dense(10, name="head")])
    before = weights_of(seq, "head")
    assert np.isfinite(d.distill(seq).final_loss)
    assert not changed(before, weights_of(seq, "head"))  # only the mapped block trained
    # a nested model called twice: which call's output is meant is ambiguous -> a precise error
    shared, inp = body("body"), keras.Input((64,), name="pixels")
    twice = keras.Model(inp, keras.layers.Dense(10, name="head")(keras.layers.Add()([shared(inp), shared(inp)])))
    with pytest.raises(InvalidArchitecture, match=r"layer 'body' is called 2 times.*Identity"):
        d.distill(twice)


def test_device_resident_batches_equal_numpy_batches(teacher, train_data, monkeypatch):
    """The step gathers its rows on the device from resident tensors; the numpy path (data too large
    for that) must train the student identically."""
    from nas_distill.distill.keras import distiller as distiller_mod

    stages = [stage("kt", "knowledge_transfer", block_names=["dense_1"], mappings=[("dense_1", "t_1")],
                    train_steps=3), stage(train_steps=3, add_origin_loss=True)]
    runs = []
    for cap in (distiller_mod.RESIDENT_MAX_BYTES, 0):
        monkeypatch.setattr(distiller_mod, "RESIDENT_MAX_BYTES", cap)
        d = KerasFlashDistiller(teacher, train_data, flash(stages))
        student = mlp((16, 16), name="student", seed=2)
        res = d.distill(student, seed=4)
        runs.append((bool(d._resident), [s.final_loss for s in res.stages], snapshot(student)))
    assert [r[0] for r in runs] == [True, False]
    assert runs[0][1] == runs[1][1]
    assert not any(changed(runs[0][2][n], runs[1][2][n]) for n in runs[0][2])


def test_adamw_without_weight_decay_is_the_same_update():
    from nas_distill.distill.keras.distiller import make_optimizer

    rng = np.random.default_rng(0)
    start, grads = rng.standard_normal((3, 4)).astype("float32"), rng.standard_normal((5, 3, 4)).astype("float32")
    results = []
    for opt in (make_optimizer("adamw", 0.01, 0.0), keras.optimizers.AdamW(0.01, weight_decay=0.0, epsilon=1e-8)):
        v = keras.Variable(start)
        for g in grads:
            opt.apply([keras.ops.convert_to_tensor(g)], [v])
        results.append(v.numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)
    assert not np.allclose(results[0], start)


def test_xla_step_and_its_fallback(teacher, train_data, caplog):
    st = stage("kt", "knowledge_transfer", mappings=[("dense_1", "t_1")], train_steps=3)
    plain = KerasFlashDistiller(teacher, train_data, flash([st]))
    assert plain.jit_compile is False  # 'auto' on a CPU: no XLA
    xla = KerasFlashDistiller(teacher, train_data, flash([st]), jit_compile=True)
    losses = [d.distill(mlp((16,), seed=2), seed=1).final_loss for d in (plain, xla)]
    assert xla.jit_compile is True and losses[1] == pytest.approx(losses[0], rel=1e-4)
    # The live teacher's CallCounter is a tf.numpy_function, which XLA cannot compile: the step runs
    # without XLA (a warning says so) and the trial still trains.
    live = KerasFlashDistiller(teacher, train_data, flash([st], cache=False), jit_compile=True)
    res = live.distill(mlp((16,), seed=2), seed=1)
    assert live.jit_compile is False and res.final_loss == pytest.approx(losses[0], rel=1e-2)
    assert res.teacher_forward_calls == 3 and "does not compile with XLA" in caplog.text
    with pytest.raises(ConfigError, match="jit_compile"):
        KerasFlashDistiller(teacher, train_data, flash([st]), jit_compile="yes")
