"""The check itself, without the command line: load the reference summary, the model and the
params (validated, every problem a ShiftwatchError before the model runs), then one batch's
verdict, class-mix and accuracy estimates. `shiftwatch check` and `shiftwatch serve` call it.

The reference is the summary the `reference` stage saved for the held-out test set (model
outputs, embeddings, image statistics, pixels, labels, the model's md5), so the reference images
are never reloaded: the batch goes through the model once and the registry's detectors give the
`monitor` stage's verdict (without its image-level MMD and domain classifier).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from shiftwatch import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES, ShiftwatchError
from shiftwatch.data.batch import load_batch
from shiftwatch.model import DEPLOYED_MODEL, FINETUNED_MODEL
from shiftwatch.operations.page import change_summary, load_estimator, mean_pixels, remedies

DEFAULT_REFERENCE = "data/reference/test.npz"
DEFAULT_MODEL = DEPLOYED_MODEL
DEFAULT_PARAMS = "params.yaml"
DEFAULT_ESTIMATOR = "models/accuracy_estimator.json"
DEFAULT_FINETUNED = FINETUNED_MODEL
# The params the check reads, logged with --log (the monitor stage's detector settings).
PARAMS_READ = (
    "seed",
    "shift.label_class",
    "evaluate.batch_size",
    "evaluate.precision",
    "monitor.alpha",
    "monitor.mmd_permutations",
    "monitor.mmd_max_per_side",
    "monitor.trust_tolerance",
)


def check_batch(
    batch: Path,
    *,
    reference: Path | None = None,
    model: str | Path | None = None,
    params: Path | None = None,
    estimator: Path | None = None,
    finetuned: Path | None = None,
    progress: bool = False,
):
    """Load everything, validate it, and check the batch: (report, a JSON-ready dict; the
    per-image numbers the HTML report draws, html_report.Views). Every input problem raises
    ShiftwatchError before the model runs or anything is written."""
    started = time.perf_counter()
    settings, ref, paths = load_inputs(reference, model, params, estimator, finetuned)
    images, batch_info = load_batch(batch)
    loaded = time.perf_counter()
    network, imports = load_network(paths["model"])
    ref["finetuned_network"] = load_network(paths["finetuned"])[0]
    model_loaded = time.perf_counter()
    report, views = check_images(
        images, {"path": str(batch), **batch_info}, settings, ref, network, paths, progress=progress
    )
    report["seconds"].update(
        {
            "load": loaded - started,
            "imports": imports,
            "model": model_loaded - loaded - imports,
            "total": time.perf_counter() - started,
        }
    )
    return report, views


def load_inputs(
    reference: Path | None,
    model: str | Path | None,
    params: Path | None,
    estimator: Path | None = None,
    finetuned: Path | None = None,
):
    """(settings, reference summary, {"reference", "model", "params", "estimator", "finetuned"}
    paths, plus "model_uri" for a registry model), validated; the model file is checked to
    exist and to be the one the reference was made with, the estimator to be fitted for that
    model and the fine-tuned one (loading them needs torch: `load_network`)."""
    root = _project_root()
    paths: dict[str, Any] = {
        "reference": reference if reference is not None else root / DEFAULT_REFERENCE,
        "model": Path(model) if model is not None else root / DEFAULT_MODEL,
        "params": params if params is not None else root / DEFAULT_PARAMS,
        "estimator": estimator if estimator is not None else root / DEFAULT_ESTIMATOR,
        "finetuned": finetuned if finetuned is not None else root / DEFAULT_FINETUNED,
    }
    from shiftwatch.core.params import load_params

    if not paths["params"].exists():
        raise ShiftwatchError(
            f"{paths['params']}: not found; run inside the repository (it reads "
            f"<repo root>/params.yaml) or pass --params"
        )
    settings = load_params(paths["params"])
    ref: dict[str, Any] = load_reference(paths["reference"])
    from shiftwatch.tracking.registry import is_model_uri

    if model is not None and is_model_uri(str(model)):
        from shiftwatch.tracking.registry import fetch_model
        from shiftwatch.tracking.store import tracking_uri

        paths["model_uri"] = str(model)
        paths["model"], _ = fetch_model(str(model), tracking_uri())
    if not paths["model"].exists():  # before the (slower) torch import
        raise ShiftwatchError(f"{paths['model']}: not found; run `dvc repro train` or pass --model")
    ref["model_md5"] = _same_model(ref, paths)
    ref["estimator"] = _estimator_for(ref, paths)
    ref["remedies"] = remedies(root)
    return settings, ref, paths


def _estimator_for(ref: dict, paths: dict):
    """The accuracy estimator, checked to be fitted for this model and the fine-tuned model
    on disk: the page's weights and reference summary are a property of both."""
    from shiftwatch.core.lineage import file_md5

    fit, summary, payload = load_estimator(paths["estimator"])
    made_for = payload["reference"].get("model_md5")
    if made_for != ref["model_md5"]:
        raise ShiftwatchError(
            f"{paths['estimator']}: fitted for the model with md5 {str(made_for)[:12]}, "
            f"not {ref['model_md5'][:12]}; rerun `dvc repro harm`"
        )
    if not paths["finetuned"].exists():
        raise ShiftwatchError(f"{paths['finetuned']}: not found; run `dvc repro finetune` or pass --finetuned")
    if payload["reference"].get("finetuned_md5") != file_md5(paths["finetuned"]):
        raise ShiftwatchError(
            f"{paths['estimator']}: fitted with another fine-tuned model than "
            f"{paths['finetuned']}; rerun `dvc repro harm`"
        )
    return fit, summary, payload


def _same_model(ref: dict, paths: dict) -> str:
    """The model's md5, if it is the one that made the reference: another model's outputs
    and embeddings differ from the reference's even on identical images, so every detector
    on them would alarm (a retrained model with a stale reference)."""
    from shiftwatch.core.lineage import file_md5

    md5, made_by = file_md5(paths["model"]), ref.get("model_md5")
    shown = paths.get("model_uri", paths["model"])
    if made_by is None:
        raise ShiftwatchError(
            f"{paths['reference']}: does not record which model made it (written before "
            "shiftwatch recorded it); rerun `dvc repro reference`"
        )
    if made_by != md5:
        raise ShiftwatchError(
            f"{paths['reference']}: made by the model with md5 {made_by[:12]}, but --model "
            f"{shown} has md5 {md5[:12]}; rerun `dvc repro reference` with this model, or "
            "check with the model that made the reference"
        )
    return md5


def load_network(model_path: Path):
    """(the network, seconds spent importing torch and the model code)."""
    import_started = time.perf_counter()
    from shiftwatch.model.network import load_model

    imports = time.perf_counter() - import_started
    return load_model(model_path), imports


def check_images(
    images: np.ndarray, batch_info: dict, settings, ref: dict, network, paths: dict, progress: bool = False
):
    """The check proper on images already loaded (N, 28, 28) in [0, 1]: the model's outputs,
    the verdict, the class mix and accuracy estimates. Returns (report, html_report.Views);
    the report's "seconds" has predict and detectors."""
    from shiftwatch.detection.verdict import accuracy_report, label_shift_report, run_detectors
    from shiftwatch.model.features import features
    from shiftwatch.model.network import pick_device, predict_with_embeddings

    started = time.perf_counter()
    probabilities, embeddings = predict_with_embeddings(
        network,
        images,
        settings.evaluate.batch_size,
        pick_device(),
        desc="check",
        progress=progress and sys.stderr.isatty(),
        precision=settings.evaluate.precision,
    )
    if embeddings.shape[1] != ref["embeddings"].shape[1]:
        raise ShiftwatchError(
            f"{paths['reference']}: embeddings have {ref['embeddings'].shape[1]} columns "
            f"but the model gives {embeddings.shape[1]}; rerun `dvc repro reference`"
        )
    predicted = time.perf_counter()

    monitor, focus = settings.monitor, settings.shift.label_class
    batch = features(images, probabilities, embeddings)
    verdict = run_detectors(
        _reference_features(ref),
        batch,
        seed=settings.seed,
        alpha=monitor.alpha,
        mmd_permutations=monitor.mmd_permutations,
        mmd_max_per_side=monitor.mmd_max_per_side,
    )
    label_shift = label_shift_report(ref["probabilities"], ref["labels"], probabilities, focus, monitor.trust_tolerance)
    reference_mix = np.bincount(ref["labels"], minlength=NUM_CLASSES) / len(ref["labels"])
    accuracy = accuracy_report(ref["probabilities"], ref["labels"], probabilities)
    found = _estimate(images, batch.pixels, probabilities, settings, ref)
    finished = time.perf_counter()

    from shiftwatch.operations.html_report import SAMPLE_GRID, Views

    views = Views(
        batch_mean_pixel=images.reshape(len(images), -1).mean(axis=1),
        batch_confidence=probabilities.max(axis=1),
        reference_mean_pixel=ref["image_stats"][:, 0],
        reference_confidence=ref["probabilities"].max(axis=1),
        sample_images=images[:SAMPLE_GRID],
    )
    report = _plain(
        {
            "page": "PAGE" if found.harmful else "ok",
            "harmful": int(found.harmful),
            "estimate": {**found.as_dict(), "harm_points": ref["estimator"][2].get("harm_points")},
            "verdict": "ALERT" if verdict["drift"] else "ok",
            "drift": verdict["drift"],
            "alerting": verdict["alerting"],
            "alpha": monitor.alpha,
            "batch": {**batch_info, "images": len(images)},
            "reference": {"path": str(paths["reference"]), "images": len(ref["labels"])},
            "model": paths.get("model_uri", str(paths["model"])),
            "model_md5": ref["model_md5"],
            "tests": verdict["tests"],
            "diagnostics": verdict.get("diagnostics", {}),
            "label_shift": {
                **label_shift,
                "reference": reference_mix.tolist(),
                "focus_class": focus,
                "class_names": list(CLASS_NAMES),
            },
            "accuracy": accuracy,
            "seconds": {"predict": predicted - started, "detectors": finished - predicted},
            "params": settings.flat(*PARAMS_READ),
            "brightness": mean_pixels(images, ref["image_stats"]),
            "remedies": ref["remedies"],
        }
    )
    report["change_words"] = change_summary(report)
    return report, views


def _estimate(images: np.ndarray, pixels: np.ndarray | None, probabilities: np.ndarray, settings, ref: dict):
    """The page's estimate: the fine-tuned model's outputs on the batch, then the estimator
    (`pixels`: the batch's 8-bit pixels, for a fit that reads the border)."""
    from shiftwatch.estimation.accuracy import border_values, estimate
    from shiftwatch.model.network import pick_device, predict_proba

    fit, summary, payload = ref["estimator"]
    aux = predict_proba(
        ref["finetuned_network"],
        images,
        settings.evaluate.batch_size,
        pick_device(),
        progress=False,
        precision=settings.evaluate.precision,
    )
    return estimate(probabilities, aux, summary, fit, float(payload["page_points"]), border_values(fit, pixels))


def load_reference(path: Path) -> dict[str, np.ndarray]:
    """The reference stage's summary of the held-out test set, validated."""
    hint = "run `dvc repro reference` or pass --reference"
    if not path.exists():
        raise ShiftwatchError(f"{path}: not found; {hint}")
    keys = ("probabilities", "embeddings", "image_stats", "labels")
    try:
        with np.load(path, allow_pickle=False) as archive:
            ref = {key: archive[key] for key in (*keys, "pixels")}
            made_by = str(archive["model_md5"]) if "model_md5" in archive.files else None
    except KeyError as err:
        raise ShiftwatchError(f"{path}: no array {err}; it is not a monitor summary; {hint}") from None
    except Exception as err:  # zip, pickle and format errors all mean the same to the user
        raise ShiftwatchError(f"{path}: unreadable or corrupt ({type(err).__name__}); {hint}") from None
    n = len(ref["labels"])
    expected = {"probabilities": (n, NUM_CLASSES), "image_stats": (n, 5), "labels": (n,)}
    for key, shape in expected.items():
        if ref[key].shape != shape:
            raise ShiftwatchError(f"{path}: {key} has shape {ref[key].shape}, expected {shape}; {hint}")
    if ref["embeddings"].ndim != 2 or len(ref["embeddings"]) != n:
        raise ShiftwatchError(f"{path}: embeddings have shape {ref['embeddings'].shape}, expected ({n}, 512); {hint}")
    if n < 2:
        raise ShiftwatchError(f"{path}: holds {n} reference images, need at least 2; {hint}")
    if ref["labels"].dtype.kind not in "iu" or ref["labels"].min() < 0 or ref["labels"].max() >= NUM_CLASSES:
        raise ShiftwatchError(f"{path}: labels must be integers in 0..{NUM_CLASSES - 1}; {hint}")
    missing = sorted(set(range(NUM_CLASSES)) - set(np.unique(ref["labels"]).tolist()))
    if missing:
        raise ShiftwatchError(f"{path}: no reference image of class {missing} (EM needs every class); {hint}")
    if ref["pixels"].dtype != np.uint8 or ref["pixels"].shape != (n, IMAGE_SIZE * IMAGE_SIZE):
        raise ShiftwatchError(
            f"{path}: pixels have shape {ref['pixels'].shape} ({ref['pixels'].dtype}), "
            f"expected ({n}, {IMAGE_SIZE * IMAGE_SIZE}) uint8; {hint}"
        )
    for key in ("probabilities", "embeddings", "image_stats"):
        if not np.isfinite(ref[key]).all():
            raise ShiftwatchError(f"{path}: {key} contains NaN or infinite values; {hint}")
    ref["labels"] = ref["labels"].astype(np.int64)
    ref["model_md5"] = made_by
    return ref


def _reference_features(ref: dict[str, np.ndarray]):
    from shiftwatch.model.features import Features

    return Features(ref["probabilities"], ref["embeddings"], ref["image_stats"], ref["pixels"])


def _project_root() -> Path:
    """The nearest folder at or above the working directory that holds dvc.yaml (else cwd)."""
    from shiftwatch.tracking.store import repo_root

    return repo_root(Path.cwd())


def _plain(tree):
    """numpy scalars -> Python numbers, tuples -> lists: JSON- and MLflow-ready."""
    if isinstance(tree, dict):
        return {str(k): _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_plain(v) for v in tree]
    if isinstance(tree, np.generic):
        return tree.item()
    return tree
