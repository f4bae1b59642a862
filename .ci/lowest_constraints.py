"""Print a pip constraints file pinning every dependency of pyproject.toml to its lowest allowed version.

pip has no "lowest versions" resolution, so `make test-min` installs the project under these pins
(``name==lower bound`` for each ``>=``), which proves the declared lower bounds true. torch is pinned
to the exact version installed first (TORCH_VERSION), never resolved. A dependency without a lower
bound is reported on stderr: it cannot be tested at its lowest version and should get one.

    python .ci/lowest_constraints.py [--extra dev] [--torch 2.13.0] > constraints.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip itself carries
    from pip._vendor import tomli as tomllib

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)")


def lowest_pins(requirements: list[str], torch_version: str) -> tuple[list[str], list[str]]:
    """(``name==version`` pins, names without a lower bound) for PEP 508 requirement strings."""
    pins, unbounded = [], []
    for requirement in requirements:
        name, _, spec = REQUIREMENT.match(requirement).groups()
        if name.lower() == "torch":
            pins.append(f"torch=={torch_version}")
            continue
        lower = re.search(r">=\s*([0-9][^,\s]*)", spec) or re.search(r"==\s*([0-9][^,\s*]*)(?:\s|,|$)", spec)
        if lower:
            pins.append(f"{name}=={lower.group(1)}")
        else:
            unbounded.append(name)
    return pins, unbounded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parent.parent / "pyproject.toml")
    parser.add_argument("--extra", action="append", default=[], help="optional-dependency groups to include")
    parser.add_argument("--torch", default="2.13.0", help="the torch version installed beforehand")
    args = parser.parse_args()
    project = tomllib.loads(args.pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in args.extra:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    pins, unbounded = lowest_pins(requirements, args.torch)
    for name in unbounded:
        print(f"lowest_constraints.py: {name} has no lower bound in pyproject.toml", file=sys.stderr)
    print("\n".join(pins))


if __name__ == "__main__":
    main()
