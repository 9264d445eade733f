"""Which exact bytes a result came from: the md5 digests that tie a reference summary to the
model that made it, and an MLflow run to the data it read.

A file's md5 is the digest DVC records for it (in dvc.lock, or in the .dir listing of a
tracked folder), so a digest logged to MLflow can be looked up in DVC's cache and back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file's bytes (what DVC records for a file)."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def folder_md5(path: str | Path) -> str:
    """Hex md5 over a folder's files in name order, each as "<relative path> <md5>\\n": it
    changes when any file's name or bytes change. (Not DVC's .dir hash, which also depends on
    DVC's JSON layout; a batch folder checked by `shiftwatch check` is usually not DVC-tracked.)"""
    root = Path(path)
    listing = "".join(
        f"{p.relative_to(root).as_posix()} {file_md5(p)}\n" for p in sorted(root.rglob("*")) if p.is_file()
    )
    return hashlib.md5(listing.encode()).hexdigest()


def md5_of(path: str | Path) -> str:
    return folder_md5(path) if Path(path).is_dir() else file_md5(path)
