"""A CLI config file read as a dict: the settings plus, at the top level, the ``task`` entry point
(see :mod:`nas_distill.task_entry`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML config as a dict (the safe, bounded loader of :mod:`nas_distill.yamlio`)."""
    import yaml

    from .yamlio import load_yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError("config", f"no such file: {p}")
    try:
        with open(p, encoding="utf-8") as handle:
            data = load_yaml(handle, str(p))
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{p} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def split_task(data: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """``(config without 'task', task spec or None)``."""
    data = dict(data)
    return data, data.pop("task", None)
