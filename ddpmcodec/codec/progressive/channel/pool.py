"""The search processes: the chunks of a coded step are independent searches, handed to
a pool of forked processes (encoder-only; the file does not depend on their number)."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from ddpmcodec.codec.progressive.channel import search
from ddpmcodec.codec.progressive.channel.chunks import ChunkPlan
from ddpmcodec.codec.progressive.channel.generator_v1 import GENERATOR_ID
from ddpmcodec.codec.progressive.channel.search import Selection, pfr_select
from ddpmcodec.errors import DDPMCodecError

_POOLS: dict = {}  # this process's search pools by their number of processes
_POOLS_LOCK = threading.Lock()


def _forget_pools() -> None:
    """In a forked child: the parent's pools (and maybe its held lock) are not its own."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def default_search_workers() -> int:
    """The CPUs this process may run on: the encoder's default number of search processes."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def check_search_workers(workers: int | None) -> int:
    """``workers`` (None: :func:`default_search_workers`) as a positive int, or a
    DDPMCodecError."""
    if workers is None:
        return default_search_workers()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise DDPMCodecError(f"search workers must be a positive integer, got {workers!r}")
    return int(workers)


def _search_pool(workers: int) -> ProcessPoolExecutor | None:
    """The process's pool of ``workers`` search processes (made once), or None where
    processes are forked unsafely or not at all (not Linux), and in a process that
    multiprocessing started (a daemonic one, such as a DataLoader or Pool worker, may
    have no children; another would wait for the pool's processes at its exit, which
    only the interpreter's own exit stops): the search then runs here.

    Forked, because a forked worker starts in milliseconds, needs no picklable model and
    never re-runs the user's main module (spawn and forkserver do, which breaks scripts
    without a ``__main__`` guard). A worker runs numpy only, never torch, so the parent's
    torch threads cannot deadlock it."""
    if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods() \
            or multiprocessing.parent_process() is not None:
        return None
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                       initializer=_ignore_interrupts)
            with warnings.catch_warnings():  # Python >= 3.12 warns of any fork of a threaded process
                warnings.simplefilter("ignore", DeprecationWarning)
                pool.submit(int).result()  # the first task forks all the processes
            _POOLS[workers] = pool
        return pool


def close_search_pools() -> None:
    """Stop this process's search processes (they are made again when needed). They
    otherwise live, idle, until the interpreter exits, holding their copy of the memory
    this process had when they were forked."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def _ignore_interrupts() -> None:
    """A search process leaves Ctrl-C to the encoder's process (which stops the encode)
    instead of printing its own traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _search_task(task: tuple) -> "Selection":
    """One chunk's v2 search (a search process's unit of work)."""
    return search.pfr_search(*task)


def _search_backend(search_device: str | None) -> tuple[str, str]:
    """(backend, device) of search.pfr_search for ``search_device``: None or "cpu":
    numpy; "torch:DEVICE" (e.g. "torch:cpu"): torch on DEVICE; any other torch device
    ("cuda", "cuda:1", ...): torch on it."""
    if search_device is None or search_device == "cpu":
        return "numpy", "cpu"
    if search_device.startswith("torch:"):
        return "torch", search_device[len("torch:"):]
    return "torch", search_device


def check_search_device(search_device: str | None) -> None:
    """DDPMCodecError unless torch can allocate on the search device (None, cpu: numpy)."""
    backend, device = _search_backend(search_device)
    if backend == "numpy":
        return
    import torch
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise DDPMCodecError(f"--search-device {search_device}: {exc}") from None


def search_chunks(plan: ChunkPlan, chunks: list, private_rng: np.random.Generator,
                   search_device: str | None, search_workers: int) -> list:
    """The Selection of every chunk; ``chunks``: (alpha, beta, const, budget) each.

    v1: :func:`pfr_select` in chunk order, the arrival times from ``private_rng`` in
    sequence. v2: chunk j's arrival times come from its own generator, seeded by (one
    draw of ``private_rng``, j), so the chunks may be searched in any order and anywhere:
    with numpy on ``search_workers`` processes, or in torch on ``search_device``."""
    backend, device = _search_backend(search_device)
    if plan.generator == GENERATOR_ID:
        if backend != "numpy":
            raise DDPMCodecError(f"{GENERATOR_ID} candidates are searched with numpy only, "
                                 f"not on {search_device!r}")
        return [pfr_select(a, b, c, plan.key(j), budget, private_rng)
                for j, (a, b, c, budget) in enumerate(chunks)]
    seed = int(private_rng.integers(0, 1 << 63))
    tasks = [(a, b, c, plan.v2_key(j), budget, (seed, j), backend, device)
             for j, (a, b, c, budget) in enumerate(chunks)]
    workers = min(search_workers, len(tasks))
    # numpy holds the GIL between its short array operations, so threads gain nothing
    # (benchmarks/bench_candidates.py); processes do
    pool = _search_pool(workers) if workers > 1 and backend == "numpy" else None
    if pool is not None:
        try:
            # a few batches per process: a message per chunk costs about as much as a
            # small chunk's search
            return list(pool.map(_search_task, tasks, chunksize=-(-len(tasks) // (4 * workers))))
        except BrokenProcessPool:  # a worker died (killed, out of memory): search here
            with _POOLS_LOCK:
                _POOLS.pop(workers, None)
            warnings.warn("a candidate-search process died; searching in this process",
                          RuntimeWarning, stacklevel=2)
    return [_search_task(t) for t in tasks]
