"""What the monitors look at, computed once per image: the model's softmax outputs and
penultimate-layer embeddings, and cheap per-image statistics that catch what the model ignores.

`model_features` runs the network (the `reference` and `evaluate` stages, `shiftwatch check`);
everything downstream (`monitor`, `power`, `mitigate`) reads the saved arrays, so a shift
experiment runs the network only on the images the shift changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shiftwatch import ShiftwatchError
from shiftwatch.core.io import atomic_path, rows_matching
from shiftwatch.detection.image_stats import pixel_quantiles, zero_fraction
from shiftwatch.model import FINETUNED_MODEL


@dataclass(frozen=True)
class Features:
    """Per-image views of one set (the views detectors consume, see
    shiftwatch.detection.registry.VIEWS): probabilities (N, 10), embeddings (N, 512), image
    statistics (N, 5): mean pixel, share of exactly-zero pixels, 10/50/90 % pixel quantiles;
    and the pixels themselves, 8-bit (N, 784) uint8 (None where a set was saved without).
    The model-free views of `detect` have no probabilities or embeddings (None)."""

    probabilities: np.ndarray | None
    embeddings: np.ndarray | None
    image_stats: np.ndarray
    pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image_stats)

    def subset(self, rows: np.ndarray) -> Features:
        return Features(
            _rows(self.probabilities, rows),
            _rows(self.embeddings, rows),
            self.image_stats[rows],
            _rows(self.pixels, rows),
        )

    @staticmethod
    def concatenate(views) -> Features:
        """The rows of several views, one after the other."""
        views = list(views)
        fields = [
            np.concatenate([getattr(v, field) for v in views])
            for field in ("probabilities", "embeddings", "image_stats")
        ]
        pixels = None if any(v.pixels is None for v in views) else np.concatenate([v.pixels for v in views])
        return Features(fields[0], fields[1], fields[2], pixels)


def _rows(view: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if view is None else view[rows]


def save_features(
    path: str | Path,
    view: Features,
    labels: np.ndarray,
    source_index: np.ndarray | None = None,
    model_md5: str | None = None,
) -> None:
    """A set's Features as computed once by `reference` / `evaluate`, reused by `monitor`,
    `power`, `mitigate` and `shiftwatch check`. Labels are stored to build the evaluation
    streams and score remedies, never to detect; source indices to find subsets (b_label);
    the md5 of the model's state_dict so that `check` never pairs it with another model."""
    if view.probabilities is None or view.embeddings is None:
        raise ShiftwatchError(f"{path}: features without the model's views; compute them with the model first")
    index = np.arange(len(labels)) if source_index is None else source_index
    optional = {} if model_md5 is None else {"model_md5": np.array(model_md5)}
    if view.pixels is not None:
        optional["pixels"] = view.pixels
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            probabilities=view.probabilities,
            embeddings=view.embeddings,
            image_stats=view.image_stats,
            labels=labels,
            source_index=index,
            **optional,  # type: ignore[arg-type]  # numpy's stub types **kwargs as allow_pickle
        )


def load_features(path: str | Path, with_index: bool = False):
    """(Features, labels), or (Features, labels, source_index) `with_index`, as saved by
    `save_features`; a clear error if missing or corrupt."""
    try:
        with np.load(path) as archive:
            pixels = archive["pixels"] if "pixels" in archive.files else None
            loaded = (
                Features(archive["probabilities"], archive["embeddings"], archive["image_stats"], pixels),
                archive["labels"],
            )
            return (*loaded, archive["source_index"]) if with_index else loaded
    except FileNotFoundError:
        raise ShiftwatchError(f"{path}: not found; run `dvc repro`") from None
    except Exception as err:  # zip, pickle and key errors mean the same to the user
        raise ShiftwatchError(
            f"{path}: unreadable or corrupt ({type(err).__name__}); run `dvc repro --force` on the stage that writes it"
        ) from None


def load_view(path: str | Path) -> tuple[Features, np.ndarray]:
    """(Features, source_index) of a saved set: what `deployment_views` takes."""
    view, _, source_index = load_features(path, with_index=True)
    return view, source_index


def deployment_views(
    domain_b: tuple[Features, np.ndarray], b_covariate: tuple[Features, np.ndarray], sets: dict
) -> dict[str, Features]:
    """Features of the four deployment sets from the two the model has seen: b_raw is domain B
    (computed once by `reference`), b_label a subset of it, b_shift a subset of b_covariate.

    `domain_b` and `b_covariate` are (Features, source_index); `sets` maps each deployment set's
    name to its ImageSet (only its source_index is read), so the rows line up with its labels.
    """
    parents = {"b_raw": domain_b, "b_label": domain_b, "b_covariate": b_covariate, "b_shift": b_covariate}
    return {
        name: parents[name][0].subset(rows_matching(image_set.source_index, parents[name][1]))
        for name, image_set in sets.items()
    }


def finetuned_outputs(sets: dict, batch: int, device, precision: str) -> dict[str, np.ndarray]:
    """The fine-tuned model's softmax outputs per shifted set (`sets`: ImageSets by name): b_label
    from its outputs on domain B (`finetune`), b_covariate through the network, b_shift as rows
    of b_covariate. `monitor` (the page's estimate) and `mitigate` (the remedy) read them."""
    from shiftwatch.core.io import load_predictions
    from shiftwatch.model.network import load_model, predict_proba

    on_b = load_predictions("data/finetuned/domain_b.npz", hint="run `dvc repro finetune`")
    covariate = predict_proba(
        load_model(FINETUNED_MODEL),
        sets["b_covariate"].images,
        batch,
        device,
        desc="fine-tuned model b_covariate",
        precision=precision,
    )
    cov_index = sets["b_covariate"].source_index
    return {
        "b_label": on_b.probabilities[rows_matching(sets["b_label"].source_index, on_b.source_index)],
        "b_covariate": covariate,
        "b_shift": covariate[rows_matching(sets["b_shift"].source_index, cov_index)],
    }


def image_statistics(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1)
    return np.column_stack([flat.mean(axis=1), zero_fraction(images), pixel_quantiles(images)])


def pixels_8bit(images: np.ndarray) -> np.ndarray:
    """(N, H*W) uint8: images in [0, 1] as a stored image holds them (rounded to 1/255)."""
    return np.rint(np.clip(images.reshape(len(images), -1), 0, 1) * 255).astype(np.uint8)


def image_features(images: np.ndarray) -> Features:
    """The model-free views only (image statistics, pixels): what `detect` compares."""
    return Features(None, None, image_statistics(images), pixels_8bit(images))


def features(images: np.ndarray, probabilities: np.ndarray, embeddings: np.ndarray) -> Features:
    return Features(probabilities, embeddings, image_statistics(images), pixels_8bit(images))


def model_features(
    model, images: np.ndarray, batch_size: int, device, precision: str = "auto", desc: str = "embed"
) -> Features:
    """The model's view of `images` plus their image statistics, in one forward pass."""
    from shiftwatch.model.network import predict_with_embeddings  # torch only where the network runs

    probabilities, embeddings = predict_with_embeddings(
        model, images, batch_size, device, desc=desc, precision=precision
    )
    return features(images, probabilities, embeddings)
