"""DetectionLayer: refined, per-class NMS'ed final detections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mrcnn.ops.boxes import apply_box_deltas, clip_boxes


@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionLayer(keras.layers.Layer):
    """Turns classified RoIs into at most ``max_instances`` detections per image.

    Per RoI only its best class is considered (argmax of the class probabilities, matterport):
    the class-specific deltas (times ``bbox_std_dev``) refine the RoI, the box is clipped to the
    image window (the real image inside the padding, from ``image_meta``). Background RoIs, RoIs
    scoring below ``min_confidence`` and zero (padding) RoIs are dropped; NMS runs per class; the
    ``max_instances`` highest-scoring survivors are kept, by descending score.

    Inputs (a list):
        rois: ``[B, N, 4]`` (y1, x1, y2, x2) normalized; zero rows are padding.
        mrcnn_class: ``[B, N, K]`` class probabilities (K classes including background 0).
        mrcnn_bbox: ``[B, N, K, 4]`` per-class (dy, dx, log(dh), log(dw)) / ``bbox_std_dev``.
        image_meta: ``[B, META]`` (``mrcnn.utils.compose_image_meta``): molded image shape at
            ``[4:7]``, window (y1, x1, y2, x2) pixels at ``[7:11]``.

    Output:
        ``[B, max_instances, 6]`` float32 rows (y1, x1, y2, x2 normalized, class_id, score);
        rows after the last detection are zero.

    Args:
        max_instances: detections kept per image (DETECTION_MAX_INSTANCES).
        min_confidence: minimum class probability kept, inclusive (DETECTION_MIN_CONFIDENCE).
        nms_threshold: per-class NMS IoU threshold (DETECTION_NMS_THRESHOLD).
        bbox_std_dev: 4 std-devs the box head's deltas are scaled by (BBOX_STD_DEV).
    """

    def __init__(
        self,
        max_instances: int,
        min_confidence: float,
        nms_threshold: float,
        bbox_std_dev: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        **kwargs: Any,
    ) -> None:
        # Box coordinates must not be cast to float16 under a mixed-precision policy (0.5 px
        # steps at 1024 px); call() casts what it needs itself.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if int(max_instances) < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances!r}")
        if not 0.0 <= float(min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
        if not 0.0 <= float(nms_threshold) <= 1.0:
            raise ValueError(f"nms_threshold must be in [0, 1], got {nms_threshold!r}")
        std = np.asarray(bbox_std_dev, dtype=np.float32).reshape(-1)
        if std.shape != (4,):
            raise ValueError(f"bbox_std_dev must have 4 values, got {bbox_std_dev!r}")
        self.max_instances = int(max_instances)
        self.min_confidence = float(min_confidence)
        self.nms_threshold = float(nms_threshold)
        self.bbox_std_dev = [float(v) for v in std]

    def call(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
        rois, probs, deltas, image_meta = inputs
        rois = tf.cast(rois, tf.float32)
        probs = tf.cast(probs, tf.float32)
        deltas = tf.cast(deltas, tf.float32)
        image_meta = tf.cast(image_meta, tf.float32)
        num_classes = tf.shape(probs)[-1]

        # Best class per RoI and its own deltas.
        class_ids = tf.argmax(probs, axis=-1, output_type=tf.int32)  # [B, N]
        scores = tf.reduce_max(probs, axis=-1)
        class_deltas = tf.gather(deltas, class_ids, axis=2, batch_dims=2)  # [B, N, 4]
        boxes = apply_box_deltas(rois, class_deltas * tf.constant(self.bbox_std_dev, tf.float32))

        # Window of the real image, normalized like the boxes: pixels / (H, W, H, W).
        image_hw = image_meta[:, 4:6]
        window = image_meta[:, 7:11] / tf.concat([image_hw, image_hw], axis=1)
        boxes = clip_boxes(boxes, window[:, None, :])

        keep = (
            (class_ids > 0)
            & (scores >= self.min_confidence)
            & tf.reduce_any(tf.not_equal(rois, 0.0), axis=-1)  # padding RoIs are not detections
        )
        # One score column per class, non-zero only for the RoI's best class, so that
        # combined_non_max_suppression (per-class NMS, batched) sees each RoI in one class only.
        # Dropped RoIs get score -1 and fall under its score threshold.
        masked_scores = tf.where(keep, scores, -1.0)
        class_scores = tf.one_hot(class_ids, num_classes, on_value=1.0, off_value=0.0) * masked_scores[..., None]
        class_scores = tf.where(class_scores == 0.0, -1.0, class_scores)
        nms_boxes, nms_scores, nms_classes, valid = tf.image.combined_non_max_suppression(
            boxes[:, :, None, :],
            class_scores,
            max_output_size_per_class=self.max_instances,
            max_total_size=self.max_instances,
            iou_threshold=self.nms_threshold,
            # Separates kept RoIs (score >= min_confidence >= 0) from the -1 of dropped ones; the
            # min_confidence test itself is done above, inclusively, as matterport.
            score_threshold=0.0,
            pad_per_class=False,
            clip_boxes=False,
        )
        # combined NMS pads with zeros already; do not depend on that detail.
        valid_rows = tf.range(self.max_instances)[None, :] < valid[:, None]
        detections = tf.concat([nms_boxes, nms_classes[..., None], nms_scores[..., None]], axis=-1)
        detections = tf.where(valid_rows[..., None], detections, 0.0)
        detections.set_shape([rois.shape[0], self.max_instances, 6])
        return detections

    def compute_output_shape(self, input_shape: Sequence[tuple]) -> tuple:
        return (input_shape[0][0], self.max_instances, 6)

    def compute_output_spec(self, inputs: Sequence[keras.KerasTensor]) -> keras.KerasTensor:
        # float32 whatever the layer's dtype policy (see call()).
        return keras.KerasTensor(self.compute_output_shape([tuple(t.shape) for t in inputs]), dtype="float32")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            max_instances=self.max_instances,
            min_confidence=self.min_confidence,
            nms_threshold=self.nms_threshold,
            bbox_std_dev=list(self.bbox_std_dev),
        )
        return config
