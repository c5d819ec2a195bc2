"""pyproject.toml's dependency bounds: every direct dependency has a lower bound, and each bound equals its pin in
.ci/min-versions.txt (what the minimum-versions job installs), so the tested minimums and the declared ones are the
same; torch and torchvision also have an upper bound (the newest releases tested). See docs/dependencies.md."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
from packaging.requirements import Requirement  # (pytest's own dependency)
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    return {canonicalize_name(r.name): r for r in reqs}


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".ci" / "min-versions.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
            assert m, f".ci/min-versions.txt: {line!r} is not NAME==VERSION"
            out[canonicalize_name(m[1])] = m[2]
    return out


def test_lower_bounds_equal_the_minimum_versions_pins():
    reqs, pinned = declared(), pins()
    lower = {}
    for name, req in reqs.items():
        bounds = [s.version for s in req.specifier if s.operator == ">="]
        assert len(bounds) == 1, f"pyproject.toml: {req} needs exactly one lower bound (>=)"
        lower[name] = bounds[0]
    assert lower == pinned, "pyproject.toml's lower bounds and .ci/min-versions.txt differ: change both together"


def test_torch_and_torchvision_have_an_upper_bound():
    reqs = declared()
    for name in ("torch", "torchvision"):
        assert any(s.operator == "<" for s in reqs[name].specifier), f"{name} needs an upper bound (<)"
