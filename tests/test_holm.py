"""Holm–Bonferroni over the verdict's detectors (shiftwatch/detection/holm.py)."""

import pytest

from shiftwatch import ShiftwatchError
from shiftwatch.detection.holm import holm


def test_holm_textbook_example():
    # Wikipedia, "Holm–Bonferroni method": p = 0.01, 0.04, 0.03, 0.005 at alpha 0.05 rejects
    # H1 and H4 only; adjusted p-values 0.03, 0.06, 0.06, 0.02.
    result = holm({"H1": 0.01, "H2": 0.04, "H3": 0.03, "H4": 0.005, "kl": None}, alpha=0.05)
    assert result.reject
    assert set(result.rejected) == {"H1", "H4"}
    assert result.adjusted == pytest.approx({"H1": 0.03, "H2": 0.06, "H3": 0.06, "H4": 0.02})


def test_holm_edge_cases():
    assert holm({"a": 0.5, "b": 0.9}).reject is False
    assert holm({"a": 0.8}).adjusted == {"a": 0.8}
    assert holm({"a": 0.025, "b": 0.5}, alpha=0.05).reject is False  # adjusted 0.05: strict <
    assert holm({"a": 0.6, "b": 0.9}).adjusted == {"a": 1.0, "b": 1.0}  # capped, monotone
    empty = holm({"kl": None})
    assert empty.reject is False and empty.adjusted == {}
    with pytest.raises(ShiftwatchError, match="'a'"):
        holm({"a": float("nan")})
    with pytest.raises(ShiftwatchError, match="alpha"):
        holm({"a": 0.1}, alpha=0)
