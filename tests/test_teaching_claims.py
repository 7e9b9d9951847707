"""The narration's claims: a true claim passes silently, a false or unknowable one names its sentence."""

import numpy as np
import pytest

from cte_kit.teaching.claims import ClaimError, claim


def test_a_supported_claim_passes_silently(capsys):
    claim("two is more than one", 2 > 1)
    claim("numpy comparisons count", np.float64(0.8) > np.float64(0.6))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("holds", [False, np.bool_(False), float("nan"), None, np.array([True, True]), 1])
def test_anything_not_plainly_true_fails_and_quotes_the_sentence(holds):
    with pytest.raises(ClaimError, match="the real target is the hardest"):
        claim("the real target is the hardest", holds, evidence="Kendall +0.81 vs +0.62")


def test_the_evidence_is_quoted_and_an_empty_sentence_is_refused():
    with pytest.raises(ClaimError, match=r"\(Kendall \+0.81 vs \+0.62\)"):
        claim("x", False, evidence="Kendall +0.81 vs +0.62")
    with pytest.raises(ValueError):
        claim("  ", True)
