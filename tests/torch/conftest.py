"""Fixtures for the torch engine tests: tiny local models and datasets.

Every teacher is built from a config, saved with ``save_pretrained`` and loaded back with
``from_pretrained`` from a temporary folder: nothing touches the network (the hubs are offline).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _support.torch_models import (  # noqa: E402
    ListDataset,
    bert_config,
    make_image_examples,
    make_text_examples,
    save_and_load,
)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def bert_teacher(model_dir):
    torch.manual_seed(1)
    m = transformers.BertForSequenceClassification(bert_config(hidden_size=48, num_attention_heads=4))
    return save_and_load(m, model_dir / "bert-teacher").eval()


@pytest.fixture
def bert_student(model_dir):
    torch.manual_seed(2)
    return transformers.BertForSequenceClassification(bert_config())


@pytest.fixture(scope="session")
def text_data():
    return ListDataset(make_text_examples())


@pytest.fixture(scope="session")
def image_data():
    return ListDataset(make_image_examples())
