"""Tests for mrcnn.ops.roi_pooling (the paper's ablation poolers and matterport's crop_and_resize)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.ops import roi_pooling as rp
from mrcnn.ops.roi_align import roi_align
from tests.reference.roi_align_ref import crop_and_resize_ref, roi_align_ref, roi_pool_ref

SCALE = 0.25
BOXES = np.array([
    [4.0, 4.0, 20.0, 30.0],      # inside
    [-8.0, -8.0, 10.0, 10.0],    # across the top-left border
    [20.0, 30.0, 52.0, 60.0],    # across the bottom-right border
    [50.0, 50.0, 70.0, 80.0],    # fully outside
    [10.0, 13.0, 10.0, 13.0],    # zero size
    [0.0, 0.0, 36.0, 44.0],      # whole image
    [2.0, 6.0, 7.0, 9.0],        # small
    [6.0, 10.0, 14.0, 18.0],     # coordinates * scale on halves: rounding direction matters
])
BOX_INDICES = np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int32)
ARANGE = np.arange(25, dtype=np.float64).reshape(1, 5, 5, 1)


def features(shape=(2, 9, 11, 3), seed=0, dtype=np.float64) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def c_round(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 0])
def test_roi_align_max_matches_reference(sampling_ratio, aligned):
    f = features()
    got = rp.roi_align_max(f, BOXES, BOX_INDICES, (3, 4), SCALE, sampling_ratio, aligned)
    want = roi_align_ref(f, BOXES, BOX_INDICES, (3, 4), SCALE, sampling_ratio, aligned, reduce="max")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_roi_align_max_hand_worked():
    # aligned=False, box (0, 0, 4, 4), 1 bin, 2x2 samples at 1 and 3: max of 5y + x is at (3, 3).
    got = rp.roi_align_max(ARANGE, [[0.0, 0.0, 4.0, 4.0]], [0], 1, 1.0, 2, False)
    assert got.numpy().item() == pytest.approx(18.0)


def test_roi_pool_matches_reference():
    f = features()
    got = rp.roi_pool(f, BOXES, BOX_INDICES, (3, 4), SCALE)
    np.testing.assert_array_equal(got.numpy(), roi_pool_ref(f, BOXES, BOX_INDICES, (3, 4), SCALE))


def test_roi_pool_hand_worked():
    # box (0, 0, 4, 4) at scale 1: roi 5 (inclusive end), bins of 2.5 -> rows [0, 3) and [2, 5).
    got = rp.roi_pool(ARANGE, [[0.0, 0.0, 4.0, 4.0]], [0], 2, 1.0)
    np.testing.assert_array_equal(got.numpy()[0, ..., 0], [[12, 14], [22, 24]])
    # 0.5 rounds away from zero to 1 (tf.round would give 0): box (0.5 .. 2.5) -> rows 1..3.
    got = rp.roi_pool(ARANGE, [[0.5, 0.5, 2.5, 2.5]], [0], 1, 1.0)
    assert got.numpy().item() == 18.0
    # fully outside -> 0
    got = rp.roi_pool(ARANGE, [[7.0, 7.0, 9.0, 9.0]], [0], 1, 1.0)
    assert got.numpy().item() == 0.0


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_warp_is_roi_align_on_the_quantized_box(sampling_ratio):
    f = features()
    quantized = c_round(BOXES * SCALE) / SCALE
    got = rp.roi_warp(f, BOXES, BOX_INDICES, (3, 4), SCALE, sampling_ratio, aligned=True)
    want = roi_align_ref(f, quantized, BOX_INDICES, (3, 4), SCALE, sampling_ratio, aligned=False)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    # and quantization changes the result for boxes off the integer grid
    unquantized = roi_align(f, BOXES, BOX_INDICES, (3, 4), SCALE, sampling_ratio, aligned=False)
    assert np.abs(unquantized.numpy() - got.numpy()).max() > 1e-3


@pytest.mark.parametrize("size", [(3, 4), (1, 1)])
def test_crop_and_resize_matches_reference(size):
    f = features()
    normalized = BOXES * SCALE / np.array([9, 11, 9, 11])
    got = rp.crop_and_resize_pool(f, BOXES, BOX_INDICES, size, SCALE)
    np.testing.assert_allclose(got.numpy(), crop_and_resize_ref(f, normalized, BOX_INDICES, size),
                               rtol=1e-5, atol=1e-5)  # crop_and_resize computes in float32


def test_crop_and_resize_reproduces_matterport():
    """PyramidROIAlign gives pixels = normalized * image size; matterport crops `normalized`."""
    image_size = 64.0
    level_features = [features((2, int(image_size) // 2**level, int(image_size) // 2**level, 4), seed=level,
                               dtype=np.float32) for level in (2, 3, 4, 5)]
    normalized = np.random.default_rng(1).uniform(0, 1, size=(6, 2, 2))
    normalized = np.concatenate([normalized.min(1), normalized.max(1)], axis=1).astype(np.float32)
    indices = np.array([0, 1, 0, 1, 1, 0], np.int32)
    for level, fmap in zip((2, 3, 4, 5), level_features):
        ours = rp.crop_and_resize_pool(fmap, normalized * image_size, indices, 7, 1.0 / 2**level)
        matterport = tf.image.crop_and_resize(fmap, normalized, indices, (7, 7), method="bilinear")
        np.testing.assert_allclose(ours.numpy(), matterport.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", sorted(rp.POOLERS))
def test_gradients_to_features_only(mode):
    pooler = rp.get_pooler(mode)
    f = tf.constant(features((2, 5, 6, 2), seed=3))
    boxes = BOXES[[0, 1, 6]] + 0.37  # off the grid so max/round ties do not make kinks
    indices = BOX_INDICES[[0, 1, 6]]

    @tf.function
    def fn(x):
        return pooler(x, boxes, indices, (2, 3), SCALE)

    theoretical, numerical = tf.test.compute_gradient(fn, [f])
    tol = 1e-3 if mode == "crop_and_resize" else 1e-6  # crop_and_resize is float32 inside
    assert np.abs(theoretical[0] - numerical[0]).max() < tol
    assert np.abs(theoretical[0]).max() > 0.1
    box_tensor = tf.constant(boxes)
    with tf.GradientTape() as tape:
        tape.watch(box_tensor)
        loss = tf.reduce_sum(pooler(f, box_tensor, indices, (2, 3), SCALE))
    assert tape.gradient(loss, box_tensor) is None


@pytest.mark.parametrize("mode", sorted(rp.POOLERS))
def test_empty_boxes_dtype_and_tf_function(mode):
    pooler = rp.get_pooler(mode)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float16),
                                  tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32)])
    def pool(x, boxes, indices):
        return pooler(x, boxes, indices, (2, 3), SCALE)

    f = features(dtype=np.float16)
    empty = pool(f, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32))
    assert empty.shape == (0, 2, 3, 3) and empty.dtype == tf.float16
    out = pool(f, BOXES.astype(np.float32), BOX_INDICES)
    assert out.shape == (len(BOXES), 2, 3, 3) and out.dtype == tf.float16
    assert np.all(np.isfinite(out.numpy()))


@pytest.mark.parametrize("mode", sorted(rp.POOLERS))
def test_box_index_out_of_range(mode):
    with pytest.raises(tf.errors.InvalidArgumentError):
        rp.get_pooler(mode)(features(), BOXES[:2], [0, 2], 2, SCALE)


def test_get_pooler():
    assert rp.get_pooler("roi_align") is roi_align
    assert set(rp.POOLERS) == {"roi_align", "roi_align_max", "roi_pool", "roi_warp", "crop_and_resize"}
    with pytest.raises(ValueError, match="'roi_bogus'"):
        rp.get_pooler("roi_bogus")


def test_statically_empty_box_list_first_call_does_not_crash():
    # Regression: with K statically 0 on the FIRST (eager) call, Grappler constant-folded the
    # fallback's tap arithmetic with zero-sized dimensions and the process died of SIGFPE. The
    # order matters (an earlier trace generalizes K), so this runs in a fresh interpreter.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import tensorflow as tf
        from mrcnn.ops.roi_align import roi_align
        from mrcnn.ops.roi_pooling import POOLERS
        features = tf.random.normal([1, 16, 16, 8])
        for impl in ("tf", "op"):
            os.environ["MRCNN_ROI_ALIGN"] = impl if impl == "tf" else "auto"
            out = roi_align(features, tf.zeros([0, 4]), tf.zeros([0], tf.int32), (7, 7), 0.25)
            assert out.shape == (0, 7, 7, 8), out.shape
        for name, pooler in POOLERS.items():
            out = pooler(features, tf.zeros([0, 4]), tf.zeros([0], tf.int32), (7, 7), 0.25)
            assert out.shape == (0, 7, 7, 8), (name, out.shape)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, (result.returncode, result.stderr[-2000:])
