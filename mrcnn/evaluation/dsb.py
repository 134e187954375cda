"""The 2018 Data Science Bowl metric: precision over IoU thresholds, per image, then averaged.

For one image and a threshold t, a prediction and a ground-truth instance match when their mask
IoU is above t (strictly), each instance matching at most one other; then

    precision(t) = TP(t) / (TP(t) + FP(t) + FN(t))

with TP the matched pairs, FP the unmatched predictions and FN the unmatched ground truth. The
image's score is the mean of precision(t) over t = 0.50, 0.55, ..., 0.95, and the dataset's score
the mean over images. Scores of the predictions are ignored (every prediction counts).

Conventions for empty sets: no ground truth and no prediction scores 1 at every threshold (nothing
to find, nothing wrong); only one of them empty scores 0.

Matching: for t >= 0.5 and instances that do not overlap within each set, a pair above t is
unique, and TP is simply the number of such pairs (the Kaggle kernels' count). Mask R-CNN's
predictions may overlap, so pairs are matched one-to-one: the largest matching among the pairs
above t (a nucleus is never counted twice).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.optimize
import scipy.sparse

DSB_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


def instance_iou(gt_masks: np.ndarray, pred_masks: np.ndarray) -> np.ndarray:
    """Mask IoU between every ground-truth and predicted instance, in memory ~ pixels covered.

    Args:
        gt_masks: [H, W, N] bool (instances may overlap).
        pred_masks: [H, W, M] bool.

    Returns:
        [N, M] float64 IoU.

    Raises:
        ValueError: naming both shapes when H, W differ or an input is not [H, W, K].
    """
    gt_masks, pred_masks = np.asarray(gt_masks), np.asarray(pred_masks)
    if gt_masks.ndim != 3 or pred_masks.ndim != 3 or gt_masks.shape[:2] != pred_masks.shape[:2]:
        raise ValueError(
            f"gt_masks and pred_masks must be [H, W, N] and [H, W, M] of the same H, W; got {gt_masks.shape} "
            f"and {pred_masks.shape}"
        )
    n, m = gt_masks.shape[-1], pred_masks.shape[-1]
    if n == 0 or m == 0:
        return np.zeros((n, m))
    # Sparse pixel x instance incidence matrices: the intersections are one sparse product, far
    # cheaper than an [H*W, N] dense product for hundreds of small nuclei.
    gt = _incidence(gt_masks)
    pred = _incidence(pred_masks)
    intersection = (gt.T @ pred).toarray()
    gt_area = np.asarray(gt.sum(axis=0)).ravel()
    pred_area = np.asarray(pred.sum(axis=0)).ravel()
    union = gt_area[:, None] + pred_area[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection, dtype=np.float64), where=union > 0)


def _incidence(masks: np.ndarray) -> scipy.sparse.csr_matrix:
    flat = masks.reshape(-1, masks.shape[-1])
    pixels, instances = np.nonzero(flat)
    data = np.ones(pixels.size, dtype=np.float64)
    return scipy.sparse.csr_matrix((data, (pixels, instances)), shape=flat.shape)


def match_count(iou: np.ndarray, threshold: float) -> int:
    """Largest number of one-to-one matches with IoU > threshold (ties broken by higher IoU).

    Args:
        iou: [N, M] IoU of ground truth (rows) and predictions (columns).
        threshold: IoU a pair must exceed.
    """
    candidate = iou > threshold
    rows = np.flatnonzero(candidate.any(axis=1))
    cols = np.flatnonzero(candidate.any(axis=0))
    if rows.size == 0:
        return 0
    sub = candidate[np.ix_(rows, cols)]
    if sub.sum(axis=0).max() == 1 and sub.sum(axis=1).max() == 1:
        return int(rows.size)  # the usual case (disjoint instances): every candidate pair is unique
    # Maximum bipartite matching among the candidate pairs (a Hungarian assignment on them).
    cost = -sub.astype(np.float64) - 1e-3 * np.where(sub, iou[np.ix_(rows, cols)], 0.0)
    r, c = scipy.optimize.linear_sum_assignment(cost)
    return int(sub[r, c].sum())


def dsb_precisions(gt_masks: np.ndarray, pred_masks: np.ndarray,
                   thresholds: Sequence[float] = DSB_THRESHOLDS) -> np.ndarray:
    """precision(t) = TP / (TP + FP + FN) of one image at each threshold.

    Args:
        gt_masks: [H, W, N] bool ground-truth instances.
        pred_masks: [H, W, M] bool predicted instances.
        thresholds: IoU thresholds (default 0.5:0.95:0.05).

    Returns:
        [T] float64 precisions.
    """
    iou = instance_iou(gt_masks, pred_masks)
    n, m = iou.shape
    out = np.empty(len(thresholds))
    for i, t in enumerate(thresholds):
        if n == 0 and m == 0:
            out[i] = 1.0
            continue
        tp = match_count(iou, float(t))
        out[i] = tp / (n + m - tp)  # TP + FP + FN = TP + (M - TP) + (N - TP)
    return out


def dsb_score(gt_masks: np.ndarray, pred_masks: np.ndarray, thresholds: Sequence[float] = DSB_THRESHOLDS) -> float:
    """The DSB2018 score of one image: mean of `dsb_precisions` over the thresholds."""
    return float(np.mean(dsb_precisions(gt_masks, pred_masks, thresholds)))


def dsb_score_dataset(pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                      thresholds: Sequence[float] = DSB_THRESHOLDS) -> dict[str, float | list[float]]:
    """DSB2018 score over images: per-image scores and their mean.

    Args:
        pairs: (gt_masks [H,W,N], pred_masks [H,W,M]) per image.
        thresholds: IoU thresholds.

    Returns:
        ``{"dsb_score": mean over images, "per_image": [scores], "precision_at": {t: mean precision}}``.

    Raises:
        ValueError: when `pairs` is empty.
    """
    if len(pairs) == 0:
        raise ValueError("dsb_score_dataset needs at least one (gt_masks, pred_masks) pair")
    precisions = np.array([dsb_precisions(gt, pred, thresholds) for gt, pred in pairs])  # [images, T]
    per_image = precisions.mean(axis=1)
    return {
        "dsb_score": float(per_image.mean()),
        "per_image": [float(v) for v in per_image],
        "precision_at": {f"{t:.2f}": float(v) for t, v in zip(thresholds, precisions.mean(axis=0))},
    }
