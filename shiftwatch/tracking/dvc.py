"""What dvc.yaml declares, as the MLflow runs record it: each stage's params keys, the
headline metrics files and plots, the params that differ from the baseline commit, and the
parent run's name.

One name per number: a headline number is logged as <file stem>.<path>, the file's stem and
the dotted path `dvc metrics show` and `dvc exp show` give it (metrics/evaluate.json
{"accuracy": {"b_shift": ...}} is `evaluate.accuracy.b_shift`), on the parent run and on the
stage run alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

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


# The metric MLflow's compare view plots first: its parallel-coordinates plot opens on the first
# metric the compared runs share, in the order the runs logged them. The number a shift
# experiment moves, not one it leaves constant (train.final_loss was first, by stage order).
COMPARE_FIRST = "evaluate.accuracy.b_shift"


def _outputs(root: Path, kind: str, stage: str | None) -> list[Path]:
    """The files listed under `kind` (outs, metrics) in dvc.yaml, of `stage` or of every stage."""
    stages = _pipeline(root)
    files: list[Path] = []
    for name, spec in stages.items():
        if stage is None or name == stage:
            files.extend(
                root / (entry if isinstance(entry, str) else next(iter(entry))) for entry in spec.get(kind, [])
            )
    return files


def metrics_files(root: Path = Path("."), stage: str | None = None) -> list[Path]:
    """The DVC metrics files (the headline numbers) of `stage`, or of the pipeline in stage order."""
    return _outputs(root, "metrics", stage)


def headline_metrics(root: Path = Path("."), stage: str | None = None) -> dict[str, float]:
    """The numbers `dvc exp show` shows, keyed <file stem>.<dotted path> (detect.b_shift.drift),
    COMPARE_FIRST first; of `stage`'s metrics files only, if given."""
    metrics: dict[str, float] = {}
    for path in metrics_files(root, stage):
        try:
            metrics.update(flatten_numbers(json.loads(path.read_text()), path.stem))
        except (OSError, json.JSONDecodeError):
            continue  # not produced yet (its stage runs later) or unreadable: nothing to show
    first = {COMPARE_FIRST: metrics.pop(COMPARE_FIRST)} if COMPARE_FIRST in metrics else {}
    return {**first, **metrics}


def headline_plots(root: Path = Path("."), stage: str | None = None) -> list[Path]:
    """The PNG images dvc.yaml declares as outputs (metrics/plots/power.png, ...), of `stage`
    or of every stage; folders of images (one per shifted set) are left to the stage runs."""
    return [path for path in _outputs(root, "outs", stage) if path.suffix == ".png"]


def changed_params(current: dict[str, object], baseline_rev: str, root: Path = Path(".")) -> dict:
    """The flat params that differ from params.yaml at `baseline_rev` (empty if unknown).

    The baseline is read as YAML, not through today's schema: a key added since (the schema has
    no defaults) is simply a changed param, not a reason to name nothing. Numbers compare by
    value (YAML's 0 and the schema's 0.0 are the same setting)."""
    from shiftwatch.core.params import flatten_params

    text = _git(root, "show", f"{baseline_rev}:params.yaml")
    try:
        raw = yaml.safe_load(text or "")
    except yaml.YAMLError:
        return {}
    if not isinstance(raw, dict):  # no params.yaml at that commit
        return {}
    baseline = {key: _comparable(value) for key, value in flatten_params(raw).items()}
    return {k: v for k, v in current.items() if baseline.get(k, _MISSING) != _comparable(v)}


_MISSING = object()


def _comparable(value: object) -> object:
    """JSON text with every number as a float, so 1 == 1.0 but True != 1."""

    def numbers_as_floats(item):
        if isinstance(item, bool) or not isinstance(item, int | float):
            return [numbers_as_floats(x) for x in item] if isinstance(item, list | tuple) else item
        return float(item)

    return json.dumps(numbers_as_floats(value), sort_keys=True, default=str)


def parent_name(tags: dict[str, str], changed: dict[str, object]) -> str:
    """'shift.brightness=0.2 (bally-loot)', or 'baseline 5103cd6 (workspace)' without changes."""
    label = ", ".join(f"{k}={v}" for k, v in changed.items()) if changed else f"baseline {tags['dvc.baseline_rev'][:7]}"
    return f"{label} ({tags['dvc.exp_name']})"
