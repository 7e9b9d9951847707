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
    # naming tensorflow or tensorflow-cpu would install one on top of the other (same package, two names):
    # only the opt-in extra for installs without any TensorFlow names it, as a range
    extras = project["optional-dependencies"]
    assert not [r for r in project["dependencies"] + [r for name, extra in extras.items() if name != "tensorflow"
                                                      for r in extra] if _name(r).startswith("tensorflow")]
    assert [_name(r) for r in extras["tensorflow"]] == ["tensorflow"] and "<" in extras["tensorflow"][0]


def test_ci_installs_the_cpu_builds_through_the_constraints():
    constraints = _constraints()
    assert constraints["torch"] == "torch==2.13.0"
    assert constraints["tensorflow-cpu"].startswith("tensorflow-cpu==")
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "-e " in line]
    assert installs and all("-c $(CONSTRAINTS)" in line for line in installs), installs
    assert "CONSTRAINTS := constraints-cpu.txt" in makefile


# The package's floors, ground first: a module imports only from its own floor or the floors below
# (README, "What is where"). A module's floor is its first name under cte_kit.
FLOORS = ("types", "data", "perturb", "models", "scoring", "estimators", "adapt", "runs", "evaluation", "reports",
          "teaching", "cli", "__main__")


def _kit_imports(path: Path, module: str) -> set[str]:
    import ast

    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        imported.update(name for name in names if name.startswith("cte_kit."))
    return imported


def _floor(module: str) -> int:
    return FLOORS.index(module.split(".")[1])


def test_every_import_points_down_the_floors():
    root = Path(__file__).resolve().parents[1]
    upward = []
    for path in sorted((root / "cte_kit").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module == "cte_kit":
            continue
        for target in _kit_imports(path, module):
            if target != "cte_kit.__version__" and _floor(target) > _floor(module):
                upward.append(f"{module} imports {target}")
    assert not upward, "imports that run up the floors:\n" + "\n".join(upward)


def test_the_floor_check_sees_an_upward_import(tmp_path):
    # the check must be able to fail: a model adapter that imports the runs floor is caught
    (tmp_path / "cte_kit" / "models").mkdir(parents=True)
    module = tmp_path / "cte_kit" / "models" / "x.py"
    module.write_text("from ..runs.store import ResultStore\nfrom ..types import Prediction\n")
    targets = _kit_imports(module, "cte_kit.models.x")
    assert targets == {"cte_kit.runs.store", "cte_kit.types"}
    assert [t for t in targets if _floor(t) > _floor("cte_kit.models.x")] == ["cte_kit.runs.store"]
