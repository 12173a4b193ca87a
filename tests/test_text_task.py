"""The text-classification task (nas_distill.tasks.text) and its example configs, offline.

A tiny BERT teacher (hidden 32, 2 layers) and a WordPiece tokenizer over a 40-word vocabulary are
saved with save_pretrained to tmp_path; the data are small CSV / JSONL files whose two classes use
disjoint words. The search runs the real example config (paths, space and step counts shrunk).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from _support.common import REPO_ROOT

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nas_distill.errors import ConfigError  # noqa: E402
from nas_distill.tasks.text import text_task  # noqa: E402
from nas_distill.workers import read_config_file, split_task  # noqa: E402

POS = ["good", "great", "fine", "nice", "happy", "love", "best", "fun"]
NEG = ["bad", "awful", "poor", "sad", "hate", "worst", "dull", "ugly"]
FILLER = ["the", "a", "movie", "was", "film", "it", "is", "this"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _sentence(rng: random.Random, words: list[str]) -> str:
    return " ".join(rng.sample(FILLER, 3) + rng.sample(words, 2))


def _rows(n: int = 40, seed: int = 0, string_labels: bool = False) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        label = ("pos" if positive else "neg") if string_labels else int(positive)
        rows.append({"text": _sentence(rng, POS if positive else NEG), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict], columns=("text", "label")) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r[c] for c in columns})
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def save_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = SPECIAL + FILLER + POS + NEG
    # transformers 5's BertTokenizer(Fast) takes the WordPiece vocabulary as `vocab` (a dict or a
    # vocab.txt path); `vocab_file=` is silently ignored there, so the dict is passed.
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    tok.save_pretrained(folder)
    return tok


@pytest.fixture(scope="module")
def bert_teacher(tmp_path_factory) -> Path:
    """A tiny random BertForSequenceClassification (2 labels) + tokenizer, saved to a folder."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("bert_teacher")
    save_tokenizer(folder)
    config = BertConfig(vocab_size=len(SPECIAL + FILLER + POS + NEG), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                        num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("text_data")
    return {"csv": write_csv(folder / "train.csv", _rows(40, seed=0)),
            "jsonl": write_jsonl(folder / "eval.jsonl", _rows(20, seed=1)),
            "strings": write_csv(folder / "strings.csv", _rows(40, seed=2, string_labels=True)),
            "three": write_csv(folder / "three.csv",
                               _rows(38, seed=3) + [{"text": "the movie", "label": 2}] * 2)}


# --------------------------------------------------------------------------------------- the task
def test_task_tokenises_csv_and_jsonl(bert_teacher, data_files):
    out = text_task(None, teacher=str(bert_teacher),
                    data={"train": str(data_files["csv"]), "eval": str(data_files["jsonl"])}, max_length=16)
    train, evald = out["train_dataset"], out["eval_dataset"]
    assert (len(train), len(evald)) == (40, 20)
    item = train[0]
    assert set(item) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert item["input_ids"].shape == (16,) and item["input_ids"].dtype == torch.long
    assert int(item["input_ids"][0]) == SPECIAL.index("[CLS]")
    assert sorted({int(train[i]["labels"]) for i in range(len(train))}) == [0, 1]
    # no [UNK]: the vocabulary covers every word
    assert all(SPECIAL.index("[UNK]") not in train[i]["input_ids"].tolist() for i in range(len(train)))
    student = out["model_builder"]({"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "intermediate_size": 32})
    assert isinstance(student, transformers.BertForSequenceClassification)
    assert student.config.hidden_size == 16 and student.config.num_labels == 2
    logits = student(**{k: v[None] for k, v in item.items() if k != "labels"}).logits
    assert logits.shape == (1, 2)


def test_single_file_split_and_string_labels(bert_teacher, data_files):
    a = text_task(None, teacher=str(bert_teacher), data=str(data_files["strings"]), eval_split=0.25)
    b = text_task(None, teacher=str(bert_teacher), data=str(data_files["strings"]), eval_split=0.25)
    assert (len(a["train_dataset"]), len(a["eval_dataset"])) == (30, 10)
    # fixed seed: the same split twice
    assert torch.equal(a["eval_dataset"].features["input_ids"], b["eval_dataset"].features["input_ids"])
    # "neg" < "pos": sorted unique -> neg=0, pos=1; positive sentences hold a POS word
    ds = a["train_dataset"]
    tok = transformers.AutoTokenizer.from_pretrained(bert_teacher)
    for i in range(len(ds)):
        words = set(tok.convert_ids_to_tokens(ds[i]["input_ids"].tolist()))
        assert int(ds[i]["labels"]) == (1 if words & set(POS) else 0)


def test_label2id_of_the_teacher_is_used(tmp_path, data_files):
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "teacher"
    save_tokenizer(folder)
    config = BertConfig(vocab_size=29, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2, id2label={0: "pos", 1: "neg"},
                        label2id={"pos": 0, "neg": 1})
    BertForSequenceClassification(config).save_pretrained(folder)
    out = text_task(None, teacher=str(folder), data=str(data_files["strings"]))
    ds = out["train_dataset"]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    for i in range(len(ds)):
        words = set(tok.convert_ids_to_tokens(ds[i]["input_ids"].tolist()))
        assert int(ds[i]["labels"]) == (0 if words & set(POS) else 1)


def test_missing_column_is_named(bert_teacher, tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"sentence": r["text"], "label": r["label"]} for r in _rows(10)],
                     columns=("sentence", "label"))
    with pytest.raises(ConfigError) as err:
        text_task(None, teacher=str(bert_teacher), data=str(path))
    msg = str(err.value)
    assert err.value.field == "task.args.text_column"
    assert "'text'" in msg and "sentence" in msg and "label" in msg
    with pytest.raises(ConfigError) as err:
        text_task(None, teacher=str(bert_teacher), data=str(path), text_column="sentence", label_column="y")
    assert err.value.field == "task.args.label_column" and "'y'" in str(err.value)


def test_label_count_mismatch_names_both(bert_teacher, data_files):
    with pytest.raises(ConfigError) as err:
        text_task(None, teacher=str(bert_teacher), data=str(data_files["three"]))
    msg = str(err.value)
    assert err.value.field == "task.args.label_column"
    assert "3 distinct label" in msg and "num_labels=2" in msg


def test_missing_and_empty_files(bert_teacher, tmp_path, data_files):
    with pytest.raises(ConfigError) as err:
        text_task(None, teacher=str(bert_teacher), data=str(tmp_path / "nope.csv"))
    assert err.value.field == "task.args.data" and "nope.csv" in str(err.value)
    with pytest.raises(ConfigError) as err:
        text_task(None, teacher=str(bert_teacher),
                  data={"train": str(data_files["csv"]), "eval": str(tmp_path / "nope.jsonl")})
    assert err.value.field == "task.args.data.eval"
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(ConfigError) as err:
        text_task(None, teacher=str(bert_teacher), data=str(empty))
    assert err.value.field == "task.args.data" and "no rows" in str(err.value)


def test_dataset_name_without_datasets_package(bert_teacher, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError) as err:
        text_task(None, teacher=str(bert_teacher), data="glue/sst2")
    assert err.value.field == "task.args.data" and "datasets" in str(err.value)


def test_missing_teacher(tmp_path, data_files):
    with pytest.raises(ConfigError) as err:
        text_task(None, teacher=str(tmp_path / "no_teacher"), data=str(data_files["csv"]))
    assert err.value.field == "task.args.teacher"


# ------------------------------------------------------------------------------- the example config
def _shrink(data: dict, run_dir: Path, train_steps: int = 3) -> dict:
    data = copy.deepcopy(data)
    ad = data["auto_distillation"]
    ad["search"]["max_trials"] = 2
    ad["study"] = {"run_dir": str(run_dir), "study_name": "text-test"}
    ad["evaluation"].update({"latency_warmup": 1, "latency_repeats": 2, "batch_size": 32})
    flash = ad["flash_distillation"]
    flash["batch_size"] = 8
    flash["device"] = "cpu"
    ad["evaluation"]["device"] = "cpu"
    kt = flash["knowledge_transfer"]
    kt["train_steps"] = [train_steps] * len(kt["block_names"])
    flash["regular_distillation"]["train_steps"] = [train_steps]
    return data


@pytest.mark.slow
def test_text_classification_example_runs_a_search(bert_teacher, data_files, tmp_path):
    import optuna

    from nas_distill.workers import run_worker

    data = read_config_file(REPO_ROOT / "examples" / "text_classification.yaml")
    assert data["task"]["entry"] == "nas_distill.tasks.text:text_task"
    data = _shrink(data, tmp_path / "run")
    data["task"]["args"].update({"teacher": str(bert_teacher), "max_length": 16,
                                 "data": {"train": str(data_files["csv"]), "eval": str(data_files["jsonl"])}})
    # A tiny BERT space (the example's is sized for a bert-base teacher); widths differ from the
    # teacher's 32 in half the points, so the matchers are exercised.
    data["auto_distillation"]["search"]["search_space"] = {
        "hidden_size": [16, 32], "num_hidden_layers": [1, 2], "num_attention_heads": [2],
        "intermediate_size": [32]}
    data["auto_distillation"]["search"]["search_algorithm"] = "random"
    assert run_worker(data, label="t0") == 0
    study = optuna.load_study(study_name="text-test", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2, [(t.state, t.user_attrs.get("error")) for t in study.trials]
    for t in complete:
        accuracy = t.values[0]
        assert 0.0 <= accuracy <= 1.0
        assert t.values[1] > 0  # latency

    # The exported student carries the teacher's tokenizer: a text-classification pipeline runs from its
    # folder alone (offline, nas_distill not importable) and agrees with the student fed by the teacher's
    # own tokenizer here.
    from nas_distill import cli

    out = tmp_path / "student"
    assert cli.main(["export", "--run-dir", str(tmp_path / "run"), "--study", "text-test", "-o", str(out)]) == 0
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "README.md"} <= {p.name for p in out.iterdir()}
    texts = [row["text"] for row in _rows(6, seed=3)]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = (
        "import json, sys\nsys.modules['nas_distill'] = None\nfrom transformers import pipeline\n"
        "run = pipeline('text-classification', model=sys.argv[1])\n"
        "json.dump([r['label'] for r in run(json.load(open(sys.argv[2])))], open(sys.argv[3], 'w'))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "texts.json"),
                          str(tmp_path / "labels.json")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    student = transformers.AutoModelForSequenceClassification.from_pretrained(out, use_safetensors=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert_teacher)
    with torch.no_grad():
        logits = student(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    expected = [student.config.id2label[int(i)] for i in logits.argmax(-1)]
    assert json.loads((tmp_path / "labels.json").read_text()) == expected


# ------------------------------------------------------------------------------------- MobileBERT
def _mobilebert_config_dict() -> tuple[dict, dict]:
    data = read_config_file(REPO_ROOT / "examples" / "mobilebert_space.yaml")
    return split_task(data)


def test_mobilebert_space_validates_with_24_blocks():
    from nas_distill.config import AutoDistillationConfig

    data, task = _mobilebert_config_dict()
    assert task["entry"] == "nas_distill.tasks.text:text_task"
    cfg = AutoDistillationConfig(data)
    kt = [s for s in cfg.flash.stages if s.kind == "knowledge_transfer"]
    assert len(kt) == 24
    assert [s.block_names for s in kt] == [(f"mobilebert.encoder.layer.{i}",) for i in range(24)]
    assert cfg.search_space == {"hidden_size": [128, 256, 384, 512], "intra_bottleneck_size": [64, 96, 128, 160],
                                "num_attention_heads": [1, 2, 4, 8], "intermediate_size": [384, 512, 640],
                                "num_feedforward_networks": [2, 4, 6]}
    assert cfg.flash.stages[-1].kind == "regular_distillation"


def _tiny_mobilebert_teacher(folder: Path, layers: int = 24) -> Path:
    from transformers import MobileBertConfig, MobileBertForSequenceClassification

    save_tokenizer(folder)
    config = MobileBertConfig(vocab_size=29, hidden_size=32, embedding_size=16, intra_bottleneck_size=16,
                              true_hidden_size=16, num_attention_heads=2, intermediate_size=32,
                              num_feedforward_networks=1, num_hidden_layers=layers,
                              max_position_embeddings=64, num_labels=2)
    torch.manual_seed(0)
    MobileBertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_mobilebert_mappings_exist_in_every_corner_of_the_space(tmp_path):
    """Every mapped module exists in the students at the space's extremes (built at their real sizes
    would be slow: the space's keys are applied to a tiny 24-layer base with the same names)."""
    from nas_distill.builders import check_layers, from_config
    from nas_distill.config import AutoDistillationConfig

    data, _ = _mobilebert_config_dict()
    cfg = AutoDistillationConfig(data)
    folder = _tiny_mobilebert_teacher(tmp_path / "mb")
    teacher = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    builder = from_config(folder, transformers.AutoModelForSequenceClassification)
    space = cfg.search_space
    for pick in (min, max):
        arch = {"hidden_size": 32, "intra_bottleneck_size": pick([16, 24]), "num_attention_heads": pick(
            space["num_attention_heads"]), "intermediate_size": 32, "num_feedforward_networks": pick([1, 2])}
        student = builder(arch)
        check_layers(student, cfg.flash.stages, role="student")
        check_layers(student, [s.block_names[0] for s in cfg.flash.stages if s.block_names])
    check_layers(teacher, cfg.flash.stages, role="teacher")


def test_mobilebert_example_runs_one_trial(tmp_path, data_files):
    """One real trial of the MobileBERT example: all 24 knowledge-transfer blocks, 1 step each, on a
    tiny 24-layer MobileBERT teacher (hidden 32, bottleneck 16); the student space is shrunk to one
    tiny point of the same five keys."""
    import optuna

    from nas_distill.workers import run_worker

    folder = _tiny_mobilebert_teacher(tmp_path / "mb")
    data, task = _mobilebert_config_dict()
    data = _shrink(data, tmp_path / "run", train_steps=1)
    kt = data["auto_distillation"]["flash_distillation"]["knowledge_transfer"]
    assert len(kt["block_names"]) == 24
    data["auto_distillation"]["search"].update({
        "max_trials": 1, "search_algorithm": "grid",
        "search_space": {"hidden_size": [32], "intra_bottleneck_size": [8], "num_attention_heads": [2],
                         "intermediate_size": [16], "num_feedforward_networks": [2]}})
    task["args"].update({"teacher": str(folder), "max_length": 16, "text_column": "text",
                         "data": {"train": str(data_files["csv"]), "eval": str(data_files["jsonl"])}})
    data["task"] = task
    assert run_worker(data, label="mb0") == 0
    study = optuna.load_study(study_name="text-test", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 1, [(t.state, t.user_attrs.get("error")) for t in study.trials]
    assert 0.0 <= complete[0].values[0] <= 1.0


def test_text_example_stages_distil_a_narrower_student(bert_teacher, data_files, tmp_path):
    """The example's stages on a student narrower than the teacher (hidden 16 vs 32): both
    knowledge-transfer mappings resolve in student and teacher (a matcher bridges the widths) and every
    stage trains with a finite, positive loss."""
    import math

    from nas_distill.autodistill import load_config
    from nas_distill.builders import check_layers
    from nas_distill.distill.torch import FlashDistiller

    data, _ = split_task(_shrink(read_config_file(REPO_ROOT / "examples" / "text_classification.yaml"),
                                 tmp_path / "run", train_steps=5))
    data["auto_distillation"]["flash_distillation"]["teacher_cache"] = {"enabled": False}
    cfg = load_config(data)
    out = text_task(cfg, teacher=str(bert_teacher), max_length=16,
                    data={"train": str(data_files["csv"]), "eval": str(data_files["jsonl"])})
    student = out["model_builder"]({"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "intermediate_size": 32})
    check_layers(student, cfg.flash.stages, role="student")
    check_layers(out["teacher_model"], cfg.flash.stages, role="teacher")
    result = FlashDistiller(out["teacher_model"], out["train_dataset"], cfg.flash, device="cpu").distill(student)
    assert [s.name for s in result.stages] == ["knowledge_transfer_0", "knowledge_transfer_1",
                                               "regular_distillation_0"]
    for stage in result.stages:
        assert stage.steps == 5 and math.isfinite(stage.final_loss) and stage.final_loss > 0
