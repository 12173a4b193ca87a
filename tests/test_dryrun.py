"""The dry run (issue #7, item 4): data and layer problems stop the search before its first trial.

Real tiny Hugging Face models (built locally, saved and loaded back), real datasets, a real SQLite
study location: each broken setup must raise one ConfigError naming the field, and leave no study
behind (the study database is never created); a good setup passes.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _support.common import REPO_ROOT, tiny_bert_task  # noqa: E402
from _support.torch_models import (  # noqa: E402
    N_LABELS,
    ListDataset,
    bert_config,
    make_image_examples,
    make_text_examples,
    save_and_load,
    vit_config,
)
from nas_distill.autodistill import AutoDistillation  # noqa: E402
from nas_distill.builders import from_config  # noqa: E402
from nas_distill.dryrun import check_dataset, dry_run, num_labels  # noqa: E402
from nas_distill.errors import ConfigError  # noqa: E402


def config(run_dir, kt=None, space=None):
    flash = {"batch_size": 8, "device": "cpu", "teacher_cache": {"enabled": False}}
    if kt is not None:
        flash["knowledge_transfer"] = kt
    return {
        "search": {"search_space": space or {"num_hidden_layers": [1, 2], "intermediate_size": [32, 64]},
                   "search_algorithm": "grid", "metrics": ["accuracy"], "max_trials": 2},
        "flash_distillation": flash,
        "evaluation": {"latency_repeats": 1, "latency_warmup": 0, "device": "cpu"},
        "study": {"run_dir": str(run_dir), "study_name": "dry"},
    }


KT_GOOD = {"block_names": ["bert.encoder.layer.0"],
           "layer_mappings_for_knowledge_transfer": [[["bert.encoder.layer.0.output", "bert.encoder.layer.1.output"]]],
           "train_steps": 2}


@pytest.fixture(scope="module")
def text_teacher(tmp_path_factory):
    torch.manual_seed(1)
    model = transformers.BertForSequenceClassification(bert_config())
    return save_and_load(model, tmp_path_factory.mktemp("teacher") / "bert").eval()


@pytest.fixture(scope="module")
def text_data():
    return ListDataset(make_text_examples(24))


def setup(tmp_path, teacher, train, evaluation=None, *, kt=KT_GOOD, labels=N_LABELS, space=None):
    ad = AutoDistillation(from_config(bert_config(num_labels=labels)), config(tmp_path / "run", kt, space))
    ad.teacher_model = teacher
    ad.train_dataset = train
    ad.eval_dataset = evaluation if evaluation is not None else train
    return ad


def refused(ad, tmp_path) -> str:
    """Run ``search()``: it must fail with a ConfigError before the study (and any trial) exists."""
    with pytest.raises(ConfigError) as info:
        ad.search()
    assert not (tmp_path / "run" / "study.db").exists(), "the study was created before the dry run failed"
    assert ad._study is None
    text = str(info.value)
    assert len(text.splitlines()) == 1
    return text


def with_example(examples, index, **changes):
    items = [dict(e) for e in examples]
    items[index].update(changes)
    return ListDataset(items)


# ----------------------------------------------------------------------------------------- passes
def test_a_good_setup_passes_and_is_checked_once(tmp_path, text_teacher, text_data, monkeypatch):
    ad = setup(tmp_path, text_teacher, text_data)
    dry_run(ad)
    assert num_labels(text_teacher) == N_LABELS
    calls = []
    monkeypatch.setattr("nas_distill.dryrun.check_dataset", lambda *a, **k: calls.append(a))
    dry_run(ad)  # same teacher, data and builder: not scanned again
    assert calls == []
    ad.train_dataset = ListDataset(make_text_examples(8, seed=3))
    dry_run(ad)  # new data: scanned again
    assert [c[1] for c in calls] == ["train_dataset", "eval_dataset"]


def test_the_ignore_index_and_a_layer_only_bigger_archs_have_are_accepted(tmp_path, text_teacher):
    items = make_text_examples(8)
    data = with_example(items, 3, labels=torch.tensor(-100))
    # Layer 1 exists only for num_hidden_layers=2: the first arch lacks it, the last has it.
    kt = dict(KT_GOOD, layer_mappings_for_knowledge_transfer=[[["bert.encoder.layer.1.output",
                                                                "bert.encoder.layer.1.output"]]])
    dry_run(setup(tmp_path, text_teacher, data, kt=kt))


def test_own_train_and_eval_functions_are_not_checked(tmp_path, text_teacher):
    ad = setup(tmp_path, text_teacher, ListDataset([]))
    ad.train_func = lambda model: None
    ad.eval_func = lambda model: {"accuracy": 1.0}
    dry_run(ad)  # the built-in engines are not used: nothing of theirs to check


# ---------------------------------------------------------------------------------------- refused
def test_empty_train_dataset(tmp_path, text_teacher, text_data):
    text = refused(setup(tmp_path, text_teacher, ListDataset([]), text_data), tmp_path)
    assert text == "train_dataset: the dataset is empty (0 examples)"


def test_empty_eval_dataset(tmp_path, text_teacher, text_data):
    text = refused(setup(tmp_path, text_teacher, text_data, ListDataset([])), tmp_path)
    assert text == "eval_dataset: the dataset is empty (0 examples)"


@pytest.mark.parametrize("label", [N_LABELS, 12, -1])
def test_train_label_out_of_range(tmp_path, text_teacher, label):
    data = with_example(make_text_examples(12), 7, labels=torch.tensor(label))
    text = refused(setup(tmp_path, text_teacher, data), tmp_path)
    assert text == (f"train_dataset: label {label} at index 7 is out of range for a teacher with {N_LABELS} "
                    f"labels (expected 0 to {N_LABELS - 1})")


def test_eval_label_out_of_range(tmp_path, text_teacher, text_data):
    data = with_example(make_text_examples(12), 4, labels=torch.tensor(99))
    text = refused(setup(tmp_path, text_teacher, text_data, data), tmp_path)
    assert text.startswith("eval_dataset: label 99 at index 4 is out of range")


def test_hugging_face_style_label_column_is_scanned_as_a_whole(tmp_path, text_teacher):
    class Columns(ListDataset):  # a datasets.Dataset look-alike: whole columns in one read
        column_names = ["input_ids", "attention_mask", "label"]

        def __getitem__(self, i):
            if isinstance(i, slice):
                rows = self.items[i]
                return {k: torch.stack([r[k if k != "label" else "labels"] for r in rows])
                        for k in self.column_names}
            return super().__getitem__(i)

    items = make_text_examples(10)
    items[9]["labels"] = torch.tensor(5)
    text = refused(setup(tmp_path, text_teacher, Columns(items)), tmp_path)
    assert text.startswith("train_dataset: label 5 at index 9 is out of range")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_in_inputs(tmp_path, bad):
    torch.manual_seed(0)
    teacher = transformers.ViTForImageClassification(vit_config()).eval()
    items = make_image_examples(10)
    pixels = items[6]["pixel_values"].clone()
    pixels[1, 2, 3] = bad
    items[6] = dict(items[6], pixel_values=pixels)
    ad = AutoDistillation(from_config(vit_config()), config(tmp_path / "run", space={"intermediate_size": [32]}))
    ad.teacher_model, ad.train_dataset, ad.eval_dataset = teacher, ListDataset(items), ListDataset(items[:2])
    text = refused(ad, tmp_path)
    assert text == f"train_dataset: 'pixel_values' of example 6 holds {bad!r} (NaN or infinity in the data)"


def test_teacher_and_student_label_counts_differ(tmp_path, text_teacher, text_data):
    text = refused(setup(tmp_path, text_teacher, text_data, labels=N_LABELS + 2), tmp_path)
    assert text.startswith("model_builder: the student built from arch ")
    assert f"has {N_LABELS + 2} labels, the teacher has {N_LABELS}" in text


def test_mapping_names_a_layer_the_teacher_lacks(tmp_path, text_teacher, text_data):
    kt = copy.deepcopy(KT_GOOD)
    kt["layer_mappings_for_knowledge_transfer"][0][0][1] = "bert.encoder.layer.7.output"
    text = refused(setup(tmp_path, text_teacher, text_data, kt=kt), tmp_path)
    assert text.startswith("flash_distillation.knowledge_transfer.layer_mappings_for_knowledge_transfer[0][0]: "
                           "the teacher has no module named 'bert.encoder.layer.7.output'")
    assert "did you mean" in text


def test_mapping_names_a_layer_no_student_has(tmp_path, text_teacher, text_data):
    kt = copy.deepcopy(KT_GOOD)
    kt["layer_mappings_for_knowledge_transfer"][0][0][0] = "bert.encoder.layer.5.output"
    text = refused(setup(tmp_path, text_teacher, text_data, kt=kt), tmp_path)
    assert text.startswith("flash_distillation.knowledge_transfer.layer_mappings_for_knowledge_transfer[0][0]: "
                           "the student has no module named 'bert.encoder.layer.5.output'")
    assert "(built from arch {'intermediate_size': 32, 'num_hidden_layers': 1} nor in 1 other arch(s)" in text


def test_block_name_the_student_lacks(tmp_path, text_teacher, text_data):
    kt = dict(KT_GOOD, block_names=["bert.encoder.layers.0"])
    text = refused(setup(tmp_path, text_teacher, text_data, kt=kt), tmp_path)
    assert text.startswith("flash_distillation.knowledge_transfer.block_names[0]: the student has no module "
                           "named 'bert.encoder.layers.0'")
    assert "did you mean 'bert.encoder.layer.0'?" in text


def test_items_that_are_not_dicts(tmp_path, text_teacher):
    data = torch.utils.data.TensorDataset(torch.zeros(4, 3))
    text = refused(setup(tmp_path, text_teacher, data), tmp_path)
    assert text.startswith("train_dataset: example 0 cannot be read: dataset items must be dicts")


def test_numpy_tuples_the_keras_way():
    """The Keras engine's ``(x, y)`` data, scanned with numpy only."""
    np = pytest.importorskip("numpy")
    x = np.zeros((6, 4), dtype="float32")
    y = np.array([0, 1, 2, 0, 1, 2])
    check_dataset((x, y), "train_dataset", 3, keras=True)
    with pytest.raises(ConfigError, match=r"^train_dataset: label 3 at index 4 is out of range"):
        check_dataset((x, np.array([0, 1, 2, 0, 3, 2])), "train_dataset", 3, keras=True)
    x_nan = x.copy()
    x_nan[2, 1] = np.nan
    with pytest.raises(ConfigError, match=r"^train_dataset: 'x' of example 2 holds nan"):
        check_dataset((x_nan, y), "train_dataset", 3, keras=True)
    with pytest.raises(ConfigError, match=r"^eval_dataset: the dataset is empty"):
        check_dataset((x[:0], y[:0]), "eval_dataset", 3, keras=True)
    with pytest.raises(ConfigError, match=r"^train_dataset: 'image' of example 5 holds inf"):
        check_dataset(({"image": np.where(np.arange(6)[:, None] == 5, np.inf, x)}, y), "train_dataset", 3,
                      keras=True)


KERAS_SCRIPT = r"""
import sys
import numpy as np
import keras
from nas_distill.autodistill import AutoDistillation
from nas_distill.errors import ConfigError

def build(arch, labels=3):
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(arch["units"], name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(labels, name="logits")(hidden))

cfg = {"model": {"framework": "tensorflow"}, "auto_distillation": {
    "search": {"search_space": {"units": [4, 8]}, "metrics": ["accuracy"], "max_trials": 1},
    "flash_distillation": {"knowledge_transfer": {"block_names": ["hidden"],
        "layer_mappings_for_knowledge_transfer": [[["hidden", "hiden"]]]}},
    "study": {"run_dir": sys.argv[1]}}}
ad = AutoDistillation(build, cfg)
ad.teacher_model = build({"units": 8})
x, y = np.zeros((5, 4), "float32"), np.array([0, 1, 2, 1, 7])
ad.train_dataset = ad.eval_dataset = (x, y)
for step in ("labels", "layer", "count"):
    try:
        ad.search()
    except ConfigError as exc:
        print(exc)
    if step == "labels":
        ad.train_dataset = ad.eval_dataset = (x, np.array([0, 1, 2, 1, 0]))
    elif step == "layer":
        ad.teacher_model = build({"units": 8}, labels=4)
        ad.conf.knowledge_transfer = None
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.slow
def test_keras_models_and_numpy_data_without_torch(tmp_path):
    """framework 'tensorflow': labels, layers (by Keras name) and label counts, and torch never imported."""
    pytest.importorskip("keras")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    res = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(tmp_path / "run")], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert lines[0] == ("train_dataset: label 7 at index 4 is out of range for a teacher with 3 labels "
                        "(expected 0 to 2)")
    assert lines[1].startswith("flash_distillation.knowledge_transfer.layer_mappings_for_knowledge_transfer[0][0]:"
                               " the teacher has no layer named 'hiden'"), lines[1]
    assert "did you mean 'hidden'?" in lines[1]
    assert lines[2].startswith("model_builder: the student built from arch {'units': 4} has 3 labels, "
                               "the teacher has 4")
    assert lines[3] == "torch imported: False"
    assert not (tmp_path / "run" / "study.db").exists()


TASK = tiny_bert_task(6, label="i % 2 if i != 4 else 9")  # item 4: a label the 2-label model lacks


@pytest.mark.slow
def test_cli_worker_runs_the_dry_run_before_its_first_trial(tmp_path):
    (tmp_path / "nd_dry_task.py").write_text(TASK)
    cfg = config(tmp_path / "run", space={"intermediate_size": [8, 16]})
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"task": "nd_dry_task:make_task", "auto_distillation": cfg}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO_ROOT)]))
    res = subprocess.run([sys.executable, "-m", "nas_distill.cli", "run", str(path)], capture_output=True,
                         text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == ("nas-distill: config error: train_dataset: label 9 at index 4 is out of range "
                                  "for a teacher with 2 labels (expected 0 to 1)")
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "study.db").exists()
