"""DetectionTargetLayer: samples training RoIs and builds their class, box and mask targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mrcnn.ops.boxes import box_overlaps, box_refinement

# A proposal that overlaps a crowd box by at least this IoU is never used as a negative
# (crowd regions contain objects that are not annotated one by one).
CROWD_IOU_THRESHOLD = 0.001
POSITIVE_IOU_THRESHOLD = 0.5


def _non_zero_rows(boxes: tf.Tensor) -> tf.Tensor:
    """``[N, 4]`` -> ``[N]`` bool, False for all-zero (padding) rows."""
    return tf.reduce_any(tf.not_equal(boxes, 0.0), axis=1)


def crop_binary_masks(
    masks: tf.Tensor, boxes: tf.Tensor, box_indices: tf.Tensor, crop_shape: Sequence[int]
) -> tf.Tensor:
    """Crops boxes out of masks and resamples them to ``crop_shape`` as binary masks.

    Boxes are in the masks' unit frame, the frame of normalized boxes: ``[0, 1]`` spans the whole
    mask and pixel ``i`` covers ``[i / h, (i + 1) / h)``. The crop is a ``crop_shape`` grid of
    equal bins over the box, each bin sampled once at its center (as RoIAlign with one sample per
    bin, and as ``skimage.transform.resize`` when masks are pasted back), bilinearly between pixel
    centers, then thresholded at 0.5. The masks are zero-padded by one pixel so that the 0.5
    crossing between an inside and an outside pixel sits on the pixel edge, also at the mask's
    border. Hence a box equal to a GT box gives exactly that GT's mask.

    `tf.image.crop_and_resize` maps box coordinates 0 and 1 to the centers of the first and last
    pixel and samples corner to corner; the boxes are converted accordingly.

    Args:
        masks: ``[G, h, w]`` float masks.
        boxes: ``[K, 4]`` (y1, x1, y2, x2) in the unit frame (may extend past [0, 1]).
        box_indices: ``[K]`` int32, the mask each box is cut from.
        crop_shape: ``(mh, mw)``.

    Returns:
        ``[K, mh, mw]`` float32 in {0, 1}; samples outside the mask are 0.
    """
    size = tf.cast(tf.shape(masks)[1:3], tf.float32)
    h, w = size[0], size[1]
    mh, mw = float(crop_shape[0]), float(crop_shape[1])
    y1, x1, y2, x2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    bin_h = (y2 - y1) * h / mh
    bin_w = (x2 - x1) * w / mw
    # First/last sample in pixel-index coordinates of the padded mask (centers at integers):
    # half a bin inside the box edge, -0.5 from edge to center, +1 for the padding.
    first_y = y1 * h + 0.5 * bin_h + 0.5
    last_y = y2 * h - 0.5 * bin_h + 0.5
    first_x = x1 * w + 0.5 * bin_w + 0.5
    last_x = x2 * w - 0.5 * bin_w + 0.5
    # The padded mask is (h + 2) x (w + 2): crop_and_resize's unit is (h + 1) pixels.
    crop_boxes = tf.stack([first_y / (h + 1.0), first_x / (w + 1.0), last_y / (h + 1.0), last_x / (w + 1.0)], axis=1)
    padded = tf.pad(tf.cast(masks, tf.float32), [[0, 0], [1, 1], [1, 1]])[..., None]
    crops = tf.image.crop_and_resize(padded, crop_boxes, tf.cast(box_indices, tf.int32), list(crop_shape))
    return tf.cast(crops[..., 0] >= 0.5, tf.float32)


@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionTargetLayer(keras.layers.Layer):
    """Samples RoIs from the proposals and computes their class, box-delta and mask targets.

    Per image (matterport semantics): zero-padded proposals and GT are dropped; GT with negative
    class ids are crowd regions: they are not targets, and proposals with IoU >= 0.001 to any of
    them are not used as negatives. Proposals with IoU >= 0.5 to some GT are positives (target:
    the GT of highest IoU), those with IoU < 0.5 to all GT are negatives. Up to
    ``int(train_rois_per_image * roi_positive_ratio)`` positives are drawn at random, then
    negatives (fewer if fewer exist): with ``fill_negatives`` the T - P left (the paper's sampling:
    Fast R-CNN, Detectron), else ``floor(P / roi_positive_ratio) - P`` for P positives drawn
    (matterport's; with no positive, e.g. no GT, no negative is drawn and the output is all
    padding). With ``add_gt_boxes`` the GT boxes join the proposals first (the `Config` default).

    Inputs (a list):
        proposals: ``[B, P, 4]`` (y1, x1, y2, x2) normalized, zero rows are padding.
        gt_class_ids: ``[B, G]`` int, 0 = padding, < 0 = crowd.
        gt_boxes: ``[B, G, 4]`` (y1, x1, y2, x2) normalized, zero rows are padding.
        gt_masks: ``[B, h, w, G]`` bool or float. With ``use_mini_mask`` each GT's mask resized to
            ``h x w`` over its own box (MINI_MASK_SHAPE); otherwise full-image masks (h, w = image).

    Outputs (a list):
        rois: ``[B, T, 4]`` float32 (y1, x1, y2, x2) normalized; positives first, then negatives,
            then zero rows.
        target_class_ids: ``[B, T]`` int32; 0 for negatives and padding.
        target_deltas: ``[B, T, 4]`` float32 (dy, dx, log(dh), log(dw)) / ``bbox_std_dev``;
            zero for negatives and padding.
        target_masks: ``[B, T, mh, mw]`` float32 in {0, 1}: the positive RoI's crop of its GT mask;
            zero for negatives and padding.
        with ``T = train_rois_per_image`` and ``(mh, mw) = mask_shape``.

    Args:
        train_rois_per_image: T, RoIs per image fed to the heads (TRAIN_ROIS_PER_IMAGE).
        roi_positive_ratio: target fraction of positives (ROI_POSITIVE_RATIO).
        bbox_std_dev: 4 std-devs the deltas are divided by (BBOX_STD_DEV).
        mask_shape: ``(mh, mw)`` of the mask targets (MASK_SHAPE).
        use_mini_mask: whether ``gt_masks`` are mini masks (USE_MINI_MASK).
        add_gt_boxes: append each image's GT boxes to its proposals before sampling
            (Detectron/torchvision; ADD_GT_TO_PROPOSALS, True by default in `Config`), so every
            GT yields at least one positive even while the RPN is still untrained. matterport
            did not (this layer's own default, False, is matterport's).
        fill_negatives: negatives fill the T RoIs left after the positives (the paper's sampling
            as Fast R-CNN and Detectron do it; ROI_SAMPLING "paper"). False: the negatives keep
            the ratio to the positives taken, ``floor(P / ratio) - P`` (matterport's; ROI_SAMPLING
            "matterport"), so an image with few positives gets few RoIs.
        mask_targets: crop the mask targets (False for a model without a mask branch,
            MASK_HEAD = False: ``target_masks`` is then all zeros and no crop is computed).
    """

    def __init__(
        self,
        train_rois_per_image: int,
        roi_positive_ratio: float,
        bbox_std_dev: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        mask_shape: Sequence[int] = (28, 28),
        use_mini_mask: bool = True,
        add_gt_boxes: bool = False,
        mask_targets: bool = True,
        fill_negatives: bool = False,
        **kwargs: Any,
    ) -> None:
        # Box coordinates must not be cast to float16 under a mixed-precision policy (0.5 px
        # steps at 1024 px); call() casts what it needs itself.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if int(train_rois_per_image) < 1:
            raise ValueError(f"train_rois_per_image must be >= 1, got {train_rois_per_image!r}")
        if not 0.0 < float(roi_positive_ratio) <= 1.0:
            raise ValueError(f"roi_positive_ratio must be in (0, 1], got {roi_positive_ratio!r}")
        std = np.asarray(bbox_std_dev, dtype=np.float32).reshape(-1)
        if std.shape != (4,):
            raise ValueError(f"bbox_std_dev must have 4 values, got {bbox_std_dev!r}")
        if len(mask_shape) != 2 or min(int(v) for v in mask_shape) < 1:
            raise ValueError(f"mask_shape must be two positive ints, got {mask_shape!r}")
        self.train_rois_per_image = int(train_rois_per_image)
        self.roi_positive_ratio = float(roi_positive_ratio)
        self.bbox_std_dev = [float(v) for v in std]
        self.mask_shape = [int(v) for v in mask_shape]
        self.use_mini_mask = bool(use_mini_mask)
        self.add_gt_boxes = bool(add_gt_boxes)
        self.mask_targets = bool(mask_targets)
        self.fill_negatives = bool(fill_negatives)

    # ------------------------------------------------------------------------------------------
    def call(self, inputs: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        proposals, gt_class_ids, gt_boxes, gt_masks = inputs
        proposals = tf.cast(proposals, tf.float32)
        gt_class_ids = tf.cast(gt_class_ids, tf.int32)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_masks = tf.cast(gt_masks, tf.float32)
        rois_count = self.train_rois_per_image
        mh, mw = self.mask_shape
        # One image after another: the random subsets draw from stateful shuffle kernels that all
        # images share, so images run in parallel would race for them and a seeded run (SEED,
        # keras.utils.set_random_seed) would not repeat. The sampling is a small part of a step.
        outputs = tf.map_fn(
            self._one_image,
            (proposals, gt_class_ids, gt_boxes, gt_masks),
            parallel_iterations=1,
            fn_output_signature=(
                tf.TensorSpec([rois_count, 4], tf.float32),
                tf.TensorSpec([rois_count], tf.int32),
                tf.TensorSpec([rois_count, 4], tf.float32),
                tf.TensorSpec([rois_count, mh, mw], tf.float32),
            ),
        )
        # Targets are constants for the heads: no gradient flows back into the proposals.
        return [tf.stop_gradient(t) for t in outputs]

    def _one_image(
        self, args: tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Targets for one image; shapes as in the class docstring without the batch axis."""
        proposals, gt_class_ids, gt_boxes, gt_masks = args
        rois_count = self.train_rois_per_image

        # Drop padding. A GT is real when its class id is non-zero and its box is non-zero.
        proposals = tf.boolean_mask(proposals, _non_zero_rows(proposals))
        valid_gt = tf.logical_and(_non_zero_rows(gt_boxes), tf.not_equal(gt_class_ids, 0))
        is_crowd = tf.logical_and(valid_gt, gt_class_ids < 0)
        is_object = tf.logical_and(valid_gt, gt_class_ids > 0)
        crowd_boxes = tf.boolean_mask(gt_boxes, is_crowd)
        object_ix = tf.where(is_object)[:, 0]
        gt_boxes = tf.gather(gt_boxes, object_ix)
        gt_class_ids = tf.gather(gt_class_ids, object_ix)
        gt_masks = tf.gather(gt_masks, object_ix, axis=2)
        if self.add_gt_boxes:
            proposals = tf.concat([proposals, gt_boxes], axis=0)

        # IoU of each proposal with every object GT / crowd region. The max over an empty GT set
        # is -inf (reduce_max identity), which classifies every proposal as a negative.
        overlaps = box_overlaps(proposals, gt_boxes)  # [P, G]
        roi_iou_max = tf.reduce_max(overlaps, axis=1)
        crowd_iou_max = tf.reduce_max(box_overlaps(proposals, crowd_boxes), axis=1)
        not_crowd = crowd_iou_max < CROWD_IOU_THRESHOLD

        positive_ix = tf.where(roi_iou_max >= POSITIVE_IOU_THRESHOLD)[:, 0]
        negative_ix = tf.where(tf.logical_and(roi_iou_max < POSITIVE_IOU_THRESHOLD, not_crowd))[:, 0]

        # Random subsets: positives capped at T * ratio. Negatives fill the rest up to T (the paper,
        # Fast R-CNN, Detectron) or keep the ratio to the positives taken (matterport).
        max_positives = int(rois_count * self.roi_positive_ratio)
        positive_ix = tf.random.shuffle(positive_ix)[:max_positives]
        positive_count = tf.shape(positive_ix)[0]
        if self.fill_negatives:
            negative_count = rois_count - positive_count
        else:
            # In float64 with a nudge: float32 gave 66 / 0.33 = 199.99998, one RoI short of 200.
            total = tf.cast(positive_count, tf.float64) / self.roi_positive_ratio + 1e-6
            negative_count = tf.cast(tf.floor(total), tf.int32) - positive_count
            negative_count = tf.minimum(negative_count, rois_count - positive_count)
        negative_ix = tf.random.shuffle(negative_ix)[:negative_count]

        positive_rois = tf.gather(proposals, positive_ix)
        negative_rois = tf.gather(proposals, negative_ix)

        # Each positive's target is its highest-IoU GT. Without GT there are no positives, but
        # argmax over a zero-length axis is not defined: the cond returns an empty assignment.
        positive_overlaps = tf.gather(overlaps, positive_ix)
        assignment = tf.cond(
            tf.shape(overlaps)[1] > 0,
            lambda: tf.argmax(positive_overlaps, axis=1, output_type=tf.int32),
            lambda: tf.zeros([tf.shape(positive_overlaps)[0]], tf.int32),
        )
        roi_gt_boxes = tf.gather(gt_boxes, assignment)
        roi_gt_class_ids = tf.gather(gt_class_ids, assignment)

        deltas = box_refinement(positive_rois, roi_gt_boxes) / tf.constant(self.bbox_std_dev, tf.float32)
        if self.mask_targets:
            masks = self._mask_targets(positive_rois, roi_gt_boxes, gt_masks, assignment)
        else:
            masks = tf.zeros([positive_count, *self.mask_shape], tf.float32)

        # Pad: negatives get zero class/deltas/masks, then zero rows up to T.
        rois = tf.concat([positive_rois, negative_rois], axis=0)
        negative_count = tf.shape(negative_rois)[0]
        padding = tf.maximum(rois_count - tf.shape(rois)[0], 0)
        rois = tf.pad(rois, [[0, padding], [0, 0]])
        target_pad = negative_count + padding
        roi_gt_class_ids = tf.pad(roi_gt_class_ids, [[0, target_pad]])
        deltas = tf.pad(deltas, [[0, target_pad], [0, 0]])
        masks = tf.pad(masks, [[0, target_pad], [0, 0], [0, 0]])
        return rois, roi_gt_class_ids, deltas, masks

    def _mask_targets(
        self, rois: tf.Tensor, roi_gt_boxes: tf.Tensor, gt_masks: tf.Tensor, assignment: tf.Tensor
    ) -> tf.Tensor:
        """Crops each positive RoI out of its GT mask.

        Args:
            rois: ``[K, 4]`` positive RoIs, normalized image coordinates.
            roi_gt_boxes: ``[K, 4]`` their GT boxes, normalized image coordinates.
            gt_masks: ``[h, w, G]`` float masks (mini or full).
            assignment: ``[K]`` int32 GT index of each RoI.

        Returns:
            ``[K, mh, mw]`` float32 binary targets.
        """
        boxes = rois
        if self.use_mini_mask:
            # A mini mask spans its GT box: express the RoI in that box's unit frame.
            gy1, gx1, gy2, gx2 = tf.split(roi_gt_boxes, 4, axis=1)
            gh = gy2 - gy1
            gw = gx2 - gx1
            y1, x1, y2, x2 = tf.split(rois, 4, axis=1)
            boxes = tf.concat([(y1 - gy1) / gh, (x1 - gx1) / gw, (y2 - gy1) / gh, (x2 - gx1) / gw], axis=1)
        # Each RoI picks its own GT mask through the box indices.
        return crop_binary_masks(tf.transpose(gt_masks, [2, 0, 1]), boxes, assignment, self.mask_shape)

    # ------------------------------------------------------------------------------------------
    def compute_output_shape(self, input_shape: Sequence[tuple]) -> list[tuple]:
        batch = input_shape[0][0]
        rois_count = self.train_rois_per_image
        return [
            (batch, rois_count, 4),
            (batch, rois_count),
            (batch, rois_count, 4),
            (batch, rois_count, self.mask_shape[0], self.mask_shape[1]),
        ]

    def compute_output_spec(self, inputs: Sequence[keras.KerasTensor]) -> list[keras.KerasTensor]:
        # Explicit dtypes: the default spec would give every output the layer's float dtype.
        shapes = self.compute_output_shape([tuple(t.shape) for t in inputs])
        dtypes = ["float32", "int32", "float32", "float32"]
        return [keras.KerasTensor(shape, dtype=dtype) for shape, dtype in zip(shapes, dtypes)]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            train_rois_per_image=self.train_rois_per_image,
            roi_positive_ratio=self.roi_positive_ratio,
            bbox_std_dev=list(self.bbox_std_dev),
            mask_shape=list(self.mask_shape),
            use_mini_mask=self.use_mini_mask,
            add_gt_boxes=self.add_gt_boxes,
            mask_targets=self.mask_targets,
            fill_negatives=self.fill_negatives,
        )
        return config
