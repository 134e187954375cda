"""KeypointTargetLayer: heatmap targets of the positive training RoIs for the keypoint head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from mrcnn.ops.boxes import box_overlaps


def keypoints_to_heatmap_labels(keypoints: tf.Tensor, rois: tf.Tensor, heatmap_size: int
                                ) -> tuple[tf.Tensor, tf.Tensor]:
    """Index of each keypoint's cell on its RoI's m x m heatmap, and whether it counts.

    Detectron's ``keypoints_to_heatmap_labels``: the RoI is cut into m x m equal cells; a keypoint
    falls into cell ``(floor((y - y1) * m / h), floor((x - x1) * m / w))``; a keypoint exactly on the
    RoI's far edge (x == x2 or y == y2) goes to the last cell. A keypoint counts when it is labelled
    (visibility > 0) and inside the RoI.

    Args:
        keypoints: ``[..., K, 3]`` (x, y, visibility), x and y in the same frame as `rois`
            (normalized: continuous pixel coordinates / (W, H)).
        rois: ``[..., 4]`` (y1, x1, y2, x2), the leading axes of `keypoints` without K.
        heatmap_size: m (KEYPOINT_MASK_SHAPE[0], 56).

    Returns:
        labels: ``[..., K]`` int32 in [0, m*m): ``row * m + col``; 0 where not valid.
        weights: ``[..., K]`` float32, 1 for a valid keypoint, else 0.
    """
    m = float(heatmap_size)
    rois = tf.cast(rois, tf.float32)[..., None, :]  # broadcast over K
    keypoints = tf.cast(keypoints, tf.float32)
    x, y, visibility = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
    y1, x1, y2, x2 = rois[..., 0], rois[..., 1], rois[..., 2], rois[..., 3]
    # divide_no_nan: zero-size padding RoIs give cell 0 and are masked out by the weights.
    col = tf.floor(tf.math.divide_no_nan((x - x1) * m, x2 - x1))
    row = tf.floor(tf.math.divide_no_nan((y - y1) * m, y2 - y1))
    col = tf.where(tf.equal(x, x2), m - 1.0, col)
    row = tf.where(tf.equal(y, y2), m - 1.0, row)
    inside = (col >= 0.0) & (col < m) & (row >= 0.0) & (row < m) & (x2 > x1) & (y2 > y1)
    valid = inside & (visibility > 0.0)
    labels = tf.where(valid, tf.cast(row * m + col, tf.int32), 0)
    return labels, tf.cast(valid, tf.float32)


@keras.saving.register_keras_serializable(package="mrcnn")
class KeypointTargetLayer(keras.layers.Layer):
    """Keypoint heatmap targets for the leading (positive) RoIs of DetectionTargetLayer.

    Each positive RoI (target class id > 0) is matched to the ground-truth instance of highest IoU
    among the non-padding, non-crowd GT, the rule (and the tie break: lowest index) by which
    DetectionTargetLayer chose its class, box and mask targets, and gets that instance's
    keypoints as `keypoints_to_heatmap_labels` labels. Negative and padding RoIs get weight 0.

    Inputs (a list):
        rois: ``[B, S, 4]`` (y1, x1, y2, x2) normalized (the leading S slots of the sampled RoIs).
        roi_class_ids: ``[B, S]`` int, > 0 for positive RoIs.
        gt_class_ids: ``[B, G]`` int, 0 padding, < 0 crowd.
        gt_boxes: ``[B, G, 4]`` normalized, zero rows are padding.
        gt_keypoints: ``[B, G, K, 3]`` (x, y, visibility) with x, y normalized (continuous pixel
            coordinates / (W, H) of the molded image).

    Outputs (a list):
        labels: ``[B, S, K]`` int32 heatmap cell ``row * m + col`` of each keypoint.
        weights: ``[B, S, K]`` float32, 1 where the keypoint is labelled, inside the RoI and the
            RoI is positive.

    Args:
        heatmap_size: m, the side of the keypoint heatmaps (KEYPOINT_MASK_SHAPE[0]).
    """

    def __init__(self, heatmap_size: int = 56, **kwargs: Any) -> None:
        kwargs.setdefault("autocast", False)  # coordinates stay float32 under mixed precision
        super().__init__(**kwargs)
        if int(heatmap_size) < 1:
            raise ValueError(f"heatmap_size must be a positive int, got {heatmap_size!r}")
        self.heatmap_size = int(heatmap_size)

    def call(self, inputs: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        rois, roi_class_ids, gt_class_ids, gt_boxes, gt_keypoints = inputs
        rois = tf.cast(rois, tf.float32)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_class_ids = tf.cast(gt_class_ids, tf.int32)
        overlaps = tf.map_fn(lambda args: box_overlaps(args[0], args[1]), (rois, gt_boxes),
                             fn_output_signature=tf.TensorSpec([None, None], tf.float32))  # [B, S, G]
        is_object = (gt_class_ids > 0) & tf.reduce_any(tf.not_equal(gt_boxes, 0.0), axis=-1)
        # Padding and crowd GT can never win the argmax (IoU >= 0 for the real ones).
        overlaps = tf.where(is_object[:, None, :], overlaps, -1.0)
        assignment = tf.argmax(overlaps, axis=2, output_type=tf.int32)  # [B, S]
        roi_keypoints = tf.gather(tf.cast(gt_keypoints, tf.float32), assignment, axis=1, batch_dims=1)  # [B,S,K,3]
        labels, weights = keypoints_to_heatmap_labels(roi_keypoints, rois, self.heatmap_size)
        positive = tf.cast(tf.cast(roi_class_ids, tf.int32) > 0, tf.float32)[..., None]
        weights = weights * positive
        labels = tf.where(weights > 0, labels, 0)
        return [tf.stop_gradient(labels), tf.stop_gradient(weights)]

    def compute_output_spec(self, inputs: Sequence[keras.KerasTensor]) -> list[keras.KerasTensor]:
        rois, keypoints = inputs[0], inputs[4]
        shape = tuple(rois.shape[:2]) + (keypoints.shape[2],)
        return [keras.KerasTensor(shape, dtype="int32"), keras.KerasTensor(shape, dtype="float32")]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(heatmap_size=self.heatmap_size)
        return config
