"""RoI feature extractors for the Mask R-CNN paper's ablation (Table 2c) and matterport parity.

All poolers share `roi_align`'s signature and conventions:

    pooler(features [N, H, W, C], boxes [K, 4] (y1, x1, y2, x2) in INPUT-IMAGE pixels,
           box_indices [K] int32, output_size (ph, pw) or int, spatial_scale,
           sampling_ratio=2, aligned=True) -> [K, ph, pw, C] (dtype of features)

| mode              | box quantized | bins quantized | sampling              | reduce |
|-------------------|---------------|----------------|-----------------------|--------|
| "roi_align"       | no            | no             | bilinear, grid/bin    | avg    |
| "roi_align_max"   | no            | no             | bilinear, grid/bin    | max    |
| "roi_pool"        | yes (round)   | yes (floor/ceil) | every pixel of bin  | max    |
| "roi_warp"        | yes (round)   | no             | bilinear, grid/bin    | avg    |
| "crop_and_resize" | no            | -              | 1 bilinear point/bin, corner to corner | - |

Gradients flow to `features` for every mode (not to boxes). These are pure TF; only "roi_align"
has a compiled op. The ablation poolers loop over bin samples with tf.while_loop, so their cost
grows with the largest bin (roi_pool) or grid (adaptive sampling): meant for experiments with
small configs, not for speed.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from mrcnn.ops.roi_align import (
    _float32_attr,
    _prepare_inputs,
    _taps,
    handles_empty_boxes,
    roi_align,
)

__all__ = ["roi_align_max", "roi_pool", "roi_warp", "crop_and_resize_pool", "POOLERS", "get_pooler"]


def _check_box_indices(box_indices: tf.Tensor, batch: tf.Tensor) -> list[tf.Operation]:
    """Run-time checks that every box addresses an image of the batch (InvalidArgumentError)."""
    return [tf.debugging.assert_non_negative(box_indices, message="box_indices must be >= 0"),
            tf.debugging.assert_less(box_indices, batch,
                                     message="box_indices out of range [0, N) of the batch")]


def _masked_max(num_i, num_j, values: Callable, out_shape, dtype) -> tf.Tensor:
    """max over (i, j) < (num_i, num_j) of values(i, j) -> (v [K, ph, pw, C], valid [K, ph, pw]).

    Invalid points are ignored; a bin without any valid point gives 0 (Fast R-CNN's empty bin).
    A sequential loop keeps memory at a few [K, ph, pw, C] tensors; autodiff routes the gradient
    to the (first) maximal point.
    """
    lowest = tf.constant(dtype.min, dtype)
    total = num_i * num_j

    def step(t, acc):
        value, valid = values(t // num_j, t % num_j)
        return t + 1, tf.maximum(acc, tf.where(valid[..., None], value, lowest))

    _, acc = tf.while_loop(lambda t, _: t < total, step, (tf.constant(0), tf.fill(out_shape, lowest)),
                           parallel_iterations=1)
    return tf.where(acc > lowest, acc, tf.zeros_like(acc))


@handles_empty_boxes
def roi_align_max(features, boxes, box_indices, output_size, spatial_scale: float,
                  sampling_ratio: int = 2, aligned: bool = True) -> tf.Tensor:
    """RoIAlign with max instead of average over each bin's bilinear samples.

    Sample positions, the aligned shift and the border rule are exactly roi_align's; a sample
    outside [-1, H] x [-1, W] has value 0 and takes part in the max (as in mmcv's max mode).
    Adaptive sampling (sampling_ratio <= 0) takes ceil(roi / bins) samples per box; a box whose
    grid is empty (zero/negative size with aligned=True) gives 0.

    Args/Returns: as `mrcnn.ops.roi_align.roi_align`.
    """
    features, boxes, box_indices, ph, pw, in_dtype = _prepare_inputs(features, boxes, box_indices, output_size)
    dtype = features.dtype
    fshape = tf.shape(features)
    with tf.control_dependencies(_check_box_indices(box_indices, fshape[0])):
        base, iy, wy, ix, wx, grid_h, grid_w = _taps(
            fshape, boxes, box_indices, ph, pw, _float32_attr(spatial_scale), int(sampling_ratio),
            bool(aligned), dtype, average=False)
    flat = tf.reshape(features, tf.stack([-1, fshape[3]]))
    num_samples_y, num_samples_x = tf.shape(iy)[2] // 2, tf.shape(ix)[2] // 2

    def sample(i, j):
        value = 0.0
        for cy in range(2):
            for cx in range(2):
                a, b = 2 * i + cy, 2 * j + cx
                index = base[:, None, None] + iy[:, :, a][:, :, None] + ix[:, :, b][:, None, :]
                weight = wy[:, :, a][:, :, None] * wx[:, :, b][:, None, :]
                value += weight[..., None] * tf.gather(flat, index)
        valid = (i < grid_h)[:, None, None] & (j < grid_w)[:, None, None]
        return value, tf.broadcast_to(valid, tf.shape(index))

    out_shape = tf.stack([tf.shape(boxes)[0], ph, pw, fshape[3]])
    out = _masked_max(num_samples_y, num_samples_x, sample, out_shape, dtype)
    return tf.cast(tf.ensure_shape(out, [None, ph, pw, features.shape[-1]]), in_dtype)


def _round_half_away(x: tf.Tensor) -> tf.Tensor:
    """C round(): halves away from zero (tf.round rounds halves to even)."""
    return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


@handles_empty_boxes
def roi_pool(features, boxes, box_indices, output_size, spatial_scale: float,
             sampling_ratio: int = 2, aligned: bool = True) -> tf.Tensor:
    """RoIPool of Fast R-CNN (Caffe / torchvision.ops.roi_pool semantics): quantize, then max.

    In feature pixels: start = round(y1 * scale), end = round(y2 * scale) (halves away from zero),
    roi_h = max(end - start + 1, 1) (the Caffe end is inclusive), bin_h = roi_h / ph, and bin p
    covers rows [floor(p * bin_h), ceil((p + 1) * bin_h)) + start clipped to [0, H). The output is
    the max over the bin's pixels; an empty bin (entirely outside the map) gives 0.
    sampling_ratio and aligned are ignored (kept for the common signature).

    Args/Returns: as `mrcnn.ops.roi_align.roi_align`.
    """
    del sampling_ratio, aligned  # quantized pooling has neither
    features, boxes, box_indices, ph, pw, in_dtype = _prepare_inputs(features, boxes, box_indices, output_size)
    dtype = features.dtype
    fshape = tf.shape(features)
    height, width = fshape[1], fshape[2]
    scaled = _round_half_away(boxes * tf.cast(_float32_attr(spatial_scale), dtype))

    def bins(start, end, pooled, size):
        start = tf.cast(start, tf.int32)
        roi = tf.maximum(tf.cast(end, tf.int32) - start + 1, 1)
        bin_size = tf.cast(roi, dtype)[:, None] / pooled                              # [K, 1]
        p = tf.range(pooled, dtype=dtype)[None, :]
        lo = tf.cast(tf.floor(p * bin_size), tf.int32) + start[:, None]
        hi = tf.cast(tf.math.ceil((p + 1.0) * bin_size), tf.int32) + start[:, None]
        return tf.clip_by_value(lo, 0, size), tf.clip_by_value(hi, 0, size)          # [K, pooled]

    y_lo, y_hi = bins(scaled[:, 0], scaled[:, 2], ph, height)
    x_lo, x_hi = bins(scaled[:, 1], scaled[:, 3], pw, width)
    max_h = tf.reduce_max(tf.concat([tf.reshape(y_hi - y_lo, [-1]), [0]], 0))
    max_w = tf.reduce_max(tf.concat([tf.reshape(x_hi - x_lo, [-1]), [0]], 0))
    with tf.control_dependencies(_check_box_indices(box_indices, fshape[0])):
        base = box_indices * (height * width)
    flat = tf.reshape(features, tf.stack([-1, fshape[3]]))

    def pixel(i, j):
        row, col = y_lo + i, x_lo + j
        valid = (row < y_hi)[:, :, None] & (col < x_hi)[:, None, :]                  # [K, ph, pw]
        row = tf.minimum(row, tf.maximum(height - 1, 0))  # keep the gather in range when invalid
        col = tf.minimum(col, tf.maximum(width - 1, 0))
        index = base[:, None, None] + (row * width)[:, :, None] + col[:, None, :]
        return tf.gather(flat, index), valid

    out_shape = tf.stack([tf.shape(boxes)[0], ph, pw, fshape[3]])
    out = _masked_max(max_h, max_w, pixel, out_shape, dtype)
    return tf.cast(tf.ensure_shape(out, [None, ph, pw, features.shape[-1]]), in_dtype)


@handles_empty_boxes
def roi_warp(features, boxes, box_indices, output_size, spatial_scale: float,
             sampling_ratio: int = 2, aligned: bool = True) -> tf.Tensor:
    """RoIWarp (the paper's ablation, after Dai et al.): quantized box, then bilinear bins.

    The box is quantized in feature pixels like RoIPool's, start = round(y1 * scale) and
    end = round(y2 * scale) (halves away from zero), and then pooled with RoIAlign's bilinear
    sampling and averaging over the unquantized bins of [start, end] (aligned=False geometry: no
    half-pixel shift, RoI at least 1 pixel). `aligned` is ignored (a quantized box has no
    sub-pixel position to align); sampling_ratio is RoIAlign's.

    Args/Returns: as `mrcnn.ops.roi_align.roi_align`.
    """
    del aligned
    features, boxes, box_indices, ph, pw, in_dtype = _prepare_inputs(features, boxes, box_indices, output_size)
    scale = _float32_attr(spatial_scale)
    quantized = _round_half_away(boxes * tf.cast(scale, boxes.dtype))
    # Back to input pixels for roi_align, which multiplies by spatial_scale again; the product
    # is the integer again up to one rounding (exact for power-of-two scales such as FPN's).
    out = roi_align(features, quantized / tf.cast(scale, boxes.dtype), box_indices, (ph, pw), scale,
                    sampling_ratio=sampling_ratio, aligned=False)
    return tf.cast(out, in_dtype)


@handles_empty_boxes
def crop_and_resize_pool(features, boxes, box_indices, output_size, spatial_scale: float,
                         sampling_ratio: int = 2, aligned: bool = True) -> tf.Tensor:
    """matterport's PyramidROIAlign pooling: tf.image.crop_and_resize, bilinear, one point per bin.

    matterport crops with normalized boxes n (the image is [0, 1]) from a feature map of size
    (fh, fw); crop_and_resize puts n at feature coordinate n * (fh - 1) and spaces the ph points
    corner to corner, y_p = y1 * (fh - 1) + p * (y2 - y1) * (fh - 1) / (ph - 1) (the centre when
    ph == 1), with value 0 outside the map (extrapolation_value=0).

    Here boxes are input pixels. This pooler uses n = box * spatial_scale / (fh, fw, fh, fw), i.e.
    box / image size when the feature map is image size * spatial_scale. Since mrcnn's normalized
    boxes are pixel boxes / (H, W) (docs/interfaces.md), PyramidROIAlign's pixels n * (H, W) come
    back to exactly n, so this reproduces matterport's crop for the same normalized boxes and a
    model with matterport's weights sees the numbers it was trained on. (Dividing by fh - 1
    instead would place n at n * fh, a different, unshifted crop.) sampling_ratio and aligned are
    ignored.

    Args/Returns: as `mrcnn.ops.roi_align.roi_align`.
    """
    del sampling_ratio, aligned
    features, boxes, box_indices, ph, pw, in_dtype = _prepare_inputs(features, boxes, box_indices, output_size)
    dtype = features.dtype
    fshape = tf.shape(features)
    size = tf.cast(tf.stack([fshape[1], fshape[2], fshape[1], fshape[2]]), dtype)
    normalized = boxes * tf.cast(_float32_attr(spatial_scale), dtype) / size
    with tf.control_dependencies(_check_box_indices(box_indices, fshape[0])):
        normalized = tf.identity(normalized)
    # crop_and_resize computes in float32 (float64 features are cast, and cast back below).
    out = tf.image.crop_and_resize(tf.cast(features, tf.float32), tf.cast(normalized, tf.float32),
                                   box_indices, (ph, pw), method="bilinear", extrapolation_value=0.0)
    return tf.cast(out, in_dtype)


POOLERS: dict[str, Callable[..., tf.Tensor]] = {
    "roi_align": roi_align,
    "roi_align_max": roi_align_max,
    "roi_pool": roi_pool,
    "roi_warp": roi_warp,
    "crop_and_resize": crop_and_resize_pool,
}


def get_pooler(mode: str) -> Callable[..., tf.Tensor]:
    """The pooler function for a pooling mode (keys of POOLERS).

    Raises:
        ValueError: unknown mode (the message names it and lists the known ones).
    """
    try:
        return POOLERS[mode]
    except KeyError:
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {sorted(POOLERS)}") from None
