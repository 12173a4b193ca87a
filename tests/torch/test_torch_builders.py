"""Model builders from Hugging Face configs."""

import pytest
import torch
import transformers

from _support.torch_models import bert_config, mobilebert_config, stage, vit_config
from nas_distill.builders import apply_arch, check_layers, from_config
from nas_distill.errors import InvalidArchitecture


def test_arch_keys_applied_to_a_copy():
    base = bert_config()
    model = from_config(base, transformers.BertForSequenceClassification)(
        {"hidden_size": 64, "num_attention_heads": 8, "num_hidden_layers": 3})
    assert model.config.hidden_size == 64 and len(model.bert.encoder.layer) == 3
    assert base.hidden_size == 32  # the base config is untouched


def test_unknown_key_is_named():
    with pytest.raises(InvalidArchitecture, match="'hiden_size'"):
        from_config(bert_config())({"hiden_size": 64})


def test_heads_must_divide_hidden_size():
    with pytest.raises(InvalidArchitecture, match=r"hidden_size=30 .*num_attention_heads=4"):
        from_config(bert_config())({"hidden_size": 30})


def test_mobilebert_true_hidden_size_follows_bottleneck():
    cfg = apply_arch(mobilebert_config(), {"intra_bottleneck_size": 8})
    assert cfg.true_hidden_size == 8
    cfg = apply_arch(mobilebert_config(), {"use_bottleneck": False, "hidden_size": 64})
    assert cfg.true_hidden_size == 64
    with pytest.raises(InvalidArchitecture, match="true_hidden_size=12 .*num_attention_heads=8"):
        apply_arch(mobilebert_config(), {"intra_bottleneck_size": 12, "num_attention_heads": 8})
    model = from_config(mobilebert_config())({"intra_bottleneck_size": 8, "embedding_size": 8})
    ids = torch.randint(1, 100, (2, 8))
    assert model(input_ids=ids).logits.shape == (2, 3)


def test_auto_model_class(tmp_path):
    assert type(from_config(bert_config())({})) is transformers.BertForSequenceClassification
    assert type(from_config(vit_config())({})) is transformers.ViTForImageClassification
    mobilebert_config().save_pretrained(tmp_path)
    assert type(from_config(tmp_path / "config.json")({})) is transformers.MobileBertForSequenceClassification


def test_builder_is_seeded_and_leaves_global_rng_alone():
    builder = from_config(bert_config())
    state = torch.random.get_rng_state()
    a, b = builder({}), builder({})
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_check_layers_names_the_missing_layer():
    model = from_config(bert_config())({"num_hidden_layers": 1})
    check_layers(model, ["bert.encoder.layer.0"])
    with pytest.raises(InvalidArchitecture, match="bert.encoder.layer.1"):
        check_layers(model, [stage(mappings=[("bert.encoder.layer.1",)])])
