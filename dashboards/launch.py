"""Launch optuna-dashboard on a nas-distill run: ``python -m dashboards.launch --storage URL --run-dir DIR``.

Same as ``nas-distill dashboard``: the study storage, the run's artifact store (``<run_dir>/artifacts``,
so student checkpoints are downloadable) and the hypervolume figure pushed into the study first.
Binds 127.0.0.1 unless ``--host`` says otherwise; read-only unless ``--allow-writes``. Does not import torch.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from nas_distill.reporting.dashboard import launch_dashboard

__all__ = ["launch_dashboard", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="study storage URL or journal file path")
    parser.add_argument("--run-dir", default=None, help="run folder; its artifacts/ is the artifact store")
    parser.add_argument("--artifact-dir", default=None, help="artifact folder (default: <run-dir>/artifacts)")
    parser.add_argument("--study", default=None, help="study to push the figures to (default: all)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--allow-writes", action="store_true", help="serve the write API (default: read-only)")
    parser.add_argument("--refresh-s", type=float, default=60.0, help="figure refresh period; 0: once")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    artifact_dir = args.artifact_dir or (os.path.join(args.run_dir, "artifacts") if args.run_dir else None)
    launch_dashboard(args.storage, artifact_dir, host=args.host, port=args.port, study_name=args.study,
                     refresh_s=args.refresh_s or None, allow_writes=args.allow_writes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
