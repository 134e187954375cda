"""Repeated timing for the benchmarks: one loop, the clock and the statistic are the caller's choice."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def repeat_times(step: Callable[[], object], repeats: int, warmup: int = 1,
                 clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of `repeats` calls of `step` after `warmup` untimed ones.

    Args:
        step: the work to time (it must block until done, e.g. call `.numpy()` on TF outputs).
        repeats: timed calls.
        warmup: untimed calls first (tracing, caches).
        clock: `time.perf_counter` (wall) or `time.process_time` (CPU seconds of all threads,
            robust to other jobs on a shared machine).
    """
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        tic = clock()
        step()
        times.append(clock() - tic)
    return times


def summarize(times: list[float]) -> dict[str, float | list[float]]:
    """The usual report of `repeat_times`: median, minimum and every time, seconds to 4 decimals."""
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "all_s": [round(t, 4) for t in times]}
