"""Timing the `detect` calls of an evaluation, the first call (which traces the graph) apart."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class DetectTimer:
    """Collects (seconds, images) per `detect` call and summarizes them.

    The first call of a model traces its graph (and with `optimize_for_inference` freezes it),
    seconds for a ResNet-50-FPN, so on a short evaluation the plain mean is mostly that; the
    summary also gives the first call's time and the steady rate after it.

    Example::

        timer = DetectTimer()
        with timer.measure(len(images)):
            results = model.detect(images)
        timer.summary()   # {"seconds_per_image": ..., "first_batch_seconds": ..., ...}
    """

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    @contextlib.contextmanager
    def measure(self, images: int) -> Iterator[None]:
        """Times the block as one `detect` call over `images` images."""
        tic = time.perf_counter()
        yield
        self.calls.append((time.perf_counter() - tic, int(images)))

    def summary(self) -> dict[str, float | None]:
        """``seconds_per_image`` (all calls), ``first_batch_seconds`` (the first call; None without
        calls) and ``seconds_per_image_after_first_batch`` (None with fewer than two calls)."""
        seconds = sum(elapsed for elapsed, _ in self.calls)
        images = sum(count for _, count in self.calls)
        first_seconds, first_images = self.calls[0] if self.calls else (None, 0)
        rest_images = images - first_images
        return {
            "seconds_per_image": seconds / images if images else None,
            "first_batch_seconds": first_seconds,
            "seconds_per_image_after_first_batch": (seconds - first_seconds) / rest_images if rest_images else None,
        }
