"""Tests for mrcnn.evaluation.ap: matching rules and exact AP values worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn.evaluation.ap import compute_ap, compute_ap_range, compute_matches, compute_recall

H = W = 64


def _masks_from_boxes(boxes):
    masks = np.zeros((H, W, len(boxes)), bool)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        masks[y1:y2, x1:x2, i] = True
    return masks


# Hand-worked case. Two GT (class 1): A = (0,0,10,10), B = (20,20,30,30).
# Three predictions of class 1:
#   p1 score 0.9 = A exactly                 -> IoU(A) = 1            -> TP
#   p2 score 0.8 far away                    -> IoU 0                 -> FP
#   p3 score 0.7 = (20,20,30,35)             -> IoU(B) = 100/150 = 2/3 -> TP at thresholds <= 2/3
# Given out of score order on purpose (p3, p1, p2) to check the sorting.
GT_BOXES = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
GT_IDS = np.array([1, 1])
PRED_BOXES = np.array([[20, 20, 30, 35], [0, 0, 10, 10], [50, 50, 60, 60]])
PRED_IDS = np.array([1, 1, 1])
PRED_SCORES = np.array([0.7, 0.9, 0.8])


def _case(use_masks):
    gt_masks = _masks_from_boxes(GT_BOXES) if use_masks else None
    pred_masks = _masks_from_boxes(PRED_BOXES) if use_masks else None
    return GT_BOXES, GT_IDS, gt_masks, PRED_BOXES, PRED_IDS, PRED_SCORES, pred_masks


@pytest.mark.parametrize("use_masks", [True, False])
def test_hand_worked_ap(use_masks):
    # Sorted: TP, FP, TP. precision = 1, 1/2, 2/3; recall = 1/2, 1/2, 1.
    # Padded and made monotone from the right: p = [1, 1, 2/3, 2/3, 0], r = [0, .5, .5, 1, 1].
    # Recall steps at 0 -> .5 (precision 1) and .5 -> 1 (precision 2/3):
    # AP = 0.5 * 1 + 0.5 * 2/3 = 5/6.
    ap, precisions, recalls, overlaps = compute_ap(*_case(use_masks), use_masks=use_masks)
    assert ap == pytest.approx(5 / 6, abs=1e-12)
    np.testing.assert_allclose(precisions, [1, 1, 2 / 3, 2 / 3, 0])
    np.testing.assert_allclose(recalls, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(overlaps, [[1, 0], [0, 0], [0, 2 / 3]])
    # At IoU 0.7, p3 is a false positive too: TP, FP, FP -> AP = 0.5 * 1 = 0.5.
    ap70, _, _, _ = compute_ap(*_case(use_masks), iou_threshold=0.7, use_masks=use_masks)
    assert ap70 == pytest.approx(0.5, abs=1e-12)


def test_hand_worked_matches():
    gt_match, pred_match, _ = compute_matches(*_case(True))
    # Indices refer to the predictions sorted by score: [p1, p2, p3].
    np.testing.assert_array_equal(gt_match, [0, 2])
    np.testing.assert_array_equal(pred_match, [0, -1, 1])
    assert gt_match.dtype.kind == "i" and pred_match.dtype.kind == "i"


def test_hand_worked_ap_range():
    # Thresholds 0.50, 0.55, 0.60, 0.65 give 5/6; 0.70 ... 0.95 (6 of them) give 1/2.
    # Mean = (4 * 5/6 + 6 * 1/2) / 10 = 19/30.
    assert compute_ap_range(*_case(True)) == pytest.approx(19 / 30, abs=1e-12)


def test_perfect_predictions_score_one():
    rng = np.random.default_rng(0)
    boxes = np.array([[2, 3, 20, 25], [30, 30, 50, 60], [10, 40, 28, 52]])
    masks = _masks_from_boxes(boxes)
    ids = np.array([1, 2, 1])
    scores = rng.random(3)
    ap, precisions, recalls, _ = compute_ap(boxes, ids, masks, boxes, ids, scores, masks)
    assert ap == 1.0
    assert compute_ap(boxes, ids, masks, boxes, ids, scores, masks, use_masks=False)[0] == 1.0
    assert compute_ap_range(boxes, ids, masks, boxes, ids, scores, masks) == 1.0
    assert compute_ap_range(boxes, ids, masks, boxes, ids, scores, masks, iou_thresholds=[0.5, 0.99]) == 1.0


def test_zero_predictions():
    masks = _masks_from_boxes(GT_BOXES)
    ap, precisions, recalls, overlaps = compute_ap(GT_BOXES, GT_IDS, masks, np.zeros((0, 4)), np.zeros(0),
                                                   np.zeros(0), np.zeros((H, W, 0), bool))
    assert ap == 0.0
    assert overlaps.shape == (0, 2)
    gt_match, pred_match, _ = compute_matches(GT_BOXES, GT_IDS, masks, np.zeros((0, 4)), np.zeros(0),
                                              np.zeros(0), np.zeros((H, W, 0), bool))
    np.testing.assert_array_equal(gt_match, [-1, -1])
    assert pred_match.shape == (0,)


def test_zero_ground_truth_is_nan_without_warnings():
    masks = _masks_from_boxes(PRED_BOXES)
    with np.errstate(all="raise"):
        ap, _, _, overlaps = compute_ap(np.zeros((0, 4)), np.zeros(0), np.zeros((H, W, 0), bool),
                                        PRED_BOXES, PRED_IDS, PRED_SCORES, masks)
    assert np.isnan(ap)
    assert overlaps.shape == (3, 0)
    _, pred_match, _ = compute_matches(np.zeros((0, 4)), np.zeros(0), np.zeros((H, W, 0), bool),
                                       PRED_BOXES, PRED_IDS, PRED_SCORES, masks)
    np.testing.assert_array_equal(pred_match, [-1, -1, -1])


def test_class_must_agree_and_best_same_class_gt_is_taken():
    # One prediction of class 2. GT 0 (class 1) overlaps it best, GT 1 (class 2) less but enough:
    # the prediction skips the other-class GT and matches GT 1.
    gt_boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 14]])
    gt_ids = np.array([1, 2])
    pred_boxes = np.array([[0, 0, 10, 10]])
    gt_match, pred_match, overlaps = compute_matches(gt_boxes, gt_ids, None, pred_boxes, np.array([2]),
                                                     np.array([0.9]), None, use_masks=False)
    np.testing.assert_allclose(overlaps, [[1.0, 100 / 140]])
    np.testing.assert_array_equal(gt_match, [-1, 0])
    np.testing.assert_array_equal(pred_match, [1])
    # A class-1 prediction elsewhere with the right box but the wrong class is a false positive.
    ap, _, _, _ = compute_ap(gt_boxes[:1], gt_ids[:1], None, pred_boxes, np.array([3]), np.array([0.9]), None,
                             use_masks=False)
    assert ap == 0.0


def test_each_gt_matched_once_higher_score_wins():
    # Two predictions on one GT: the higher-scored one matches although the other has a higher IoU.
    gt_boxes = np.array([[0, 0, 10, 10]])
    pred_boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 12]])  # IoU 1 and 100/120
    gt_match, pred_match, _ = compute_matches(gt_boxes, np.array([1]), None, pred_boxes, np.array([1, 1]),
                                              np.array([0.3, 0.6]), None, use_masks=False)
    np.testing.assert_array_equal(pred_match, [0, -1])  # sorted: [box 1 (0.6), box 0 (0.3)]
    np.testing.assert_array_equal(gt_match, [0])
    # TP then FP: AP = 1 (full recall reached at precision 1).
    ap, precisions, _, _ = compute_ap(gt_boxes, np.array([1]), None, pred_boxes, np.array([1, 1]),
                                      np.array([0.3, 0.6]), None, use_masks=False)
    assert ap == 1.0
    np.testing.assert_allclose(precisions, [1, 1, 0.5, 0])


def test_false_positive_first_halves_ap():
    # FP scored above the TP: precision at recall 1 is 1/2 -> AP = 0.5.
    gt_boxes = np.array([[0, 0, 10, 10]])
    pred_boxes = np.array([[0, 0, 10, 10], [40, 40, 50, 50]])
    ap, _, _, _ = compute_ap(gt_boxes, np.array([1]), None, pred_boxes, np.array([1, 1]), np.array([0.5, 0.9]),
                             None, use_masks=False)
    assert ap == pytest.approx(0.5, abs=1e-12)


def test_score_threshold_drops_predictions():
    gt_boxes = np.array([[0, 0, 10, 10]])
    pred_boxes = np.array([[0, 0, 10, 10], [40, 40, 50, 50]])
    args = (gt_boxes, np.array([1]), None, pred_boxes, np.array([1, 1]), np.array([0.5, 0.9]), None)
    _, pred_match, overlaps = compute_matches(*args, score_threshold=0.95, use_masks=False)
    assert pred_match.shape == (0,) and overlaps.shape == (0, 1)
    ap, _, _, _ = compute_ap(*args, score_threshold=0.0, use_masks=False)
    assert ap == pytest.approx(0.5)
    # Threshold 0.6 drops the TP (score 0.5) and keeps the FP (0.9): AP 0.
    assert compute_ap(*args, score_threshold=0.6, use_masks=False)[0] == 0.0


def test_zero_padding_is_trimmed():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 0, 0]])
    masks = _masks_from_boxes(boxes)
    ids = np.array([1, 0])
    ap, _, _, overlaps = compute_ap(boxes, ids, masks, boxes[:1], ids[:1], np.array([0.9]), masks[..., :1])
    assert ap == 1.0 and overlaps.shape == (1, 1)


def test_mismatched_counts_name_arrays():
    masks = _masks_from_boxes(GT_BOXES)
    with pytest.raises(ValueError, match="gt_class_ids"):
        compute_ap(GT_BOXES, np.array([1]), masks, PRED_BOXES, PRED_IDS, PRED_SCORES, _masks_from_boxes(PRED_BOXES))
    with pytest.raises(ValueError, match="pred_scores"):
        compute_ap(GT_BOXES, GT_IDS, masks, PRED_BOXES, PRED_IDS, PRED_SCORES[:2], _masks_from_boxes(PRED_BOXES))
    with pytest.raises(ValueError, match="use_masks"):
        compute_ap(GT_BOXES, GT_IDS, None, PRED_BOXES, PRED_IDS, PRED_SCORES, None)


def test_compute_recall():
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    pred_boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 35], [0, 0, 10, 11], [60, 60, 63, 63]])
    recall, positive_ids = compute_recall(pred_boxes, gt_boxes, 0.5)
    assert recall == pytest.approx(2 / 3)
    np.testing.assert_array_equal(positive_ids, [0, 1, 2])
    recall, positive_ids = compute_recall(pred_boxes, gt_boxes, 0.7)
    assert recall == pytest.approx(1 / 3)
    np.testing.assert_array_equal(positive_ids, [0, 2])
    recall, positive_ids = compute_recall(np.zeros((0, 4)), gt_boxes, 0.5)
    assert recall == 0.0 and positive_ids.shape == (0,)
    assert np.isnan(compute_recall(pred_boxes, np.zeros((0, 4)), 0.5)[0])
