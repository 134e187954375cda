"""Tests for mrcnn/tiling.py with a fake model that finds bright blobs (connected components)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.draw
import skimage.measure

from mrcnn.tiling import detect_tiled, tile_starts


class BlobModel:
    """Any-size detector: each connected bright component is an instance (score: its mean value).

    Records the shapes it was given, so a test can check that no call saw more than a tile.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def detect(self, images):
        results = []
        for image in images:
            self.seen.append(image.shape)
            labels = skimage.measure.label(image[..., 0] > 0, connectivity=1)
            count = int(labels.max())
            masks = np.stack([labels == k for k in range(1, count + 1)], axis=-1) if count else \
                np.zeros(image.shape[:2] + (0,), bool)
            rois = np.array([[r.bbox[0], r.bbox[1], r.bbox[2], r.bbox[3]]
                             for r in skimage.measure.regionprops(labels)], np.int32).reshape(-1, 4)
            scores = np.array([image[..., 0][labels == k].mean() / 255 for k in range(1, count + 1)], np.float32)
            results.append({"rois": rois, "class_ids": np.ones(count, np.int32), "scores": scores, "masks": masks})
        return results


def _disc_image(shape, centers, radius):
    image = np.zeros(tuple(shape) + (3,), np.uint8)
    truth = []
    for k, (cy, cx) in enumerate(centers):
        rr, cc = skimage.draw.disk((cy, cx), radius, shape=shape)
        image[rr, cc] = 100 + k
        mask = np.zeros(shape, bool)
        mask[rr, cc] = True
        truth.append(mask)
    return image, np.stack(truth, axis=-1)


def test_tile_starts_cover_with_overlap():
    assert tile_starts(100, 128, 16) == [0]
    starts = tile_starts(300, 128, 32)
    assert starts[0] == 0 and starts[-1] + 128 == 300
    assert all(b - a <= 128 - 32 for a, b in zip(starts, starts[1:]))


def test_objects_on_tile_borders_found_once_with_untiled_masks():
    # Tiles of 64 with overlap 20 on a 150 x 170 image: starts 0, 44, 86 (rows) and 0, 44, 88, 106
    # (cols). Discs of radius 6 (extent 13 < overlap) placed across those borders and corners.
    shape = (150, 170)
    centers = [(64, 30), (44, 64), (64, 64), (86, 108), (20, 150), (130, 44), (100, 130), (10, 10), (140, 165)]
    image, truth = _disc_image(shape, centers, radius=6)
    model = BlobModel()
    tiled = detect_tiled(model, image, tile_size=64, overlap=20)
    assert max(max(s[:2]) for s in model.seen) <= 64  # the model never saw more than a tile
    untiled = BlobModel().detect([image])[0]
    assert tiled["masks"].shape == shape + (len(centers),)
    # Every disc exactly once, with the same mask as untiled detection (and as the truth).
    for masks in (truth, untiled["masks"]):
        inter = np.einsum("hwn,hwm->nm", tiled["masks"].astype(np.int64), masks.astype(np.int64))
        assert np.all((inter > 0).sum(axis=1) == 1) and np.all((inter > 0).sum(axis=0) == 1)
        order = inter.argmax(axis=1)
        np.testing.assert_array_equal(tiled["masks"], masks[..., order])
    np.testing.assert_array_equal(np.sort(tiled["scores"]), np.sort(untiled["scores"]))
    assert np.all(np.diff(tiled["scores"]) <= 0)
    boxes = tiled["rois"]
    np.testing.assert_array_equal(boxes, [[m.any(1).argmax(), m.any(0).argmax(), shape[0] - m.any(1)[::-1].argmax(),
                                           shape[1] - m.any(0)[::-1].argmax()] for m in np.moveaxis(tiled["masks"], -1, 0)])


def test_touching_objects_stay_separate_and_big_object_not_duplicated():
    # Two touching rectangles on a tile border (different values, so separate components only
    # through a 1-px gap) and one object larger than the overlap.
    image = np.zeros((100, 100, 3), np.uint8)
    image[40:50, 30:45] = 200
    image[51:60, 30:45] = 150
    image[5:45, 60:95] = 120  # 40 x 35 > overlap: may come back cut, but not duplicated in the overlap
    result = detect_tiled(BlobModel(), image, tile_size=64, overlap=16)
    small = [k for k in range(result["masks"].shape[-1]) if result["masks"][..., k].sum() < 200]
    assert len(small) == 2
    big = [k for k in range(result["masks"].shape[-1]) if result["masks"][..., k].sum() >= 200]
    covered = np.zeros((100, 100), int)
    for k in big:
        covered += result["masks"][..., k]
    assert covered.max() == 1 and covered.sum() == 40 * 35  # pieces tile the object without overlap


def test_small_image_is_one_tile_and_grayscale_works():
    image, truth = _disc_image((40, 50), [(20, 25)], radius=5)
    model = BlobModel()
    result = detect_tiled(model, image, tile_size=64, overlap=8)
    assert model.seen == [(40, 50, 3)]
    np.testing.assert_array_equal(result["masks"][..., 0], truth[..., 0])


def test_soft_masks_merge_as_detect_binarizes_them():
    class SoftBlobModel(BlobModel):  # the same instances as probabilities, with a faint halo
        def detect(self, images):
            results = super().detect(images)
            for result in results:
                masks = result["masks"]
                halo = np.zeros_like(masks)
                halo[1:] = masks[:-1]
                result["masks"] = np.maximum(np.where(masks, 0.9, 0.0), 0.3 * halo).astype(np.float32)
            return results

    image, _ = _disc_image((96, 96), [(20, 20), (30, 70), (75, 45)], 9)
    plain = detect_tiled(BlobModel(), image, tile_size=48, overlap=24)
    soft = detect_tiled(SoftBlobModel(), image, tile_size=48, overlap=24)
    assert len(plain["scores"]) == 3
    for key in ("rois", "class_ids", "masks"):
        np.testing.assert_array_equal(soft[key], plain[key])


def test_label_output_holds_the_same_instances_as_the_masks():
    image, _ = _disc_image((96, 96), [(20, 20), (30, 70), (75, 45), (47, 47)], 9)
    plain = detect_tiled(BlobModel(), image, tile_size=48, overlap=24)
    labelled = detect_tiled(BlobModel(), image, tile_size=48, overlap=24, output="labels")
    assert "masks" not in labelled and labelled["labels"].dtype == np.int32 and labelled["labels"].shape == (96, 96)
    for key in ("rois", "class_ids", "scores"):
        np.testing.assert_array_equal(labelled[key], plain[key])
    expected = np.zeros((96, 96), np.int32)
    for k in reversed(range(plain["masks"].shape[-1])):
        expected[plain["masks"][..., k]] = k + 1
    np.testing.assert_array_equal(labelled["labels"], expected)
    assert labelled["labels"].max() == 4
    with pytest.raises(ValueError, match="output must be 'masks' or 'labels', got 'label'"):
        detect_tiled(BlobModel(), image, tile_size=48, overlap=24, output="label")


class _ClassByTileModel(BlobModel):
    """BlobModel that calls every blob class 1 in tiles at x = 0 and class 2 elsewhere: one object
    seen by two tiles then comes back as two classes."""

    def __init__(self, image):
        super().__init__()
        self.image = image

    def detect(self, images):
        results = super().detect(images)
        for tile, result in zip(images, results):
            at_left = np.array_equal(tile, self.image[:tile.shape[0], :tile.shape[1]])
            result["class_ids"] = np.full(len(result["class_ids"]), 1 if at_left else 2, np.int32)
        return results


def test_class_agnostic_merge_keeps_an_object_two_tiles_disagree_on_once():
    # One disc across the border of two 64 px tiles (overlap 32): each tile sees it whole.
    image, _ = _disc_image((64, 96), [(32, 48)], 6)
    per_class = detect_tiled(_ClassByTileModel(image), image, 64, 32)
    assert sorted(per_class["class_ids"].tolist()) == [1, 2]  # the same object twice, as two classes
    merged = detect_tiled(_ClassByTileModel(image), image, 64, 32, class_agnostic=True)
    assert len(merged["class_ids"]) == 1 and merged["masks"].shape == (64, 96, 1)


def test_empty_and_bad_arguments():
    result = detect_tiled(BlobModel(), np.zeros((80, 80, 3), np.uint8), tile_size=32, overlap=8)
    assert result["masks"].shape == (80, 80, 0) and result["rois"].shape == (0, 4)
    with pytest.raises(ValueError, match="overlap"):
        detect_tiled(BlobModel(), np.zeros((80, 80, 3), np.uint8), tile_size=32, overlap=32)
    with pytest.raises(ValueError, match="image"):
        detect_tiled(BlobModel(), np.zeros((80,), np.uint8), tile_size=32, overlap=8)
    with pytest.raises(ValueError, match=r"tile_size must be a positive int or two of them, got 32.5"):
        detect_tiled(BlobModel(), np.zeros((80, 80, 3), np.uint8), tile_size=32.5, overlap=8)
    with pytest.raises(ValueError, match=r"overlap must be an int in \[0, tile size\) = \[0, 32\), got 8.5"):
        detect_tiled(BlobModel(), np.zeros((80, 80, 3), np.uint8), tile_size=32, overlap=8.5)

    class Broken:
        def detect(self, images):
            return [{"rois": np.zeros((1, 4)), "class_ids": [1], "scores": [1.0], "masks": np.zeros((5, 5, 1), bool)}
                    for _ in images]

    with pytest.raises(ValueError, match=r"\[32, 32, 1\]"):
        detect_tiled(Broken(), np.zeros((80, 80, 3), np.uint8), tile_size=32, overlap=8)


class _NestedModel(BlobModel):
    """Reports each bright disc and, inside it, a smaller bright core as a second instance of the
    same class (the model's own decision, e.g. a small nucleus on a large one)."""

    def detect(self, images):
        results = []
        for image in images:
            outer = image[..., 0] > 0
            inner = image[..., 0] > 150
            masks = [m for m in (outer, inner) if m.any()]
            stack = np.stack(masks, -1) if masks else np.zeros(image.shape[:2] + (0,), bool)
            results.append({"rois": np.zeros((len(masks), 4), np.int32), "class_ids": np.ones(len(masks), np.int32),
                            "scores": np.array([0.9, 0.8][:len(masks)], np.float32), "masks": stack})
        return results


def test_nested_instances_of_one_tile_are_both_kept():
    """Found in review: the duplicate rule compared candidates of one tile, so an image that fits one
    tile lost a detection `detect` keeps (the core lies > 50% inside the disc)."""
    image = np.zeros((40, 40, 3), np.uint8)
    rr, cc = skimage.draw.disk((20, 20), 12, shape=(40, 40))
    image[rr, cc] = 100
    rr, cc = skimage.draw.disk((20, 20), 4, shape=(40, 40))
    image[rr, cc] = 200
    plain = _NestedModel().detect([image])[0]
    tiled = detect_tiled(_NestedModel(), image, tile_size=64, overlap=8)
    assert len(tiled["scores"]) == len(plain["scores"]) == 2
    np.testing.assert_array_equal(tiled["masks"], plain["masks"])
    # Across tiles the same pair is still merged: each tile reports the disc and its core once.
    wide = np.zeros((40, 90, 3), np.uint8)
    wide[:, 25:65] = image[:, :40]
    merged = detect_tiled(_NestedModel(), wide, tile_size=(40, 70), overlap=30)  # tiles at x 0 and 20
    assert len(merged["scores"]) == 2


def test_batch_size_and_a_model_without_masks_are_named():
    image = np.zeros((80, 80, 3), np.uint8)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"batch_size must be a positive int, got"):
            detect_tiled(BlobModel(), image, tile_size=32, overlap=8, batch_size=bad)

    class BoxesOnly:
        def detect(self, images):
            return [{"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros(0, np.int32),
                     "scores": np.zeros(0, np.float32)} for _ in images]

    with pytest.raises(ValueError, match=r"returned no 'masks' \(a model with MASK_HEAD = False\?\)"):
        detect_tiled(BoxesOnly(), image, tile_size=32, overlap=8)


def test_keypoints_are_left_out_with_a_warning():
    """Found in review: a keypoint model's keypoints vanished from detect_tiled's result without a word."""

    class WithKeypoints(BlobModel):
        def detect(self, images):
            results = super().detect(images)
            for result in results:
                result["keypoints"] = np.zeros((len(result["scores"]), 2, 3), np.float32)
            return results

    image, _ = _disc_image((80, 80), [(20, 20), (60, 60)], 6)
    with pytest.warns(UserWarning, match="detect_tiled merges masks only") as caught:
        merged = detect_tiled(WithKeypoints(), image, tile_size=48, overlap=16)
    assert len(caught) == 1 and caught[0].filename == __file__
    assert "keypoints" not in merged and len(merged["scores"]) == 2
