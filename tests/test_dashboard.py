"""optuna-dashboard launched by nas-distill on a finished study, read back through its HTTP API.

The real server runs in a subprocess (``python -m dashboards.launch``) on 127.0.0.1 and a free port; the
test reads ``/api/studies`` and ``/api/studies/<id>`` with urllib, downloads the uploaded student
checkpoint, checks the pushed hypervolume figure, checks the socket is bound to 127.0.0.1 only, and
stops the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from _support.common import REPO_ROOT, free_port, get_json, listening_addresses, stop_server, wait_for_server_json
from _support.report import make_study
from nas_distill.reporting.dashboard import HYPERVOLUME_FIGURE_ID, push_figures

optuna.logging.set_verbosity(optuna.logging.WARNING)

STARTUP_TIMEOUT_S = 45


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    study, url, artifact_dir = make_study(tmp)
    port = free_port()
    log = open(tmp / "dashboard.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboards.launch", "--storage", url, "--artifact-dir", str(artifact_dir),
         "--port", str(port), "--refresh-s", "0"],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server_json(proc, log, base + "/api/studies", STARTUP_TIMEOUT_S)
        yield {"base": base, "port": port, "study": study, "url": url, "artifact_dir": artifact_dir,
               "proc": proc, "tmp": tmp}
    finally:
        stop_server(proc)
        log.close()


def _study_detail(server) -> tuple[int, dict]:
    summaries = get_json(server["base"] + "/api/studies")["study_summaries"]
    (summary,) = [s for s in summaries if s["study_name"] == server["study"].study_name]
    return summary["study_id"], get_json(f"{server['base']}/api/studies/{summary['study_id']}")


@pytest.mark.slow
def test_study_is_listed_with_its_metrics_trials_and_attrs(server):
    study = server["study"]
    summaries = get_json(server["base"] + "/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["nas-distill"]
    assert summaries[0]["directions"] == ["maximize", "minimize"]
    _, detail = _study_detail(server)
    assert detail["objective_names"] == ["accuracy", "latency"] == study.metric_names
    assert len(detail["trials"]) == len(study.trials)
    assert {a["key"] for a in detail["user_attrs"]} == set(study.user_attrs) >= {"config", "search_space"}
    assert sorted(t["number"] for t in detail["best_trials"]) == sorted(t.number for t in study.best_trials)
    by_state: dict[str, list[dict]] = {}
    for trial in detail["trials"]:
        by_state.setdefault(trial["state"], []).append(trial)
    assert set(by_state) == {"Complete", "Fail", "Running"}
    for trial in by_state["Complete"]:
        keys = {a["key"] for a in trial["user_attrs"]}
        assert {"arch", "n_params", "worker", "accuracy", "latency", "artifact_id"} <= keys
    for trial in by_state["Fail"]:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert attrs["error_type"] == "RuntimeError" and "shapes cannot be multiplied" in attrs["error"]


@pytest.mark.slow
def test_hypervolume_figure_is_pushed(server):
    _, detail = _study_detail(server)
    figures = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
    assert list(figures) == [HYPERVOLUME_FIGURE_ID]
    figure = figures[HYPERVOLUME_FIGURE_ID]
    assert "Hypervolume over trials" in figure["layout"]["title"]["text"]
    assert figure["layout"]["xaxis"]["title"]["text"] == "trial number"
    assert "ms" in figure["layout"]["yaxis"]["title"]["text"]
    complete = sorted(t.number for t in server["study"].trials if t.state.name == "COMPLETE")
    trace = figure["data"][0]
    assert trace["x"] == complete  # one point per complete trial (plain lists: we pass lists)
    assert len(trace["y"]) == len(complete) and trace["y"][-1] > 0


@pytest.mark.slow
def test_student_checkpoint_is_downloadable(server):
    study_id, detail = _study_detail(server)
    with_artifacts = [t for t in detail["trials"] if t["artifacts"]]
    complete = {t.number: t for t in server["study"].trials if t.state.name == "COMPLETE"}
    assert sorted(t["number"] for t in with_artifacts) == sorted(complete)  # each saved student, no other
    trial = with_artifacts[-1]
    (artifact,) = trial["artifacts"]
    assert artifact["filename"] == f"student-trial-{trial['number']}.tar"
    assert artifact["artifact_id"] == complete[trial["number"]].user_attrs["artifact_id"]
    url = f"{server['base']}/artifacts/{study_id}/{trial['trial_id']}/{artifact['artifact_id']}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    assert body == (server["artifact_dir"] / artifact["artifact_id"]).read_bytes()
    archive = server["tmp"] / "student.tar"
    archive.write_bytes(body)
    from nas_distill.engines.students import extract_student

    folder = extract_student(archive, server["tmp"] / "student")
    arch = complete[trial["number"]].params
    assert json.loads((folder / "arch.json").read_text()) == arch
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == arch["hidden_size"]


@pytest.mark.slow
def test_binds_loopback_only(server):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp to read the listening address from")
    assert listening_addresses(server["port"]) == ["127.0.0.1"]


def _request(base: str, path: str, method: str = "GET", headers: dict | None = None) -> int:
    request = urllib.request.Request(base + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_foreign_host_delete_is_refused_and_the_study_stays(server):
    """A DNS-rebinding page: its own domain in Host and Origin. Then the same DELETE with our own Host:
    refused too, the dashboard being read-only by default. Reads with our Host still work."""
    study_id, _ = _study_detail(server)
    port = server["port"]
    foreign = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    assert _request(server["base"], f"/api/studies/{study_id}", "DELETE", foreign) == 403
    assert _request(server["base"], "/api/studies", "GET", foreign) == 403
    assert _request(server["base"], f"/api/studies/{study_id}", "DELETE") == 403
    assert _request(server["base"], f"/api/studies/{study_id}/note", "PUT") == 403
    assert _request(server["base"], "/api/studies", "GET", {"Host": f"localhost:{port}"}) == 200
    assert optuna.load_study(study_name=server["study"].study_name, storage=server["url"]).trials


def _wsgi_call(app, method: str, path: str, host: str, origin: str | None = None) -> str:
    from wsgiref.util import setup_testing_defaults

    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "HTTP_HOST": host}
    if origin:
        environ["HTTP_ORIGIN"] = origin
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    del body
    return status[0].split()[0]


@pytest.mark.slow
def test_allow_writes_still_refuses_foreign_origins(tmp_path):
    """optuna-dashboard's real WSGI app behind the guard, called in-process: with --allow-writes a
    same-origin DELETE deletes the study; one from another origin is refused and leaves it intact."""
    from optuna_dashboard import wsgi

    from nas_distill.reporting.dashboard import DashboardGuard

    study, url, _ = make_study(tmp_path, n_complete=2, n_fail=0, n_running=0)
    storage = optuna.storages.RDBStorage(url)
    app = DashboardGuard(wsgi(storage), "127.0.0.1", allow_writes=True)
    path = f"/api/studies/{study._study_id}"
    assert _wsgi_call(app, "DELETE", path, "127.0.0.1:8080", "http://attacker.example") == "403"
    assert _wsgi_call(app, "DELETE", path, "attacker.example:8080", "http://127.0.0.1:8080") == "403"
    assert optuna.get_all_study_names(url) == [study.study_name]
    assert _wsgi_call(app, "DELETE", path, "127.0.0.1:8080", "http://127.0.0.1:8080") == "204"
    assert optuna.get_all_study_names(url) == []


def test_non_loopback_host_warns(tmp_path, caplog):
    """Launching on 0.0.0.0 warns before serving (the port is taken, so nothing is exposed here)."""
    import logging
    import socket

    from nas_distill.reporting.dashboard import launch_dashboard

    _, url, _ = make_study(tmp_path, n_complete=0, n_fail=0, n_running=0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with caplog.at_level(logging.WARNING), pytest.raises(OSError):
            launch_dashboard(url, None, host="0.0.0.0", port=taken.getsockname()[1], refresh_s=None)
    assert any("listens on 0.0.0.0" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with caplog.at_level(logging.WARNING), pytest.raises(OSError):
            launch_dashboard(url, None, host="127.0.0.1", port=taken.getsockname()[1], refresh_s=None)
    assert not any("listens on" in r.getMessage() for r in caplog.records)


def test_push_is_idempotent(tmp_path):
    study, url, _ = make_study(tmp_path)
    def system_attrs() -> dict:
        return study._storage.get_study_system_attrs(study._study_id)

    push_figures(url)
    first = system_attrs()
    push_figures(url, study.study_name)
    second = system_attrs()
    keys = [k for k in second if k.startswith("dashboard:plot_data:")]
    assert keys and all(HYPERVOLUME_FIGURE_ID in k for k in keys)
    assert {k: first[k] for k in keys} == {k: second[k] for k in keys}


def test_no_complete_trial_pushes_nothing(tmp_path):
    study, url, _ = make_study(tmp_path, n_complete=0)
    assert push_figures(url) == {}


def test_importable_without_torch():
    code = (
        "import sys; import dashboards.launch, nas_distill.reporting.dashboard, nas_distill.report; "
        "bad = [m for m in ('torch', 'tensorflow', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
