"""Wall-clock timing for the whole library: one way to time, used by the benchmark and the experiments.

* :func:`time_interleaved`: seconds per call of several functions measured side by side, the basis
  of every ratio ``python -m bdk bench`` reports;
* :func:`best_time`: the fastest of a few calls of one function;
* :class:`Stopwatch`: the wall-clock and CPU seconds of a block (a training run, an experiment).

On a GPU every measurement waits for the device (:func:`sync`) before reading the clock, so that it
times the work and not only its launch. This module imports nothing from ``bdk``.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping

import torch

__all__ = ["sync", "time_interleaved", "best_time", "Stopwatch"]


def sync(device: torch.device | str | None) -> None:
    """Wait for the work queued on ``device`` (a no-op on a CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(runners: Mapping[str, Callable[[], object]], repeats: int, steps_per_repeat: int, device,
                     warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each runner, measured side by side.

    Every runner is called ``warmup`` times first; then each of ``repeats`` rounds times
    ``steps_per_repeat`` calls of every runner, in an order that rotates from round to round, so that
    a machine that slows down or speeds up affects all of them alike. Returns one list of
    per-call seconds (one entry per round) for each runner name.
    """
    names = list(runners)
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_repeat):
                runners[k]()
            sync(device)
            times[k].append((time.perf_counter() - t0) / steps_per_repeat)
    return times


def best_time(fn: Callable[[], object], device, repeats: int = 1) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` (no warm-up: the caller warms up), in seconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    return min(time_interleaved({"fn": fn}, repeats, 1, device, warmup=0)["fn"], default=math.inf)


class Stopwatch:
    """The wall-clock and CPU (process) seconds of a ``with`` block.

    ``with Stopwatch() as clock: ...`` then ``clock.seconds`` and ``clock.cpu_seconds``; while the
    block runs, ``clock.elapsed()`` reads the wall-clock seconds so far. With ``device`` set to a GPU
    the clock waits for it at both ends.
    """

    def __init__(self, device=None) -> None:
        self.device = device
        self.seconds = math.nan
        self.cpu_seconds = math.nan
        self._start = self._start_cpu = None

    def __enter__(self) -> "Stopwatch":
        sync(self.device)
        self._start, self._start_cpu = time.perf_counter(), time.process_time()
        return self

    def elapsed(self) -> float:
        """Wall-clock seconds since the block began."""
        return time.perf_counter() - self._start

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = time.process_time() - self._start_cpu
