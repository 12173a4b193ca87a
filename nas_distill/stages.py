"""Flash-distillation stages: the seed's per-block lists (``knowledge_transfer`` / ``regular_distillation``)
-> validated :class:`~nas_distill.settings.DistillStage` objects, and back.

Per-block lists (``knowledge_transfer``): the block count is ``len(block_names)``; every other list needs
exactly that many entries. A scalar (``train_steps: 500``, ``loss_types: KL``, ``temperature: 2``,
``add_origin_loss: true``, ``loss_weights: 0.5``) applies to every block; ``block_names`` and
``layer_mappings_for_knowledge_transfer`` are never broadcast. Within a block, ``loss_types[i]`` /
``loss_weights[i]`` are one per mapping, or one scalar for all its mappings. ``regular_distillation``: the
stage count is the length of its first list-valued field (``train_steps`` first); all scalars mean one
stage. No ``block_names`` = every parameter trains; no mappings = logit distillation with one loss.
"""

from __future__ import annotations

import numbers
from dataclasses import fields
from typing import Any, Mapping, Optional, Sequence

from . import checks
from .distill.mappings import LayerMapping, parse_layer_mapping
from .errors import ConfigError
from .settings import DistillStage, FlashDistillationConfig, keys_of
from .vocabulary import DEFAULT_TRAIN_STEPS, KNOWLEDGE_TRANSFER, LOSS_ALIASES, LOSS_TYPES, REGULAR_DISTILLATION

STAGE_KEYS = keys_of(FlashDistillationConfig)


def plain(value: Any) -> Any:
    """Tuples -> lists, LayerMapping -> its explicit list, recursively: JSON-able data."""
    if isinstance(value, LayerMapping):
        return value.as_list()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def _loss_type(value: Any, path: str) -> str:
    return checks.choice(value, path, LOSS_ALIASES, LOSS_TYPES)


def _stage_count(section: dict[str, Any], kind: str, path: str) -> tuple[int, str]:
    """How many stages the section describes, and which field decided it (for length messages)."""
    if kind == KNOWLEDGE_TRANSFER:
        names = section.get("block_names")
        if names is None or names == "":
            # The seed's default: one stage per mapping list, each training every parameter.
            mappings = section.get("layer_mappings_for_knowledge_transfer")
            if checks.is_seq(mappings) and len(mappings) > 0:
                return len(mappings), "layer_mappings_for_knowledge_transfer"
            raise ConfigError(
                checks.join(path, "layer_mappings_for_knowledge_transfer"),
                "expected a list with one list of layer mappings per block when knowledge_transfer is "
                f"given, got {checks.short(mappings) if mappings is not None else 'nothing'}",
            )
        if isinstance(names, str):
            return 1, "block_names"
        if not checks.is_seq(names) or len(names) == 0:
            raise checks.fail(checks.join(path, "block_names"), "a non-empty list of module names", names)
        return len(names), "block_names"
    # Regular distillation: the first list-valued field gives the count; all scalars mean one stage.
    for key in ("train_steps", "layer_mappings_for_knowledge_transfer", "loss_types", "loss_weights",
                "add_origin_loss", "block_names", "temperature"):
        value = section.get(key)
        if checks.is_seq(value):
            if len(value) == 0:
                raise checks.fail(checks.join(path, key), "a non-empty list with one entry per stage", value)
            return len(value), key
    return 1, ""


def _per_stage(section: dict[str, Any], key: str, n: int, count_key: str, path: str,
               *, broadcast: bool = True) -> list[Any]:
    """The section's ``key`` as one entry per stage (``None`` entries when absent).

    A scalar is broadcast to every stage when ``broadcast``; a list must have one entry per stage.
    """
    value = section.get(key)
    field_path = checks.join(path, key)
    if value is None:
        return [None] * n
    if checks.is_seq(value):
        if len(value) != n:
            counted = f"{checks.join(path, count_key)} has {n}" if count_key else f"{n} expected"
            raise ConfigError(
                field_path,
                f"expected one entry per stage ({counted}), got {len(value)} entries: {checks.short(value)}",
            )
        return list(value)
    if not broadcast:
        raise checks.fail(field_path, f"a list with one entry per stage ({n})", value)
    return [value] * n


def _block_names(entry: Any, path: str, kind: str) -> tuple[str, ...]:
    """One stage's blocks. ``''`` is the prefix of every parameter name: the whole student trains (the
    seed's meaning of an empty block name), stored as no blocks."""
    if entry is None:
        if kind == KNOWLEDGE_TRANSFER:
            raise ConfigError(path, "expected the module name of this block, got None")
        return ()
    if entry == "":
        return ()
    if isinstance(entry, str):
        return (checks.str_value(entry, path),)
    if checks.is_seq(entry):
        names = tuple(name if name == "" else checks.str_value(name, f"{path}[{j}]") for j, name in enumerate(entry))
        if kind == KNOWLEDGE_TRANSFER and not names:
            raise checks.fail(path, "at least one module name (the block that trains), or '' for all parameters",
                        entry)
        return () if "" in names else names
    raise checks.fail(path, "a module name or a list of module names", entry)


def _mappings(entry: Any, path: str, kind: str) -> tuple[LayerMapping, ...]:
    if entry is None:
        if kind == KNOWLEDGE_TRANSFER:
            raise ConfigError(path, "expected a list of layer mappings for this block, got nothing")
        return ()
    if not checks.is_seq(entry):
        raise checks.fail(path, "a list of layer mappings, e.g. [['s.layer', 't.layer']]", entry)
    if kind == KNOWLEDGE_TRANSFER and len(entry) == 0:
        raise checks.fail(path, "at least one layer mapping for a knowledge-transfer block", entry)
    parsed = []
    for j, item in enumerate(entry):
        where = f"{path}[{j}]"
        try:
            parsed.append(parse_layer_mapping(item, where))
        except (ValueError, TypeError) as exc:
            text = str(exc)
            field_path, sep, message = text.partition(": ")
            if not sep or not field_path.startswith(where):
                field_path, message = where, text
            raise ConfigError(field_path, message) from None
    return tuple(parsed)


def _per_loss(entry: Any, n_losses: int, path: str, mappings_path: str, convert) -> tuple[Any, ...]:
    """One value per loss of a stage: a scalar applies to every loss; a list needs one per loss."""
    if checks.is_seq(entry):
        if len(entry) != n_losses:
            raise ConfigError(
                path,
                f"expected one entry per layer mapping ({mappings_path} has {n_losses}), got "
                f"{len(entry)}: {checks.short(entry)}",
            )
        return tuple(convert(v, f"{path}[{j}]") for j, v in enumerate(entry))
    return tuple(convert(entry, path) for _ in range(n_losses))


def _weight(value: Any, path: str) -> float:
    return checks.number_value(value, path, non_negative=True)


def build_stages(section: Any, kind: str, path: str) -> tuple[list[DistillStage], Optional[FlashDistillationConfig]]:
    """Validate one seed section (``knowledge_transfer`` / ``regular_distillation``) into stages."""
    if isinstance(section, FlashDistillationConfig):
        section = {f.name: getattr(section, f.name) for f in fields(section)}
    section = checks.mapping(section, path, STAGE_KEYS)
    if all(v is None for v in section.values()):
        return [], None
    n, count_key = _stage_count(section, kind, path)
    if section.get("block_names") == "" or (section.get("block_names") is None and kind == KNOWLEDGE_TRANSFER):
        block_names = [""] * n
    elif isinstance(section.get("block_names"), str):
        if n != 1:
            raise checks.fail(checks.join(path, "block_names"), f"a list with one entry per stage ({n})",
                        section["block_names"])
        block_names = [section["block_names"]]
    else:
        block_names = _per_stage(section, "block_names", n, count_key, path, broadcast=False)
    mappings = _per_stage(section, "layer_mappings_for_knowledge_transfer", n, count_key, path,
                          broadcast=False)
    loss_types = _per_stage(section, "loss_types", n, count_key, path)
    loss_weights = _per_stage(section, "loss_weights", n, count_key, path)
    add_origin = _per_stage(section, "add_origin_loss", n, count_key, path)
    steps = _per_stage(section, "train_steps", n, count_key, path)
    temperature = _per_stage(section, "temperature", n, count_key, path)

    stages = []
    for i in range(n):
        map_path = f"{checks.join(path, 'layer_mappings_for_knowledge_transfer')}[{i}]"
        stage_mappings = _mappings(mappings[i], map_path, kind)
        n_losses = max(len(stage_mappings), 1)  # no mappings: one loss, on the logits
        default_loss = "MSE" if stage_mappings else "KL"
        types = _per_loss(
            default_loss if loss_types[i] is None else loss_types[i], n_losses,
            f"{checks.join(path, 'loss_types')}[{i}]", map_path, _loss_type,
        )
        weights = _per_loss(
            1.0 / n_losses if loss_weights[i] is None else loss_weights[i], n_losses,
            f"{checks.join(path, 'loss_weights')}[{i}]", map_path, _weight,
        )
        add_origin_loss = False if add_origin[i] is None else checks.bool_value(
            add_origin[i], f"{checks.join(path, 'add_origin_loss')}[{i}]")
        if not add_origin_loss and not any(w > 0 for w in weights):
            raise ConfigError(
                f"{checks.join(path, 'loss_weights')}[{i}]",
                f"expected at least one weight > 0 (or add_origin_loss true), got {list(weights)!r}",
            )
        stages.append(
            DistillStage(
                name=f"{kind}_{i}",
                kind=kind,
                block_names=_block_names(block_names[i], f"{checks.join(path, 'block_names')}[{i}]", kind),
                mappings=stage_mappings,
                loss_types=types,
                loss_weights=weights,
                add_origin_loss=add_origin_loss,
                train_steps=DEFAULT_TRAIN_STEPS if steps[i] is None
                else checks.int_value(steps[i], f"{checks.join(path, 'train_steps')}[{i}]"),
                temperature=1.0 if temperature[i] is None
                else checks.number_value(temperature[i], f"{checks.join(path, 'temperature')}[{i}]", positive=True),
            )
        )
    return stages, FlashDistillationConfig(**section)


def stages_to_section(stages: Sequence[DistillStage]) -> dict[str, Any]:
    """The inverse of :func:`_build_stages`: explicit per-stage lists, plain JSON-able data."""
    section: dict[str, Any] = {}
    if any(s.block_names for s in stages):
        section["block_names"] = [
            "" if not s.block_names else s.block_names[0] if len(s.block_names) == 1 else list(s.block_names)
            for s in stages
        ]
    if any(s.mappings for s in stages):
        section["layer_mappings_for_knowledge_transfer"] = [[plain(m) for m in s.mappings] for s in stages]
    section["loss_types"] = [list(s.loss_types) for s in stages]
    section["loss_weights"] = [list(s.loss_weights) for s in stages]
    section["add_origin_loss"] = [s.add_origin_loss for s in stages]
    section["train_steps"] = [s.train_steps for s in stages]
    section["temperature"] = [s.temperature for s in stages]
    return section


def stages_from_objects(stages: Any, path: str) -> dict[str, dict[str, Any]]:
    """``FlashSettings.stages`` given by a caller -> seed sections (validated again on parsing)."""
    if not checks.is_seq(stages):
        raise checks.fail(path, "a list of DistillStage", stages)
    groups: dict[str, list[DistillStage]] = {KNOWLEDGE_TRANSFER: [], REGULAR_DISTILLATION: []}
    for i, stage in enumerate(stages):
        if not isinstance(stage, DistillStage):
            raise checks.fail(f"{path}[{i}]", "a DistillStage", stage)
        if not isinstance(stage.kind, str) or stage.kind not in groups:
            raise checks.fail(f"{path}[{i}].kind", f"one of {list(groups)}", stage.kind)
        if stage.kind == KNOWLEDGE_TRANSFER and groups[REGULAR_DISTILLATION]:
            raise ConfigError(
                f"{path}[{i}]", "knowledge-transfer stages must come before regular-distillation stages"
            )
        groups[stage.kind].append(stage)
    out = {}
    for kind, group in groups.items():
        if group:
            bad = [
                (f, getattr(s, f)) for s in group for f in ("block_names", "mappings", "loss_types",
                                                             "loss_weights") if not checks.is_seq(getattr(s, f))
            ]
            if bad:
                raise checks.fail(f"{path}.{bad[0][0]}", "a tuple", bad[0][1])
            out[kind] = stages_to_section(group)
    return out



def stage_section(value: Any) -> Any:
    """A knowledge_transfer / regular_distillation value given as an object -> its fields as a dict."""
    if isinstance(value, FlashDistillationConfig):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if value is None or isinstance(value, (Mapping, str, bytes, numbers.Number, list, tuple)):
        return value
    if hasattr(value, "__dict__"):  # the seed's own FlashDistillationConfig class
        return {k: v for k, v in vars(value).items() if not k.startswith("_")}
    return value
