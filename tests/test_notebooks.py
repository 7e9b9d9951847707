"""The teaching notebooks (``notebooks/NN_*.ipynb``).

Static checks (fast, always run): every committed notebook is stripped of outputs, states what
it teaches, narrates between code cells, has an exercise with a collapsible solution, a Colab
install cell that does nothing elsewhere, and a papermill ``parameters`` cell.

Execution (marker ``notebooks``): every notebook runs headless in fast mode (``CTE_KIT_FAST=1``)
through nbclient, with the solutions of its exercises inserted as code cells after them, so the
solutions are tested too. All six take a few minutes on 2 CPU cores.

To strip outputs before committing: ``python -m cte_kit.teaching.notebook_env strip notebooks/*.ipynb``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
from pathlib import Path
from queue import Empty

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
#: The notebooks of the teaching issue; later notebooks (baselines, adaptation) join the checks automatically.
CORE = (
    "01_why_transferability.ipynb",
    "02_data_and_model_banks.ipynb",
    "03_perturbations.ipynb",
    "04_semantic_cte.ipynb",
    "05_instance_cte_stardist_cellpose.ipynb",
    "06_perturbation_strength.ipynb",
)
#: Notebooks that need the optional StarDist / Cellpose / bioimage.io stack (the real DSB2018 target
#: of the demo is the test image in the stardist wheel).
NEEDS_ADAPTERS = {"01_why_transferability.ipynb": ("stardist",),
                  "02_data_and_model_banks.ipynb": ("stardist", "bioimageio.core"),
                  "04_semantic_cte.ipynb": ("stardist",),
                  "05_instance_cte_stardist_cellpose.ipynb": ("stardist", "cellpose"),
                  "06_perturbation_strength.ipynb": ("stardist",)}
CELL_TIMEOUT = 600  # seconds per cell: catches a hung kernel, far above any fast-mode cell
SOLUTION = re.compile(r"<details>.*?<summary>.*?solution.*?</summary>(.*?)</details>", re.S | re.I)
CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _params():
    return [pytest.param(path, id=path.stem) for path in NOTEBOOKS]


def test_the_teaching_notebooks_exist():
    missing = [name for name in CORE if not (NOTEBOOK_DIR / name).is_file()]
    assert not missing, f"missing notebooks: {missing}"
    assert (NOTEBOOK_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", _params())
def test_outputs_are_stripped(path):
    notebook = _read(path)
    dirty = [index for index, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} carry outputs or execution counts; strip them before committing "
                       "with `python -m cte_kit.teaching.notebook_env strip notebooks/*.ipynb`")
    assert "widgets" not in notebook.metadata, f"{path.name}: saved widget state in the notebook metadata; strip it"


@pytest.mark.parametrize("path", _params())
def test_states_what_you_will_learn_and_narrates(path):
    cells = _read(path).cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# "), "the first cell is the title"
    assert any(c.cell_type == "markdown" and "What you will learn" in c.source for c in cells[:2]), \
        f"{path.name}: no 'What you will learn' statement at the top"
    kinds = "".join("c" if c.cell_type == "code" else "m" for c in cells)
    longest = max(len(run) for run in re.findall(r"c+", kinds))
    assert longest <= 3, f"{path.name}: {longest} code cells in a row without narration"
    assert kinds.count("m") >= kinds.count("c") / 2, f"{path.name}: too little narration"


@pytest.mark.parametrize("path", _params())
def test_has_an_exercise_with_a_collapsible_solution(path):
    cells = _read(path).cells
    exercises = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and re.search(r"^#+ .*Exercise", c.source, re.M)]
    assert exercises, f"{path.name}: no exercise heading"
    solutions = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and SOLUTION.search(c.source)]
    assert any(s > e for e in exercises for s in solutions), f"{path.name}: no <details> solution after the exercise"
    for index in solutions:
        assert CODE_BLOCK.search(SOLUTION.search(cells[index].source).group(1)), \
            f"{path.name}: the solution in cell {index} has no ```python block"


@pytest.mark.parametrize("path", _params())
def test_colab_install_and_parameters_cells(path):
    code = [c for c in _read(path).cells if c.cell_type == "code"]
    first = code[0].source
    assert 'if "COLAB_RELEASE_TAG" in os.environ' in first and "%pip install" in first, \
        f"{path.name}: the first code cell must install the kit on Colab only"
    assert any("parameters" in c.metadata.get("tags", ()) for c in code[:3]), \
        f"{path.name}: no cell tagged `parameters` near the top (papermill)"


@pytest.mark.parametrize("path", _params())
def test_no_machine_paths(path):
    text = path.read_text()
    for fragment in ("/work/", "/home/", "/root/", "/Users/", "C:\\\\"):
        assert fragment not in text, f"{path.name} contains a machine path ({fragment})"


# -- execution ----------------------------------------------------------------------------------
def with_solutions(notebook):
    """A copy whose exercise solutions follow their <details> cell as code cells."""
    cells = []
    for cell in notebook.cells:
        cells.append(cell)
        if cell.cell_type == "markdown":
            for match in SOLUTION.finditer(cell.source):
                for block in CODE_BLOCK.findall(match.group(1)):
                    cells.append(nbformat.v4.new_code_cell(block))
    copy = nbformat.from_dict(notebook)
    copy.cells = cells
    return copy


def _sliced(get_msg, step: float = 0.5):
    """``channel.get_msg`` polled in short slices up to the caller's timeout.

    With ipywidgets in a cell, nbclient's wait for a reply on the shell channel sometimes does not
    wake when the reply arrives and sits until the cell timeout (jupyter/nbclient#312, open):
    a 10-second notebook then takes minutes. Polling in slices bounds that stall to ``step``.
    """
    from time import monotonic

    from nbclient.util import ensure_async

    async def wrapper(timeout=None, **kwargs):
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            remaining = step if deadline is None else min(step, max(0.0, deadline - monotonic()))
            try:
                return await ensure_async(get_msg(timeout=remaining, **kwargs))
            except Empty:
                if deadline is not None and monotonic() >= deadline:
                    raise

    return wrapper


def _client(notebook, **options):
    from nbclient import NotebookClient

    class Client(NotebookClient):
        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            for channel in (kc.shell_channel, kc.iopub_channel):
                channel.get_msg = _sliced(channel.get_msg)
            return kc

    return Client(notebook, **options)


def _missing_modules(path: Path) -> list[str]:
    return [m for m in NEEDS_ADAPTERS.get(path.name, ()) if importlib.util.find_spec(m.split(".")[0]) is None
            or importlib.util.find_spec(m) is None]


@pytest.mark.notebooks
@pytest.mark.parametrize("path", _params())
def test_notebook_executes_in_fast_mode(path, tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    missing = _missing_modules(path)
    if missing:
        pytest.skip(f"needs the adapters extra ({', '.join(missing)} not installed)")

    # The kernel inherits this environment: fast mode, no display, this interpreter first on PATH
    # (the `python3` kernel spec runs `python`), one thread per library (CI runners share cores).
    monkeypatch.setenv("CTE_KIT_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(variable, os.environ.get(variable, "1"))
    monkeypatch.setenv("CTE_KIT_DATA_DIR", str(tmp_path / "data"))
    notebook = with_solutions(_read(path))
    client = _client(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                     resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    client.execute()
    print(f"{path.name}: {time.perf_counter() - started:.0f} s in fast mode")
    errors = [output for cell in notebook.cells for output in cell.get("outputs", ()) if output.output_type == "error"]
    assert not errors
    executed = sum(1 for cell in notebook.cells if cell.cell_type == "code" and cell.execution_count is not None)
    assert executed == sum(1 for cell in notebook.cells if cell.cell_type == "code")
    assert not list(NOTEBOOK_DIR.glob("**/*.csv")), "a notebook wrote results into the repository"


# -- helpers the notebooks use ----------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False),
                                             ("no", False)])
def test_fast_mode_reads_the_environment(monkeypatch, value, expected):
    from cte_kit.teaching.notebook_env import environment_summary, fast_mode, pick

    monkeypatch.setenv("CTE_KIT_FAST", value)
    assert fast_mode() is expected
    assert pick(fast="small", full="large") == ("small" if expected else "large")
    assert pick(fast=1, full=2, is_fast=not expected) == (2 if expected else 1)
    assert ("fast mode" in environment_summary()) is expected


def test_fast_mode_default_and_bad_values(monkeypatch):
    from cte_kit.teaching.notebook_env import fast_mode

    monkeypatch.delenv("CTE_KIT_FAST", raising=False)
    assert fast_mode() is False and fast_mode(default=True) is True
    monkeypatch.setenv("CTE_KIT_FAST", "maybe")
    with pytest.raises(ValueError, match="CTE_KIT_FAST"):
        fast_mode()


def test_limit_threads_never_raises_the_count():
    torch = pytest.importorskip("torch")
    from cte_kit.teaching.notebook_env import available_cpus, limit_threads

    before = torch.get_num_threads()
    try:
        assert available_cpus() >= 1
        assert limit_threads(1) == 1 and torch.get_num_threads() == 1
        assert limit_threads(64) == 1  # only lowers
    finally:
        torch.set_num_threads(before)


def test_strip_outputs(tmp_path):
    from cte_kit.teaching.notebook_env import strip_outputs

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("1 + 1")])
    notebook.cells[1].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    notebook.cells[1].execution_count = 1
    notebook.metadata["widgets"] = {"state": {}}
    path = tmp_path / "n.ipynb"
    nbformat.write(notebook, path)
    assert strip_outputs(path) is True
    clean = nbformat.read(path, as_version=4)
    assert clean.cells[1].outputs == [] and clean.cells[1].execution_count is None and "widgets" not in clean.metadata
    assert strip_outputs(path) is False


def test_correlation_tables():
    from cte_kit.reports.tables import average_correlations, correlation_rows, format_correlation_table, method_name

    def summary(perturbation, consistency, kendall):
        return {"perturbation": perturbation, "consistency": consistency, "models": [{}, {}, {}],
                "kendall": kendall, "spearman": kendall, "pearson": float("nan")}

    rows = (correlation_rows([summary("dropout:0.2", "hard", 0.6), summary("noise:0.1", "soft", 0.2),
                              {"perturbation": "dropout:0.2", "consistency": "soft", "models": []}], "a")
            + correlation_rows([summary("dropout:0.2", "hard", 1.0), summary("noise:0.1", "soft", 0.4)], "b"))
    assert [row["method"] for row in rows] == ["CTE-NHD (Feat)", "CTE-EI (Input: noise:0.1)"] * 2
    averages = average_correlations(rows)
    assert averages[0]["method"] == "CTE-NHD (Feat)" and averages[0]["n_targets"] == 2
    assert averages[0]["kendall_mean"] == pytest.approx(0.8) and averages[0]["kendall_std"] == pytest.approx(0.2)
    assert averages[1]["spearman_mean"] == pytest.approx(0.3)
    assert averages[0]["pearson_mean"] != averages[0]["pearson_mean"]  # all NaN -> NaN
    text = format_correlation_table(averages, title="T")
    assert text.splitlines()[0] == "T" and "+0.80 ± 0.20" in text
    assert method_name("dropout:0.1@encoder1", "instance") == "CTE-VRand (Feat)"


def test_plain_warnings_print_the_kits_warnings_as_sentences(capsys, warnings_shown, monkeypatch):
    import warnings

    from cte_kit import CTEKitWarning
    from cte_kit.teaching.notebook_env import plain_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        plain_warnings()
        plain_warnings()  # a second call does not wrap the first
        warnings.warn("Model 'a' skipped: could not load it.", CTEKitWarning)
        assert capsys.readouterr().err == "Warning: Model 'a' skipped: could not load it.\n"
        # stardist/__init__.py replaces the format on import with "<file name> (<line>): <message>"
        monkeypatch.setattr(warnings, "formatwarning", lambda message, category, filename, lineno, line=None:
                            f"{Path(filename).name} ({lineno}): {message}\n")
        warnings.warn("StarDist replaced the format on import.", CTEKitWarning)
        assert capsys.readouterr().err == "Warning: StarDist replaced the format on import.\n"
        warnings.warn("from another library", UserWarning)  # keeps the format in place
        assert re.fullmatch(r"test_notebooks\.py \(\d+\): from another library\n", capsys.readouterr().err)
        warnings.simplefilter("ignore", CTEKitWarning)
        warnings.warn("filtered", CTEKitWarning)
        assert capsys.readouterr().err == ""
    with warnings.catch_warnings():
        plain_warnings()
        with pytest.warns(CTEKitWarning, match="recorded"):
            warnings.warn("recorded", CTEKitWarning)
