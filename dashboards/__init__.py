"""optuna-dashboard launch configuration for nas-distill runs (see ``dashboards/README.md``).

The implementation lives in :mod:`nas_distill.reporting.dashboard` so that the installed package (and
the Docker image, which copies only ``nas_distill/``) has it for ``nas-distill dashboard``; this folder
is the launch entry point from a source checkout: ``python -m dashboards.launch``.
"""

from nas_distill.reporting.dashboard import HYPERVOLUME_FIGURE_ID, launch_dashboard, push_figures

__all__ = ["HYPERVOLUME_FIGURE_ID", "launch_dashboard", "push_figures"]
