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
import json
import os
import re
import sys
import threading
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
FULL_CELL_TIMEOUT = 2400  # full mode trains models for minutes; on a loaded 2-core machine, for many
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


@pytest.mark.parametrize("path", _params())
def test_colab_cell_installs_only_where_the_kit_is_missing_from_its_own_repository(path):
    from cte_kit.teaching.links import repository_url

    first = next(c for c in _read(path).cells if c.cell_type == "code").source
    assert 'importlib.util.find_spec("cte_kit") is None' in first, \
        f"{path.name}: the Colab cell must skip the install when the kit is there (after Colab's restart)"
    assert f"git+{repository_url(ROOT)}" in first, f"{path.name}: the Colab cell installs from another repository"


def test_every_link_names_the_repository_of_the_package_metadata():
    from cte_kit.teaching.links import stale_links

    stale = stale_links(ROOT)
    assert not stale, ("links to another repository than pyproject.toml's [project.urls] Repository "
                       "(`python -m cte_kit.teaching.links --write` rewrites them):\n" + "\n".join(stale[:20]))


@pytest.mark.parametrize("path", _params())
def test_the_notebooks_FAST_governs_it(path):
    """fast_mode() is read once, into FAST, in the parameters cell; everything else follows FAST."""
    cells = [c for c in _read(path).cells if c.cell_type == "code"]
    readers = [i for i, c in enumerate(cells) if "fast_mode()" in c.source and "parameters" not in c.metadata.get("tags", ())]
    assert not readers, f"{path.name}: code cells {readers} read the environment (fast_mode()) instead of FAST"
    parameters = [c for c in cells if "parameters" in c.metadata.get("tags", ())]
    assert parameters and re.search(r"^FAST = ", parameters[0].source, re.M), f"{path.name}: no FAST in the parameters cell"


#: The docs that list the course, and the column of each that holds the fast-mode run time.
COURSE_DOCS = {"README.md": "fast", "notebooks/README.md": "fast", "notebooks/INSTRUCTORS.md": "fast (nbclient)"}
RUN_TIME = re.compile(r"^\d+(\.\d+)? (s|min)$")


def _course_table(text: str) -> tuple[list[str], dict[int, list[str]]]:
    """Header and rows (by notebook number) of the first Markdown table whose first column is '#'."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == "#":
            rows = {}
            for row in lines[start + 2:]:
                if not row.startswith("|"):
                    break
                values = [cell.strip() for cell in row.strip().strip("|").split("|")]
                rows[int(values[0])] = values
            return cells, rows
    return [], {}


def test_the_docs_list_every_notebook_with_its_measured_fast_time():
    times = {}
    for doc, column in COURSE_DOCS.items():
        header, rows = _course_table((ROOT / doc).read_text())
        assert column in header, f"{doc}: no '{column}' column in its notebook table"
        for path in NOTEBOOKS:
            number = int(path.name[:2])
            assert number in rows, f"{doc} does not list notebook {path.name}"
            row = rows[number]
            if doc != "notebooks/INSTRUCTORS.md":
                assert path.name in " ".join(row), f"{doc}: the row of notebook {number} does not link {path.name}"
            time = row[header.index(column)]
            assert RUN_TIME.match(time), f"{doc}: notebook {number} has no measured fast-mode time ({time!r})"
            times.setdefault(path.name, {})[doc] = time
        extra = sorted(set(rows) - {int(path.name[:2]) for path in NOTEBOOKS})
        assert not extra, f"{doc} lists notebooks that do not exist: {extra}"
    differ = {name: found for name, found in times.items() if len(set(found.values())) > 1}
    assert not differ, f"the docs give different fast-mode times: {differ}"


# -- claims: what the narration says a result shows ---------------------------------------------------
CLAIM_CALL = re.compile(r"\bclaim\(")


@pytest.mark.parametrize("path", _params())
def test_claim_cells_are_tagged_and_folded(path):
    cells = _read(path).cells
    for index, cell in enumerate(cells):
        tagged = "claim" in cell.metadata.get("tags", ())
        calls = cell.cell_type == "code" and CLAIM_CALL.search(cell.source) is not None
        if not (tagged or calls):
            continue
        assert tagged and calls, f"{path.name} cell {index}: a claim() call belongs in a cell tagged `claim`, and a " \
                                 "cell tagged `claim` calls claim()"
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, \
            f"{path.name} cell {index}: a claim cell is folded away (metadata jupyter.source_hidden = true)"


#: Numbers that read as results when written into prose: two decimals or more (0.81), a sign (+0.14,
#: -0.43), a percentage (19 %). Parameters are written as code (`dropout:0.2`) or maths ($p = 0.2$).
RESULT_NUMBER = re.compile(r"(?<![\w.:=@])[+\-\u2212]\d*\.?\d+(?![\w.])|(?<![\w.:=@])\d*\.\d{2,}(?![\w.])|"
                           r"(?<![\w.])\d+(?:\.\d+)? ?%")
#: What prose may quote although it looks like a result: the literature and the interval's level.
QUOTED = {
    "*": {"95 %": "the bootstrap interval's level"},
    "04_semantic_cte": {"0.83": "the paper's Table 1", "0.92": "the paper's Table 1", "0.80": "the paper's Table 1"},
    "05_instance_cte_stardist_cellpose": {"0.76": "the paper's Table 2", "0.80": "the paper's Table 2",
                                          "0.85": "the paper's Table 2"},
    "09_adapt_without_labels": {"15 %": "the SelfAdapt paper's ablation"},
}


def _prose(text: str) -> str:
    """Markdown without what is code or maths (code blocks, code spans, $...$, link targets)."""
    for pattern in (r"```.*?```", r"`[^`\n]*`", r"\$\$.*?\$\$", r"\$[^$\n]*\$", r"\]\([^)]*\)", r"<[^>\n]*>"):
        text = re.sub(pattern, " ", text, flags=re.S)
    return text


def _comments(code: str) -> str:
    return "\n".join(line.split("#", 1)[1] for line in code.splitlines() if "#" in line and not line.strip().startswith("%"))


@pytest.mark.parametrize("path", _params())
def test_prose_states_no_result_by_hand(path):
    """A number in the narration (or in a comment of the code) that reads as a result goes stale when data or
    defaults change: print it from the result, or check the sentence with a claim cell in words."""
    allowed = {**QUOTED["*"], **QUOTED.get(path.stem, {})}
    found = []
    for index, cell in enumerate(_read(path).cells):
        if cell.cell_type == "markdown":
            texts = [_prose(cell.source)] + [_comments(block) for match in SOLUTION.finditer(cell.source)
                                             for block in CODE_BLOCK.findall(match.group(1))]
        elif "claim" in cell.metadata.get("tags", ()):
            continue
        else:
            texts = [_comments(cell.source)]
        for text in texts:
            found += [(index, match.group(0).strip()) for match in RESULT_NUMBER.finditer(text)
                      if match.group(0).strip() not in allowed]
    assert not found, f"{path.name}: numbers written into the narration by hand (cell, number): {found}"


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


#: Fast-mode budgets (issue 20): each notebook within two minutes on the 2-core CI machine, the whole
#: course within ten, and the kernel with everything it starts (Dask workers) within Binder's 2 GB with
#: a margin. Time is the notebook's own: wall time less the time its kernel waited for a CPU that other
#: processes held (the kernel's run-queue wait), so a loaded machine does not fail it.
TIME_BUDGET = 120.0
COURSE_BUDGET = 600.0
#: Memory is held to two budgets, because resident memory mixes two kinds. Anonymous memory (the
#: arrays, models and Python objects; RssAnon + RssShmem) is what Binder's 2 GB cgroup cannot reclaim
#: and what gets a kernel killed: at most 1.0 GB, which leaves room for the Jupyter server and for the
#: libraries' code. The libraries' code pages (RssFile) are counted in the peak resident set too, but
#: how many of them are mapped depends on the page cache, not on the notebook: the same notebook with
#: the same packages peaked at 1.27 GB resident in a venv installed days earlier and at 1.55 GB in one
#: installed minutes before, with the same 0.66 GB anonymous (notebook 05: TensorFlow, torch and
#: Cellpose in one kernel). Those pages are clean and the cgroup reclaims them before it kills, so the
#: resident peak is held to Binder's 2 GB less the Jupyter server (~0.2 GB).
ANONYMOUS_BUDGET = 1.0e9
RESIDENT_BUDGET = 1.8e9
#: What each executed notebook measured, written to test-artifacts/notebook_budgets.json.
MEASURED: dict[str, dict] = {}
BUDGETS_FILE = ROOT / "test-artifacts" / "notebook_budgets.json"
ARTIFACTS = ROOT / "test-artifacts" / "executed"
#: Cells the test adds around a notebook (a tag, so that output checks leave them out).
INSTRUMENT = "cte-kit-test"
#: First added cell: every figure a cell leaves open (plt.show() under Agg) or shows with display()
#: (the widgets) is checked by cte_kit.reports.figure_check before it is closed.
_WATCH_FIGURES = """
from IPython import get_ipython as _get_ipython
from matplotlib.figure import Figure as _Figure
from cte_kit.reports.figure_check import figure_problems as _figure_problems

_CTE_KIT_FIGURES = []

def _cte_kit_check(figure, where):
    _CTE_KIT_FIGURES.extend(f"{where}: {problem}" for problem in _figure_problems(figure))

_CTE_KIT_GROWTH = {"resident": [], "anonymous": []}  # (MB a cell added to the peak; its first line)


def _cte_kit_memory():  # peak resident (VmHWM) and anonymous bytes now; {} where /proc does not give them
    try:
        status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
        return {"resident": int(status["VmHWM"].split()[0]) * 1024,
                "anonymous": (int(status["RssAnon"].split()[0]) + int(status["RssShmem"].split()[0])) * 1024}
    except (OSError, KeyError):
        return {}


_CTE_KIT_PEAK = _cte_kit_memory()  # the anonymous peak over cell ends (the sampler sees inside cells)


def _cte_kit_after_cell(result):
    import matplotlib.pyplot as plt
    where = "cell " + repr((result.info.raw_cell.strip().splitlines() or [""])[0][:60])
    for kind, value in _cte_kit_memory().items():
        before = _CTE_KIT_PEAK.get(kind, 0)
        _CTE_KIT_PEAK[kind] = max(before, value)
        _CTE_KIT_GROWTH[kind].append((round((_CTE_KIT_PEAK[kind] - before) / 2**20), where))
    for number in plt.get_fignums():
        _cte_kit_check(plt.figure(number), where)
        plt.close(number)

def _cte_kit_shown(figure, printer, cycle):
    _cte_kit_check(figure, "a figure shown with display()")
    printer.text(repr(figure))

_get_ipython().events.register("post_run_cell", _cte_kit_after_cell)
_get_ipython().display_formatter.formatters["text/plain"].for_type(_Figure, _cte_kit_shown)
"""
#: Last added cell: the kernel's own account (CPU, peak memory, run-queue wait) and the figure problems.
_REPORT = """
import json as _json, os as _os
def _cte_kit_report():
    schedstat = open("/proc/self/schedstat").read().split() if _os.path.exists("/proc/self/schedstat") else None
    times = _os.times()
    return {"cpu_s": times.user + times.system + times.children_user + times.children_system,
            "kernel_peak_bytes": _CTE_KIT_PEAK.get("resident"),
            "kernel_anonymous_bytes": _CTE_KIT_PEAK.get("anonymous"),
            "waited_s": int(schedstat[1]) / 1e9 if schedstat else None,
            "figure_problems": _CTE_KIT_FIGURES,
            "peak_growth": {kind: sorted(cells, reverse=True)[:4] for kind, cells in _CTE_KIT_GROWTH.items()}}
print("CTE_KIT_USAGE " + _json.dumps(_cte_kit_report()))
"""


class _Sampler(threading.Thread):
    """Peak memory of the kernel and every process it started, sampled while the notebook runs: the
    proportional set size (libraries shared by forked or spawned workers count once) and the anonymous
    memory (RssAnon + RssShmem of each process)."""

    def __init__(self, client, every: float = 0.25):
        super().__init__(daemon=True)
        self.client, self.every, self.peak, self.anonymous_peak = client, every, 0, 0
        self.done = threading.Event()

    def run(self):
        import psutil

        while not self.done.wait(self.every):
            pid = getattr(getattr(getattr(self.client, "km", None), "provisioner", None), "pid", None)
            if pid is None:
                continue
            try:
                kernel = psutil.Process(pid)
                processes = [kernel, *kernel.children(recursive=True)]
            except psutil.Error:
                continue
            total = anonymous = 0
            for process in processes:
                try:
                    total += process.memory_full_info().pss
                    anonymous += _anonymous_bytes(process.pid)
                except (psutil.Error, OSError):  # gone between the listing and the reading
                    continue
            self.peak = max(self.peak, total)
            self.anonymous_peak = max(self.anonymous_peak, anonymous)


def _anonymous_bytes(pid: int) -> int:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return sum(int(status[key].split()[0]) * 1024 for key in ("RssAnon", "RssShmem") if key in status)


def instrumented(notebook):
    """A copy with the exercise solutions as code cells and the test's own first and last cells."""
    copy = with_solutions(notebook)
    tag = {"tags": [INSTRUMENT]}
    copy.cells = [nbformat.v4.new_code_cell(_WATCH_FIGURES, metadata=tag), *copy.cells,
                  nbformat.v4.new_code_cell(_REPORT, metadata=tag)]
    return copy


def execute(path: Path, folder: Path, fast: bool) -> dict:
    """Run one notebook headless in a fresh kernel; what it printed and what it cost.

    Returns a dict: ``notebook`` (the executed copy), ``error`` (the CellExecutionError, or None),
    ``wall_s``, ``load`` (1-minute load average before and after) and the kernel's report
    (``cpu_s``, ``kernel_peak_bytes``, ``kernel_anonymous_bytes``, ``waited_s``, ``figure_problems``) with
    ``tree_peak_bytes`` and ``tree_anonymous_bytes``.
    """
    from nbclient.exceptions import CellExecutionError

    # The kernel inherits this environment: the mode, no display, this interpreter first on PATH
    # (the `python3` kernel spec runs `python`), one thread per library (CI runners share cores).
    environment = {"CTE_KIT_FAST": "1" if fast else "0", "MPLBACKEND": "Agg",
                   "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
                   "CTE_KIT_DATA_DIR": str(folder / "data")}
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        environment[variable] = os.environ.get(variable, "1")
    notebook = instrumented(_read(path))
    client = _client(notebook, timeout=CELL_TIMEOUT if fast else FULL_CELL_TIMEOUT, kernel_name="python3",
                     resources={"metadata": {"path": str(folder)}})
    sampler = _Sampler(client)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        load_before = os.getloadavg()[0]
        sampler.start()
        started = time.perf_counter()
        error = None
        try:
            client.execute()
        except CellExecutionError as failure:
            error = failure
        finally:
            wall = time.perf_counter() - started
            sampler.done.set()
            sampler.join()
    report = {}
    for output in notebook.cells[-1].get("outputs", ()):
        for line in output.get("text", "").splitlines():
            if line.startswith("CTE_KIT_USAGE "):
                report = json.loads(line.split(" ", 1)[1])
    return {"notebook": notebook, "error": error, "wall_s": wall, "load": (load_before, os.getloadavg()[0]),
            "tree_peak_bytes": sampler.peak, "tree_anonymous_bytes": sampler.anonymous_peak, **report}


@pytest.fixture(scope="module", params=_params())
def fast_run(request, tmp_path_factory):
    """Each notebook executed once in fast mode; the tests below read the one run."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    path = request.param
    missing = _missing_modules(path)
    if missing:
        pytest.skip(f"needs the adapters extra ({', '.join(missing)} not installed)")
    run = execute(path, tmp_path_factory.mktemp(path.stem), fast=True)
    run["path"] = path
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # the executed copy, to read what a failing check saw
    nbformat.write(run["notebook"], ARTIFACTS / path.name)
    if run["error"] is None and run.get("cpu_s") is not None:
        own = run["wall_s"] - (run["waited_s"] or 0.0)
        peak = max(run["tree_peak_bytes"], run["kernel_peak_bytes"] or 0)
        anonymous = max(run["tree_anonymous_bytes"], run["kernel_anonymous_bytes"] or 0)
        MEASURED[path.name] = {"wall_s": round(run["wall_s"], 1), "own_s": round(own, 1),
                               "cpu_s": round(run["cpu_s"], 1), "peak_mb": round(peak / 1e6),
                               "anonymous_mb": round(anonymous / 1e6),
                               "kernel_peak_mb": round((run["kernel_peak_bytes"] or 0) / 1e6),
                               "peak_growth_mb": run.get("peak_growth", {}),
                               "load": [round(value, 1) for value in run["load"]]}
        BUDGETS_FILE.write_text(json.dumps(MEASURED, indent=1))
        print(f"{path.name}: {MEASURED[path.name]}")
    return run


def _outputs(run, name: str | None = None):
    """(cell source, output) of the notebook's own cells (not the test's)."""
    for cell in run["notebook"].cells:
        if cell.cell_type != "code" or INSTRUMENT in cell.metadata.get("tags", ()):
            continue
        for output in cell.get("outputs", ()):
            if name is None or output.get("name") == name:
                yield cell.source, output


@pytest.mark.notebooks
def test_notebook_executes_in_fast_mode(fast_run):
    """Every cell runs, claims included: a claim that became false names its sentence here."""
    if fast_run["error"] is not None:
        pytest.fail(f"{fast_run['path'].name}: {str(fast_run['error'])[-3000:]}", pytrace=False)
    notebook = fast_run["notebook"]
    executed = sum(1 for cell in notebook.cells if cell.cell_type == "code" and cell.execution_count is not None)
    assert executed == sum(1 for cell in notebook.cells if cell.cell_type == "code")
    assert not list(NOTEBOOK_DIR.glob("**/*.csv")), "a notebook wrote results into the repository"


def _measured(run) -> dict:
    if run["error"] is not None or run["path"].name not in MEASURED:
        pytest.skip("the notebook did not run to its end (see test_notebook_executes_in_fast_mode)")
    return MEASURED[run["path"].name]


@pytest.mark.notebooks
def test_notebook_fits_its_time_and_memory_budget(fast_run):
    measured = _measured(fast_run)
    name = fast_run["path"].name
    assert measured["own_s"] <= TIME_BUDGET, (
        f"{name} took {measured['own_s']:.0f} s of its own in fast mode ({measured['wall_s']:.0f} s wall time, "
        f"load {measured['load']}); the budget is {TIME_BUDGET:.0f} s")
    growth = measured["peak_growth_mb"]
    assert measured["anonymous_mb"] * 1e6 <= ANONYMOUS_BUDGET, (
        f"{name}: the kernel and its workers held {measured['anonymous_mb']} MB of anonymous memory (arrays, models, "
        f"objects) at their peak in fast mode; the budget is {ANONYMOUS_BUDGET / 1e6:.0f} MB (Binder gives 2 GB); "
        f"the cells that raised it most (MB): {growth.get('anonymous')}")
    assert measured["peak_mb"] * 1e6 <= RESIDENT_BUDGET, (
        f"{name}: the kernel and its workers peaked at {measured['peak_mb']} MB resident in fast mode (libraries' code "
        f"included); the budget is {RESIDENT_BUDGET / 1e6:.0f} MB (Binder gives 2 GB); the cells that raised the "
        f"kernel's peak most (MB): {growth.get('resident')}")


@pytest.mark.notebooks
def test_notebook_figures_can_be_read(fast_run):
    if fast_run["error"] is not None or "figure_problems" not in fast_run:
        pytest.skip("the notebook did not run to its end")
    problems = fast_run["figure_problems"]
    assert not problems, f"{fast_run['path'].name}: " + "; ".join(problems[:12]) + \
        (f"; and {len(problems) - 12} more" if len(problems) > 12 else "")


#: Text tables are read in a notebook's output area and in a terminal: 100 columns at most. A line is a
#: table's when columns separate it (two spaces or more inside the line) or it is a rule; prose wraps.
WIDTH = 100
TABLE_ROW = re.compile(r"\S {2,}\S|^-{5,}")
#: Lines that frameworks print and a student cannot act on: absl / TensorFlow C++ logging, and
#: Python warnings printed with the file and line that issued them.
NOISE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|All log messages before absl|\w\.py:\d+: \w*Warning|"
                   r"\w\.py \(\d+\): ", re.M)


@pytest.mark.notebooks
def test_notebook_output_fits_the_width_and_carries_no_framework_noise(fast_run):
    wide = [(source.splitlines()[0][:50] if source else "", line) for source, output in _outputs(fast_run, "stdout")
            for line in output.get("text", "").splitlines() if len(line) > WIDTH and TABLE_ROW.search(line)]
    assert not wide, f"{fast_run['path'].name}: table lines wider than {WIDTH} columns (show the table as a DataFrame " \
                     f"or narrow it): " + "; ".join(f"{cell!r}: {line[:120]!r}" for cell, line in wide[:5])
    noise = [(source.splitlines()[0][:50] if source else "", match.group(0))
             for source, output in _outputs(fast_run, "stderr") for match in NOISE.finditer(output.get("text", ""))]
    assert not noise, f"{fast_run['path'].name}: framework log lines or located warnings in the output: {noise[:5]}"


@pytest.mark.notebooks
def test_the_whole_course_fits_its_budget():
    """After every notebook ran: the fast course in ten minutes of the notebooks' own time."""
    if len(MEASURED) < len(NOTEBOOKS):
        pytest.skip(f"{len(NOTEBOOKS) - len(MEASURED)} notebook(s) not measured in this run")
    total = sum(m["own_s"] for m in MEASURED.values())
    assert total <= COURSE_BUDGET, f"the fast course took {total:.0f} s of its own; the budget is {COURSE_BUDGET:.0f} s"


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("path", _params())
def test_notebook_claims_hold_in_full_mode(path, tmp_path):
    """The same notebooks with FAST = False: every claim cell checks its sentence on the full data."""
    pytest.importorskip("nbclient")
    missing = _missing_modules(path)
    if missing:
        pytest.skip(f"needs the adapters extra ({', '.join(missing)} not installed)")
    run = execute(path, tmp_path, fast=False)
    if run["error"] is not None:
        pytest.fail(f"{path.name} in full mode: {str(run['error'])[-3000:]}", pytrace=False)
    print(f"{path.name} in full mode: {run['wall_s']:.0f} s wall, {run['wall_s'] - (run.get('waited_s') or 0):.0f} s "
          f"of its own, peak {max(run['tree_peak_bytes'], run.get('kernel_peak_bytes') or 0) / 1e6:.0f} MB resident, "
          f"{max(run['tree_anonymous_bytes'], run.get('kernel_anonymous_bytes') or 0) / 1e6:.0f} MB anonymous")


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


@pytest.mark.parametrize("environment, notebook, expected", [("0", True, True), ("1", False, False), ("1", None, True),
                                                            ("0", None, False)])
def test_the_notebooks_FAST_wins_over_the_environment(monkeypatch, environment, notebook, expected):
    """A student who types FAST = True into the parameters cell gets fast mode everywhere, whatever CTE_KIT_FAST says."""
    from IPython.core.interactiveshell import InteractiveShell

    from cte_kit.teaching.notebook_env import environment_summary, notebook_fast, pick

    monkeypatch.setenv("CTE_KIT_FAST", environment)
    shell = InteractiveShell.instance()
    try:
        if notebook is not None:
            shell.user_ns["FAST"] = notebook
        assert notebook_fast() is expected
        assert pick(fast="small", full="large") == ("small" if expected else "large")
        assert ("fast mode" in environment_summary()) is expected
        shell.user_ns["FAST"] = "yes"
        with pytest.raises(TypeError, match="FAST"):
            pick(fast=1, full=2)
    finally:
        shell.user_ns.pop("FAST", None)
        InteractiveShell.clear_instance()


def test_dashboard_link_goes_through_the_hub_proxy_on_binder(monkeypatch):
    from cte_kit.teaching.notebook_env import dashboard_url

    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    assert dashboard_url("http://127.0.0.1:40123/status") == "http://127.0.0.1:40123/status"
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/someone-abc/")
    assert dashboard_url("http://127.0.0.1:40123/status") == "/user/someone-abc/proxy/40123/status"


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
