"""samples/nucleus/figures.py: matching, image picking and the prediction pictures."""

from __future__ import annotations

import numpy as np
import pytest

from samples.nucleus.evaluate import is_brightfield
from samples.nucleus.figures import (
    GREEN,
    RED,
    YELLOW,
    match,
    pick_images,
    prediction_panels,
    save_figure,
)
from tests.samples.nucleus_fixture import load_fixture


def _squares() -> np.ndarray:
    masks = np.zeros((64, 64, 3), bool)
    masks[2:12, 2:12, 0] = masks[20:32, 20:32, 1] = masks[40:60, 40:60, 2] = True
    return masks


def test_match_is_one_to_one_above_the_iou_threshold():
    gt = _squares()
    pred = np.zeros((64, 64, 3), bool)
    pred[2:12, 2:11, 0] = True  # IoU 0.9 with nucleus 0
    pred[2:12, 2:12, 1] = True  # a duplicate of nucleus 0: unmatched
    pred[40:60, 40:48, 2] = True  # IoU 0.4 with nucleus 2: unmatched
    gt_hit, pred_hit = match(gt, pred)
    assert gt_hit.tolist() == [True, False, False]
    assert pred_hit.sum() == 1 and not pred_hit[2]
    assert match(gt, np.zeros((64, 64, 0), bool))[0].tolist() == [False] * 3


def test_panels_colour_found_false_and_missed_and_the_png_is_written(tmp_path):
    gt = _squares()
    pred = np.concatenate([gt[..., :1], np.zeros((64, 64, 1), bool)], axis=-1)
    pred[50:55, 2:7, 1] = True  # a false positive
    image = np.full((64, 64, 3), 20, np.uint8)
    result = {"masks": pred, "scores": np.array([0.9, 0.8]), "rois": np.zeros((2, 4)), "class_ids": np.ones(2)}
    low = {"masks": pred, "scores": np.array([0.9, 0.1])}  # the false one is under min_score
    panels = prediction_panels(image, gt, {"A": result, "B": low})
    assert [title for title, _ in panels] == ["ground truth: 3 nuclei", "A: 1 found, 1 false, 2 missed",
                                              "B: 1 found, 0 false, 2 missed"]
    a = panels[1][1]
    assert tuple(a[2, 2]) == pytest.approx(GREEN) and tuple(a[50, 2]) == pytest.approx(RED)
    assert tuple(a[20, 20]) == pytest.approx(YELLOW) and tuple(panels[2][1][50, 2]) != pytest.approx(RED)
    path = save_figure([("test", panels)], tmp_path / "figure.png")
    assert path.exists() and 0 < path.stat().st_size < 300_000


def test_pick_images_needs_both_kinds():
    dataset = load_fixture()
    kinds = [is_brightfield(dataset.load_image(i)) for i in dataset.image_ids]
    assert not any(kinds)  # both fixture crops are fluorescence
    assert not is_brightfield(np.zeros((8, 8, 3), np.uint8)) and is_brightfield(np.full((8, 8, 3), 220, np.uint8))
    with pytest.raises(ValueError, match="brightfield"):
        pick_images(dataset)
