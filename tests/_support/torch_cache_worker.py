"""Child-process side of the concurrent-cache test (a module, so ``spawn`` can import it)."""

from __future__ import annotations

import hashlib
import os


def fill_cache(teacher_path: str, cache_dir: str, use_lock: bool, start, out_path: str) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import numpy as np
    import torch
    import transformers

    from _support.torch_models import ListDataset, flash, make_text_examples, stage
    from nas_distill.distill.torch import cache as cache_mod
    from nas_distill.distill.torch.distiller import FlashDistiller

    torch.set_num_threads(1)
    if not use_lock:
        cache_mod.fcntl = None  # exercise the lock-free path: only the atomic rename protects the entry
    teacher = transformers.BertForSequenceClassification.from_pretrained(teacher_path, local_files_only=True)
    st = stage("kt", "knowledge_transfer", mappings=[("bert.encoder.layer.0", "bert.encoder.layer.1")],
               train_steps=1)
    d = FlashDistiller(teacher, ListDataset(make_text_examples()), flash([st], cache_dir=cache_dir))
    start.wait(60)  # both children start filling at the same moment
    d.prepare()
    h = hashlib.sha256()
    for key in sorted(d._cached, key=str):
        h.update(str(key).encode())
        h.update(np.ascontiguousarray(d._cached[key]).tobytes())
    with open(out_path, "w") as f:
        f.write(h.hexdigest())
