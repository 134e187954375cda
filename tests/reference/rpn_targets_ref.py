"""Slow, obviously-correct reference for RPN anchor labelling (one anchor at a time, plain Python).

Rules (matterport / Faster R-CNN, as documented in mrcnn.data.targets.label_anchors):
class id 0 = padding (ignored), < 0 = crowd (removed from GT; anchors with IoU >= 0.001 to a crowd
box are never negative); negative if best GT IoU < 0.3; positive if best GT IoU >= 0.7 or the anchor
is tied for the best anchor of a GT box whose best IoU is > 0.
"""

from __future__ import annotations


def iou(a, b) -> float:
    """IoU of two (y1, x1, y2, x2) boxes, same formula (and float64 rounding) as mrcnn.utils."""
    a = [float(v) for v in a]
    b = [float(v) for v in b]
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def label_anchors_ref(anchors, gt_class_ids, gt_boxes, positive_iou=0.7, negative_iou=0.3, crowd_iou=0.001):
    """Returns (rpn_match list of -1/0/1, gt_index list: best non-crowd GT per anchor or -1)."""
    gts = [(j, box) for j, (c, box) in enumerate(zip(gt_class_ids, gt_boxes)) if c > 0]
    crowds = [box for c, box in zip(gt_class_ids, gt_boxes) if c < 0]
    table = [[iou(anchor, box) for _, box in gts] for anchor in anchors]
    match, gt_index = [], []
    for anchor, row in zip(anchors, table):
        best = max(row) if row else 0.0
        gt_index.append(gts[row.index(best)][0] if best > 0 else -1)
        crowd_best = max((iou(anchor, box) for box in crowds), default=0.0)
        match.append(-1 if best < negative_iou and crowd_best < crowd_iou else 0)
    for k in range(len(gts)):
        column = [row[k] for row in table]
        top = max(column) if column else 0.0
        if top > 0:
            for i, value in enumerate(column):
                if value == top:
                    match[i] = 1
    for i, row in enumerate(table):
        if row and max(row) >= positive_iou:
            match[i] = 1
    return match, gt_index
