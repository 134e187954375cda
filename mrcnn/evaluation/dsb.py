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

    Each side is either an [H, W, K] mask stack or an [H, W] integer label image (0 background,
    each positive value one instance, in increasing order; `detect_tiled(output="labels")` numbers
    them 1..K): a label image of a large field with hundreds of nuclei takes 4 bytes a pixel where
    the stack takes K. Values absent from a label image are no instances (`instance_incidence`).

    Args:
        gt_masks: [H, W, N] bool (instances may overlap), or [H, W] int labels (N distinct values > 0).
        pred_masks: [H, W, M] bool, or [H, W] int labels (M distinct values > 0).

    Returns:
        [N, M] float64 IoU.

    Raises:
        ValueError: naming both shapes when H, W differ or an input is neither form.
    """
    gt_masks, pred_masks = np.asarray(gt_masks), np.asarray(pred_masks)
    if not (_is_instances(gt_masks) and _is_instances(pred_masks)) or gt_masks.shape[:2] != pred_masks.shape[:2]:
        raise ValueError(
            f"gt_masks and pred_masks must be [H, W, N] masks or [H, W] integer labels of the same H, W; got "
            f"{gt_masks.shape} {gt_masks.dtype} and {pred_masks.shape} {pred_masks.dtype}"
        )
    # Sparse pixel x instance incidence matrices: the intersections are one sparse product, far
    # cheaper than an [H*W, N] dense product for hundreds of small nuclei.
    gt = instance_incidence(gt_masks)
    pred = instance_incidence(pred_masks)
    n, m = gt.shape[1], pred.shape[1]
    if n == 0 or m == 0:
        return np.zeros((n, m))
    intersection = (gt.T @ pred).toarray()
    gt_area = np.asarray(gt.sum(axis=0)).ravel()
    pred_area = np.asarray(pred.sum(axis=0)).ravel()
    union = gt_area[:, None] + pred_area[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection, dtype=np.float64), where=union > 0)


def _is_instances(array: np.ndarray) -> bool:
    return array.ndim == 3 or (array.ndim == 2 and np.issubdtype(array.dtype, np.integer))


def instance_incidence(instances: np.ndarray) -> scipy.sparse.csr_matrix:
    """[H * W, K] sparse 0/1 pixel x instance matrix of [H, W, K] masks or an [H, W] label image.

    A label image's instances are its distinct positive values in increasing order: gaps in the
    numbering (labels 1 and 7 only, as microscopy tools write after deleting objects) are not
    instances, so they count neither as missed objects nor as false detections.
    """
    if instances.ndim == 2:
        flat = instances.ravel()
        pixels = np.flatnonzero(flat > 0)
        present, columns = np.unique(flat[pixels], return_inverse=True)
        shape = (flat.size, present.size)
    else:
        flat = instances.reshape(instances.shape[0] * instances.shape[1], instances.shape[2])
        pixels, columns = np.nonzero(flat)
        shape = flat.shape
    data = np.ones(pixels.size, dtype=np.float64)
    return scipy.sparse.csr_matrix((data, (pixels, columns)), shape=shape)


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
        gt_masks: [H, W, N] bool ground-truth instances, or [H, W] int labels (`instance_iou`).
        pred_masks: [H, W, M] bool predicted instances, or [H, W] int labels.
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
        pairs: (gt_masks [H,W,N], pred_masks [H,W,M]) per image (either may be [H, W] int labels).
        thresholds: IoU thresholds.

    Returns:
        ``{"dsb_score": mean over images, "per_image": [scores], "precision_at": {t: mean precision}}``.

    Raises:
        ValueError: when `pairs` is empty.
    """
    if len(pairs) == 0:
        raise ValueError("dsb_score_dataset needs at least one (gt_masks, pred_masks) pair")
    return summarize_precisions([dsb_precisions(gt, pred, thresholds) for gt, pred in pairs], thresholds)


def summarize_precisions(precisions: Sequence[np.ndarray], thresholds: Sequence[float] = DSB_THRESHOLDS
                         ) -> dict[str, float | list[float]]:
    """`dsb_score_dataset`'s summary of per-image `dsb_precisions` (scored one image at a time).

    Args:
        precisions: [T] precisions per image (at least one image).
        thresholds: the IoU thresholds they were computed at.
    """
    precisions = np.asarray(precisions)  # [images, T]
    per_image = precisions.mean(axis=1)
    return {
        "dsb_score": float(per_image.mean()),
        "per_image": [float(v) for v in per_image],
        "precision_at": {f"{t:.2f}": float(v) for t, v in zip(thresholds, precisions.mean(axis=0))},
    }
