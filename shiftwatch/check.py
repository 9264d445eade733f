"""check: test a new batch of images for distribution shift against the saved reference.

    python -m shiftwatch check BATCH [--reference data/reference/test.npz]
                                     [--model models/resnet18.pt] [--params params.yaml]
                                     [--json OUT.json] [--log] [--quiet]

BATCH is an .npz (key `images`, or its only array) or .npy array of shape (N, H, W) or
(N, H, W, C) with C in 1..4 (RGB(A) is turned to gray with Pillow's luma weights), uint8
(0..255) or float in [0, 1]; or a folder of PNG/JPEG files (any size and mode: Pillow turns
each into 8-bit gray). Images not 28x28 are resized with antialiased bilinear interpolation.

The reference is the summary the `reference` stage saved for the held-out test set (model
outputs, embeddings, image statistics, labels), so the reference images are never reloaded:
the batch goes through the model once and the same detectors as the `monitor` stage (without
its image-level MMD and domain classifier) give one Holm-corrected verdict. No labels are
needed: class proportions (BBSE, EM) and accuracy (ATC, average confidence) are estimates.

Exit status: 0 no alert, 1 the combined verdict alerts, 2 bad input (one line on stderr,
nothing written). A --json path that cannot be written or a --log that cannot reach MLflow
also gives 2 (one line on stderr), after the report is printed: a gate never passes silently.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from shiftwatch import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES, ShiftwatchError

HELP = "check a batch of images for distribution shift against the saved reference"
DEFAULT_REFERENCE = "data/reference/test.npz"
DEFAULT_MODEL = "models/resnet18.pt"
DEFAULT_PARAMS = "params.yaml"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The params `check` reads, logged with --log (the monitor stage's detector settings).
PARAMS_READ = ("seed", "shift.label_class", "evaluate.batch_size", "evaluate.precision",
               "monitor.alpha",
               "monitor.mmd_permutations", "monitor.mmd_max_per_side", "monitor.trust_tolerance")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, what Pillow's convert("L") uses
_CHUNK = 1000  # images converted / resized at a time, bounds the float32 copies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("batch", metavar="BATCH", type=Path,
                        help=".npz / .npy array of images, or a folder of PNG/JPEG files")
    parser.add_argument("--reference", type=Path, default=None,
                        help=f"reference summary written by the reference stage "
                             f"(default: <repo root>/{DEFAULT_REFERENCE})")
    parser.add_argument("--model", default=None, metavar="PATH|models:/NAME@ALIAS",
                        help=f"ResNet-18 state_dict (default: <repo root>/{DEFAULT_MODEL}), or a "
                             "registered model in the MLflow store, e.g. models:/shiftwatch-resnet18@champion "
                             "(downloaded once per version); the reference must have been made by it")
    parser.add_argument("--params", type=Path, default=None,
                        help=f"params file (default: <repo root>/{DEFAULT_PARAMS})")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json",
                        help="also write the report as JSON (atomically); `--json -` writes it to "
                             "standard output instead of the human report")
    parser.add_argument("--html", type=Path, default=None, metavar="OUT.html",
                        help="also write a self-contained HTML report (verdict, p-values, histograms, "
                             "class mix, accuracy estimate, sample images)")
    parser.add_argument("--log", action="store_true",
                        help="log params, metrics and the JSON report (and the HTML report with its "
                             "figures) as an MLflow run (MLFLOW_TRACKING_URI, else <repo root>/mlflow.db)")
    parser.add_argument("--time", default=None, metavar="ISO-8601",
                        help="when the batch was taken, e.g. 2026-11-29T14:00 (default: the batch "
                             "file's or folder's modification time); the x axis of `shiftwatch timeline`")
    parser.add_argument("--server", default=None, metavar="URL",
                        help="send the batch to a running `shiftwatch serve` (e.g. http://127.0.0.1:8765) "
                             "instead of loading torch and the model here: the same report, in ~1 s")
    parser.add_argument("--quiet", action="store_true", help="print nothing; use the exit status")


def run(args: argparse.Namespace) -> int:
    """The `check` command: 0 no alert, 1 alert, 2 bad input (one line on stderr)."""
    to_stdout = args.json is not None and str(args.json) == "-"
    quiet = args.quiet or to_stdout  # standard output carries the JSON alone
    try:
        for option, path in (("--json", None if to_stdout else args.json), ("--html", args.html)):
            if path is not None and path.is_dir():
                raise ShiftwatchError(f"{option} {path}: is a folder; give a file name such as "
                                      f"{path / ('check.' + option[2:])}")
        taken = batch_time(args.batch, args.time)
        if args.server:
            report, views = _check_on_server(args.server, args.batch, want_views=args.html is not None)
        else:
            report, views = check_batch(args.batch, reference=args.reference, model=args.model,
                                        params=args.params, progress=not quiet)
        report["batch"]["time"] = taken
    except ShiftwatchError as err:
        print(f"shiftwatch check: error: {err}", file=sys.stderr)
        return 2
    if not quiet:
        print(format_report(report))
    pictures = None
    try:
        if to_stdout:
            json.dump(report, sys.stdout, indent=2)
            sys.stdout.write("\n")
        elif args.json is not None:
            from shiftwatch.io import write_json

            write_json(args.json, report)
        if args.html is not None:
            from shiftwatch import html_report

            pictures = html_report.write(args.html, report, views)
    except OSError as err:
        print(f"shiftwatch check: error: {err.filename}: cannot write ({err.strerror}); "
              f"pick a writable path", file=sys.stderr)
        return 2
    if args.log:
        try:
            run_id = log_check(report, report["params"], html=args.html, pictures=pictures)
        except Exception as err:  # MlflowException, sqlite errors: the check itself is done
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            print(f"shiftwatch check: error: --log: could not log to MLflow ({first}); "
                  f"check MLFLOW_TRACKING_URI", file=sys.stderr)
            return 2
        if not quiet:
            print(f"logged: MLflow run {run_id}")
    return int(report["drift"])


def _check_on_server(url: str, batch: Path, want_views: bool):
    """The batch is read here and checked by `shiftwatch serve` at `url` (no torch imported)."""
    from shiftwatch.serve import request_check

    started = time.perf_counter()
    images, batch_info = load_batch(batch)
    loaded = time.perf_counter()
    report, views = request_check(url, images, {"path": str(batch), **batch_info}, views=want_views)
    report["seconds"].update({"load": loaded - started, "imports": 0.0, "model": 0.0,
                              "total": time.perf_counter() - started})
    report["server"] = url
    if views is None:
        return report, None
    from shiftwatch.html_report import Views

    return report, Views(**{name: np.asarray(values, dtype=float) for name, values in views.items()})


def batch_time(batch: Path, given: str | None) -> str:
    """When the batch was taken, ISO 8601 with a UTC offset: `given` (--time; a time without
    an offset is taken as UTC), else the modification time of the batch file or folder."""
    if given is None:
        if not batch.exists():
            raise ShiftwatchError(f"{batch}: not found; pass a .npz/.npy file or a folder of images")
        return datetime.fromtimestamp(batch.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return parse_time(given, "--time").isoformat(timespec="seconds")


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time from the command line (`option` names it in the error); a time
    without a UTC offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ShiftwatchError(f"{option} {text!r}: not an ISO 8601 time; use e.g. 2026-11-29T14:00 "
                              "or 2026-11-29T14:00+01:00") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# ---------------------------------------------------------------- the check itself

def check_batch(batch: Path, *, reference: Path | None = None, model: Path | None = None,
                params: Path | None = None, progress: bool = False):
    """Load everything, validate it, and check the batch: (report, a JSON-ready dict; the
    per-image numbers the HTML report draws, html_report.Views). Every input problem raises
    ShiftwatchError before the model runs or anything is written."""
    started = time.perf_counter()
    settings, ref, paths = load_inputs(reference, model, params)
    images, batch_info = load_batch(batch)
    loaded = time.perf_counter()
    network, imports = load_network(paths["model"])
    model_loaded = time.perf_counter()
    report, views = check_images(images, {"path": str(batch), **batch_info}, settings, ref, network, paths,
                                 progress=progress)
    report["seconds"].update({"load": loaded - started, "imports": imports,
                              "model": model_loaded - loaded - imports, "total": time.perf_counter() - started})
    return report, views


def load_inputs(reference: Path | None, model: str | Path | None, params: Path | None):
    """(settings, reference summary, {"reference", "model", "params"} paths, plus "model_uri"
    for a registry model), validated; the model file is checked to exist and to be the one
    the reference was made with (loading it needs torch: `load_network`)."""
    root = _project_root()
    paths = {"reference": reference if reference is not None else root / DEFAULT_REFERENCE,
             "model": Path(model) if model is not None else root / DEFAULT_MODEL,
             "params": params if params is not None else root / DEFAULT_PARAMS}
    from shiftwatch.params import load_params

    if not paths["params"].exists():
        raise ShiftwatchError(f"{paths['params']}: not found; run inside the repository (it reads "
                              f"<repo root>/params.yaml) or pass --params")
    settings = load_params(paths["params"])
    ref = load_reference(paths["reference"])
    from shiftwatch.registry import is_model_uri

    if model is not None and is_model_uri(str(model)):
        from shiftwatch.registry import fetch_model
        from shiftwatch.tracking import tracking_uri

        paths["model_uri"] = str(model)
        paths["model"], _ = fetch_model(str(model), tracking_uri())
    if not paths["model"].exists():  # before the (slower) torch import
        raise ShiftwatchError(f"{paths['model']}: not found; run `dvc repro train` or pass --model")
    ref["model_md5"] = _same_model(ref, paths)
    return settings, ref, paths


def _same_model(ref: dict, paths: dict) -> str:
    """The model's md5, if it is the one that made the reference: another model's outputs
    and embeddings differ from the reference's even on identical images, so every detector
    on them would alarm (a retrained model with a stale reference)."""
    from shiftwatch.lineage import file_md5

    md5, made_by = file_md5(paths["model"]), ref.get("model_md5")
    shown = paths.get("model_uri", paths["model"])
    if made_by is None:
        raise ShiftwatchError(f"{paths['reference']}: does not record which model made it (written before "
                              "shiftwatch recorded it); rerun `dvc repro reference`")
    if made_by != md5:
        raise ShiftwatchError(f"{paths['reference']}: made by the model with md5 {made_by[:12]}, but --model "
                              f"{shown} has md5 {md5[:12]}; rerun `dvc repro reference` with this model, or "
                              "check with the model that made the reference")
    return md5


def load_network(model_path: Path):
    """(the network, seconds spent importing torch and the model code)."""
    import_started = time.perf_counter()
    from shiftwatch.model import load_model
    imports = time.perf_counter() - import_started
    return load_model(model_path), imports


def check_images(images: np.ndarray, batch_info: dict, settings, ref: dict, network, paths: dict,
                 progress: bool = False):
    """The check proper on images already loaded (N, 28, 28) in [0, 1]: the model's outputs,
    the verdict, the class mix and accuracy estimates. Returns (report, html_report.Views);
    the report's "seconds" has predict and detectors."""
    from shiftwatch.features import features
    from shiftwatch.model import pick_device, predict_with_embeddings
    from shiftwatch.monitor import accuracy_report, label_shift_report, run_detectors

    started = time.perf_counter()
    probabilities, embeddings = predict_with_embeddings(
        network, images, settings.evaluate.batch_size, pick_device(), desc="check",
        progress=progress and sys.stderr.isatty(), precision=settings.evaluate.precision)
    if embeddings.shape[1] != ref["embeddings"].shape[1]:
        raise ShiftwatchError(f"{paths['reference']}: embeddings have {ref['embeddings'].shape[1]} columns "
                              f"but the model gives {embeddings.shape[1]}; rerun `dvc repro reference`")
    predicted = time.perf_counter()

    monitor, focus = settings.monitor, settings.shift.label_class
    verdict = run_detectors(_reference_features(ref), features(images, probabilities, embeddings),
                            seed=settings.seed, alpha=monitor.alpha,
                            mmd_permutations=monitor.mmd_permutations,
                            mmd_max_per_side=monitor.mmd_max_per_side)
    label_shift = label_shift_report(ref["probabilities"], ref["labels"], probabilities, focus,
                                     monitor.trust_tolerance)
    reference_mix = np.bincount(ref["labels"], minlength=NUM_CLASSES) / len(ref["labels"])
    accuracy = accuracy_report(ref["probabilities"], ref["labels"], probabilities)
    finished = time.perf_counter()

    from shiftwatch.html_report import SAMPLE_GRID, Views

    views = Views(batch_mean_pixel=images.reshape(len(images), -1).mean(axis=1),
                  batch_confidence=probabilities.max(axis=1),
                  reference_mean_pixel=ref["image_stats"][:, 0],
                  reference_confidence=ref["probabilities"].max(axis=1),
                  sample_images=images[:SAMPLE_GRID])
    return _plain({
        "verdict": "ALERT" if verdict["drift"] else "ok",
        "drift": verdict["drift"],
        "alerting": verdict["alerting"],
        "alpha": monitor.alpha,
        "batch": {**batch_info, "images": len(images)},
        "reference": {"path": str(paths["reference"]), "images": len(ref["labels"])},
        "model": paths.get("model_uri", str(paths["model"])),
        "model_md5": ref["model_md5"],
        "tests": verdict["tests"],
        "label_shift": {**label_shift, "reference": reference_mix.tolist(), "focus_class": focus,
                        "class_names": list(CLASS_NAMES)},
        "accuracy": accuracy,
        "seconds": {"predict": predicted - started, "detectors": finished - predicted},
        "params": settings.flat(*PARAMS_READ),
    }), views


def load_reference(path: Path) -> dict[str, np.ndarray]:
    """The reference stage's summary of the held-out test set, validated."""
    hint = "run `dvc repro reference` or pass --reference"
    if not path.exists():
        raise ShiftwatchError(f"{path}: not found; {hint}")
    keys = ("probabilities", "embeddings", "image_stats", "labels")
    try:
        with np.load(path, allow_pickle=False) as archive:
            ref = {key: archive[key] for key in keys}
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
        raise ShiftwatchError(f"{path}: embeddings have shape {ref['embeddings'].shape}, "
                              f"expected ({n}, 512); {hint}")
    if n < 2:
        raise ShiftwatchError(f"{path}: holds {n} reference images, need at least 2; {hint}")
    if ref["labels"].dtype.kind not in "iu" or ref["labels"].min() < 0 \
            or ref["labels"].max() >= NUM_CLASSES:
        raise ShiftwatchError(f"{path}: labels must be integers in 0..{NUM_CLASSES - 1}; {hint}")
    missing = sorted(set(range(NUM_CLASSES)) - set(np.unique(ref["labels"]).tolist()))
    if missing:
        raise ShiftwatchError(f"{path}: no reference image of class {missing} (EM needs every "
                              f"class); {hint}")
    for key in ("probabilities", "embeddings", "image_stats"):
        if not np.isfinite(ref[key]).all():
            raise ShiftwatchError(f"{path}: {key} contains NaN or infinite values; {hint}")
    ref["labels"] = ref["labels"].astype(np.int64)
    ref["model_md5"] = made_by
    return ref


def _reference_features(ref: dict[str, np.ndarray]):
    from shiftwatch.features import Features

    return Features(ref["probabilities"], ref["embeddings"], ref["image_stats"])


# ---------------------------------------------------------------- reading a batch

def load_batch(path: Path) -> tuple[np.ndarray, dict]:
    """Images as float32 (N, 28, 28) in [0, 1], and facts about the input for the report.

    Raises ShiftwatchError naming the problem and the fix for: a missing path, an unknown
    file type, an unreadable file, an empty batch (or fewer than 2 images), a wrong number of
    dimensions or channels, a dtype other than uint8 / float, NaN or inf, floats outside [0, 1].
    """
    if not path.exists():
        raise ShiftwatchError(f"{path}: not found; pass an .npz / .npy file or a folder of PNG/JPEG images")
    if path.is_dir():
        raw, info = _read_folder(path)
    elif path.suffix.lower() in (".npz", ".npy"):
        raw, info = _read_array(path), {"source": path.suffix.lower()[1:]}
    else:
        raise ShiftwatchError(f"{path}: unknown batch type '{path.suffix}'; pass an .npz / .npy "
                              f"array or a folder of PNG/JPEG images")
    images = _as_gray_28(raw, str(path))
    if info["source"] != "folder":
        info.update(input_shape=list(raw.shape), input_dtype=str(raw.dtype),
                    input_sizes=[f"{raw.shape[2]}x{raw.shape[1]}"],
                    resized=raw.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE))
    return images, info


def _read_array(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if "images" in names:
                return archive["images"]
            if len(names) == 1:
                return archive[names[0]]
    except Exception as err:  # zip, pickle (object arrays) and format errors
        raise ShiftwatchError(f"{path}: unreadable ({type(err).__name__}); save it with "
                              f"np.save / np.savez(images=...) from a numeric array") from None
    raise ShiftwatchError(f"{path}: holds {len(names)} arrays ({', '.join(names) or 'none'}) and "
                          f"none named 'images'; save the images under the key 'images'")


def _read_folder(path: Path) -> tuple[np.ndarray, dict]:
    """Every PNG/JPEG directly in `path` (sorted by name), as 8-bit gray 28x28 (Pillow)."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    chosen = set(files)
    ignored = sum(1 for p in path.iterdir() if p.is_file() and p not in chosen)
    if not files:
        raise ShiftwatchError(f"{path}: no PNG/JPEG files in this folder; put the images directly "
                              f"in it (subfolders are not read)")
    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    sizes: dict[str, None] = {}  # ordered set
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                image.load()
                sizes[f"{image.width}x{image.height}"] = None
                gray = _pil_gray(image)
                if gray.size != (IMAGE_SIZE, IMAGE_SIZE):  # Pillow's resize antialiases
                    gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
                images[i] = np.asarray(gray)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            kind = "not an image" if isinstance(err, UnidentifiedImageError) else type(err).__name__
            raise ShiftwatchError(f"{file}: unreadable ({kind}); remove it from the folder or "
                                  f"replace it with a valid PNG/JPEG") from None
    return images, {"source": "folder", "files_ignored": ignored, "input_sizes": list(sizes),
                    "resized": list(sizes) != [f"{IMAGE_SIZE}x{IMAGE_SIZE}"]}


def _pil_gray(image):
    """8-bit gray; 16-bit gray PNGs are scaled down (Pillow's convert would clip them)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return Image.fromarray(np.rint(np.asarray(image, dtype=np.float64) / 257).astype(np.uint8))
    return image.convert("L")


def _as_gray_28(raw: np.ndarray, origin: str) -> np.ndarray:
    """uint8 / float array (N, H, W[, C]) -> float32 (N, 28, 28) in [0, 1]."""
    shape = raw.shape
    if raw.ndim not in (3, 4):
        hint = "add a batch axis: images[None]" if raw.ndim == 2 else \
            "expected (N, H, W) or (N, H, W, C)"
        raise ShiftwatchError(f"{origin}: images have shape {shape} ({raw.ndim} dimensions); {hint}")
    if raw.ndim == 4 and shape[3] not in (1, 2, 3, 4):
        hint = ("channels-first? transpose to (N, H, W, C): images.transpose(0, 2, 3, 1)"
                if shape[1] in (1, 3, 4) else "the last axis must be 1 (gray), 2, 3 (RGB) or 4 (RGBA) channels")
        raise ShiftwatchError(f"{origin}: images have shape {shape}; {hint}")
    if 0 in shape:
        raise ShiftwatchError(f"{origin}: the batch is empty (shape {shape}); pass at least 2 images")
    if len(raw) < 2:
        raise ShiftwatchError(f"{origin}: a single image; the two-sample tests need at least 2 "
                              f"(and have little power below ~100)")
    if raw.dtype == np.uint8:
        scale = 1 / 255
    elif raw.dtype.kind == "f":
        scale = None
        if not np.isfinite(raw).all():
            raise ShiftwatchError(f"{origin}: {np.count_nonzero(~np.isfinite(raw))} pixel values are "
                                  f"NaN or infinite; fix or drop those images")
        low, high = float(raw.min()), float(raw.max())
        if low < 0 or high > 1:
            raise ShiftwatchError(f"{origin}: float pixel values must lie in [0, 1], found "
                                  f"{low:.4g}..{high:.4g}; divide by 255 or save as uint8")
    else:
        raise ShiftwatchError(f"{origin}: dtype {raw.dtype} is not supported; save uint8 (0..255) "
                              f"or float in [0, 1]")
    chunks = [_chunk_to_28(raw[start:start + _CHUNK], scale)
              for start in range(0, len(raw), _CHUNK)]
    return np.concatenate(chunks)


def _chunk_to_28(chunk: np.ndarray, scale: float | None) -> np.ndarray:
    images = chunk.astype(np.float32)
    if scale is not None:
        images *= scale
    if images.ndim == 4:
        channels = images.shape[3]
        images = images[..., 0] if channels <= 2 else \
            np.tensordot(images[..., :3], _LUMA.astype(np.float32), axes=([3], [0]))
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        import torch
        import torch.nn.functional as F

        resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1),
                                size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                                align_corners=False, antialias=True)
        images = resized.squeeze(1).numpy()
    return np.clip(images, 0.0, 1.0, out=images).astype(np.float32, copy=False)


# ---------------------------------------------------------------- output

def format_report(report: dict) -> str:
    """The human report: detectors, verdict, estimated class mix and accuracy, wall time."""
    batch, shift, acc = report["batch"], report["label_shift"], report["accuracy"]
    focus = shift["focus_class"]
    sizes = batch["input_sizes"]
    origin = ", ".join(sizes[:3]) + (f" and {len(sizes) - 3} more sizes" if len(sizes) > 3 else "")
    lines = [f"batch      {batch['path']}: {batch['images']} images "
             f"({origin}{', resized to 28x28' if batch['resized'] else ''}"
             f"{_ignored(batch)}) vs {report['reference']['images']} reference images",
             f"model      {report['model']} (md5 {report.get('model_md5', '?')[:12]}, the reference's)",
             "",
             f"{'detector':<15} {'statistic':>10} {'p-value':>10} {'Holm p':>10}"]
    for name, test in report["tests"].items():
        flag = "ALERT" if name in report["alerting"] else "ok"
        lines.append(f"{name:<15} {test['statistic']:>10.4f} {_p(test['pvalue'])} "
                     f"{_p(test['adjusted_pvalue'])}  {flag}")
    verdict = (f"ALERT: shift detected by {', '.join(report['alerting'])}" if report["drift"]
               else "ok: no shift detected")
    lines += [f"verdict    {verdict} (Holm over {len(report['tests'])} detectors, "
              f"alpha {report['alpha']})", "",
              f"{'class mix (estimated)':<24} {'BBSE':>6} {'EM':>6} {'reference':>9}"]
    for k, name in enumerate(shift["class_names"]):
        mark = "*" if k == focus else " "
        lines.append(f"{mark} {k} {name:<20} {shift['bbse'][k]:>6.3f} {shift['em'][k]:>6.3f} "
                     f"{shift['reference'][k]:>9.3f}{'  <- focus (shift.label_class)' if k == focus else ''}")
    trust = ("UNTRUSTWORTHY" + (" (BBSE needs negative weights)" if shift["bbse_negative_weights"] else "")
             if shift["untrustworthy"] else "trustworthy")
    lines += [f"estimate   {trust}: BBSE vs EM total variation {shift['tv_bbse_em']:.3f} "
              f"(tolerance {report['params']['monitor.trust_tolerance']})",
              f"accuracy   estimated {acc['atc']:.3f} (ATC), {acc['average_confidence']:.3f} "
              f"(average confidence)",
              f"time       {report['seconds']['total']:.2f} s (imports {report['seconds']['imports']:.2f}, "
              f"forward pass {report['seconds']['predict']:.2f}, detectors {report['seconds']['detectors']:.2f})"]
    return "\n".join(lines)


def _p(value: float) -> str:
    return f"{value:>10.4f}" if value >= 1e-4 else f"{value:>10.1e}"


def _ignored(batch: dict) -> str:
    ignored = batch.get("files_ignored", 0)
    return f", {ignored} other files ignored" if ignored else ""


def log_check(report: dict, params: dict[str, object], html: Path | None = None,
              pictures: dict[str, bytes] | None = None) -> str:
    """One MLflow run (tags dvc.stage = shiftwatch.role = "check") in the project's store
    with the params `check` read, every number of the report as a metric (check.<path>, the
    class mix as check.label_shift.<method>.class_<k>), the report as check.json, and the
    HTML report (`html`) with its figures (`pictures`, PNG bytes by name) when given."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from shiftwatch.tracking import _experiment_id, _retry, dvc_tags, flatten_numbers, tracking_uri

    uri = tracking_uri()
    client = MlflowClient(uri)
    experiment_id = _retry(lambda: _experiment_id(client, uri))
    tags = {**dvc_tags("check"), "shiftwatch.role": "check", "shiftwatch.verdict": report["verdict"],
            "shiftwatch.batch": report["batch"]["path"], "shiftwatch.reference": report["reference"]["path"],
            "shiftwatch.model": report["model"], "shiftwatch.model_md5": report.get("model_md5", ""),
            "shiftwatch.batch_time": report["batch"].get("time", "")}
    run = _retry(lambda: client.create_run(experiment_id, run_name=f"check {Path(report['batch']['path']).name}",
                                           tags=tags))
    run_id = run.info.run_id
    mixes = {method: {f"class_{k}": share for k, share in enumerate(report["label_shift"][method])}
             for method in ("bbse", "em", "reference")}
    numbers = flatten_numbers({key: report[key] for key in ("drift", "tests", "accuracy", "seconds")},
                              "check")
    numbers.update(flatten_numbers({"label_shift": {**report["label_shift"], **mixes}}, "check"))
    numbers["check.batch.images"] = report["batch"]["images"]
    if report["batch"].get("time"):
        numbers["check.batch.time"] = datetime.fromisoformat(report["batch"]["time"]).timestamp()
    now = int(time.time() * 1000)
    status = "FAILED"
    try:
        _retry(lambda: client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in numbers.items()],
                                        params=[Param(k, str(v)) for k, v in params.items()]))
        client.log_dict(run_id, report, "check.json")
        _retry(lambda: client.log_inputs(run_id, _lineage(report)))
        if html is not None:
            client.log_artifact(run_id, str(html))
        for name, png in (pictures or {}).items():
            client.log_image(run_id, _decoded(png), f"figures/{name}.png")
        status = "FINISHED"
    finally:
        _retry(lambda: client.set_terminated(run_id, status))
    return run_id


def _lineage(report: dict) -> list:
    """The batch and the reference as MLflow dataset inputs, with their md5s as digests."""
    from shiftwatch.lineage import md5_of
    from shiftwatch.registry import dataset_input

    return [dataset_input(report[key]["path"], md5_of(report[key]["path"]), context)
            for key, context in (("batch", "check"), ("reference", "reference"))
            if Path(report[key]["path"]).exists()]


# ---------------------------------------------------------------- helpers

def _project_root() -> Path:
    """The nearest folder at or above the working directory that holds dvc.yaml (else cwd)."""
    from shiftwatch.tracking import repo_root

    return repo_root(Path.cwd())


def _decoded(png: bytes):
    """PNG bytes -> an RGB(A) array, what MlflowClient.log_image takes."""
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)))


def _plain(tree):
    """numpy scalars -> Python numbers, tuples -> lists: JSON- and MLflow-ready."""
    if isinstance(tree, dict):
        return {str(k): _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_plain(v) for v in tree]
    if isinstance(tree, np.generic):
        return tree.item()
    return tree
