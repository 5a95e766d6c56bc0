"""pyproject.toml, constraints.txt and environment.yml describe the same pinned environment.

These fail on drift: a dependency added to pyproject without a pin, a pin changed in one
file and not the other, or torch/torchvision unpinned (an unpinned torch pulls a ~5.5 GB
CUDA build).
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TORCH_PINS = {"torch": "2.13.0", "torchvision": "0.28.0"}
INSTALL_CMD = 'pip install -c constraints.txt -e ".[app,test,dist]"'

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*(;.*)?$")


def norm(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def split_req(req: str) -> tuple[str, str]:
    """'torch==2.13.0' -> ('torch', '==2.13.0'); 'numpy' -> ('numpy', '')."""
    m = _REQ.match(req)
    assert m, f"cannot parse requirement {req!r}"
    return norm(m.group(1)), m.group(3).replace(" ", "")


def pinned_version(spec: str) -> str:
    assert spec.startswith("==") and "," not in spec and "*" not in spec, spec
    return spec[2:]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def pyproject_reqs(pyproject) -> dict[str, str]:
    """All runtime + extra requirements: normalized name -> specifier."""
    project = pyproject["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    out: dict[str, str] = {}
    for r in reqs:
        name, spec = split_req(r)
        assert name not in out or out[name] == spec, f"{name} listed twice with different specs"
        out[name] = spec
    return out


@pytest.fixture(scope="module")
def constraints() -> dict[str, str]:
    """constraints.txt: normalized name -> exact version."""
    pins: dict[str, str] = {}
    for lineno, raw in enumerate((REPO / "constraints.txt").read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert m, f"constraints.txt:{lineno}: not an exact 'name==version' pin: {raw!r}"
        name = norm(m.group(1))
        assert name not in pins, f"constraints.txt:{lineno}: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


@pytest.fixture(scope="module")
def env_yml() -> dict:
    return yaml.safe_load((REPO / "environment.yml").read_text())


@pytest.fixture(scope="module")
def env_pip(env_yml) -> tuple[dict[str, str], list[str]]:
    """environment.yml pip section: (normalized name -> exact version, other entries)."""
    pip_sections = [d["pip"] for d in env_yml["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    pins: dict[str, str] = {}
    other: list[str] = []
    for entry in pip_sections[0]:
        entry = str(entry).strip()
        if entry.startswith("-"):
            other.append(entry)
            continue
        name, spec = split_req(entry)
        assert name not in pins, f"environment.yml: {name} listed twice"
        pins[name] = pinned_version(spec)
    return pins, other


def test_constraints_is_a_full_lock(constraints):
    assert len(constraints) > 50, "constraints.txt should pin every package of the venv"
    for forbidden in ("pip", "setuptools", "wheel", "clipbranches-widgets"):
        assert forbidden not in constraints, f"{forbidden} must not be pinned in constraints.txt"


def test_torch_pinned_everywhere(pyproject_reqs, constraints, env_pip):
    env_pins, _ = env_pip
    for name, version in TORCH_PINS.items():
        assert pyproject_reqs.get(name) == f"=={version}", f"pyproject: {name} must be =={version}"
        assert constraints.get(name) == version, f"constraints.txt: {name} must be =={version}"
        assert env_pins.get(name) == version, f"environment.yml: {name} must be =={version}"


def test_every_pyproject_dependency_is_locked(pyproject_reqs, constraints):
    missing = sorted(set(pyproject_reqs) - set(constraints))
    assert not missing, f"pyproject dependencies without a pin in constraints.txt: {missing}"
    for name, spec in pyproject_reqs.items():
        if spec.startswith("=="):
            assert constraints[name] == spec[2:], f"{name}: pyproject {spec} vs constraints =={constraints[name]}"


def test_environment_yml_mirrors_pyproject(pyproject_reqs, env_pip):
    env_pins, _ = env_pip
    missing = sorted(set(pyproject_reqs) - set(env_pins))
    extra = sorted(set(env_pins) - set(pyproject_reqs))
    assert not missing, f"pyproject dependencies missing from environment.yml: {missing}"
    assert not extra, f"environment.yml pip packages not in pyproject: {extra}"


def test_environment_yml_pins_match_constraints(env_pip, constraints):
    env_pins, _ = env_pip
    for name, version in env_pins.items():
        assert name in constraints, f"environment.yml pins {name}, constraints.txt does not"
        assert version == constraints[name], f"{name}: environment.yml =={version} vs constraints.txt =={constraints[name]}"


def test_environment_yml_shape(env_yml, env_pip):
    assert env_yml["name"] == "clipbranches"
    assert env_yml["channels"] == ["conda-forge"]
    plain = [d for d in env_yml["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in plain
    assert "pip" in plain
    _, other = env_pip
    assert other == ["-e ."], f"unexpected non-pin pip entries: {other}"


def test_python_version(pyproject):
    assert pyproject["project"]["requires-python"] == ">=3.11"


def test_makefile_uses_the_locked_install():
    makefile = (REPO / "Makefile").read_text()
    assert INSTALL_CMD in makefile


def test_installed_versions_match_constraints(pyproject_reqs, constraints):
    """The environment running the tests is the locked one (catches a stale venv)."""
    wrong = {}
    for name in pyproject_reqs:
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong[name] = "not installed"
            continue
        if installed.split("+", 1)[0] != constraints[name]:
            wrong[name] = f"installed {installed}, pinned {constraints[name]}"
    assert not wrong, wrong
