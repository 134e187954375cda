"""Tests of mrcnn.data.targets: RPN anchor labelling/targets and load_image_gt."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn import utils
from mrcnn.config import Config
from mrcnn.data import augment, targets
from tests.reference.rpn_targets_ref import iou as ref_iou
from tests.reference.rpn_targets_ref import label_anchors_ref
from tests.reference.toy_datasets import SquaresDataset


class TinyConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 4
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    MAX_GT_INSTANCES = 6


def tiny_anchors(config=None):
    config = config or TinyConfig()
    shapes = utils.compute_backbone_shapes(config, config.IMAGE_SHAPE)
    return utils.generate_pyramid_anchors(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS, shapes,
                                          config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE)


def random_gt(rng, count, size=128, allow_crowd=True, allow_padding=True):
    y1 = rng.integers(-10, size - 4, count)
    x1 = rng.integers(-10, size - 4, count)
    boxes = np.stack([y1, x1, y1 + rng.integers(2, 70, count), x1 + rng.integers(2, 70, count)], axis=1)
    choices = [1, 2, 3] + ([-1, -2] if allow_crowd else []) + ([0] if allow_padding else [])
    return rng.choice(choices, count).astype(np.int32), boxes


# ------------------------------------------------------------------------------------------------
# Labelling before subsampling, against the per-anchor reference
@given(st.integers(0, 2**31 - 1), st.integers(0, 7), st.sampled_from([None, 1, 7, 64, 100000]),
       st.sampled_from([None, 1, 5, 100000]), st.booleans())
@settings(max_examples=15, deadline=None)
def test_label_anchors_matches_reference(seed, count, block, max_pairs, shuffle_anchors):
    rng = np.random.default_rng(seed)
    anchors = tiny_anchors()
    if shuffle_anchors:  # blocks are then not spatially coherent: pruning must still be exact
        anchors = anchors[rng.permutation(len(anchors))]
    gt_class_ids, gt_boxes = random_gt(rng, count)
    saved = targets._ANCHOR_BLOCK, targets._MAX_PAIRS
    try:
        targets._ANCHOR_BLOCK = block or saved[0]
        targets._MAX_PAIRS = max_pairs or saved[1]
        match, gt_index = targets.label_anchors(anchors, gt_class_ids, gt_boxes)
    finally:
        targets._ANCHOR_BLOCK, targets._MAX_PAIRS = saved
    ref_match, ref_index = label_anchors_ref(anchors.tolist(), gt_class_ids.tolist(), gt_boxes.tolist())
    assert match.dtype == np.int32 and match.shape == (len(anchors),)
    np.testing.assert_array_equal(match, ref_match)
    np.testing.assert_array_equal(gt_index, ref_index)


def test_label_anchors_exact_thresholds_and_ties():
    # Hand-made anchors with IoUs exactly 0.7 (positive), 0.3 (neutral) and a tie for the best anchor.
    gt = np.array([[0, 0, 10, 10]])
    anchors = np.array([
        [0, 0, 10, 7],  # IoU 0.7 -> positive
        [0, 0, 10, 3],  # IoU 0.3 -> neutral (not < 0.3)
        [0, 0, 10, 2.9],  # IoU 0.29 -> negative
        [50, 50, 60, 60],  # no overlap -> negative
    ], dtype=np.float64)
    match, index = targets.label_anchors(anchors, [1], gt)
    assert match.tolist() == [1, 0, -1, -1]
    assert index.tolist() == [0, 0, 0, -1]
    # Two anchors tied as the GT's best (IoU 0.5 each): both positive.
    tied = np.array([[0, 0, 10, 5], [0, 5, 10, 10], [0, 0, 10, 1]], dtype=np.float64)
    assert targets.label_anchors(tied, [1], gt)[0].tolist() == [1, 1, -1]


def test_gt_overlapping_no_anchor_makes_no_positive():
    # matterport would mark every anchor with IoU 0 "best" for such a GT; we do not.
    anchors = tiny_anchors()
    match, _ = targets.label_anchors(anchors, [1], np.array([[1000, 1000, 1010, 1010]]))
    assert not np.any(match == 1) and np.all(match == -1)


def test_no_gt_gives_all_negative_and_crowd_protects():
    anchors = tiny_anchors()
    match, index = targets.label_anchors(anchors, np.zeros([0], np.int32), np.zeros([0, 4]))
    assert np.all(match == -1) and np.all(index == -1)
    crowd = np.array([[20, 20, 60, 90]])
    match, _ = targets.label_anchors(anchors, [-1], crowd)
    crowd_iou = utils.compute_overlaps(anchors, crowd)[:, 0]
    assert np.all(match[crowd_iou >= 0.001] == 0)
    assert np.all(match[crowd_iou < 0.001] == -1)
    assert not np.any(match == 1)


def test_padding_entries_are_ignored():
    anchors = tiny_anchors()
    rng = np.random.default_rng(4)
    class_ids, boxes = random_gt(rng, 5, allow_crowd=False, allow_padding=False)
    padded_ids = np.concatenate([class_ids, [0, 0]])
    padded_boxes = np.concatenate([boxes, [[0, 0, 0, 0], [10, 10, 50, 50]]])
    a = targets.label_anchors(anchors, class_ids, boxes)
    b = targets.label_anchors(anchors, padded_ids, padded_boxes)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ------------------------------------------------------------------------------------------------
# build_rpn_targets
class NoSubsampling(TinyConfig):
    RPN_TRAIN_ANCHORS_PER_IMAGE = 100000


def test_build_rpn_targets_without_subsampling_and_deltas():
    config = NoSubsampling()
    anchors = tiny_anchors(config)
    rng = np.random.default_rng(11)
    class_ids, boxes = random_gt(rng, 6)
    rpn_match, rpn_bbox = targets.build_rpn_targets(anchors, class_ids, boxes, config, rng=rng)
    ref_match, ref_index = label_anchors_ref(anchors.tolist(), class_ids.tolist(), boxes.tolist())
    np.testing.assert_array_equal(rpn_match, ref_match)
    assert rpn_bbox.shape == (config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4) and rpn_bbox.dtype == np.float32
    positives = np.flatnonzero(rpn_match == 1)
    assert positives.size > 0
    # Deltas in positive order, times the std dev, turn each positive anchor into its best GT box.
    deltas = rpn_bbox[: positives.size] * config.RPN_BBOX_STD_DEV
    refined = utils.apply_box_deltas(anchors[positives], deltas)
    expected = boxes[np.asarray(ref_index)[positives]]
    np.testing.assert_allclose(refined, expected, atol=1e-3)
    assert not rpn_bbox[positives.size :].any()
    # The best GT of each positive really has the anchor's best IoU.
    for i in positives[:20]:
        best = max(ref_iou(anchors[i], b) for c, b in zip(class_ids, boxes) if c > 0)
        assert ref_iou(anchors[i], boxes[ref_index[i]]) == best


@given(st.integers(0, 2**31 - 1), st.integers(1, 12), st.sampled_from([8, 32, 256]))
@settings(max_examples=15, deadline=None)
def test_subsampling_limits_counts_and_keeps_labels(seed, count, per_image):
    class Config_(TinyConfig):
        RPN_TRAIN_ANCHORS_PER_IMAGE = per_image

    config = Config_()
    anchors = tiny_anchors(config)
    rng = np.random.default_rng(seed)
    class_ids, boxes = random_gt(rng, count)
    full, _ = targets.label_anchors(anchors, class_ids, boxes)
    match, bbox = targets.build_rpn_targets(anchors, class_ids, boxes, config, rng=np.random.default_rng(seed))
    positives, negatives = np.sum(match == 1), np.sum(match == -1)
    assert positives <= per_image // 2
    assert positives + negatives <= per_image
    assert positives == min(np.sum(full == 1), per_image // 2)
    assert negatives == min(np.sum(full == -1), per_image - positives)
    # Subsampling only turns labels neutral, never flips them.
    assert np.all((match == full) | (match == 0))
    # Crowd-overlapping anchors are never negative.
    crowd = boxes[class_ids < 0]
    if len(crowd):
        crowd_iou = utils.compute_overlaps(anchors, crowd).max(axis=1)
        assert not np.any(match[crowd_iou >= 0.001] == -1)
    assert np.count_nonzero(bbox.any(axis=1)) <= positives
    # Same rng seed -> same result.
    again, _ = targets.build_rpn_targets(anchors, class_ids, boxes, config, rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(match, again)


def test_rpn_targets_no_instances():
    config = TinyConfig()
    match, bbox = targets.build_rpn_targets(tiny_anchors(config), np.zeros([0], np.int32), np.zeros([0, 4]), config,
                                            rng=np.random.default_rng(0))
    assert not np.any(match == 1)
    assert np.sum(match == -1) == config.RPN_TRAIN_ANCHORS_PER_IMAGE
    assert not bbox.any()


def test_label_anchors_shape_errors():
    with pytest.raises(ValueError, match="gt_class_ids"):
        targets.label_anchors(tiny_anchors(), [1, 2], np.zeros((1, 4)))
    with pytest.raises(ValueError, match="anchors"):
        targets.label_anchors(np.zeros((5, 3)), [1], np.zeros((1, 4)))


# ------------------------------------------------------------------------------------------------
# load_image_gt
@pytest.mark.parametrize("use_mini_mask", [True, False])
def test_load_image_gt_shapes_and_alignment(use_mini_mask):
    class Cfg(TinyConfig):
        USE_MINI_MASK = use_mini_mask
        MINI_MASK_SHAPE = (28, 28)

    config = Cfg()
    dataset = SquaresDataset(3, 96, 128, instances=(2, 4), seed=5)
    for image_id in dataset.image_ids:
        image, meta, class_ids, bbox, mask = targets.load_image_gt(dataset, config, image_id,
                                                                   rng=np.random.default_rng(0))
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert meta.shape == (config.IMAGE_META_SIZE,) and meta.dtype == np.float32
        parsed = utils.parse_image_meta(meta)
        assert parsed["image_id"] == image_id
        assert parsed["original_image_shape"].tolist() == [96, 128, 3]
        assert parsed["window"].tolist() == [16, 0, 112, 128]  # 96 x 128 fits at scale 1, padded to 128
        assert parsed["active_class_ids"].tolist() == [1, 1, 1, 1]
        assert class_ids.dtype == np.int32 and bbox.dtype == np.int32
        assert mask.dtype == bool
        assert mask.shape == ((28, 28) if use_mini_mask else (128, 128)) + (len(class_ids),)
        # Boxes match the (unoccluded) coloured rectangles, shifted by the padding.
        expected = [tuple(b) for b in utils.extract_bboxes(dataset.load_mask(image_id)[0])]
        assert [tuple(b) for b in bbox - [16, 0, 16, 0]] == expected
        if not use_mini_mask:
            np.testing.assert_array_equal(utils.extract_bboxes(mask), bbox)


class _Overridden(SquaresDataset):
    """SquaresDataset whose load_image / load_mask outputs go through `image_fn` / `class_fn`."""

    def __init__(self, image_fn=None, class_fn=None):
        super().__init__(1, 96, 128, instances=2, seed=5)
        self.prepare()
        self.image_fn, self.class_fn = image_fn or (lambda image: image), class_fn or (lambda ids: ids)

    def load_image(self, image_id):
        return self.image_fn(super().load_image(image_id))

    def load_mask(self, image_id):
        masks, class_ids = super().load_mask(image_id)
        return masks, self.class_fn(class_ids)


@pytest.mark.parametrize("bad", [0, 4, 9])
def test_load_image_gt_names_class_ids_outside_the_config(bad):
    dataset = _Overridden(class_fn=lambda ids: np.array([ids[0], bad]))
    with pytest.raises(ValueError, match=rf"image 0 \(.*\): load_mask gave class ids \[{bad}\], outside 1..3 "
                                         r"\(NUM_CLASSES = 4"):
        targets.load_image_gt(dataset, TinyConfig(), 0, rng=np.random.default_rng(0))
    crowd = _Overridden(class_fn=lambda ids: np.array([ids[0], -2]))  # negative: a crowd region, allowed
    assert targets.load_image_gt(crowd, TinyConfig(), 0, rng=np.random.default_rng(0))[2][1] == -2


@pytest.mark.parametrize("convert", [lambda rgb: rgb[:, :, 0], lambda rgb: rgb[:, :, :1],
                                     lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])],
                         ids=["gray", "gray1", "rgba"])
def test_load_image_gt_conforms_grayscale_and_rgba_as_detect_does(convert):
    plain = targets.load_image_gt(_Overridden(), TinyConfig(), 0, rng=np.random.default_rng(0))[0]
    image = targets.load_image_gt(_Overridden(image_fn=convert), TinyConfig(), 0, rng=np.random.default_rng(0))[0]
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    expected = convert(plain)  # the same conversion of the resized image (nearest-free: values are flat colours)
    expected = expected[:, :, :3] if expected.ndim == 3 and expected.shape[-1] == 4 else expected
    np.testing.assert_array_equal(image, np.broadcast_to(expected.reshape(128, 128, -1), image.shape))


def test_load_image_gt_names_a_wrong_channel_count_and_nan_pixels_and_warns_about_0_1_floats():
    two = _Overridden(image_fn=lambda rgb: rgb[:, :, :2])
    with pytest.raises(ValueError, match=r"image 0 \(.*\) has 2 channels, the config expects 3 \(IMAGE_CHANNEL_COUNT\)"):
        targets.load_image_gt(two, TinyConfig(), 0, rng=np.random.default_rng(0))
    def with_nan(rgb):
        image = rgb.astype(np.float32)
        image[3, 4, 1] = np.nan
        return image

    with pytest.raises(ValueError, match=r"image 0 \(.*\): load_image gave NaN or infinite pixel values"):
        targets.load_image_gt(_Overridden(image_fn=with_nan), TinyConfig(), 0, rng=np.random.default_rng(0))
    unit = _Overridden(image_fn=lambda rgb: rgb.astype(np.float32) / 255)
    with pytest.warns(UserWarning, match=r"float image with values in \[0, 1\]"):
        targets.load_image_gt(unit, TinyConfig(), 0, rng=np.random.default_rng(0))
    # 16 bits trained as they are would be 0..65535 where detect warns and inference expects 0..255.
    wide = _Overridden(image_fn=lambda rgb: rgb.astype(np.uint16) * 257)
    with pytest.warns(UserWarning, match=r"uint16 image with values above 255.*to_rgb_uint8") as caught:
        targets.load_image_gt(wide, TinyConfig(), 0, rng=np.random.default_rng(0))
    assert {w.filename for w in caught} == {__file__}
    empty = _Overridden(image_fn=lambda rgb: rgb[:0])
    with pytest.raises(ValueError, match=r"image 0 \(.*\): load_image gave an image of shape \(0, 128, 3\)"):
        targets.load_image_gt(empty, TinyConfig(), 0, rng=np.random.default_rng(0))


def test_load_image_gt_refuses_fractional_class_ids_and_names_generated_images():
    fractional = _Overridden(class_fn=lambda ids: ids.astype(np.float32) + 0.7)
    with pytest.raises(ValueError, match=r"load_mask gave class ids that are not whole numbers: \[1.7"):
        targets.load_image_gt(fractional, TinyConfig(), 0, rng=np.random.default_rng(0))
    whole = _Overridden(class_fn=lambda ids: ids.astype(np.float32))  # 1.0, 2.0: fine
    assert targets.load_image_gt(whole, TinyConfig(), 0, rng=np.random.default_rng(0))[2].dtype == np.int32
    generated = _Overridden()
    generated.image_info[0]["path"] = None  # images made in code have no file
    assert generated.image_reference(0) == f"{generated.image_info[0]['source']}:{generated.image_info[0]['id']}"


class _Labelled(SquaresDataset):
    """SquaresDataset through the label-image path (its squares overlap: the later one wins, in both paths)."""

    def load_label_mask(self, image_id):
        masks, class_ids = self.load_mask(image_id)
        labels = np.zeros(masks.shape[:2], np.int32)
        for k in range(masks.shape[-1]):
            labels[masks[:, :, k]] = k + 1
        return labels, class_ids


@pytest.mark.parametrize("labelled", [False, True])
def test_load_image_gt_use_mini_mask_overrides_the_config(labelled):
    """matterport's evaluation idiom: load_image_gt(..., use_mini_mask=False) gives full-size masks."""
    dataset = (_Labelled if labelled else SquaresDataset)(1, 96, 128, instances=(1, 1), seed=5)
    dataset.prepare()
    config = TinyConfig()
    assert config.USE_MINI_MASK
    mini = targets.load_image_gt(dataset, config, 0, rng=np.random.default_rng(0))[4]
    full = targets.load_image_gt(dataset, config, 0, rng=np.random.default_rng(0), use_mini_mask=False)[4]
    assert mini.shape == tuple(config.MINI_MASK_SHAPE) + (1,) and full.shape == (128, 128, 1)
    assert full.sum() == dataset.load_mask(0)[0].sum()  # scale 1: the same pixels, padded


def test_load_image_gt_drops_vanished_instances_and_marks_active_classes():
    dataset = SquaresDataset(1, 96, 128, instances=2, seed=1)
    dataset.add_class("other", 1, "other thing")  # a class the image's source does not have
    # One instance with an empty mask: it must disappear.
    dataset.image_info[0]["shapes"].append((2, (255, 255, 255), (5, 5, 5, 9)))
    dataset.prepare()
    config = TinyConfig()
    _, meta, class_ids, bbox, mask = targets.load_image_gt(dataset, config, 0, rng=np.random.default_rng(0))
    assert len(class_ids) == 2 and mask.shape[-1] == 2 and bbox.shape == (2, 4)
    # Classes: BG, 3 toy classes, 1 "other" -> NUM_CLASSES of the dataset is 5.
    assert utils.parse_image_meta(meta[None])["active_class_ids"].tolist() == [[1, 1, 1, 1, 0]]


def test_load_image_gt_crop_mode_and_determinism():
    class CropConfig(TinyConfig):
        IMAGE_RESIZE_MODE = "crop"
        IMAGE_MIN_DIM = 64
        USE_MINI_MASK = False

    config = CropConfig()
    dataset = SquaresDataset(2, 96, 128, instances=(3, 5), seed=2)
    a = targets.load_image_gt(dataset, config, 1, rng=np.random.default_rng(9))
    b = targets.load_image_gt(dataset, config, 1, rng=np.random.default_rng(9))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    image, meta, class_ids, bbox, mask = a
    assert image.shape == (64, 64, 3) and mask.shape[:2] == (64, 64)
    assert np.all(mask.any(axis=(0, 1)))  # cropped-away instances were dropped
    np.testing.assert_array_equal(utils.extract_bboxes(mask), bbox)


def test_load_image_gt_with_augmentation_keeps_alignment():
    # Flips and quarter turns at scale 1 are pixel-exact: every mask must cover exactly the pixels of
    # one colour, and that colour must appear nowhere else.
    class Cfg(TinyConfig):
        USE_MINI_MASK = False

    config = Cfg()
    dataset = SquaresDataset(4, 96, 128, instances=(1, 3), seed=3)
    augmentation = augment.Compose([augment.HorizontalFlip(0.5), augment.VerticalFlip(0.5), augment.Rot90()])
    shapes_seen = set()
    for image_id in dataset.image_ids:
        for seed in range(4):
            image, meta, _, bbox, mask = targets.load_image_gt(dataset, config, image_id, augmentation=augmentation,
                                                               rng=np.random.default_rng(seed))
            shapes_seen.add(tuple(utils.parse_image_meta(meta)["original_image_shape"]))
            assert mask.shape[-1] > 0
            for i in range(mask.shape[-1]):
                colours = np.unique(image[mask[:, :, i]].reshape(-1, 3), axis=0)
                assert len(colours) == 1
                same_colour = np.all(image == colours[0], axis=-1)
                np.testing.assert_array_equal(same_colour, mask[:, :, i])
            np.testing.assert_array_equal(utils.extract_bboxes(mask), bbox)
    assert shapes_seen == {(96, 128, 3), (128, 96, 3)}  # rot90 turned some images


# ------------------------------------------------------------------------------------------------
# load_image_gt with keypoints (Keypoint R-CNN)
def _stick_figures(count=3, size=96, seed=2):
    from mrcnn.data.stick_figures import StickFiguresDataset

    dataset = StickFiguresDataset()
    dataset.load_stick_figures(count, size, size + 32, seed=seed, max_figures=2)
    dataset.prepare()
    return dataset


def _keypoint_config(**fields):
    from mrcnn.data.stick_figures import FLIP_MAP, KEYPOINT_NAMES

    class Cfg(TinyConfig):
        NUM_CLASSES = 2
        KEYPOINT_HEAD = True
        NUM_KEYPOINTS = len(KEYPOINT_NAMES)
        KEYPOINT_FLIP_MAP = FLIP_MAP
        USE_MINI_MASK = False

    return Cfg().update(**fields) if fields else Cfg()


@pytest.mark.parametrize("mode, dims", [("square", (64, 128)), ("crop", (64, 64)), ("pad64", (128, 128))])
def test_load_image_gt_moves_keypoints_with_the_resize(mode, dims):
    config = _keypoint_config(IMAGE_RESIZE_MODE=mode, IMAGE_MIN_DIM=dims[0], IMAGE_MAX_DIM=dims[1])
    dataset = _stick_figures()
    for image_id in dataset.image_ids:
        out = targets.load_image_gt(dataset, config, image_id, rng=np.random.default_rng(1), with_keypoints=True)
        assert len(out) == 6
        image, meta, class_ids, bbox, mask, keypoints = out
        assert keypoints.shape == (len(class_ids), config.NUM_KEYPOINTS, 3) and keypoints.dtype == np.float32
        window = utils.parse_image_meta(meta[None])["window"][0]
        # Per axis, the scale the pixels went through (the window of the rounded resized image).
        scale_y = (window[2] - window[0]) / dataset.image_info[image_id]["height"]
        scale_x = (window[3] - window[1]) / dataset.image_info[image_id]["width"]
        original = dataset.load_keypoints(image_id)
        if mode != "crop":  # no instance dropped: the keypoints map one to one
            np.testing.assert_allclose(keypoints[..., 0], original[..., 0] * scale_x + window[1], atol=1e-3)
            np.testing.assert_allclose(keypoints[..., 1], original[..., 1] * scale_y + window[0], atol=1e-3)
        for n in range(len(class_ids)):
            shown = keypoints[n, :, 2] == 2
            rows, cols = keypoints[n, shown, 1].astype(int), keypoints[n, shown, 0].astype(int)
            inside = (rows >= 0) & (rows < image.shape[0]) & (cols >= 0) & (cols < image.shape[1])
            assert inside.all()  # cropped-away keypoints got visibility 0
            # A visible joint stays on (or within a pixel of) its figure's resized mask.
            grown = np.pad(mask[:, :, n], 1)
            near = grown[rows, cols] | grown[rows + 2, cols + 2] | grown[rows + 1, cols + 1]
            assert near.all()


def test_load_image_gt_flips_keypoints_and_swaps_names():
    config = _keypoint_config(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128)
    dataset = _stick_figures(count=2)
    plain = targets.load_image_gt(dataset, config, 0, rng=np.random.default_rng(0), with_keypoints=True)
    flipped = targets.load_image_gt(dataset, config, 0, augmentation=augment.HorizontalFlip(1.0),
                                    rng=np.random.default_rng(0), with_keypoints=True)
    width = plain[0].shape[1]
    mirrored = plain[5].copy()
    mirrored[..., 0] = width - mirrored[..., 0]  # the image is square and centred: the window is symmetric
    np.testing.assert_allclose(flipped[5], mirrored[:, list(config.KEYPOINT_FLIP_MAP)], atol=1e-3)
    np.testing.assert_array_equal(flipped[0], plain[0][:, ::-1])


def test_load_image_gt_keypoints_need_keypoint_aware_augmenters():
    config = _keypoint_config(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128)
    dataset = _stick_figures(count=1)

    def custom(image, masks, rng):
        return image, masks

    with pytest.raises(TypeError, match="keypoints="):
        targets.load_image_gt(dataset, config, 0, augmentation=custom, with_keypoints=True)
    # Without keypoints the old five-value contract is unchanged.
    assert len(targets.load_image_gt(dataset, config, 0, augmentation=custom)) == 5
    # Inside Compose the same error names the augmenter; one with **kwargs takes keypoints.
    with pytest.raises(TypeError, match=r"augmentation <function .*custom.* does not take keypoints="):
        targets.load_image_gt(dataset, config, 0, augmentation=augment.Compose([augment.HorizontalFlip(1.0), custom]),
                              with_keypoints=True)

    def drops_keypoints(image, masks, rng, **extra):  # takes keypoints= but returns two values
        return image, masks

    for augmentation in (drops_keypoints, augment.Compose([drops_keypoints])):
        with pytest.raises(TypeError, match=r"drops_keypoints.* does not take keypoints="):
            targets.load_image_gt(dataset, config, 0, augmentation=augmentation, with_keypoints=True)

    def passes_everything(image, masks, rng, **extra):
        return (image, masks, extra["keypoints"]) if "keypoints" in extra else (image, masks)

    out = targets.load_image_gt(dataset, config, 0, augmentation=passes_everything, with_keypoints=True)
    np.testing.assert_array_equal(out[5], targets.load_image_gt(dataset, config, 0, with_keypoints=True)[5])


def test_flip_map_falls_back_to_the_datasets_keypoint_names_and_warns_without_any():
    # No KEYPOINT_FLIP_MAP / KEYPOINT_NAMES in the config: the dataset's names (a COCO file's
    # keypoint_names) give the partners, so a mirror still swaps left and right.
    import warnings

    named = _keypoint_config(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128)
    bare = named.update(KEYPOINT_FLIP_MAP=None, KEYPOINT_NAMES=None)
    dataset = _stick_figures(count=2)
    flip = augment.HorizontalFlip(1.0)
    expected = targets.load_image_gt(dataset, named, 0, augmentation=flip, rng=np.random.default_rng(0),
                                     with_keypoints=True)[5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = targets.load_image_gt(dataset, bare, 0, augmentation=flip, rng=np.random.default_rng(0),
                                      with_keypoints=True)[5]
    np.testing.assert_array_equal(found, expected)

    class Nameless(type(dataset)):
        keypoint_names = None

    nameless = Nameless()
    nameless.load_stick_figures(2, 96, 128, seed=2, max_figures=2)
    nameless.prepare()
    with pytest.warns(UserWarning, match="keypoint flip map is the identity") as caught:
        unswapped = targets.load_image_gt(nameless, bare, 0, augmentation=flip, rng=np.random.default_rng(0),
                                          with_keypoints=True)[5]
    assert {w.filename for w in caught} == {__file__}
    assert not np.array_equal(unswapped, expected)  # left labels on the right side: why it warns

    # Names whose sides do not pair (a side view) or follow another convention: plain training
    # loads as before; augmenting warns about the identity instead of failing.
    for names in (("head", "neck", "left_front_paw", "left_hind_paw", "tail", "a", "b"),
                  ("Head", "Neck", "LeftHand", "RightHand", "Pelvis", "LeftFoot", "RightFoot")):
        Nameless.keypoint_names = names
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            targets.load_image_gt(nameless, bare, 0, with_keypoints=True)
        with pytest.warns(UserWarning, match="keypoint flip map is the identity"):
            found = targets.load_image_gt(nameless, bare, 0, augmentation=flip, rng=np.random.default_rng(0),
                                          with_keypoints=True)[5]
        np.testing.assert_array_equal(found, unswapped)


def test_nan_position_of_a_labelled_keypoint_is_refused():
    from mrcnn.data import keypoints as kp

    points = np.zeros((2, 3, 3), np.float32)
    points[1, 2] = [np.nan, 4.0, 2.0]
    with pytest.raises(ValueError, match=r"image 5: instance 1 has a labelled keypoint .* NaN or infinite"):
        kp.check_keypoints(points, 2, 3, where="image 5")
    points[1, 2, 2] = 0  # unlabelled: its position does not matter
    assert kp.check_keypoints(points, 2, 3).shape == (2, 3, 3)
    with pytest.raises(ValueError, match=r"Config.NUM_KEYPOINTS is 3: set it to 17"):
        kp.check_keypoints(np.zeros((2, 17, 3)), 2, 3)


class _GappedLabels(SquaresDataset):
    """Label values numbered with gaps (2, 5, 9, ...): one class id per instance is too few."""

    def load_label_mask(self, image_id):
        masks, class_ids = self.load_mask(image_id)
        labels = np.zeros(masks.shape[:2], np.int32)
        for k in range(masks.shape[-1]):
            labels[masks[:, :, k]] = 2 + 3 * k
        return labels, class_ids


def test_load_image_gt_refuses_label_values_beyond_the_class_ids():
    # Found in review: instances above len(class_ids) were dropped without a word (the StarDist
    # image's 125 nuclei, labelled up to 183, gave 84 ground-truth instances).
    dataset = _GappedLabels(1, 96, 128, instances=(3, 3), seed=5)
    dataset.prepare()
    with pytest.raises(ValueError, match=r"image 0 \(.*\): load_label_mask gave label values 0\.\.8 but 3 class "
                                         r"ids.*relabel_sequential"):
        targets.load_image_gt(dataset, TinyConfig(), 0, rng=np.random.default_rng(0))


def test_matterport_augment_switch_is_a_random_flip():
    """Found in review: matterport's ``load_image_gt(..., augment=False)`` raised TypeError."""
    dataset = SquaresDataset(1, 96, 128, instances=(2, 2), seed=3)
    dataset.prepare()
    config = TinyConfig()
    plain = targets.load_image_gt(dataset, config, 0, rng=np.random.default_rng(0), augment=False)
    outcomes = set()
    for seed in range(8):
        with pytest.warns(FutureWarning, match=r"augment=True.*HorizontalFlip\(0.5\)"):
            image = targets.load_image_gt(dataset, config, 0, rng=np.random.default_rng(seed), augment=True)[0]
        if np.array_equal(image, plain[0]):
            outcomes.add("kept")
        else:
            np.testing.assert_array_equal(image, plain[0][:, ::-1])
            outcomes.add("flipped")
    assert outcomes == {"kept", "flipped"}
