"""RoIAlign (He et al., Mask R-CNN, Fig. 3): compiled TensorFlow op with a pure-TF fallback.

`roi_align` is the one entry point. It runs the compiled op `RoiAlign` from
`mrcnn/ops/_lib/_roi_align_ops.so` (built by `custom_ops/build.py`) when that library loads, and
otherwise a vectorized pure-TF implementation that gives the same numbers (up to float rounding)
and the same gradient. The first call decides, and a failed load warns once.

`MRCNN_ROI_ALIGN=op` forces the compiled op (an error if it cannot be loaded), `MRCNN_ROI_ALIGN=tf`
forces the fallback; unset (or `auto`) prefers the op. `active_implementation()` says which path
`roi_align` takes now. `MRCNN_ROI_ALIGN_LIBRARY=/path/to/lib.so` loads another build (read at import).

Semantics (the contract in ARCHITECTURE.md, identical to detectron2 / torchvision RoIAlign after the
NCHW -> NHWC and (x1, y1, x2, y2) -> (y1, x1, y2, x2) conversion), per box k and axis y (x alike):

    offset    = 0.5 if aligned else 0
    start     = y1 * spatial_scale - offset
    roi_h     = y2 * spatial_scale - offset - start     (aligned=False: max(roi_h, 1))
    bin_h     = roi_h / ph
    grid_h    = sampling_ratio if sampling_ratio > 0 else ceil(roi_h / ph)
    sample y  = start + p * bin_h + (iy + 0.5) * bin_h / grid_h,   p < ph, iy < grid_h
    out[k, p, q, c] = sum over the grid_h x grid_w samples of bilinear(features[b_k], y, x, c)
                      / max(grid_h * grid_w, 1)

A sample with y < -1 or y > H (or x < -1 or x > W) contributes 0; otherwise y is clamped to
[0, H - 1] and interpolated bilinearly between rows floor(y) and floor(y) + 1 (the last row alone at
the border). Feature pixel i covers [i, i + 1) in feature coordinates, with its value at i (+0.5 in
input-pixel terms when aligned).
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = [
    "roi_align",
    "roi_align_tf",
    "roi_align_op",
    "active_implementation",
    "load_op_library",
    "op_load_error",
    "LIBRARY_PATH",
    "ENV_VAR",
]

ENV_VAR = "MRCNN_ROI_ALIGN"
# MRCNN_ROI_ALIGN_LIBRARY points at another build of the library (or at nothing, to test the fallback).
LIBRARY_PATH = Path(os.environ.get("MRCNN_ROI_ALIGN_LIBRARY")
                    or Path(__file__).resolve().parent / "_lib" / "_roi_align_ops.so")
BUILD_INFO_PATH = LIBRARY_PATH.parent / "build_info.json"

# Feature dtypes computed as they are: float32/float64 by both paths; bfloat16 by the compiled op,
# which reads and writes bfloat16 and computes in float32 with float32 boxes (skipping two casts
# per call: the feature maps up, the pooled output down). The rest (float16; bfloat16 in the
# pure-TF fallback) is cast to float32 and back. Boxes are never half precision (0.5 px steps at
# 1024 px).
_FALLBACK_DTYPES = (tf.float32, tf.float64)
_OP_DTYPES = (tf.float32, tf.float64, tf.bfloat16)
_FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


# ----------------------------------------------------------------------------------------------
# Argument checking shared by both paths
# ----------------------------------------------------------------------------------------------
def _pooled_size(output_size: Any) -> tuple[int, int]:
    """Returns (ph, pw) from an int or a pair, each >= 1."""
    if isinstance(output_size, int):
        size = (output_size, output_size)
    else:
        try:
            size = tuple(int(v) for v in output_size)
        except TypeError as error:
            raise TypeError(f"roi_align: output_size must be an int or (ph, pw), got {output_size!r}") from error
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"roi_align: output_size must be (ph, pw) with both >= 1, got {output_size!r}")
    return size[0], size[1]


def _float32_attr(value: float) -> float:
    """spatial_scale rounded to float32, as the op stores it in a float attribute.

    Rounding in the fallback too keeps both paths on the same numbers (1/3 differs otherwise).
    """
    value = float(value)
    if not value > 0.0 or value == float("inf"):
        raise ValueError(f"roi_align: spatial_scale must be a finite number > 0, got {value!r}")
    return float(np.float32(value))


def _check_inputs(features: tf.Tensor, boxes: tf.Tensor, box_indices: tf.Tensor) -> None:
    """Static shape and dtype checks; dynamic ones happen in the kernels / gathers."""
    if features.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"roi_align: features must be float16/bfloat16/float32/float64, got {features.dtype.name}")
    if features.shape.rank is not None and features.shape.rank != 4:
        raise ValueError(f"roi_align: features must be [N, H, W, C] (NHWC), got shape {features.shape}")
    if boxes.shape.rank is not None and (boxes.shape.rank != 2 or boxes.shape[-1] not in (None, 4)):
        raise ValueError(f"roi_align: boxes must be [K, 4] (y1, x1, y2, x2), got shape {boxes.shape}")
    if box_indices.shape.rank is not None and box_indices.shape.rank != 1:
        raise ValueError(f"roi_align: box_indices must be [K], got shape {box_indices.shape}")
    k_boxes, k_indices = boxes.shape[0] if boxes.shape.rank else None, (
        box_indices.shape[0] if box_indices.shape.rank else None)
    if k_boxes is not None and k_indices is not None and k_boxes != k_indices:
        raise ValueError(f"roi_align: boxes has {k_boxes} rows but box_indices has {k_indices} entries")
    if not box_indices.dtype.is_integer:
        raise TypeError(f"roi_align: box_indices must be an integer tensor, got {box_indices.dtype.name}")


# ----------------------------------------------------------------------------------------------
# Pure-TF fallback
# ----------------------------------------------------------------------------------------------
def _axis_taps(start: tf.Tensor, roi_size: tf.Tensor, grid: tf.Tensor, max_grid: tf.Tensor | int,
               pooled: int, size: tf.Tensor, dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
    """Interpolation taps of all samples along one axis.

    Bilinear interpolation and the "outside [-1, size] contributes 0" rule are both separable, so
    a sample's weight at pixel (y, x) is wy(y) * wx(x). This computes the per-axis factors.

    Args:
        start: [K] first feature coordinate of each RoI along the axis.
        roi_size: [K] RoI length along the axis, in feature pixels.
        grid: [K] int32 samples per bin along the axis for each box.
        max_grid: G = max(grid) (python int when sampling_ratio > 0, else a scalar tensor).
        pooled: number of bins along the axis.
        size: scalar int32 feature-map length along the axis (H or W).
        dtype: float dtype of the computation.

    Returns:
        index: [K, pooled, 2G] int32 pixel index of the low/high tap of each sample.
        weight: [K, pooled, 2G] interpolation weight, 0 for samples outside the map and for grid
            positions beyond the box's own grid (adaptive sampling pads to the largest grid).
    """
    bin_size = roi_size / pooled
    grid_f = tf.cast(grid, dtype)
    bins = tf.range(pooled, dtype=dtype)
    steps = tf.range(max_grid, dtype=dtype)
    # Same operation order as the C++ kernel: float32 results agree bitwise when run op by op.
    pos = ((start[:, None, None] + bins[None, :, None] * bin_size[:, None, None])
           + (steps[None, None, :] + 0.5) * bin_size[:, None, None] / grid_f[:, None, None])
    size_f = tf.cast(size, dtype)
    inside = (pos >= -1.0) & (pos <= size_f) & (size > 0)
    in_grid = tf.range(max_grid)[None, None, :] < grid[:, None, None]
    # Clamp before the integer cast: far-away (invalid) samples must not overflow int32, and NaN
    # coordinates are replaced so that the gather index stays valid (their weight is 0 anyway).
    pos = tf.where(inside, tf.clip_by_value(pos, 0.0, tf.maximum(size_f - 1.0, 0.0)), tf.zeros_like(pos))
    low = tf.cast(pos, tf.int32)  # pos >= 0: truncation == floor
    at_border = low >= size - 1
    low = tf.where(at_border, tf.maximum(size - 1, 0), low)
    high = tf.where(at_border, low, low + 1)
    frac = tf.where(at_border, tf.zeros_like(pos), pos - tf.cast(low, dtype))
    keep = tf.cast(inside & in_grid, dtype)
    index = tf.stack([low, high], axis=-1)                                # [K, pooled, G, 2]
    weight = tf.stack([(1.0 - frac) * keep, frac * keep], axis=-1)
    # Explicit last dimension: inferring -1 on an empty box list divides by zero (SIGFPE in
    # Grappler's constant folding when K is a static 0).
    shape = tf.stack([tf.shape(start)[0], pooled, 2 * tf.cast(max_grid, tf.int32)])
    return tf.reshape(index, shape), tf.reshape(weight, shape)


def _taps(features_shape: tf.Tensor, boxes: tf.Tensor, box_indices: tf.Tensor, ph: int, pw: int,
          spatial_scale: float, sampling_ratio: int, aligned: bool, dtype: tf.DType,
          average: bool = True):
    """Flat gather indices and weights of all taps (2 per sample and axis).

    Sample (iy, ix) of bin (p, q) of box k has taps a = 2 * iy + {0, 1} along y and
    b = 2 * ix + {0, 1} along x; its bilinear value is sum_ab wy[k,p,a] wx[k,q,b] f[base + iy + ix].
    Also used by mrcnn.ops.roi_pooling (max over samples, average=False).

    Returns:
        base: [K] int32 flat pixel index of row 0, column 0 of each box's image.
        iy, wy: [K, ph, 2G] row indices (times W) and row weights (times 1 / count if average).
        ix, wx: [K, pw, 2G'] column indices and weights.
        grid_h, grid_w: [K] int32 samples per bin of each box (taps beyond it have weight 0).
    """
    height, width = features_shape[1], features_shape[2]
    offset = 0.5 if aligned else 0.0
    scaled = boxes * tf.cast(spatial_scale, dtype)
    y1, x1 = scaled[:, 0] - offset, scaled[:, 1] - offset
    roi_h, roi_w = (scaled[:, 2] - offset) - y1, (scaled[:, 3] - offset) - x1
    if not aligned:  # legacy (matterport / Detectron1): RoIs are at least 1x1 feature pixel
        roi_h, roi_w = tf.maximum(roi_h, 1.0), tf.maximum(roi_w, 1.0)
    num_boxes = tf.shape(boxes)[0]
    if sampling_ratio > 0:
        grid_h = tf.fill([num_boxes], sampling_ratio)
        grid_w = grid_h
        max_h = max_w = sampling_ratio
    else:  # adaptive: ceil(roi / pooled) per box; pad every box to the largest grid, mask the rest
        grid_h = tf.cast(tf.math.ceil(roi_h / ph), tf.int32)
        grid_w = tf.cast(tf.math.ceil(roi_w / pw), tf.int32)
        max_h = tf.maximum(tf.reduce_max(tf.concat([grid_h, [0]], 0)), 0)
        max_w = tf.maximum(tf.reduce_max(tf.concat([grid_w, [0]], 0)), 0)
    count = tf.cast(tf.maximum(grid_h * grid_w, 1), dtype)
    iy, wy = _axis_taps(y1, roi_h, grid_h, max_h, ph, height, dtype)
    ix, wx = _axis_taps(x1, roi_w, grid_w, max_w, pw, width, dtype)
    # Multiply by the reciprocal (not divide): the C++ kernels do the same, so float32 matches bitwise.
    if average:
        wy = wy * (1.0 / count)[:, None, None]
    base = tf.cast(box_indices, tf.int32) * (height * width)
    return base, iy * width, wy, ix, wx, grid_h, grid_w


def _tap_loop(num_a, num_b, body, init):
    """Runs body(a, b, acc) for all a < num_a, b < num_b, one tap pair at a time.

    A sequential loop keeps the peak memory at one [K, ph, pw, C] gather instead of all 4 * s * s.
    """
    total = num_a * num_b
    # With an empty box list the tap counts can be static zeros; Grappler then constant-folds
    # t // 0 and the process dies of SIGFPE. total is 0 then, so the divisor's value is moot.
    divisor = tf.maximum(num_b, 1)

    def step(t, acc):
        return t + 1, body(t // divisor, t % divisor, acc)

    _, acc = tf.while_loop(lambda t, _: t < total, step, (tf.constant(0), init), parallel_iterations=1)
    return acc


def _roi_align_tf_core(features, boxes, box_indices, ph, pw, spatial_scale, sampling_ratio, aligned):
    """Fallback for float32/float64 features; gradient to features only (custom, segment sums)."""
    dtype = features.dtype
    channels = features.shape[-1]
    fshape = tf.shape(features)
    # No gradient to the boxes (the paper's approximation). The custom gradient below already
    # returns none, but a persistent tape differentiating the traced function would otherwise
    # reach the box-dependent tap weights around it.
    boxes = tf.stop_gradient(boxes)
    _check_box_indices = tf.debugging.assert_less(
        tf.cast(box_indices, tf.int32), fshape[0],
        message="roi_align: box_indices out of range [0, N) of the batch")
    with tf.control_dependencies([_check_box_indices, tf.debugging.assert_non_negative(
            box_indices, message="roi_align: box_indices must be >= 0")]):
        base, iy, wy, ix, wx, _, _ = _taps(fshape, boxes, box_indices, ph, pw, spatial_scale,
                                           sampling_ratio, aligned, dtype)
    num_a, num_b = tf.shape(iy)[2], tf.shape(ix)[2]
    num_boxes = tf.shape(boxes)[0]
    out_shape = tf.stack([num_boxes, ph, pw, fshape[3]])

    def tap(a, b):
        index = base[:, None, None] + iy[:, :, a][:, :, None] + ix[:, :, b][:, None, :]   # [K, ph, pw]
        weight = wy[:, :, a][:, :, None] * wx[:, :, b][:, None, :]
        return index, weight[..., None]

    @tf.custom_gradient
    def forward(flat):
        def body(a, b, acc):
            index, weight = tap(a, b)
            return acc + weight * tf.gather(flat, index)

        out = _tap_loop(num_a, num_b, body, tf.zeros(out_shape, dtype))

        def grad(upstream):
            # One segment sum per row tap a over all its column taps b at once: TF's CPU scatter
            # ops are single-threaded and costly per call, so fewer, larger calls are ~1.6x faster
            # than one per (a, b); memory stays at 2G x [K, ph, pw, C] (4x for sampling_ratio 2).
            num_pixels = tf.shape(flat)[0]

            def back(a, acc):
                index = (base[:, None, None, None] + iy[:, :, a][:, :, None, None]
                         + ix[:, None, :, :])                                       # [K, ph, pw, B]
                weight = wy[:, :, a][:, :, None, None] * wx[:, None, :, :]
                updates = weight[..., None] * upstream[:, :, :, None, :]           # [K, ph, pw, B, C]
                return a + 1, acc + tf.math.unsorted_segment_sum(
                    tf.reshape(updates, tf.stack([-1, fshape[3]])), tf.reshape(index, [-1]), num_pixels)

            _, grad_flat = tf.while_loop(lambda a, _: a < num_a, back, (tf.constant(0), tf.zeros_like(flat)),
                                         parallel_iterations=1)
            return grad_flat

        return out, grad

    out = forward(tf.reshape(features, tf.stack([-1, fshape[3]])))
    return tf.ensure_shape(out, [boxes.shape[0] if boxes.shape.rank else None, ph, pw, channels])


# Traced once per (dtype, output size, scale, sampling, aligned) and generalized over shapes.
_roi_align_tf_traced = tf.function(_roi_align_tf_core, reduce_retracing=True, autograph=False)


@tf.autograph.experimental.do_not_convert
def _prepare_inputs(features, boxes, box_indices, output_size, native_dtypes=_FALLBACK_DTYPES):
    """Converts, checks and picks the dtypes: features stay in `native_dtypes`, others become
    float32; boxes take float64 with float64 features, float32 otherwise."""
    features = tf.convert_to_tensor(features)
    boxes = tf.convert_to_tensor(boxes)
    box_indices = tf.convert_to_tensor(box_indices)
    _check_inputs(features, boxes, box_indices)
    ph, pw = _pooled_size(output_size)
    compute = features.dtype if features.dtype in native_dtypes else tf.float32
    box_dtype = tf.float64 if compute == tf.float64 else tf.float32
    # Gradients go to the features only (as roi_align's); autodiff would also reach the boxes.
    boxes = tf.stop_gradient(tf.cast(boxes, box_dtype))
    return (tf.cast(features, compute), boxes, tf.cast(box_indices, tf.int32),
            ph, pw, features.dtype)


def handles_empty_boxes(pooler: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
    """Returns [0, ph, pw, C] at once for a box list that is statically empty.

    With a static K of 0 (an eager call on an empty box list) Grappler constant-folds the tap
    arithmetic of the traced fallback with zero-sized dimensions and the process dies of SIGFPE;
    inside the model K is dynamic and the normal path handles it.
    """

    @functools.wraps(pooler)
    def wrapper(features, boxes, box_indices, output_size, *args, **kwargs):
        boxes = tf.convert_to_tensor(boxes)
        if boxes.shape.rank == 2 and boxes.shape[0] == 0:
            features = tf.convert_to_tensor(features)
            _check_inputs(features, boxes, tf.convert_to_tensor(box_indices))
            ph, pw = _pooled_size(output_size)
            # A zero-length slice of the features, so that the gradient to them exists (zeros).
            return tf.reshape(tf.reshape(features, [-1])[:0], tf.stack([0, ph, pw, tf.shape(features)[3]]))
        return pooler(features, boxes, box_indices, output_size, *args, **kwargs)

    return wrapper


@handles_empty_boxes
def roi_align_tf(features, boxes, box_indices, output_size, spatial_scale: float,
                 sampling_ratio: int = 2, aligned: bool = True) -> tf.Tensor:
    """Pure-TF RoIAlign (the fallback). Same arguments and result as `roi_align`.

    Vectorized over boxes and bins: for each of the 4 * grid_h * grid_w taps of a bin it gathers
    [K, ph, pw, C] feature vectors and accumulates them weighted, in a loop over the taps. The
    gradient (to features only) scatter-adds the same weights; boxes and box_indices get None.
    float16/bfloat16 are computed in float32 and cast back.
    """
    features, boxes, box_indices, ph, pw, in_dtype = _prepare_inputs(features, boxes, box_indices, output_size)
    # Eagerly, run the core as a traced function: its tap loop is ~200 small ops, which cost
    # ~50 ms per call one by one; inside a graph it is inlined as is.
    core = _roi_align_tf_traced if tf.executing_eagerly() else _roi_align_tf_core
    out = core(features, boxes, box_indices, ph, pw, _float32_attr(spatial_scale), int(sampling_ratio),
               bool(aligned))
    return tf.cast(out, in_dtype)


# ----------------------------------------------------------------------------------------------
# Compiled op: loading, gradient, dispatch
# ----------------------------------------------------------------------------------------------
_lock = threading.Lock()
_library: Any = None
_load_error: str | None = None
_load_attempted = False
_warned = False


def _tf_version_mismatch() -> str | None:
    """Returns a message when the library was built against another TF version."""
    import json

    if not BUILD_INFO_PATH.is_file():
        return None
    try:
        info = json.loads(BUILD_INFO_PATH.read_text())
    except (OSError, ValueError) as error:
        return f"cannot read {BUILD_INFO_PATH}: {error}"
    built = info.get("tf_version")
    if built and built != tf.__version__:
        return (f"{LIBRARY_PATH.name} was built for TensorFlow {built} but {tf.__version__} is running; "
                f"rebuild it with `make ops` or `python custom_ops/build.py --force`")
    return None


@tf.autograph.experimental.do_not_convert
def load_op_library() -> Any:
    """Loads the compiled op library once; returns the module or None (reason in op_load_error())."""
    global _library, _load_error, _load_attempted
    with _lock:
        if _load_attempted:
            return _library
        _load_attempted = True
        if not LIBRARY_PATH.is_file():
            _load_error = (f"{LIBRARY_PATH} not found; build it with `make ops` or "
                           f"`python custom_ops/build.py`")
            return None
        mismatch = _tf_version_mismatch()
        if mismatch:
            _load_error = mismatch
            return None
        try:
            _library = tf.load_op_library(str(LIBRARY_PATH))
        except (tf.errors.OpError, OSError) as error:  # undefined symbols, ABI, duplicate ops
            _load_error = f"loading {LIBRARY_PATH} failed: {error}"
            _library = None
        return _library


def op_load_error() -> str | None:
    """Why the compiled op is unavailable (None when it loaded or was not tried yet)."""
    return _load_error


def _requested() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in ("auto", "op", "tf"):
        raise ValueError(f"{ENV_VAR} must be 'op', 'tf' or 'auto', got {value!r}")
    return value


@tf.autograph.experimental.do_not_convert
def active_implementation() -> str:
    """Which path `roi_align` takes now: "op" (compiled) or "tf" (fallback).

    Raises:
        RuntimeError: MRCNN_ROI_ALIGN=op but the library cannot be loaded.
    """
    global _warned
    requested = _requested()
    if requested == "tf":
        return "tf"
    if load_op_library() is not None:
        return "op"
    if requested == "op":
        raise RuntimeError(f"{ENV_VAR}=op but the RoIAlign op is unavailable: {_load_error}")
    if not _warned:
        _warned = True
        warnings.warn(f"mrcnn: compiled RoIAlign op unavailable ({_load_error}); using the pure-TF "
                      f"fallback (same numbers, slower)", RuntimeWarning, stacklevel=3)
    return "tf"


@tf.autograph.experimental.do_not_convert
def roi_align_op(features, boxes, box_indices, output_size, spatial_scale: float,
                 sampling_ratio: int = 2, aligned: bool = True) -> tf.Tensor:
    """RoIAlign through the compiled op (raises RuntimeError if the library is unavailable).

    Same arguments and result as `roi_align`. bfloat16 runs as it is (float32 sums inside, one
    rounding per output); float16 is cast to float32 around the op.
    """
    library = load_op_library()
    if library is None:
        raise RuntimeError(f"RoIAlign op unavailable: {_load_error}")
    features, boxes, box_indices, ph, pw, in_dtype = _prepare_inputs(features, boxes, box_indices, output_size,
                                                                     native_dtypes=_OP_DTYPES)
    out = library.roi_align(features, boxes, box_indices, pooled_height=ph, pooled_width=pw,
                            spatial_scale=_float32_attr(spatial_scale), sampling_ratio=int(sampling_ratio),
                            aligned=bool(aligned))
    return tf.cast(out, in_dtype)


def _roi_align_grad(op: tf.Operation, grad: tf.Tensor):
    """Gradient of RoiAlign: to features only (boxes and box_indices get None), as in the paper."""
    library = load_op_library()
    if library is None:  # a graph with RoiAlign can only exist if the library was loaded
        raise RuntimeError(f"RoIAlign op unavailable for its gradient: {_load_error}")
    features, boxes, box_indices = op.inputs
    grad_features = library.roi_align_grad(
        grad, boxes, box_indices, tf.shape(features, out_type=tf.int32),
        pooled_height=op.get_attr("pooled_height"), pooled_width=op.get_attr("pooled_width"),
        spatial_scale=op.get_attr("spatial_scale"), sampling_ratio=op.get_attr("sampling_ratio"),
        aligned=op.get_attr("aligned"))
    return grad_features, None, None


try:
    tf.RegisterGradient("RoiAlign")(_roi_align_grad)
except KeyError:  # module re-imported (importlib.reload): the first registration stays valid
    pass


@tf.autograph.experimental.do_not_convert
@handles_empty_boxes
def roi_align(features, boxes, box_indices, output_size, spatial_scale: float,
              sampling_ratio: int = 2, aligned: bool = True, *, implementation: str | None = None
              ) -> tf.Tensor:
    """RoIAlign: crops every box from its image's feature map into a fixed [ph, pw] grid.

    Args:
        features: [N, H, W, C] float16/bfloat16/float32/float64 feature maps, NHWC.
        boxes: [K, 4] (y1, x1, y2, x2) in INPUT-IMAGE pixel coordinates (not normalized).
        box_indices: [K] int32, the image of the batch each box belongs to, in [0, N).
        output_size: ph (int) or (ph, pw), bins per RoI.
        spatial_scale: feature-map size / input-image size, e.g. 1/4 for FPN P2.
        sampling_ratio: bilinear samples per bin along each axis; <= 0 means adaptive,
            ceil(roi_size / output_size) per box (detectron2 / torchvision semantics).
        aligned: True shifts box coordinates by -0.5 feature pixel (pixel-centre model,
            detectron2 ROIAlignV2); False is the original op (RoI at least 1x1).
        implementation: None (MRCNN_ROI_ALIGN or auto), "op" or "tf" to force a path.

    Returns:
        [K, ph, pw, C] pooled features, dtype of `features`. K may be 0.

    Raises:
        ValueError / TypeError: bad shapes, dtypes or sizes (statically known ones).
        tf.errors.InvalidArgumentError: box_indices out of range (at run time).
    """
    if implementation is None:
        implementation = active_implementation()
    if implementation == "op":
        return roi_align_op(features, boxes, box_indices, output_size, spatial_scale, sampling_ratio, aligned)
    if implementation == "tf":
        return roi_align_tf(features, boxes, box_indices, output_size, spatial_scale, sampling_ratio, aligned)
    raise ValueError(f"roi_align: implementation must be 'op', 'tf' or None, got {implementation!r}")
