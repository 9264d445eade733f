"""Should a candidate detector join the verdict? Decided on design rows no reported number uses.

Issue #8, item 4: the verdict must catch every shift that costs >= 5 accuracy points at n = 100,
and any change to it must be fixed before looking at the numbers it is judged on. The harm table
draws its corruption streams from a seeded subset of the pool (`power.corruption_pool_images`,
5,000 images); this tool draws only from the other pool images (23,000 on defaults), so its
corruption draws share no image with the harm table's.

Pre-registered (committed before the first run of this tool, stop 17):
- Candidate: `confidence_drop`, a one-sided two-sample KS test on the model's top softmax
  probability, alarming when deployment images get lower confidence than reference images. Why
  this one: a shift that costs accuracy is one the model is less sure about (the ATC estimate
  next to the verdict reads accuracy from the same number), and the two misses of the harm table
  (crop_0.2, shear_0.3) are won by BBSD-KS alone, which spends a tenth of its level on each class
  output. It has no parameter to tune.
- It joins the verdict (Holm over the seven + it, weighted alike) only if, on the design rows,
  with R = 200 draws per cell:
  (a) the verdict alarms in >= 0.90 of draws at n = 100 on crop_0.2 and on shear_0.3;
  (b) it alarms in <= 0.07 (alpha + 0.02) of no-shift draws at n = 100, and as monitored
      (10,000-image reference) at n = 200;
  (c) as monitored, it alarms in >= 0.90 of label_keep_0.1 draws at n = 200.
  Otherwise the verdict stays as it is.
- Out-of-sample check, whatever the decision: two families no detector was designed on, added to
  the harm table before their first run, severities fixed here: blur (Gaussian, sigma 0.5, 1,
  1.5 px) and occlusion (one black square per image, side 6, 10, 14 px, at a random place inside
  the frame).

Outcome of the first run (stop 17; `studies/verdict_design.json`, "decision"): rule (a) failed,
0.715 on crop_0.2 and 0.605 on shear_0.3 (0.71 and 0.565 without the candidate); (b) and (c)
held. The verdict stays as it is.

Context, not part of the rule (added after that run): the harm table's three misses (crop_0.2,
shear_0.3 and occlusion_6, the last from the held-out run) on the design rows, against a
100-image reference and against a 10,000-image one as `check` and `monitor` use.

The candidate is defined here, not registered: registering it would move every verdict. Writes
studies/verdict_design.json. Usage (after `dvc repro power`): python studies/verdict_design.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from shiftwatch.core.params import load_params
from shiftwatch.data.corruptions import corrupt
from shiftwatch.detection.basic import DetectorResult
from shiftwatch.detection.power import (
    COMBINED,
    corruption_rows,
    independent_alarm_rates,
    pool_sampler,
)
from shiftwatch.detection.power_design import seeded_detector, unseen_pool
from shiftwatch.detection.verdict import FEATURE_DETECTORS
from shiftwatch.model import DEPLOYED_MODEL
from shiftwatch.model.features import model_features
from shiftwatch.model.network import load_model, pick_device

OUT = Path("studies/verdict_design.json")
DESIGN_SHIFTS = {"crop_0.2": ("crop", 0.2), "shear_0.3": ("shear", 0.3)}
MISSES = {**DESIGN_SHIFTS, "occlusion_6": ("occlusion", 6)}
REPETITIONS = 200
TARGET, MAX_FALSE_ALARMS = 0.90, 0.07
CANDIDATE = "verdict + confidence_drop (8)"


def confidence_drop(reference, deployment, seed: int) -> DetectorResult:
    """One-sided KS: H1 the deployment's top softmax probability is stochastically smaller."""
    result = stats.ks_2samp(
        deployment.probabilities.max(axis=1), reference.probabilities.max(axis=1), alternative="greater", method="asymp"
    )
    return DetectorResult(float(result.statistic), float(result.pvalue))


def main() -> None:
    params = load_params()
    power, alpha = params.power, params.monitor.alpha
    pool, labels, images = unseen_pool()
    design = np.setdiff1d(
        np.arange(len(pool)), corruption_rows(len(pool), params.seed, params.power.corruption_pool_images)
    )
    clean, design_labels = pool.subset(design), labels[design]
    model, device = load_model(DEPLOYED_MODEL), pick_device()

    verdict = {name: seeded_detector(name, power.mmd_permutations) for name in FEATURE_DETECTORS}
    monitored = {
        name: seeded_detector(name, power.mmd_permutations, params.monitor.mmd_max_per_side)
        for name in FEATURE_DETECTORS
    }
    candidates = {
        "verdict (7)": verdict,
        "verdict + confidence_drop (8)": {**verdict, "confidence_drop": confidence_drop},
    }
    candidates_monitored = {
        "verdict (7)": monitored,
        "verdict + confidence_drop (8)": {**monitored, "confidence_drop": confidence_drop},
    }

    shifted = {
        name: model_features(
            model,
            corrupt(images[design], family, severity, seed=params.seed + 17),
            params.evaluate.batch_size,
            device,
            params.evaluate.precision,
            desc=name,
        )
        for name, (family, severity) in MISSES.items()
    }
    streams = {"no_shift": (pool_sampler(clean, clean), [100], candidates)}
    for name in DESIGN_SHIFTS:
        streams[name] = (pool_sampler(clean, shifted[name]), [100], candidates)
    reference = power.monitored_reference
    streams["as_monitored/no_shift"] = (
        pool_sampler(clean, clean, reference_size=reference),
        [200],
        candidates_monitored,
    )
    streams["as_monitored/label_keep_0.1"] = (
        pool_sampler(
            clean, clean, labels=design_labels, label_class=params.shift.label_class, keep=0.1, reference_size=reference
        ),
        [200],
        candidates_monitored,
    )

    results = {"design_images": len(design), "repetitions": REPETITIONS, "rates": {}}
    for stream, (sample, sizes, by_candidate) in streams.items():
        started = time.perf_counter()
        for candidate, detectors in by_candidate.items():
            found = independent_alarm_rates(
                sample, detectors, sizes, REPETITIONS, alpha=alpha, seed=params.seed + 17, verdict=tuple(detectors)
            )
            point = found[COMBINED][0]
            results["rates"].setdefault(stream, {})[candidate] = {
                "n": point.n,
                "rate": point.rate,
                "ci": [round(point.ci_low, 3), round(point.ci_high, 3)],
                **({"confidence_drop_alone": found["confidence_drop"][0].rate} if "confidence_drop" in found else {}),
            }
            print(
                f"{stream:>28} {candidate:>30}: {point.rate:.3f} ({point.ci_low:.2f}-{point.ci_high:.2f})"
                f"  [{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
    results["decision"] = _decision(results["rates"])
    print(f"decision: {results['decision']}")
    results["misses_as_monitored"] = _misses(
        clean, shifted, verdict, monitored, power.monitored_reference, alpha, params.seed + 18
    )
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")


def _decision(rates: dict) -> dict:
    """The pre-registered rule, applied to the candidate's rates."""
    rule = {
        "a_detects_design_shifts": all(rates[name][CANDIDATE]["rate"] >= TARGET for name in DESIGN_SHIFTS),
        "b_false_alarms": all(
            rates[name][CANDIDATE]["rate"] <= MAX_FALSE_ALARMS for name in ("no_shift", "as_monitored/no_shift")
        ),
        "c_label_shift_as_monitored": rates["as_monitored/label_keep_0.1"][CANDIDATE]["rate"] >= TARGET,
    }
    return {**rule, "joins_verdict": all(rule.values())}


def _misses(clean, shifted: dict, verdict: dict, monitored: dict, reference_size: int, alpha: float, seed: int) -> dict:
    """The verdict's alarm rate at n = 100 on each miss, against an n-image and a
    `reference_size`-image reference (context for docs/statistics.md, not part of the rule)."""
    out = {}
    for name, features in shifted.items():
        for protocol, detectors, size in (("n_against_n", verdict, None), ("as_monitored", monitored, reference_size)):
            found = independent_alarm_rates(
                pool_sampler(clean, features, reference_size=size),
                detectors,
                [100],
                REPETITIONS,
                alpha=alpha,
                seed=seed,
                verdict=tuple(detectors),
            )
            point = found[COMBINED][0]
            out.setdefault(name, {})[protocol] = {
                "rate": point.rate,
                "ci": [round(point.ci_low, 3), round(point.ci_high, 3)],
            }
            print(f"{name:>12} {protocol:>13}: {point.rate:.3f}", flush=True)
    return out


if __name__ == "__main__":
    main()
