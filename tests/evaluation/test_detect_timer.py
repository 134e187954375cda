"""mrcnn/evaluation/detect_timer.py: the first detect call timed apart from the steady rate."""

import pytest

from mrcnn.evaluation import detect_timer
from mrcnn.evaluation.detect_timer import DetectTimer


def test_summary_separates_the_first_call(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(detect_timer.time, "perf_counter", lambda: clock["now"])
    timer = DetectTimer()
    for seconds, images in ((9.0, 4), (2.0, 4), (1.0, 2)):  # a trace, then 0.5 s per image
        with timer.measure(images):
            clock["now"] += seconds
    assert timer.summary() == {"seconds_per_image": pytest.approx(12.0 / 10), "first_batch_seconds": 9.0,
                               "seconds_per_image_after_first_batch": pytest.approx(0.5)}


def test_summary_without_a_second_call_or_any_call():
    timer = DetectTimer()
    assert timer.summary() == {"seconds_per_image": None, "first_batch_seconds": None,
                               "seconds_per_image_after_first_batch": None}
    with timer.measure(3):
        pass
    summary = timer.summary()
    assert summary["first_batch_seconds"] >= 0.0 and summary["seconds_per_image_after_first_batch"] is None
