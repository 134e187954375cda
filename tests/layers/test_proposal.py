"""Tests for mrcnn.layers.ProposalLayer."""

import keras
import numpy as np
import tensorflow as tf

from mrcnn import utils
from mrcnn.layers import ProposalLayer

STD = np.array([0.1, 0.1, 0.2, 0.2], np.float32)


def _probs(fg: np.ndarray) -> np.ndarray:
    fg = np.asarray(fg, np.float32)
    return np.stack([1.0 - fg, fg], axis=-1)


def _reference(probs, rpn_bbox, anchors, proposal_count, nms_threshold, pre_nms_limit):
    """numpy pipeline for one image: top-k, decode, clip, NMS, pad."""
    scores = probs[:, 1]
    order = np.argsort(-scores, kind="stable")[: min(pre_nms_limit, len(scores))]
    boxes = utils.apply_box_deltas(anchors[order], rpn_bbox[order] * STD)
    boxes = np.clip(boxes, 0.0, 1.0)
    keep = utils.non_max_suppression(boxes, scores[order], nms_threshold)[:proposal_count]
    out = np.zeros((proposal_count, 4), np.float32)
    out[: len(keep)] = boxes[keep]
    return out


# A and B overlap (IoU ~0.9), C and D barely (IoU 0.14).
ANCHORS = np.array(
    [[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3], [0.5, 0.5, 0.7, 0.7], [0.6, 0.6, 0.8, 0.8]], np.float32
)
SCORES = np.array([0.9, 0.8, 0.7, 0.1], np.float32)


def test_keeps_best_non_overlapping_boxes_and_pads():
    layer = ProposalLayer(proposal_count=6, nms_threshold=0.7, pre_nms_limit=100, rpn_bbox_std_dev=STD)
    out = layer([_probs(SCORES)[None], np.zeros((1, 4, 4), np.float32), ANCHORS[None]]).numpy()
    assert out.shape == (1, 6, 4)
    np.testing.assert_allclose(out[0, :3], ANCHORS[[0, 2, 3]], atol=1e-6)
    np.testing.assert_array_equal(out[0, 3:], 0.0)


def test_proposal_count_truncates_by_score():
    layer = ProposalLayer(proposal_count=2, nms_threshold=0.7, pre_nms_limit=100, rpn_bbox_std_dev=STD)
    out = layer([_probs(SCORES)[None], np.zeros((1, 4, 4), np.float32), ANCHORS[None]]).numpy()
    np.testing.assert_allclose(out[0], ANCHORS[[0, 2]], atol=1e-6)


def test_pre_nms_limit_drops_low_scores_before_nms():
    # Only A and B (top 2) enter NMS; B is suppressed by A.
    layer = ProposalLayer(proposal_count=4, nms_threshold=0.7, pre_nms_limit=2, rpn_bbox_std_dev=STD)
    out = layer([_probs(SCORES)[None], np.zeros((1, 4, 4), np.float32), ANCHORS[None]]).numpy()
    np.testing.assert_allclose(out[0, 0], ANCHORS[0], atol=1e-6)
    np.testing.assert_array_equal(out[0, 1:], 0.0)


def test_deltas_scaled_by_std_and_clipped():
    anchors = np.array([[[0.2, 0.2, 0.4, 0.4], [0.8, 0.8, 1.0, 1.0]]], np.float32)
    # First: move down by half its height (dy = 0.5 -> 0.5 / 0.1 = 5 before the std-dev).
    # Second: double its size (log 2 / 0.2), then it sticks out of the image and is clipped.
    rpn_bbox = np.array([[[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, np.log(2.0) / 0.2, np.log(2.0) / 0.2]]], np.float32)
    layer = ProposalLayer(proposal_count=2, nms_threshold=0.7, pre_nms_limit=10, rpn_bbox_std_dev=STD)
    out = layer([_probs([[0.9, 0.8]]), rpn_bbox, anchors]).numpy()
    np.testing.assert_allclose(out[0, 0], [0.3, 0.2, 0.5, 0.4], atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0.7, 0.7, 1.0, 1.0], atol=1e-6)


def test_random_batch_matches_numpy_reference_in_tf_function():
    rng = np.random.default_rng(3)
    batch, count = 2, 60
    yx = rng.uniform(0.0, 0.8, (batch, count, 2))
    hw = rng.uniform(0.05, 0.3, (batch, count, 2))
    anchors = np.concatenate([yx, yx + hw], axis=-1).astype(np.float32)
    probs = _probs(rng.permutation(count * batch).reshape(batch, count) / (count * batch))
    rpn_bbox = rng.normal(0.0, 1.0, (batch, count, 4)).astype(np.float32)
    layer = ProposalLayer(proposal_count=25, nms_threshold=0.5, pre_nms_limit=40, rpn_bbox_std_dev=STD)
    out = tf.function(layer)([probs, rpn_bbox, anchors]).numpy()
    for b in range(batch):
        expected = _reference(probs[b], rpn_bbox[b], anchors[b], 25, 0.5, 40)
        np.testing.assert_allclose(out[b], expected, atol=1e-5)
    # The two images differ: no mixing across the batch.
    assert not np.allclose(out[0], out[1])


def test_functional_model_static_shape_and_config_round_trip():
    probs = keras.Input((None, 2), batch_size=2)
    deltas = keras.Input((None, 4), batch_size=2)
    anchors = keras.Input((None, 4), batch_size=2)
    layer = ProposalLayer(7, 0.6, 50, STD, name="ROI")
    out = layer([probs, deltas, anchors])
    assert tuple(out.shape) == (2, 7, 4) and out.dtype == "float32"
    clone = ProposalLayer.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert keras.saving.get_registered_object("mrcnn>ProposalLayer") is ProposalLayer


def test_mixed_precision_policy_keeps_float32_boxes():
    anchors = np.array([[[0.1234567, 0.2345678, 0.3456789, 0.4567891]]], np.float32)
    layer = ProposalLayer(2, 0.7, 10, STD, dtype="mixed_float16")
    out = layer([_probs([[0.9]]), np.zeros((1, 1, 4), np.float32), anchors])
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy()[0, 0], anchors[0, 0], rtol=1e-7)
