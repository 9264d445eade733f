"""What dvc.yaml declares, as the MLflow runs record it: each stage's params keys, the
headline metrics files, the params that differ from the baseline commit, and the parent run's name.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from shiftwatch import ShiftwatchError
from shiftwatch.tracking.store import _git, flatten_numbers


def _pipeline(root: Path) -> dict:
    return (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})


def declared_params(stage: str, root: Path = Path(".")) -> tuple[str, ...]:
    """The params keys `stage` lists in dvc.yaml: what its MLflow run records."""
    spec = _pipeline(root).get(stage, {})
    keys: list[str] = []
    for entry in spec.get("params", []):  # "key", or {params file: [keys]}
        keys.extend([entry] if isinstance(entry, str) else [k for listed in entry.values() for k in listed])
    return tuple(keys)


def metrics_files(root: Path = Path(".")) -> list[Path]:
    """Every DVC metrics file of the pipeline (the headline numbers), in stage order."""
    files = []
    for spec in _pipeline(root).values():
        for entry in spec.get("metrics", []):
            files.append(root / (entry if isinstance(entry, str) else next(iter(entry))))
    return files


def headline_metrics(root: Path = Path(".")) -> dict[str, float]:
    """The numbers `dvc exp show` shows, keyed <file stem>.<dotted path> (detect.b_shift.drift)."""
    metrics: dict[str, float] = {}
    for path in metrics_files(root):
        try:
            metrics.update(flatten_numbers(json.loads(path.read_text()), path.stem))
        except (OSError, json.JSONDecodeError):
            continue  # not produced yet (its stage runs later) or unreadable: nothing to show
    return metrics


def changed_params(current: dict[str, object], baseline_rev: str, root: Path = Path(".")) -> dict:
    """The flat params that differ from params.yaml at `baseline_rev` (empty if unknown)."""
    from shiftwatch.core.params import parse_params

    text = _git(root, "show", f"{baseline_rev}:params.yaml")
    try:
        baseline = parse_params(yaml.safe_load(text or "")).flat()
    except (yaml.YAMLError, ShiftwatchError):  # none at that commit, or an older schema
        return {}
    same = lambda key, value: key in baseline and json.dumps(baseline[key]) == json.dumps(value)  # noqa: E731
    return {k: v for k, v in current.items() if not same(k, v)}


def parent_name(tags: dict[str, str], changed: dict[str, object]) -> str:
    """'shift.brightness=0.2 (bally-loot)', or 'baseline 5103cd6 (workspace)' without changes."""
    label = (", ".join(f"{k}={v}" for k, v in changed.items()) if changed
             else f"baseline {tags['dvc.baseline_rev'][:7]}")
    return f"{label} ({tags['dvc.exp_name']})"
