"""A CLI config file: the settings plus, at the top level, the ``task`` entry point (see
:mod:`nas_distill.task_entry`), which the settings themselves do not know."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .yamlio import read_config_file


def split_task(data: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """``(config without 'task', task spec or None)``."""
    data = dict(data)
    return data, data.pop("task", None)


def config_and_task(config: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """``(settings dict, task spec or None)`` of a config file (:func:`~nas_distill.yamlio.read_config_file`)
    or of a dict."""
    return split_task(read_config_file(config) if isinstance(config, (str, os.PathLike)) else config)
