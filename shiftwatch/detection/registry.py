"""Every drift detector, registered once: its name, the view of the images it consumes, whether
it is part of the verdict, the settings it reads, how its cost grows with n, and the function.

`monitor`, `power`, `check` and `detect` (the model-free ones), the README tables and the DVC
plots take their detectors from `DETECTORS`; nothing else lists them. To add one:

    @register("pixel_ks", consumes="pixels", verdict=False,
              summary="KS on every pixel position, Bonferroni over the 784 (alibi-detect's KSDrift)")
    def pixel_ks(reference, deployment, settings):
        return per_pixel_ks(reference, deployment)

The function gets the consumed view of the reference and of the deployment sample (arrays
with one row per image, see `VIEWS`) and the `Settings`, and returns a DetectorResult with a
p-value in [0, 1]. A verdict detector joins the Holm correction of `monitor`, `power` and
`check` (so it changes every verdict and every power number: add it as a diagnostic first,
read its power row, then decide); a diagnostic is reported beside the verdict with its own
p-value and power row. `cost="quadratic"` marks a test whose time grows as n² (a kernel test):
`power` gives it power.mmd_repetitions instead of power.repetitions at large n. A small class
with `__init__(self, settings)` and `__call__(self, reference, deployment)` may be registered
instead of a function, for a detector that prepares something once per reference (the MMD's
bandwidth).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from shiftwatch import ShiftwatchError
from shiftwatch.detection.basic import DetectorResult, ks_test, per_pixel_ks
from shiftwatch.detection.bbsd import bbsd_chi2, bbsd_class_shares, bbsd_ks
from shiftwatch.detection.framing import frame_span_test
from shiftwatch.detection.mmd import mmd_test, reference_bandwidth

View = Literal["pixels", "image_stats", "probabilities", "embeddings"]
# What each view holds, one row per image (`shiftwatch.model.features.Features` carries all four).
VIEWS: dict[str, str] = {
    "pixels": "the 784 pixels, 8-bit (uint8)",
    "image_stats": "mean pixel, share of zero pixels, 10/50/90 % pixel quantiles",
    "probabilities": "the model's softmax outputs (10)",
    "embeddings": "the model's penultimate layer (512)",
}

Cost = Literal["cheap", "quadratic"]
# How a detector's time grows with n per side; `power` reads it to choose its repetitions.
COSTS: dict[str, str] = {
    "cheap": "at most n log n: power.repetitions at every n",
    "quadratic": "n² (kernel tests): power.mmd_repetitions from each of its sizes on",
}


@dataclass(frozen=True)
class Settings:
    """Everything a detector may be configured with. Which params feed it depends on the
    caller: `monitor` and `check` take monitor.mmd_permutations and monitor.mmd_max_per_side,
    `power` power.mmd_permutations and a per-repetition seed."""

    seed: int = 0
    permutations: int = 200  # permutation tests
    max_per_side: int | None = None  # seeded subsample cap, for tests that cost n^2


@dataclass(frozen=True)
class Detector:
    name: str
    consumes: View
    verdict: bool  # in the Holm verdict, or a diagnostic beside it
    settings: tuple[str, ...]  # the Settings fields it reads
    summary: str
    implementation: Callable
    cost: Cost  # see COSTS
    meaning: str = ""  # what its alarm means to an operator, in words (check's report); "" shows the name

    @property
    def model_free(self) -> bool:
        """Consumes only the images (pixels or their statistics), not the model's outputs."""
        return self.consumes in ("image_stats", "pixels")

    def bind(self, settings: Settings) -> Callable[[object, object], DetectorResult]:
        """detector(reference: Features, deployment: Features) -> DetectorResult."""
        if isinstance(self.implementation, type):
            test = self.implementation(settings)
        else:

            def test(reference, deployment):
                return self.implementation(reference, deployment, settings)

        def on_features(reference, deployment) -> DetectorResult:
            views = [getattr(side, self.consumes) for side in (reference, deployment)]
            if any(view is None for view in views):
                raise ShiftwatchError(
                    f"detector {self.name} needs {self.consumes} ({VIEWS[self.consumes]}), "
                    "which these features do not hold; rerun `dvc repro reference`"
                )
            return test(*views)

        return on_features


DETECTORS: dict[str, Detector] = {}


def register(
    name: str,
    *,
    consumes: View,
    verdict: bool,
    summary: str,
    settings: tuple[str, ...] = (),
    cost: Cost = "cheap",
    meaning: str = "",
):
    """Decorator: add a detector (function or class) to DETECTORS under `name`."""
    if consumes not in VIEWS:
        raise ValueError(f"detector {name}: consumes={consumes!r}; use one of {sorted(VIEWS)}")
    if cost not in COSTS:
        raise ValueError(f"detector {name}: cost={cost!r}; use one of {sorted(COSTS)}")
    unknown = set(settings) - set(Settings.__dataclass_fields__)
    if unknown:
        raise ValueError(f"detector {name}: unknown settings {sorted(unknown)}; see Settings")

    def add(implementation):
        if name in DETECTORS or name == "combined":
            raise ValueError(f"detector {name}: the name is taken")
        DETECTORS[name] = Detector(name, consumes, verdict, tuple(settings), summary, implementation, cost, meaning)
        return implementation

    return add


def verdict_detectors() -> tuple[str, ...]:
    return tuple(name for name, detector in DETECTORS.items() if detector.verdict)


def diagnostic_detectors() -> tuple[str, ...]:
    return tuple(name for name, detector in DETECTORS.items() if not detector.verdict)


def bound(names, settings: Settings) -> dict[str, Callable]:
    """{name: detector(reference: Features, deployment: Features)} for `names`."""
    return {name: DETECTORS[name].bind(settings) for name in names}


# ---------------------------------------------------------------- the verdict
# Holm–Bonferroni at monitor.alpha over these seven, every one weighted alike. The first six were
# fixed before the harm table (power stage) was measured; frame_span was added after it showed
# one-pixel translations missed, designed on domain A images (not in the power pool): see README.


@register(
    "ks_mean_pixel",
    consumes="image_stats",
    verdict=True,
    meaning="mean brightness changed",
    summary="KS on the per-image mean pixel (the study's test)",
)
def ks_mean_pixel(reference, deployment, settings):
    return ks_test(reference[:, 0], deployment[:, 0])


# The 10/50/90 % pixel quantiles. The share of exactly-zero pixels (column 1) is kept in the
# features but not tested: JPEG, rotation or a resize change it without harm, and the
# synthetic brightness shift is the only shift that leaves that trace.
_QUANTILE_COLUMNS = (2, 3, 4)


@register(
    "image_stats",
    consumes="image_stats",
    verdict=True,
    meaning="pixel values changed (brightness, contrast or encoding)",
    summary="KS on the 10/50/90 % pixel quantiles, Bonferroni over the three",
)
def image_stats(reference, deployment, settings):
    results = [ks_test(reference[:, c], deployment[:, c]) for c in _QUANTILE_COLUMNS]
    return DetectorResult(max(r.statistic for r in results), min(1.0, len(results) * min(r.pvalue for r in results)))


@register(
    "frame_span",
    consumes="pixels",
    verdict=True,
    meaning="objects framed differently (share of images that fill the frame)",
    summary="share of images whose object spans the frame (ink on two opposite borders); "
    "one-sided Fisher: alarms when fewer do than in the reference",
)
def frame_span(reference, deployment, settings):
    return frame_span_test(reference, deployment)


@register(
    "bbsd_ks",
    consumes="probabilities",
    verdict=True,
    meaning="the model's confidence changed",
    summary="BBSD: KS on each softmax output, Bonferroni over the 10",
)
def bbsd_ks_detector(reference, deployment, settings):
    return bbsd_ks(reference, deployment)


@register(
    "bbsd_chi2",
    consumes="probabilities",
    verdict=True,
    meaning="the mix of predicted classes changed",
    summary="BBSD: chi-squared on the predicted-class counts",
)
def bbsd_chi2_detector(reference, deployment, settings):
    return bbsd_chi2(reference, deployment)


@register(
    "bbsd_class_shares",
    consumes="probabilities",
    verdict=True,
    meaning="the mix of predicted classes changed",
    summary="BBSD: Fisher's exact test per predicted class share, Bonferroni over the 10",
)
def bbsd_class_shares_detector(reference, deployment, settings):
    return bbsd_class_shares(reference, deployment)


@register(
    "mmd_embedding",
    consumes="embeddings",
    verdict=True,
    settings=("seed", "permutations", "max_per_side"),
    cost="quadratic",
    meaning="the model sees different features",
    summary="MMD (Gaussian kernel, permutation p-value) on the penultimate-layer embeddings",
)
class MMDEmbedding:
    """The reference is fixed across many deployment batches (monitor's sets): subsample it and
    fix the kernel bandwidth (median heuristic on the reference) once, not per batch. A
    bandwidth that does not depend on the deployment sample keeps the permutation test valid."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._for: np.ndarray | None = None  # the reference array prepared for (identity, not id(): no reuse after GC)

    def __call__(self, reference: np.ndarray, deployment: np.ndarray) -> DetectorResult:
        s = self.settings
        if self._for is not reference:
            self._for, sample = reference, reference
            if s.max_per_side is not None and len(reference) > s.max_per_side:
                sample = reference[np.random.default_rng(s.seed).choice(len(reference), s.max_per_side, replace=False)]
            self._reference, self._bandwidth = sample, reference_bandwidth(sample, seed=s.seed)
        return mmd_test(
            self._reference,
            deployment,
            n_permutations=s.permutations,
            seed=s.seed,
            bandwidth=self._bandwidth,
            max_per_side=s.max_per_side,
        )


# ---------------------------------------------------------------- diagnostics


# Not in the verdict: it sees crop, but also a healthy batch that was resized or saved as JPEG
# (README, "Detection tied to harm").
@register(
    "pixel_ks",
    consumes="pixels",
    verdict=False,
    summary="KS on every pixel position, Bonferroni over the 784 (alibi-detect's KSDrift); "
    "alarms on healthy resized or JPEG-saved images too, so a diagnostic",
)
def pixel_ks(reference, deployment, settings):
    return per_pixel_ks(reference, deployment)
