"""Benchmarks that print numbers (not timed tests); results go to benchmarks/results.json.

1. Training throughput (images/s), side by side in interleaved rounds, medians reported:
   the seed notebook's loop (`DataLoader(FashionMNIST, ToTensor())`, per-sample PIL, plain
   Adam) against shiftwatch's loop and the steps that led to it (in-memory batches, fused
   Adam, channels-last, layer4's one-pixel convs as matrix products, bf16 compute with fp32
   master weights), and what was tried and dropped. Target: shiftwatch >= 1.7x the seed loop.
   Inference throughput fp32 vs bf16 autocast (what `evaluate.precision: auto` picks).
2. The experiment loop, timed exactly as users type it, in a fresh temp copy of the repo with
   the default params.yaml: the full `dvc repro` (split by stage from the MLflow stage runs),
   then `dvc exp run -S shift.brightness=0.2` (target <= 10 % of the full run), then a queued
   sweep of four brightness values (`dvc exp run --queue` x4, `dvc queue start`, wait;
   target <= 40 % of the full run), then `dvc exp show` (column count; the --md table is saved
   to benchmarks/exp_show.md for docs/experiments.md).

Usage (repository root; `make bench` runs it):
    PYTHONPATH=tests python benchmarks/bench_pipeline.py [--skip-pipeline] [--skip-training] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from test_pipeline import _copy_repo, _dvc, _run  # tests/ on PYTHONPATH (make bench): the tests' temp-repo recipe

from shiftwatch.data.fashion_mnist import find_source, load_fashion_mnist
from shiftwatch.model.network import as_batch, build_resnet18, inference_dtype, train
from shiftwatch.tracking.dvc import headline_metrics

REPO = Path(__file__).resolve().parents[1]

SWEEP = ("0.0", "0.05", "0.15", "0.3")
SEED = "seed loop: DataLoader(ToTensor()), Adam"
TARGETS = {"exp_run_share": 0.10, "sweep_share": 0.40, "training_speedup": 1.7}


# ---------------------------------------------------------------- the experiment loop


def time_pipeline() -> dict:
    with tempfile.TemporaryDirectory(prefix="shiftwatch-bench-") as tmp:
        repo = _copy_repo(Path(tmp))
        _run(repo, "git", "init", "-q", "-b", "main")
        _commit(repo, "bench")
        full = _timed(repo, "repro")
        stages = _stage_seconds(repo)
        _commit(repo, "baseline results")
        single = _timed(repo, "exp", "run", "-S", "shift.brightness=0.2")
        started = time.perf_counter()
        for value in SWEEP:
            _dvc(repo, "exp", "run", "--queue", "-S", f"shift.brightness={value}")
        _dvc(repo, "queue", "start")
        _wait_for_queue(repo)
        sweep = time.perf_counter() - started
        print(f"queued sweep of {len(SWEEP)}: {sweep:.0f} s", flush=True)
        header = _dvc(repo, "exp", "show", "--csv").stdout.splitlines()[0].split(",")
        metric_columns = len(headline_metrics(repo))  # `dvc exp show` has one column per headline number
        table = _dvc(repo, "exp", "show", "--md", "--only-changed", "--precision", "4").stdout
        (REPO / "benchmarks" / "exp_show.md").write_text(table)
        failed = [line for line in _dvc(repo, "queue", "status").stdout.splitlines() if "Failed" in line]
    return {
        "full_repro_seconds": full,
        "stage_seconds": stages,
        "exp_run_seconds": single,
        "exp_run_share": single / full,
        "sweep_values": list(SWEEP),
        "sweep_seconds": sweep,
        "sweep_share": sweep / full,
        "sweep_failed": failed,
        "exp_show_columns": len(header),
        "exp_show_metric_columns": metric_columns,
    }


def _commit(repo: Path, message: str) -> None:
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", message)


def _timed(repo: Path, *dvc_args: str) -> float:
    started = time.perf_counter()
    _dvc(repo, *dvc_args)
    seconds = time.perf_counter() - started
    print(f"dvc {' '.join(dvc_args)}: {seconds:.0f} s", flush=True)
    return seconds


def _wait_for_queue(repo: Path, limit: float = 3600) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = _dvc(repo, "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return
        time.sleep(2)
    raise TimeoutError(f"queue still busy after {limit:.0f} s:\n{status}")


def _stage_seconds(repo: Path) -> dict[str, float]:
    """Wall time of each stage's work, from its MLflow run (open from start to end of the work)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("shiftwatch")
    runs = client.search_runs([experiment.experiment_id], "tags.`dvc.stage` != ''", max_results=100)
    return {
        r.data.tags["dvc.stage"]: (r.info.end_time - r.info.start_time) / 1000
        for r in sorted(runs, key=lambda r: r.info.start_time)
    }


# ---------------------------------------------------------------- training and inference speed


def time_training(rounds: int, steps: int = 40, batch_size: int = 128, warmup: int = 8) -> dict:
    """Each variant runs `warmup` batches untimed (oneDNN builds its kernels for new shapes and
    dtypes on first use, ~1 s for bf16), then `steps` timed batches: the steady state a
    3-epoch training run sees."""
    from torchvision.datasets import FashionMNIST
    from torchvision.transforms import ToTensor

    source = find_source(None, REPO / "data" / "raw")
    train_set, _ = load_fashion_mnist(source)
    images, labels = train_set.images[: steps * batch_size], train_set.labels[: steps * batch_size]
    few = slice(0, warmup * batch_size)
    variants = {  # name -> (images, labels) -> images/s
        SEED: lambda x, y: _seed_loop(dataset, len(y) // batch_size, batch_size),
        "in-memory batches, Adam": lambda x, y: _in_memory_loop(x, y, batch_size, fused=False),
        "+ fused Adam": lambda x, y: _in_memory_loop(x, y, batch_size, fused=True),
        "+ channels-last": lambda x, y: _in_memory_loop(x, y, batch_size, fused=True, channels_last=True),
        "+ layer4's one-pixel convs as matrix products (shiftwatch, train.precision: fp32)": lambda x, y: _library(
            x, y, batch_size, "fp32"
        ),
        "+ bf16 forward/backward, fp32 master weights (shiftwatch, train.precision: auto)": lambda x, y: _library(
            x, y, batch_size, "auto"
        ),
        "(tried: bf16 as above, convs left to oneDNN)": lambda x, y: _library(x, y, batch_size, "auto", lower=False),
        "(tried: bf16 autocast instead)": lambda x, y: _in_memory_loop(
            x, y, batch_size, fused=True, channels_last=True, bf16=True
        ),
    }
    measured: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:  # torchvision's own layout: raw, uncompressed IDX files
        raw = Path(tmp) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for name in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ):
            packed = source / f"{name}.gz"
            (raw / name).write_bytes(
                gzip.decompress(packed.read_bytes()) if packed.exists() else (source / name).read_bytes()
            )
        dataset = FashionMNIST(tmp, train=True, transform=ToTensor())
        for round_ in range(rounds):  # interleaved, so drifting machine load hits every variant
            for name, measure in variants.items():
                measure(images[few], labels[few])  # warm-up, untimed
                measured[name].append(measure(images, labels))
                print(f"round {round_ + 1}: {name}: {measured[name][-1]:.0f} images/s", flush=True)
    medians = {name: statistics.median(rates) for name, rates in measured.items()}
    shiftwatch = next(name for name in variants if "train.precision: auto" in name)
    return {
        "training_images_per_second": medians,
        "training_speedup": medians[shiftwatch] / medians[SEED],
        "training_rounds": rounds,
        "training_steps": steps,
        "training_warmup_steps": warmup,
        "training_batch_size": batch_size,
        **time_inference(),
    }


def _seed_loop(dataset, steps: int, batch_size: int) -> float:
    """The seed notebook's loop: per-sample PIL -> ToTensor through a DataLoader, plain Adam."""
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


def _library(images, labels, batch_size: int, precision: str, lower: bool = True) -> float:
    """`shiftwatch.model.network.train` itself, one epoch over the benchmark's images."""
    history = train(
        build_resnet18(seed=0),
        images,
        labels,
        epochs=1,
        batch_size=batch_size,
        lr=1e-4,
        seed=0,
        device=torch.device("cpu"),
        progress=False,
        precision=precision,
        lower=lower,
    )
    return history[0]["images_per_second"]


def _in_memory_loop(
    images, labels, batch_size: int, *, fused: bool, channels_last: bool = False, bf16: bool = False
) -> float:
    """Batches sliced from one tensor, with the options `shiftwatch.model.network.train` may use."""
    torch.manual_seed(0)
    model = build_resnet18(seed=0).train()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused or None)
    loss_fn = torch.nn.CrossEntropyLoss()
    all_images = torch.from_numpy(images).unsqueeze(1).contiguous(memory_format=layout)
    all_labels = torch.from_numpy(labels)
    order = torch.randperm(len(all_labels))
    started = time.perf_counter()
    for rows in order.split(batch_size):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(all_images[rows])
        loss_fn(logits.float(), all_labels[rows]).backward()
        optimizer.step()
    return len(order) / (time.perf_counter() - started)


@torch.inference_mode()
def time_inference(n: int = 5000, batch_size: int = 1000) -> dict:
    model = build_resnet18(seed=0).eval().to(memory_format=torch.channels_last)
    images = np.random.default_rng(0).random((n, 28, 28), dtype=np.float32)
    rates = {}
    for dtype in (torch.float32, inference_dtype(torch.device("cpu"))):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            model(as_batch(images[:batch_size], torch.device("cpu")))  # warm-up
            started = time.perf_counter()
            for start in range(0, n, batch_size):
                model(as_batch(images[start : start + batch_size], torch.device("cpu")))
        rates[str(dtype).replace("torch.", "")] = n / (time.perf_counter() - started)
    return {"inference_images_per_second": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-pipeline", action="store_true", help="only training/inference speed")
    parser.add_argument("--skip-training", action="store_true", help="only the experiment loop")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, bf16 kernels: "
        f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}"
    }
    if not args.skip_training:
        results.update(time_training(args.rounds))
    if not args.skip_pipeline:
        results.update(time_pipeline())
    out = REPO / "benchmarks" / "results.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**previous, **results}, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    for key, target in TARGETS.items():
        if key in results:
            ok = results[key] >= target if key == "training_speedup" else results[key] <= target
            print(
                f"{key}: {results[key]:.3f} (target {'>=' if key == 'training_speedup' else '<='} "
                f"{target}) {'met' if ok else 'NOT met'}"
            )


if __name__ == "__main__":
    main()
