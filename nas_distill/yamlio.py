"""Reading a config's YAML: PyYAML's ``SafeLoader`` that also reads YAML 1.2 numbers as numbers.

Why: PyYAML implements YAML 1.1, where a float needs a dot and a signed exponent, so ``3e-3``,
``1e5`` and ``2.5e3`` are *strings*; ``learning_rate: 3e-3`` would then fail validation and a search
space ``[1e-3, 3e-4]`` would hand strings to the model builder. Every YAML 1.2 library (and most
people) read them as floats. Only implicit resolution is added to the safe loader: no constructor, so
nothing beyond plain data is ever built, and a quoted ``"3e-3"`` stays a string.
"""

from __future__ import annotations

import functools
import re
from typing import IO, Any

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


def load_yaml(stream: str | bytes | IO[Any]) -> Any:
    """Parse one YAML document with the safe loader (see the module docstring); raises ``yaml.YAMLError``."""
    loader = _loader()(stream)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
