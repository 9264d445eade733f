"""`holm`: Holm–Bonferroni over several detectors' p-values into one verdict, and the check
that a permutation test can alarm at all under it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shiftwatch import ShiftwatchError


@dataclass(frozen=True)
class HolmResult:
    """Holm–Bonferroni verdict: `reject` (any detector alarms), Holm-adjusted p-values by
    detector name, and the names rejected at the level used."""

    reject: bool
    adjusted: dict[str, float]
    rejected: tuple[str, ...]


def check_permutations_for_holm(permutations: int, detectors: int, alpha: float, setting: str) -> None:
    """A permutation p-value is at least 1/(B + 1): under Holm over k detectors it can raise an
    alarm on its own only if 1/(B + 1) < alpha / k. Raise, naming `setting`, if it cannot."""
    if 1 / (permutations + 1) >= alpha / detectors:
        raise ShiftwatchError(
            f"{setting} = {permutations}: the smallest permutation p-value "
            f"1/{permutations + 1} cannot fall below alpha/{detectors} = "
            f"{alpha / detectors:.4f} (Holm over {detectors} detectors); use at "
            f"least {int(np.floor(detectors / alpha))}"
        )


def holm(pvalues: Mapping[str, float | None], alpha: float = 0.05) -> HolmResult:
    """Holm's step-down procedure over several detectors' p-values (family-wise error ≤ alpha).

    Adjusted p-value of the i-th smallest of m: max_{j≤i} min(1, (m - j + 1) p_(j)); a
    detector is rejected when its adjusted p-value is < alpha (strict, as `detect_drift`
    compares p-values). Detectors whose p-value is None (e.g. KL, which has none) are skipped
    and left out of `adjusted`; with none left, nothing is rejected.
    """
    if not 0 < alpha < 1:
        raise ShiftwatchError(f"alpha = {alpha}; pass a significance level in (0, 1)")
    tested = {name: p for name, p in pvalues.items() if p is not None}
    for name, p in tested.items():
        if not 0 <= p <= 1:  # also catches NaN
            raise ShiftwatchError(f"p-value of {name!r} is {p}; a p-value must lie in [0, 1]")
    names = sorted(tested, key=lambda name: tested[name])
    scaled = [min(1.0, (len(names) - rank) * tested[name]) for rank, name in enumerate(names)]
    # The running maximum keeps adjusted p-values in the order of the raw ones (step-down).
    adjusted = dict(zip(names, np.maximum.accumulate(scaled).tolist() if names else []))
    rejected = tuple(name for name in names if adjusted[name] < alpha)
    return HolmResult(bool(rejected), {name: adjusted[name] for name in tested}, rejected)
