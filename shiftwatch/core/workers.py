"""One worker process per core for independent pieces of a stage's work.

Workers are forked: they inherit the parent's imports and arrays (no re-import, no pickling
of inputs, only of results) and are shut down before `fork_map` returns, so a stage leaves no
process behind. BLAS runs single-threaded in each worker, as joblib does: two workers on two
cores, and results that do not depend on how many threads BLAS would otherwise pick.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_task: tuple[Callable, Sequence] | None = None  # what the forked workers run, set before the fork


def fork_map(function: Callable[[Item], Result], items: Sequence[Item], workers: int = 2) -> list[Result]:
    """[function(item) for item in items], computed in `workers` forked processes."""
    global _task
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [_single_threaded(function, item) for item in items]
    _task = (function, items)
    pool = ProcessPoolExecutor(min(workers, len(items)), mp_context=multiprocessing.get_context("fork"))
    # submit + result, not map: map cancels its futures when interrupted, and the pool's manager
    # thread then fails on them (InvalidStateError) as it marks the killed workers' work broken
    futures = [pool.submit(_run, index) for index in range(len(items))]
    try:
        results = [future.result() for future in futures]
    except BaseException:  # SIGTERM, Ctrl-C, a lost tracking store: stop now, not after the queue
        for worker in list((pool._processes or {}).values()):
            worker.kill()  # not SIGTERM: a worker inherits the stage's handler and would go on
        pool.shutdown(wait=True)
        raise
    finally:
        _task = None
    pool.shutdown(wait=True)
    return results


def _run(index: int):
    assert _task is not None, "fork_map sets the task before it forks"
    function, items = _task
    return _single_threaded(function, items[index])


def _single_threaded(function, item):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return function(item)
