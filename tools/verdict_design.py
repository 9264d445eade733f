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

The candidate is defined here, not registered: registering it would move every verdict. Writes
metrics/verdict_design.json. Usage (after `dvc repro power`): python tools/verdict_design.py
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shiftwatch.corruptions import corrupt  # noqa: E402
from shiftwatch.detectors import DetectorResult  # noqa: E402
from shiftwatch.features import model_features  # noqa: E402
from shiftwatch.model import load_model, pick_device  # noqa: E402
from shiftwatch.monitor import FEATURE_DETECTORS  # noqa: E402
from shiftwatch.params import load_params  # noqa: E402
from shiftwatch.power import COMBINED, independent_alarm_rates, pool_sampler  # noqa: E402
from stages.power import _pool, _seeded  # noqa: E402

OUT = Path("metrics/verdict_design.json")
DESIGN_SHIFTS = {"crop_0.2": ("crop", 0.2), "shear_0.3": ("shear", 0.3)}
REPETITIONS = 200


def confidence_drop(reference, deployment, seed: int) -> DetectorResult:
    """One-sided KS: H1 the deployment's top softmax probability is stochastically smaller."""
    result = stats.ks_2samp(deployment.probabilities.max(axis=1), reference.probabilities.max(axis=1),
                            alternative="greater", method="asymp")
    return DetectorResult(float(result.statistic), float(result.pvalue))


def main() -> None:
    params = load_params()
    power, alpha = params.power, params.monitor.alpha
    pool, labels, images = _pool()
    reported = np.random.default_rng([params.seed, 1]).choice(  # the harm table's rows (stage power)
        len(pool), min(len(pool), power.corruption_pool_images), replace=False)
    design = np.setdiff1d(np.arange(len(pool)), reported)
    clean, design_labels = pool.subset(design), labels[design]
    model, device = load_model("models/resnet18.pt"), pick_device()

    verdict = {name: _seeded(name, power.mmd_permutations) for name in FEATURE_DETECTORS}
    monitored = {name: _seeded(name, power.mmd_permutations, params.monitor.mmd_max_per_side)
                 for name in FEATURE_DETECTORS}
    candidates = {"verdict (7)": verdict,
                  "verdict + confidence_drop (8)": {**verdict, "confidence_drop": confidence_drop}}
    candidates_monitored = {"verdict (7)": monitored,
                            "verdict + confidence_drop (8)": {**monitored, "confidence_drop": confidence_drop}}

    streams = {"no_shift": (pool_sampler(clean, clean), [100], candidates)}
    for name, (family, severity) in DESIGN_SHIFTS.items():
        shifted = model_features(model, corrupt(images[design], family, severity, seed=params.seed + 17),
                                 params.evaluate.batch_size, device, params.evaluate.precision, desc=name)
        streams[name] = (pool_sampler(clean, shifted), [100], candidates)
    reference = power.monitored_reference
    streams["as_monitored/no_shift"] = (pool_sampler(clean, clean, reference_size=reference), [200],
                                        candidates_monitored)
    streams["as_monitored/label_keep_0.1"] = (pool_sampler(
        clean, clean, labels=design_labels, label_class=params.shift.label_class, keep=0.1,
        reference_size=reference), [200], candidates_monitored)

    results = {"design_images": len(design), "repetitions": REPETITIONS, "rates": {}}
    for stream, (sample, sizes, by_candidate) in streams.items():
        started = time.perf_counter()
        for candidate, detectors in by_candidate.items():
            found = independent_alarm_rates(sample, detectors, sizes, REPETITIONS, alpha=alpha,
                                            seed=params.seed + 17, verdict=tuple(detectors))
            point = found[COMBINED][0]
            results["rates"].setdefault(stream, {})[candidate] = {
                "n": point.n, "rate": point.rate, "ci": [round(point.ci_low, 3), round(point.ci_high, 3)],
                **({"confidence_drop_alone": found["confidence_drop"][0].rate} if "confidence_drop" in found else {})}
            print(f"{stream:>28} {candidate:>30}: {point.rate:.3f} ({point.ci_low:.2f}-{point.ci_high:.2f})"
                  f"  [{time.perf_counter() - started:.0f} s]", flush=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
