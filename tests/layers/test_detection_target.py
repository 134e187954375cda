"""Tests for mrcnn.layers.DetectionTargetLayer."""

import keras
import numpy as np
import tensorflow as tf

from mrcnn import utils
from mrcnn.layers import DetectionTargetLayer

STD = np.array([0.1, 0.1, 0.2, 0.2], np.float32)
SIZE = 32  # image side in pixels
GT_PX = np.array([8, 8, 24, 24], np.float32)  # a 16 x 16 square object


def _norm(px) -> np.ndarray:
    return np.asarray(px, np.float32) / SIZE


def _full_mask(boxes_px) -> np.ndarray:
    """[SIZE, SIZE, G] rectangular masks filling each pixel box."""
    masks = np.zeros((SIZE, SIZE, len(boxes_px)), np.float32)
    for i, (y1, x1, y2, x2) in enumerate(np.asarray(boxes_px, int)):
        masks[y1:y2, x1:x2, i] = 1.0
    return masks


def _pad(rows: np.ndarray, count: int) -> np.ndarray:
    out = np.zeros((count,) + rows.shape[1:], rows.dtype)
    out[: len(rows)] = rows
    return out


def _run(layer, proposals, class_ids, boxes, masks):
    """Runs the layer on one image (adds the batch axis) and returns numpy outputs without it."""
    outputs = layer([proposals[None], np.asarray(class_ids, np.int32)[None], boxes[None], masks[None]])
    return [o.numpy()[0] for o in outputs]


def _row_index(rois: np.ndarray, box: np.ndarray) -> int:
    hits = np.where(np.all(np.abs(rois - box) < 1e-6, axis=1))[0]
    assert len(hits) == 1, f"{box} appears {len(hits)} times in rois"
    return int(hits[0])


# Proposals: the GT itself, the GT shifted left by a quarter (IoU 0.6), two background boxes.
SHIFTED_PX = np.array([8, 4, 24, 20], np.float32)
PROPOSALS = np.stack([_norm(GT_PX), _norm(SHIFTED_PX), _norm([0, 0, 4, 4]), _norm([26, 26, 32, 32])])
# Expected target of the shifted RoI at 16 x 16: the GT starts a quarter in, at column 4.
SHIFTED_TARGET = np.zeros((16, 16), np.float32)
SHIFTED_TARGET[:, 4:] = 1.0


def _check_basic_case(layer, masks):
    proposals = _pad(PROPOSALS, 6)
    gt_boxes = _pad(_norm(GT_PX)[None], 3)
    rois, class_ids, deltas, target_masks = _run(layer, proposals, [3, 0, 0], gt_boxes, masks)
    assert rois.shape == (8, 4) and class_ids.shape == (8,) and deltas.shape == (8, 4)
    assert target_masks.shape == (8, 16, 16)
    assert class_ids.dtype == np.int32 and target_masks.dtype == np.float32
    # 2 positives, then int(2 / 0.5) - 2 = 2 negatives, then padding.
    np.testing.assert_array_equal(class_ids, [3, 3, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(rois[4:], 0.0)
    assert {_row_index(rois, PROPOSALS[2]), _row_index(rois, PROPOSALS[3])} == {2, 3}
    same, shifted = _row_index(rois, PROPOSALS[0]), _row_index(rois, PROPOSALS[1])
    assert {same, shifted} == {0, 1}
    # Deltas decode back to the GT box.
    decoded = utils.apply_box_deltas(rois[:2], deltas[:2] * STD)
    np.testing.assert_allclose(decoded, np.tile(_norm(GT_PX), (2, 1)), atol=1e-6)
    np.testing.assert_allclose(deltas[same], 0.0, atol=1e-6)
    np.testing.assert_allclose(deltas[shifted], [0.0, 0.25 / 0.1, 0.0, 0.0], atol=1e-5)
    # Mask targets: the RoI equal to the GT box is all ones; the shifted one has the GT's edge
    # a quarter in; negatives and padding are zero.
    np.testing.assert_array_equal(target_masks[same], np.ones((16, 16)))
    np.testing.assert_array_equal(target_masks[shifted], SHIFTED_TARGET)
    np.testing.assert_array_equal(target_masks[2:], 0.0)
    np.testing.assert_array_equal(deltas[2:], 0.0)


def test_full_masks_targets():
    layer = DetectionTargetLayer(8, 0.5, STD, (16, 16), use_mini_mask=False)
    _check_basic_case(layer, _full_mask([GT_PX, [0, 0, 0, 0], [0, 0, 0, 0]]))


def test_mini_masks_targets():
    layer = DetectionTargetLayer(8, 0.5, STD, (16, 16), use_mini_mask=True)
    # A rectangular GT's mini mask is all ones (its box is its extent); padding GT masks are zero.
    masks = np.zeros((8, 8, 3), np.float32)
    masks[:, :, 0] = 1.0
    _check_basic_case(layer, masks)


def test_mini_mask_shape_is_cropped_not_just_box():
    # Mini mask with only its left half set: the RoI equal to the GT box gets the left half too.
    layer = DetectionTargetLayer(4, 0.5, STD, (16, 16), use_mini_mask=True)
    masks = np.zeros((8, 8, 1), np.float32)
    masks[:, :4, 0] = 1.0
    _, class_ids, _, target_masks = _run(layer, PROPOSALS[:1], [1], _norm(GT_PX)[None], masks)
    expected = np.zeros((16, 16), np.float32)
    expected[:, :8] = 1.0
    assert class_ids[0] == 1
    np.testing.assert_array_equal(target_masks[0], expected)


def test_full_mask_crop_follows_mask_content():
    # Full-image mask that is an L shape inside its box: the crop at RoI = box, 16 x 16 (one
    # pixel per bin), is exactly the mask's pixels.
    layer = DetectionTargetLayer(4, 0.5, STD, (16, 16), use_mini_mask=False)
    masks = np.zeros((SIZE, SIZE, 1), np.float32)
    masks[8:24, 8:12, 0] = 1.0
    masks[20:24, 8:24, 0] = 1.0
    _, _, _, target_masks = _run(layer, PROPOSALS[:1], [2], _norm(GT_PX)[None], masks)
    np.testing.assert_array_equal(target_masks[0], masks[8:24, 8:24, 0])


def test_no_gt_gives_finite_zero_padded_outputs():
    layer = DetectionTargetLayer(8, 0.33, STD, (14, 14), use_mini_mask=True)
    outputs = _run(layer, _pad(PROPOSALS, 10), np.zeros(4), np.zeros((4, 4), np.float32),
                   np.zeros((7, 7, 4), np.float32))
    for out in outputs:
        assert np.all(np.isfinite(out))
    rois, class_ids, deltas, masks = outputs
    # matterport: no positives -> no negatives are sampled either; all padding.
    np.testing.assert_array_equal(class_ids, 0)
    np.testing.assert_array_equal(deltas, 0.0)
    np.testing.assert_array_equal(masks, 0.0)
    np.testing.assert_array_equal(rois, 0.0)


def test_no_proposals_gives_zero_padded_outputs():
    layer = DetectionTargetLayer(5, 0.33, STD, (14, 14), use_mini_mask=True)
    outputs = _run(layer, np.zeros((6, 4), np.float32), [1], _norm(GT_PX)[None], np.ones((7, 7, 1), np.float32))
    assert [o.shape for o in outputs] == [(5, 4), (5,), (5, 4), (5, 14, 14)]
    for out in outputs:
        assert np.all(np.isfinite(out)) and np.all(out == 0)


def test_crowd_regions_are_not_targets_nor_negatives():
    crowd_px = np.array([0, 24, 8, 32], np.float32)
    positives = np.stack([_norm(GT_PX), _norm([8, 9, 24, 25]), _norm([9, 8, 25, 24])])
    # Background proposals overlapping the crowd region (one is the crowd box itself).
    near_crowd = np.stack([_norm(crowd_px), _norm([0, 22, 6, 30]), _norm([2, 26, 10, 32])])
    clean_negative = _norm([26, 0, 32, 6])
    proposals = np.concatenate([positives, near_crowd, clean_negative[None]])
    gt_boxes = np.stack([_norm(GT_PX), _norm(crowd_px)])
    masks = np.ones((8, 8, 2), np.float32)
    layer = DetectionTargetLayer(10, 0.5, STD, (8, 8), use_mini_mask=True)
    rois, class_ids, _, target_masks = _run(layer, proposals, [5, -1], gt_boxes, masks)
    # 3 positives of class 5 (never the crowd's -1), then the single allowed negative although
    # int(3 / 0.5) - 3 = 3 were wanted: the near-crowd proposals are excluded.
    np.testing.assert_array_equal(class_ids, [5, 5, 5, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(rois[3], clean_negative, atol=1e-7)
    np.testing.assert_array_equal(rois[4:], 0.0)
    np.testing.assert_array_equal(target_masks[:3], 1.0)


def test_sampling_ratio_and_positive_assignment_random():
    rng = np.random.default_rng(7)
    gt_px = np.array([[2, 2, 14, 14], [16, 10, 30, 28]], np.float32)
    gt_classes = np.array([1, 2], np.int32)
    # Many jittered copies of both GTs plus random boxes.
    jitter = rng.uniform(-2, 2, (30, 4)).astype(np.float32)
    near = np.concatenate([gt_px[0] + jitter[:15], gt_px[1] + jitter[15:]])
    yx = rng.uniform(0, 24, (30, 2))
    random_boxes = np.concatenate([yx, yx + rng.uniform(2, 8, (30, 2))], axis=1).astype(np.float32)
    proposals = _norm(np.concatenate([near, random_boxes]))
    layer = DetectionTargetLayer(20, 0.25, STD, (8, 8), use_mini_mask=True)
    rois, class_ids, deltas, _ = _run(layer, _pad(proposals, 70), _pad(gt_classes, 4),
                                      _pad(_norm(gt_px), 4), np.ones((8, 8, 4), np.float32))
    iou = utils.compute_overlaps(rois, _norm(gt_px))
    positive = class_ids > 0
    # int(20 * 0.25) = 5 positives, int(5 / 0.25) - 5 = 15 negatives: exactly T rows here.
    assert positive.sum() == 5 and np.all(positive[:5])
    assert np.all(np.any(rois[5:] != 0, axis=1))
    assert np.all(iou[5:].max(axis=1) < 0.5)
    best = iou[:5].argmax(axis=1)
    assert np.all(iou[:5].max(axis=1) >= 0.5)
    np.testing.assert_array_equal(class_ids[:5], gt_classes[best])
    decoded = utils.apply_box_deltas(rois[:5], deltas[:5] * STD)
    np.testing.assert_allclose(decoded, _norm(gt_px)[best], atol=1e-5)
    # Every output RoI is one of the proposals.
    for roi in rois:
        assert np.min(np.abs(proposals - roi).sum(axis=1)) < 1e-6


def test_batch_of_two_in_tf_function_and_config():
    layer = DetectionTargetLayer(6, 0.5, STD, (16, 16), use_mini_mask=False)
    proposals = np.stack([_pad(PROPOSALS, 5), np.zeros((5, 4), np.float32)])
    class_ids = np.array([[3, 0], [0, 0]], np.int32)
    gt_boxes = np.stack([_pad(_norm(GT_PX)[None], 2), np.zeros((2, 4), np.float32)])
    masks = np.stack([_full_mask([GT_PX, [0, 0, 0, 0]]), np.zeros((SIZE, SIZE, 2), np.float32)])
    rois, target_ids, deltas, target_masks = tf.function(layer)([proposals, class_ids, gt_boxes, masks])
    assert target_masks.shape == (2, 6, 16, 16)
    np.testing.assert_array_equal(target_ids.numpy(), [[3, 3, 0, 0, 0, 0], [0] * 6])
    np.testing.assert_array_equal(rois.numpy()[1], 0.0)

    clone = DetectionTargetLayer.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    sym = layer([keras.Input((5, 4), batch_size=2), keras.Input((2,), batch_size=2, dtype="int32"),
                 keras.Input((2, 4), batch_size=2), keras.Input((SIZE, SIZE, 2), batch_size=2)])
    assert [tuple(t.shape) for t in sym] == [(2, 6, 4), (2, 6), (2, 6, 4), (2, 6, 16, 16)]
    assert [t.dtype for t in sym] == ["float32", "int32", "float32", "float32"]


def test_negative_count_follows_positive_ratio():
    # One positive among plenty of negatives: int(1 / 0.25) - 1 = 3 negatives, the rest padding.
    background = _norm([[0, 0, 4, 4], [0, 28, 4, 32], [28, 0, 32, 4], [28, 28, 32, 32],
                        [0, 10, 4, 14], [10, 0, 14, 4], [28, 10, 32, 14], [10, 28, 14, 32]])
    proposals = np.concatenate([PROPOSALS[:1], background])
    layer = DetectionTargetLayer(10, 0.25, STD, (8, 8), use_mini_mask=True)
    rois, class_ids, _, _ = _run(layer, proposals, [1], _norm(GT_PX)[None], np.ones((8, 8, 1), np.float32))
    np.testing.assert_array_equal(class_ids, [1] + [0] * 9)
    assert np.all(np.any(rois[:4] != 0, axis=1))
    np.testing.assert_array_equal(rois[4:], 0.0)


def test_paper_sampling_fills_the_rois_with_negatives():
    # The same image as above with fill_negatives (ROI_SAMPLING "paper"): 1 positive, then the 8
    # negatives there are (the T - 1 = 9 left is more), then one padding row.
    background = _norm([[0, 0, 4, 4], [0, 28, 4, 32], [28, 0, 32, 4], [28, 28, 32, 32],
                        [0, 10, 4, 14], [10, 0, 14, 4], [28, 10, 32, 14], [10, 28, 14, 32]])
    proposals = np.concatenate([PROPOSALS[:1], background])
    layer = DetectionTargetLayer(10, 0.25, STD, (8, 8), use_mini_mask=True, fill_negatives=True)
    rois, class_ids, _, _ = _run(layer, proposals, [1], _norm(GT_PX)[None], np.ones((8, 8, 1), np.float32))
    np.testing.assert_array_equal(class_ids, [1] + [0] * 9)
    assert np.all(np.any(rois[:9] != 0, axis=1)) and not rois[9].any()
    # Without GT the negatives still fill: the classifier sees background RoIs.
    rois, class_ids, _, _ = _run(layer, proposals, [0], np.zeros((1, 4), np.float32), np.zeros((8, 8, 1), np.float32))
    assert not class_ids.any() and np.all(np.any(rois[:9] != 0, axis=1))
    assert DetectionTargetLayer.from_config(layer.get_config()).fill_negatives is True


def test_matterport_negative_count_is_not_cut_short_by_float_rounding():
    # 66 positives at ratio 0.33: floor(66 / 0.33) = 200 RoIs (float32 gave 199.99998, 199 RoIs).
    rng = np.random.default_rng(0)
    centres = rng.uniform(0.1, 0.9, (66, 2))
    positives = np.concatenate([centres - 0.05, centres + 0.05], axis=1).astype(np.float32)
    gt = positives.copy()  # each positive is its own GT: IoU 1
    negatives = np.tile(_norm([0, 0, 1, 1]), (300, 1)) + np.linspace(0, 0.5, 300, dtype=np.float32)[:, None]
    layer = DetectionTargetLayer(200, 0.33, STD, (8, 8), use_mini_mask=True, mask_targets=False)
    rois, class_ids, _, _ = _run(layer, np.concatenate([positives, negatives]), np.ones(66, np.int32), gt,
                                 np.ones((8, 8, 66), np.float32))
    assert (class_ids > 0).sum() == 66 and np.any(rois != 0, axis=1).sum() == 200


def test_add_gt_boxes_gives_a_positive_without_matching_proposals():
    # Only background proposals: matterport sampling gives nothing; with GT added, the GT box
    # itself is a positive whose target mask is the whole GT and whose deltas are zero.
    proposals = _pad(np.stack([_norm([0, 0, 4, 4]), _norm([26, 26, 32, 32])]), 6)
    gt_boxes = _pad(_norm(GT_PX)[None], 3)
    masks = _full_mask([GT_PX, [0, 0, 1, 1], [0, 0, 1, 1]])
    plain = DetectionTargetLayer(8, 0.5, STD, (16, 16), use_mini_mask=False)
    _, class_ids, _, _ = _run(plain, proposals, [2, 0, 0], gt_boxes, masks)
    assert not (class_ids > 0).any()
    with_gt = DetectionTargetLayer(8, 0.5, STD, (16, 16), use_mini_mask=False, add_gt_boxes=True)
    rois, class_ids, deltas, target_masks = _run(with_gt, proposals, [2, 0, 0], gt_boxes, masks)
    row = _row_index(rois, _norm(GT_PX))
    assert class_ids[row] == 2
    np.testing.assert_allclose(deltas[row], 0.0, atol=1e-6)
    np.testing.assert_array_equal(target_masks[row], np.ones((16, 16), np.float32))
    assert with_gt.get_config()["add_gt_boxes"] is True


def test_without_mask_targets_the_sampling_is_the_same_and_masks_are_zero():
    # MASK_HEAD = False: no crop is computed, the RoIs/classes/deltas are those of the full layer.
    proposals = _pad(PROPOSALS, 6)
    gt_boxes = _pad(_norm(GT_PX)[None], 3)
    masks = _full_mask([GT_PX, [0, 0, 0, 0], [0, 0, 0, 0]])
    outputs = {}
    for with_masks in (True, False):
        tf.random.set_seed(3)
        layer = DetectionTargetLayer(8, 0.5, STD, (16, 16), use_mini_mask=False, mask_targets=with_masks)
        outputs[with_masks] = _run(layer, proposals, [3, 0, 0], gt_boxes, masks)
        assert DetectionTargetLayer.from_config(layer.get_config()).mask_targets is with_masks
    for full, boxes_only in zip(outputs[True][:3], outputs[False][:3]):
        np.testing.assert_array_equal(full, boxes_only)
    assert outputs[True][3].any()
    assert outputs[False][3].shape == (8, 16, 16)
    np.testing.assert_array_equal(outputs[False][3], 0.0)


def test_sampling_is_reproducible_for_a_seed_with_several_images():
    """The per-image shuffles draw from stateful kernels shared by the images of a batch: run in
    parallel (map_fn's default) the images raced for them and a seeded run was not repeatable."""
    rng = np.random.default_rng(0)
    images, count, gt = 8, 200, 3
    boxes = np.tile(np.array([[0.1, 0.1, 0.5, 0.5], [0.4, 0.4, 0.9, 0.9], [0.2, 0.5, 0.6, 0.9]], np.float32),
                    (images, 1, 1))
    # Jittered copies of the GT boxes: many positives and negatives to sample from in every image.
    proposals = (boxes[:, rng.integers(0, gt, count)] + rng.normal(0, 0.08, (images, count, 4))).astype(np.float32)
    class_ids = np.ones((images, gt), np.int32)
    masks = np.ones((images, SIZE, SIZE, gt), np.float32)
    layer = DetectionTargetLayer(16, 0.33, STD, (8, 8), use_mini_mask=False)
    runs = []
    for _ in range(6):
        tf.random.set_seed(0)
        sample = tf.function(lambda *args: layer(list(args)))  # a new graph: its ops seeded afresh
        runs.append(sample(proposals, class_ids, boxes, masks)[0].numpy())
    for rois in runs[1:]:
        np.testing.assert_array_equal(rois, runs[0])
    assert not np.array_equal(runs[0][0], runs[0][1])  # the images did sample differently
