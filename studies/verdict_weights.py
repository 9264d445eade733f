"""Would a weighted verdict catch occlusion_6? An exploration on design rows, not a decision.

As monitored (each draw of n = 100 against a fresh 10,000-image reference), the harm table's one
remaining miss, occlusion_6, is caught by BBSD-KS alone in 0.94 of draws at alpha = 0.05 but by
the verdict in 0.80: the verdict alarms when some detector's p-value is below alpha/7 (Holm over
seven, whose first step is Bonferroni), and BBSD-KS's is often between the two. A verdict that
gives BBSD-KS a larger share of alpha (weighted Bonferroni, the first step of weighted Holm:
alarm when p_i < alpha * w_i for some detector, weights summing to 1, so the family-wise false
alarm rate stays <= alpha) would catch more of it, and less of what the other detectors alone
see. This tool measures that trade on the 23,000 pool images the harm table does not use
(`shiftwatch.detection.power.corruption_rows`), so it touches no reported number.

Fixed before its first run (stop 18), shaped by the harm table's miss, so nothing here can be
adopted on these numbers alone: a weighting chosen from them needs a corruption family no one
has run yet before it can be called out of sample.
- Candidates: `equal` (the verdict today, 1/7 each); `bbsd_ks_half` (BBSD-KS 1/2, the six others
  1/12 each: "Failing Loudly"'s best single detector gets half the level); `bbsd_ks_and_shares`
  (BBSD-KS and BBSD per class 1/3 each, the five others 1/15 each: the label-shift detector kept
  strong too).
- Streams, R = 200 each: as monitored at n = 100, no shift and every corruption that costs >= 5
  points in the harm table (20); as monitored at n = 200, no shift and label_keep_0.1 (the
  label-shift target); n against n at n = 100, no shift and the three misses. Every candidate is
  scored on the very same draws and p-values.

Writes studies/verdict_weights.json. Usage (after `dvc repro power`): python studies/verdict_weights.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from shiftwatch.core.params import load_params
from shiftwatch.core.workers import fork_map
from shiftwatch.data.corruptions import corrupt
from shiftwatch.detection.power import (
    corruption_rows,
    pool_sampler,
    repetition_pvalues,
    wilson_interval,
)
from shiftwatch.detection.power_design import seeded_detector, unseen_pool
from shiftwatch.detection.verdict import FEATURE_DETECTORS
from shiftwatch.model import DEPLOYED_MODEL
from shiftwatch.model.features import model_features
from shiftwatch.model.network import load_model, pick_device

OUT = Path("studies/verdict_weights.json")
REPETITIONS = 200
MISSES = ("crop_0.2", "shear_0.3", "occlusion_6")
CANDIDATES = {
    "equal": {},
    "bbsd_ks_half": {"bbsd_ks": 1 / 2},
    "bbsd_ks_and_shares": {"bbsd_ks": 1 / 3, "bbsd_class_shares": 1 / 3},
}


def weights(candidate: str) -> dict[str, float]:
    """Each verdict detector's share of alpha: the named ones as given, the rest equal."""
    named = CANDIDATES[candidate]
    rest = [d for d in FEATURE_DETECTORS if d not in named]
    share = (1 - sum(named.values())) / len(rest) if rest else 0.0
    return {d: named.get(d, share) for d in FEATURE_DETECTORS}


def alarms(pvalues: np.ndarray, candidate: str, alpha: float) -> np.ndarray:
    """Weighted Bonferroni per draw: pvalues is (draws, detectors) in FEATURE_DETECTORS order.
    With equal weights this is exactly the verdict's Holm (its first step decides)."""
    w = np.array([weights(candidate)[d] for d in FEATURE_DETECTORS])
    return (pvalues < alpha * w).any(axis=1)


def draw_pvalues(sample, detectors: dict, n: int, seed: int) -> np.ndarray:
    """The verdict detectors' p-values (columns in FEATURE_DETECTORS order) on the R draws
    independent_alarm_rates would make."""
    return np.array(
        [
            [pvalues[d] for d in FEATURE_DETECTORS]
            for pvalues in (repetition_pvalues(sample, detectors, n, r, seed) for r in range(REPETITIONS))
        ]
    )


def main() -> None:
    params = load_params()
    power, alpha, seed = params.power, params.monitor.alpha, params.seed + 19
    harm = json.loads(Path("metrics/power_details.json").read_text())["harm"]
    corruptions = {f"{family}_{s:g}": (family, s) for family, levels in power.corruptions.items() for s in levels}
    harmful = [name for name in corruptions if name in harm["harmful"]]
    pool, labels, images = unseen_pool()
    design = np.setdiff1d(
        np.arange(len(pool)), corruption_rows(len(pool), params.seed, params.power.corruption_pool_images)
    )
    clean, design_labels = pool.subset(design), labels[design]
    model, device = load_model(DEPLOYED_MODEL), pick_device()
    shifted = {
        name: model_features(
            model,
            corrupt(images[design], *corruptions[name], seed=seed),
            params.evaluate.batch_size,
            device,
            params.evaluate.precision,
            desc=name,
        )
        for name in harmful
    }
    reference = power.monitored_reference
    n_against_n = {d: seeded_detector(d, power.mmd_permutations) for d in FEATURE_DETECTORS}
    monitored = {
        d: seeded_detector(d, power.mmd_permutations, params.monitor.mmd_max_per_side) for d in FEATURE_DETECTORS
    }
    streams = {
        "as_monitored/no_shift@100": (pool_sampler(clean, clean, reference_size=reference), monitored, 100),
        "as_monitored/no_shift@200": (pool_sampler(clean, clean, reference_size=reference), monitored, 200),
        "as_monitored/label_keep_0.1@200": (
            pool_sampler(
                clean,
                clean,
                labels=design_labels,
                label_class=params.shift.label_class,
                keep=0.1,
                reference_size=reference,
            ),
            monitored,
            200,
        ),
        "n_against_n/no_shift@100": (pool_sampler(clean, clean), n_against_n, 100),
    }
    for name in harmful:
        streams[f"as_monitored/{name}@100"] = (
            pool_sampler(clean, shifted[name], reference_size=reference),
            monitored,
            100,
        )
    for name in MISSES:
        streams[f"n_against_n/{name}@100"] = (pool_sampler(clean, shifted[name]), n_against_n, 100)

    def measure(stream: str) -> dict:
        started = time.perf_counter()
        sample, detectors, n = streams[stream]
        pvalues = draw_pvalues(sample, detectors, n, seed)
        out = {}
        for candidate in CANDIDATES:
            count = int(alarms(pvalues, candidate, alpha).sum())
            low, high = wilson_interval(count, REPETITIONS)
            out[candidate] = {"rate": count / REPETITIONS, "ci": [round(low, 3), round(high, 3)]}
        out["alone"] = {d: float(np.mean(pvalues[:, i] < alpha)) for i, d in enumerate(FEATURE_DETECTORS)}
        print(
            f"{stream:>40}: "
            + "  ".join(f"{c} {out[c]['rate']:.3f}" for c in CANDIDATES)
            + f"  [{time.perf_counter() - started:.0f} s]",
            flush=True,
        )
        return out

    order = list(streams)
    results = {
        "design_images": len(design),
        "repetitions": REPETITIONS,
        "alpha": alpha,
        "weights": {c: weights(c) for c in CANDIDATES},
        "rates": dict(zip(order, fork_map(measure, order))),
    }
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
