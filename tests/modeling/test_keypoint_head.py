"""Tests of mrcnn.modeling.keypoint_head: the head's shapes and names, reading keypoints off heatmaps."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.modeling.keypoint_head import KeypointHead, heatmaps_to_keypoints
from mrcnn.weights import find_weight_layers


def test_head_shapes_names_and_paper_defaults():
    head = KeypointHead(num_keypoints=17)
    assert head.num_convs == 8 and head.conv_channels == 512  # the paper's head
    small = KeypointHead(num_keypoints=5, num_convs=2, conv_channels=16)
    logits = small(tf.random.stateless_normal([2, 3, 7, 7, 8], seed=(1, 2)))
    assert logits.shape == (2, 3, 28, 28, 5) and logits.dtype == tf.float32
    names = set(find_weight_layers(small))
    assert names == {"mrcnn_keypoint_conv1", "mrcnn_keypoint_conv2", "mrcnn_keypoint_deconv"}
    # Heatmaps start near uniform (small output init): the first loss is ~log(m^2), not tens.
    assert float(tf.reduce_max(tf.abs(logits))) < 0.5
    assert KeypointHead.from_config(small.get_config()).conv_channels == 16


def test_head_output_is_per_roi():
    head = KeypointHead(num_keypoints=3, num_convs=2, conv_channels=8)
    pooled = tf.random.stateless_normal([1, 4, 7, 7, 8], seed=(3, 4))
    together = head(pooled)
    alone = head(pooled[:, 2:3])
    np.testing.assert_allclose(alone.numpy()[0, 0], together.numpy()[0, 2], rtol=1e-4, atol=1e-6)


def test_head_rejects_wrong_rank():
    with pytest.raises(ValueError, match="keypoint_head"):
        KeypointHead(num_keypoints=3, name="keypoint_head")(tf.zeros([2, 7, 7, 8]))


def test_heatmaps_to_keypoints_reads_the_argmax_cell_centre():
    m, k = 4, 2
    logits = np.zeros((1, 1, m, m, k), np.float32)
    logits[0, 0, 1, 3, 0] = 10.0  # keypoint 0: row 1, col 3
    logits[0, 0, 2, 0, 1] = 10.0  # keypoint 1: row 2, col 0
    boxes = np.array([[[0.2, 0.4, 0.6, 0.8]]], np.float32)  # cells 0.1 x 0.1
    out = heatmaps_to_keypoints(tf.constant(logits), tf.constant(boxes)).numpy()
    assert out.shape == (1, 1, k, 3)
    np.testing.assert_allclose(out[0, 0, 0, :2], [0.4 + 3.5 * 0.1, 0.2 + 1.5 * 0.1], atol=1e-6)
    np.testing.assert_allclose(out[0, 0, 1, :2], [0.4 + 0.5 * 0.1, 0.2 + 2.5 * 0.1], atol=1e-6)
    expected_score = np.exp(10.0) / (np.exp(10.0) + m * m - 1)
    np.testing.assert_allclose(out[0, 0, :, 2], [expected_score] * k, rtol=1e-5)
