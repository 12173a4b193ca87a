"""Tiny models, datasets and settings for the torch engine tests (imported by the tests and conftest)."""

from __future__ import annotations

import torch
import transformers

from _support.flash import flash_settings, stage  # noqa: F401  (stage: re-exported for the torch tests)

VOCAB, SEQ, N_LABELS = 100, 16, 3


def bert_config(**kw):
    cfg = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=SEQ * 2, num_labels=N_LABELS,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg.update(kw)
    return transformers.BertConfig(**cfg)


def mobilebert_config(**kw):
    cfg = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, embedding_size=16, intra_bottleneck_size=16,
               max_position_embeddings=SEQ * 2, num_labels=N_LABELS, num_feedforward_networks=1,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg.update(kw)
    return transformers.MobileBertConfig(**cfg)


def vit_config(**kw):
    cfg = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=64, num_labels=N_LABELS,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg.update(kw)
    return transformers.ViTConfig(**cfg)


def save_and_load(model, path, cls=None):
    """Round-trip through save_pretrained / from_pretrained (safetensors), all local."""
    model.save_pretrained(path)
    cls = cls or type(model)
    return cls.from_pretrained(path, local_files_only=True)


def make_text_examples(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
    mask = torch.ones(n, SEQ, dtype=torch.long)
    mask[: n // 2, SEQ - 4:] = 0
    labels = torch.randint(0, N_LABELS, (n,), generator=g)
    return [{"input_ids": ids[i], "attention_mask": mask[i], "token_type_ids": torch.zeros(SEQ, dtype=torch.long),
             "labels": labels[i]} for i in range(n)]


def make_image_examples(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(n, 3, 16, 16, generator=g)
    labels = torch.randint(0, N_LABELS, (n,), generator=g)
    return [{"pixel_values": px[i], "labels": labels[i]} for i in range(n)]


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class NoisyDataset(ListDataset):
    """Random augmentation: every read adds fresh noise."""

    def __getitem__(self, i):
        item = dict(self.items[i])
        item["pixel_values"] = item["pixel_values"] + 0.1 * torch.randn_like(item["pixel_values"])
        return item


def flash(stages, **kw):
    return flash_settings(stages, **{"batch_size": 8, **kw})


