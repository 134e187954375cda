"""VOC-style average precision for one image: matching, AP, AP over IoU thresholds, recall.

Same semantics as matterport's ``utils.compute_ap`` family (numpy only):

* predictions are matched greedily in descending score order; each one takes the unmatched
  ground-truth instance of the *same class* with the highest IoU, provided that IoU reaches
  the threshold; each ground-truth instance is matched at most once;
* AP is the area under the precision/recall curve with all-point interpolation (VOC 2010+):
  precision is made monotonically decreasing from the right and summed over recall steps.

Conventions: boxes are pixel (y1, x1, y2, x2); masks are [H, W, N] bool; IoU is mask IoU when
``use_masks`` (matterport's default) and box IoU otherwise. All-zero box rows are treated as
padding and removed together with their masks, class ids and scores, as matterport does.
Crowd ground truth (negative class ids) is not treated specially: it never matches a
prediction, so remove it first (as `mrcnn.evaluation.evaluate` does) unless you mean to count it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrcnn.utils import compute_overlaps, compute_overlaps_masks

DEFAULT_IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2).tolist())  # 0.5, 0.55, ..., 0.95


def _as_boxes(name: str, boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be [N, 4] (y1, x1, y2, x2), got shape {boxes.shape}")
    return boxes


def _prepare(
    name: str,
    boxes: np.ndarray,
    class_ids: np.ndarray,
    masks: np.ndarray | None,
    scores: np.ndarray | None,
    use_masks: bool,
):
    """Validates one side (gt or pred) and drops all-zero (padding) boxes."""
    boxes = _as_boxes(f"{name}_boxes", boxes)
    class_ids = np.asarray(class_ids).reshape(-1)
    n = boxes.shape[0]
    shapes = {f"{name}_boxes": boxes.shape, f"{name}_class_ids": class_ids.shape}
    counts = {f"{name}_boxes": n, f"{name}_class_ids": len(class_ids)}
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        shapes[f"{name}_scores"] = scores.shape
        counts[f"{name}_scores"] = len(scores)
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"{name}_masks must be [H, W, N], got shape {masks.shape}")
        shapes[f"{name}_masks"] = masks.shape
        counts[f"{name}_masks"] = masks.shape[-1]
    elif use_masks:
        raise ValueError(f"{name}_masks is None but use_masks=True; pass masks or use_masks=False")
    if len(set(counts.values())) > 1:
        details = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise ValueError(f"{name} instance counts disagree: {details}")
    keep = np.any(boxes != 0, axis=1)
    if not keep.all():
        boxes, class_ids = boxes[keep], class_ids[keep]
        scores = scores[keep] if scores is not None else None
        masks = masks[..., keep] if masks is not None else None
    return boxes, class_ids, masks, scores


def compute_matches(
    gt_boxes: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_masks: np.ndarray | None,
    pred_boxes: np.ndarray,
    pred_class_ids: np.ndarray,
    pred_scores: np.ndarray,
    pred_masks: np.ndarray | None,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
    use_masks: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matches predictions to ground truth, greedily by descending score.

    Args:
        gt_boxes: [G, (y1, x1, y2, x2)] pixel boxes.
        gt_class_ids: [G] int.
        gt_masks: [H, W, G] bool (may be None when use_masks=False).
        pred_boxes: [P, 4] pixel boxes.
        pred_class_ids: [P] int.
        pred_scores: [P] float confidences.
        pred_masks: [H, W, P] bool (may be None when use_masks=False).
        iou_threshold: minimum IoU for a match.
        score_threshold: predictions scoring below it are dropped before matching (so they are
            neither true nor false positives). Note: matterport's argument of this name was an
            extra IoU floor, which has no effect at its default; this one filters by score.
        use_masks: mask IoU (True) or box IoU (False).

    Returns:
        gt_match: [G] int, for each ground truth the index (into the *sorted* predictions) of
            its match, or -1.
        pred_match: [P'] int, for each kept prediction in descending score order the index of
            the ground truth it matched, or -1.
        overlaps: [P', G] float IoU, rows in the same sorted order.

    Raises:
        ValueError: naming the arrays whose instance counts disagree, or masks of different sizes.
    """
    gt_boxes, gt_class_ids, gt_masks, _ = _prepare("gt", gt_boxes, gt_class_ids, gt_masks, None, use_masks)
    pred_boxes, pred_class_ids, pred_masks, pred_scores = _prepare(
        "pred", pred_boxes, pred_class_ids, pred_masks, pred_scores, use_masks
    )
    keep = pred_scores >= score_threshold
    # Stable sort: equal scores keep their input order, so results do not depend on the sort algorithm.
    order = np.argsort(-pred_scores[keep], kind="stable")
    kept = np.flatnonzero(keep)[order]
    pred_boxes, pred_class_ids = pred_boxes[kept], pred_class_ids[kept]
    pred_masks = pred_masks[..., kept] if pred_masks is not None else None

    if use_masks:
        overlaps = compute_overlaps_masks(pred_masks, gt_masks)
    else:
        overlaps = compute_overlaps(pred_boxes, gt_boxes)
    overlaps = np.asarray(overlaps, dtype=np.float64).reshape(len(kept), len(gt_class_ids))

    gt_match = np.full(len(gt_class_ids), -1, dtype=np.int64)
    pred_match = np.full(len(kept), -1, dtype=np.int64)
    for i in range(len(kept)):
        # The best still-unmatched ground truth of the same class, if its IoU is high enough.
        candidates = (gt_match == -1) & (gt_class_ids == pred_class_ids[i]) & (overlaps[i] >= iou_threshold)
        if not candidates.any():
            continue
        j = int(np.argmax(np.where(candidates, overlaps[i], -1.0)))
        gt_match[j] = i
        pred_match[i] = j
    return gt_match, pred_match, overlaps


def compute_ap(
    gt_boxes: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_masks: np.ndarray | None,
    pred_boxes: np.ndarray,
    pred_class_ids: np.ndarray,
    pred_scores: np.ndarray,
    pred_masks: np.ndarray | None,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
    use_masks: bool = True,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Average precision at one IoU threshold (all-point interpolation), over all classes of one image.

    Arguments as in `compute_matches`.

    Returns:
        mAP: float. 0.0 when there is ground truth but no prediction; NaN when there is no
            ground truth (recall is undefined; matterport gives NaN too) — skip such images or
            use nan-aware means.
        precisions: [P' + 2] interpolated precisions, padded with a leading and trailing point.
        recalls: [P' + 2] recalls, padded with 0 in front and 1 at the end.
        overlaps: [P', G] IoU of the sorted predictions against the ground truth.
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks,
        iou_threshold=iou_threshold, score_threshold=score_threshold, use_masks=use_masks,
    )
    true_positives = np.cumsum(pred_match > -1)
    precisions = true_positives / (np.arange(len(pred_match)) + 1)
    num_gt = len(gt_match)
    recalls = true_positives / num_gt if num_gt else np.zeros(len(pred_match))

    precisions = np.concatenate([[0.0], precisions, [0.0]])
    recalls = np.concatenate([[0.0], recalls, [1.0]])
    # Interpolate: precision at recall r is the best precision at any recall >= r.
    precisions = np.maximum.accumulate(precisions[::-1])[::-1]
    steps = np.flatnonzero(recalls[:-1] != recalls[1:]) + 1
    if num_gt == 0:
        return float("nan"), precisions, recalls, overlaps
    ap = float(np.sum((recalls[steps] - recalls[steps - 1]) * precisions[steps]))
    return ap, precisions, recalls, overlaps


def compute_ap_range(
    gt_box: np.ndarray,
    gt_class_id: np.ndarray,
    gt_mask: np.ndarray | None,
    pred_box: np.ndarray,
    pred_class_id: np.ndarray,
    pred_score: np.ndarray,
    pred_mask: np.ndarray | None,
    iou_thresholds: Sequence[float] | None = None,
    verbose: int = 0,
    use_masks: bool = True,
) -> float:
    """Mean of `compute_ap` over IoU thresholds (default 0.5:0.95:0.05, COCO's "AP").

    Argument names are matterport's (singular); they mean the same as in `compute_ap`.

    Returns:
        The mean AP (NaN when there is no ground truth).
    """
    thresholds = DEFAULT_IOU_THRESHOLDS if iou_thresholds is None else tuple(iou_thresholds)
    if not thresholds:
        raise ValueError("iou_thresholds is empty")
    aps = []
    for threshold in thresholds:
        ap, _, _, _ = compute_ap(
            gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score, pred_mask,
            iou_threshold=float(threshold), use_masks=use_masks,
        )
        aps.append(ap)
        if verbose:
            print(f"AP @{threshold:.2f}:\t {ap:.3f}")
    mean_ap = float(np.mean(aps))
    if verbose:
        print(f"AP @{thresholds[0]:.2f}-{thresholds[-1]:.2f}:\t {mean_ap:.3f}")
    return mean_ap


def compute_recall(pred_boxes: np.ndarray, gt_boxes: np.ndarray, iou: float) -> tuple[float, np.ndarray]:
    """Box recall of a set of boxes (e.g. RPN proposals) at an IoU threshold, ignoring classes.

    Args:
        pred_boxes: [P, (y1, x1, y2, x2)].
        gt_boxes: [G, (y1, x1, y2, x2)], same frame.
        iou: IoU threshold.

    Returns:
        recall: fraction of ground-truth boxes that some prediction overlaps with IoU >= `iou`
            (NaN when there is no ground truth). matterport counted a ground truth only if it
            was some prediction's *best* match; this counts every covered one.
        positive_ids: [K] int indices of the predictions with IoU >= `iou` to some ground truth.
    """
    pred_boxes = _as_boxes("pred_boxes", pred_boxes)
    gt_boxes = _as_boxes("gt_boxes", gt_boxes)
    overlaps = np.asarray(compute_overlaps(pred_boxes, gt_boxes)).reshape(len(pred_boxes), len(gt_boxes))
    hits = overlaps >= iou
    positive_ids = np.flatnonzero(hits.any(axis=1))
    if len(gt_boxes) == 0:
        return float("nan"), positive_ids
    return float(hits.any(axis=0).mean()), positive_ids
