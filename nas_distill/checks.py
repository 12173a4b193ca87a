"""Value checks of config fields: each returns the value (normalised) or raises
``ConfigError(path, "expected ..., got <repr>")``.

Shared by the settings declarations (:mod:`nas_distill.settings`, where pydantic calls them for each
field) and by the section validators that pydantic's field model cannot express (search, stages). Two
decisions hold everywhere: ``bool`` is never accepted where a number is expected, nor ``0`` / ``1`` for a
bool; and a value is never converted from a string (YAML already reads ``3e-3`` as a number).
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
import sys
from typing import Any, Mapping, Sequence

from .errors import ConfigError

DEVICE_PATTERN = r"(auto|cpu|mps|cuda|gpu|xpu)(:\d+)?"
STORAGE_SUFFIXES = (".db", ".sqlite", ".sqlite3", ".log", ".journal", ".jsonl")
#: Optuna stores a study name in an indexed column of this many characters.
MAX_STUDY_NAME_LENGTH = 512


def short(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters (an int too long for ``repr`` shows its size)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str(); show its size instead
        return f"<{type(value).__name__} of about {value.bit_length() * 0.30103:.0f} digits>" \
            if isinstance(value, int) else f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(path: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(path, f"expected {expected}, got {short(value)}")


def np_bool_types() -> tuple[type, ...]:
    """numpy.bool_ if numpy is already imported (it is cheap to check, and never imported here)."""
    np = sys.modules.get("numpy")
    return (np.bool_,) if np is not None else ()


def is_int(value: Any) -> bool:
    # bool is an int subclass in Python; `max_trials: true` is a mistake, not 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np_bool_types()))


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np_bool_types()))


def is_seq(value: Any) -> bool:
    """A list or tuple (what YAML / Python give for a list); strings and mappings are not."""
    return isinstance(value, (list, tuple))


def int_value(value: Any, path: str, minimum: int = 1) -> int:
    if not is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise fail(path, what, value)
    return int(value)


def number_value(value: Any, path: str, *, positive: bool = False, non_negative: bool = False) -> float:
    try:
        finite = is_number(value) and math.isfinite(float(value))
    except OverflowError:  # an int too large for a float (10**400)
        finite = False
    if not finite:
        raise fail(path, "a finite number", value)
    if positive and not value > 0:
        raise fail(path, "a number > 0", value)
    if non_negative and not value >= 0:
        raise fail(path, "a number >= 0", value)
    return float(value)


def number_kept(value: Any, path: str, **bounds: bool) -> float | int:
    """Like :func:`number_value`, but an int stays an int (``heartbeat_interval: 10`` reads back as 10)."""
    checked = number_value(value, path, **bounds)
    return int(value) if is_int(value) else checked


def bool_value(value: Any, path: str) -> bool:
    if not isinstance(value, (bool, np_bool_types())):
        raise fail(path, "true or false", value)
    return bool(value)


def str_value(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(path, "a non-empty string", value)
    return value


def path_value(value: Any, path: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return str_value(value, path)


def choice(value: Any, path: str, aliases: Mapping[str, str], shown: Sequence[str]) -> str:
    """The canonical name of ``value`` (case, ``-``, ``_`` and spaces ignored); a "did you mean" else."""
    if not isinstance(value, str):
        raise fail(path, f"one of {list(shown)}", value)
    key = value.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key in aliases:
        return aliases[key]
    hint = difflib.get_close_matches(value.strip().lower(), list(aliases), n=1, cutoff=0.6)
    suffix = f"; did you mean {aliases[hint[0]]!r}?" if hint else ""
    raise ConfigError(path, f"expected one of {list(shown)}, got {short(value)}{suffix}")


def device_value(value: Any, path: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(DEVICE_PATTERN, value.strip().lower()):
        raise fail(path, "'auto', 'cpu', 'cuda', 'cuda:<index>', 'mps' or 'xpu'", value)
    return value.strip().lower()


def storage_value(value: Any, path: str) -> str:
    """A storage URL (``scheme://...``) or a bare SQLite / journal file path, the forms
    :func:`nas_distill.study.resolve_storage_url` understands; anything else fails here, before a
    worker starts, instead of when the study is first opened."""
    text = str_value(value, path)
    scheme, sep, _ = text.partition("://")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        return text
    if not sep and text.strip().endswith(STORAGE_SUFFIXES):
        return text
    from .store.secrets import mask_url  # a password in a URL never reaches the message

    raise ConfigError(path, "expected a storage URL (sqlite:///..., postgresql+psycopg://..., journal:///...) "
                            f"or a .db / .log file path, got {short(mask_url(text))}")


def study_name_error(name: str) -> str | None:
    """Why ``name`` cannot be a study name (the storage would refuse it mid-run), or None."""
    if len(name) > MAX_STUDY_NAME_LENGTH:
        return f"at most {MAX_STUDY_NAME_LENGTH} characters, got {len(name)}"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"no control characters (NUL, newline, ...), got {short(name)}"
    return None


def join(path: str, key: Any) -> str:
    """``path.key``; a key that is not a plain non-empty string shows as ``path[<repr>]``.

    A key with a newline or another unprintable character shows as its repr too, so the error stays
    one line."""
    if not isinstance(key, str) or not key or not key.strip() or not key.isprintable():
        return f"{path}[{key!r}]" if path else f"[{key!r}]"
    return f"{path}.{key}" if path else key


def mapping(value: Any, path: str, allowed: Sequence[str], *, none_ok: bool = True) -> dict[str, Any]:
    """Check ``value`` is a mapping with only ``allowed`` keys; unknown keys get a "did you mean"."""
    if value is None and none_ok:
        return {}
    if not isinstance(value, Mapping):
        raise fail(path or "config", "a mapping", value)
    for key in value:
        if not isinstance(key, str) or key not in allowed:
            hint = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            suffix = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                join(path, key), f"unknown key {key!r}{suffix} (known keys: {', '.join(allowed)})"
            )
    return dict(value)
