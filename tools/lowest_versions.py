"""Print pip constraints that hold every direct dependency of pyproject.toml at its lowest allowed version.

    python tools/lowest_versions.py --extras torch,tf,dev --keep constraints-dev.txt > lowest.txt
    pip install -c lowest.txt -c constraints-dev.txt -e '.[torch,tf,dev]'

`make test-min` installs that into a venv of its own and runs the fast tests, so a floor that is too low
fails there. Only lower bounds (``>=``, ``==``, ``~=``) are pinned; what the dependencies pull in is left
to pip. Requirements whose environment marker does not apply here are skipped, and so are the packages
pinned in the ``--keep`` files (torch: this machine has one CPU build of it, see constraints-dev.txt).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def lower_bound(req: Requirement) -> str | None:
    """The lowest version ``req`` allows, or None when it states none."""
    floors = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(floors, key=Version) if floors else None


def pinned_names(paths: list[str]) -> set[str]:
    names = set()
    for path in paths:
        for line in Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                names.add(canonicalize_name(Requirement(line).name))
    return names


def lowest_constraints(pyproject: Path, extras: list[str], keep: set[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    pins: dict[str, str] = {}
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if (req.marker and not req.marker.evaluate()) or name in keep:
            continue
        floor = lower_bound(req)
        if floor is not None:
            pins[name] = max(pins.get(name, floor), floor, key=Version)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", default="pyproject.toml")
    parser.add_argument("--extras", default="", help="comma-separated extras whose floors are pinned too")
    parser.add_argument("--keep", action="append", default=[], help="constraints file whose packages stay as pinned")
    args = parser.parse_args(argv)
    extras = [e for e in args.extras.split(",") if e]
    lines = lowest_constraints(Path(args.pyproject), extras, pinned_names(args.keep))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
