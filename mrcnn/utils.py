"""NumPy utilities: boxes, masks, image resizing, anchors, image meta.

numpy only (no TensorFlow import) so that data loading, evaluation and visualization stay light.

Conventions (docs/interfaces.md):

* Boxes are ``(y1, x1, y2, x2)``. *Pixel* boxes have exclusive ``y2``/``x2``: a mask whose rows 3..7
  are set has ``y1=3, y2=8``; height is ``y2 - y1`` (no +1 anywhere).
* *Normalized* boxes are pixel boxes divided by ``(H, W, H, W)`` of the image, so the whole image is
  ``[0, 0, 1, 1]``.
* Box deltas are ``(dy, dx, log(dh), log(dw))`` relative to the reference box's center and size.
* Resampling uses the pixel-center model (pixel ``i`` covers ``[i, i+1)``, its center is ``i + 0.5``),
  the same as ``skimage.transform.resize``: bilinear for images and soft masks, nearest neighbour for
  binary masks. Both are implemented here with separable gathers because skimage's resize is 10-30x
  slower on [H, W, N] mask stacks; tests check they agree with skimage.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

RESIZE_MODES = ("none", "square", "pad64", "crop")


# ------------------------------------------------------------------------------------------------
# Boxes
# detect(..., soft_masks=True) returns mask probabilities; detect's own masks are those >= this.
SOFT_MASK_THRESHOLD = 0.5


def binary_masks(masks: np.ndarray) -> np.ndarray:
    """Masks as bool: float masks (soft-mask probabilities) are cut at `SOFT_MASK_THRESHOLD`, as
    `detect` binarizes them; other dtypes count nonzero as inside. Any shape."""
    masks = np.asarray(masks)
    return masks >= SOFT_MASK_THRESHOLD if masks.dtype.kind == "f" else masks.astype(bool)


def extract_bboxes(mask: np.ndarray) -> np.ndarray:
    """Tight pixel boxes around instance masks.

    Args:
        mask: [H, W, N] bool (or 0/1), one channel per instance.

    Returns:
        [N, (y1, x1, y2, x2)] int32 pixel boxes, y2/x2 exclusive. An empty mask gives an all-zero box.

    Raises:
        ValueError: if `mask` is not 3-D.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be [H, W, N], got shape {mask.shape}")
    height, width, _ = mask.shape
    rows = mask.any(axis=1)  # [H, N]: which rows each instance touches
    cols = mask.any(axis=0)  # [W, N]
    present = rows.any(axis=0)
    # argmax finds the first True; on the reversed axis it finds the last one.
    y1 = rows.argmax(axis=0)
    y2 = height - rows[::-1].argmax(axis=0)
    x1 = cols.argmax(axis=0)
    x2 = width - cols[::-1].argmax(axis=0)
    boxes = np.stack([y1, x1, y2, x2], axis=1).astype(np.int32)
    boxes[~present] = 0
    return boxes.reshape(-1, 4)


def _check_boxes(name: str, boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be [N, 4] (y1, x1, y2, x2), got shape {boxes.shape}")
    return boxes


def compute_iou(box: np.ndarray, boxes: np.ndarray, box_area: float, boxes_area: np.ndarray) -> np.ndarray:
    """IoU of one box with each of `boxes`.

    Args:
        box: [4] (y1, x1, y2, x2).
        boxes: [N, 4], same coordinate frame.
        box_area: area of `box` (passed in so callers looping over boxes compute it once).
        boxes_area: [N] areas of `boxes`.

    Returns:
        [N] float64 IoU in [0, 1]; 0 where the union is empty.
    """
    box = np.asarray(box, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    y1 = np.maximum(box[0], boxes[:, 0])
    y2 = np.minimum(box[2], boxes[:, 2])
    x1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[3], boxes[:, 3])
    intersection = np.maximum(y2 - y1, 0) * np.maximum(x2 - x1, 0)
    union = box_area + np.asarray(boxes_area, dtype=np.float64) - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of [N, 4] boxes (negative extents count as 0), float64 [N]."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)


def compute_overlaps(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU.

    Args:
        boxes1: [N, (y1, x1, y2, x2)].
        boxes2: [M, (y1, x1, y2, x2)], same coordinate frame.

    Returns:
        [N, M] float64 IoU; 0 for pairs whose union is empty (two degenerate boxes).

    Raises:
        ValueError: if either argument is not [K, 4].
    """
    b1 = _check_boxes("boxes1", boxes1).astype(np.float64)
    b2 = _check_boxes("boxes2", boxes2).astype(np.float64)
    area1 = box_area(b1)
    area2 = box_area(b2)
    y1 = np.maximum(b1[:, None, 0], b2[None, :, 0])
    x1 = np.maximum(b1[:, None, 1], b2[None, :, 1])
    y2 = np.minimum(b1[:, None, 2], b2[None, :, 2])
    x2 = np.minimum(b1[:, None, 3], b2[None, :, 3])
    intersection = np.maximum(y2 - y1, 0) * np.maximum(x2 - x1, 0)
    union = area1[:, None] + area2[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def compute_overlaps_masks(masks1: np.ndarray, masks2: np.ndarray) -> np.ndarray:
    """Pairwise IoU of instance masks.

    Args:
        masks1: [H, W, N] bool (values > 0.5 count as set when float).
        masks2: [H, W, M] bool, same H and W.

    Returns:
        [N, M] float64 mask IoU; 0 where both masks are empty.

    Raises:
        ValueError: if the masks are not 3-D or their H, W differ.
    """
    masks1 = np.asarray(masks1)
    masks2 = np.asarray(masks2)
    if masks1.ndim != 3 or masks2.ndim != 3 or masks1.shape[:2] != masks2.shape[:2]:
        raise ValueError(f"masks1 and masks2 must be [H, W, N] with the same H, W; got {masks1.shape} and {masks2.shape}")
    n, m = masks1.shape[-1], masks2.shape[-1]
    if n == 0 or m == 0:
        return np.zeros((n, m), dtype=np.float64)
    flat1 = masks1.reshape(-1, n) > 0.5
    flat2 = masks2.reshape(-1, m) > 0.5
    area1 = flat1.sum(axis=0, dtype=np.float64)
    area2 = flat2.sum(axis=0, dtype=np.float64)
    # Only pixels set in both stacks can add to an intersection; instance masks are sparse, so
    # the matrix product over those rows is far smaller than over the whole image.
    rows = flat1.any(axis=1) & flat2.any(axis=1)
    # float32 counts exactly up to 2**24 pixels.
    dtype = np.float32 if np.count_nonzero(rows) < 2**24 else np.float64
    intersection = (flat1[rows].T.astype(dtype) @ flat2[rows].astype(dtype)).astype(np.float64)
    union = area1[:, None] + area2[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS: keeps the best box, drops boxes with IoU > `threshold` to it, repeats.

    Args:
        boxes: [N, (y1, x1, y2, x2)].
        scores: [N] box scores.
        threshold: IoU above which a lower-scored box is suppressed.

    Returns:
        int32 indices into `boxes` of the kept boxes, by descending score (ties: lower index first).

    Raises:
        ValueError: if shapes disagree.
    """
    boxes = _check_boxes("boxes", boxes).astype(np.float64)
    scores = np.asarray(scores)
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must be [N] with N = {boxes.shape[0]} boxes, got shape {scores.shape}")
    # Stable sort on -score: deterministic tie-breaking by index.
    order = np.argsort(-scores, kind="stable")
    areas = box_area(boxes)
    keep = []
    while order.size > 0:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        iou = compute_iou(boxes[best], boxes[rest], areas[best], areas[rest])
        order = rest[iou <= threshold]
    return np.asarray(keep, dtype=np.int32)


def _center_size(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """[N, (y1, x1, y2, x2)] -> (center_y, center_x, height, width), each [N]; h = y2 - y1."""
    height = boxes[:, 2] - boxes[:, 0]
    width = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * height, boxes[:, 1] + 0.5 * width, height, width


def box_refinement(box: np.ndarray, gt_box: np.ndarray) -> np.ndarray:
    """Deltas that turn each `box` into its `gt_box`.

    Args:
        box: [N, (y1, x1, y2, x2)] reference boxes (e.g. anchors), positive height and width.
        gt_box: [N, (y1, x1, y2, x2)] targets, same frame, positive height and width.

    Returns:
        [N, (dy, dx, log(dh), log(dw))] float32 with dy = (gt_cy - cy) / h, dh = gt_h / h, h = y2 - y1.
    """
    box = _check_boxes("box", box).astype(np.float64)
    gt_box = _check_boxes("gt_box", gt_box).astype(np.float64)
    if box.shape != gt_box.shape:
        raise ValueError(f"box and gt_box must have the same shape, got {box.shape} and {gt_box.shape}")
    center_y, center_x, height, width = _center_size(box)
    gt_center_y, gt_center_x, gt_height, gt_width = _center_size(gt_box)
    deltas = np.stack(
        [
            (gt_center_y - center_y) / height,
            (gt_center_x - center_x) / width,
            np.log(gt_height / height),
            np.log(gt_width / width),
        ],
        axis=1,
    )
    return deltas.astype(np.float32)


def apply_box_deltas(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Applies (dy, dx, log(dh), log(dw)) deltas to boxes; the inverse of `box_refinement`.

    Args:
        boxes: [N, (y1, x1, y2, x2)].
        deltas: [N, (dy, dx, log(dh), log(dw))] (not divided by a std dev).

    Returns:
        [N, (y1, x1, y2, x2)] float32 refined boxes.
    """
    boxes = _check_boxes("boxes", boxes).astype(np.float64)
    deltas = _check_boxes("deltas", deltas).astype(np.float64)
    if boxes.shape != deltas.shape:
        raise ValueError(f"boxes and deltas must have the same shape, got {boxes.shape} and {deltas.shape}")
    center_y, center_x, height, width = _center_size(boxes)
    center_y = center_y + deltas[:, 0] * height
    center_x = center_x + deltas[:, 1] * width
    height = height * np.exp(deltas[:, 2])
    width = width * np.exp(deltas[:, 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return np.stack([y1, x1, y1 + height, x1 + width], axis=1).astype(np.float32)


def norm_boxes(boxes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Pixel boxes -> normalized boxes (divided by (H, W, H, W)).

    Args:
        boxes: [..., (y1, x1, y2, x2)] pixel boxes.
        shape: (H, W) (more entries are ignored) of the image the boxes live in.

    Returns:
        float32 boxes of the same shape; the image is [0, 0, 1, 1].
    """
    h, w = int(shape[0]), int(shape[1])
    return (np.asarray(boxes, dtype=np.float64) / np.array([h, w, h, w], dtype=np.float64)).astype(np.float32)


def denorm_boxes(boxes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Normalized boxes -> pixel boxes, rounded to int32 (inverse of `norm_boxes`).

    Args:
        boxes: [..., (y1, x1, y2, x2)] normalized boxes.
        shape: (H, W) of the target image.

    Returns:
        int32 pixel boxes of the same shape.
    """
    h, w = int(shape[0]), int(shape[1])
    return np.around(np.asarray(boxes, dtype=np.float64) * np.array([h, w, h, w], dtype=np.float64)).astype(np.int32)


# ------------------------------------------------------------------------------------------------
# Resampling helpers (pixel-center model, as skimage.transform.resize)
def _source_coords(in_size: int, out_size: int) -> np.ndarray:
    # Output pixel center (i + 0.5) maps to input coordinate (i + 0.5) * in/out in the pixel-edge
    # frame, i.e. (i + 0.5) * in/out - 0.5 in index units.
    return (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    # floor(coord + 0.5) with coord from _source_coords == floor((i + 0.5) * in/out).
    index = np.floor((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size)).astype(np.intp)
    return np.clip(index, 0, in_size - 1)


def _linear_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    coords = np.clip(_source_coords(in_size, out_size), 0, in_size - 1)  # edge mode: clamp
    lo = np.floor(coords).astype(np.intp)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (coords - lo).astype(np.float32)
    return lo, hi, frac


def resize_nearest(array: np.ndarray, output_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes (e.g. a [H, W, N] mask stack).

    Same sampling as ``skimage.transform.resize(order=0)`` (pixel centers), except possibly at
    exact half-pixel ties; keeps the dtype.

    Args:
        array: [H, W, ...] array.
        output_shape: (H', W').

    Returns:
        [H', W', ...] array of the same dtype.
    """
    array = np.asarray(array)
    if array.ndim < 2 or min(array.shape[:2]) < 1:
        raise ValueError(f"array must be [H, W, ...] with H, W >= 1, got shape {array.shape}")
    out_h, out_w = int(output_shape[0]), int(output_shape[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output_shape must be positive, got {tuple(output_shape)}")
    rows = _nearest_index(array.shape[0], out_h)
    cols = _nearest_index(array.shape[1], out_w)
    return array[rows][:, cols]


def resize_bilinear(array: np.ndarray, output_shape: Sequence[int]) -> np.ndarray:
    """Bilinear resize of the first two axes, without anti-aliasing.

    Same values as ``skimage.transform.resize(order=1, mode="edge", anti_aliasing=False,
    preserve_range=True)`` up to float32 rounding, computed separably.

    Args:
        array: [H, W, ...] array of any real dtype.
        output_shape: (H', W').

    Returns:
        [H', W', ...] float32.
    """
    array = np.asarray(array)
    if array.ndim < 2 or min(array.shape[:2]) < 1:
        raise ValueError(f"array must be [H, W, ...] with H, W >= 1, got shape {array.shape}")
    out_h, out_w = int(output_shape[0]), int(output_shape[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output_shape must be positive, got {tuple(output_shape)}")
    in_h, in_w = array.shape[:2]
    trailing = array.shape[2:]
    depth = int(np.prod(trailing)) if trailing else 1
    y_lo, y_hi, y_frac = _linear_weights(in_h, out_h)
    x_lo, x_hi, x_frac = _linear_weights(in_w, out_w)
    # Work on 2-D views [H, W * depth]: broadcasting weights over a short trailing axis (e.g. 3
    # channels) is several times slower in numpy than over one long contiguous axis. In-place
    # updates keep the number of fresh (page-faulting) temporaries low.
    flat = array.reshape(in_h, in_w * depth)
    if flat.dtype != np.float32:
        flat = flat.astype(np.float32)
    top = flat[y_lo]
    rows = flat[y_hi]
    rows -= top
    rows *= y_frac[:, None]
    rows += top
    rows = rows.reshape(out_h, in_w, depth)
    out = np.take(rows, x_hi, axis=1).reshape(out_h, out_w * depth)
    left = np.take(rows, x_lo, axis=1).reshape(out_h, out_w * depth)
    out -= left
    out *= np.repeat(x_frac, depth)[None, :]
    out += left
    return out.reshape((out_h, out_w) + trailing)


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    if dtype == np.bool_:
        return values >= 0.5
    return values.astype(dtype)


# ------------------------------------------------------------------------------------------------
# Images and masks
def resize_image(
    image: np.ndarray,
    min_dim: int | None = None,
    max_dim: int | None = None,
    min_scale: float | None = None,
    mode: str = "square",
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, tuple[int, int, int, int], float, list[tuple[int, int]], tuple[int, int, int, int] | None]:
    """Resizes an image keeping its aspect ratio (matterport semantics).

    Modes:
        * ``"none"``: unchanged.
        * ``"square"``: scale up so the shorter side is at least `min_dim` (never down for it), at
          least by `min_scale`, then down if needed so the longer side fits `max_dim`; pad with zeros
          (centered) to `max_dim` x `max_dim`.
        * ``"pad64"``: scale as for `min_dim`/`min_scale` (no `max_dim` limit), then pad (centered)
          each side up to a multiple of 64.
        * ``"crop"``: scale as for `min_dim`/`min_scale`, then take a random `min_dim` x `min_dim`
          crop (drawn with `rng`).

    Args:
        image: [H, W, C] image (any dtype; kept).
        min_dim: see modes; required (a multiple of 64) for ``"pad64"`` and ``"crop"``.
        max_dim: see modes; required for ``"square"``.
        min_scale: lower bound of the scale factor (e.g. to upscale small images), 0/None for none.
        mode: one of ``"none"``, ``"square"``, ``"pad64"``, ``"crop"``.
        rng: random generator for ``"crop"``; a fresh unseeded one when None.

    Returns:
        image: resized image, same dtype (bilinear, rounded for integer dtypes).
        window: (y1, x1, y2, x2) pixel box of the real image inside the result (y2/x2 exclusive).
        scale: the scale factor applied.
        padding: [(top, bottom), (left, right), (0, 0)] zero padding added.
        crop: (y, x, h, w) of the crop in the scaled image for ``"crop"``, else None.

    Raises:
        ValueError: for an unknown mode, a missing/invalid dim, or an image that is not [H, W, C].
    """
    image = np.asarray(image)
    if image.ndim != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be [H, W, C] with H, W >= 1, got shape {image.shape}")
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    h, w = image.shape[:2]
    window = (0, 0, h, w)
    scale = 1.0
    padding = [(0, 0), (0, 0), (0, 0)]
    crop = None
    if mode == "none":
        return image, window, scale, padding, crop
    if mode == "square" and not max_dim:
        raise ValueError("max_dim is required in 'square' mode")
    if mode in ("pad64", "crop") and not min_dim:
        raise ValueError(f"min_dim is required in {mode!r} mode")
    if mode == "pad64" and min_dim % 64 != 0:
        raise ValueError(f"min_dim must be a multiple of 64 in 'pad64' mode, got {min_dim}")

    scale = resize_scale(h, w, min_dim, max_dim, min_scale, mode)
    if scale != 1.0:
        image = _cast_like(resize_bilinear(image, scaled_shape(h, w, scale)), image.dtype)

    h, w = image.shape[:2]
    if mode == "square":
        image, window, padding = _pad_centered(image, max_dim - h, max_dim - w)
    elif mode == "pad64":
        image, window, padding = _pad_centered(image, (-h) % 64, (-w) % 64)
    else:  # crop
        if rng is None:
            rng = np.random.default_rng()
        # The scale step guarantees h, w >= min_dim.
        y = int(rng.integers(0, h - min_dim + 1))
        x = int(rng.integers(0, w - min_dim + 1))
        crop = (y, x, min_dim, min_dim)
        image = image[y : y + min_dim, x : x + min_dim]
        window = (0, 0, min_dim, min_dim)
    return image, window, scale, padding, crop


def scaled_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """(round(height * scale), round(width * scale)), at least 1 each: a 1 x 300 px image scaled
    down to fit must stay an image (rounding made its height 0)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_scale(height: int, width: int, min_dim: int | None = None, max_dim: int | None = None,
                 min_scale: float | None = None, mode: str = "square") -> float:
    """The scale factor `resize_image` applies to a `height` x `width` image (same arguments)."""
    if mode == "none":
        return 1.0
    scale = 1.0
    if min_dim:
        scale = max(1.0, min_dim / min(height, width))  # scale up to min_dim, never down for it
    if min_scale and scale < min_scale:
        scale = float(min_scale)
    if max_dim and mode == "square":
        longest = max(height, width)
        if round(longest * scale) > max_dim:
            scale = max_dim / longest
    return scale


def _pad_centered(image: np.ndarray, pad_h: int, pad_w: int
                  ) -> tuple[np.ndarray, tuple[int, int, int, int], list[tuple[int, int]]]:
    """Zero-pads `pad_h` rows and `pad_w` columns around `image`, centered with the odd pixel at the
    bottom/right. Returns (image, window (y1, x1, y2, x2) of the original, padding)."""
    h, w = image.shape[:2]
    padding = [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)]
    image = np.pad(image, padding, mode="constant", constant_values=0)
    return image, (pad_h // 2, pad_w // 2, pad_h // 2 + h, pad_w // 2 + w), padding


def rescale_image(image: np.ndarray, scale: float, square_side: int | None = None
                  ) -> tuple[np.ndarray, tuple[int, int, int, int], float, list[tuple[int, int]]]:
    """Resizes an image by exactly `scale` and pads it with zeros (centered), for multi-scale inference.

    `resize_image`'s rules (never scale down for `min_dim`, cap at `max_dim`) pick the model's own
    scale; test-time augmentation (mrcnn.tta) needs that scale times a factor, up or down.

    Args:
        image: [H, W, C] image (any dtype; kept).
        scale: the scale factor (> 0); the result is round(H * scale) x round(W * scale) before padding.
        square_side: pad to this square (as ``"square"`` mode; must be at least both scaled sides);
            None: pad each side up to a multiple of 64 (as ``"pad64"`` mode).

    Returns:
        image, window (y1, x1, y2, x2) of the real image (y2/x2 exclusive), scale, padding
        [(top, bottom), (left, right), (0, 0)], as `resize_image`.

    Raises:
        ValueError: for a non-positive scale, an image that is not [H, W, C], or a square_side
            smaller than the scaled image.
    """
    image = np.asarray(image)
    if image.ndim != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be [H, W, C] with H, W >= 1, got shape {image.shape}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    h, w = image.shape[:2]
    if scale != 1.0:
        image = _cast_like(resize_bilinear(image, scaled_shape(h, w, scale)), image.dtype)
    h, w = image.shape[:2]
    if square_side is not None:
        if square_side < max(h, w):
            raise ValueError(f"square_side {square_side} is smaller than the scaled image {h}x{w}")
        pad_h, pad_w = square_side - h, square_side - w
    else:
        pad_h, pad_w = (-h) % 64, (-w) % 64
    image, window, padding = _pad_centered(image, pad_h, pad_w)  # resize_image's placement
    return image, window, float(scale), padding


def resize_mask(
    mask: np.ndarray,
    scale: float,
    padding: Sequence[Sequence[int]],
    crop: Sequence[int] | None = None,
) -> np.ndarray:
    """Applies the resize of `resize_image` to instance masks (nearest neighbour).

    Args:
        mask: [H, W, N] bool.
        scale: `scale` returned by `resize_image`.
        padding: `padding` returned by `resize_image` (only its first two pairs are used).
        crop: `crop` returned by `resize_image`; when given, the mask is cropped instead of padded.

    Returns:
        [H', W', N] bool, pixel-aligned with the resized image.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be [H, W, N], got shape {mask.shape}")
    h, w = mask.shape[:2]
    if scale != 1:
        mask = resize_nearest(mask, scaled_shape(h, w, scale))  # resize_image's output size
    mask = mask.astype(bool, copy=False)
    if crop is not None:
        y, x, ch, cw = (int(v) for v in crop)
        return mask[y : y + ch, x : x + cw]
    pad = [tuple(padding[0]), tuple(padding[1]), (0, 0)]
    return np.pad(mask, pad, mode="constant", constant_values=False)


def _sample_box_bilinear(plane: np.ndarray, box: Sequence[int], output_shape: Sequence[int]) -> np.ndarray:
    """Bilinear resize of plane[y1:y2, x1:x2] to output_shape (edge clamped inside the crop)."""
    y1, x1, y2, x2 = (int(v) for v in box)
    return resize_bilinear(plane[y1:y2, x1:x2], output_shape)


def bilinear_blend(sample: Callable[[np.ndarray, np.ndarray], np.ndarray], y_lo: np.ndarray, y_hi: np.ndarray,
                   x_lo: np.ndarray, x_hi: np.ndarray, y_frac: np.ndarray, x_frac: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of [P, mh, mw] samples from their four corner gathers, in place.

    `sample(ys, xs)` returns float32 [P, mh, mw] values at rows `ys` and columns `xs` (y_lo/y_hi
    and x_lo/x_hi: whatever index form `sample` takes); y_frac [P, mh] and x_frac [P, mw] are the
    fractional offsets. The operation order is fixed (minimize_mask and the label-image path
    must give bitwise the same mini masks).
    """
    top_left = sample(y_lo, x_lo)
    left = sample(y_hi, x_lo)
    left -= top_left
    left *= y_frac[:, :, None]
    left += top_left
    top_right = sample(y_lo, x_hi)
    right = sample(y_hi, x_hi)
    right -= top_right
    right *= y_frac[:, :, None]
    right += top_right
    right -= left
    right *= x_frac[:, None, :]
    right += left
    return right


def minimize_mask(bbox: np.ndarray, mask: np.ndarray, mini_shape: Sequence[int]) -> np.ndarray:
    """Crops each instance mask to its box and resizes it to `mini_shape` (saves memory).

    Args:
        bbox: [N, (y1, x1, y2, x2)] int pixel boxes (as from `extract_bboxes`).
        mask: [H, W, N] bool full-image masks.
        mini_shape: (mh, mw).

    Returns:
        [mh, mw, N] bool (bilinear resize of the crop, thresholded at 0.5).

    Raises:
        ValueError: on mismatched N or a box of zero area (its mask is empty; drop it first).
    """
    bbox = _check_boxes("bbox", bbox)
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.shape[-1] != bbox.shape[0]:
        raise ValueError(f"mask must be [H, W, N] with N = {bbox.shape[0]} boxes, got shape {mask.shape}")
    mh, mw = int(mini_shape[0]), int(mini_shape[1])
    mini = np.zeros((mh, mw, bbox.shape[0]), dtype=bool)
    for i, box in enumerate(bbox.astype(np.int64)):
        y1, x1, y2, x2 = box
        if y2 <= y1 or x2 <= x1:
            raise ValueError(f"bbox[{i}] = {box.tolist()} has zero area: drop empty instances before minimize_mask")
        mini[:, :, i] = _sample_box_bilinear(mask[:, :, i], box, (mh, mw)) >= 0.5
    return mini


def resize_and_minimize_mask(
    mask: np.ndarray,
    scale: float,
    padding: Sequence[Sequence[int]],
    crop: Sequence[int] | None,
    mini_shape: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """`resize_mask`, `extract_bboxes` and `minimize_mask` in one go, without full-size masks.

    Gives exactly what ``m = resize_mask(mask, scale, padding, crop)``, ``b = extract_bboxes(m)``,
    ``minimize_mask(b, m, mini_shape)`` give for the non-empty instances, but samples each
    instance only inside its own box: much less memory traffic for many small instances (cells,
    nuclei) on large images.

    Args:
        mask: [H, W, N] bool masks of the image before `resize_image`.
        scale, padding, crop: as returned by `resize_image`.
        mini_shape: (mh, mw).

    Returns:
        bbox: [N, (y1, x1, y2, x2)] int32 pixel boxes in the resized image; all zero for an instance
            that is empty after resizing (e.g. cropped away), which the caller should drop.
        mini_mask: [mh, mw, N] bool (all False for empty instances).
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be [H, W, N], got shape {mask.shape}")
    height, width, count = mask.shape
    mh, mw = int(mini_shape[0]), int(mini_shape[1])
    if scale != 1:
        new_height, new_width = scaled_shape(height, width, scale)
        rows = _nearest_index(height, new_height)
        cols = _nearest_index(width, new_width)
    else:
        rows, cols = np.arange(height), np.arange(width)
    # Output rows/cols kept (all, or the crop) and the offset from them to output coordinates.
    if crop is not None:
        top, left, crop_h, crop_w = (int(v) for v in crop)
        rows, cols = rows[top : top + crop_h], cols[left : left + crop_w]
        shift_y, shift_x = 0, 0
    else:
        shift_y, shift_x = int(padding[0][0]), int(padding[1][0])
    bbox = np.zeros((count, 4), dtype=np.int32)
    if count == 0:
        return bbox, np.zeros((mh, mw, 0), dtype=bool)

    # Output row r of instance i is non-empty iff source row rows[r] has a pixel in a sampled column.
    # (When every column is sampled, i.e. no downscaling and no crop, that is a plain any().)
    sampled_cols = np.unique(cols)
    sampled_rows = np.unique(rows)
    row_any = (mask if sampled_cols.size == width else mask[:, sampled_cols]).any(axis=1)[rows]  # [H', N]
    col_any = (mask if sampled_rows.size == height else mask[sampled_rows]).any(axis=0)[cols]  # [W', N]
    present = row_any.any(axis=0) & col_any.any(axis=0)
    y1 = row_any.argmax(axis=0)
    y2 = rows.size - row_any[::-1].argmax(axis=0)
    x1 = col_any.argmax(axis=0)
    x2 = cols.size - col_any[::-1].argmax(axis=0)
    bbox[present] = np.stack([y1 + shift_y, x1 + shift_x, y2 + shift_y, x2 + shift_x], axis=1)[present]

    # Bilinear sampling of each instance's box (as minimize_mask / resize_bilinear do, same float
    # operations in the same order), vectorized over instances; indices go through the nearest
    # maps straight into the source mask.
    index = np.flatnonzero(present)
    y_lo, y_hi, y_frac = _linear_weights_batch(y1[index], y2[index] - y1[index], mh)  # [n, mh]
    x_lo, x_hi, x_frac = _linear_weights_batch(x1[index], x2[index] - x1[index], mw)  # [n, mw]
    # Gathers through flat indices (y * W + x) * N + n built separably: several times faster than
    # numpy's 3-index fancy indexing.
    flat = np.ascontiguousarray(mask).reshape(-1)
    itype = np.int32 if flat.size < 2**31 else np.intp
    row_stride = width * count
    y_lo = (rows[y_lo] * row_stride + index[:, None]).astype(itype)[:, :, None]  # [n, mh, 1]
    y_hi = (rows[y_hi] * row_stride + index[:, None]).astype(itype)[:, :, None]
    x_lo = (cols[x_lo] * count).astype(itype)[:, None, :]  # [n, 1, mw]
    x_hi = (cols[x_hi] * count).astype(itype)[:, None, :]

    def sample(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return np.take(flat, ys + xs).astype(np.float32)

    right = bilinear_blend(sample, y_lo, y_hi, x_lo, x_hi, y_frac, x_frac)
    mini = np.zeros((mh, mw, count), dtype=bool)
    mini[:, :, index] = np.moveaxis(right >= 0.5, 0, -1)
    return bbox, mini


def _linear_weights_batch(start: np.ndarray, size: np.ndarray, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_linear_weights` for many segments [start, start + size) at once, as absolute indices.

    Returns lo, hi [n, out_size] int and frac [n, out_size] float32, with the same values as
    `_linear_weights(size, out_size)` offset by `start`.
    """
    size = size.astype(np.float64)[:, None]
    coords = (np.arange(out_size, dtype=np.float64)[None, :] + 0.5) * (size / out_size) - 0.5
    coords = np.clip(coords, 0, size - 1)
    lo = np.floor(coords).astype(np.intp)
    hi = np.minimum(lo + 1, size.astype(np.intp) - 1)
    frac = (coords - lo).astype(np.float32)
    return lo + start[:, None], hi + start[:, None], frac


def expand_mask(bbox: np.ndarray, mini_mask: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """Inverse of `minimize_mask`: pastes mini masks back at full image size.

    Args:
        bbox: [N, (y1, x1, y2, x2)] int pixel boxes.
        mini_mask: [mh, mw, N] bool/float.
        image_shape: (H, W, ...) of the full image.

    Returns:
        [H, W, N] bool. Zero-area boxes give empty masks; boxes are clipped to the image.
    """
    bbox = _check_boxes("bbox", bbox)
    mini_mask = np.asarray(mini_mask)
    if mini_mask.ndim != 3 or mini_mask.shape[-1] != bbox.shape[0]:
        raise ValueError(f"mini_mask must be [mh, mw, N] with N = {bbox.shape[0]} boxes, got shape {mini_mask.shape}")
    return paste_masks(np.moveaxis(mini_mask, -1, 0), bbox, image_shape)


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_shape: Sequence[int], soft: bool = False) -> np.ndarray:
    """Pastes one small mask per box into full-size masks: `unmold_mask` (or `unmold_soft_mask`)
    for every instance at once.

    Only each box's own pixels are written: the output starts as zeros, so building a full
    [H, W] plane per instance (and copying it into the strided [H, W, N] output) would cost
    O(H * W) per instance instead of O(box area).

    Args:
        masks: [N, mh, mw] float in [0, 1] (or bool).
        boxes: [N, (y1, x1, y2, x2)] pixel boxes (y2/x2 exclusive); may extend past the image.
        image_shape: (H, W, ...) of the output.
        soft: float32 probabilities instead of bool masks thresholded at 0.5.

    Returns:
        [H, W, N] bool (or float32 with `soft`), the same as stacking `unmold_mask(masks[n],
        boxes[n], image_shape)` (`unmold_soft_mask`) over n.
    """
    masks = np.asarray(masks)
    boxes = np.asarray(boxes)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, mh, mw], got shape {masks.shape}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes must be [N, 4] with N = {masks.shape[0]} masks, got shape {boxes.shape}")
    height, width = int(image_shape[0]), int(image_shape[1])
    full = np.zeros((height, width, masks.shape[0]), dtype=np.float32 if soft else bool)
    for n in range(masks.shape[0]):
        part = _mask_in_box(masks[n], boxes[n], height, width)
        if part is not None:
            rows, cols, values = part
            full[rows, cols, n] = values if soft else values >= 0.5
    return full


def unmold_mask(mask: np.ndarray, bbox: Sequence[int], image_shape: Sequence[int]) -> np.ndarray:
    """Pastes a soft mask predicted for a box into a full-size binary mask.

    Args:
        mask: [mh, mw] float in [0, 1] (e.g. the mask head's sigmoid output for one instance).
        bbox: (y1, x1, y2, x2) pixel box the mask covers (y2/x2 exclusive); may extend past the image.
        image_shape: (H, W, ...) of the output.

    Returns:
        [H, W] bool: the mask resized bilinearly to the box, thresholded at 0.5. A zero-area box gives
        an empty mask.
    """
    return unmold_soft_mask(mask, bbox, image_shape) >= 0.5


def unmold_soft_mask(mask: np.ndarray, bbox: Sequence[int], image_shape: Sequence[int]) -> np.ndarray:
    """Pastes a soft mask predicted for a box into a full-size probability map (`unmold_mask` before
    its 0.5 threshold; test-time augmentation averages these).

    Args:
        mask: [mh, mw] float in [0, 1].
        bbox: (y1, x1, y2, x2) pixel box the mask covers (y2/x2 exclusive); may extend past the image.
        image_shape: (H, W, ...) of the output.

    Returns:
        [H, W] float32: the mask resized bilinearly to the box, 0 outside it (and everywhere for a
        zero-area box).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [mh, mw], got shape {mask.shape}")
    height, width = int(image_shape[0]), int(image_shape[1])
    full = np.zeros((height, width), dtype=np.float32)
    part = _mask_in_box(mask, bbox, height, width)
    if part is not None:
        rows, cols, values = part
        full[rows, cols] = values
    return full


def _mask_in_box(mask: np.ndarray, bbox: Sequence[int], height: int, width: int
                 ) -> tuple[slice, slice, np.ndarray] | None:
    """`mask` [mh, mw] resized bilinearly to `bbox`, cut to the part inside a [height, width] image.

    Returns:
        (rows, cols, values): the image slices the part covers and its float32 values; None for a
        zero-area box or one wholly outside the image.
    """
    y1, x1, y2, x2 = (int(round(float(v))) for v in bbox)
    cy1, cx1, cy2, cx2 = max(y1, 0), max(x1, 0), min(y2, height), min(x2, width)
    if y2 <= y1 or x2 <= x1 or cy2 <= cy1 or cx2 <= cx1:
        return None
    resized = resize_bilinear(mask, (y2 - y1, x2 - x1))
    return slice(cy1, cy2), slice(cx1, cx2), resized[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1]


# ------------------------------------------------------------------------------------------------
# Anchors
def generate_anchors(
    scales: float | Sequence[float],
    ratios: Sequence[float],
    shape: Sequence[int],
    feature_stride: int,
    anchor_stride: int,
) -> np.ndarray:
    """Anchors of one feature map level.

    Args:
        scales: anchor side length(s) in pixels (sqrt of the area); one per level in an FPN.
        ratios: width / height ratios, e.g. [0.5, 1, 2].
        shape: (fh, fw) of the feature map.
        feature_stride: image pixels per feature map cell; anchor centers are at multiples of it.
        anchor_stride: place anchors at every `anchor_stride`-th feature cell.

    Returns:
        [ceil(fh/as) * ceil(fw/as) * len(scales) * len(ratios), (y1, x1, y2, x2)] float64 pixel boxes,
        row-major over (y, x, scale/ratio).
    """
    scales = np.atleast_1d(np.asarray(scales, dtype=np.float64))
    ratios = np.asarray(ratios, dtype=np.float64).reshape(-1)
    scales_grid, ratios_grid = np.meshgrid(scales, ratios)
    heights = (scales_grid / np.sqrt(ratios_grid)).reshape(-1)  # [K]
    widths = (scales_grid * np.sqrt(ratios_grid)).reshape(-1)
    centers_y = np.arange(0, shape[0], anchor_stride) * feature_stride
    centers_x = np.arange(0, shape[1], anchor_stride) * feature_stride
    cy = np.broadcast_to(centers_y[:, None, None], (len(centers_y), len(centers_x), len(heights)))
    cx = np.broadcast_to(centers_x[None, :, None], cy.shape)
    hh = np.broadcast_to(heights[None, None, :] / 2, cy.shape)
    hw = np.broadcast_to(widths[None, None, :] / 2, cy.shape)
    return np.stack([cy - hh, cx - hw, cy + hh, cx + hw], axis=-1).reshape(-1, 4)


def generate_pyramid_anchors(
    scales: Sequence[float],
    ratios: Sequence[float],
    feature_shapes: np.ndarray,
    feature_strides: Sequence[int],
    anchor_stride: int,
) -> np.ndarray:
    """Anchors of all pyramid levels, concatenated level by level.

    Args:
        scales: one entry per level: an anchor scale (pixels) or a sequence of scales, all of which
            are placed at every position of that level (the C4 model's single level).
        ratios: width / height ratios shared by all levels.
        feature_shapes: [L, 2] (fh, fw) per level.
        feature_strides: [L] strides per level.
        anchor_stride: see `generate_anchors`.

    Returns:
        [A, (y1, x1, y2, x2)] float64 pixel anchors; inside a level row-major over (y, x, ratio),
        matching a reshape of the RPN output [B, fh, fw, R*k] to [B, fh*fw*R, k].

    Raises:
        ValueError: if the number of scales, shapes and strides differ.
    """
    feature_shapes = np.asarray(feature_shapes)
    if not (len(scales) == len(feature_shapes) == len(feature_strides)):
        raise ValueError(
            f"need one scale, feature shape and stride per level; got {len(scales)} scales, "
            f"{len(feature_shapes)} shapes, {len(feature_strides)} strides"
        )
    return np.concatenate(
        [
            generate_anchors(scale, ratios, shape, stride, anchor_stride)
            for scale, shape, stride in zip(scales, feature_shapes, feature_strides)
        ],
        axis=0,
    )


def anchor_scales_per_level(config: Any) -> list:
    """RPN_ANCHOR_SCALES grouped per feature level for `generate_pyramid_anchors`.

    FPN (BACKBONE_TYPE "fpn", the default): one scale per level of BACKBONE_STRIDES. C4: every
    scale on the single C4 level, e.g. [(32, 64, 128, 256, 512)].
    """
    if getattr(config, "BACKBONE_TYPE", "fpn") == "c4":
        return [tuple(config.RPN_ANCHOR_SCALES)]
    return list(config.RPN_ANCHOR_SCALES)


def rpn_anchors_per_location(config: Any) -> int:
    """Anchors per feature-map position: len(RPN_ANCHOR_RATIOS), times len(RPN_ANCHOR_SCALES) for C4."""
    scales = anchor_scales_per_level(config)[0]
    return len(np.atleast_1d(scales)) * len(config.RPN_ANCHOR_RATIOS)


def generate_config_anchors(config: Any, image_shape: Sequence[int]) -> np.ndarray:
    """The RPN's anchors for a molded image shape under `config` (FPN or C4).

    Args:
        config: a `Config` (BACKBONE_STRIDES, RPN_ANCHOR_SCALES/RATIOS/STRIDE, BACKBONE_TYPE).
        image_shape: (H, W, ...) of the molded input image.

    Returns:
        [A, (y1, x1, y2, x2)] float64 pixel anchors in the RPN's output order (level by level;
        inside a level row-major over (y, x, anchor); for C4 the anchors of a position are
        ratio-major over (ratio, scale)).
    """
    return generate_pyramid_anchors(anchor_scales_per_level(config), config.RPN_ANCHOR_RATIOS,
                                    compute_backbone_shapes(config, image_shape), config.BACKBONE_STRIDES,
                                    config.RPN_ANCHOR_STRIDE)


def compute_backbone_shapes(config: Any, image_shape: Sequence[int]) -> np.ndarray:
    """Feature map sizes of the backbone levels for an input image shape.

    Args:
        config: a `Config`; a callable BACKBONE uses its COMPUTE_BACKBONE_SHAPE.
        image_shape: (H, W, ...) of the molded input image.

    Returns:
        [L, 2] int array of (ceil(H / stride), ceil(W / stride)) per BACKBONE_STRIDES entry.
    """
    if callable(config.BACKBONE):
        return np.asarray(config.COMPUTE_BACKBONE_SHAPE(image_shape))
    height, width = int(image_shape[0]), int(image_shape[1])
    return np.array(
        [[int(math.ceil(height / stride)), int(math.ceil(width / stride))] for stride in config.BACKBONE_STRIDES]
    )


# ------------------------------------------------------------------------------------------------
# Molding and image meta
def mold_image(images: np.ndarray, config: Any) -> np.ndarray:
    """RGB uint8 image(s) [..., H, W, 3] -> float32 with config.MEAN_PIXEL subtracted."""
    return np.asarray(images).astype(np.float32) - np.asarray(config.MEAN_PIXEL, dtype=np.float32)


def unmold_image(normalized_images: np.ndarray, config: Any) -> np.ndarray:
    """Inverse of `mold_image`: adds MEAN_PIXEL back, rounds and clips to uint8."""
    values = np.asarray(normalized_images, dtype=np.float32) + np.asarray(config.MEAN_PIXEL, dtype=np.float32)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def compose_image_meta(
    image_id: int,
    original_image_shape: Sequence[int],
    image_shape: Sequence[int],
    window: Sequence[float],
    scale: float,
    active_class_ids: Sequence[int],
) -> np.ndarray:
    """Packs per-image attributes into one float32 vector (matterport layout).

    Args:
        image_id: internal image id.
        original_image_shape: (H, W, C) before resizing.
        image_shape: (H, W, C) after resizing and padding.
        window: (y1, x1, y2, x2) pixel box of the real image inside the padded one.
        scale: resize factor applied to the original image.
        active_class_ids: [NUM_CLASSES] 1 for classes of the image's source dataset, else 0.

    Returns:
        [1 + 3 + 3 + 4 + 1 + NUM_CLASSES] float32.
    """
    if len(original_image_shape) != 3 or len(image_shape) != 3 or len(window) != 4:
        raise ValueError(
            f"original_image_shape and image_shape must have 3 entries and window 4; got "
            f"{tuple(original_image_shape)}, {tuple(image_shape)}, {tuple(window)}"
        )
    return np.array(
        [image_id, *original_image_shape, *image_shape, *window, scale, *active_class_ids], dtype=np.float32
    )


def parse_image_meta(meta: np.ndarray) -> dict[str, np.ndarray]:
    """Unpacks vectors made by `compose_image_meta`.

    Args:
        meta: [B, META] (or a single [META]) float.

    Returns:
        dict with image_id [B] int32, original_image_shape [B, 3] int32, image_shape [B, 3] int32,
        window [B, 4] int32 pixels, scale [B] float32, active_class_ids [B, NUM_CLASSES] int32
        (without the B axis for a 1-D input).
    """
    meta = np.asarray(meta)
    if meta.ndim not in (1, 2) or meta.shape[-1] < 13:
        raise ValueError(f"meta must be [B, META] with META >= 13, got shape {meta.shape}")
    return {
        "image_id": np.rint(meta[..., 0]).astype(np.int32),
        "original_image_shape": np.rint(meta[..., 1:4]).astype(np.int32),
        "image_shape": np.rint(meta[..., 4:7]).astype(np.int32),
        "window": np.rint(meta[..., 7:11]).astype(np.int32),
        "scale": meta[..., 11].astype(np.float32),
        "active_class_ids": np.rint(meta[..., 12:]).astype(np.int32),
    }


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The `warnings.warn` stacklevel that points at the first caller outside this package.

    Call it in the function that warns. A fixed stacklevel is right for one call path only:
    `detect` -> `mold_inputs` -> check differs in depth from `detect(tta=...)` or `detect_tiled`,
    and a warning that names a line inside mrcnn tells the user nothing.
    """
    frame, level = sys._getframe(1), 1  # the warning function itself is stacklevel 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def progress(items: Iterable, verbose: int, description: str, unit: str) -> Iterable:
    """`items`, wrapped in a tqdm progress bar when `verbose` (tqdm is imported only then)."""
    if not verbose:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit=unit)
