"""Small helpers for the teaching notebooks: fast mode, where the kernel runs, a status line.

**Fast mode** shrinks data, banks and sweeps so that every notebook runs headless in CI (and on
Binder's 2 GB machines) in a minute or two. It is on when the environment variable
``CTE_KIT_FAST`` is ``1`` (also ``true``, ``yes``, ``on``); a notebook reads it once, in its cell
tagged ``parameters``, into the variable ``FAST``, and chooses its sizes with :func:`pick`::

    from cte_kit.teaching.notebook_env import fast_mode, pick
    FAST = fast_mode()          # the parameters cell: a student or papermill may set FAST = True here
    N_IMAGES = pick(fast=4, full=16)

From then on the notebook's ``FAST`` governs: :func:`pick` and :func:`environment_summary` read it
from the kernel's namespace (:func:`notebook_fast`), so ``FAST = True`` typed into the parameters
cell shrinks everything even when ``CTE_KIT_FAST`` is not set, and ``FAST = False`` wins over it.

Containers (Binder, CI runners) often report the host's CPU count while granting one or two
CPUs; PyTorch then starts one thread per host CPU and runs many times slower than with one.
:func:`limit_threads` caps torch at the CPUs the process may really use.

Python prints a warning after the file and line that issued it; in a notebook that is the kernel's
temporary file for the cell (``/tmp/ipykernel_.../1235145437.py:9: UserWarning: ...``), which tells
a student nothing. :func:`plain_warnings` prints the kit's own warnings
(:class:`cte_kit.CTEKitWarning`) as the sentences they are; the command line uses it too.

Notebooks are committed without outputs (a test checks it); strip them with
``python -m cte_kit.teaching.notebook_env strip notebooks/*.ipynb`` (:func:`strip_outputs`).

Importing this module imports neither torch, TensorFlow nor ipywidgets.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import TypeVar

import numpy as np

__all__ = ["FAST_ENV", "dashboard_url", "fast_mode", "notebook_fast", "pick", "quiet_frameworks", "show_dashboard", "on_colab", "on_binder", "available_cpus", "limit_threads",
           "environment_summary", "plain_warnings", "strip_outputs"]

#: Environment variable that switches the notebooks to fast mode.
FAST_ENV = "CTE_KIT_FAST"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

T = TypeVar("T")


def fast_mode(default: bool = False) -> bool:
    """True when ``CTE_KIT_FAST`` asks for the small, quick version of a notebook.

    Parameters
    ----------
    default : bool
        The answer when the variable is not set.

    Raises
    ------
    ValueError
        The variable holds something other than 1/0, true/false, yes/no, on/off.
    """
    value = os.environ.get(FAST_ENV)
    if value is None:
        return default
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{FAST_ENV}={os.environ[FAST_ENV]!r}: use 1 (fast) or 0 (full)")


def notebook_fast() -> bool:
    """The running notebook's ``FAST`` variable when it has one, else :func:`fast_mode`.

    The variable is the one the cell tagged ``parameters`` sets (``FAST = fast_mode()``, or ``FAST =
    True`` typed by a student, or papermill's ``-p FAST True``). Outside an IPython kernel, or
    before that cell ran, the environment decides.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # IPython is a dependency of ipywidgets, but the kit's core does not need it
        return fast_mode()
    shell = get_ipython()
    value = shell.user_ns.get("FAST") if shell is not None else None
    if value is None:
        return fast_mode()
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"FAST = {value!r} in the notebook: set it to True (fast mode) or False (full mode)")
    return bool(value)


def pick(fast: T, full: T, is_fast: bool | None = None) -> T:
    """``fast`` in fast mode, ``full`` otherwise.

    Fast mode is ``is_fast`` when given, else the notebook's ``FAST`` (:func:`notebook_fast`), else
    the ``CTE_KIT_FAST`` environment variable.
    """
    return fast if (notebook_fast() if is_fast is None else is_fast) else full


def on_colab() -> bool:
    """True inside Google Colab (it sets ``COLAB_RELEASE_TAG`` in every kernel)."""
    return "COLAB_RELEASE_TAG" in os.environ


def on_binder() -> bool:
    """True on a mybinder.org / BinderHub session (it sets ``BINDER_LAUNCH_HOST``)."""
    return "BINDER_LAUNCH_HOST" in os.environ or "BINDER_REQUEST" in os.environ


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota if one is set."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        count = os.cpu_count() or 1
    for path, parse in (("/sys/fs/cgroup/cpu.max", _cgroup2_quota), ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", _cgroup1_quota)):
        try:
            with open(path) as handle:
                quota = parse(handle.read(), path)
        except (OSError, ValueError):
            continue
        if quota is not None:
            count = min(count, max(1, int(quota + 0.5)))
        break
    return max(1, count)


def _cgroup2_quota(text: str, _path: str) -> float | None:
    quota, _, period = text.strip().partition(" ")
    return None if quota == "max" else int(quota) / int(period or 100000)


def _cgroup1_quota(text: str, path: str) -> float | None:
    quota = int(text.strip())
    if quota <= 0:
        return None
    with open(path.replace("cfs_quota_us", "cfs_period_us")) as handle:
        return quota / int(handle.read().strip())


def limit_threads(max_threads: int | None = None) -> int:
    """Cap PyTorch's intra-op threads at :func:`available_cpus` (or ``max_threads``); returns the count.

    Only lowers the count (never raises one set by ``OMP_NUM_THREADS`` or by you).
    """
    import torch

    wanted = available_cpus() if max_threads is None else max(1, int(max_threads))
    threads = min(torch.get_num_threads(), wanted)
    torch.set_num_threads(threads)
    return threads


def dashboard_url(link: str) -> str:
    """The Dask dashboard's address as the student's browser can reach it.

    Dask gives ``http://127.0.0.1:PORT/status``: right where the browser runs on the same machine
    as the kernel. On a JupyterHub such as Binder the kernel runs elsewhere; the hub sets
    ``JUPYTERHUB_SERVICE_PREFIX`` and ``jupyter-server-proxy`` (in ``binder/environment.yml``)
    forwards ``<prefix>proxy/PORT/`` to the kernel's machine, so that is the address.
    """
    from urllib.parse import urlsplit

    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if not prefix:
        return link
    parts = urlsplit(link)
    return f"{prefix.rstrip('/')}/proxy/{parts.port}{parts.path or '/status'}"


def show_dashboard(link: str) -> None:
    """A clickable link to the Dask dashboard (:func:`dashboard_url`), opening in a new browser tab."""
    from html import escape

    from IPython.display import HTML, display

    url = dashboard_url(link)
    display(HTML(f'Dask dashboard: <a href="{escape(url)}" target="_blank">{escape(url)}</a> '
                 "(opens in a new tab; it shows the workers while they compute)"))


def environment_summary(fast: bool | None = None) -> str:
    """One line: mode (``fast`` overrides :func:`notebook_fast`), where the kernel runs, versions, CPUs."""
    from .. import __version__

    fast = notebook_fast() if fast is None else fast
    where = "Colab" if on_colab() else "Binder" if on_binder() else "local"
    mode = "fast mode (small data)" if fast else f"full mode (set {FAST_ENV}=1 for a quick run)"
    return (f"cte_kit {__version__} | {mode} | {where} | Python {platform.python_version()} | "
            f"{available_cpus()} CPU(s) | {sys.platform}")


#: Lines TensorFlow would print on import and on first use (oneDNN notices, CPU-feature advice, absl's
#: "before InitializeLog" note): read before TensorFlow is imported, so set first.
_QUIET_TENSORFLOW = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}


def quiet_frameworks() -> None:
    """Silence what TensorFlow, absl and PyTorch print that a student can do nothing about.

    Call it before StarDist (TensorFlow) is imported: it sets ``TF_CPP_MIN_LOG_LEVEL=3`` and
    ``TF_ENABLE_ONEDNN_OPTS=0`` where you have not set them (oneDNN's notices are printed even at
    the quietest log level; without oneDNN, TensorFlow's CPU results differ from the default only
    in the last bits), lowers absl's Python logging to errors, and hides PyTorch's notice about
    sparse invariant checks that Cellpose's mask dynamics trigger. The kit's own warnings and
    every other warning still show.
    """
    import logging
    import warnings

    for name, value in _QUIET_TENSORFLOW.items():
        os.environ.setdefault(name, value)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def plain_warnings() -> None:
    """Print the kit's warnings as ``Warning: <sentence>``, without the file and line that issued them.

    Only :class:`cte_kit.CTEKitWarning` and its subclasses change; every other warning keeps its
    format. Filters (``warnings.simplefilter("ignore", CTEKitWarning)``) and recording
    (``warnings.catch_warnings(record=True)``, ``pytest.warns``) work as before: the kit's warnings
    still go through the ``showwarning`` that was in place, only formatted as sentences. Calling it
    again changes nothing.
    """
    import warnings

    from ..types import CTEKitWarning

    previous = warnings.showwarning
    if getattr(previous, "plain_for", None) is CTEKitWarning:
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, CTEKitWarning):
            previous(message, category, filename, lineno, file, line)
            return
        # swapped in per warning, not once: StarDist replaces warnings.formatwarning when it is imported
        formatter = warnings.formatwarning
        warnings.formatwarning = _as_sentence
        try:
            previous(message, category, filename, lineno, file, line)
        finally:
            warnings.formatwarning = formatter

    showwarning.plain_for = CTEKitWarning
    warnings.showwarning = showwarning


def _as_sentence(message, category, filename, lineno, line=None) -> str:
    return f"Warning: {message}\n"


def strip_outputs(path) -> bool:
    """Remove outputs, execution counts and saved widget state from one notebook, in place.

    Returns
    -------
    bool
        True when the file changed.
    """
    import nbformat

    notebook = nbformat.read(str(path), as_version=4)
    before = nbformat.writes(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in ("execution", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    notebook.metadata.pop("widgets", None)
    after = nbformat.writes(notebook)
    if after != before:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(after)
    return after != before


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cte_kit.teaching.notebook_env", description="Notebook housekeeping.")
    commands = parser.add_subparsers(dest="command", required=True)
    strip = commands.add_parser("strip", help="remove outputs, execution counts and widget state in place")
    strip.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    for path in args.paths:
        print(f"{path}: {'stripped' if strip_outputs(path) else 'already clean'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
