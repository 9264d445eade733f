"""Benchmarks that print numbers (not timed tests); results go to benchmarks/results.json.

1. Wall time of a full `dvc repro evaluate` (prepare, shift, detect, train, evaluate) with the
   default params.yaml in a fresh temp copy of the repo, and of the incremental
   `dvc exp run evaluate -S shift.brightness=0.2` after it (target: < 10 %).
2. The same for the whole pipeline (with `monitor` and `power`), whose shift-dependent stages
   rerun on every experiment.
3. Training throughput (images/s): shiftwatch's in-memory batches vs a plain
   `DataLoader(torchvision FashionMNIST, transform=ToTensor())` loop, same model and batch size,
   measured side by side in rounds; medians reported.

Usage: python benchmarks/bench_pipeline.py [--skip-pipeline] [--all-stages] [--rounds 3]
"""
from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shiftwatch.data import find_source, load_fashion_mnist  # noqa: E402
from shiftwatch.model import build_resnet18, train  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from test_pipeline import _copy_repo, _dvc, _run  # noqa: E402  (same temp-repo recipe as the tests)


def time_pipeline(all_stages: bool) -> dict[str, float]:
    """The issue-2 stages (up to `evaluate`) and, with `all_stages`, the whole pipeline, in one
    fresh temp repo."""
    with tempfile.TemporaryDirectory(prefix="shiftwatch-bench-") as tmp:
        repo = _copy_repo(Path(tmp))
        _run(repo, "git", "init", "-q", "-b", "main")
        _commit(repo, "bench")
        core_full = _timed(repo, "repro", "evaluate")
        _commit(repo, "core baseline")
        core_incremental = _timed(repo, "exp", "run", "evaluate", "-S", "shift.brightness=0.2")
        results = {"full_repro_seconds": core_full, "exp_run_brightness_seconds": core_incremental,
                   "incremental_share": core_incremental / core_full}
        if all_stages:
            rest_full = _timed(repo, "repro")  # monitor, power, mitigate on top of the above
            _commit(repo, "all stages")
            all_incremental = _timed(repo, "exp", "run", "-S", "shift.brightness=0.1")
            results.update({"full_repro_all_stages_seconds": core_full + rest_full,
                            "exp_run_all_stages_seconds": all_incremental,
                            "incremental_share_all_stages": all_incremental / (core_full + rest_full)})
    return results


def _commit(repo: Path, message: str) -> None:
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", message)


def _timed(repo: Path, *dvc_args: str) -> float:
    started = time.perf_counter()
    _dvc(repo, *dvc_args)
    seconds = time.perf_counter() - started
    print(f"dvc {' '.join(dvc_args)}: {seconds:.0f} s", flush=True)
    return seconds


def time_training(rounds: int, steps: int = 30, batch_size: int = 128) -> dict[str, float]:
    from torchvision.datasets import FashionMNIST
    from torchvision.transforms import ToTensor

    source = find_source(None, REPO / "data" / "raw")
    train_set, _ = load_fashion_mnist(source)
    images, labels = train_set.images[:steps * batch_size], train_set.labels[:steps * batch_size]
    with tempfile.TemporaryDirectory() as tmp:  # torchvision's own layout: raw, uncompressed IDX files
        raw = Path(tmp) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            packed = source / f"{name}.gz"
            (raw / name).write_bytes(gzip.decompress(packed.read_bytes()) if packed.exists()
                                     else (source / name).read_bytes())
        dataset = FashionMNIST(tmp, train=True, transform=ToTensor())
        per_sample, in_memory = [], []
        for _ in range(rounds):
            per_sample.append(_dataloader_images_per_second(dataset, steps, batch_size))
            model = build_resnet18(seed=0)
            history = train(model, images, labels, epochs=1, batch_size=batch_size, lr=1e-4,
                            seed=0, device=torch.device("cpu"), progress=False)
            in_memory.append(history[0]["images_per_second"])
        feed_per_sample, feed_in_memory = [], []
        for _ in range(rounds):  # the data feeding alone: what a GPU would wait for
            feed_per_sample.append(_feed_images_per_second(dataset, batch_size))
            feed_in_memory.append(_feed_in_memory_images_per_second(train_set.images, batch_size))
    return {"feed_in_memory_images_per_second": statistics.median(feed_in_memory),
            "feed_dataloader_totensor_images_per_second": statistics.median(feed_per_sample),
            "in_memory_images_per_second": statistics.median(in_memory),
            "dataloader_totensor_images_per_second": statistics.median(per_sample),
            "speedup": statistics.median(in_memory) / statistics.median(per_sample),
            "rounds": rounds, "steps": steps, "batch_size": batch_size}


def _feed_images_per_second(dataset, batch_size: int, limit: int = 20_000) -> float:
    """Batches from DataLoader(FashionMNIST, ToTensor()), no model: per-sample PIL + ToTensor."""
    from torch.utils.data import DataLoader

    seen, started = 0, time.perf_counter()
    for batch, _ in DataLoader(dataset, batch_size=batch_size, shuffle=True):
        seen += len(batch)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - started)


def _feed_in_memory_images_per_second(images, batch_size: int, limit: int = 20_000) -> float:
    """Batches sliced from one in-memory tensor with a shuffled index, as `shiftwatch.model.train`."""
    from shiftwatch.model import as_batch

    started = time.perf_counter()
    all_images = as_batch(images[:limit], torch.device("cpu"))
    order = torch.randperm(len(all_images))
    seen = sum(len(all_images[rows]) for rows in order.split(batch_size))
    return seen / (time.perf_counter() - started)


def _dataloader_images_per_second(dataset, steps: int, batch_size: int) -> float:
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    model = build_resnet18(seed=0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    seen, started = 0, time.perf_counter()
    for step, (batch, target) in enumerate(loader):
        if step == steps:
            break
        optimizer.zero_grad()
        loss_fn(model(batch), target).backward()
        optimizer.step()
        seen += len(target)
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-pipeline", action="store_true", help="only the training throughput")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--all-stages", action="store_true",
                        help="also time the whole pipeline (monitor, power, mitigate): ~30 min more")
    args = parser.parse_args()
    results = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                          f"torch {torch.__version__}"}
    results.update(time_training(args.rounds))
    print(json.dumps(results, indent=2), flush=True)
    if not args.skip_pipeline:
        results.update(time_pipeline(args.all_stages))
    out = REPO / "benchmarks" / "results.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**previous, **results}, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
