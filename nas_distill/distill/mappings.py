"""Layer mappings for intermediate-layer distillation, in every form the old configs use.

A mapping pairs one output of a student module with one output of a teacher module:

==========================================  ==============================================
form                                        meaning
==========================================  ==============================================
``(name,)``                                 same module path in both models, whole output
``(name, output)``                          same module in both, ``output`` selected
``(student_name, teacher_name)``            different modules, whole outputs
``(s_name, s_output, t_name, t_output)``    both explicit
``[(student...), (teacher...)]``            nested: ``[(s_name[, s_output]), (t_name[, t_output])]``
==========================================  ==============================================

``output`` is a tuple index (``1`` or ``'1'``) or a key of a ModelOutput (``'logits'``). A two-element
flat form is ``(name, output)`` when its second element is an integer or a digit string, and
``(student_name, teacher_name)`` otherwise, unless the second element is a ModelOutput key
that the caller knows (see :func:`parse_layer_mapping`'s ``output_keys``).

This module is framework-agnostic: the torch and keras engines resolve the names on real models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence, Union

Output = Union[int, str, None]

# Keys of transformers ModelOutputs that may appear as the ``output`` of a two-element mapping.
MODEL_OUTPUT_KEYS = frozenset(
    {
        "logits",
        "last_hidden_state",
        "pooler_output",
        "hidden_states",
        "attentions",
        "loss",
        "start_logits",
        "end_logits",
    }
)


@dataclass(frozen=True)
class LayerMapping:
    """One student output matched to one teacher output.

    ``student_output`` / ``teacher_output`` of ``None`` mean the module's whole output (its first element
    when the module returns a tuple or a ModelOutput).
    """

    student_layer: str
    teacher_layer: str
    student_output: Output = None
    teacher_output: Output = None

    def as_list(self) -> list[Any]:
        """The explicit four-element form, as plain JSON-able data."""
        return [self.student_layer, self.student_output, self.teacher_layer, self.teacher_output]


def _normalise_output(value: Any, where: str) -> Output:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where}: an output must be an index or a key, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value) if value.lstrip("-").isdigit() else value
    raise ValueError(f"{where}: an output must be an index or a key, got {value!r}")


def _is_output_like(value: Any, output_keys: Iterable[str]) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and (value.lstrip("-").isdigit() or value in output_keys)


def _layer_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: a layer name must be a non-empty string, got {value!r}")
    return value


def _side(item: Any, where: str) -> tuple[str, Output]:
    """One side of the nested form: ``(name,)`` or ``(name, output)`` or a bare name."""
    if isinstance(item, str):
        return _layer_name(item, where), None
    if isinstance(item, Sequence) and 1 <= len(item) <= 2:
        name = _layer_name(item[0], where)
        output = _normalise_output(item[1], where) if len(item) == 2 else None
        return name, output
    raise ValueError(f"{where}: expected (name,) or (name, output), got {item!r}")


def parse_layer_mapping(
    item: Any, where: str = "layer_mapping", output_keys: Iterable[str] = MODEL_OUTPUT_KEYS
) -> LayerMapping:
    """Parse one mapping in any supported form. Raises ``ValueError`` naming ``where`` and the item."""
    if isinstance(item, LayerMapping):
        return item
    if isinstance(item, str) or not isinstance(item, Sequence) or len(item) == 0:
        raise ValueError(f"{where}: expected a tuple or list mapping, got {item!r}")
    items = list(item)
    # Nested form: [(student...), (teacher...)] -- both elements are themselves sequences.
    if len(items) == 2 and all(isinstance(x, Sequence) and not isinstance(x, str) for x in items):
        s_name, s_out = _side(items[0], f"{where}[0]")
        t_name, t_out = _side(items[1], f"{where}[1]")
        return LayerMapping(s_name, t_name, s_out, t_out)
    if len(items) == 1:
        if isinstance(items[0], Sequence) and not isinstance(items[0], str):
            # [(name, output)]: one side given for both models.
            name, out = _side(items[0], f"{where}[0]")
            return LayerMapping(name, name, out, out)
        name = _layer_name(items[0], where)
        return LayerMapping(name, name)
    if len(items) == 2:
        first = _layer_name(items[0], where)
        if _is_output_like(items[1], output_keys):
            out = _normalise_output(items[1], where)
            return LayerMapping(first, first, out, out)
        return LayerMapping(first, _layer_name(items[1], where))
    if len(items) == 4:
        return LayerMapping(
            _layer_name(items[0], where),
            _layer_name(items[2], where),
            _normalise_output(items[1], where),
            _normalise_output(items[3], where),
        )
    raise ValueError(
        f"{where}: expected 1, 2 or 4 elements (or the nested [(student), (teacher)] form), "
        f"got {len(items)}: {item!r}"
    )


def select_output(value: Any, output: Output) -> Any:
    """Pick ``output`` out of a module's return value (tensor, tuple, dict or ModelOutput).

    ``None`` means the whole output, or its first element when it is a tuple / ModelOutput / dict.
    """
    if output is None:
        if isinstance(value, dict):  # ModelOutput is an OrderedDict subclass
            return next(iter(value.values()))
        if isinstance(value, (tuple, list)):
            return value[0]
        return value
    if isinstance(output, int):
        if isinstance(value, dict):
            return list(value.values())[output]
        if isinstance(value, (tuple, list)):
            return value[output]
        if output == 0:
            return value
        raise IndexError(f"output index {output} requested from a single-tensor output")
    if isinstance(value, dict):
        if output not in value:
            raise KeyError(f"output key {output!r} not in {list(value.keys())}")
        return value[output]
    attr = getattr(value, output, None)
    if attr is None:
        raise KeyError(f"output key {output!r} requested from a {type(value).__name__}")
    return attr
