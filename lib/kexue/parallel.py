"""Independent runs side by side on a small CPU.

On the book's 2-core machine, many chapters train small models whose steps are too small to use two
threads well. Two one-thread processes, each running its own seeded run, finish about twice as soon
as one run after another. :func:`run_many` is that pattern, once for every chapter: each run is a
keyword dict for a module-level function, large inputs shared by every run (a data set, a corpus)
go to each worker once, and results come back in the order of the runs. Each run is seeded by its
own arguments, so the outcome does not depend on which process ran it.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

_SHARED: dict = {}


def _init(shared: dict, threads: int) -> None:
    torch.set_num_threads(threads)
    _SHARED.clear()
    _SHARED.update(shared)


def _call(job: tuple[Callable, dict]) -> Any:
    fn, kw = job
    return fn(**_SHARED, **kw)


def _on_cpu(kw: dict) -> bool:
    dev = kw.get("device")
    return dev is None or torch.device(dev).type == "cpu"


def default_workers(device=None, limit: int = 2) -> int:
    """How many one-thread workers suit ``device``: 1 on an accelerator (one process should own
    it), else ``min(limit, CPU cores available to this process)``."""
    if device is not None and torch.device(device).type != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(limit, cores))


def run_many(fn: Callable, runs: list[dict], *, workers: int = 1, shared: dict | None = None,
             threads: int = 1) -> list:
    """``[fn(**shared, **kw) for kw in runs]``. With ``workers`` > 1 the calls go to that many
    fresh (spawned) processes with ``threads`` torch threads each; ``fn`` must be importable (a
    module-level function) and its results picklable. ``shared`` is sent to each worker once, not
    once per run. ``workers`` > 1 is for the CPU: a run whose ``device`` is an accelerator raises
    (use ``workers=1`` there; :func:`default_workers` chooses)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    shared = dict(shared or {})
    clash = sorted({k for kw in runs for k in kw if k in shared})
    if clash:
        raise ValueError(f"run_many: {clash} given both in shared and in a run; give each once")
    if workers > 1 and not all(_on_cpu({**shared, **kw}) for kw in runs):
        raise ValueError("run_many: workers > 1 is for the CPU; use workers=1 with a GPU device "
                         "(kexue.parallel.default_workers(device) chooses)")
    if workers == 1 or len(runs) <= 1:
        return [fn(**shared, **kw) for kw in runs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(runs)), mp_context=mp.get_context("spawn"),
                             initializer=_init, initargs=(shared, threads)) as pool:
        return list(pool.map(_call, [(fn, kw) for kw in runs]))
