"""Reading a config's YAML: PyYAML's ``SafeLoader`` that also reads YAML 1.2 numbers as numbers.

Why: PyYAML implements YAML 1.1, where a float needs a dot and a signed exponent, so ``3e-3``,
``1e5`` and ``2.5e3`` are *strings*; ``learning_rate: 3e-3`` would then fail validation and a search
space ``[1e-3, 3e-4]`` would hand strings to the model builder. Every YAML 1.2 library (and most
people) read them as floats. Only implicit resolution is added to the safe loader: no constructor, so
nothing beyond plain data is ever built, and a quoted ``"3e-3"`` stays a string.

Bounded: at most :data:`MAX_CONFIG_BYTES` of text and :data:`MAX_CONFIG_NODES` nodes with every alias
expanded, counted on the composed node graph before any Python object is built. Anchors and aliases of
ordinary size work; an alias bomb (each level's list repeating the previous level's alias: 1 KB that
expands to 10^13 values) is refused in time linear in its size.
"""

from __future__ import annotations

import functools
import os
import re
from typing import IO, Any, Mapping

from .errors import ConfigError

#: Largest config text read (bytes): a real config is a few KB.
MAX_CONFIG_BYTES = 1 << 20
#: Most YAML nodes a config may hold once its aliases are expanded.
MAX_CONFIG_NODES = 100_000

# YAML 1.2 core-schema floats that YAML 1.1 misses: an exponent without a dot or without a sign.
_YAML12_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


@functools.lru_cache(maxsize=None)
def _loader() -> type:
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        """``yaml.SafeLoader`` plus the YAML 1.2 exponent floats."""

    ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_EXPONENT_FLOAT,
                                       list("-+0123456789."))
    return ConfigLoader


def load_yaml(stream: str | bytes | IO[Any], source: str = "config") -> Any:
    """Parse one YAML document with the safe loader (see the module docstring); raises ``yaml.YAMLError``
    for bad YAML, and a ConfigError naming ``source`` past the bounds."""
    text = stream if isinstance(stream, (str, bytes)) else stream.read(MAX_CONFIG_BYTES + 1)
    size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(source, f"the config is {size} bytes or more; configs over {MAX_CONFIG_BYTES} bytes "
                                  f"are refused")
    loader = _loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            nodes = _expanded_nodes(node, {}, MAX_CONFIG_NODES)
        except RecursionError:
            raise ConfigError(source, "the YAML is nested too deeply") from None
        if nodes > MAX_CONFIG_NODES:
            raise ConfigError(source, f"the YAML expands (its aliases repeated) to more than {MAX_CONFIG_NODES} "
                                      f"values; refused (an alias bomb?)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_config_file(path: str | os.PathLike) -> Mapping[str, Any]:
    """A config file's top-level mapping (the safe, bounded :func:`load_yaml`). Every failure, a missing
    file, a directory, unreadable or non-UTF-8 bytes, bad YAML or something else than a mapping, is a
    ConfigError naming the file. The one reader of config files: the CLI, the workers and
    :class:`~nas_distill.config.AutoDistillationConfig` all use it."""
    import yaml

    from .checks import short

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = load_yaml(handle, path)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(path, "config file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, "expected a YAML file, got a directory") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read the config file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"the config file is not UTF-8 text ({exc.reason})") from None
    except ValueError as exc:  # a NUL byte in the path: open() raises ValueError, not OSError
        raise ConfigError(short(path), f"cannot open the config file ({exc})") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(path, f"invalid YAML (only plain YAML is read, with a safe loader): {detail}") from None
    if data is None:
        raise ConfigError(path, "expected a YAML mapping, got an empty document")
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"expected a YAML mapping at the top level, got {type(data).__name__}: "
                                f"{short(data)}")
    return data


def _expanded_nodes(node: Any, memo: dict[int, int], cap: int) -> int:
    """Nodes under ``node`` (itself included) with aliases expanded; stops counting past ``cap``."""
    import yaml

    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = cap + 1  # a node reached again while counting it: a recursive alias, refused
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [item for pair in node.value for item in pair]
    else:
        children = []
    for child in children:
        total += _expanded_nodes(child, memo, cap)
        if total > cap:
            break
    memo[id(node)] = total
    return total
