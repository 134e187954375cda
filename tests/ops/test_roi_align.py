"""Tests for mrcnn.ops.roi_align: compiled op and pure-TF fallback against a NumPy loop reference.

Every numeric test runs for each available implementation ("tf" always, "op" when the compiled
library loads), so the suite passes, and means something, with and without the .so.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.ops import roi_align as ra
from tests.reference.roi_align_ref import roi_align_grad_ref, roi_align_ref

REPO = Path(__file__).resolve().parents[2]
OP_AVAILABLE = ra.load_op_library() is not None
IMPLS = ["tf", pytest.param("op", marks=pytest.mark.skipif(
    not OP_AVAILABLE, reason=f"compiled RoIAlign op unavailable: {ra.op_load_error()}"))]
requires_op = pytest.mark.skipif(not OP_AVAILABLE,
                                 reason=f"compiled RoIAlign op unavailable: {ra.op_load_error()}")

SCALE = 0.25  # power of two: exact in float32, so op and fallback see the same attr
# [K, 4] (y1, x1, y2, x2) input pixels on a 2 x 9 x 11 map at scale 1/4 (input 36 x 44):
BOXES = np.array([
    [4.0, 4.0, 20.0, 30.0],      # inside
    [-8.0, -8.0, 10.0, 10.0],    # across the top-left border
    [20.0, 30.0, 52.0, 60.0],    # across the bottom-right border
    [50.0, 50.0, 70.0, 80.0],    # fully outside
    [-30.0, -30.0, -10.0, -6.0],  # fully outside, negative side
    [10.0, 13.0, 10.0, 13.0],    # zero size
    [10.0, 10.0, 10.0, 22.5],    # zero height
    [0.0, 0.0, 36.0, 44.0],      # the whole image
    [30.0, 30.0, 10.0, 12.0],    # inverted (negative size)
    [1.3, 2.7, 3.1, 4.9],        # sub-pixel (smaller than one feature pixel)
])
BOX_INDICES = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 0], np.int32)


def features(shape=(2, 9, 11, 3), seed=0, dtype=np.float64) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


# ------------------------------------------------------------------------------------------------
# Forward
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 0])
def test_forward_matches_reference(impl, dtype, aligned, sampling_ratio):
    f = features(dtype=dtype)
    got = ra.roi_align(f, BOXES.astype(dtype), BOX_INDICES, (3, 4), SCALE, sampling_ratio, aligned,
                       implementation=impl)
    assert got.shape == (len(BOXES), 3, 4, 3) and got.dtype == tf.as_dtype(dtype)
    want = roi_align_ref(f, BOXES, BOX_INDICES, (3, 4), SCALE, sampling_ratio, aligned)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(got.numpy(), want, rtol=tol, atol=tol)
    # Boxes fully outside give exactly 0; the inside box does not.
    assert np.all(got.numpy()[3:5] == 0) and np.any(got.numpy()[0] != 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_random_boxes_adaptive_and_rectangular_output(impl):
    rng = np.random.default_rng(1)
    f = features((3, 12, 7, 2), seed=2)
    corners = rng.uniform(-20, 70, size=(25, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
    indices = rng.integers(0, 3, size=25).astype(np.int32)
    for sampling_ratio, size in [(0, (2, 5)), (3, (5, 2))]:
        got = ra.roi_align(f, boxes, indices, size, 0.125 * 1.5, sampling_ratio, True, implementation=impl)
        want = roi_align_ref(f, boxes, indices, size, float(np.float32(0.1875)), sampling_ratio, True)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_box_list(impl):
    f = tf.constant(features())
    boxes = tf.zeros([0, 4], tf.float64)
    indices = tf.zeros([0], tf.int32)
    with tf.GradientTape() as tape:
        tape.watch(f)
        out = ra.roi_align(f, boxes, indices, 7, SCALE, implementation=impl)
        loss = tf.reduce_sum(out)
    assert out.shape == (0, 7, 7, 3)
    grad = tape.gradient(loss, f)
    assert grad is not None and np.all(grad.numpy() == 0)


# 5 x 5 map f[y, x] = 5 y + x, one channel, scale 1. Bilinear reproduces a linear map exactly, so
# these values follow from the sample positions alone (worked out by hand in the comments).
ARANGE = np.arange(25, dtype=np.float64).reshape(1, 5, 5, 1)
HAND_CASES = [
    # box, output, sampling_ratio, aligned, expected [ph, pw]
    # roi 4, bin 2, one sample at bin centre: y, x in {1, 3} -> 5y + x
    ((0, 0, 4, 4), (2, 2), 1, False, [[6, 8], [16, 18]]),
    # aligned: start -0.5, samples at 0.5, 2.5
    ((0, 0, 4, 4), (2, 2), 1, True, [[3, 5], [13, 15]]),
    # 2x2 samples per bin at -0.5 + {0.5, 1.5} (+2): their mean is the bin centre again
    ((0, 0, 4, 4), (2, 2), 2, True, [[3, 5], [13, 15]]),
    # adaptive: ceil(4 / 1) = 4 samples per axis at 0.5 .. 3.5, mean 2 -> 12
    ((0, 0, 4, 4), (1, 1), 0, False, [[12]]),
    # sample at 4.5 in [-1, 5]: clamped to the last pixel (4, 4) -> 24
    ((3, 3, 6, 6), (1, 1), 1, False, [[24]]),
    # sample at 7.25 > 5: outside -> 0
    ((6.5, 6.5, 8, 8), (1, 1), 1, False, [[0]]),
    # y = -1 exactly is still inside: clamped to row 0; x = 2 -> 2
    ((-2, 1, 0, 3), (1, 1), 1, False, [[2]]),
    # y = -1.25 < -1: outside -> 0
    ((-2.25, 1, -0.25, 3), (1, 1), 1, False, [[0]]),
    # zero-size aligned box, fixed grid: every sample at (1.5, 1.5) -> 9
    ((2, 2, 2, 2), (1, 1), 2, True, [[9]]),
    # zero-size aligned box, adaptive grid ceil(0) = 0 samples -> 0
    ((2, 2, 2, 2), (1, 1), 0, True, [[0]]),
    # zero-size box, aligned=False: roi forced to 1x1, sample at 2.5 -> 15
    ((2, 2, 2, 2), (1, 1), 1, False, [[15]]),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("box, size, sampling_ratio, aligned, expected", HAND_CASES)
def test_hand_worked_arange(impl, box, size, sampling_ratio, aligned, expected):
    got = ra.roi_align(ARANGE, np.array([box], np.float64), [0], size, 1.0, sampling_ratio, aligned,
                       implementation=impl)
    np.testing.assert_allclose(got.numpy()[0, ..., 0], np.array(expected, np.float64), atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_worked_nonlinear(impl):
    # f[y, x] = y^2: at y = 0.5 bilinear gives (0 + 1) / 2 = 0.5, not 0.25.
    square = (np.arange(5, dtype=np.float64)[:, None] ** 2 * np.ones(5)).reshape(1, 5, 5, 1)
    got = ra.roi_align(square, [[0.0, 0.0, 1.0, 1.0]], [0], 1, 1.0, 1, False, implementation=impl)
    assert got.numpy().item() == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_features(impl, dtype):
    f = features(dtype=np.float32)
    want = ra.roi_align(f, BOXES, BOX_INDICES, 2, SCALE, implementation=impl).numpy()
    got = ra.roi_align(tf.cast(f, dtype), BOXES, BOX_INDICES, 2, SCALE, implementation=impl)
    assert got.dtype == dtype
    tol = 2e-2 if dtype == tf.bfloat16 else 3e-3
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), want, atol=tol * 8, rtol=tol)


@requires_op
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_op_equals_fallback(dtype):
    f = features((2, 16, 13, 5), seed=3, dtype=dtype)
    rng = np.random.default_rng(4)
    corners = rng.uniform(-10, 80, size=(40, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1).astype(dtype)
    indices = rng.integers(0, 2, size=40).astype(np.int32)
    for sampling_ratio, aligned in [(2, True), (0, False), (1, True)]:
        args = (f, boxes, indices, (7, 7), SCALE, sampling_ratio, aligned)
        op = ra.roi_align(*args, implementation="op").numpy()
        fallback = ra.roi_align(*args, implementation="tf").numpy()
        # float32: same formula, but Grappler may reorder the fallback's arithmetic in a graph.
        tol = 2e-5 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(op, fallback, rtol=tol, atol=tol)


@requires_op
@pytest.mark.parametrize("channels", [16, 32, 37, 70])
def test_op_channel_blocks_match_reference(channels):
    """The CPU forward sums channels in register blocks (32 float32/bfloat16, 16 float64) and the
    remainder one by one: every split against the NumPy reference, and bfloat16 bit for bit as
    the float32 result rounded once."""
    f = features((2, 9, 11, channels), seed=21)
    for sampling_ratio, aligned in [(2, True), (0, False)]:
        args = (BOXES, BOX_INDICES, (3, 2), SCALE, sampling_ratio, aligned)
        reference = roi_align_ref(f, *args)
        np.testing.assert_allclose(ra.roi_align(f, *args, implementation="op").numpy(), reference,
                                   rtol=1e-12, atol=1e-12)
        single = ra.roi_align(f.astype(np.float32), *args, implementation="op").numpy()
        np.testing.assert_allclose(single, reference, rtol=1e-5, atol=1e-5)
        fallback = ra.roi_align(f.astype(np.float32), *args, implementation="tf").numpy()
        np.testing.assert_allclose(single, fallback, rtol=2e-5, atol=2e-5)  # as test_op_equals_fallback
        half = tf.cast(f.astype(np.float32), tf.bfloat16)
        got = ra.roi_align(half, *args, implementation="op")
        want = ra.roi_align(tf.cast(half, tf.float32), *args, implementation="op")
        np.testing.assert_array_equal(_bfloat16_bits(got), _bfloat16_bits(tf.cast(want, tf.bfloat16)))


def _bfloat16_bits(tensor: tf.Tensor) -> np.ndarray:
    return tf.bitcast(tensor, tf.uint16).numpy()


@requires_op
@pytest.mark.parametrize("sampling_ratio, aligned", [(2, True), (0, False), (1, True)])
def test_op_bfloat16_is_the_float32_result_rounded_once(sampling_ratio, aligned):
    """The op reads bfloat16 features as they are and sums in float32: forward and gradient are
    the float32 op's on the widened inputs, rounded to bfloat16 once (bit for bit, as tf.cast)."""
    f = tf.cast(features((2, 9, 11, 3), seed=12, dtype=np.float32), tf.bfloat16)
    widened = tf.cast(f, tf.float32)
    upstream = tf.cast(np.random.default_rng(13).normal(size=(len(BOXES), 3, 2, 3)), tf.bfloat16)
    args = (BOXES, BOX_INDICES, (3, 2), SCALE, sampling_ratio, aligned)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([f, widened])
        got = ra.roi_align(f, *args, implementation="op")
        want = ra.roi_align(widened, *args, implementation="op")
        loss_got = tf.reduce_sum(tf.cast(got, tf.float32) * tf.cast(upstream, tf.float32))
        loss_want = tf.reduce_sum(want * tf.cast(upstream, tf.float32))
    assert got.dtype == tf.bfloat16
    np.testing.assert_array_equal(_bfloat16_bits(got), _bfloat16_bits(tf.cast(want, tf.bfloat16)))
    grad_got, grad_want = tape.gradient(loss_got, f), tape.gradient(loss_want, widened)
    assert grad_got.dtype == tf.bfloat16 and np.abs(grad_want.numpy()).max() > 0.1
    np.testing.assert_array_equal(_bfloat16_bits(grad_got), _bfloat16_bits(tf.cast(grad_want, tf.bfloat16)))
    # And the NumPy reference, to bfloat16's precision (8 bits).
    reference = roi_align_ref(widened.numpy().astype(np.float64), *args)
    np.testing.assert_allclose(tf.cast(got, tf.float64).numpy(), reference, rtol=2**-8, atol=2**-8)


@requires_op
def test_op_bfloat16_rounds_ties_to_even_and_keeps_nan():
    """One sample halfway between two columns averages them: 1 and 1 + 2**-7 give 1 + 2**-8, a tie
    that rounds to the even 1.0; 1 + 2**-7 and 1 + 2**-6 give a tie that rounds up to 1 + 2**-6."""
    columns = np.array([[1.0, 1.0 + 2**-7, 1.0 + 2**-6, np.nan, 3.0]], np.float32)
    f = tf.cast(np.repeat(columns, 2, axis=0)[None, :, :, None], tf.bfloat16)  # [1, 2, 5, 1]
    # aligned, scale 1, one bin and one sample: the sample sits at the box centre minus 0.5 px.
    boxes = np.array([[0.5, 0.5, 1.5, 1.5], [0.5, 1.5, 1.5, 2.5], [0.5, 2.5, 1.5, 3.5], [0.5, 4.0, 1.5, 5.0]])
    got = tf.cast(ra.roi_align(f, boxes, [0, 0, 0, 0], 1, 1.0, 1, True, implementation="op"), tf.float32)
    got = got.numpy().reshape(-1)
    assert got[0] == 1.0 and got[1] == 1.0 + 2**-6
    assert np.isnan(got[2]) and got[3] == 3.0  # a NaN stays NaN; a sample on the last column alone is exact


# ------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------
GRAD_BOXES = np.array([[4.0, 4.0, 20.0, 22.0], [-8.0, -8.0, 10.0, 10.0], [3.0, 5.0, 9.0, 9.0],
                       [10.0, 10.0, 10.0, 10.0], [40.0, 40.0, 60.0, 60.0]])
GRAD_INDICES = np.array([0, 1, 1, 0, 1], np.int32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sampling_ratio, aligned", [(2, True), (0, False), (1, False)])
def test_gradient_numeric(impl, sampling_ratio, aligned):
    f = tf.constant(features((2, 5, 6, 2), seed=5))

    @tf.function  # traced once: compute_gradient calls it ~2 x 120 times
    def fn(x):
        return ra.roi_align(x, GRAD_BOXES, GRAD_INDICES, (2, 3), SCALE, sampling_ratio, aligned,
                            implementation=impl)

    theoretical, numerical = tf.test.compute_gradient(fn, [f])
    assert np.abs(theoretical[0] - numerical[0]).max() < 1e-6
    assert np.abs(theoretical[0]).max() > 0.1  # not trivially zero


@pytest.mark.parametrize("impl", IMPLS)
def test_gradient_matches_reference_and_ignores_boxes(impl):
    f = tf.constant(features((2, 5, 6, 2), seed=6))
    boxes = tf.constant(GRAD_BOXES)
    upstream = np.random.default_rng(7).normal(size=(len(GRAD_BOXES), 2, 3, 2))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([f, boxes])
        out = ra.roi_align(f, boxes, GRAD_INDICES, (2, 3), SCALE, 0, True, implementation=impl)
        loss = tf.reduce_sum(out * upstream)
    want = roi_align_grad_ref(upstream, (2, 5, 6, 2), GRAD_BOXES, GRAD_INDICES, (2, 3), SCALE, 0, True)
    np.testing.assert_allclose(tape.gradient(loss, f).numpy(), want, atol=1e-12)
    assert tape.gradient(loss, boxes) is None  # the paper's approximation: no gradient to boxes


@requires_op
def test_gradient_op_equals_fallback():
    f = tf.constant(features((2, 12, 10, 4), seed=8, dtype=np.float32))
    rng = np.random.default_rng(9)
    corners = rng.uniform(-10, 60, size=(30, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1).astype(np.float32)
    indices = rng.integers(0, 2, size=30).astype(np.int32)
    upstream = rng.normal(size=(30, 7, 7, 4)).astype(np.float32)
    grads = {}
    for impl in ("op", "tf"):
        with tf.GradientTape() as tape:
            tape.watch(f)
            loss = tf.reduce_sum(ra.roi_align(f, boxes, indices, 7, SCALE, 2, True, implementation=impl) * upstream)
        grads[impl] = tape.gradient(loss, f).numpy()
    np.testing.assert_allclose(grads["op"], grads["tf"], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Graph mode, dynamic shapes, errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_tf_function_dynamic_num_boxes(impl):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                                  tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32)])
    def pool(x, boxes, indices):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = ra.roi_align(x, boxes, indices, (2, 3), SCALE, 0, True, implementation=impl)
            loss = tf.reduce_sum(out)
        assert out.shape.as_list() == [None, 2, 3, 3]  # static shape from the shape function
        return out, tape.gradient(loss, x)

    f = features(dtype=np.float32)
    for count in (3, 0, len(BOXES)):
        out, grad = pool(f, BOXES[:count].astype(np.float32), BOX_INDICES[:count])
        want = roi_align_ref(f, BOXES[:count], BOX_INDICES[:count], (2, 3), SCALE, 0, True)
        np.testing.assert_allclose(out.numpy(), want, rtol=2e-6, atol=2e-6)
        assert grad.shape == f.shape
    assert pool.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad_index", [2, -1])
def test_box_index_out_of_range_is_an_error(impl, bad_index):
    indices = BOX_INDICES.copy()
    indices[3] = bad_index
    with pytest.raises(tf.errors.InvalidArgumentError, match="box_indices"):
        ra.roi_align(features(), BOXES, indices, 2, SCALE, implementation=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_static_arguments(impl):
    f = features()
    with pytest.raises(ValueError, match="features"):
        ra.roi_align(f[0], BOXES, BOX_INDICES, 2, SCALE, implementation=impl)
    with pytest.raises(ValueError, match="boxes"):
        ra.roi_align(f, BOXES[:, :3], BOX_INDICES, 2, SCALE, implementation=impl)
    with pytest.raises(ValueError, match="box_indices"):
        ra.roi_align(f, BOXES, BOX_INDICES[:4], 2, SCALE, implementation=impl)
    with pytest.raises(ValueError, match="output_size"):
        ra.roi_align(f, BOXES, BOX_INDICES, (0, 2), SCALE, implementation=impl)
    with pytest.raises(ValueError, match="spatial_scale"):
        ra.roi_align(f, BOXES, BOX_INDICES, 2, 0.0, implementation=impl)
    with pytest.raises(TypeError, match="features"):
        ra.roi_align(f.astype(np.int32), BOXES, BOX_INDICES, 2, SCALE, implementation=impl)
    with pytest.raises(ValueError, match="implementation"):
        ra.roi_align(f, BOXES, BOX_INDICES, 2, SCALE, implementation="cuda")


@requires_op
def test_raw_op_validates_shapes_at_run_time():
    library = ra.load_op_library()
    f = features()
    attrs = dict(pooled_height=2, pooled_width=2, spatial_scale=SCALE)
    with pytest.raises(tf.errors.InvalidArgumentError):
        library.roi_align(f, BOXES[:, :3], BOX_INDICES, **attrs)
    with pytest.raises(tf.errors.InvalidArgumentError):
        library.roi_align(f[0], BOXES, BOX_INDICES, **attrs)
    with pytest.raises(tf.errors.InvalidArgumentError):
        library.roi_align_grad(np.zeros((len(BOXES), 3, 2, 3)), BOXES, BOX_INDICES, [2, 9, 11, 3], **attrs)


# ------------------------------------------------------------------------------------------------
# Implementation selection
# ------------------------------------------------------------------------------------------------
def test_env_var_selects_path(monkeypatch):
    monkeypatch.setenv(ra.ENV_VAR, "tf")
    assert ra.active_implementation() == "tf"
    monkeypatch.setenv(ra.ENV_VAR, "op")
    if OP_AVAILABLE:
        assert ra.active_implementation() == "op"
    else:
        with pytest.raises(RuntimeError, match="unavailable"):
            ra.active_implementation()
    monkeypatch.setenv(ra.ENV_VAR, "gpu")
    with pytest.raises(ValueError, match=ra.ENV_VAR):
        ra.active_implementation()
    monkeypatch.delenv(ra.ENV_VAR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ra.active_implementation() == ("op" if OP_AVAILABLE else "tf")


def test_missing_library_warns_once_and_falls_back(monkeypatch):
    monkeypatch.delenv(ra.ENV_VAR, raising=False)
    monkeypatch.setattr(ra, "_load_attempted", True)
    monkeypatch.setattr(ra, "_library", None)
    monkeypatch.setattr(ra, "_load_error", "simulated: library missing")
    monkeypatch.setattr(ra, "_warned", False)
    with pytest.warns(RuntimeWarning, match="simulated: library missing"):
        assert ra.active_implementation() == "tf"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        out = ra.roi_align(ARANGE, [[0.0, 0.0, 4.0, 4.0]], [0], 2, 1.0, 1, True)
    np.testing.assert_allclose(out.numpy()[0, ..., 0], [[3, 5], [13, 15]])


# ------------------------------------------------------------------------------------------------
# MirroredStrategy over 2 logical CPUs (subprocess: devices must be set before TF initializes)
# ------------------------------------------------------------------------------------------------
MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from mrcnn.ops import roi_align as ra
    impls = ["tf"] + (["op"] if ra.load_op_library() is not None else [])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    f = tf.constant(rng.normal(size=(2, 6, 7, 3)), tf.float32)
    boxes = tf.constant([[0.0, 0.0, 20.0, 24.0], [4.0, 8.0, 16.0, 12.0], [-4.0, 2.0, 9.0, 30.0]])
    indices = tf.constant([0, 1, 1])
    result = {}
    for impl in impls:
        with strategy.scope():
            weight = tf.Variable(tf.ones([3]))
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                out = ra.roi_align(x * weight, boxes, indices, 2, 0.25, 2, True, implementation=impl)
                loss = tf.reduce_sum(out ** 2)
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return out, tape.gradient(loss, weight), replica
        outs, grads, replicas = strategy.run(step, args=(f,))
        outs = [t.numpy() for t in strategy.experimental_local_results(outs)]
        grads = [t.numpy() for t in strategy.experimental_local_results(grads)]
        replicas = sorted(int(t) for t in strategy.experimental_local_results(replicas))
        devices = list(strategy.extended.worker_devices)
        with tf.GradientTape() as tape:
            out = ra.roi_align(f * weight, boxes, indices, 2, 0.25, 2, True, implementation=impl)
            loss = tf.reduce_sum(out ** 2)
        want_grad = tape.gradient(loss, weight).numpy()
        result[impl] = dict(
            replicas=replicas, devices=devices,
            max_out_diff=float(max(np.abs(o - out.numpy()).max() for o in outs)),
            max_grad_diff=float(max(np.abs(g - want_grad).max() for g in grads)))
    print("RESULT" + json.dumps(result))
""")


def test_mirrored_strategy_two_logical_cpus():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    env.pop(ra.ENV_VAR, None)
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    result = json.loads(line[len("RESULT"):])
    assert set(result) == ({"tf", "op"} if OP_AVAILABLE else {"tf"})
    for impl, stats in result.items():
        assert stats["replicas"] == [0, 1], (impl, stats)
        assert any("CPU:1" in d for d in stats["devices"]), stats["devices"]
        assert stats["max_out_diff"] < 1e-5 and stats["max_grad_diff"] < 1e-3, (impl, stats)


# ------------------------------------------------------------------------------------------------
# Build script (no compilation here: only that it imports as setup.py uses it)
# ------------------------------------------------------------------------------------------------
def test_build_script_importable_without_running_cli():
    namespace = runpy.run_path(str(REPO / "custom_ops" / "build.py"), run_name="mrcnn_build")
    assert callable(namespace["build"]) and callable(namespace["up_to_date"])
    if "MRCNN_ROI_ALIGN_LIBRARY" not in os.environ:
        assert namespace["LIB_PATH"] == ra.LIBRARY_PATH  # the builder writes where the loader looks
    fresh, reason = namespace["up_to_date"]()
    assert isinstance(fresh, bool) and (fresh or reason)
    if OP_AVAILABLE and fresh:
        info = json.loads((ra.LIBRARY_PATH.parent / "build_info.json").read_text())
        assert info["tf_version"] == tf.__version__


# ------------------------------------------------------------------------------------------------
# GPU (CUDA kernels vs CPU kernels); skipped without a GPU and a CUDA build of TF
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_op
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64, tf.bfloat16])
def test_gpu_matches_cpu(dtype):
    f = tf.constant(features((2, 20, 17, 8), seed=10), dtype)
    rng = np.random.default_rng(11)
    corners = rng.uniform(-10, 90, size=(50, 2, 2))
    box_dtype = tf.float64 if dtype == tf.float64 else tf.float32
    boxes = tf.constant(np.concatenate([corners.min(1), corners.max(1)], axis=1), box_dtype)
    indices = tf.constant(rng.integers(0, 2, size=50), tf.int32)
    upstream = tf.constant(rng.normal(size=(50, 7, 7, 8)), dtype)
    results = {}
    for device in ("/CPU:0", "/GPU:0"):
        with tf.device(device), tf.GradientTape() as tape:
            tape.watch(f)
            out = ra.roi_align(f, boxes, indices, 7, SCALE, 0, True, implementation="op")
            loss = tf.reduce_sum(out * upstream)
        results[device] = (out.numpy(), tape.gradient(loss, f).numpy(), out.device)
    assert "GPU" in results["/GPU:0"][2]
    # bfloat16: float32 sums in another order (FMA, atomics) may round to the neighbouring value.
    tol = {tf.float32: 1e-5, tf.float64: 1e-12, tf.bfloat16: 2**-7}[dtype]
    results = {device: tuple(np.asarray(a, np.float64) for a in value[:2]) for device, value in results.items()}
    np.testing.assert_allclose(results["/GPU:0"][0], results["/CPU:0"][0], rtol=tol, atol=tol)
    np.testing.assert_allclose(results["/GPU:0"][1], results["/CPU:0"][1], rtol=tol * 10, atol=tol * 10)
