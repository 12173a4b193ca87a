"""Shared test fixtures.

* Every test (and every subprocess a test starts) runs with the Hugging Face hubs offline and with the
  repository root on ``PYTHONPATH`` (so ``python -m nas_distill.cli`` works without an install).
* ``postgres_url``: a throwaway PostgreSQL server for the whole session (:class:`_support.postgres.
  PostgresServer`: ``initdb`` into a temporary folder, trust authentication on 127.0.0.1 only, ``pg_ctl``
  as an unprivileged user). Tests that use it are marked ``@pytest.mark.postgres``. When the binaries or
  the server are missing the tests are skipped, except under ``CI=true`` where that is a failure.
* ``own_postgres``: a server of the test's own, built the same way (a test that stops and restarts it).
* ``free_port()``: a TCP port on 127.0.0.1 that nothing listens on right now.
* ``pruned_search``: one real search with the pruner on (tests/_support/pruning_task.py), run once for the
  session: the AutoDistillation after its search. Tests read it, or copy its run folder to change it.
"""

from __future__ import annotations

import os
import time

import pytest

from _support.common import REPO_ROOT, TASK_MODULE, free_port, task_config, write_config  # noqa: F401
from _support.postgres import start_or_skip

# Offline for every test and every child process (set at import so collection-time imports see it too).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# TensorFlow (the Keras tests) on its own backend and without its INFO banner in the test output.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Tests run two at a time (pytest-xdist, `make test`): each test process gets its own folder of the
# per-machine locks (nas_distill.machine_lock), as if on a machine of its own, so one test's trainings
# never hold another's latency measurements.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import atexit
    import shutil
    import tempfile

    _locks = tempfile.mkdtemp(prefix=f"nas-distill-locks-{os.environ['PYTEST_XDIST_WORKER']}-")
    os.environ["NAS_DISTILL_LOCK_DIR"] = _locks
    atexit.register(shutil.rmtree, _locks, ignore_errors=True)
_pp = os.environ.get("PYTHONPATH", "")
if str(REPO_ROOT) not in _pp.split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([_pp] if _pp else []))


@pytest.fixture(scope="session")
def postgres_url():
    """Start a throwaway PostgreSQL server; yield ``postgresql+psycopg://user@127.0.0.1:port/db``."""
    server = start_or_skip()
    try:
        yield server.create_database("nas_distill_test")
    finally:
        server.cleanup()


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of the test's own (a started :class:`_support.postgres.PostgresServer`), for
    tests that stop and restart it; deleted afterwards."""
    server = start_or_skip("nas-distill-pg-own-")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def fresh_pg_study_name(request) -> str:
    """A study name unique to the test, so tests sharing the server do not see each other's trials."""
    return "t-" + request.node.name.replace("[", "-").replace("]", "")[:60] + f"-{os.getpid()}-{time.time_ns()}"


@pytest.fixture(scope="session")
def pruned_search(tmp_path_factory):
    """pruning_task's SHARED_SEARCH with the pruner on (about 15 s): the AutoDistillation after its search
    (its study, and the sampler that ran it). Shared by every test that reads such a search: a test that
    changes it copies ``run_dir`` and reopens the copy."""
    import torch

    from _support.pruning_task import SHARED_SEARCH, make_ad

    torch.set_num_threads(1)
    ad = make_ad(tmp_path_factory.mktemp("pruned") / "run", **SHARED_SEARCH)
    ad.search()
    return ad


# ------------------------------------------------------------------------------ a task for workers
@pytest.fixture
def task_module(tmp_path, monkeypatch):
    """Write the test task module to ``tmp_path/tasks`` and put it on PYTHONPATH (also for children)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "nd_test_task.py").write_text(TASK_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    return "nd_test_task"


def pytest_collection_modifyitems(config, items):
    """A test marked serial must be marked slow too: `make test-fast` runs the tests that are not slow two
    at a time, and a serial one among them would run beside another."""
    lonely = [item.nodeid for item in items
              if item.get_closest_marker("serial") and not item.get_closest_marker("slow")]
    if lonely:
        raise pytest.UsageError(f"marked serial but not slow: {', '.join(lonely)}")
