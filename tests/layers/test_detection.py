"""Tests for mrcnn.layers.DetectionLayer."""

import keras
import numpy as np
import tensorflow as tf

from mrcnn import utils
from mrcnn.layers import DetectionLayer

STD = np.array([0.1, 0.1, 0.2, 0.2], np.float32)
NUM_CLASSES = 4


def _meta(window=(0, 0, 64, 64), shape=(64, 64, 3)) -> np.ndarray:
    return utils.compose_image_meta(0, shape, shape, window, 1.0, np.ones(NUM_CLASSES))


def _probs(best_class: list[int], score: list[float]) -> np.ndarray:
    """[N, K] probabilities with `score` on the best class and the rest spread evenly."""
    probs = np.zeros((len(best_class), NUM_CLASSES), np.float32)
    for i, (c, s) in enumerate(zip(best_class, score)):
        probs[i] = (1.0 - s) / (NUM_CLASSES - 1)
        probs[i, c] = s
    return probs


def _layer(max_instances=5, min_confidence=0.7, nms_threshold=0.3):
    return DetectionLayer(max_instances, min_confidence, nms_threshold, STD)


def _run(layer, rois, probs, deltas=None, meta=None):
    rois = np.asarray(rois, np.float32)
    if deltas is None:
        deltas = np.zeros((len(rois), NUM_CLASSES, 4), np.float32)
    meta = _meta() if meta is None else meta
    return layer([rois[None], probs[None], deltas[None], meta[None]]).numpy()[0]


BOX_A = [0.1, 0.1, 0.4, 0.4]
BOX_A2 = [0.12, 0.1, 0.42, 0.4]  # IoU with BOX_A ~0.88
BOX_B = [0.6, 0.6, 0.9, 0.9]


def test_score_threshold_and_background_dropped():
    rois = [BOX_A, BOX_B, [0.5, 0.1, 0.7, 0.3], [0.1, 0.6, 0.3, 0.9]]
    probs = _probs([1, 2, 0, 3], [0.9, 0.69, 0.95, 0.7])
    out = _run(_layer(), rois, probs)
    assert out.shape == (5, 6)
    # BOX_B (0.69 < 0.7) and the background RoI are dropped; 0.7 itself is kept (inclusive).
    np.testing.assert_allclose(out[0], BOX_A + [1, 0.9], atol=1e-6)
    np.testing.assert_allclose(out[1], [0.1, 0.6, 0.3, 0.9, 3, 0.7], atol=1e-6)
    np.testing.assert_array_equal(out[2:], 0.0)


def test_per_class_nms():
    # Overlapping boxes of different classes are both kept; of the same class only the best.
    rois = [BOX_A, BOX_A2, BOX_B, [0.61, 0.6, 0.91, 0.9]]
    probs = _probs([1, 2, 3, 3], [0.8, 0.9, 0.75, 0.85])
    out = _run(_layer(), rois, probs)
    np.testing.assert_allclose(out[:3, 4:], [[2, 0.9], [3, 0.85], [1, 0.8]], atol=1e-6)
    np.testing.assert_allclose(out[0, :4], BOX_A2, atol=1e-6)
    np.testing.assert_allclose(out[1, :4], [0.61, 0.6, 0.91, 0.9], atol=1e-6)
    np.testing.assert_allclose(out[2, :4], BOX_A, atol=1e-6)
    np.testing.assert_array_equal(out[3:], 0.0)


def test_top_max_instances_by_score():
    rois = [[0.1 * i, 0.0, 0.1 * i + 0.08, 0.08] for i in range(8)]
    scores = [0.71, 0.9, 0.8, 0.95, 0.72, 0.85, 0.75, 0.99]
    out = _run(_layer(max_instances=3), rois, _probs([1] * 8, scores))
    np.testing.assert_allclose(out[:, 5], [0.99, 0.95, 0.9], atol=1e-6)
    np.testing.assert_allclose(out[:, 0], [0.7, 0.3, 0.1], atol=1e-6)


def test_class_specific_deltas_and_window_clip():
    rois = [[0.2, 0.2, 0.4, 0.4], [0.3, 0.5, 0.45, 0.7]]
    deltas = np.full((2, NUM_CLASSES, 4), 9.0, np.float32)  # wrong-class deltas must not be used
    deltas[0, 2] = [0.5 / 0.1, 0.0, np.log(2.0) / 0.2, 0.0]  # move down by h/2, double the height
    deltas[1, 1] = [1.0 / 0.1, 0.0, 0.0, 0.0]                 # move down by a whole height
    # The real image is the top half of the padded 64 x 64 image: window y2 = 32 px = 0.5.
    meta = _meta(window=(0, 0, 32, 64))
    out = _run(_layer(), rois, _probs([2, 1], [0.9, 0.8]), deltas, meta)
    np.testing.assert_allclose(out[0], [0.2, 0.2, 0.5, 0.4, 2, 0.9], atol=1e-6)   # 0.6 clipped to 0.5
    np.testing.assert_allclose(out[1], [0.45, 0.5, 0.5, 0.7, 1, 0.8], atol=1e-6)  # 0.6 clipped to 0.5


def test_no_detection_gives_zeros_and_padding_rois_ignored():
    rois = np.zeros((4, 4), np.float32)
    rois[0] = BOX_A
    probs = _probs([0, 1, 2, 3], [0.9, 0.99, 0.99, 0.99])  # padding rows "confident": ignored
    out = _run(_layer(), rois, probs)
    np.testing.assert_array_equal(out, 0.0)
    assert np.all(np.isfinite(out))


def test_batch_of_two_in_tf_function_and_config():
    layer = _layer(max_instances=4)
    rois = np.stack([np.array([BOX_A, BOX_B], np.float32), np.array([BOX_B, BOX_A], np.float32)])
    probs = np.stack([_probs([1, 2], [0.9, 0.8]), _probs([3, 0], [0.75, 0.9])])
    deltas = np.zeros((2, 2, NUM_CLASSES, 4), np.float32)
    meta = np.stack([_meta(), _meta()])
    out = tf.function(layer)([rois, probs, deltas, meta]).numpy()
    assert out.shape == (2, 4, 6)
    np.testing.assert_allclose(out[0, :2], [BOX_A + [1, 0.9], BOX_B + [2, 0.8]], atol=1e-6)
    np.testing.assert_allclose(out[1, 0], BOX_B + [3, 0.75], atol=1e-6)
    np.testing.assert_array_equal(out[1, 1:], 0.0)

    clone = DetectionLayer.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    sym = layer([keras.Input((10, 4), batch_size=2), keras.Input((10, NUM_CLASSES), batch_size=2),
                 keras.Input((10, NUM_CLASSES, 4), batch_size=2), keras.Input((12 + NUM_CLASSES,), batch_size=2)])
    assert tuple(sym.shape) == (2, 4, 6)
