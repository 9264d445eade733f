"""`shiftwatch check` wall time, as an operator types it (issue: <= 3 s for 1,000 images from a
cold start on 2 CPU cores; time per image at 10,000 and 100,000 images).

Side by side in one run, each a fresh process timed from the outside: the local check
(`shiftwatch check BATCH --quiet`: imports torch, loads the model) and the check through a
running `shiftwatch serve` (`shiftwatch check BATCH --quiet --server URL`: the client imports
no torch; the server loaded the model once, before the timing). Medians of 3 runs at 1,000
images, one run at 10,000 and 100,000 (domain-B images drawn with replacement: speed does not
depend on content). Also checks that both give the same verdict and p-values.

Usage (repository root, after `dvc repro`): python benchmarks/bench_check.py
Writes benchmarks/check.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "check.json"
TARGET_SECONDS = 3.0


def main() -> None:
    from shiftwatch.core.io import load_set

    domain_b = load_set(REPO / "data/prepared/domain_b.npz")
    rng = np.random.default_rng(0)
    shiftwatch = [sys.executable, "-m", "shiftwatch"]
    results = {"target_seconds_1000": TARGET_SECONDS, "cases": []}
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen(
            [*shiftwatch, "serve", "--port", "0"],
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = server.stdout.readline().split()[2]
            for images, runs in ((1000, 3), (10_000, 1), (100_000, 1)):
                batch = Path(folder) / f"batch_{images}.npy"
                np.save(batch, domain_b.images[rng.choice(len(domain_b), images, replace=True)])
                for mode, extra in (("local", []), ("server", ["--server", url])):
                    report = Path(folder) / f"{mode}_{images}.json"
                    seconds = [
                        _timed([*shiftwatch, "check", str(batch), "--quiet", "--json", str(report), *extra])
                        for _ in range(runs)
                    ]
                    wall = statistics.median(seconds)
                    results["cases"].append(
                        {
                            "images": images,
                            "mode": mode,
                            "runs": runs,
                            "seconds": wall,
                            "ms_per_image": 1000 * wall / images,
                            "all_seconds": seconds,
                        }
                    )
                    print(
                        f"{images:>7,} images, {mode:<6}: {wall:6.2f} s ({1000 * wall / images:.3f} ms/image; "
                        f"runs {', '.join(f'{s:.2f}' for s in seconds)})",
                        flush=True,
                    )
                results["cases"][-1]["same_as_local"] = _same(
                    Path(folder) / f"local_{images}.json", Path(folder) / f"server_{images}.json"
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return seconds


def _same(local: Path, server: Path) -> dict:
    here, there = json.loads(local.read_text()), json.loads(server.read_text())
    gaps = [abs(here["tests"][d]["pvalue"] - there["tests"][d]["pvalue"]) for d in here["tests"]]
    return {"verdict": here["verdict"] == there["verdict"], "max_pvalue_gap": max(gaps)}


if __name__ == "__main__":
    main()
