"""docker-compose.yml: Docker cannot run on the development machines, so check the file itself.

The topology it describes (PostgreSQL + scalable workers + dashboard on one study) is run without Docker
by the multi-worker tests.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _arg_after(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_services_and_dependencies():
    services = _compose()["services"]
    assert set(services) == {"postgres", "worker", "dashboard"}
    assert services["postgres"]["image"].startswith("postgres:15")
    for name in ("worker", "dashboard"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The worker service must be scalable: no fixed container name, no host port.
    assert "container_name" not in services["worker"]
    assert "ports" not in services["worker"]


def test_workers_and_dashboard_share_one_study():
    services = _compose()["services"]
    worker, dashboard = services["worker"]["command"], services["dashboard"]["command"]
    assert worker[0] == "worker" and dashboard[0] == "dashboard"
    assert _arg_after(worker, "--study") == _arg_after(dashboard, "--study")
    # The storage URL carries a password: it travels in the environment, never on a command line.
    assert "--storage" not in worker and "--storage" not in dashboard
    url = services["worker"]["environment"]["NAS_DISTILL_STORAGE"]
    assert url == services["dashboard"]["environment"]["NAS_DISTILL_STORAGE"]
    assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url


def test_secrets_come_from_the_environment():
    text = (ROOT / "docker-compose.yml").read_text()
    services = _compose()["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    # Every password in a URL is an interpolated variable, never a literal.
    for user_pass in re.findall(r"postgresql\+psycopg://([^@]+)@", text):
        assert re.fullmatch(r"\$\{[A-Z_]+(:-[a-z_]+)?\}:\$\{POSTGRES_PASSWORD\}", user_pass), user_pass
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", example, re.M), ".env.example must not carry a password"


def test_env_file_is_never_committed():
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=ROOT, capture_output=True
    ).returncode
    assert ignored == 0, ".env must be git-ignored"


def test_dashboard_published_on_loopback_only():
    ports = _compose()["services"]["dashboard"]["ports"]
    assert ports, "the dashboard must publish a port"
    for mapping in ports:
        assert str(mapping).startswith("127.0.0.1:"), mapping


def test_compose_commands_name_real_cli_subcommands():
    from nas_distill.cli import build_parser

    parser = build_parser()
    services = _compose()["services"]
    env = {"POSTGRES_USER": "nas", "POSTGRES_PASSWORD": "x", "POSTGRES_DB": "db", "NAS_STUDY": "digits-demo",
           "NAS_CONFIG": "examples/digits_demo.yaml"}

    def interpolate(arg: str) -> str:
        return re.sub(r"\$\{([A-Z_]+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1), m.group(2) or ""), arg)

    for name in ("worker", "dashboard"):
        args = parser.parse_args([interpolate(a) for a in services[name]["command"]])
        assert args.command == name
    assert (ROOT / "examples" / "digits_demo.yaml").exists()


def test_demo_example_is_the_config_the_demo_runs():
    from nas_distill.demo import demo_config

    shipped = yaml.safe_load((ROOT / "examples" / "digits_demo.yaml").read_text())
    assert shipped == demo_config()
    # The compose default study is the one the example config names.
    assert "NAS_STUDY:-" + shipped["auto_distillation"]["study"]["study_name"] in (
        ROOT / "docker-compose.yml").read_text()
