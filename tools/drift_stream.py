"""A stream that drifts slowly, checked batch by batch, then drawn by `shiftwatch timeline`.

20 hourly batches of 500 domain-B images (disjoint, seeded; the model never trained on them),
whose brightness creeps from +0 to +0.1 in equal steps (`shift.degrade_images`, no blur). Each
batch goes through `shiftwatch check --log --time T`, into a throw-away MLflow store, exactly
as a cron job would log it; then `shiftwatch timeline` draws the stream and names the first
batch at which each detector and the verdict alerted.

Usage (repository root, after `dvc repro`): python tools/drift_stream.py
Writes metrics/plots/timeline.png and metrics/timeline.json (the "timeline" table of docs/operations.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from shiftwatch.__main__ import main as shiftwatch
from shiftwatch.core.io import load_set
from shiftwatch.data.shift import degrade_images

BATCHES, IMAGES, MAX_BRIGHTNESS = 20, 500, 0.1
START = datetime(2026, 11, 1, tzinfo=UTC)
FIGURE, SUMMARY = Path("metrics/plots/timeline.png"), Path("metrics/timeline.json")


def main() -> None:
    domain_b = load_set("data/prepared/domain_b.npz", hint="run `dvc repro prepare`")
    rows = np.random.default_rng(20261129).permutation(len(domain_b))[: BATCHES * IMAGES]
    brightness = np.linspace(0, MAX_BRIGHTNESS, BATCHES)
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        for k in range(BATCHES):
            batch = Path(folder) / f"batch_{k:02d}.npy"
            images = domain_b.images[rows[k * IMAGES : (k + 1) * IMAGES]]
            np.save(batch, degrade_images(images, 28, float(brightness[k])))
            taken = (START + timedelta(hours=k)).isoformat()
            status = shiftwatch(["check", str(batch), "--log", "--quiet", "--time", taken])
            print(f"batch {k:2d}: brightness +{brightness[k]:.4f}: exit {status}", flush=True)
        summary_path = Path(folder) / "timeline.json"
        assert shiftwatch(["timeline", "--png", str(FIGURE), "--json", str(summary_path)]) == 0
        timeline = json.loads(summary_path.read_text())
    timeline["brightness"] = brightness.tolist()
    timeline["images_per_batch"] = IMAGES
    SUMMARY.write_text(json.dumps(timeline, indent=2) + "\n")
    print(f"wrote {FIGURE} and {SUMMARY}")


if __name__ == "__main__":
    main()
