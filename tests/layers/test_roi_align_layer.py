"""Tests for mrcnn.layers.PyramidROIAlign (level assignment, order, batching, gradients)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import utils
from mrcnn.layers import PyramidROIAlign
from mrcnn.layers.roi_align import assign_levels
from mrcnn.ops.roi_align import roi_align

SIZE = 512  # molded image side; P2..P5 are 128, 64, 32, 16


def _meta(batch: int, size: int = SIZE) -> np.ndarray:
    one = utils.compose_image_meta(0, (size, size, 3), (size, size, 3), (0, 0, size, size), 1.0, np.ones(3))
    return np.tile(one[None], (batch, 1))


def _level_features(batch: int, channels: int = 2) -> list[np.ndarray]:
    """P2..P5 where every value is the level number, plus 10 per image index."""
    maps = []
    for level in range(2, 6):
        side = SIZE // 2**level
        values = level + 10.0 * np.arange(batch, dtype=np.float32)
        maps.append(np.broadcast_to(values[:, None, None, None], (batch, side, side, channels)).copy())
    return maps


def _square(center: float, side_px: float) -> list[float]:
    half = side_px / 2 / SIZE
    c = center / SIZE
    return [c - half, c - half, c + half, c + half]


def test_assign_levels_formulas():
    sides = np.array([16, 112, 200, 224, 448, 512], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides / SIZE, sides / SIZE], axis=1)[None]
    area = np.array([SIZE * SIZE], np.float32)
    # matterport: 4 + round(log2(side / 224)); paper: floor(4 + log2(side / 224)); both in [2, 5].
    np.testing.assert_array_equal(assign_levels(boxes, area, "matterport").numpy()[0], [2, 3, 4, 4, 5, 5])
    np.testing.assert_array_equal(assign_levels(boxes, area, "paper").numpy()[0], [2, 3, 3, 4, 5, 5])
    # Zero (padding) boxes go to P2 without NaN trouble.
    np.testing.assert_array_equal(assign_levels(np.zeros((1, 2, 4), np.float32), area).numpy(), [[2, 2]])
    # Non-finite boxes (a diverged RPN) get a level too: every box must land in exactly one level.
    bad = np.array([[[np.nan] * 4, [0.1, 0.1, np.inf, 0.2], [0.1, 0.1, 0.2, -np.inf]]], np.float32)
    for mode in ("matterport", "paper"):
        np.testing.assert_array_equal(assign_levels(bad, area, mode).numpy(), [[2, 5, 2]])  # NaN -> P2, inf -> P5
    with pytest.raises(ValueError, match="level_mode"):
        assign_levels(boxes, area, "fpn")


@pytest.mark.parametrize(
    "level_mode, pooling_mode",
    [("matterport", "roi_align"), ("paper", "roi_align"), ("matterport", "roi_align_max"),
     ("matterport", "roi_pool"), ("matterport", "roi_warp"), ("matterport", "crop_and_resize")],
)
def test_small_boxes_from_p2_large_from_p5_order_kept_batch_two(level_mode, pooling_mode):
    # Sides chosen so both modes agree: 16 -> P2, 112 -> P3, 224 -> P4, 480 -> P5.
    sides = {2: 16, 3: 112, 4: 224, 5: 480}
    order = [5, 2, 4, 3, 2, 5, 3, 4]
    boxes = np.array([[_square(256, sides[lv]) for lv in order],
                      [_square(250, sides[lv]) for lv in order[::-1]]], np.float32)
    layer = PyramidROIAlign(3, pooling_mode=pooling_mode, level_mode=level_mode)
    out = tf.function(layer)([boxes, _meta(2)] + _level_features(2)).numpy()
    assert out.shape == (2, 8, 3, 3, 2)
    expected = np.array([order, [lv + 10 for lv in order[::-1]]], np.float32)
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, :, None, None, None], out.shape), atol=1e-5)


def test_pooled_values_match_direct_roi_align():
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(1, SIZE // 2**lv, SIZE // 2**lv, 3)).astype(np.float32) for lv in range(2, 6)]
    boxes = np.array([[[40, 60, 140, 180], [10, 10, 26, 30], [0, 0, 0, 0]]], np.float32) / SIZE
    out = PyramidROIAlign((2, 3), sampling_ratio=2, aligned=True)([boxes, _meta(1)] + features).numpy()
    assert out.shape == (1, 3, 2, 3, 3)
    # Box 0 (~110 px) is a P3 box, box 1 (~18 px) and the zero box are P2 boxes.
    for index, level in [(0, 3), (1, 2), (2, 2)]:
        direct = roi_align(features[level - 2], boxes[0, index : index + 1] * SIZE, tf.zeros([1], tf.int32),
                           (2, 3), 1.0 / 2**level, sampling_ratio=2, aligned=True).numpy()
        np.testing.assert_allclose(out[0, index], direct[0], rtol=1e-5, atol=1e-6)


def test_gradient_to_features_not_boxes():
    rng = np.random.default_rng(1)
    features = [tf.constant(rng.normal(size=(1, SIZE // 2**lv, SIZE // 2**lv, 1)), tf.float32) for lv in range(2, 6)]
    boxes = tf.constant([[_square(200, 100), _square(300, 450)]], tf.float32)
    layer = PyramidROIAlign(2)
    with tf.GradientTape() as tape:
        tape.watch(features)
        tape.watch(boxes)
        loss = tf.reduce_sum(layer([boxes, _meta(1)] + features))
    grads = tape.gradient(loss, [boxes] + features)
    assert grads[0] is None
    # The 100 px box pools from P3, the 450 px box from P5; P2 and P4 get nothing.
    sums = [float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g)))) for g in grads[1:]]
    assert sums[1] > 0 and sums[3] > 0
    assert sums[0] == 0 and sums[2] == 0


def test_gradient_matches_direct_roi_align_per_box_batch_two():
    """Each box's output gradient reaches its own image and level, as direct RoIAlign calls give it.

    Boxes of all four levels, interleaved, in 2 images, each with its own upstream weight: a box
    pooled into another box's slot, or from the wrong image or level, changes the feature gradients.
    """
    rng = np.random.default_rng(7)
    features = [tf.constant(rng.normal(size=(2, SIZE // 2**lv, SIZE // 2**lv, 3)), tf.float32) for lv in range(2, 6)]
    sides = {2: 16, 3: 112, 4: 224, 5: 480}
    order = [[5, 2, 4, 3, 2, 5], [3, 3, 2, 4, 5, 2]]
    centers = [[150, 260, 330, 200, 90, 256], [256, 140, 300, 250, 260, 420]]
    boxes = np.array([[_square(c, sides[lv]) for c, lv in zip(cs, levels)]
                      for cs, levels in zip(centers, order)], np.float32)
    upstream = tf.constant(rng.normal(size=(2, 6, 2, 2, 3)), tf.float32)
    layer = PyramidROIAlign(2, sampling_ratio=2, aligned=True)
    with tf.GradientTape() as tape:
        tape.watch(features)
        loss = tf.reduce_sum(layer([boxes, _meta(2)] + features) * upstream)
    grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, features)]

    with tf.GradientTape() as tape:
        tape.watch(features)
        loss = 0.0
        for image in range(2):
            for slot, level in enumerate(order[image]):
                pooled = roi_align(features[level - 2], boxes[image, slot:slot + 1] * SIZE,
                                   tf.constant([image], tf.int32), (2, 2), 1.0 / 2**level, sampling_ratio=2,
                                   aligned=True)
                loss += tf.reduce_sum(pooled[0] * upstream[image, slot])
    expected = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, features)]
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert all(np.abs(g).sum() > 0 for g in grads)  # every level received a box


def test_functional_shapes_and_config():
    layer = PyramidROIAlign(7, pooling_mode="roi_align", sampling_ratio=0, aligned=False, level_mode="paper",
                            name="roi_align_classifier")
    inputs = [keras.Input((10, 4), batch_size=2), keras.Input((15,), batch_size=2)]
    inputs += [keras.Input((64 // 2**lv, 64 // 2**lv, 8), batch_size=2) for lv in range(2, 6)]
    assert tuple(layer(inputs).shape) == (2, 10, 7, 7, 8)
    clone = PyramidROIAlign.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="pooling_mode"):
        PyramidROIAlign(7, pooling_mode="bogus")


def test_non_finite_boxes_pool_without_error():
    """A NaN box pools (to whatever) instead of breaking the layer's reshape; finite boxes are unaffected."""
    boxes = np.array([[_square(256, 16), [np.nan] * 4, _square(256, 480)]], np.float32)
    out = PyramidROIAlign(3)([boxes, _meta(1)] + _level_features(1)).numpy()
    assert out.shape == (1, 3, 3, 3, 2)
    np.testing.assert_allclose(out[0, 0], 2.0, atol=1e-5)
    np.testing.assert_allclose(out[0, 2], 5.0, atol=1e-5)


def test_flat_layout_with_box_image_ids_matches_batched():
    """boxes [1, N, 4] + box_image_ids pool exactly what the [B, N, 4] layout pools for the same boxes."""
    rng = np.random.default_rng(4)
    features = [rng.normal(size=(2, SIZE // 2**lv, SIZE // 2**lv, 3)).astype(np.float32) for lv in range(2, 6)]
    y1x1 = rng.uniform(0.0, 0.6, size=(2, 5, 2))
    boxes = np.concatenate([y1x1, y1x1 + rng.uniform(0.02, 0.4, size=(2, 5, 2))], axis=-1).astype(np.float32)
    layer = PyramidROIAlign(4, level_mode="paper")
    batched = layer([boxes, _meta(2)] + features).numpy()  # [2, 5, 4, 4, 3]
    # A flat list in a mixed order: image 1's box 3, image 0's box 0, image 1's box 0, image 0's box 4.
    picks = [(1, 3), (0, 0), (1, 0), (0, 4)]
    flat_boxes = np.stack([boxes[b, i] for b, i in picks])[None]
    image_ids = np.array([b for b, _ in picks], np.int32)
    flat = layer([flat_boxes, _meta(2)] + features, box_image_ids=image_ids).numpy()
    assert flat.shape == (1, 4, 4, 4, 3)
    np.testing.assert_allclose(flat[0], np.stack([batched[b, i] for b, i in picks]), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# SingleLevelROIAlign (the C4 model's pooler)
def test_single_level_matches_direct_roi_align_at_stride_16():
    from mrcnn.layers import SingleLevelROIAlign

    rng = np.random.default_rng(4)
    c4 = rng.normal(size=(2, SIZE // 16, SIZE // 16, 3)).astype(np.float32)
    boxes = np.array([[_square(100, 40), _square(300, 200), _square(256, 500)],
                      [_square(60, 20), _square(400, 90), [0.0, 0.0, 0.0, 0.0]]], np.float32)  # last: padding
    layer = SingleLevelROIAlign(14, stride=16)
    pooled = layer([tf.constant(boxes), tf.constant(c4)]).numpy()
    assert pooled.shape == (2, 3, 14, 14, 3)
    # Row b is pooled from image b, in input pixels at spatial scale 1/16.
    flat = boxes.reshape(-1, 4) * SIZE
    expected = roi_align(tf.constant(c4), tf.constant(flat), tf.constant([0, 0, 0, 1, 1, 1], tf.int32),
                         (14, 14), 1.0 / 16).numpy()
    np.testing.assert_allclose(pooled.reshape(6, 14, 14, 3), expected, rtol=1e-5, atol=1e-6)
    # Flat layout: any boxes of any images, with their image ids.
    ids = tf.constant([1, 0, 1], tf.int32)
    flat_pooled = layer([tf.constant(boxes[[1, 0, 1], [0, 2, 1]][None]), tf.constant(c4)], box_image_ids=ids)
    np.testing.assert_allclose(flat_pooled.numpy()[0], expected[[3, 2, 4]], rtol=1e-5, atol=1e-6)


def test_single_level_gradient_config_and_errors():
    from mrcnn.layers import SingleLevelROIAlign

    c4 = tf.random.stateless_normal([1, 8, 8, 2], seed=(1, 2))
    boxes = tf.constant([[[0.1, 0.1, 0.6, 0.7]]])
    layer = SingleLevelROIAlign((4, 6), stride=16, sampling_ratio=0, name="roi_align_classifier")
    with tf.GradientTape() as tape:
        tape.watch([c4, boxes])
        out = layer([boxes, c4])
        loss = tf.reduce_sum(out)
    assert tuple(out.shape) == (1, 1, 4, 6, 2)
    # Every output value is a convex combination of feature values: d(sum)/d(features) sums to 4*6*2.
    grad_features, grad_boxes = tape.gradient(loss, [c4, boxes])
    assert grad_boxes is None and float(tf.reduce_sum(grad_features)) == pytest.approx(48.0, rel=1e-5)
    clone = SingleLevelROIAlign.from_config(layer.get_config())
    assert (clone.pool_size, clone.stride, clone.sampling_ratio, clone.name) == ((4, 6), 16, 0, "roi_align_classifier")
    with pytest.raises(ValueError, match="pooling_mode"):
        SingleLevelROIAlign(7, pooling_mode="bilinear")
    with pytest.raises(ValueError, match="stride"):
        SingleLevelROIAlign(7, stride=0)
    with pytest.raises(ValueError, match=r"\[boxes, feature_map\]"):
        layer([boxes, c4, c4])
