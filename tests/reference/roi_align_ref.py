"""Slow NumPy RoIAlign written from the definition (Mask R-CNN paper Fig. 3, detectron2 semantics).

The test oracle for mrcnn.ops.roi_align: plain Python loops over boxes, bins, samples and the
four interpolation neighbours, no vectorization, nothing shared with the TF / C++ code.
Everything is computed in float64 whatever the input dtype.
"""

from __future__ import annotations

import math

import numpy as np


def bilinear(image: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear sample of image [H, W, C] at (y, x) in feature-pixel coordinates.

    Pixel (i, j) holds its value at integer coordinates (i, j). A point more than one pixel outside
    the map (y < -1, y > H, x < -1 or x > W) gives 0; one less far out is clamped to the border.
    """
    height, width = image.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(image.shape[2], np.float64)
    y = min(max(y, 0.0), height - 1.0)
    x = min(max(x, 0.0), width - 1.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    dy, dx = y - y0, x - x0
    return ((1 - dy) * (1 - dx) * image[y0, x0] + (1 - dy) * dx * image[y0, x1]
            + dy * (1 - dx) * image[y1, x0] + dy * dx * image[y1, x1])


def roi_align_ref(features, boxes, box_indices, output_size, spatial_scale, sampling_ratio=2,
                  aligned=True, reduce="avg"):
    """RoIAlign by loops.

    Args:
        features: [N, H, W, C] NHWC.
        boxes: [K, 4] (y1, x1, y2, x2) in input pixels (multiplied by spatial_scale).
        box_indices: [K] image index per box.
        output_size: (ph, pw).
        spatial_scale: feature size / input size.
        sampling_ratio: samples per bin per axis; <= 0: ceil(roi_size / bins) per box.
        aligned: shift the scaled box by -0.5 (pixel-centre model); False: RoI at least 1x1.
        reduce: "avg" (RoIAlign) or "max" (max over a bin's samples, for the ablation pooler).

    Returns:
        [K, ph, pw, C] float64.
    """
    features = np.asarray(features, np.float64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ph, pw = output_size
    out = np.zeros((len(boxes), ph, pw, features.shape[3]), np.float64)
    offset = 0.5 if aligned else 0.0
    for k, (by1, bx1, by2, bx2) in enumerate(boxes):
        image = features[int(box_indices[k])]
        top, left = by1 * spatial_scale - offset, bx1 * spatial_scale - offset
        height = by2 * spatial_scale - offset - top
        width = bx2 * spatial_scale - offset - left
        if not aligned:
            height, width = max(height, 1.0), max(width, 1.0)
        bin_h, bin_w = height / ph, width / pw
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(height / ph)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(width / pw)
        for p in range(ph):
            for q in range(pw):
                samples = []
                for iy in range(grid_h):
                    y = top + p * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = left + q * bin_w + (ix + 0.5) * bin_w / grid_w
                        samples.append(bilinear(image, y, x))
                if not samples:
                    continue  # empty grid (adaptive sampling of a zero/negative-size box): 0
                if reduce == "avg":
                    out[k, p, q] = np.sum(samples, axis=0) / max(grid_h * grid_w, 1)
                elif reduce == "max":
                    out[k, p, q] = np.max(samples, axis=0)
                else:
                    raise ValueError(f"reduce must be 'avg' or 'max', got {reduce!r}")
    return out


def roi_align_grad_ref(grad, features_shape, boxes, box_indices, output_size, spatial_scale,
                       sampling_ratio=2, aligned=True):
    """d(sum(grad * roi_align_ref(f)))/df by finite structure: RoIAlign is linear in the features.

    Builds the gradient column by column from one-hot feature maps (slow; only for tiny maps).
    """
    n, h, w, c = features_shape
    grad = np.asarray(grad, np.float64)
    result = np.zeros(features_shape, np.float64)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                basis = np.zeros((n, h, w, 1))
                basis[b, i, j, 0] = 1.0
                response = roi_align_ref(basis, boxes, box_indices, output_size, spatial_scale,
                                         sampling_ratio, aligned)[..., 0]      # [K, ph, pw]
                result[b, i, j] = np.einsum("kpq,kpqc->c", response, grad)
    return result


def _c_round(value: float) -> float:
    """C round(): halves away from zero."""
    return math.copysign(math.floor(abs(value) + 0.5), value)


def roi_pool_ref(features, boxes, box_indices, output_size, spatial_scale):
    """Fast R-CNN RoIPool by loops (Caffe: rounded box, inclusive end, floor/ceil bins, max)."""
    features = np.asarray(features, np.float64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ph, pw = output_size
    n, height, width, channels = features.shape
    out = np.zeros((len(boxes), ph, pw, channels), np.float64)
    for k, box in enumerate(boxes):
        y1, x1, y2, x2 = (int(_c_round(v * spatial_scale)) for v in box)
        roi_h, roi_w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        for p in range(ph):
            top = min(max(math.floor(p * roi_h / ph) + y1, 0), height)
            bottom = min(max(math.ceil((p + 1) * roi_h / ph) + y1, 0), height)
            for q in range(pw):
                left = min(max(math.floor(q * roi_w / pw) + x1, 0), width)
                right = min(max(math.ceil((q + 1) * roi_w / pw) + x1, 0), width)
                if bottom > top and right > left:
                    window = features[int(box_indices[k]), top:bottom, left:right]
                    out[k, p, q] = window.reshape(-1, channels).max(axis=0)
    return out


def crop_and_resize_ref(features, normalized_boxes, box_indices, crop_size):
    """tf.image.crop_and_resize (bilinear, extrapolation 0) by loops, from its documented definition.

    Normalized coordinate v maps to v * (size - 1); crop_size points spaced corner to corner
    (the box centre when the crop size is 1); points outside [0, size - 1] give 0.
    """
    features = np.asarray(features, np.float64)
    ch, cw = crop_size
    n, height, width, channels = features.shape
    out = np.zeros((len(normalized_boxes), ch, cw, channels), np.float64)
    for k, (y1, x1, y2, x2) in enumerate(np.asarray(normalized_boxes, np.float64)):
        image = features[int(box_indices[k])]
        for i in range(ch):
            y = (y1 * (height - 1) + i * (y2 - y1) * (height - 1) / (ch - 1) if ch > 1
                 else 0.5 * (y1 + y2) * (height - 1))
            for j in range(cw):
                x = (x1 * (width - 1) + j * (x2 - x1) * (width - 1) / (cw - 1) if cw > 1
                     else 0.5 * (x1 + x2) * (width - 1))
                if y < 0 or y > height - 1 or x < 0 or x > width - 1:
                    continue
                y0, x0 = int(math.floor(y)), int(math.floor(x))
                yb, xb = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
                dy, dx = y - y0, x - x0
                top = image[y0, x0] + (image[y0, xb] - image[y0, x0]) * dx
                bottom = image[yb, x0] + (image[yb, xb] - image[yb, x0]) * dx
                out[k, i, j] = top + (bottom - top) * dy
    return out
