"""The notebooks as a workshop student meets them: JupyterLab in a real (headless Chromium) browser.

Every ``notebooks/NN_*.ipynb`` (solutions of its exercises pasted in as code cells, as in
``test_notebooks.py``) is opened in JupyterLab and run with *Run All* in fast mode
(``CTE_KIT_FAST=1`` in the server's environment). Checks: no cell raises; every widget renders as
a control (no "Error displaying widget", no ``IntSlider(...)``-style text fallback); in notebook 03,
moving a slider of the perturbation explorer changes the consistency it shows. On failure a
screenshot and the page text land in ``test-artifacts/`` (a CI artefact, ignored by git).

Chromium and its driver come from Debian (``chromium``, ``chromium-driver``); when they are absent
the test installs them with apt-get (as root), and skips with the reason where it cannot.
JupyterLab listens on a free loopback port with a random token. Marker ``browser``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_notebooks import NOTEBOOKS, _missing_modules, _read, with_solutions

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
NOTEBOOK_TIMEOUT = 900  # seconds for Run All of one notebook (fast mode takes 5 s to about 5 min on 2 cores)
#: Text that a widget shows when it did not render as a control (repr fallback or a failed view).
NOT_RENDERED = ("Error displaying widget", "IntSlider(", "FloatSlider(", "VBox(children", "HBox(children",
                "Dropdown(", "FloatProgress(")
#: Settings of the JupyterLab user (a fresh folder): every cell in the page (not only those in view),
#: and no news or update prompt over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                       "checkForUpdates": False},
}
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")


def _install_chromium() -> str | None:
    """Install Debian's chromium and chromium-driver if absent; the reason when that is not possible."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return None
    if shutil.which("apt-get") is None:
        return "chromium is not installed and there is no apt-get to install it (Debian/Ubuntu only)"
    if os.geteuid() != 0:
        return "chromium is not installed; run `apt-get install chromium chromium-driver` as root"
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium",
                                            "chromium-driver"]):
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed: {done.stderr.strip()[-300:]}"
    return None if CHROMIUM.exists() and CHROMEDRIVER.exists() else "apt-get installed no /usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving copies of the notebooks, in fast mode: (url, token, folder)."""
    pytest.importorskip("jupyterlab")
    root = tmp_path_factory.mktemp("lab")
    folder, settings = root / "notebooks", root / "settings"
    folder.mkdir()
    for path in NOTEBOOKS:  # copies: JupyterLab saves outputs into the files it runs
        _write(with_solutions(_read(path)), folder / path.name)
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    environment = dict(os.environ, CTE_KIT_FAST="1", CTE_KIT_DATA_DIR=str(root / "data"),
                       JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"),
                       JUPYTER_RUNTIME_DIR=str(root / "runtime"),
                       PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    environment.pop("MPLBACKEND", None)  # the notebooks draw inline, as for a student
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        environment.setdefault(variable, "1")
    log = (root / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(root / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, token, folder
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _write(notebook, path: Path) -> None:
    import nbformat

    nbformat.write(notebook, str(path))


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (test extra)")
    reason = _install_chromium()
    if reason:
        pytest.skip(f"no headless Chromium: {reason}")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"cte_kit_chromium_{secrets.token_hex(4)}"
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# JavaScript run in the page (JupyterLab exposes its application as window.jupyterapp with the
# expose_app_in_browser option): the state of the current notebook, from its model.
_STATE = """
const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!panel || !panel.content || !panel.content.model || !panel.sessionContext) { return null; }
const cells = [];
for (const cell of panel.content.model.cells) {
  if (cell.type !== 'code') { continue; }
  cells.push({count: cell.executionCount,
              errors: cell.outputs.toJSON().filter(o => o.output_type === 'error')
                                           .map(o => o.ename + ': ' + o.evalue)});
}
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
return {ready: panel.context.isReady, kernel: kernel ? kernel.status : null, cells: cells,
        busy: document.querySelectorAll('.jp-InputPrompt').length
              ? Array.from(document.querySelectorAll('.jp-InputPrompt')).some(p => p.textContent.includes('*'))
              : true};
"""
_RUN_ALL = "window.jupyterapp.commands.execute('notebook:run-all-cells');"
_CLOSE = """
const done = arguments[arguments.length - 1];
const panel = window.jupyterapp.shell.currentWidget;
panel.sessionContext.shutdown().then(() => { panel.dispose(); done(true); }, () => done(false));
"""


def _wait(driver, predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _evidence(driver, name: str) -> str:
    """Screenshot and page text of a failure under test-artifacts/; returns where they are."""
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    (ARTIFACTS / f"{name}.txt").write_text(driver.find_element("tag name", "body").text)
    return f"screenshot and page text in {ARTIFACTS.relative_to(ROOT)}/{name}.*"


def _open_and_run(driver, url: str, token: str, name: str) -> dict:
    driver.get(f"{url}/lab/workspaces/{name.split('_')[0]}/tree/{name}?reset&token={token}")
    _wait(driver, lambda: (driver.execute_script(_STATE) or {}).get("kernel") == "idle", 180,
          "the notebook to open with an idle kernel")
    driver.execute_script(_RUN_ALL)
    state = _wait(driver, lambda: _finished(driver.execute_script(_STATE)), NOTEBOOK_TIMEOUT,
                  "Run All to finish (every code cell executed, kernel idle)")
    return state


def _finished(state):
    if not state or state["kernel"] != "idle" or state["busy"]:
        return None
    if any(cell["errors"] for cell in state["cells"]):
        return state  # Run All stops at the first error
    return state if all(cell["count"] is not None for cell in state["cells"]) else None


def _widget_problems(driver) -> list[str]:
    """Widget outputs that are not controls, and text fallbacks anywhere in the notebook."""
    problems = driver.execute_script("""
        const bad = [];
        for (const output of document.querySelectorAll(
                '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.widget-view+json"]')) {
          if (!output.querySelector('.jupyter-widgets, .widget-box, .widget-inline-hbox, .jp-RenderedHTMLCommon')) {
            bad.push('a widget output without a control: ' + output.textContent.slice(0, 120));
          }
        }
        return bad;""")
    text = driver.execute_script("""
        return Array.from(document.querySelectorAll('.jp-OutputArea')).map(area => area.innerText).join('\\n');""")
    problems += [f"{marker!r} shown in an output" for marker in NOT_RENDERED if marker in text]
    return problems


def _hard_consistency(driver) -> float | None:
    """The input row's hard consistency shown by the first perturbation explorer of the page."""
    import re

    text = driver.execute_script("""
        for (const node of document.querySelectorAll('.widget-html-content')) {
          if (node.textContent.includes('hard consistency (IoU)')) { return node.textContent; }
        }
        return null;""")
    found = re.search(r"hard consistency \(IoU\) ([0-9.]+)", text or "")
    return float(found.group(1)) if found else None


def _move_first_slider(driver) -> None:
    """Press the right arrow key on the first slider handle of the explorer (noise: +0.01 per press, to 0.2)."""
    from selenium.webdriver.common.keys import Keys

    handle = driver.execute_script("""
        for (const node of document.querySelectorAll('.widget-html-content')) {
          if (!node.textContent.includes('hard consistency (IoU)')) { continue; }
          let box = node.closest('.widget-vbox');
          while (box && !box.querySelector('.noUi-handle')) { box = box.parentElement.closest('.widget-vbox'); }
          if (box) { const handle = box.querySelector('.noUi-handle'); handle.scrollIntoView(); return handle; }
        }
        return null;""")
    assert handle is not None, "no slider handle next to the explorer's consistency readout"
    handle.click()
    for _ in range(20):
        handle.send_keys(Keys.ARROW_RIGHT)


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(path, browser, lab):  # no server when there is no browser
    missing = _missing_modules(path)
    if missing:
        pytest.skip(f"needs the adapters extra ({', '.join(missing)} not installed)")
    url, token, _folder = lab
    started = time.perf_counter()
    try:
        state = _open_and_run(browser, url, token, path.name)
        errors = [error for cell in state["cells"] for error in cell["errors"]]
        assert not errors, f"{path.name}: a cell raised: {errors}"
        problems = _widget_problems(browser)
        assert not problems, f"{path.name}: {problems}"
        if path.name.startswith("03_"):
            before = _hard_consistency(browser)
            assert before is not None, "notebook 03 shows no consistency readout"
            _move_first_slider(browser)
            after = _wait(browser, lambda: (lambda now: now if now is not None and now != before else None)(
                _hard_consistency(browser)), 120, "the hard consistency shown to change after moving the noise slider")
            print(f"noise slider moved: hard consistency {before:.3f} -> {after:.3f}")
    except AssertionError as failure:
        raise AssertionError(f"{failure} ({_evidence(browser, path.stem)})") from None
    finally:
        if browser.execute_script("return !!(window.jupyterapp && window.jupyterapp.shell.currentWidget);"):
            browser.execute_async_script(_CLOSE)
    print(f"{path.name}: {time.perf_counter() - started:.0f} s in JupyterLab")


def test_quality_report_shows_every_image(browser, tmp_path):
    """The quality-control report, opened from a file in the browser (offline: everything is embedded)."""
    from test_reports_quality import make_report

    _, report = make_report(tmp_path, worst=2)
    browser.get(report.as_uri())
    state = _wait(browser, lambda: browser.execute_script("""
        const images = Array.from(document.images);
        if (!images.length || images.some(image => !image.complete)) { return null; }
        return images.map(image => [image.alt, image.naturalWidth, image.naturalHeight]);"""), 60,
                  "the report's images to load")
    try:
        assert len(state) == 3, f"expected the histograms and 2 images, found {state}"
        assert all(width > 0 and height > 0 for _, width, height in state), f"images not shown: {state}"
        assert "Can I trust this segmentation?" in browser.title or "Quality control" in browser.title
    except AssertionError as failure:
        raise AssertionError(f"{failure} ({_evidence(browser, 'quality_report')})") from None
