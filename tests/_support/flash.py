"""Distillation settings for the engine tests, shared by the torch and Keras test folders."""

from __future__ import annotations

import os
from pathlib import Path

from nas_distill.config import DistillStage, FlashSettings, TeacherCacheSettings
from nas_distill.distill.mappings import parse_layer_mapping


def stage(name="rd", kind="regular_distillation", **kw):
    """A :class:`DistillStage` from plain lists (mappings as tuples of layer names)."""
    if "mappings" in kw:
        kw["mappings"] = tuple(parse_layer_mapping(m) for m in kw["mappings"])
    for key in ("block_names", "loss_types", "loss_weights"):
        if key in kw:
            kw[key] = tuple(kw[key])
    return DistillStage(name=name, kind=kind, **kw)


def flash_settings(stages, *, batch_size, cache=True, cache_dir=None, budget_mb=64, **kw):
    """:class:`FlashSettings` on the CPU with the teacher cache on (in memory unless ``cache_dir``)."""
    cache_cfg = TeacherCacheSettings(enabled=cache, dir=cache_dir, feature_budget_mb=budget_mb)
    kw.setdefault("device", "cpu")
    return FlashSettings(teacher_cache=cache_cfg, stages=list(stages), batch_size=batch_size, **kw)


def cache_entries(cache_dir) -> list[str]:
    """The entry folders of a teacher cache folder, sorted (lock files left out)."""
    return sorted(e for e in os.listdir(cache_dir) if not e.endswith(".lock"))


def damage_cache_entry(cache_dir: Path, damage: str) -> tuple[str, Path, bytes]:
    """Break the cached logits of the only entry in ``cache_dir`` (``truncate``, ``flip`` a byte, or
    ``no-manifest``: delete the entry's manifest); return the entry, the logits' path and their good bytes."""
    (fp,) = cache_entries(cache_dir)
    path = cache_dir / fp / "logits.npy"
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    else:
        (path.parent / "manifest.json").unlink()
    return fp, path, good
