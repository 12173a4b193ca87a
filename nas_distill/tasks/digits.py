"""The demo task: scikit-learn's handwritten digits (1,797 real 8x8 images that ship offline).

Teacher: a Hugging Face ViT sized for 8x8 inputs (patch 2, hidden 128, 3 layers), trained once with
+-1 pixel shifts and cached in the run folder (``save_pretrained``), reused by every later run. Workers
started together on a fresh folder train it once: one trains, the others wait (``setup_lock``).
Students: ViTs from the same base config with a smaller hidden size / depth / heads / MLP width.

Splits are fixed (stratified, seed 0): 1,257 train / 180 validation / 360 test. The search measures
students on the validation split; the test split is kept for the final report, so the search never
sees the numbers it is judged by.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..setup_lock import setup_lock

log = logging.getLogger(__name__)

NUM_LABELS = 10
TEACHER_ARCH = {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 256}

# The student space the demo searches (every point is a valid ViT: hidden % heads == 0 throughout).
STUDENT_SPACE = {
    "hidden_size": [32, 64, 96, 128],
    "num_hidden_layers": [1, 2, 3],
    "num_attention_heads": [1, 2, 4],
    "intermediate_size": [64, 128, 256],
}


def base_vit_config(**overrides: Any):
    """The ViT config every digits model (teacher and students) derives from."""
    from transformers import ViTConfig

    values = dict(
        image_size=8,
        patch_size=2,
        num_channels=1,
        num_labels=NUM_LABELS,
        id2label={i: str(i) for i in range(NUM_LABELS)},
        label2id={str(i): i for i in range(NUM_LABELS)},
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **TEACHER_ARCH,
    )
    values.update(overrides)
    return ViTConfig(**values)


def image_processor():
    """What turns a user's 8x8 grey image (uint8 0-255, shape (8, 8, 1)) into the models' inputs: pixels
    / 255, as the training data's 0-16 levels / 16, no normalisation. Saved with every student."""
    import transformers

    # transformers 5 names the backend that needs no torchvision ...Pil; older releases have one class.
    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return cls(do_resize=True, size={"height": 8, "width": 8}, do_rescale=True, rescale_factor=1 / 255,
               do_normalize=False)


@dataclass
class DigitsSplits:
    """Fixed splits as float tensors in [0, 1], shaped (n, 1, 8, 8), and int64 labels."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    x_test: Any
    y_test: Any


def load_splits(seed: int = 0) -> DigitsSplits:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_trval, x_test, y_trval, y_test = train_test_split(x, y, test_size=360, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_trval, y_trval, test_size=180, stratify=y_trval, random_state=seed
    )
    t = torch.from_numpy
    return DigitsSplits(t(x_train), t(y_train), t(x_val), t(y_val), t(x_test), t(y_test))


class DictDataset:
    """A torch-style dataset of dicts (``pixel_values``, ``labels``), the transformers convention."""

    def __init__(self, pixel_values, labels):
        if len(pixel_values) != len(labels):
            raise ValueError(f"{len(pixel_values)} images but {len(labels)} labels")
        self.pixel_values = pixel_values
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def datasets(seed: int = 0) -> tuple[DictDataset, DictDataset, DictDataset]:
    """(train, validation, test) datasets of dicts."""
    s = load_splits(seed)
    return DictDataset(s.x_train, s.y_train), DictDataset(s.x_val, s.y_val), DictDataset(s.x_test, s.y_test)


def _random_shift(batch, generator):
    """Shift each image by -1, 0 or +1 pixel in each direction (zero fill): the teacher's augmentation."""
    import torch

    n = batch.shape[0]
    padded = torch.nn.functional.pad(batch, (1, 1, 1, 1))
    dx = torch.randint(0, 3, (n,), generator=generator)
    dy = torch.randint(0, 3, (n,), generator=generator)
    out = torch.empty_like(batch)
    for i in range(n):  # n is a batch (<= 128): a loop is clearer than gather tricks and cheap here
        out[i] = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
    return out


def accuracy(model, x, y, batch_size: int = 512) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(y), batch_size):
            logits = model(pixel_values=x[start : start + batch_size]).logits
            correct += int((logits.argmax(-1) == y[start : start + batch_size]).sum())
    return correct / max(1, len(y))


def train_teacher(
    out_dir: str | os.PathLike,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int | None = None,
) -> Path:
    """Train the ViT teacher and ``save_pretrained`` it to ``out_dir`` (atomically, via a temp dir).

    AdamW, linear warm-up then cosine decay, +-1 pixel shifts. About 100 s on 2 threads for 3,000 steps.
    Writes ``teacher_metrics.json`` (accuracies, time) next to the weights.
    """
    import shutil
    import tempfile

    import torch
    from transformers import ViTForImageClassification

    log.info("teacher training started: a ViT on the digits, %d steps (about %d s on 2 cores), into %s",
             steps, max(1, round(steps / 30)), out_dir)
    out_dir = Path(out_dir)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    splits = load_splits()
    model = ViTForImageClassification(base_vit_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    n = len(splits.y_train)
    started = time.perf_counter()
    model.train()
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for step in range(steps):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        x = _random_shift(splits.x_train[idx], generator)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, splits.y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 500 == 0:
            log.info("teacher step %d/%d loss %.4f", step, steps, loss.item())
    seconds = time.perf_counter() - started
    metrics = {
        "train_accuracy": accuracy(model, splits.x_train, splits.y_train),
        "val_accuracy": accuracy(model, splits.x_val, splits.y_val),
        "test_accuracy": accuracy(model, splits.x_test, splits.y_test),
        "train_seconds": round(seconds, 1),
        "steps": steps,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".teacher-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        (tmp / "teacher_metrics.json").write_text(json.dumps(metrics, indent=2))
        if out_dir.exists():  # another process finished first: keep theirs, the weights are equivalent
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("teacher trained in %.0f s: %s", seconds, metrics)
    return out_dir


def load_or_train_teacher(run_dir: str | os.PathLike, **train_kwargs: Any):
    """The cached teacher of ``run_dir`` (trained on first use). Returns (model, metrics dict)."""
    from transformers import ViTForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" / "Writing model shards" bars in the output

    path = Path(run_dir) / "teacher"
    if not (path / "config.json").exists():
        with setup_lock(Path(run_dir) / "teacher.lock", "training the teacher"):
            if not (path / "config.json").exists():  # else the worker we waited for trained it
                train_teacher(path, **train_kwargs)
    model = ViTForImageClassification.from_pretrained(path, use_safetensors=True)  # never a pickle (.bin)
    model.eval()
    metrics_file = path / "teacher_metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return model, metrics


def student_builder(arch: dict):
    """``model_builder(arch)`` for the demo: a ViT from the base config with the arch applied."""
    from ..errors import InvalidArchitecture

    unknown = set(arch) - set(STUDENT_SPACE)
    if unknown:
        raise InvalidArchitecture(f"unknown arch keys for the digits ViT: {sorted(unknown)}")
    if arch["hidden_size"] % arch["num_attention_heads"]:
        raise InvalidArchitecture(
            f"hidden_size {arch['hidden_size']} is not divisible by num_attention_heads "
            f"{arch['num_attention_heads']}"
        )
    from transformers import ViTForImageClassification

    return ViTForImageClassification(base_vit_config(**arch))
