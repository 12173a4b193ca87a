"""Passwords masked as ``***`` in every text that is logged, printed or stored.

A leaf module (standard library only): the config checks, the CLI and the storage code all mask URLs
before a message leaves the process.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

__all__ = ["PASSWORD_ENV_VARS", "mask_url", "mask_secrets"]

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")

# A password as a query parameter (``password``, SQLAlchemy / libpq) or a field of a libpq ``key=value``
# DSN: the value up to the next separator.
_PARAM_PASSWORD = re.compile(
    r"(?P<head>(?:^|[?&;\s])(?:password|passwd|pwd|sslpassword|pass)\s*=\s*)(?P<pw>'[^']*'|[^&;\s#'\"]*)",
    re.IGNORECASE)
#: Environment variables whose values are passwords the storage drivers read (libpq's, ours).
PASSWORD_ENV_VARS = ("PGPASSWORD",)


def mask_url(url: Any) -> Any:
    """Every password in a text masked as ``***``: a URL's userinfo (``postgresql://user:secret@host/db``
    -> ``postgresql://user:***@host/db``), a ``password`` query parameter or DSN field, and the value of
    ``$PGPASSWORD`` wherever it appears. Other values are returned unchanged."""
    if not isinstance(url, str):
        return url
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***" + m.group("tail"), url)
    text = _PARAM_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    for name in PASSWORD_ENV_VARS:
        secret = os.environ.get(name)
        if secret and len(secret) >= 3:  # a one- or two-letter value would mask ordinary text
            text = text.replace(secret, "***")
    return text


def mask_secrets(value: Any) -> Any:
    """A copy of a JSON-like structure with every password in a URL masked."""
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, Mapping):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_secrets(v) for v in value]
    return value
