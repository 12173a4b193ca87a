"""Named Keras layers: finding them, reading their outputs, and training only some of them.

Names are exact Keras layer names (``model.get_layer`` semantics, never substrings: ``dense_1`` is not
``dense_10``), or a path ``outer/inner`` into a nested model or layer (Keras forbids ``/`` in a layer name,
so the path is unambiguous).

Outputs: a functional model (or a Sequential one that has been built) records every layer's symbolic
output, so ``keras.Model(model.input, [logits, model.get_layer(name).output, ...])`` is a model that
shares the original's layers and weights and returns the mapped outputs as well. Keras computes only
what those outputs depend on, so a stage that needs no logits stops after its deepest mapped layer.
A nested model called once in the outer graph is a mapped layer like any other (its output is that call's
output); a layer inside it is not (its output belongs to the nested model's own graph).
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Any, Iterator, Sequence

import keras

from nas_distill.distill.mappings import Output, select_output


class LayerNotFound(LookupError):
    """A layer name or path that the model does not have (the caller turns it into its own error)."""


def _children(layer: Any) -> list:
    return list(layer._flatten_layers(include_self=False, recursive=False))


def all_layers(model: Any) -> list:
    """Every layer under ``model`` (nested ones included), parents before their children."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def _missing(role: str, path: str, where: Any, name: str, nested: bool) -> LayerNotFound:
    names = [child.name for child in _children(where)]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    shown = ", ".join(repr(n) for n in names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    inside = f" ({name!r} is not inside {where.name!r})" if nested else ""
    return LayerNotFound(f"{role} has no layer named {path!r}{inside} (layers there: {shown}){hint}")


def resolve_layer(model: Any, path: str, role: str = "model") -> Any:
    """The layer at ``path`` (exact name, or ``outer/inner``); :class:`LayerNotFound` names the layer and
    lists some of the available names."""
    where = model
    for part in str(path).split("/"):
        match = [child for child in _children(where) if child.name == part]
        if not match:
            raise _missing(role, path, where, part, nested=where is not model)
        where = match[0]
    return where


def resolve_path_chain(model: Any, path: str) -> list:
    """The layers along ``path`` (``outer``, then ``outer/inner``): the containers of a nested block."""
    chain, where = [], model
    for part in str(path).split("/"):
        where = next(child for child in _children(where) if child.name == part)
        chain.append(where)
    return chain


def _graph_of(model: Any) -> Any:
    """The functional graph that runs ``model``: itself, or the one a built Sequential model keeps."""
    functional = getattr(model, "_functional", None)  # keras.Sequential builds one on its first input
    return functional if functional is not None else model


def _output_in_graph(model: Any, layer: Any, path: str, role: str) -> Any:
    """``layer``'s output where ``model``'s graph calls it.

    ``layer.output`` is not that for a nested model (Keras returns the nested model's own outputs, which
    the outer inputs do not reach), so the call node is looked up among the outer graph's nodes (a built
    Sequential model's graph included). A layer called more than once there is ambiguous; a nested model
    the graph does not call has no output in it: both are :class:`LayerNotFound` saying what to map
    instead. Without Keras' node keys (an internal), ``layer.output`` (the first call) is used.
    """
    graph = _graph_of(model)
    keys = getattr(graph, "_nodes", None)
    try:
        from keras.src.ops.function import make_node_key
    except ImportError:  # pragma: no cover - a Keras without it
        keys = None
    if keys is None:
        return layer.output
    calls = [node for i, node in enumerate(layer._inbound_nodes) if make_node_key(layer, i) in keys]
    if len(calls) > 1:
        raise LayerNotFound(
            f"{role}: layer {path!r} is called {len(calls)} times in the model's graph, so its output is "
            f"ambiguous; map a layer applied to the one output you mean (e.g. keras.layers.Identity("
            f"name=...) on it)"
        )
    if calls:
        outputs = list(calls[0].outputs)
        return outputs[0] if len(outputs) == 1 else outputs
    if isinstance(layer, keras.Model):
        raise LayerNotFound(
            f"{role}: the nested model {path!r} is not called in the model's graph (its own outputs are not "
            f"connected to the model's inputs); map a layer of the outer graph applied to its output "
            f"instead (e.g. keras.layers.Identity(name=...) on it)"
        )
    return layer.output


def layer_output(model: Any, path: str, output: Output, role: str = "model") -> Any:
    """The symbolic output of layer ``path`` in ``model``'s graph, with a mapping's ``output`` selector."""
    layer = resolve_layer(model, path, role)
    if "/" in str(path):
        raise LayerNotFound(
            f"{role}: the output of {path!r} lies inside the nested layer {path.split('/')[0]!r}, which the "
            f"outer model's graph does not expose; map {path.split('/')[0]!r} itself (block_names may be "
            f"nested paths, mapped layers may not)"
        )
    try:
        value = _output_in_graph(model, layer, str(path), role)
    except (AttributeError, ValueError, RuntimeError) as exc:
        raise LayerNotFound(f"{role}: layer {path!r} has no output in the model's graph ({exc})") from None
    try:
        return select_output(value, output)
    except (IndexError, KeyError) as exc:
        raise LayerNotFound(f"{role}: layer {path!r}: cannot select output {output!r}: {exc}") from None


def model_logits(model: Any) -> Any:
    """The symbolic logits of ``model``: its output, or the first of several (as the torch engine)."""
    return model.outputs[0]


def input_structure(model: Any) -> Any:
    """The symbolic inputs as the model was built: one tensor, a list or a dict. A Sequential model built
    by calling it has ``inputs`` but no ``input``."""
    try:
        return model.input
    except (AttributeError, ValueError):
        inputs = getattr(model, "inputs", None)
        if not inputs:
            raise
        return inputs[0] if len(inputs) == 1 else list(inputs)


def output_model(model: Any, outputs: Sequence[Any], name: str) -> Any:
    """A model sharing ``model``'s layers and weights that returns ``outputs`` (a list)."""
    return keras.Model(input_structure(model), list(outputs), name=name)


@contextlib.contextmanager
def train_only(model: Any, block_names: Sequence[str], role: str = "student") -> Iterator[list]:
    """Within the block, only the layers named in ``block_names`` (and everything inside them) train.

    Yields the variables to train. Every other layer has ``trainable = False`` for the duration, which in
    Keras also keeps a frozen BatchNormalization in inference mode (its moving statistics untouched), so
    everything outside the blocks is bit-identical afterwards. Empty ``block_names``: the whole model
    trains. Each layer's own ``trainable`` flag is restored on exit (parents first, since the setter
    recurses into children).
    """
    layers = all_layers(model)
    saved = [(layer, layer.trainable) for layer in [model] + layers]
    try:
        if not block_names:
            model.trainable = True
            variables = list(model.trainable_weights)
        else:
            blocks = [resolve_layer(model, b, role) for b in block_names]
            inside = {id(sub) for b in blocks for sub in [b] + all_layers(b)}
            ancestors = {id(layer) for b in block_names for layer in resolve_path_chain(model, b)[:-1]}
            for layer in layers:
                if id(layer) not in inside and id(layer) not in ancestors:
                    layer.trainable = False
            for b in blocks:
                b.trainable = True
            seen, variables = set(), []
            for b in blocks:
                for v in b.trainable_weights:
                    if id(v) not in seen:
                        seen.add(id(v))
                        variables.append(v)
        yield variables
    finally:
        for layer, flag in saved:
            layer.trainable = flag
