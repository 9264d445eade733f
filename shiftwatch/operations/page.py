"""The two answers of a check, from one definition, and the exit code a cron job gates on.

- **harmful** (the page): the label-free estimate says the batch loses at least
  `page_points` of accuracy against the reference (shiftwatch/estimation/accuracy.py, fitted by stage `harm`);
- **changed** (information): the Holm verdict over the change detectors (shiftwatch/detection/verdict.py).

Exit codes of `shiftwatch check`: 0 not harmful; 1 harmful (page); 2 bad input; with
`--fail-on change`, 3 when the batch changed but is not harmful (today's alarm, kept for
those who want it). With `--confirm-with PREVIOUS.json` (the last batch's --json report) a
harmful batch pages only when the previous one was harmful too: two in a row, which cuts
false pages on a healthy stream from p to p² a batch (stage harm measures p; `timeline`
states both a week).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shiftwatch import CLASS_NAMES, ShiftwatchError
from shiftwatch.detection.registry import DETECTORS
from shiftwatch.estimation.accuracy import EstimatorFit, Reference

EXIT_OK, EXIT_HARMFUL, EXIT_BAD_INPUT, EXIT_CHANGED = 0, 1, 2, 3
FAIL_ON = ("harm", "change")


def exit_code(report: dict, fail_on: str = "harm") -> int:
    """0 ok, 1 page (harmful, and confirmed where confirmation was asked for), 3 changed but
    not paged (only with fail_on="change")."""
    if fail_on not in FAIL_ON:
        raise ShiftwatchError(f"--fail-on {fail_on!r}: use one of {', '.join(FAIL_ON)}")
    if report["page"] == "PAGE":
        return EXIT_HARMFUL
    if fail_on == "change" and report["drift"]:
        return EXIT_CHANGED
    return EXIT_OK


def read_previous(path: Path) -> dict | None:
    """The previous batch's --json report for --confirm-with; None when there is none yet
    (the first batch of a stream: nothing can confirm it). Anything else unreadable is bad input."""
    hint = "pass the --json report of the previous check, or delete the file to start over"
    if not path.exists():
        return None
    try:
        previous = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShiftwatchError(f"--confirm-with {path}: unreadable or not JSON ({type(err).__name__}); {hint}") from None
    if not isinstance(previous, dict) or previous.get("harmful") not in (0, 1, True, False):
        raise ShiftwatchError(f"--confirm-with {path}: not a shiftwatch check report (no harmful field); {hint}")
    return previous


def confirm(report: dict, previous: dict | None, path: Path) -> None:
    """Page only when this batch and the previous one are both harmful (--confirm-with)."""
    before = None if previous is None else bool(previous["harmful"])
    report["confirmation"] = {
        "previous": str(path),
        "previous_harmful": before,
        "previous_time": None if previous is None else previous.get("batch", {}).get("time"),
    }
    report["page"] = "PAGE" if report["harmful"] and before else "ok"


def load_estimator(path: Path) -> tuple[EstimatorFit, Reference, dict]:
    """The fitted estimator, its summary of the reference, and the rest of its file (page and
    harm points, the md5s of the two models it was fitted for)."""
    hint = "run `dvc repro harm` or pass --estimator"
    if not path.exists():
        raise ShiftwatchError(f"{path}: not found; {hint}")
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShiftwatchError(f"{path}: unreadable or not JSON ({type(err).__name__}); {hint}") from None
    if not isinstance(payload, dict) or "reference" not in payload or "page_points" not in payload:
        raise ShiftwatchError(f"{path}: not an accuracy estimator (no reference or page_points); {hint}")
    fit = EstimatorFit.from_dict(payload, str(path))
    return fit, Reference.from_dict(payload["reference"], fit, str(path)), payload


def change_summary(report: dict) -> list[str]:
    """What changed, in words, pixels first (what an operator can look at), then the class
    mix where the focus class's estimated share moved by half or more, then the model's view."""
    alerting = set(report["alerting"])
    worded = [detector for detector in DETECTORS.values() if detector.meaning]  # each alarm's words: the registry's
    words: list[str] = []
    for model_free in (True, False):  # what an operator can look at in the images first
        for detector in (d for d in worded if d.model_free == model_free):
            phrase = detector.meaning
            if detector.name == "ks_mean_pixel" and "brightness" in report:
                seen = report["brightness"]
                phrase = (
                    f"images {'brighter' if seen['batch'] > seen['reference'] else 'darker'} "
                    f"(mean pixel {seen['batch']:.3f} vs {seen['reference']:.3f})"
                )
            if detector.name in alerting and phrase not in words:
                words.append(phrase)
        if model_free and alerting:
            words += _class_mix(report)
    named = {detector.name for detector in worded}
    return words + [name for name in report["alerting"] if name not in named]


def _class_mix(report: dict) -> list[str]:
    shift = report.get("label_shift")
    if not shift:
        return []
    focus = shift["focus_class"]
    share, before = shift["bbse"][focus], shift["reference"][focus]
    if abs(share - before) < 0.5 * before:
        return []
    return [
        f"class mix: {'more' if share > before else 'fewer'} {CLASS_NAMES[focus].lower()}s "
        f"(estimated {share:.0%} vs {before:.0%})"
    ]


def advice(report: dict) -> list[str]:
    """What to do, from the remedies this pipeline measured (metrics/mitigate.json)."""
    if not report["harmful"]:
        if report["drift"]:
            return [
                "no action needed for the model: the images changed but the estimated accuracy holds; "
                "watch the next batches (shiftwatch timeline)"
            ]
        return []
    steps = ["review the low-confidence predictions first (selective prediction: mitigate.review_threshold)"]
    measured = report.get("remedies") or {}
    for name, label in (
        ("adabn", "AdaBN (BatchNorm statistics from the batch)"),
        ("finetune_augmented", "the fine-tuned model (models/resnet18_augmented.pt)"),
    ):
        if name in measured and measured.get("none") is not None:
            steps.append(f"{label}: on B_shift accuracy {measured['none']:.2f} -> {measured[name]:.2f}")
    if any("class mix" in w for w in report.get("change_words", [])):
        trusted = not report["label_shift"]["untrustworthy"]
        steps.append(
            "prior correction (BBSE) only if the label-shift estimate is trusted "
            f"({'it is' if trusted else 'it is not: ' + why_untrustworthy(report)})"
        )
    return steps


def remedies(root: Path) -> dict:
    """Accuracy on B_shift per remedy, as `mitigate` measured it (empty when not run)."""
    path = root / "metrics" / "mitigate.json"
    try:
        measured = json.loads(path.read_text()).get("b_shift_accuracy", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: float(v) for k, v in measured.items() if isinstance(v, (int, float))}


def why_untrustworthy(report: dict) -> str:
    """Why the class-mix estimate is not to be trusted, in plain words."""
    shift = report["label_shift"]
    if shift["bbse_negative_weights"]:
        return "BBSE needs negative weights, so the images of some class changed"
    return (
        f"BBSE and EM disagree by {shift['tv_bbse_em']:.2f} in total variation, so the images changed "
        "too, not only the class mix"
    )


def mean_pixels(images: np.ndarray, reference_image_stats: np.ndarray) -> dict:
    return {"batch": float(images.mean()), "reference": float(reference_image_stats[:, 0].mean())}
