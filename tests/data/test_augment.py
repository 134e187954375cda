"""Tests of mrcnn.data.augment: joint image/mask augmenters."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn import utils
from mrcnn.data import augment


def l_shape(height=40, width=60):
    """An asymmetric 'L' (no flip/rotation maps it onto itself) in red, with its mask, plus a blue dot."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    masks = np.zeros((height, width, 2), dtype=bool)
    masks[5:30, 8:14, 0] = True  # vertical bar
    masks[24:30, 8:40, 0] = True  # foot to the right
    masks[2:5, 50:57, 1] = True
    image[masks[:, :, 0]] = (255, 0, 0)
    image[masks[:, :, 1]] = (0, 0, 255)
    return image, masks


def assert_aligned(image, masks):
    np.testing.assert_array_equal(image[:, :, 0] == 255, masks[:, :, 0])
    np.testing.assert_array_equal(image[:, :, 2] == 255, masks[:, :, 1])


@pytest.mark.parametrize(
    "augmenter,expected",
    [
        (augment.HorizontalFlip(p=1.0), lambda a: a[:, ::-1]),
        (augment.VerticalFlip(p=1.0), lambda a: a[::-1]),
        (augment.Rot90(ks=(1,)), lambda a: np.rot90(a, 1)),
        (augment.Rot90(ks=(2,)), lambda a: a[::-1, ::-1]),
        (augment.Rot90(ks=(3,)), lambda a: np.rot90(a, -1)),
    ],
)
def test_geometric_augmenters_move_image_and_masks_together(augmenter, expected):
    image, masks = l_shape()
    out_image, out_masks = augmenter(image, masks, np.random.default_rng(0))
    assert out_image.dtype == np.uint8 and out_masks.dtype == bool
    np.testing.assert_array_equal(out_image, expected(image))
    np.testing.assert_array_equal(out_masks, expected(masks))
    assert_aligned(out_image, out_masks)
    assert not np.array_equal(out_masks[:, :, 0], masks[:, :, 0]) or out_masks.shape != masks.shape


def test_quarter_turn_four_times_is_identity_and_swaps_shape():
    image, masks = l_shape()
    rot = augment.Rot90(ks=(1,))
    out = (image, masks)
    for turn in range(4):
        out = rot(*out, np.random.default_rng(turn))
        assert out[0].shape[:2] == ((60, 40) if turn % 2 == 0 else (40, 60))
    np.testing.assert_array_equal(out[0], image)
    np.testing.assert_array_equal(out[1], masks)


def test_probability_zero_and_one():
    image, masks = l_shape()
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert augment.HorizontalFlip(p=0.0)(image, masks, rng)[0] is image
        np.testing.assert_array_equal(augment.HorizontalFlip(p=1.0)(image, masks, rng)[1], masks[:, ::-1])
    flips = [augment.HorizontalFlip(0.5)(image, masks, rng)[0] is image for _ in range(200)]
    assert 60 < sum(flips) < 140
    with pytest.raises(ValueError, match="probability"):
        augment.VerticalFlip(p=1.5)


@pytest.mark.parametrize("min_side,max_side", [(20, 30), (64, 100), (41, 41)])
def test_scale_jitter_keeps_masks_aligned(min_side, max_side):
    image, masks = l_shape()
    for seed in range(4):
        out_image, out_masks = augment.ScaleJitter(min_side, max_side)(image, masks, np.random.default_rng(seed))
        short = min(out_image.shape[:2])
        assert min_side <= short <= max_side
        assert out_masks.shape[:2] == out_image.shape[:2] and out_masks.dtype == bool
        assert out_image.dtype == np.uint8
        # Aspect ratio kept (to rounding).
        assert abs(out_image.shape[1] / out_image.shape[0] - 1.5) < 0.05
        # Mask boxes match the coloured regions within 1 px.
        colour = np.stack([out_image[:, :, 0] > 127, out_image[:, :, 2] > 127], axis=-1)
        diff = np.abs(utils.extract_bboxes(colour).astype(int) - utils.extract_bboxes(out_masks).astype(int))
        assert diff.max() <= 1
        # And the L's mask covers its coloured pixels almost exactly (the 3 px dot is too small for IoU).
        assert utils.compute_overlaps_masks(colour[:, :, :1], out_masks[:, :, :1])[0, 0] > 0.85


def test_scale_jitter_max_size_and_errors():
    image, masks = l_shape(40, 200)
    out_image, out_masks = augment.ScaleJitter(80, 80, max_size=300)(image, masks, np.random.default_rng(0))
    assert out_image.shape[:2] == (60, 300) and out_masks.shape[:2] == (60, 300)
    with pytest.raises(ValueError, match="min_side"):
        augment.ScaleJitter(100, 50)


def test_brightness_contrast_changes_image_only():
    image, masks = l_shape()
    image = image.copy()
    image[image.sum(axis=-1) == 0] = 100
    out_image, out_masks = augment.BrightnessContrast(0.2, 0.3)(image, masks, np.random.default_rng(1))
    assert out_masks is masks
    assert out_image.dtype == np.uint8 and out_image.shape == image.shape
    assert not np.array_equal(out_image, image)
    # Same pixel values stay equal (a global affine map): the mask's pixels stay one colour.
    assert len(np.unique(out_image[masks[:, :, 0]].reshape(-1, 3), axis=0)) == 1
    with pytest.raises(ValueError, match="contrast"):
        augment.BrightnessContrast(contrast=1.5)


def test_compose_is_deterministic_with_seed_and_checks_inputs():
    image, masks = l_shape()
    pipeline = augment.Compose([augment.HorizontalFlip(), augment.VerticalFlip(), augment.Rot90(),
                                augment.ScaleJitter(30, 80), augment.BrightnessContrast()])
    a = pipeline(image, masks, np.random.default_rng(42))
    b = pipeline(image, masks, np.random.default_rng(42))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    results = {pipeline(image, masks, np.random.default_rng(s))[0].tobytes() for s in range(8)}
    assert len(results) > 4
    with pytest.raises(TypeError, match="not callable"):
        augment.Compose([augment.HorizontalFlip(), 3])
    with pytest.raises(ValueError, match="same H, W"):
        pipeline(image, masks[:-1], np.random.default_rng(0))


def test_empty_mask_stack_is_fine():
    image, _ = l_shape()
    masks = np.zeros(image.shape[:2] + (0,), dtype=bool)
    pipeline = augment.Compose([augment.Rot90(ks=(1,)), augment.ScaleJitter(30, 30)])
    out_image, out_masks = pipeline(image, masks, np.random.default_rng(0))
    assert out_masks.shape == out_image.shape[:2] + (0,)


# ------------------------------------------------------------------------------------------------
# Keypoints travel with the image (Keypoint R-CNN)
def _keypoints_on_l_shape():
    """Keypoint 0 at the L's top, 1 at the tip of its foot, 2 on the blue dot; 0 and 1 are mirror partners."""
    from mrcnn.data.keypoints import InstanceKeypoints

    points = np.array([[[11.0, 5.5, 2], [39.5, 27.0, 2], [53.5, 3.5, 2]]], np.float32)
    return InstanceKeypoints(points, (1, 0, 2))


@pytest.mark.parametrize("augmenter", [augment.HorizontalFlip(1.0), augment.VerticalFlip(1.0),
                                       augment.Rot90(1.0, ks=(1,)), augment.Rot90(1.0, ks=(3,)),
                                       augment.ScaleJitter(80, 80), augment.BrightnessContrast(),
                                       augment.Compose([augment.HorizontalFlip(1.0), augment.Rot90(1.0, ks=(1,))])])
def test_keypoints_stay_on_their_pixels(augmenter):
    image, masks = l_shape()
    keypoints = _keypoints_on_l_shape()
    out_image, out_masks, moved = augmenter(image, masks, np.random.default_rng(0), keypoints=keypoints)
    # Same result for image and masks as without keypoints (same random draws).
    ref_image, ref_masks = augmenter(image, masks, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, ref_image)
    np.testing.assert_array_equal(out_masks, ref_masks)
    mirrored = isinstance(augmenter, (augment.HorizontalFlip, augment.VerticalFlip, augment.Compose))
    for j, (x, y, _) in enumerate(moved.points[0]):
        # The point type j now names: its own pixel, or (after a mirror) its partner's.
        source = keypoints.flip_map[j] if mirrored else j
        mask_index = 1 if source == 2 else 0
        assert out_masks[int(y), int(x), mask_index], f"keypoint {j} at ({x}, {y}) left its instance"
    if mirrored:  # partners swapped: keypoint 0 is now the foot tip, far from the L's top
        assert not np.allclose(moved.points[0, 0, :2], keypoints.points[0, 0, :2])
