"""Replacing a file whole: readers (a browser reloading the report, ``status``, another worker) see the old
content or the new, never half of it, and writers racing on one path each finish."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["write_text_atomic"]


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    The temporary name is unique per call, so workers finishing at the same moment in one run folder
    never rename each other's file away; it is removed if the write fails. The file is created as any
    other (the umask's permissions), so the run folder's files stay readable to whoever could read them.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
