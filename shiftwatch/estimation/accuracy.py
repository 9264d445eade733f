"""A label-free estimate of a batch's accuracy, and the page: is the model hurt?

The estimate moves the reference's known accuracy by how much a few per-image, label-free
signals moved between the reference and the batch:

    accuracy(batch) ~= accuracy(reference) + sum_j weight_j * (mean_batch(x_j) - mean_reference(x_j))

with x_j, per image: the deployed model's top softmax probability (`confidence`), whether it
clears the ATC threshold fitted on the reference (`atc`), whether the fine-tuned model of the
`finetune` stage picks the same class (`agreement`), and the fine-tuned model's probability of
the deployed model's class (`soft_agreement`); and, from the image alone, how much of its
2-pixel border is free of ink (`clear_border`: a cropped object runs off the frame, which
the model's confidence underrates). With one signal and weight 1 this is DoC
(difference of confidences, Guillory et al. 2021); the weights are fitted AutoEval-style
(Deng & Zheng 2021) on shifts with known accuracy, the design families of stage `harm`, by
least squares without an intercept and with non-negative weights: no change means no loss,
and no signal may argue that a less confident batch is more accurate.

Because the estimate is a mean of per-image scores, its sampling error has a closed form
(the scores' variance over n, plus the reference's over its size); `EstimatorFit.error` adds
the error of the fit itself on families it never saw (leave-one-family-out on the design
families), which grows with the loss. The interval covers the batch's own accuracy: it adds the binomial spread of n
right-or-wrong predictions.

The page (the harmful answer): the estimated loss against the reference is at least
`page_points`. `harm_points` says what counts as harm; `page_points` sits below it so a
batch that loses `harm_points` pages despite the estimate's noise, and above the ~1 point an
everyday re-encode costs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from shiftwatch import ShiftwatchError
from shiftwatch.estimation.labelshift import atc_fit, class_mix_scores

SIGNALS = ("confidence", "atc", "agreement", "soft_agreement", "class_mix", "clear_border")
BORDER_PIXELS = 2  # clear_border's frame width
Z_90 = 1.6448536269514722  # two-sided 90 % normal quantile


@dataclass(frozen=True)
class EstimatorFit:
    """The fitted estimator: the signals it uses, their weights, and its error on families it
    never saw (leave-one-family-out, at population level): `model_error` (accuracy, a
    fraction) on shifts that cost little, plus `relative_error` times the estimated loss (the
    error grows with the shift: a few points on a 30-point loss, tenths on a 1-point one)."""

    signals: tuple[str, ...]
    weights: tuple[float, ...]
    model_error: float = 0.0
    relative_error: float = 0.0

    def error(self, loss: float) -> float:
        """The fit's own error (accuracy, a fraction) at an estimated loss (a fraction)."""
        return float(np.hypot(self.model_error, self.relative_error * max(loss, 0.0)))

    def as_dict(self) -> dict:
        return {**asdict(self), "signals": list(self.signals), "weights": list(self.weights)}

    @staticmethod
    def from_dict(payload: dict, where: str = "estimator") -> EstimatorFit:
        try:
            fit = EstimatorFit(
                tuple(payload["signals"]),
                tuple(float(w) for w in payload["weights"]),
                float(payload.get("model_error", 0.0)),
                float(payload.get("relative_error", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ShiftwatchError(
                f"{where}: not an accuracy estimator ({type(err).__name__}: {err}); rerun `dvc repro harm`"
            ) from None
        unknown = set(fit.signals) - set(SIGNALS)
        if unknown or len(fit.signals) != len(fit.weights) or not fit.signals:
            raise ShiftwatchError(
                f"{where}: signals {list(fit.signals)} do not match weights "
                f"{list(fit.weights)} (known signals: {', '.join(SIGNALS)}); "
                "rerun `dvc repro harm`"
            )
        return fit


@dataclass(frozen=True)
class Reference:
    """What the estimate needs of the reference: its accuracy, the ATC threshold fitted on it,
    and the mean and covariance of every signal over its images."""

    accuracy: float
    atc_threshold: float
    means: dict[str, float]
    covariance: np.ndarray
    size: int
    class_mix: tuple[float, ...] = ()  # class_mix_scores of the reference, per predicted class

    def as_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "atc_threshold": self.atc_threshold,
            "means": self.means,
            "covariance": np.asarray(self.covariance).tolist(),
            "size": self.size,
            **({"class_mix": list(self.class_mix)} if self.class_mix else {}),  # only when fitted with it
        }

    @staticmethod
    def from_dict(payload: dict, fit: EstimatorFit, where: str = "estimator") -> Reference:
        try:
            reference = Reference(
                float(payload["accuracy"]),
                float(payload["atc_threshold"]),
                {s: float(payload["means"][s]) for s in fit.signals},
                np.asarray(payload["covariance"], dtype=np.float64),
                int(payload["size"]),
                tuple(float(v) for v in payload.get("class_mix", ())),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ShiftwatchError(
                f"{where}: its reference summary is incomplete ({type(err).__name__}: {err}); rerun `dvc repro harm`"
            ) from None
        if "class_mix" in fit.signals and not reference.class_mix:
            raise ShiftwatchError(f"{where}: its reference summary has no class_mix scores; rerun `dvc repro harm`")
        if reference.covariance.shape != (len(fit.signals),) * 2 or reference.size < 2:
            raise ShiftwatchError(
                f"{where}: its reference summary does not match its {len(fit.signals)} signals; rerun `dvc repro harm`"
            )
        return reference


@dataclass(frozen=True)
class Estimate:
    """Estimated accuracy of a batch, its 90 % interval (the batch's own accuracy lies in it),
    the loss in points against the reference, and whether it pages."""

    accuracy: float
    interval: tuple[float, float]
    reference_accuracy: float
    loss_points: float
    loss_interval_points: tuple[float, float]
    standard_error: float
    harmful: bool
    page_points: float

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "interval": list(self.interval),
            "loss_interval_points": list(self.loss_interval_points),
        }


def clear_border(images: np.ndarray) -> np.ndarray:
    """Per image (N, H, W), or flattened square (N, H*W), in any scale (8-bit pixels or
    [0, 1]): the share of its BORDER_PIXELS-wide frame without ink, ink being a pixel above half
    of the image's own range (so a contrast, gamma or brightness change alone barely moves it;
    a blank image is clear)."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ShiftwatchError(f"clear_border: rows of {x.shape[1]} pixels are not square images")
        x = x.reshape(len(x), side, side)
    if x.ndim != 3 or min(x.shape[1:]) <= 2 * BORDER_PIXELS:
        raise ShiftwatchError(f"clear_border: images of shape {x.shape[1:]}; pass (N, H, W) larger than the frame")
    low, high = x.min((1, 2), keepdims=True), x.max((1, 2), keepdims=True)
    ink = (x - low) > 0.5 * np.maximum(high - low, np.finfo(np.float32).tiny)
    frame = np.ones(x.shape[1:], dtype=bool)
    frame[BORDER_PIXELS:-BORDER_PIXELS, BORDER_PIXELS:-BORDER_PIXELS] = False
    return 1.0 - ink[:, frame].mean(1)


def border_values(fit: EstimatorFit, pixels: np.ndarray | None) -> np.ndarray | None:
    """The images' clear_border values where `fit` reads them (None where it does not, or
    where there are no pixels: the estimate then says what it misses)."""
    return clear_border(pixels) if "clear_border" in fit.signals and pixels is not None else None


def signals(
    probabilities: np.ndarray,
    aux_probabilities: np.ndarray | None,
    atc_threshold: float,
    class_mix: np.ndarray | tuple[float, ...] = (),
    clear: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per image: each signal of SIGNALS (the agreement signals only with the fine-tuned model's
    probabilities `aux_probabilities`, row-aligned; `class_mix` only with the reference's
    class_mix_scores: the BBSE score of the image's predicted class; `clear_border` only with
    the images' `clear_border` values, `clear`, row-aligned)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted, confidence = probabilities.argmax(1), probabilities.max(1)
    values = {"confidence": confidence, "atc": (confidence > atc_threshold).astype(np.float64)}
    if clear is not None:
        if len(clear) != len(probabilities):
            raise ShiftwatchError(
                f"{len(clear)} clear_border values for {len(probabilities)} images; pass one per image"
            )
        values["clear_border"] = np.asarray(clear, dtype=np.float64)
    if len(class_mix):
        values["class_mix"] = np.asarray(class_mix, dtype=np.float64)[predicted]
    if aux_probabilities is not None:
        aux = np.asarray(aux_probabilities, dtype=np.float64)
        if aux.shape != probabilities.shape:
            raise ShiftwatchError(
                f"the fine-tuned model's outputs have shape {aux.shape}, the model's "
                f"{probabilities.shape}; they must be of the same images"
            )
        values["agreement"] = (aux.argmax(1) == predicted).astype(np.float64)
        values["soft_agreement"] = aux[np.arange(len(aux)), predicted]
    return values


def reference_summary(
    probabilities: np.ndarray,
    labels: np.ndarray,
    aux_probabilities: np.ndarray | None,
    fit: EstimatorFit,
    clear: np.ndarray | None = None,
) -> Reference:
    """The reference's accuracy, ATC threshold, and the mean and covariance of `fit`'s signals
    (`clear`: the reference images' clear_border values, where the fit uses them)."""
    if len(labels) < 2:
        raise ShiftwatchError(f"the reference holds {len(labels)} images; the estimate needs at least 2")
    threshold = atc_fit(probabilities, labels)
    class_mix = tuple(class_mix_scores(probabilities, labels).tolist()) if "class_mix" in fit.signals else ()
    matrix = _matrix(signals(probabilities, aux_probabilities, threshold, class_mix, clear), fit.signals)
    return Reference(
        float(np.mean(np.asarray(probabilities).argmax(1) == labels)),
        threshold,
        dict(zip(fit.signals, matrix.mean(0).tolist())),
        np.atleast_2d(np.cov(matrix, rowvar=False)),
        len(labels),
        class_mix,
    )


def estimate(
    probabilities: np.ndarray,
    aux_probabilities: np.ndarray | None,
    reference: Reference,
    fit: EstimatorFit,
    page_points: float,
    clear: np.ndarray | None = None,
) -> Estimate:
    """The batch's estimated accuracy with its 90 % interval, and the page decision (`clear`:
    the batch images' clear_border values, where the fit uses them)."""
    n = len(probabilities)
    if n < 2:
        raise ShiftwatchError(f"the batch holds {n} image(s); the accuracy estimate needs at least 2")
    matrix = _matrix(
        signals(probabilities, aux_probabilities, reference.atc_threshold, reference.class_mix, clear), fit.signals
    )
    weights = np.asarray(fit.weights)
    shift = matrix.mean(0) - np.array([reference.means[s] for s in fit.signals])
    point = float(np.clip(reference.accuracy + weights @ shift, 0.0, 1.0))
    sampling = (
        weights @ np.atleast_2d(np.cov(matrix, rowvar=False)) @ weights / n
        + weights @ reference.covariance @ weights / reference.size
    )
    # The batch's own accuracy spreads binomially around what the signals predict, and so did
    # the reference's around the accuracy the weights were anchored to.
    binomial = point * (1 - point) / n + reference.accuracy * (1 - reference.accuracy) / reference.size
    spread = np.sqrt(sampling + binomial + fit.error(reference.accuracy - point) ** 2)
    low, high = float(max(0.0, point - Z_90 * spread)), float(min(1.0, point + Z_90 * spread))
    loss = 100 * (reference.accuracy - point)
    return Estimate(
        point,
        (low, high),
        reference.accuracy,
        loss,
        (100 * (reference.accuracy - high), 100 * (reference.accuracy - low)),
        float(np.sqrt(sampling)),
        bool(loss >= page_points),
        page_points,
    )


def fit_weights(shifts: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Non-negative least squares without intercept: accuracy change (one per shifted set) from
    the change of each signal's mean (rows: sets, columns: signals). With fewer sets than
    signals (a leave-one-family-out fit on a small grid) it still returns one solution."""
    from scipy.optimize import nnls

    shifts, losses = np.asarray(shifts, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if shifts.ndim != 2 or len(shifts) != len(losses) or len(shifts) == 0:
        raise ShiftwatchError(
            f"fitting the estimator needs one row of signal changes per shifted set "
            f"(got {len(losses)} sets, shape {shifts.shape}); add harm.design cells"
        )
    weights, _ = nnls(shifts, losses)
    return weights


_FINETUNED = "the fine-tuned model's outputs (models/resnet18_augmented.pt); run `dvc repro finetune`"
# What each signal that is not read from the deployed model's outputs alone needs.
_NEEDS = {
    "agreement": _FINETUNED,
    "soft_agreement": _FINETUNED,
    "class_mix": "the reference's class_mix scores; rerun `dvc repro harm`",
    "clear_border": "the images' clear_border values (clear=, from border_values)",
}


def _matrix(values: dict[str, np.ndarray], names) -> np.ndarray:
    missing = [name for name in names if name not in values]
    if missing:
        needs = sorted({_NEEDS[name] for name in missing})
        raise ShiftwatchError(f"the estimator uses {', '.join(missing)}, which needs {'; and '.join(needs)}")
    return np.column_stack([values[name] for name in names])
