"""PyramidROIAlign: pools each RoI from the FPN level that matches its size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from mrcnn.ops.roi_pooling import POOLERS, get_pooler

LEVEL_MODES = ("matterport", "paper")
# Pooled pyramid levels P2..P5; level k has stride 2**k relative to the input image.
MIN_LEVEL = 2
MAX_LEVEL = 5
CANONICAL_LEVEL = 4
CANONICAL_SIZE = 224.0


def assign_levels(boxes: tf.Tensor, image_area: tf.Tensor, level_mode: str = "matterport") -> tf.Tensor:
    """FPN level (2..5) of each box (the paper's Eq. 1 with k0 = 4, canonical size 224).

    Args:
        boxes: ``[B, N, 4]`` (y1, x1, y2, x2) normalized.
        image_area: ``[B]`` or scalar, molded image area H * W in pixels.
        level_mode: ``"matterport"``: ``clamp(4 + round(log2(sqrt(h * w * area) / 224)), 2, 5)``
            (round half to even, as ``tf.round``); ``"paper"``:
            ``clamp(floor(4 + log2(sqrt(h * w * area) / 224) + 1e-6), 2, 5)`` (detectron2 /
            torchvision). ``h, w`` normalized; both are formulas in the box's pixel size.

    Returns:
        ``[B, N]`` int32 levels; zero-area (padding) and non-finite boxes get level 2.
    """
    if level_mode not in LEVEL_MODES:
        raise ValueError(f"level_mode must be one of {LEVEL_MODES}, got {level_mode!r}")
    boxes = tf.cast(boxes, tf.float32)
    # Degenerate boxes would give sqrt(negative) = NaN; area 0 gives log2(0) = -inf -> level 2.
    height = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    width = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    image_area = tf.cast(image_area, tf.float32)
    if image_area.shape.rank == 1:
        image_area = image_area[:, None]
    size_px = tf.sqrt(height * width * image_area)
    log_ratio = tf.math.log(size_px / CANONICAL_SIZE) / tf.math.log(2.0)
    if level_mode == "matterport":
        level = CANONICAL_LEVEL + tf.round(log_ratio)
    else:
        level = tf.floor(CANONICAL_LEVEL + log_ratio + 1e-6)
    # Non-finite boxes (NaN/inf from a diverged RPN) would leave NaN, whose int cast is undefined
    # and matches no level: the layer then pools fewer boxes than it has. Send them to P2.
    level = tf.where(tf.math.is_nan(level), float(MIN_LEVEL), level)
    # Clamp in float before the cast: -inf must not reach the integer conversion.
    level = tf.clip_by_value(level, float(MIN_LEVEL), float(MAX_LEVEL))
    return tf.cast(level, tf.int32)


@keras.saving.register_keras_serializable(package="mrcnn")
class PyramidROIAlign(keras.layers.Layer):
    """Pools a fixed-size feature crop for every RoI from its FPN level (P2..P5).

    Each box is assigned a level with `assign_levels` (``level_mode``), converted to input-image
    pixels and pooled from ``P{level}`` with ``spatial_scale = 1 / 2**level`` by the pooling
    function ``pooling_mode`` of ``mrcnn.ops.roi_pooling``. Gradients flow into the feature maps
    only, not into the boxes (the paper's approximate joint training).

    Inputs (a list):
        boxes: ``[B, N, 4]`` (y1, x1, y2, x2) normalized; zero rows (padding) are pooled too.
        image_meta: ``[B, META]`` (``mrcnn.utils.compose_image_meta``); the molded image shape
            at ``[4:7]`` gives the image area for the level assignment.
        P2, P3, P4, P5: ``[B, H / 2**k, W / 2**k, C]`` feature maps, k = 2..5.

    Output:
        ``[B, N, ph, pw, C]`` pooled features (dtype of the feature maps), in the order of ``boxes``.

    Args:
        pool_size: ``ph`` (int, square) or ``(ph, pw)``.
        pooling_mode: a key of ``mrcnn.ops.roi_pooling.POOLERS`` (``"roi_align"``, ``"roi_align_max"``,
            ``"roi_pool"``, ``"roi_warp"``, ``"crop_and_resize"``).
        sampling_ratio: samples per bin and axis (<= 0 adaptive), for the RoIAlign-type poolers.
        aligned: half-pixel shift of the boxes (detectron2 "ROIAlignV2").
        level_mode: ``"matterport"`` or ``"paper"``, see `assign_levels`.
    """

    def __init__(
        self,
        pool_size: int | Sequence[int],
        pooling_mode: str = "roi_align",
        sampling_ratio: int = 2,
        aligned: bool = True,
        level_mode: str = "matterport",
        **kwargs: Any,
    ) -> None:
        # Box coordinates must not be cast to float16 under a mixed-precision policy (0.5 px
        # steps at 1024 px); call() casts what it needs itself.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if isinstance(pool_size, int):
            pool = (pool_size, pool_size)
        else:
            pool = tuple(int(v) for v in pool_size)
        if len(pool) != 2 or min(pool) < 1:
            raise ValueError(f"pool_size must be a positive int or (ph, pw), got {pool_size!r}")
        if pooling_mode not in POOLERS:
            raise ValueError(f"pooling_mode must be one of {sorted(POOLERS)}, got {pooling_mode!r}")
        if level_mode not in LEVEL_MODES:
            raise ValueError(f"level_mode must be one of {LEVEL_MODES}, got {level_mode!r}")
        self.pool_size = pool
        self.pooling_mode = pooling_mode
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.level_mode = level_mode
        self._pool = get_pooler(pooling_mode)

    def call(self, inputs: Sequence[tf.Tensor], box_image_ids: tf.Tensor | None = None) -> tf.Tensor:
        """Pools every box from its level.

        Args:
            inputs: [boxes, image_meta, P2, P3, P4, P5]. boxes ``[B, N, 4]`` (y1, x1, y2, x2)
                normalized, row b belonging to image b; image_meta ``[B, META]``; P2..P5
                ``[B, H/2^l, W/2^l, C]``.
            box_image_ids: optional ``[N]`` int: the "flat" layout. boxes is then ``[1, N, 4]``, a
                list of boxes from any images of the batch, box i from image ``box_image_ids[i]``
                (a variable number per image, e.g. only the positive RoIs).

        Returns:
            ``[B, N, ph, pw, C]`` pooled features (``[1, N, ...]`` in the flat layout), in the boxes' order.
        """
        if len(inputs) != 6:
            raise ValueError(
                f"PyramidROIAlign expects [boxes, image_meta, P2, P3, P4, P5], got {len(inputs)} inputs"
            )
        boxes, image_meta = inputs[0], inputs[1]
        feature_maps = list(inputs[2:])
        # Boxes are targets of the pooling, not learned through it.
        boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))
        image_meta = tf.cast(image_meta, tf.float32)

        image_shape = image_meta[:, 4:6]
        image_area = image_shape[:, 0] * image_shape[:, 1]  # [B]
        if box_image_ids is not None:
            box_image_ids = tf.cast(tf.reshape(box_image_ids, [-1]), tf.int32)
            image_area = tf.gather(image_area, box_image_ids)[None]  # [1, N]: each box's own image
        levels = assign_levels(boxes, image_area, self.level_mode)

        # Input-image size from P2 (stride 4), static where known, so the pixel boxes match the
        # feature maps exactly whatever the meta says.
        p2_shape = tf.shape(feature_maps[0])
        height = feature_maps[0].shape[1] if feature_maps[0].shape[1] is not None else p2_shape[1]
        width = feature_maps[0].shape[2] if feature_maps[0].shape[2] is not None else p2_shape[2]
        scale = tf.cast(tf.stack([height, width, height, width]), tf.float32) * float(2**MIN_LEVEL)
        boxes_px = boxes * scale

        pooled_levels = []
        box_positions = []
        num_boxes = tf.shape(boxes)[1]
        for offset, feature_map in enumerate(feature_maps):
            level = MIN_LEVEL + offset
            ix = tf.where(tf.equal(levels, level))  # [k, 2] (image, box) int64
            level_boxes = tf.gather_nd(boxes_px, ix)
            ix = tf.cast(ix, tf.int32)
            if box_image_ids is None:
                box_indices = ix[:, 0]
            else:
                box_indices = tf.gather(box_image_ids, ix[:, 1])
            pooled_levels.append(
                self._pool(
                    feature_map,
                    level_boxes,
                    box_indices,
                    self.pool_size,
                    1.0 / 2**level,
                    sampling_ratio=self.sampling_ratio,
                    aligned=self.aligned,
                )
            )
            box_positions.append(ix[:, 0] * num_boxes + ix[:, 1])

        # Every box sits in exactly one level: stitching each level's rows back to their flat
        # positions restores the input order in one copy. (A concat + gather by argsort did the
        # same, but the gather's gradient is sparse: densifying it took an UnsortedSegmentSum per
        # level, ~1.6% of a 512 px bf16 training step's op time; the stitch's gradient is one dense
        # gather per level.)
        pooled = tf.dynamic_stitch(box_positions, pooled_levels)
        channels = feature_maps[0].shape[-1]
        out_shape = tf.concat(
            [tf.shape(boxes)[:2], tf.constant(self.pool_size, tf.int32), tf.shape(feature_maps[0])[-1:]], axis=0
        )
        pooled = tf.reshape(pooled, out_shape)
        pooled.set_shape([boxes.shape[0], boxes.shape[1], *self.pool_size, channels])
        return pooled

    def compute_output_shape(self, input_shape: Sequence[tuple]) -> tuple:
        boxes_shape = input_shape[0]
        return (boxes_shape[0], boxes_shape[1], *self.pool_size, input_shape[2][-1])

    def compute_output_spec(self, inputs: Sequence[keras.KerasTensor]) -> keras.KerasTensor:
        # The pooled features keep the feature maps' dtype (e.g. float16 under mixed precision).
        shape = self.compute_output_shape([tuple(t.shape) for t in inputs])
        return keras.KerasTensor(shape, dtype=inputs[2].dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            pool_size=list(self.pool_size),
            pooling_mode=self.pooling_mode,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
            level_mode=self.level_mode,
        )
        return config


@keras.saving.register_keras_serializable(package="mrcnn")
class SingleLevelROIAlign(keras.layers.Layer):
    """Pools a fixed-size feature crop for every RoI from one feature map (the C4 model's C4).

    The boxes are converted to input-image pixels (feature map size times `stride`, as
    `PyramidROIAlign` does from P2) and pooled with ``spatial_scale = 1 / stride`` by the pooling
    function ``pooling_mode`` of ``mrcnn.ops.roi_pooling``. Gradients flow into the feature map
    only, not into the boxes.

    Args:
        pool_size: ``ph`` (int, square) or ``(ph, pw)``; the C4 model's 14.
        stride: input-image pixels per feature-map cell (16 for C4).
        pooling_mode, sampling_ratio, aligned: see `PyramidROIAlign`.

    Call:
        inputs: [boxes ``[B, N, 4]`` (y1, x1, y2, x2) normalized, feature_map ``[B, H, W, C]``].
        box_image_ids: optional ``[N]`` int, the flat layout of `PyramidROIAlign`: boxes is then
            ``[1, N, 4]``, box i taken from image ``box_image_ids[i]``.
        Returns ``[B, N, ph, pw, C]`` (``[1, N, ...]`` in the flat layout), the feature map's dtype.
    """

    def __init__(self, pool_size: int | Sequence[int], stride: int = 16, pooling_mode: str = "roi_align",
                 sampling_ratio: int = 2, aligned: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("autocast", False)  # box coordinates stay float32 under mixed precision
        super().__init__(**kwargs)
        pool = (pool_size, pool_size) if isinstance(pool_size, int) else tuple(int(v) for v in pool_size)
        if len(pool) != 2 or min(pool) < 1:
            raise ValueError(f"pool_size must be a positive int or (ph, pw), got {pool_size!r}")
        if int(stride) < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        if pooling_mode not in POOLERS:
            raise ValueError(f"pooling_mode must be one of {sorted(POOLERS)}, got {pooling_mode!r}")
        self.pool_size = pool
        self.stride = int(stride)
        self.pooling_mode = pooling_mode
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self._pool = get_pooler(pooling_mode)

    def call(self, inputs: Sequence[tf.Tensor], box_image_ids: tf.Tensor | None = None) -> tf.Tensor:
        if len(inputs) != 2:
            raise ValueError(f"{self.name}: expects [boxes, feature_map], got {len(inputs)} inputs")
        boxes, feature_map = inputs
        boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))
        map_shape = tf.shape(feature_map)
        height = feature_map.shape[1] if feature_map.shape[1] is not None else map_shape[1]
        width = feature_map.shape[2] if feature_map.shape[2] is not None else map_shape[2]
        scale = tf.cast(tf.stack([height, width, height, width]), tf.float32) * float(self.stride)
        flat_boxes = tf.reshape(boxes * scale, [-1, 4])
        if box_image_ids is None:
            # Row b of boxes belongs to image b.
            box_indices = tf.repeat(tf.range(tf.shape(boxes)[0], dtype=tf.int32), tf.shape(boxes)[1])
        else:
            box_indices = tf.cast(tf.reshape(box_image_ids, [-1]), tf.int32)
        pooled = self._pool(feature_map, flat_boxes, box_indices, self.pool_size, 1.0 / self.stride,
                            sampling_ratio=self.sampling_ratio, aligned=self.aligned)
        out_shape = tf.concat([tf.shape(boxes)[:2], tf.constant(self.pool_size, tf.int32), map_shape[-1:]], axis=0)
        pooled = tf.reshape(pooled, out_shape)
        pooled.set_shape([boxes.shape[0], boxes.shape[1], *self.pool_size, feature_map.shape[-1]])
        return pooled

    def compute_output_shape(self, input_shape: Sequence[tuple]) -> tuple:
        return (input_shape[0][0], input_shape[0][1], *self.pool_size, input_shape[1][-1])

    def compute_output_spec(self, inputs: Sequence[keras.KerasTensor],
                            box_image_ids: keras.KerasTensor | None = None) -> keras.KerasTensor:
        shape = self.compute_output_shape([tuple(t.shape) for t in inputs])
        return keras.KerasTensor(shape, dtype=inputs[1].dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(pool_size=list(self.pool_size), stride=self.stride, pooling_mode=self.pooling_mode,
                      sampling_ratio=self.sampling_ratio, aligned=self.aligned)
        return config
