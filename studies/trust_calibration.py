"""The label-shift trust flag, tuned out of sample (issue #8, item 5).

`monitor` flags a class-mix estimate untrustworthy when BBSE needs negative weights or BBSE and
EM differ by more than `monitor.trust_tolerance` in total variation. This tool chooses that
tolerance on one family of shifts and reports how the flag does on another it was not tuned on.

- Reference: the held-out test set's softmax outputs and labels (as `monitor`).
- A draw: n = 2,000 domain-B images, class mix from Dirichlet(1, ..., 1), drawn per class from
  domain B's images as they are or under one covariate shift (the model is run once per image and
  severity; never per draw).
- A draw's estimate is *bad* when BBSE's share of `shift.label_class` is off by more than
  1 percentage point from the draw's true share.
- Calibration family: no covariate shift, brightness +0.05 and +0.2, downsample 14.
  Held-out family: brightness +0.1, downsample 7 (severities not used for tuning), fresh seeds.
- The tolerance maximises Youden's J (flag rate on bad estimates minus flag rate on good ones)
  over a grid, on the calibration family only.

Writes studies/trust_calibration.json. Usage (after `dvc repro`): python studies/trust_calibration.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shiftwatch.core.io import load_set
from shiftwatch.core.params import load_params
from shiftwatch.data.shift import degrade_images
from shiftwatch.estimation.labelshift import bbse, em_priors, estimates_disagree
from shiftwatch.model import DEPLOYED_MODEL
from shiftwatch.model.features import load_features, model_features
from shiftwatch.model.network import load_model, pick_device

OUT = Path("studies/trust_calibration.json")
CALIBRATION = {
    "none": (28, 0.0),
    "brightness_0.05": (28, 0.05),
    "brightness_0.2": (28, 0.2),
    "downsample_14": (14, 0.0),
}
HELD_OUT = {"brightness_0.1": (28, 0.1), "downsample_7": (7, 0.0)}
DRAWS, SIZE, ERROR = 150, 2000, 0.01
GRID = np.round(np.arange(0.01, 0.41, 0.01), 2)


def main() -> None:
    params = load_params()
    focus = params.shift.label_class
    reference, reference_labels = load_features("data/reference/test.npz")
    domain_b = load_set("data/prepared/domain_b.npz")
    model, device = load_model(DEPLOYED_MODEL), pick_device()
    source_priors = np.bincount(reference_labels, minlength=10) / len(reference_labels)

    def family(shifts: dict, seed: int) -> list[dict]:
        draws = []
        for k, (name, (downsample, brightness)) in enumerate(shifts.items()):
            probabilities = model_features(
                model,
                degrade_images(domain_b.images, downsample, brightness),
                params.evaluate.batch_size,
                device,
                params.evaluate.precision,
                desc=name,
            ).probabilities
            rng = np.random.default_rng([seed, k])
            for _ in range(DRAWS):
                rows = _draw(domain_b.labels, rng.dirichlet(np.ones(10)), rng)
                by_bbse = bbse(reference.probabilities, reference_labels, probabilities[rows])
                by_em = em_priors(probabilities[rows], source_priors)
                true_share = float(np.mean(domain_b.labels[rows] == focus))
                draws.append(
                    {
                        "shift": name,
                        "estimates": (by_bbse, by_em),
                        "error": abs(float(by_bbse.proportions_clipped[focus]) - true_share),
                    }
                )
        return draws

    calibration = family(CALIBRATION, seed=1)
    held_out = family(HELD_OUT, seed=2)
    youden = {float(t): _rates(calibration, t)["youden_j"] for t in GRID}
    chosen = max(youden, key=youden.get)
    result = {
        "focus_class": focus,
        "draws_per_shift": DRAWS,
        "size": SIZE,
        "bad_if_error_above": ERROR,
        "chosen_tolerance": chosen,
        "current_tolerance": params.monitor.trust_tolerance,
        "calibration": {
            "shifts": list(CALIBRATION),
            "at_chosen": _rates(calibration, chosen),
            "at_current": _rates(calibration, params.monitor.trust_tolerance),
        },
        "held_out": {
            "shifts": list(HELD_OUT),
            "at_chosen": _rates(held_out, chosen),
            "at_current": _rates(held_out, params.monitor.trust_tolerance),
            "by_shift": {name: _rates([d for d in held_out if d["shift"] == name], chosen) for name in HELD_OUT},
        },
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _draw(labels: np.ndarray, mix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SIZE rows of domain B with class counts multinomial(SIZE, mix), each class without
    replacement while it has rows enough."""
    counts = rng.multinomial(SIZE, mix)
    rows = [
        rng.choice(np.flatnonzero(labels == c), count, replace=count > np.sum(labels == c))
        for c, count in enumerate(counts)
        if count
    ]
    return np.concatenate(rows)


def _rates(draws: list[dict], tolerance: float) -> dict:
    flagged = np.array([estimates_disagree(*d["estimates"], tolerance) for d in draws])  # monitor's rule
    bad = np.array([d["error"] > ERROR for d in draws])
    hit = float(flagged[bad].mean()) if bad.any() else None
    false_flag = float(flagged[~bad].mean()) if (~bad).any() else None
    return {
        "draws": len(draws),
        "bad_estimates": int(bad.sum()),
        "flag_rate_when_bad": hit,
        "flag_rate_when_good": false_flag,
        "youden_j": (hit or 0.0) - (false_flag or 0.0),
    }


if __name__ == "__main__":
    main()
