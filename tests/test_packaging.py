"""Dependencies: ranges for users (pyproject.toml), exact CPU builds for this project's machines and CI
(constraints-cpu.txt, passed to pip by the Makefile), and one list for conda/Binder (environment.yml)."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: Torch and TensorFlow are what users already have (Colab, GPU servers): the kit must not replace them.
USER_OWNED = ("torch", "tensorflow", "tensorflow-cpu")


def _pip_requirements(environment: Path) -> list[str]:
    spec = yaml.safe_load(environment.read_text())
    pip_lists = [item["pip"] for item in spec["dependencies"] if isinstance(item, dict) and "pip" in item]
    assert len(pip_lists) == 1, "environment.yml needs exactly one pip: section"
    return [line for line in pip_lists[0] if not line.startswith("-")]


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _constraints() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / "constraints-cpu.txt").read_text().splitlines()]
    return {_name(line): line for line in lines if line}


def test_environment_matches_pyproject():
    project = _project()
    expected = project["dependencies"] + project["optional-dependencies"]["adapters"] + project["optional-dependencies"]["notebooks"]
    listed = _pip_requirements(ROOT / "environment.yml")
    assert [_normalise(r) for r in listed[:len(expected)]] == [_normalise(r) for r in expected]
    # what environment.yml adds are the CPU builds of a fresh environment, each pinned for CI as well
    added = {_name(r) for r in listed[len(expected):]}
    assert added <= set(_constraints()), f"{added - set(_constraints())} not in constraints-cpu.txt"


def test_binder_environment_is_a_copy():
    assert (ROOT / "binder" / "environment.yml").read_text() == (ROOT / "environment.yml").read_text()


def test_users_get_ranges_and_keep_their_torch_and_tensorflow():
    project = _project()
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pinned = [r for r in requirements if "==" in r]
    assert not pinned, f"exact pins belong in constraints-cpu.txt, not in the package metadata: {pinned}"
    torch = [r for r in requirements if _name(r) == "torch"]
    assert torch and all(">=" in r and "<" in r for r in torch), torch
    # naming tensorflow or tensorflow-cpu would install one on top of the other (same package, two names)
    assert not [r for r in requirements if _name(r).startswith("tensorflow")]


def test_ci_installs_the_cpu_builds_through_the_constraints():
    constraints = _constraints()
    assert constraints["torch"] == "torch==2.13.0"
    assert constraints["tensorflow-cpu"].startswith("tensorflow-cpu==")
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "-e " in line]
    assert installs and all("-c $(CONSTRAINTS)" in line for line in installs), installs
    assert "CONSTRAINTS := constraints-cpu.txt" in makefile
