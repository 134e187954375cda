"""Tests for mrcnn.data.shapes: determinism, mask/image consistency, COCO export round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.io
from pycocotools.coco import COCO

from mrcnn.data.shapes import (
    ShapesConfig,
    ShapesDataset,
    export_coco,
    mask_to_polygons,
)

H, W = 64, 80  # non-square on purpose: catches height/width swaps


def _shapes(count=12, seed=0, height=H, width=W, **kwargs) -> ShapesDataset:
    dataset = ShapesDataset()
    dataset.load_shapes(count, height, width, seed=seed, **kwargs)
    dataset.prepare()
    return dataset


def test_config_is_valid():
    config = ShapesConfig()
    assert config.NUM_CLASSES == 4
    assert tuple(config.IMAGE_SHAPE) == (128, 128, 3)


def test_classes():
    dataset = _shapes(1)
    assert dataset.class_names == ["BG", "square", "circle", "triangle"]
    assert dataset.num_classes == 4


def test_same_seed_same_data():
    a, b = _shapes(seed=3), _shapes(seed=3)
    for i in a.image_ids:
        np.testing.assert_array_equal(a.load_image(i), b.load_image(i))
        ma, ca = a.load_mask(i)
        mb, cb = b.load_mask(i)
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_array_equal(ca, cb)


def test_different_seed_different_data():
    a, b = _shapes(4, seed=0), _shapes(4, seed=1)
    assert any(not np.array_equal(a.load_image(i), b.load_image(i)) for i in range(4))


def test_order_independent():
    # Image k depends on (seed, k) only: not on how many images were generated before it.
    many, few = _shapes(10, seed=5), _shapes(3, seed=5)
    for i in range(3):
        np.testing.assert_array_equal(many.load_image(i), few.load_image(i))
    # Loading in reverse order gives the same images as loading forwards.
    forward = [many.load_image(i) for i in range(10)]
    backward = [many.load_image(i) for i in reversed(range(10))][::-1]
    for f, b in zip(forward, backward):
        np.testing.assert_array_equal(f, b)


def test_images_and_masks_are_consistent():
    dataset = _shapes(30, seed=7, max_shapes=5)
    counts = []
    for i in dataset.image_ids:
        image = dataset.load_image(i)
        masks, class_ids = dataset.load_mask(i)
        info = dataset.image_info[i]
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert masks.shape[:2] == (H, W) and masks.dtype == bool
        assert class_ids.dtype == np.int32 and masks.shape[-1] == len(class_ids)
        assert 1 <= len(class_ids) <= 5
        assert set(class_ids.tolist()) <= {1, 2, 3}
        # Instances do not overlap (occlusion subtracted), and none is tiny.
        assert masks.sum(axis=-1).max() <= 1
        assert (masks.sum(axis=(0, 1)) >= 20).all()
        # Each visible pixel shows its shape's colour; everything else is background.
        for k, shape in enumerate(info["shapes"]):
            assert (image[masks[..., k]] == np.array(shape[1])).all()
            assert dataset.class_names[class_ids[k]] == shape[0]
        background = ~masks.any(axis=-1)
        assert (image[background] == np.array(info["bg_color"])).all()
        counts.append(len(class_ids))
    # Varied instance counts, occlusions included.
    assert len(set(counts)) >= 3


def test_occlusion_is_subtracted():
    # Find an image where a later shape overlaps an earlier one and check the earlier mask lost those pixels.
    from mrcnn.data.shapes import _shape_mask

    dataset = _shapes(60, seed=11, max_shapes=4)
    found = False
    for i in dataset.image_ids:
        info = dataset.image_info[i]
        full = [_shape_mask(s, H, W) for s in info["shapes"]]
        masks, _ = dataset.load_mask(i)
        for k in range(len(full) - 1):
            later = np.any(full[k + 1:], axis=0)
            if (full[k] & later).any():
                found = True
                assert not (masks[..., k] & later).any()
                np.testing.assert_array_equal(masks[..., k], full[k] & ~later)
    assert found, "no overlapping shapes in 60 images: the generator stopped producing occlusions"


def test_image_reference():
    dataset = _shapes(2, seed=4)
    assert dataset.image_reference(1).startswith("shapes seed=4 index=1: ")


def test_too_small_image_rejected():
    with pytest.raises(ValueError, match="16x16"):
        _shapes(1, height=8, width=8)


# ----------------------------------------------------------------------------------------------
# COCO export
@pytest.mark.parametrize("segmentation", ["rle", "polygon"])
def test_export_coco_round_trip(tmp_path, segmentation):
    dataset = _shapes(6, seed=2)
    json_path = export_coco(dataset, tmp_path / "coco", segmentation=segmentation)
    coco = COCO(str(json_path))
    total = sum(dataset.load_mask(i)[0].shape[-1] for i in dataset.image_ids)
    assert len(coco.getAnnIds()) == total
    assert sorted(coco.getCatIds()) == [1, 2, 3]
    assert [c["name"] for c in coco.loadCats([1, 2, 3])] == ["square", "circle", "triangle"]
    for internal_id in dataset.image_ids:
        coco_id = int(internal_id) + 1
        info = coco.loadImgs(coco_id)[0]
        assert (info["height"], info["width"]) == (H, W)
        image = skimage.io.imread(str(tmp_path / "coco" / "images" / info["file_name"]))
        np.testing.assert_array_equal(image, dataset.load_image(internal_id))
        masks, class_ids = dataset.load_mask(internal_id)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[coco_id]))
        assert [a["category_id"] for a in anns] == class_ids.tolist()
        for k, ann in enumerate(anns):
            decoded = coco.annToMask(ann).astype(bool)
            assert ann["iscrowd"] == 0
            assert ann["area"] == masks[..., k].sum()
            ys, xs = np.nonzero(masks[..., k])
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            if segmentation == "rle":
                np.testing.assert_array_equal(decoded, masks[..., k])
            else:
                # Polygons cut diagonal pixel corners: close, not exact.
                iou = (decoded & masks[..., k]).sum() / (decoded | masks[..., k]).sum()
                assert iou > 0.85, (internal_id, k, iou)


def test_export_coco_crowd(tmp_path):
    dataset = _shapes(5, seed=9)
    json_path = dataset.export_coco(tmp_path / "crowd", crowd_fraction=1.0)
    coco = COCO(str(json_path))
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and all(a["iscrowd"] == 1 for a in anns)
    # Crowd regions use uncompressed RLE, as in COCO's own annotation files.
    assert all(isinstance(a["segmentation"]["counts"], list) for a in anns)
    for ann in anns:
        masks, _ = dataset.load_mask(ann["image_id"] - 1)
        k = [a["id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[ann["image_id"]]))].index(ann["id"])
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), masks[..., k])
    # Ids start at 1: COCOeval treats annotation id 0 as "unmatched".
    data = json.loads(json_path.read_text())
    assert min(a["id"] for a in data["annotations"]) == 1
    assert min(i["id"] for i in data["images"]) == 1


def test_export_coco_crowd_fraction_is_deterministic(tmp_path):
    dataset = _shapes(8, seed=1)
    flags = []
    for run in range(2):
        coco = COCO(str(export_coco(dataset, tmp_path / f"r{run}", crowd_fraction=0.5, seed=3)))
        flags.append([a["iscrowd"] for a in coco.loadAnns(coco.getAnnIds())])
    assert flags[0] == flags[1]
    assert 0 < sum(flags[0]) < len(flags[0])


def test_export_coco_bad_arguments(tmp_path):
    dataset = _shapes(1)
    with pytest.raises(ValueError, match="segmentation"):
        export_coco(dataset, tmp_path, segmentation="mask")
    with pytest.raises(ValueError, match="crowd_fraction"):
        export_coco(dataset, tmp_path, crowd_fraction=1.5)


def test_mask_to_polygons_square():
    mask = np.zeros((10, 10), bool)
    mask[2:6, 3:8] = True  # rows 2..5, cols 3..7
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 1
    xs, ys = polygons[0][0::2], polygons[0][1::2]
    # The contour runs along pixel edges (corners cut by half a pixel).
    assert min(xs) == 3.0 and max(xs) == 8.0 and min(ys) == 2.0 and max(ys) == 6.0


def test_polygon_export_keeps_holes_as_rle(tmp_path):
    class Ring(ShapesDataset):
        def load_mask(self, image_id):
            mask = np.zeros((H, W, 1), bool)
            mask[10:40, 10:40] = True
            mask[20:30, 20:30] = False  # a hole: COCO polygons would fill it
            return mask, np.array([1], np.int32)

    dataset = Ring()
    dataset.load_shapes(1, H, W)
    dataset.prepare()
    coco = COCO(str(export_coco(dataset, tmp_path, segmentation="polygon")))
    ann = coco.loadAnns(coco.getAnnIds())[0]
    assert isinstance(ann["segmentation"], dict)
    np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), dataset.load_mask(0)[0][..., 0])
