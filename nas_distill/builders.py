"""Model builders: an architecture dict -> a fresh Hugging Face student model.

``from_config(base, model_cls)`` returns ``model_builder(arch)``, the callable the orchestrator hands
each proposed architecture. Every key of ``arch`` overrides the same attribute of a copy of the base
config; a key the config does not have is an :class:`InvalidArchitecture` (a typo in the search space
would otherwise be silently ignored by transformers). The config family's own consistency rules are
re-applied after the overrides, and impossible shapes are reported with their numbers before any weight
is allocated.

torch / transformers are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Iterable, Optional, Union

from nas_distill.errors import InvalidArchitecture


def load_config(base: Any) -> Any:
    """A transformers config from a config object, a folder / config.json path, or a dict with
    ``model_type``. Paths are read locally (never fetched)."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(base, PretrainedConfig):
        return copy.deepcopy(base)
    if isinstance(base, dict):
        d = dict(base)
        model_type = d.pop("model_type", None)
        if model_type is None:
            raise ValueError("a config dict needs a 'model_type' key")
        return AutoConfig.for_model(model_type, **d)
    if isinstance(base, (str, os.PathLike)):
        path = os.fspath(base)
        if os.path.isfile(path):
            path = os.path.dirname(path) or "."
        return AutoConfig.from_pretrained(path, local_files_only=True)
    raise TypeError(f"expected a transformers config, a path or a dict, got {type(base).__name__}")


def _has_key(config: Any, key: str) -> bool:
    if key in config.to_dict() or key in getattr(config, "attribute_map", {}):
        return True
    return hasattr(config, key) and not callable(getattr(config, key))


def apply_arch(config: Any, arch: dict) -> Any:
    """A copy of ``config`` with ``arch`` applied and the family's consistency rules re-established."""
    cfg = copy.deepcopy(config)
    for key, value in arch.items():
        if not _has_key(cfg, key):
            raise InvalidArchitecture(
                f"architecture key {key!r} is not an attribute of {type(cfg).__name__} "
                f"(model_type {getattr(cfg, 'model_type', '?')!r})"
            )
        setattr(cfg, key, value)
    _enforce_rules(cfg)
    return cfg


def _enforce_rules(cfg: Any) -> None:
    model_type = getattr(cfg, "model_type", "")
    if model_type == "mobilebert":
        # MobileBERT's attention works at the bottleneck width when the bottleneck is on.
        cfg.true_hidden_size = cfg.intra_bottleneck_size if cfg.use_bottleneck else cfg.hidden_size
        if int(cfg.embedding_size) <= 0:
            raise InvalidArchitecture(f"embedding_size must be positive, got {cfg.embedding_size}")
        width, width_name = cfg.true_hidden_size, "true_hidden_size"
    else:
        width, width_name = getattr(cfg, "hidden_size", None), "hidden_size"
    heads = getattr(cfg, "num_attention_heads", None)
    if isinstance(width, int) and isinstance(heads, int):
        if heads <= 0 or width % heads != 0:
            raise InvalidArchitecture(
                f"{width_name}={width} is not divisible by num_attention_heads={heads}"
            )
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value <= 0:
            raise InvalidArchitecture(f"{key} must be positive, got {value}")


def resolve_model_class(config: Any, model_cls: Any = "auto") -> Any:
    """``model_cls`` as given, or for ``'auto'`` the sequence- or image-classification auto class
    that knows ``config``'s family."""
    if model_cls != "auto":
        return model_cls
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    seq = type(config) in AutoModelForSequenceClassification._model_mapping
    img = type(config) in AutoModelForImageClassification._model_mapping
    if img and not seq:
        return AutoModelForImageClassification
    if seq:
        return AutoModelForSequenceClassification
    raise ValueError(f"no sequence- or image-classification model for {type(config).__name__}; pass "
                     f"model_cls explicitly")


def build_model(config: Any, model_cls: Any = "auto") -> Any:
    cls = resolve_model_class(config, model_cls)
    try:
        if hasattr(cls, "from_config"):
            return cls.from_config(config)
        return cls(config)
    except (ValueError, RuntimeError) as exc:  # a shape the family's own checks reject
        raise InvalidArchitecture(f"{type(config).__name__} cannot be built: {exc}") from exc


def from_config(
    base_config_or_path: Any, model_cls: Union[str, type] = "auto", seed: Optional[int] = 0
) -> Callable[[dict], Any]:
    """``model_builder(arch) -> model``: a fresh model of ``model_cls`` from the base config + arch.

    ``seed`` fixes the initial weights for a given arch (``None``: use the global RNG as it is), without
    disturbing the caller's RNG state.
    """
    base = load_config(base_config_or_path)

    def model_builder(arch: dict) -> Any:
        import torch

        cfg = apply_arch(base, dict(arch))
        if seed is None:
            return build_model(cfg, model_cls)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return build_model(cfg, model_cls)

    model_builder.base_config = base
    return model_builder


def check_layers(model: Any, layer_names: Iterable[str], role: str = "student") -> None:
    """Raise InvalidArchitecture naming the first of ``layer_names`` that ``model`` has no module for.

    Accepts module paths or ``LayerMapping``s / stages (their ``student_layer`` / ``mappings`` are used).
    """
    names = []
    for item in layer_names:
        if hasattr(item, "mappings"):
            names.extend(m.student_layer if role == "student" else m.teacher_layer for m in item.mappings)
        elif hasattr(item, "student_layer"):
            names.append(item.student_layer if role == "student" else item.teacher_layer)
        else:
            names.append(str(item))
    modules = {name for name, _ in model.named_modules()}
    for name in names:
        if name not in modules:
            raise InvalidArchitecture(f"{role} has no module named {name!r}")
