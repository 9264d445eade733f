"""MMD at full size (issue: 10,000 images per side, permutation p-value, <= 30 s, <= 2 GB).

Each case runs in a fresh process (peak memory = that process's max RSS, numpy and the inputs
included), on 512-dimensional rows like the model's embeddings, on all cores BLAS finds.
Prints one line per case and writes benchmarks/mmd.json.

Usage: python benchmarks/bench_mmd.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = [(1000, 200), (10_000, 200), (10_000, 1000)]  # (rows per side, permutations)
TARGET = {"seconds": 30.0, "peak_gb": 2.0}

_CHILD = """
import resource, sys, time
import numpy as np
from shiftwatch.detection.mmd import mmd_test
rng = np.random.default_rng(0)
x = rng.standard_normal(({n}, 512), dtype=np.float32)
y = rng.standard_normal(({n}, 512), dtype=np.float32)
y[:, 0] += 0.05
started = time.perf_counter()
result = mmd_test(x, y, n_permutations={b}, seed=1)
seconds = time.perf_counter() - started
peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(seconds, peak_gb, result.statistic, result.pvalue)
"""


def main() -> None:
    results = []
    for n, b in CASES:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD.format(repo=str(REPO), n=n, b=b)], capture_output=True, text=True, check=True
        ).stdout.split()
        seconds, peak_gb, statistic, pvalue = map(float, out)
        results.append(
            {
                "per_side": n,
                "permutations": b,
                "seconds": seconds,
                "peak_gb": peak_gb,
                "statistic": statistic,
                "pvalue": pvalue,
            }
        )
        print(
            f"MMD permutation test, {n:,} per side x 512 features, {b} permutations: "
            f"{seconds:.1f} s, peak {peak_gb:.2f} GB (target <= {TARGET['seconds']:.0f} s, "
            f"<= {TARGET['peak_gb']:.0f} GB); p = {pvalue:.4f}",
            flush=True,
        )
    (REPO / "benchmarks" / "mmd.json").write_text(json.dumps({"cases": results, "target": TARGET}, indent=2) + "\n")


if __name__ == "__main__":
    main()
