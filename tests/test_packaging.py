"""The two dependency lists (pyproject for pip, environment.yml for conda/Binder) must agree."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pip_requirements(environment: Path) -> list[str]:
    spec = yaml.safe_load(environment.read_text())
    pip_lists = [item["pip"] for item in spec["dependencies"] if isinstance(item, dict) and "pip" in item]
    assert len(pip_lists) == 1, "environment.yml needs exactly one pip: section"
    return [line for line in pip_lists[0] if not line.startswith("-")]


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = project["dependencies"] + project["optional-dependencies"]["adapters"] + project["optional-dependencies"]["notebooks"]
    assert [_normalise(r) for r in _pip_requirements(ROOT / "environment.yml")] == [_normalise(r) for r in expected]


def test_binder_environment_is_a_copy():
    assert (ROOT / "binder" / "environment.yml").read_text() == (ROOT / "environment.yml").read_text()


def test_torch_is_pinned_to_the_cpu_wheel():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in project["dependencies"]
