"""Tests of mrcnn.data.keypoints: flip maps and keypoints moving exactly with the image's pixels."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn import utils
from mrcnn.data import keypoints as kp


def _marked_image(height: int, width: int, pixels: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """An image with one distinct value per marked pixel, and keypoints at those pixels' centres."""
    image = np.zeros((height, width, 1), np.int32)
    points = np.zeros((1, len(pixels), 3), np.float32)
    for j, (row, col) in enumerate(pixels):
        image[row, col, 0] = j + 1
        points[0, j] = (col + 0.5, row + 0.5, 2)
    return image, points


def _pixel_centres(image: np.ndarray, count: int) -> np.ndarray:
    """(x, y) of the pixel holding value j + 1, for each j: where the image says the keypoints are."""
    out = np.zeros((count, 2), np.float32)
    for j in range(count):
        rows, cols = np.nonzero(image[..., 0] == j + 1)
        assert rows.size == 1, f"marker {j + 1} appears {rows.size} times"
        out[j] = (cols[0] + 0.5, rows[0] + 0.5)
    return out


PIXELS = [(0, 0), (2, 5), (6, 1), (4, 7)]  # (row, col) on an 8 x 9 image: asymmetric, corners included


def test_flip_map_from_names_pairs_left_and_right():
    names = ("nose", "left_eye", "right_eye", "l_hand", "r_hand")
    assert kp.flip_map_from_names(names) == (0, 2, 1, 4, 3)
    with pytest.raises(ValueError, match="left_knee"):
        kp.flip_map_from_names(("left_knee", "nose"))


@pytest.mark.parametrize("flip, message", [((0, 1), "3 keypoint"), ((1, 2, 2), "symmetrically"), ((0, 1, 5), "3 keypoint")])
def test_check_flip_map_rejects_non_involutions(flip, message):
    with pytest.raises(ValueError, match=message):
        kp.check_flip_map(flip, 3)


def test_check_keypoints_names_the_bad_shape():
    with pytest.raises(ValueError, match=r"image 7.*\[N=2, K=3, 3\]"):
        kp.check_keypoints(np.zeros((2, 4, 3)), 2, 3, where="image 7")
    with pytest.raises(ValueError, match="visibility"):
        kp.check_keypoints(np.full((1, 3, 3), 5.0), 1, 3)
    assert kp.check_keypoints([], 0, 3).shape == (0, 3, 3)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rot90_moves_keypoints_with_the_pixels(k):
    image, points = _marked_image(8, 9, PIXELS)
    moved = kp.InstanceKeypoints(points, tuple(range(len(PIXELS)))).rot90(k, image.shape)
    rotated = np.rot90(image, k, axes=(0, 1))
    np.testing.assert_allclose(moved.points[0, :, :2], _pixel_centres(rotated, len(PIXELS)), atol=1e-5)


def test_flips_move_keypoints_and_swap_partners():
    image, points = _marked_image(8, 9, PIXELS)
    flip_map = (1, 0, 3, 2)
    keypoints = kp.InstanceKeypoints(points, flip_map)
    for moved, flipped in ((keypoints.hflip(9), image[:, ::-1]), (keypoints.vflip(8), image[::-1])):
        centres = _pixel_centres(flipped, len(PIXELS))
        # Keypoint type j now sits where the pixel of its mirror partner flip_map[j] went.
        np.testing.assert_allclose(moved.points[0, :, :2], centres[list(flip_map)], atol=1e-5)
    twice = keypoints.hflip(9).hflip(9)
    np.testing.assert_allclose(twice.points, points)


@pytest.mark.parametrize("mode, kwargs", [("square", dict(min_dim=16, max_dim=32)),
                                          ("pad64", dict(min_dim=64)),
                                          ("crop", dict(min_dim=16))])
def test_resize_keypoints_follow_resize_image(mode, kwargs):
    # Scale by an integer factor so each marker becomes a block whose centre is the moved keypoint.
    image, points = _marked_image(8, 9, PIXELS)
    resized, _, scale, padding, crop = utils.resize_image(image.astype(np.float32), mode=mode,
                                                          rng=np.random.default_rng(2), **kwargs)
    moved = kp.resize_keypoints(points, image.shape, scale, padding, crop, resized.shape)
    nearest = utils.resize_nearest(image, (round(8 * scale), round(9 * scale)))
    canvas = np.pad(nearest, [padding[0], padding[1], (0, 0)])
    if crop is not None:
        y, x, h, w = crop
        canvas = canvas[y:y + h, x:x + w]
    assert canvas.shape[:2] == resized.shape[:2]
    for j in range(len(PIXELS)):
        rows, cols = np.nonzero(canvas[..., 0] == j + 1)
        if rows.size == 0:  # cropped away
            assert moved[0, j, 2] == 0
            continue
        assert moved[0, j, 2] == 2
        # The block spans [min, max + 1): its centre is the keypoint (a pixel centre scales to a block centre).
        np.testing.assert_allclose(moved[0, j, :2], ((cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2),
                                   atol=0.5 * scale + 1e-5)
