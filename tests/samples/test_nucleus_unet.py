"""Tests for samples/nucleus/unet.py and augment.py: weight map, targets, overlap-tile, watershed."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.draw

from samples.nucleus.augment import ColorRobustness, ElasticDeformation, RandomGamma, microscopy_augmentation
from samples.nucleus.unet import (
    UNetDetector,
    build_unet,
    separate_touching,
    unet_targets,
    watershed_instances,
    weight_map,
)


def _two_discs(gap: int) -> np.ndarray:
    """Two discs of radius 10 side by side with `gap` background pixels between them."""
    labels = np.zeros((40, 64), np.int32)
    rr, cc = skimage.draw.disk((20, 20), 10, shape=labels.shape)
    labels[rr, cc] = 1
    rr, cc = skimage.draw.disk((20, 20 + 20 + gap), 10, shape=labels.shape)
    labels[rr, cc] = 2
    return labels


def test_weight_map_is_highest_on_the_gap_between_two_discs():
    labels = _two_discs(gap=2)
    weights = weight_map(labels)
    y, x = np.unravel_index(np.argmax(weights), weights.shape)
    gap = np.flatnonzero(labels[20] == 0)
    gap = gap[(gap > 20) & (gap < 42)]  # background columns between the discs on the centre row
    assert labels[y, x] == 0 and gap[0] <= x <= gap[-1] and 12 <= y <= 28  # in the gap
    assert weights[20, gap].max() == pytest.approx(weights.max())  # the narrowest point is the top
    # Gap pixel: d1 = d2 = 1 or 2 -> border term w0 * exp(-(d1 + d2)^2 / 50) > 7.
    background_weight = weights[0, 0]
    assert weights[y, x] - background_weight > 7
    # Far from both discs only the class weight is left; nuclei get the class weight of nuclei.
    fraction = (labels > 0).mean()
    np.testing.assert_allclose(background_weight, 1 / (2 * (1 - fraction)), rtol=1e-3)
    np.testing.assert_allclose(weights[20, 20], 1 / (2 * fraction), rtol=1e-3)
    # One disc alone has no second-nearest nucleus: no border term anywhere.
    single = np.where(labels == 1, 1, 0)
    assert weight_map(single).max() == pytest.approx(1 / (2 * (single > 0).mean()), rel=1e-3)


def test_touching_nuclei_are_separated_in_the_target():
    labels = _two_discs(gap=-2)  # overlapping extents: disc 2 overwrites, so they touch
    target, weights = unet_targets(labels)
    assert target.dtype == np.uint8 and weights.shape == labels.shape
    import scipy.ndimage as ndi

    assert ndi.label(labels > 0)[1] == 1  # one blob as drawn
    assert ndi.label(target)[1] == 2  # two nuclei in the target
    assert separate_touching(_two_discs(gap=3)).sum() == (_two_discs(gap=3) > 0).sum()  # apart: unchanged


def test_watershed_splits_touching_discs():
    labels = _two_discs(gap=-3)
    probability = (labels > 0).astype(np.float32)
    instances = watershed_instances(probability, min_distance=5)
    assert instances.max() == 2
    for value in (1, 2):
        overlap = np.bincount(instances[labels == value])[1:]
        assert overlap.max() / (labels == value).sum() > 0.9


class _Constant:
    """A 'network' whose foreground logit is the image's first channel: overlap-tile must give the
    input back whatever the tiling."""

    def __call__(self, tiles, training=False):
        tiles = np.asarray(tiles)
        return np.stack([np.zeros(tiles.shape[:3]), (tiles[..., 0] - 0.5) * 40], axis=-1)


def test_overlap_tile_reassembles_the_image():
    rng = np.random.default_rng(0)
    image = (rng.random((70, 90, 3)) > 0.5).astype(np.uint8) * 255
    detector = UNetDetector(_Constant(), tile=32, margin=8)
    probability = detector.predict_foreground(image)
    np.testing.assert_array_equal(probability > 0.5, image[..., 0] > 0)
    results = detector.detect([image[..., 0] * 0])
    assert results[0]["masks"].shape == (70, 90, 0)


def test_labels_output_is_the_masks_as_one_label_image():
    # Two separate discs of foreground: two instances, as masks or as one [H, W] label image.
    image = np.zeros((70, 90, 3), np.uint8)
    for centre, radius in (((20, 20), 9), ((50, 62), 12)):
        image[skimage.draw.disk(centre, radius)] = 255
    detector = UNetDetector(_Constant(), tile=32, margin=8, min_size=1)
    as_masks = detector.detect([image])[0]
    as_labels = detector.detect([image], output="labels")[0]
    assert as_masks["masks"].shape == (70, 90, 2) and "masks" not in as_labels
    assert as_labels["labels"].dtype == np.int32 and as_labels["labels"].shape == (70, 90)
    for k in range(2):
        np.testing.assert_array_equal(as_labels["labels"] == k + 1, as_masks["masks"][..., k])
    for key in ("rois", "class_ids", "scores"):
        np.testing.assert_array_equal(as_labels[key], as_masks[key])
    with pytest.raises(ValueError, match="output must be 'masks' or 'labels', got 'mask'"):
        detector.detect([image], output="mask")


def test_unet_shapes_and_detect_format():
    model = build_unet(depth=2, base_filters=4)
    assert model.output_shape == (None, None, None, 2)
    image = np.zeros((50, 40, 3), np.uint8)
    rr, cc = skimage.draw.disk((20, 20), 8)
    image[rr, cc] = 255
    result = UNetDetector(model, tile=32, margin=4).detect([image])[0]
    assert set(result) == {"rois", "class_ids", "scores", "masks"}
    assert result["masks"].shape[:2] == (50, 40) and result["rois"].shape == (result["masks"].shape[-1], 4)
    with pytest.raises(ValueError, match="margin"):
        UNetDetector(model, tile=16, margin=8)


def test_elastic_deformation_moves_image_and_labels_together():
    rng = np.random.default_rng(1)
    labels = _two_discs(gap=4)
    image = np.repeat(np.where(labels > 0, 200, 20).astype(np.uint8)[:, :, None], 3, axis=-1)
    warped, warped_labels = ElasticDeformation(sigma=4, p=1.0)(image, labels[:, :, None], rng)
    assert warped.shape == image.shape and warped_labels.shape == (40, 64, 1)
    assert set(np.unique(warped_labels)) <= {0, 1, 2}  # nearest neighbour: no new label values
    assert not np.array_equal(warped_labels[..., 0], labels)  # it did move
    inside = warped[..., 0][warped_labels[..., 0] > 0]
    assert np.mean(inside > 100) > 0.95  # bright pixels stayed on the nuclei
    # Bool instance stacks work too, and a zero sigma changes nothing.
    masks = np.stack([labels == 1, labels == 2], axis=-1)
    same_image, same = ElasticDeformation(sigma=0, p=1.0)(image, masks, rng)
    np.testing.assert_array_equal(same, masks)
    np.testing.assert_array_equal(same_image, image)


def test_photometric_augmenters_keep_masks_and_range():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    masks = np.zeros((16, 16, 2), bool)
    out, out_masks = RandomGamma(p=1.0)(image, masks, rng)
    assert out.dtype == np.uint8 and out_masks is masks
    gray, _ = ColorRobustness(p_gray=1.0, p_invert=0.0)(image, masks, rng)
    assert np.all(gray[..., 0] == gray[..., 1]) and np.all(gray[..., 1] == gray[..., 2])
    inverted, _ = ColorRobustness(p_gray=0.0, p_permute=0.0, p_invert=1.0)(image, masks, rng)
    np.testing.assert_array_equal(inverted, 255 - image)
    out, out_masks = microscopy_augmentation()(image, masks, rng)
    assert out.shape[:2] == out_masks.shape[:2] and out_masks.shape[-1] == 2
