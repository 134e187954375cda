"""ProposalLayer: RPN outputs -> region proposals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mrcnn.ops.boxes import apply_box_deltas, clip_boxes


@keras.saving.register_keras_serializable(package="mrcnn")
class ProposalLayer(keras.layers.Layer):
    """Turns anchor scores and deltas into at most ``proposal_count`` proposals per image.

    Per image: keep the ``min(pre_nms_limit, A)`` anchors with the highest foreground score, apply
    their deltas (multiplied by ``rpn_bbox_std_dev``), clip to the image ``[0, 0, 1, 1]``, run NMS
    (class-agnostic) and zero-pad to ``proposal_count``. Proposals come out by descending score.

    Inputs (a list):
        rpn_probs: ``[B, A, 2]`` (background, foreground) probabilities.
        rpn_bbox: ``[B, A, 4]`` (dy, dx, log(dh), log(dw)) divided by ``rpn_bbox_std_dev``.
        anchors: ``[B, A, 4]`` (y1, x1, y2, x2) normalized.

    Output:
        ``[B, proposal_count, 4]`` float32 (y1, x1, y2, x2) normalized; rows past the kept
        proposals are zero.

    Args:
        proposal_count: proposals kept per image after NMS (POST_NMS_ROIS_*).
        nms_threshold: IoU above which a lower-scored box is suppressed (RPN_NMS_THRESHOLD).
        pre_nms_limit: anchors kept by score before NMS (PRE_NMS_LIMIT).
        rpn_bbox_std_dev: 4 std-devs the RPN targets were divided by (RPN_BBOX_STD_DEV).
    """

    def __init__(
        self,
        proposal_count: int,
        nms_threshold: float,
        pre_nms_limit: int,
        rpn_bbox_std_dev: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        **kwargs: Any,
    ) -> None:
        # Box coordinates must not be cast to float16 under a mixed-precision policy (0.5 px
        # steps at 1024 px); call() casts what it needs itself.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if int(proposal_count) < 1:
            raise ValueError(f"proposal_count must be >= 1, got {proposal_count!r}")
        if int(pre_nms_limit) < 1:
            raise ValueError(f"pre_nms_limit must be >= 1, got {pre_nms_limit!r}")
        if not 0.0 <= float(nms_threshold) <= 1.0:
            raise ValueError(f"nms_threshold must be in [0, 1], got {nms_threshold!r}")
        std = np.asarray(rpn_bbox_std_dev, dtype=np.float32).reshape(-1)
        if std.shape != (4,):
            raise ValueError(f"rpn_bbox_std_dev must have 4 values, got {rpn_bbox_std_dev!r}")
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(nms_threshold)
        self.pre_nms_limit = int(pre_nms_limit)
        self.rpn_bbox_std_dev = [float(v) for v in std]

    def call(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
        rpn_probs, rpn_bbox, anchors = inputs
        # Box arithmetic and NMS in float32 even under a mixed-precision policy.
        scores = tf.cast(rpn_probs[:, :, 1], tf.float32)
        deltas = tf.cast(rpn_bbox, tf.float32) * tf.constant(self.rpn_bbox_std_dev, tf.float32)
        anchors = tf.cast(anchors, tf.float32)

        # Top-k first: NMS cost grows with the number of boxes, and low-score anchors rarely survive.
        k = tf.minimum(self.pre_nms_limit, tf.shape(scores)[1])
        scores, top_ix = tf.math.top_k(scores, k=k, sorted=True)
        deltas = tf.gather(deltas, top_ix, batch_dims=1)
        anchors = tf.gather(anchors, top_ix, batch_dims=1)

        boxes = apply_box_deltas(anchors, deltas)
        boxes = clip_boxes(boxes, tf.constant([0.0, 0.0, 1.0, 1.0]))

        proposal_count = self.proposal_count
        nms_threshold = self.nms_threshold

        def nms_one_image(args: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
            image_boxes, image_scores = args
            keep = tf.image.non_max_suppression(
                image_boxes, image_scores, max_output_size=proposal_count, iou_threshold=nms_threshold
            )
            kept = tf.gather(image_boxes, keep)
            padding = proposal_count - tf.shape(kept)[0]
            return tf.pad(kept, [[0, padding], [0, 0]])

        # Class-agnostic NMS per image; tf.map_fn keeps the graph free of Python loops over images.
        proposals = tf.map_fn(
            nms_one_image,
            (boxes, scores),
            fn_output_signature=tf.TensorSpec([proposal_count, 4], tf.float32),
        )
        proposals.set_shape([None, proposal_count, 4])
        return proposals

    def compute_output_shape(self, input_shape: Sequence[tuple]) -> tuple:
        return (input_shape[0][0], self.proposal_count, 4)

    def compute_output_spec(self, inputs: Sequence[keras.KerasTensor]) -> keras.KerasTensor:
        # float32 whatever the layer's dtype policy (see call()).
        return keras.KerasTensor(self.compute_output_shape([tuple(t.shape) for t in inputs]), dtype="float32")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            proposal_count=self.proposal_count,
            nms_threshold=self.nms_threshold,
            pre_nms_limit=self.pre_nms_limit,
            rpn_bbox_std_dev=list(self.rpn_bbox_std_dev),
        )
        return config
