"""Tests of mrcnn.layers.keypoint_target: heatmap labels on hand-built cases, RoI-to-GT matching."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.layers.keypoint_target import KeypointTargetLayer, keypoints_to_heatmap_labels

# RoI (y1, x1, y2, x2) = (0, 0.25, 0.5, 0.75) on a 4 x 4 heatmap: cells 0.125 wide in x and y.
ROI = [0.0, 0.25, 0.5, 0.75]


@pytest.mark.parametrize("point, label, weight", [
    ((0.45, 0.30, 2), 2 * 4 + 1, 1.0),   # x: (0.45 - 0.25) / 0.125 = 1.6 -> col 1; y: 2.4 -> row 2
    ((0.25, 0.00, 2), 0, 1.0),           # the RoI's corner: cell 0
    ((0.75, 0.50, 1), 15, 1.0),          # exactly on the far edges: last cell; occluded (1) still counts
    ((0.74, 0.49, 2), 15, 1.0),
    ((0.45, 0.30, 0), 0, 0.0),           # not labelled
    ((0.80, 0.30, 2), 0, 0.0),           # right of the RoI
    ((0.45, -0.01, 2), 0, 0.0),          # above it
])
def test_hand_built_heatmap_labels(point, label, weight):
    labels, weights = keypoints_to_heatmap_labels(tf.constant([[point]], tf.float32), tf.constant([ROI]), 4)
    assert labels.numpy().tolist() == [[label]]
    assert weights.numpy().tolist() == [[weight]]


def test_one_hot_index_matches_a_rasterised_target():
    # Independent check: paint the keypoint's cell on an m x m grid by geometry and take its flat index.
    rng = np.random.default_rng(0)
    m = 56
    roi = np.array([0.1, 0.2, 0.7, 0.65], np.float32)
    points = np.stack([rng.uniform(0.2, 0.65, 50), rng.uniform(0.1, 0.7, 50), np.full(50, 2.0)], axis=1)
    labels, weights = keypoints_to_heatmap_labels(tf.constant(points[None], tf.float32), tf.constant(roi[None]), m)
    edges_x = np.linspace(roi[1], roi[3], m + 1)
    edges_y = np.linspace(roi[0], roi[2], m + 1)
    for (x, y, _), label in zip(points, labels.numpy()[0]):
        grid = np.zeros((m, m), bool)
        grid[np.searchsorted(edges_y, y, side="right") - 1, np.searchsorted(edges_x, x, side="right") - 1] = True
        assert label == int(np.flatnonzero(grid.ravel())[0])
    assert weights.numpy().all()


def test_layer_matches_rois_to_their_gt_and_skips_crowd_and_negatives():
    k = 2
    # GT 0 left box, GT 1 right box, GT 2 a crowd region equal to RoI 1, GT 3 padding.
    gt_boxes = np.array([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0], [0, 0, 0, 0]]], np.float32)
    gt_class_ids = np.array([[1, 1, -1, 0]], np.int32)
    gt_keypoints = np.zeros((1, 4, k, 3), np.float32)
    gt_keypoints[0, 0] = [[0.1, 0.1, 2], [0.4, 0.4, 0]]   # second keypoint unlabelled
    gt_keypoints[0, 1] = [[0.6, 0.1, 2], [0.9, 0.4, 1]]
    gt_keypoints[0, 2] = [[0.6, 0.6, 2], [0.9, 0.9, 2]]
    rois = np.array([[[0.0, 0.0, 0.5, 0.5],       # = GT 0
                      [0.0, 0.55, 0.5, 1.0],      # best IoU with GT 1
                      [0.5, 0.5, 1.0, 1.0],       # on the crowd region (a negative in practice)
                      [0, 0, 0, 0]]], np.float32)  # padding
    roi_class_ids = np.array([[1, 1, 0, 0]], np.int32)
    layer = KeypointTargetLayer(heatmap_size=10)
    labels, weights = layer([rois, roi_class_ids, gt_class_ids, gt_boxes, gt_keypoints])
    assert labels.shape == (1, 4, k) and labels.dtype == tf.int32 and weights.dtype == tf.float32
    expected_weights = [[1, 0], [1, 1], [0, 0], [0, 0]]
    np.testing.assert_array_equal(weights.numpy()[0], expected_weights)
    # RoI 0: (0.1, 0.1) -> col 2, row 2 -> 22. RoI 1 (x from 0.55, width 0.45): (0.6, 0.1) -> col 1, row 2 -> 21;
    # (0.9, 0.4) -> col 7, row 8 -> 87.
    assert labels.numpy()[0, 0, 0] == 22
    assert labels.numpy()[0, 1].tolist() == [21, 87]
    assert KeypointTargetLayer.from_config(layer.get_config()).heatmap_size == 10
