"""TensorFlow box operations used inside the graph.

Boxes are ``(y1, x1, y2, x2)``. Normalized boxes are pixel boxes divided by ``(H, W, H, W)`` of the
molded image (``y2``/``x2`` exclusive, no ``-1`` shift), so the whole image is ``[0, 0, 1, 1]``.
Box deltas are ``(dy, dx, log(dh), log(dw))`` relative to the reference box's center and size with
``h = y2 - y1`` (no ``+1``). These functions mirror the numpy versions in ``mrcnn.utils``.

All functions work on float tensors of any leading shape unless stated otherwise and keep the
input dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def _split(boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Splits ``[..., 4]`` into four ``[...]`` tensors (y1, x1, y2, x2)."""
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def apply_box_deltas(boxes: tf.Tensor, deltas: tf.Tensor) -> tf.Tensor:
    """Applies box deltas to boxes.

    Args:
        boxes: ``[..., 4]`` (y1, x1, y2, x2), any coordinate frame (pixels or normalized).
        deltas: ``[..., 4]`` (dy, dx, log(dh), log(dw)), broadcastable against ``boxes``;
            NOT divided by a std-dev (multiply by it before calling).

    Returns:
        ``[..., 4]`` refined boxes (y1, x1, y2, x2), same frame and dtype as ``boxes``.
    """
    boxes = tf.convert_to_tensor(boxes)
    deltas = tf.cast(deltas, boxes.dtype)
    y1, x1, y2, x2 = _split(boxes)
    height = y2 - y1
    width = x2 - x1
    center_y = y1 + 0.5 * height + deltas[..., 0] * height
    center_x = x1 + 0.5 * width + deltas[..., 1] * width
    height = height * tf.exp(deltas[..., 2])
    width = width * tf.exp(deltas[..., 3])
    new_y1 = center_y - 0.5 * height
    new_x1 = center_x - 0.5 * width
    return tf.stack([new_y1, new_x1, new_y1 + height, new_x1 + width], axis=-1)


def clip_boxes(boxes: tf.Tensor, window: tf.Tensor | Sequence[float]) -> tf.Tensor:
    """Clips boxes to a window.

    Args:
        boxes: ``[..., 4]`` (y1, x1, y2, x2).
        window: ``[4]`` (wy1, wx1, wy2, wx2) in the same frame as ``boxes``, or ``[..., 4]``
            broadcastable against ``boxes`` (e.g. ``[B, 1, 4]`` for one window per image).

    Returns:
        ``[..., 4]`` boxes with every coordinate inside the window (a box entirely outside
        collapses to zero area on the window's border).
    """
    boxes = tf.convert_to_tensor(boxes)
    window = tf.cast(window, boxes.dtype)
    wy1, wx1, wy2, wx2 = _split(window)
    y1, x1, y2, x2 = _split(boxes)
    # min/max rather than clip_by_value: the window may be a broadcastable tensor per image.
    y1 = tf.minimum(tf.maximum(y1, wy1), wy2)
    x1 = tf.minimum(tf.maximum(x1, wx1), wx2)
    y2 = tf.minimum(tf.maximum(y2, wy1), wy2)
    x2 = tf.minimum(tf.maximum(x2, wx1), wx2)
    return tf.stack([y1, x1, y2, x2], axis=-1)


def box_area(boxes: tf.Tensor) -> tf.Tensor:
    """Area of ``[..., 4]`` boxes -> ``[...]`` (``(y2 - y1) * (x2 - x1)``, may be negative for invalid boxes)."""
    y1, x1, y2, x2 = _split(tf.convert_to_tensor(boxes))
    return (y2 - y1) * (x2 - x1)


def box_overlaps(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """Pairwise IoU.

    Args:
        boxes1: ``[N, 4]`` (y1, x1, y2, x2).
        boxes2: ``[M, 4]`` (y1, x1, y2, x2), same frame as ``boxes1``.

    Returns:
        ``[N, M]`` IoU; 0 where the union is empty (e.g. two zero-area padding boxes).
        N or M may be 0.
    """
    boxes1 = tf.convert_to_tensor(boxes1)
    boxes2 = tf.cast(boxes2, boxes1.dtype)
    # [N, 1] against [1, M] broadcasts to [N, M] without tiling.
    b1y1, b1x1, b1y2, b1x2 = tf.split(boxes1[:, None, :], 4, axis=-1)
    b2y1, b2x1, b2y2, b2x2 = tf.split(boxes2[None, :, :], 4, axis=-1)
    inter_h = tf.maximum(tf.minimum(b1y2, b2y2) - tf.maximum(b1y1, b2y1), 0.0)
    inter_w = tf.maximum(tf.minimum(b1x2, b2x2) - tf.maximum(b1x1, b2x1), 0.0)
    intersection = (inter_h * inter_w)[..., 0]
    area1 = ((b1y2 - b1y1) * (b1x2 - b1x1))[..., 0]
    area2 = ((b2y2 - b2y1) * (b2x2 - b2x1))[..., 0]
    union = area1 + area2 - intersection
    return tf.math.divide_no_nan(intersection, union)


def box_refinement(box: tf.Tensor, gt_box: tf.Tensor) -> tf.Tensor:
    """Deltas that turn ``box`` into ``gt_box`` (the inverse of `apply_box_deltas`).

    Args:
        box: ``[..., 4]`` (y1, x1, y2, x2) reference boxes, positive height and width.
        gt_box: ``[..., 4]`` (y1, x1, y2, x2) target boxes, same frame, broadcastable.

    Returns:
        ``[..., 4]`` (dy, dx, log(dh), log(dw)), not divided by any std-dev.
    """
    box = tf.convert_to_tensor(box)
    gt_box = tf.cast(gt_box, box.dtype)
    y1, x1, y2, x2 = _split(box)
    gy1, gx1, gy2, gx2 = _split(gt_box)
    height = y2 - y1
    width = x2 - x1
    gt_height = gy2 - gy1
    gt_width = gx2 - gx1
    dy = ((gy1 + 0.5 * gt_height) - (y1 + 0.5 * height)) / height
    dx = ((gx1 + 0.5 * gt_width) - (x1 + 0.5 * width)) / width
    dh = tf.math.log(gt_height / height)
    dw = tf.math.log(gt_width / width)
    return tf.stack([dy, dx, dh, dw], axis=-1)


def _scale(shape: tf.Tensor | Sequence[int], dtype: tf.DType) -> tf.Tensor:
    shape = tf.cast(shape, dtype)
    return tf.stack([shape[0], shape[1], shape[0], shape[1]])


def norm_boxes(boxes: tf.Tensor, shape: tf.Tensor | Sequence[int]) -> tf.Tensor:
    """Pixel boxes -> normalized boxes.

    Args:
        boxes: ``[..., 4]`` (y1, x1, y2, x2) pixels, y2/x2 exclusive; any int or float dtype.
        shape: ``(H, W)`` of the molded image.

    Returns:
        ``[..., 4]`` float32 (float64 for float64 input) ``boxes / (H, W, H, W)``.
    """
    boxes = tf.convert_to_tensor(boxes)
    dtype = boxes.dtype if boxes.dtype in (tf.float64, tf.float16, tf.bfloat16) else tf.float32
    boxes = tf.cast(boxes, dtype)
    return boxes / _scale(shape, dtype)


def denorm_boxes(boxes: tf.Tensor, shape: tf.Tensor | Sequence[int]) -> tf.Tensor:
    """Normalized boxes -> pixel boxes.

    Unlike ``mrcnn.utils.denorm_boxes`` this does NOT round to int32: the graph (RoIAlign, unmolding
    inside the model) wants sub-pixel box coordinates. Apply ``tf.round`` + cast for integer pixels.

    Args:
        boxes: ``[..., 4]`` (y1, x1, y2, x2) normalized, float.
        shape: ``(H, W)`` of the molded image.

    Returns:
        ``[..., 4]`` float pixel boxes ``boxes * (H, W, H, W)``, same dtype as ``boxes``.
    """
    boxes = tf.convert_to_tensor(boxes)
    return boxes * _scale(shape, boxes.dtype)
