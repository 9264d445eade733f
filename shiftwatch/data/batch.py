"""Reading a batch of images for `shiftwatch check`: an .npz / .npy array or a folder of
PNG/JPEG files, validated, as float32 (N, 28, 28) in [0, 1].

Arrays are (N, H, W) or (N, H, W, C) with C in 1..4 (RGB(A) is turned to gray with Pillow's luma
weights), uint8 (0..255) or float in [0, 1]; folders hold images of any size and mode (Pillow
turns each into 8-bit gray). Images not 28x28 are resized with antialiased bilinear interpolation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shiftwatch import IMAGE_SIZE, ShiftwatchError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, what Pillow's convert("L") uses
_CHUNK = 1000  # images converted / resized at a time, bounds the float32 copies


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
        raise ShiftwatchError(
            f"{path}: unknown batch type '{path.suffix}'; pass an .npz / .npy array or a folder of PNG/JPEG images"
        )
    images = as_images(raw, str(path))
    if info["source"] != "folder":
        info.update(
            input_shape=list(raw.shape),
            input_dtype=str(raw.dtype),
            input_sizes=[f"{raw.shape[2]}x{raw.shape[1]}"],
            resized=raw.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE),
        )
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
        raise ShiftwatchError(
            f"{path}: unreadable ({type(err).__name__}); save it with "
            f"np.save / np.savez(images=...) from a numeric array"
        ) from None
    raise ShiftwatchError(
        f"{path}: holds {len(names)} arrays ({', '.join(names) or 'none'}) and "
        f"none named 'images'; save the images under the key 'images'"
    )


def _read_folder(path: Path) -> tuple[np.ndarray, dict]:
    """Every PNG/JPEG directly in `path` (sorted by name), as 8-bit gray 28x28 (Pillow)."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(
        p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    chosen = set(files)
    ignored = sum(1 for p in path.iterdir() if p.is_file() and p not in chosen)
    if not files:
        raise ShiftwatchError(
            f"{path}: no PNG/JPEG files in this folder; put the images directly in it (subfolders are not read)"
        )
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
            raise ShiftwatchError(
                f"{file}: unreadable ({kind}); remove it from the folder or replace it with a valid PNG/JPEG"
            ) from None
    return images, {
        "source": "folder",
        "files_ignored": ignored,
        "input_sizes": list(sizes),
        "resized": list(sizes) != [f"{IMAGE_SIZE}x{IMAGE_SIZE}"],
    }


def _pil_gray(image):
    """8-bit gray; 16-bit gray PNGs are scaled down (Pillow's convert would clip them)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return Image.fromarray(np.rint(np.asarray(image, dtype=np.float64) / 257).astype(np.uint8))
    return image.convert("L")


def as_images(raw: np.ndarray, origin: str) -> np.ndarray:
    """uint8 / float array (N, H, W[, C]) -> float32 (N, 28, 28) in [0, 1]; every rule on a batch,
    N >= 2 included, as a ShiftwatchError naming `origin`. The one validation a local check
    (load_batch) and `shiftwatch serve` (a request body) share, so they refuse alike."""
    shape = raw.shape
    if raw.ndim not in (3, 4):
        hint = "add a batch axis: images[None]" if raw.ndim == 2 else "expected (N, H, W) or (N, H, W, C)"
        raise ShiftwatchError(f"{origin}: images have shape {shape} ({raw.ndim} dimensions); {hint}")
    if raw.ndim == 4 and shape[3] not in (1, 2, 3, 4):
        hint = (
            "channels-first? transpose to (N, H, W, C): images.transpose(0, 2, 3, 1)"
            if shape[1] in (1, 3, 4)
            else "the last axis must be 1 (gray), 2, 3 (RGB) or 4 (RGBA) channels"
        )
        raise ShiftwatchError(f"{origin}: images have shape {shape}; {hint}")
    if 0 in shape:
        raise ShiftwatchError(f"{origin}: the batch is empty (shape {shape}); pass at least 2 images")
    if len(raw) < 2:
        raise ShiftwatchError(
            f"{origin}: a single image; the two-sample tests need at least 2 (and have little power below ~100)"
        )
    if raw.dtype == np.uint8:
        scale = 1 / 255
    elif raw.dtype.kind == "f":
        scale = None
        if not np.isfinite(raw).all():
            raise ShiftwatchError(
                f"{origin}: {np.count_nonzero(~np.isfinite(raw))} pixel values are "
                f"NaN or infinite; fix or drop those images"
            )
        low, high = float(raw.min()), float(raw.max())
        if low < 0 or high > 1:
            raise ShiftwatchError(
                f"{origin}: float pixel values must lie in [0, 1], found "
                f"{low:.4g}..{high:.4g}; divide by 255 or save as uint8"
            )
    else:
        raise ShiftwatchError(f"{origin}: dtype {raw.dtype} is not supported; save uint8 (0..255) or float in [0, 1]")
    chunks = [_chunk_to_28(raw[start : start + _CHUNK], scale) for start in range(0, len(raw), _CHUNK)]
    return np.concatenate(chunks)


def _chunk_to_28(chunk: np.ndarray, scale: float | None) -> np.ndarray:
    images = chunk.astype(np.float32)
    if scale is not None:
        images *= scale
    if images.ndim == 4:
        channels = images.shape[3]
        images = (
            images[..., 0]
            if channels <= 2
            else np.tensordot(images[..., :3], _LUMA.astype(np.float32), axes=([3], [0]))
        )
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        import torch
        import torch.nn.functional as F

        resized = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1),
            size=(IMAGE_SIZE, IMAGE_SIZE),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        images = resized.squeeze(1).numpy()
    return np.clip(images, 0.0, 1.0, out=images).astype(np.float32, copy=False)
