"""The package's layers hold: the import contracts of pyproject.toml (`lint-imports`) and no import cycle
inside nas_distill, function-local imports included. Each check is also shown failing on a throwaway
package that breaks it, so a green run means the check looked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

from _support.common import REPO_ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# Contracts that main does not keep yet; lint-imports checks every other one.
NOT_YET_ENFORCED = {"distill-no-study"}


def lint_imports(cwd: Path, *contract_ids: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``lint-imports`` on the pyproject.toml in ``cwd`` (no cache: nothing is written beside it)."""
    args = [str(LINT_IMPORTS), "--no-cache"] + [f"--contract={c}" for c in contract_ids]
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def import_cycles(package: str) -> list[list[str]]:
    """Each import cycle among the modules of ``package`` once, as the chain ``[a, b, ..., a]``.

    grimp reads every import statement, also those inside functions (an import that runs late still
    ties the two modules together); ``if TYPE_CHECKING:`` imports never run and are left out."""
    graph = grimp.build_graph(package, cache_dir=None, exclude_type_checking_imports=True)
    cycles: dict[frozenset, list[str]] = {}
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back and frozenset(back) not in cycles:
                cycles[frozenset(back)] = [module, *back]
    return list(cycles.values())


def contract_ids() -> list[str]:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return [c["id"] for c in config["contracts"]]


def test_import_contracts_hold():
    enforced = [c for c in contract_ids() if c not in NOT_YET_ENFORCED]
    assert "search-no-frameworks" in enforced
    res = lint_imports(REPO_ROOT, *enforced)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(" KEPT") == len(enforced), res.stdout


def test_no_import_cycles_in_the_package():
    cycles = import_cycles("nas_distill")
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# ------------------------------------------------------------------------- the checks, failing on purpose
DEMO = "layered_demo"


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_contracts_name_a_forbidden_import_hidden_in_a_function_and_a_chain(tmp_path):
    # The real contracts, pointed at a throwaway package laid out like nas_distill.
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = [f'root_package = "{DEMO}"', "include_external_packages = true",
             f"exclude_type_checking_imports = {str(config['exclude_type_checking_imports']).lower()}"]
    for contract in config["contracts"]:
        lines.append("[[tool.importlinter.contracts]]")
        for key, value in contract.items():
            value = [v.replace("nas_distill", DEMO) for v in value] if isinstance(value, list) else value
            lines.append(f"{key} = {value!r}".replace("'", '"'))
    (tmp_path / "pyproject.toml").write_text("[tool.importlinter]\n" + "\n".join(lines) + "\n")
    write_package(tmp_path / DEMO, {
        "__init__.py": "",
        "util.py": "def tokenizer():\n    import transformers\n    return transformers\n",
        "config.py": "",
        "search/__init__.py": "",
        "search/space.py": f"from {DEMO} import util\n",
        "distill/__init__.py": "",
        "distill/loop.py": f"from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import optuna\n"
                           f"from {DEMO}.config import *\n",
    })
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    res = lint_imports(tmp_path, env=env)
    out = res.stdout
    assert res.returncode == 1, out + res.stderr
    assert "search/ runs without a deep-learning framework BROKEN" in out
    assert f"{DEMO}.search is not allowed to import transformers" in out
    assert f"{DEMO}.search.space -> {DEMO}.util" in out and f"{DEMO}.util -> transformers" in out
    assert "distill/ knows neither the study nor the config file BROKEN" in out
    assert f"{DEMO}.distill is not allowed to import {DEMO}.config" in out
    assert f"{DEMO}.distill is not allowed to import optuna" not in out  # a TYPE_CHECKING import never runs


def test_a_cycle_through_a_function_local_import_is_found(tmp_path, monkeypatch):
    write_package(tmp_path / DEMO, {
        "__init__.py": "",
        "runner.py": f"from {DEMO} import workers\n",
        "workers.py": f"def start():\n    from {DEMO} import runner\n    return runner\n",
        "leaf.py": f"from {DEMO} import workers\n",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles(DEMO) == [[f"{DEMO}.runner", f"{DEMO}.workers", f"{DEMO}.runner"]]
