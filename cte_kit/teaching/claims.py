"""What a notebook's narration says a result shows, checked where the result is computed.

A sentence such as "the real target gets the higher Kendall" is true for today's defaults and data
and may become false tomorrow. Each such sentence is either printed from the result, or followed
by a code cell tagged ``claim`` (folded away in the rendered notebook: cell metadata
``{"tags": ["claim"], "jupyter": {"source_hidden": true}}``) that states it again and checks it::

    claim("the real DSB2018 tiles get the higher Kendall", tau["dsb2018_real"] > tau["synthetic_target"])

When the check fails, the notebook stops at that cell and the error quotes the sentence, so CI
says which sentence of the course became false. ``tests/test_notebooks.py`` runs every claim on
each ``make test`` (fast mode) and with ``--runslow`` in full mode too, checks that claim cells are
tagged and folded, and refuses numbers in the prose (or in code comments) that read as results:
a number a sentence needs is printed by the code from the result instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ClaimError", "claim"]


class ClaimError(AssertionError):
    """A sentence of the narration that the notebook's own result contradicts."""


def claim(statement: str, holds, evidence: str = "") -> None:
    """Check that ``statement``, as the narration words it, holds for the result just computed.

    Parameters
    ----------
    statement : str
        The sentence of the narration, quoted or closely paraphrased, so that a failure names it.
    holds : bool or numpy bool
        Whether the result supports it. Anything that is not plainly true (False, NaN, None, an
        array) fails: a claim about a number that could not be computed is not supported.
    evidence : str, optional
        The values the check read, quoted in the error.

    Raises
    ------
    ClaimError
        When ``holds`` is not true.
    """
    if not isinstance(statement, str) or not statement.strip():
        raise ValueError("a claim needs the sentence it checks")
    supported = isinstance(holds, (bool, np.bool_)) and bool(holds)
    if not supported:
        detail = f" ({evidence})" if evidence else ""
        raise ClaimError(f"The narration says: {statement!r}, but the result does not show it{detail}. "
                         "Reword the sentence or print it from the result.")
