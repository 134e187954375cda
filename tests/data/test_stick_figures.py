"""Tests of mrcnn.data.stick_figures: deterministic figures whose keypoints sit on their masks."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn.data.augment import HorizontalFlip
from mrcnn.data.keypoints import InstanceKeypoints
from mrcnn.data.stick_figures import FLIP_MAP, KEYPOINT_NAMES, SKELETON, StickFiguresConfig, StickFiguresDataset


def _dataset(count: int = 6, seed: int = 0, size: int = 96) -> StickFiguresDataset:
    dataset = StickFiguresDataset()
    dataset.load_stick_figures(count, size, size, seed=seed, max_figures=3)
    dataset.prepare()
    return dataset


def test_images_are_a_function_of_seed_and_index():
    a, b, other = _dataset(seed=4), _dataset(seed=4), _dataset(seed=5)
    for i in a.image_ids:
        np.testing.assert_array_equal(a.load_image(i), b.load_image(i))
        np.testing.assert_array_equal(a.load_keypoints(i), b.load_keypoints(i))
    assert any(not np.array_equal(a.load_image(i), other.load_image(i)) for i in a.image_ids)


def test_masks_keypoints_and_ids_fit_together():
    dataset = _dataset()
    assert dataset.class_names == ["BG", "figure"]
    for i in dataset.image_ids:
        image = dataset.load_image(i)
        masks, class_ids = dataset.load_mask(i)
        keypoints = dataset.load_keypoints(i)
        n = masks.shape[-1]
        assert n >= 1 and image.shape == (96, 96, 3) and masks.dtype == bool
        assert class_ids.tolist() == [1] * n and keypoints.shape == (n, len(KEYPOINT_NAMES), 3)
        assert dataset.image_info[i]["id"] == i + 1  # COCO-safe ids
        for m in range(n):
            rows = np.clip(keypoints[m, :, 1].astype(int), 0, 95)
            cols = np.clip(keypoints[m, :, 0].astype(int), 0, 95)
            visible = keypoints[m, :, 2] == 2
            # A visible joint lies on its own figure's visible pixels; an occluded one does not.
            assert masks[rows, cols, m][visible].all()
            assert not masks[rows, cols, m][~visible].any()
            assert set(np.unique(keypoints[m, :, 2])) <= {1.0, 2.0}
            # Left is the viewer's left: left hand / foot left of the right ones.
            assert keypoints[m, 2, 0] < keypoints[m, 3, 0] and keypoints[m, 5, 0] < keypoints[m, 6, 0]


def test_horizontal_flip_keeps_left_on_the_left():
    dataset = _dataset(count=2)
    image, masks = dataset.load_image(0), dataset.load_mask(0)[0]
    points = InstanceKeypoints(dataset.load_keypoints(0), FLIP_MAP)
    _, flipped_masks, flipped = HorizontalFlip(1.0)(image, masks, np.random.default_rng(0), keypoints=points)
    # After flip + renaming the figure is again a valid stick figure: left limbs on the left.
    assert (flipped.points[:, 2, 0] < flipped.points[:, 3, 0]).all()
    assert (flipped.points[:, 5, 0] < flipped.points[:, 6, 0]).all()
    head = flipped.points[0, 0]
    assert flipped_masks[int(head[1]), int(head[0]), 0]


def test_config_describes_the_keypoints():
    config = StickFiguresConfig()
    assert config.KEYPOINT_HEAD and config.NUM_KEYPOINTS == len(KEYPOINT_NAMES)
    assert tuple(config.KEYPOINT_FLIP_MAP) == FLIP_MAP == (0, 1, 3, 2, 4, 6, 5)
    assert all(0 <= a < 7 and 0 <= b < 7 for a, b in SKELETON)


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="at least 32x32"):
        StickFiguresDataset().load_stick_figures(1, 16, 64)
