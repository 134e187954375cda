"""Tests for mrcnn.ops.boxes against hand-computed values and the numpy versions in mrcnn.utils."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn import utils
from mrcnn.ops import boxes as tfboxes


def _np_iou(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Obviously-correct double loop IoU."""
    out = np.zeros((len(b1), len(b2)))
    for i, a in enumerate(b1):
        for j, b in enumerate(b2):
            ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = ih * iw
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    y1 = rng.uniform(0, 50, n)
    x1 = rng.uniform(0, 50, n)
    return np.stack([y1, x1, y1 + rng.uniform(1, 30, n), x1 + rng.uniform(1, 30, n)], axis=1).astype(np.float32)


def test_box_overlaps_hand_values():
    b1 = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b2 = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 10, 5], [20, 20, 30, 30]], np.float32)
    iou = tfboxes.box_overlaps(b1, b2).numpy()
    np.testing.assert_allclose(iou[0], [1.0, 25 / 175, 0.5, 0.0], rtol=1e-6)
    # A zero padding box overlaps nothing (no NaN from 0 / 0).
    np.testing.assert_array_equal(iou[1], [0, 0, 0, 0])


def test_box_overlaps_random_matches_reference_and_utils():
    rng = np.random.default_rng(0)
    b1, b2 = _random_boxes(rng, 7), _random_boxes(rng, 5)
    iou = tfboxes.box_overlaps(b1, b2).numpy()
    np.testing.assert_allclose(iou, _np_iou(b1, b2), atol=1e-6)
    np.testing.assert_allclose(iou, utils.compute_overlaps(b1, b2), atol=1e-6)


def test_box_overlaps_empty():
    assert tfboxes.box_overlaps(np.zeros((0, 4), np.float32), np.ones((3, 4), np.float32)).shape == (0, 3)
    assert tfboxes.box_overlaps(np.ones((2, 4), np.float32), np.zeros((0, 4), np.float32)).shape == (2, 0)


def test_box_refinement_hand_values():
    box = np.array([[0, 0, 10, 20]], np.float32)
    gt = np.array([[5, 10, 25, 30]], np.float32)  # center (15, 20) vs (5, 10); size 20x20 vs 10x20
    deltas = tfboxes.box_refinement(box, gt).numpy()
    np.testing.assert_allclose(deltas, [[1.0, 0.5, np.log(2.0), 0.0]], rtol=1e-6)


def test_refinement_and_apply_are_inverse_and_match_utils():
    rng = np.random.default_rng(1)
    box, gt = _random_boxes(rng, 20), _random_boxes(rng, 20)
    deltas = tfboxes.box_refinement(box, gt).numpy()
    np.testing.assert_allclose(deltas, utils.box_refinement(box, gt), rtol=1e-5, atol=1e-5)
    restored = tfboxes.apply_box_deltas(box, deltas).numpy()
    np.testing.assert_allclose(restored, gt, atol=1e-4)
    np.testing.assert_allclose(restored, utils.apply_box_deltas(box, deltas), atol=1e-4)


def test_apply_box_deltas_batched_shapes():
    boxes = np.tile(np.array([[[0.1, 0.1, 0.3, 0.5]]], np.float32), (2, 3, 1))
    deltas = np.zeros((2, 3, 4), np.float32)
    deltas[1, 2] = [0.5, 0.0, np.log(2.0), 0.0]
    out = tfboxes.apply_box_deltas(boxes, deltas).numpy()
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(out[0, 0], boxes[0, 0], atol=1e-7)
    # Center y moves by 0.5 * h = 0.1 to 0.3, height doubles to 0.4.
    np.testing.assert_allclose(out[1, 2], [0.1, 0.1, 0.5, 0.5], atol=1e-6)


def test_clip_boxes_scalar_and_per_image_window():
    boxes = np.array([[-0.2, 0.1, 0.5, 1.3], [1.2, 1.2, 1.5, 1.5]], np.float32)
    clipped = tfboxes.clip_boxes(boxes, [0.0, 0.0, 1.0, 1.0]).numpy()
    np.testing.assert_allclose(clipped, [[0.0, 0.1, 0.5, 1.0], [1.0, 1.0, 1.0, 1.0]])
    batched = np.stack([boxes, boxes])
    windows = np.array([[[0, 0, 1, 1]], [[0.25, 0.0, 0.75, 1.0]]], np.float32)
    clipped = tfboxes.clip_boxes(batched, windows).numpy()
    np.testing.assert_allclose(clipped[1, 0], [0.25, 0.1, 0.5, 1.0])
    np.testing.assert_allclose(clipped[1, 1], [0.75, 1.0, 0.75, 1.0])


def test_norm_denorm_boxes_match_utils():
    boxes = np.array([[3, 4, 8, 20], [0, 0, 64, 128]], np.int32)
    norm = tfboxes.norm_boxes(boxes, (64, 128)).numpy()
    assert norm.dtype == np.float32
    np.testing.assert_allclose(norm, utils.norm_boxes(boxes, (64, 128)))
    np.testing.assert_allclose(norm[1], [0, 0, 1, 1])
    np.testing.assert_allclose(tfboxes.denorm_boxes(norm, (64, 128)).numpy(), boxes, atol=1e-5)
    np.testing.assert_array_equal(np.round(tfboxes.denorm_boxes(norm, (64, 128)).numpy()),
                                  utils.denorm_boxes(norm, (64, 128)))


def test_norm_boxes_dynamic_shape_in_tf_function():
    @tf.function
    def fn(boxes, image):
        return tfboxes.norm_boxes(boxes, tf.shape(image)[1:3])

    out = fn(tf.constant([[8.0, 16.0, 32.0, 64.0]]), tf.zeros([1, 32, 64, 3]))
    np.testing.assert_allclose(out.numpy(), [[0.25, 0.25, 1.0, 1.0]])


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_dtype_is_kept(dtype):
    boxes = tf.constant([[0.0, 0.0, 2.0, 2.0]], dtype)
    assert tfboxes.apply_box_deltas(boxes, tf.zeros([1, 4], dtype)).dtype == dtype
    assert tfboxes.box_overlaps(boxes, boxes).dtype == dtype
    assert tfboxes.box_refinement(boxes, boxes).dtype == dtype
