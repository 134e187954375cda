"""Tests for mrcnn/molding.py: molding, unmolding and batched detection around any graph function."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn import molding, utils
from mrcnn.config import Config


class Pad64Config(Config):
    NAME = "pad64"
    NUM_CLASSES = 3
    IMAGES_PER_GPU = 2
    IMAGE_RESIZE_MODE = "pad64"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 128


def _window_graph(calls: list[tuple[int, ...]]):
    """A stand-in for the inference graph: one detection per image covering its window exactly
    (class 2, score 0.9), a mask of ones, and one padding slot."""

    def graph(molded: np.ndarray, metas: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(molded.shape)
        meta = utils.parse_image_meta(metas)
        height, width = molded.shape[1:3]
        detections = np.zeros((len(molded), 2, 6), np.float32)
        detections[:, 0, :4] = meta["window"] / np.array([height, width, height, width], np.float32)
        detections[:, 0, 4:] = (2, 0.9)
        return {"detections": detections, "mrcnn_mask": np.ones((len(molded), 2, 7, 7, 1), np.float32)}

    return graph


def test_detect_images_batches_each_canvas_and_keeps_the_input_order():
    config = Pad64Config()
    # "pad64" canvases: 64x64 -> 64x64, 100x64 -> 128x64, 50x60 (scaled up to a 64 px short
    # side) -> 64x128; the three 64x64 images make two batches of BATCH_SIZE = 2.
    shapes = [(64, 64), (100, 64), (64, 64), (50, 60), (100, 64), (64, 64)]
    images = [np.full(shape + (3,), 100, np.uint8) for shape in shapes]
    calls: list[tuple[int, ...]] = []
    results = molding.detect_images(images, config, _window_graph(calls))
    assert sorted(calls) == sorted([(2, 64, 64, 3), (1, 64, 64, 3), (2, 128, 64, 3), (1, 64, 128, 3)])
    for shape, result in zip(shapes, results):
        np.testing.assert_array_equal(result["rois"], [[0, 0, shape[0], shape[1]]])
        assert result["class_ids"].tolist() == [2]
        assert result["masks"].shape == shape + (1,) and result["masks"].all()


def test_detect_images_names_the_bad_image_and_takes_no_images():
    config = Pad64Config()
    good = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="image 2 has NaN"):
        molding.detect_images([good, good, np.full((8, 8, 3), np.nan, np.float32)], config, _window_graph([]))
    with pytest.raises(ValueError, match="scale must be a number > 0"):
        molding.detect_images([good], config, _window_graph([]), scale=0)
    assert molding.detect_images([], config, _window_graph([])) == []


def test_mold_images_refuses_mixed_canvases_and_no_images():
    config = Pad64Config()
    with pytest.raises(ValueError, match="different canvases"):
        molding.mold_images([np.zeros((64, 64, 3), np.uint8), np.zeros((100, 64, 3), np.uint8)], config)
    with pytest.raises(ValueError, match="no images"):
        molding.mold_images([], config)


def test_detect_images_takes_a_generator_and_refuses_a_bare_image():
    config = Pad64Config()
    images = [np.full((64, 64, 3), 100, np.uint8), np.full((100, 64, 3), 100, np.uint8)]
    results = molding.detect_images((image for image in images), config, _window_graph([]))
    assert [r["masks"].shape[:2] for r in results] == [(64, 64), (100, 64)]
    with pytest.raises(TypeError, match="wrap a single image as"):
        molding.detect_images(images[0], config, _window_graph([]))


def test_detect_images_checks_every_canvas_before_running_the_graph():
    # An export takes one canvas: image 2 molds to another, and nothing may run before that is said
    # (the first batch, images 0 and 1, would otherwise be detected first).
    config = Pad64Config()
    images = [np.zeros((64, 64, 3), np.uint8)] * 2 + [np.zeros((100, 64, 3), np.uint8)]
    calls: list[tuple[int, ...]] = []
    with pytest.raises(ValueError, match=r"image 2 molds to a \(128, 64\) canvas; this graph takes \(64, 64\)"):
        molding.detect_images(images, config, _window_graph(calls), canvas=(64, 64))
    assert calls == []
    assert len(molding.detect_images(images[:2], config, _window_graph(calls), canvas=(64, 64))) == 2


def test_detect_images_takes_array_likes():
    """Found in review: nested lists (or a PIL image) passed molding, ran the graph, then failed in
    unmolding for want of .shape."""
    config = Pad64Config()
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    as_array = molding.detect_images([image], config, _window_graph([]))[0]
    as_lists = molding.detect_images([image.tolist()], config, _window_graph([]))[0]
    for key in as_array:
        np.testing.assert_array_equal(as_lists[key], as_array[key])
    with pytest.raises(TypeError, match=r"image 0 is 'a.png', not pixels"):
        molding.detect_images(["a.png"], config, _window_graph([]))
