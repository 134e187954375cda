"""Tests for mrcnn/evaluation/dsb.py on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn.evaluation.dsb import (
    DSB_THRESHOLDS,
    dsb_precisions,
    dsb_score,
    dsb_score_dataset,
    instance_iou,
    match_count,
)


def _boxes(shape, boxes):
    masks = np.zeros(tuple(shape) + (len(boxes),), bool)
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        masks[y1:y2, x1:x2, k] = True
    return masks


def test_perfect_prediction_scores_one():
    gt = _boxes((20, 20), [(0, 0, 5, 5), (10, 10, 20, 20)])
    assert dsb_score(gt, gt[..., ::-1]) == 1.0


def test_hand_worked_image():
    # GT: A = 10x10 square, B = 10x10 square elsewhere, C = a 4x4 square nobody predicts.
    gt = _boxes((40, 40), [(0, 0, 10, 10), (20, 20, 30, 30), (0, 30, 4, 34)])
    # P1 covers A shifted by one column: IoU = 90 / 110 = 0.818...
    # P2 is B's top 7 rows: IoU = 70 / 100 = 0.7.  P3 is a false positive.
    pred = _boxes((40, 40), [(0, 1, 10, 11), (20, 20, 27, 30), (35, 35, 38, 38)])
    iou = instance_iou(gt, pred)
    np.testing.assert_allclose(iou[0, 0], 90 / 110)
    np.testing.assert_allclose(iou[1, 1], 70 / 100)
    assert iou[2].max() == 0 and iou[:, 2].max() == 0
    # Thresholds 0.50, 0.55, 0.60, 0.65: TP = 2 -> 2 / (2 + 1 + 1) = 0.5.
    # 0.70: IoU 0.7 is not ABOVE 0.7 -> TP = 1: 1 / (1 + 2 + 2) = 0.2; same at 0.75 and 0.80.
    # 0.85, 0.90, 0.95: TP = 0 -> 0.
    expected = [0.5] * 4 + [0.2] * 3 + [0.0] * 3
    np.testing.assert_allclose(dsb_precisions(gt, pred), expected)
    assert dsb_score(gt, pred) == pytest.approx(np.mean(expected))  # 0.26


def test_duplicate_predictions_match_once():
    gt = _boxes((20, 20), [(0, 0, 10, 10)])
    pred = _boxes((20, 20), [(0, 0, 10, 10), (0, 0, 10, 9)])  # IoU 1.0 and 0.9: one TP, one FP
    np.testing.assert_allclose(dsb_precisions(gt, pred), 0.5)
    # Overlapping sets: greedy-by-IoU would take (0, 0) and stop at 1; the largest matching is 2.
    assert match_count(np.array([[0.9, 0.8], [0.85, 0.0]]), 0.5) == 2
    assert match_count(np.array([[0.9, 0.8], [0.0, 0.0]]), 0.5) == 1


def test_empty_conventions():
    empty = np.zeros((8, 8, 0), bool)
    one = _boxes((8, 8), [(0, 0, 4, 4)])
    assert dsb_score(empty, empty) == 1.0
    assert dsb_score(one, empty) == 0.0
    assert dsb_score(empty, one) == 0.0


def test_dataset_mean_and_errors():
    gt = _boxes((10, 10), [(0, 0, 5, 5)])
    result = dsb_score_dataset([(gt, gt), (gt, np.zeros((10, 10, 0), bool))])
    assert result["dsb_score"] == 0.5 and result["per_image"] == [1.0, 0.0]
    assert list(result["precision_at"]) == [f"{t:.2f}" for t in DSB_THRESHOLDS]
    with pytest.raises(ValueError, match="at least one"):
        dsb_score_dataset([])
    with pytest.raises(ValueError, match=r"\(10, 10, 1\)"):
        instance_iou(gt, np.zeros((9, 10, 1), bool))


def test_iou_matches_dense_reference():
    rng = np.random.default_rng(0)
    gt = rng.random((30, 30, 5)) > 0.7
    pred = rng.random((30, 30, 4)) > 0.6
    inter = np.einsum("hwn,hwm->nm", gt.astype(float), pred.astype(float))
    union = gt.sum((0, 1))[:, None] + pred.sum((0, 1))[None, :] - inter
    np.testing.assert_allclose(instance_iou(gt, pred), inter / union)


def test_label_images_score_as_their_masks():
    # Disjoint instances: an [H, W] label image (value k + 1 on instance k) is the same instances
    # as the mask stack, in 4 bytes a pixel instead of one per instance.
    gt = _boxes((40, 40), [(0, 0, 10, 10), (20, 20, 30, 30), (0, 30, 4, 34)])
    pred = _boxes((40, 40), [(0, 1, 10, 11), (20, 20, 27, 30), (35, 35, 38, 38)])

    def labels(masks):
        return (masks * np.arange(1, masks.shape[-1] + 1)).max(axis=-1).astype(np.int32)

    np.testing.assert_array_equal(instance_iou(labels(gt), labels(pred)), instance_iou(gt, pred))
    np.testing.assert_array_equal(instance_iou(gt, labels(pred)), instance_iou(gt, pred))
    np.testing.assert_allclose(dsb_precisions(labels(gt), labels(pred)), dsb_precisions(gt, pred))
    # Gaps in the numbering are no instances: labels 1, 3 and 9 are three nuclei, scored as 1, 2, 3.
    renumbered = labels(gt)
    gapped = np.choose(renumbered, [0, 1, 3, 9]).astype(np.int32)
    np.testing.assert_array_equal(instance_iou(gapped, labels(pred)), instance_iou(gt, pred))
    assert dsb_score(gapped, gapped) == 1.0  # scored against themselves: perfect, not 3 of 9 found
    assert dsb_score(np.zeros((40, 40), np.int32), np.zeros((40, 40), np.int32)) == 1.0
    with pytest.raises(ValueError, match=r"\[H, W\] integer labels .* \(40, 40\) float64"):
        instance_iou(gt, np.zeros((40, 40)))
