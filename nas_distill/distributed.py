"""The trial loop under ``torch.distributed``: rank 0 alone talks to the study, every rank trains.

Rank 0 runs the ordinary loop (ask, admit, train, tell) and, before training a trial, broadcasts its
number and architecture as JSON bytes in a tensor (no pickle crosses the wire). The other ranks follow
those messages, train the same student, and after each trial every rank says whether it succeeded (an
all-reduce of a flag): rank 0 records the trial failed when any rank failed it.

torch is imported only here and only once a distributed group exists: :func:`rank_and_world` looks at
``torch.distributed`` only when the process already imported torch.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised torch.distributed group, else ``(0, 1)``.

    Only looks when torch is already imported: a process that never imported torch is not distributed.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return 0, 1
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_json(obj: Any, src: int = 0) -> Any:
    """Broadcast a JSON-able object from ``src`` to every rank as UTF-8 bytes in a uint8 tensor.

    Used instead of ``broadcast_object_list``, which pickles.
    """
    import torch
    import torch.distributed as dist

    if dist.get_rank() == src:
        payload = json.dumps(obj).encode("utf-8")
        size = torch.tensor([len(payload)], dtype=torch.int64)
    else:
        payload = b""
        size = torch.tensor([0], dtype=torch.int64)
    dist.broadcast(size, src=src)
    n = int(size.item())
    if dist.get_rank() == src:
        buffer = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    else:
        buffer = torch.empty(n, dtype=torch.uint8)
    dist.broadcast(buffer, src=src)
    return json.loads(bytes(buffer.tolist()).decode("utf-8")) if dist.get_rank() != src else obj


def every_rank_succeeded(ok: bool) -> bool:
    """All-reduce of this rank's success: True only when every rank succeeded (a collective: every rank
    calls it once per trial)."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(int(flag.item()))


def synced(fit: Callable[..., Any]) -> Callable[..., Any]:
    """Rank 0's build-train-evaluate: ``fit``, then the all-reduce of every rank's success; raises this
    rank's own error, else a RuntimeError when another rank failed the trial."""

    def fit_on_every_rank(*args: Any) -> Any:
        error = out = None
        try:
            out = fit(*args)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised after the collective, below
            error = exc
        all_ok = every_rank_succeeded(error is None)
        if error is not None:
            raise error
        if not all_ok:
            raise RuntimeError("another rank failed this trial (see its log)")
        return out

    return fit_on_every_rank


def run(runner: Any, rank: int) -> None:
    """Run ``runner`` (a :class:`~nas_distill.runner.TrialRunner`) as ``rank`` of the group."""
    if rank == 0:
        _lead(runner)
    else:
        _follow(runner, rank)


def _lead(runner: Any) -> None:
    """Rank 0: the runner's own loop, each trial announced to the other ranks before it trains."""
    fit = synced(runner.fit)

    def train(trial: Any, arch: dict) -> None:
        broadcast_json({"number": trial.number, "arch": arch}, src=0)
        runner.train(trial, arch, fit=fit)

    runner.loop(train)
    broadcast_json({"stop": True}, src=0)


def _follow(runner: Any, rank: int) -> None:
    """Another rank: train what rank 0 announces until it says stop."""
    from .trial_record import Clock

    while True:
        message = broadcast_json(None, src=0)
        if message.get("stop"):
            return
        ok = True
        try:
            model, _, _ = runner.fit(message["arch"], message["number"], Clock())
            del model
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - rank 0 records the trial; this rank goes on
            log.warning("rank %d: trial %d failed: %s", rank, message["number"], exc)
            ok = False
        every_rank_succeeded(ok)
        runner.ad.student_model = None
        gc.collect()
