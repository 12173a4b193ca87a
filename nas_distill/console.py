"""What ``run`` and ``worker`` print: timestamped log lines (plain or JSON), wherever stdout goes.

A search runs under docker compose, nohup, CI or ``| tee`` as often as in a terminal, so every line that
matters is a log record written to stdout whether or not it is a terminal: the start banner, one line
per trial event (started with its architecture, finished with its metrics and seconds, failed with its
reason, pruned with why), each long step as it starts, and the final summary. Warnings go the same way,
so ``> file`` keeps the whole story in order; only the one-line error of a failed command goes to stderr.

``--log-format json`` writes one JSON object per line (``time``, ``level``, ``worker``, ``logger``,
``message``, plus ``event`` and its fields for trial events), for log collectors. ``-q`` shows warnings
and errors only, ``-v`` adds debug lines. On a terminal the live progress bar
(:mod:`nas_distill.progress`) sits below the lines.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Mapping, Optional, TextIO

EVENTS = logging.getLogger("nas_distill.events")
LOG_FORMATS = ("plain", "json")
_HANDLER_MARK = "_nas_distill_console"


def worker_name() -> str:
    return os.environ.get("NAS_DISTILL_WORKER") or "main"


def event(name: str, message: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """One event line: ``message`` for people, ``name`` and ``fields`` for the JSON format."""
    EVENTS.log(level, message, extra={"event": name, "fields": fields})


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def arch_text(arch: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt_value(arch[k])}" for k in sorted(arch))


def metrics_text(metrics: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in metrics.items())


# ------------------------------------------------------------------------------ trial events
def trial_started(number: int, arch: Mapping[str, Any]) -> None:
    event("trial_started", f"trial {number} started: {arch_text(arch)}", trial=number, arch=dict(arch))


def trial_finished(number: int, metrics: Mapping[str, Any], seconds: float) -> None:
    event("trial_finished", f"trial {number} finished in {seconds:.1f} s: {metrics_text(metrics)}",
          trial=number, metrics=dict(metrics), seconds=round(seconds, 3))


def trial_failed(number: int, error_type: str, error: str, seconds: float) -> None:
    short = " ".join(str(error).split())[:300]
    event("trial_failed", f"trial {number} failed after {seconds:.1f} s: {error_type}: {short}",
          level=logging.WARNING, trial=number, error_type=error_type, error=short, seconds=round(seconds, 3))


def trial_pruned(number: int, reason: str) -> None:
    event("trial_pruned", f"trial {number} pruned: {reason}", trial=number, reason=reason)


def step_started(step: str, detail: str = "") -> None:
    """A long step begins (teacher training, teacher cache fill, dry run): say so before it runs."""
    event("step_started", f"{step} started" + (f": {detail}" if detail else ""), step=step)


# ------------------------------------------------------------------------------ formatting
class PlainFormatter(logging.Formatter):
    """``2026-01-31 12:00:00 w0 trial 3 started: ...``; warnings and errors carry their level."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno < logging.WARNING else f"{record.levelname} "
        text = f"{stamp} {worker_name()} {level}{record.getMessage()}"
        if record.exc_info and logging.getLogger().level <= logging.DEBUG:  # tracebacks with --debug
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            + f".{int(record.msecs):03d}" + time.strftime("%z", time.localtime(record.created)),
            "level": record.levelname.lower(),
            "worker": worker_name(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        name = getattr(record, "event", None)
        if name:
            out["event"] = name
            out.update(getattr(record, "fields", {}) or {})
        if record.exc_info and record.levelno >= logging.ERROR:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _LineHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (a live progress bar redirects it)."""

    def __init__(self, stream: Optional[TextIO] = None):
        super().__init__(stream)
        self._fixed = stream is not None

    def emit(self, record: logging.LogRecord) -> None:
        if not self._fixed:
            self.stream = sys.stdout
        super().emit(record)


def configure(verbosity: int = 0, log_format: str = "plain", debug: bool = False,
              stream: Optional[TextIO] = None) -> None:
    """Send nas-distill's log records to stdout as lines: ``verbosity`` -1 (``-q``: warnings and
    errors), 0 (info: the trial events), 1 (``-v``: debug). Other libraries stay at warnings unless
    ``debug``."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 or debug else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        # ours from an earlier call, and logging.basicConfig's stderr handler (exactly that class: a
        # subclass belongs to someone else, such as a test runner's capture)
        if getattr(handler, _HANDLER_MARK, False) or type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    handler = _LineHandler(stream)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if log_format == "json" else PlainFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("nas_distill").setLevel(level)
