"""Small helpers for the teaching notebooks: fast mode, where the kernel runs, a status line.

**Fast mode** shrinks data, banks and sweeps so that every notebook runs headless in CI (and on
Binder's 2 GB machines) in a minute or two. It is on when the environment variable
``CTE_KIT_FAST`` is ``1`` (also ``true``, ``yes``, ``on``); a notebook reads it in its first code
cell and chooses its sizes with :func:`pick`::

    from cte_kit.notebook_env import fast_mode, pick
    FAST = fast_mode()
    N_IMAGES = pick(fast=4, full=16)

Nothing here imports torch, TensorFlow or ipywidgets.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import TypeVar

__all__ = ["FAST_ENV", "fast_mode", "pick", "on_colab", "on_binder", "environment_summary"]

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


def pick(fast: T, full: T, is_fast: bool | None = None) -> T:
    """``fast`` in fast mode, ``full`` otherwise (``is_fast`` overrides the environment)."""
    return fast if (fast_mode() if is_fast is None else is_fast) else full


def on_colab() -> bool:
    """True inside Google Colab (it sets ``COLAB_RELEASE_TAG`` in every kernel)."""
    return "COLAB_RELEASE_TAG" in os.environ


def on_binder() -> bool:
    """True on a mybinder.org / BinderHub session (it sets ``BINDER_LAUNCH_HOST``)."""
    return "BINDER_LAUNCH_HOST" in os.environ or "BINDER_REQUEST" in os.environ


def environment_summary() -> str:
    """One line: mode, where the kernel runs, Python and kit version, CPU count."""
    from . import __version__

    where = "Colab" if on_colab() else "Binder" if on_binder() else "local"
    mode = f"fast mode ({FAST_ENV}=1)" if fast_mode() else f"full mode (set {FAST_ENV}=1 for a quick run)"
    return (f"cte_kit {__version__} | {mode} | {where} | Python {platform.python_version()} | "
            f"{os.cpu_count()} CPU(s) | {sys.platform}")
