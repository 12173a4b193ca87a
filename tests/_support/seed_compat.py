"""The old system's test setting, offline: a tiny BERT pre-training teacher built locally (saved with
``save_pretrained`` and loaded back), a small masked-LM dataset, students from ``builders.from_config``, and
the old test's config (knowledge transfer on ``bert.encoder.layer.0``, regular distillation on ``cls``).
"""

from __future__ import annotations

import torch
import transformers

from nas_distill import AutoDistillationConfig, FlashDistillationConfig, Metric
from nas_distill.builders import from_config

VOCAB, SEQ = 60, 8
SPACE = {"hidden_size": [16, 32], "intermediate_size": [32, 64]}


def bert_config(**kw) -> transformers.BertConfig:
    cfg = dict(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=48, max_position_embeddings=SEQ * 2, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)
    cfg.update(kw)
    return transformers.BertConfig(**cfg)


def make_teacher(folder) -> torch.nn.Module:
    """A tiny BertForPreTraining, round-tripped through save_pretrained / from_pretrained."""
    torch.manual_seed(0)
    transformers.BertForPreTraining(bert_config()).save_pretrained(folder)
    return transformers.AutoModelForPreTraining.from_pretrained(folder, local_files_only=True)


class MaskedLMData(torch.utils.data.Dataset):
    """Examples shaped like the old test's DummyDataset: token ids, masks, token types, masked-LM labels
    (-100 except a few positions) and a next-sentence label."""

    def __init__(self, n: int = 12, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
        self.labels = torch.full((n, SEQ), -100, dtype=torch.long)
        for i in range(n):
            positions = torch.randperm(SEQ, generator=g)[:2]
            self.labels[i, positions] = self.ids[i, positions]
        self.nsp = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "token_type_ids": torch.zeros(SEQ, dtype=torch.long), "labels": self.labels[i],
                "next_sentence_label": self.nsp[i]}


def student_builder(folder):
    """``builders.from_config`` over the teacher's saved config (a student is a smaller BertForPreTraining)."""
    return from_config(folder, model_cls=transformers.AutoModelForPreTraining)


def old_test_config(search_algorithm: str, max_trials: int, metrics=None, **kw) -> AutoDistillationConfig:
    """The old test's AutoDistillationConfig, written the old way (keywords, Metric, FlashDistillationConfig)."""
    return AutoDistillationConfig(
        search_space=SPACE,
        search_algorithm=search_algorithm,
        max_trials=max_trials,
        metrics=metrics or [Metric(name="eval_loss", greater_is_better=False)],
        knowledge_transfer=FlashDistillationConfig(
            block_names=["bert.encoder.layer.0"],
            layer_mappings_for_knowledge_transfer=[[[("bert.encoder.layer.0.output",)]]],
            train_steps=[3],
            loss_types=[["MSE"]],
        ),
        regular_distillation=FlashDistillationConfig(
            layer_mappings_for_knowledge_transfer=[[[("cls", "0")]]],
            loss_types=[["KL"]],
            add_origin_loss=[True],
            train_steps=[5],
        ),
        **kw,
    )


def masked_lm_loss(model: torch.nn.Module, data: MaskedLMData) -> float:
    """The mean cross-entropy of the masked-LM logits over every labelled position: computed here in one
    forward over the whole set, independently of the evaluator's batching."""
    model.eval()
    with torch.no_grad():
        out = model(input_ids=data.ids, attention_mask=torch.ones_like(data.ids),
                    token_type_ids=torch.zeros_like(data.ids))
    logits = out.prediction_logits
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), data.labels.reshape(-1),
                                                   ignore_index=-100))


def arch_key(arch: dict) -> tuple:
    return tuple(arch[k] for k in sorted(arch))


def brute_force_front(points, higher):
    """Indices of non-dominated points by definition (O(n^2)): the tests' own oracle."""
    signed = [[v if h else -v for v, h in zip(p, higher)] for p in points]
    front = []
    for i, p in enumerate(signed):
        if not any(all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p))
                   for j, q in enumerate(signed) if j != i):
            front.append(i)
    return front


# ------------------------------------------------------------- a plain torch classifier and its data
N_IN, N_CLASSES = 4, 3


class Data(torch.utils.data.Dataset):
    """Labels are the argmax of the first three inputs: a linear model can get all of them right."""

    def __init__(self, n=30, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, N_IN, generator=g)
        self.y = self.x[:, :N_CLASSES].argmax(-1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class Net(torch.nn.Module):
    def __init__(self, hidden=None):
        super().__init__()
        self.body = torch.nn.Linear(N_IN, N_CLASSES) if hidden is None else torch.nn.Sequential(
            torch.nn.Linear(N_IN, hidden), torch.nn.Linear(hidden, N_CLASSES))

    def forward(self, x):
        return self.body(x)
