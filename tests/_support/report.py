"""Studies for the report, table and dashboard tests, written by the real runner.

``make_study`` runs a real search (``nas_distill.workers.run_worker``, one worker, random search) with the
task of :mod:`_support.report_task`: tiny torch students, each trained, evaluated, saved to the run's
artifact store and recorded the way every search records them (params = the arch, user attrs ``arch``,
``n_params``, each metric, ``timings``, ``worker``, ``artifact_id``; failed trials with ``error_type`` /
``error``). Each distinct search runs once per test session; every call gets its own copy of the run
folder (study and artifacts), so a test that writes to its study changes no other test's.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution

from _support.report_task import SPACE

DISTRIBUTIONS = {k: CategoricalDistribution(v) for k, v in SPACE.items()}
_TEMPLATES: dict[tuple, Path] = {}


def _session_folder() -> Path:
    if "root" not in _TEMPLATES:
        root = Path(tempfile.mkdtemp(prefix="nas-distill-report-studies-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _TEMPLATES["root"] = root
    return _TEMPLATES["root"]


def _search(n_complete: int, n_fail: int, metrics: tuple[tuple[str, str], ...], name: str) -> Path:
    """The run folder of a real search with ``n_complete`` COMPLETE and ``n_fail`` failed trials."""
    from nas_distill.workers import run_worker

    key = (n_complete, n_fail, metrics, name)
    if key not in _TEMPLATES:
        run_dir = _session_folder() / f"run{len(_TEMPLATES)}"
        total = n_complete + n_fail
        # Failed trainings spread over the run, never after the last COMPLETE one (the budget counts
        # COMPLETE trials: the search ends there). With none to complete, the circuit breaker ends it.
        fail_at = list(range(1, n_fail + 1)) if not n_complete else \
            [1 + i * (total - 1) // n_fail for i in range(n_fail)]
        config = {
            "task": {"entry": "_support.report_task:make_task", "args": {"fail_at": fail_at}},
            "model": {"framework": "pytorch"},
            "auto_distillation": {
                "search": {"search_space": SPACE, "search_algorithm": "random", "seed": 0,
                           "metrics": [m for m, _ in metrics],
                           "higher_is_better": [d == "maximize" for _, d in metrics],
                           "max_trials": max(n_complete, 1)},
                "study": {"run_dir": str(run_dir), "study_name": name,
                          "stop_after_failures": n_fail if not n_complete else 3},
            },
        }
        run_worker(config, label="w0", check_setup=False)
        _TEMPLATES[key] = run_dir
    return _TEMPLATES[key]


def make_study(
    tmp_path: Path,
    *,
    n_complete: int = 16,
    n_fail: int = 3,
    n_running: int = 1,
    metrics: tuple[tuple[str, str], ...] = (("accuracy", "maximize"), ("latency", "minimize")),
    name: str = "nas-distill",
) -> tuple[optuna.Study, str, Path]:
    """A copy of a real search's run folder in ``tmp_path``; returns (study, storage URL, artifact folder).

    ``n_running`` trials are then left RUNNING as a worker that died mid-trial leaves them (asked, arch
    and worker recorded, never told): made by hand, because a real one takes killing a worker process.
    """
    run_dir = tmp_path / f"run-{name}"
    if n_complete or n_fail:
        shutil.copytree(_search(n_complete, n_fail, metrics, name), run_dir)
    url = f"sqlite:///{run_dir / 'study.db'}"
    if not (n_complete or n_fail):  # no trial at all: the study as a run creates it, before a first trial
        run_dir.mkdir(parents=True)
        optuna.create_study(storage=url, study_name=name, directions=[d for _, d in metrics]) \
            .set_metric_names([m for m, _ in metrics])
    study = optuna.load_study(study_name=name, storage=url)
    for i in range(n_running):
        trial = study.ask(DISTRIBUTIONS)
        trial.set_user_attr("arch", dict(trial.params))
        trial.set_user_attr("worker", {"host": "lost-host", "pid": 1000 + i, "worker": f"w{i + 1}"})
    return study, url, run_dir / "artifacts"
