"""Tests for mrcnn/data/coco.py: COCO-format loading (polygons, RLE, crowd, id mapping, errors)."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import skimage.io

from mrcnn.data.coco import CocoDataset, coco_paths, decode_segmentation, download_coco
from mrcnn.data.shapes import ShapesDataset, export_coco

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PERSON_DIR = SHARED_DATA / "coco_person_kpts"
PERSON_JSON = PERSON_DIR / "test_coco.json"

H, W = 64, 80  # non-square: catches height/width swaps
CROWD_SEED = 3  # export_coco seed that marks >= 1 instance of `_shapes()` as crowd (asserted below)

# The hand-made file's annotations 4 and 5 have no mask on purpose; the warning naming them is
# asserted in test_compressed_rle_crowd_and_tiny_annotations (pytest.warns sees it regardless).
pytestmark = pytest.mark.filterwarnings("ignore:.*annotations have an empty or missing segmentation:UserWarning")


def _shapes(count: int = 6, seed: int = 2) -> ShapesDataset:
    dataset = ShapesDataset()
    dataset.load_shapes(count, H, W, seed=seed)
    dataset.prepare()
    return dataset


def _load(json_path: Path, image_dir: Path, **kwargs) -> CocoDataset:
    dataset = CocoDataset()
    dataset.load_coco_json(json_path, image_dir, **kwargs)
    dataset.prepare()
    return dataset


def _rle(mask: np.ndarray) -> dict:
    """Compressed RLE with str counts, as COCO JSON files hold it."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _square(top: int, left: int, size: int, height: int = 40, width: int = 50) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


@pytest.fixture
def handmade(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A small COCO file written by hand: compressed RLE, crowd, degenerate polygons, an empty image.

    Category ids 7 and 42 are not contiguous, so internal and COCO ids differ.
    """
    image_dir = tmp_path / "imgs"
    image_dir.mkdir()
    masks = {
        1: _square(2, 3, 10),   # cat 7
        2: _square(20, 30, 8),  # cat 42, crowd
        3: _square(5, 25, 6),   # cat 42
    }
    images = [
        {"id": 11, "file_name": "a.png", "height": 40, "width": 50, "coco_url": "http://example.org/a.png"},
        {"id": 12, "file_name": "b.png", "height": 40, "width": 50},  # no annotations at all
    ]
    for info in images:
        skimage.io.imsave(str(image_dir / info["file_name"]), np.full((40, 50, 3), 9, np.uint8), check_contrast=False)
    annotations = [
        {"id": 1, "image_id": 11, "category_id": 7, "segmentation": _rle(masks[1]), "iscrowd": 0, "area": 100.0},
        {"id": 2, "image_id": 11, "category_id": 42, "segmentation": _rle(masks[2]), "iscrowd": 1, "area": 64.0},
        {"id": 3, "image_id": 11, "category_id": 42, "segmentation": _rle(masks[3]), "iscrowd": 0, "area": 36.0},
        # Tiny / degenerate annotations decode to no pixel and must be skipped:
        {"id": 4, "image_id": 11, "category_id": 7, "segmentation": [[1.0, 1.0, 3.0, 1.0]], "iscrowd": 0},
        {"id": 5, "image_id": 11, "category_id": 7, "segmentation": [], "iscrowd": 0},
        {"id": 6, "image_id": 11, "category_id": 7, "segmentation": [[4.0, 4.0, 4.2, 4.0, 4.1, 4.1]], "iscrowd": 0},
    ]
    categories = [{"id": 7, "name": "seven"}, {"id": 42, "name": "answer"}]
    json_path = tmp_path / "handmade.json"
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return json_path, image_dir, masks


# ----------------------------------------------------------------------------------------------
# Real COCO annotations (4 val2017 images, 14 persons, polygons)
@pytest.fixture(scope="module")
def person() -> tuple[CocoDataset, dict]:
    if not PERSON_JSON.is_file():
        pytest.skip(f"shared data not available: {PERSON_JSON}")
    raw = json.loads(PERSON_JSON.read_text())
    return _load(PERSON_JSON, PERSON_DIR), raw


def test_person_counts_match_the_json(person):
    dataset, raw = person
    assert dataset.num_images == len(raw["images"]) == 4
    assert [info["id"] for info in dataset.image_info] == sorted(i["id"] for i in raw["images"])
    total = 0
    for image_id in dataset.image_ids:
        masks, class_ids = dataset.load_mask(image_id)
        info = dataset.image_info[image_id]
        expected = [a for a in raw["annotations"] if a["image_id"] == info["id"]]
        assert masks.shape == (info["height"], info["width"], len(expected))
        assert masks.dtype == bool and class_ids.dtype == np.int32
        assert class_ids.tolist() == [dataset.map_source_class_id("coco.1")] * len(expected)
        total += masks.shape[-1]
    assert total == len(raw["annotations"]) == 14


def test_person_masks_match_annotation_areas(person):
    dataset, _ = person
    for image_id in dataset.image_ids:
        masks, _ = dataset.load_mask(image_id)
        for k, ann in enumerate(dataset.image_info[image_id]["annotations"]):
            # COCO's `area` is the polygon's area; rasterizing moves it by about a pixel per
            # boundary pixel, i.e. a few percent for the smallest person (~500 px).
            pixels = int(masks[..., k].sum())
            assert abs(pixels - ann["area"]) <= max(0.03 * ann["area"], 10), (image_id, ann["id"], pixels, ann["area"])
            # The mask lies inside the annotation's box (rounded outwards).
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(masks[..., k])
            assert xs.min() >= np.floor(x) - 1 and xs.max() <= np.ceil(x + w) + 1
            assert ys.min() >= np.floor(y) - 1 and ys.max() <= np.ceil(y + h) + 1


def test_person_class_mapping_and_references(person):
    dataset, raw = person
    assert dataset.class_names == ["BG", "person"]
    assert dataset.map_source_class_id("coco.1") == 1
    assert dataset.get_source_class_id(1, "coco") == 1
    image = dataset.load_image(0)
    info = dataset.image_info[0]
    assert image.shape == (info["height"], info["width"], 3)
    by_id = {i["id"]: i for i in raw["images"]}
    assert dataset.image_reference(0) == by_id[info["id"]]["coco_url"]


# ----------------------------------------------------------------------------------------------
# Round trip through mrcnn.data.shapes.export_coco
def test_shapes_export_round_trip_rle_with_crowd(tmp_path):
    shapes = _shapes()
    json_path = export_coco(shapes, tmp_path / "export", crowd_fraction=0.3, seed=CROWD_SEED)
    raw = json.loads(json_path.read_text())
    crowd = [a for a in raw["annotations"] if a["iscrowd"]]
    assert crowd, f"export seed {CROWD_SEED} should give at least one crowd instance"
    assert any(not a["iscrowd"] for a in raw["annotations"])
    assert all(isinstance(a["segmentation"]["counts"], list) for a in crowd)  # uncompressed RLE

    dataset = _load(json_path, tmp_path / "export" / "images")
    assert dataset.class_names == shapes.class_names
    assert dataset.num_images == shapes.num_images
    crowd_ids = {(a["image_id"], a["id"]) for a in crowd}
    seen_crowd = 0
    for internal_id in shapes.image_ids:
        expected_masks, expected_ids = shapes.load_mask(internal_id)
        coco_id = int(internal_id) + 1  # export_coco's image ids
        loaded_id = dataset.image_from_source_map[f"coco.{coco_id}"]
        masks, class_ids = dataset.load_mask(loaded_id)
        np.testing.assert_array_equal(masks, expected_masks)  # RLE is exact
        np.testing.assert_array_equal(np.abs(class_ids), expected_ids)
        anns = dataset.image_info[loaded_id]["annotations"]
        is_crowd = np.array([(coco_id, a["id"]) in crowd_ids for a in anns])
        np.testing.assert_array_equal(class_ids < 0, is_crowd)
        seen_crowd += int(is_crowd.sum())
        np.testing.assert_array_equal(dataset.load_image(loaded_id), shapes.load_image(internal_id))
    assert seen_crowd == len(crowd)


def test_shapes_export_round_trip_polygons(tmp_path):
    shapes = _shapes()
    json_path = export_coco(shapes, tmp_path / "export", segmentation="polygon")
    raw = json.loads(json_path.read_text())
    assert any(isinstance(a["segmentation"], list) for a in raw["annotations"])
    dataset = _load(json_path, tmp_path / "export" / "images")
    for internal_id in shapes.image_ids:
        expected, expected_ids = shapes.load_mask(internal_id)
        masks, class_ids = dataset.load_mask(internal_id)  # same order: ids are internal + 1, sorted
        np.testing.assert_array_equal(class_ids, expected_ids)
        for k in range(expected.shape[-1]):
            iou = (masks[..., k] & expected[..., k]).sum() / (masks[..., k] | expected[..., k]).sum()
            assert iou > 0.85, (internal_id, k, iou)


def test_load_coco_standard_layout(tmp_path):
    shapes = _shapes(3)
    export = tmp_path / "export"
    json_path = export_coco(shapes, export)
    json_file, image_dir = coco_paths(tmp_path / "coco", "val", "2017")
    assert json_file == tmp_path / "coco" / "annotations" / "instances_val2017.json"
    assert image_dir == tmp_path / "coco" / "val2017"
    assert coco_paths(tmp_path, "minival", "2014")[1] == tmp_path / "val2014"
    json_file.parent.mkdir(parents=True)
    shutil.copy(json_path, json_file)
    shutil.copytree(export / "images", image_dir)
    dataset = CocoDataset()
    coco = dataset.load_coco(tmp_path / "coco", "val", year="2017", return_coco=True)
    dataset.prepare()
    assert dataset.num_images == 3 and sorted(coco.getImgIds()) == [1, 2, 3]
    assert dataset.image_reference(0) == "000001.png"  # no coco_url in the file: its name
    np.testing.assert_array_equal(dataset.load_mask(0)[0], shapes.load_mask(0)[0])


# ----------------------------------------------------------------------------------------------
# Hand-written file: compressed RLE, crowd, tiny annotations, empty image, id mapping
def test_compressed_rle_crowd_and_tiny_annotations(handmade):
    json_path, image_dir, expected = handmade
    # 4 (2 points) and 5 (empty) are named at load; 6 has 3 points but covers no pixel centre.
    with pytest.warns(UserWarning, match=r"2 of 6 annotations have an empty or missing segmentation or only polygons of "
                                         r"fewer than 3 points \(no mask; e.g. ids \[4, 5\]\)"):
        dataset = _load(json_path, image_dir)
    a = dataset.image_from_source_map["coco.11"]
    masks, class_ids = dataset.load_mask(a)
    assert masks.shape == (40, 50, 3)  # annotations 4, 5, 6 have no pixel
    for k in range(3):
        np.testing.assert_array_equal(masks[..., k], expected[k + 1])
    seven, answer = dataset.map_source_class_id("coco.7"), dataset.map_source_class_id("coco.42")
    assert class_ids.tolist() == [seven, -answer, answer]
    assert dataset.image_reference(a) == "http://example.org/a.png"


def test_category_ids_map_both_ways(handmade):
    json_path, image_dir, _ = handmade
    dataset = _load(json_path, image_dir)
    assert dataset.class_names == ["BG", "seven", "answer"]
    assert dataset.map_source_class_id("coco.7") == 1
    assert dataset.map_source_class_id("coco.42") == 2
    assert dataset.get_source_class_id(1, "coco") == 7
    assert dataset.get_source_class_id(2, "coco") == 42
    with pytest.raises(KeyError, match="coco.8"):
        dataset.map_source_class_id("coco.8")


def test_image_without_annotations(handmade):
    json_path, image_dir, _ = handmade
    dataset = _load(json_path, image_dir)
    b = dataset.image_from_source_map["coco.12"]
    masks, class_ids = dataset.load_mask(b)
    assert masks.shape == (40, 50, 0) and masks.dtype == bool
    assert class_ids.shape == (0,) and class_ids.dtype == np.int32
    assert dataset.image_reference(b) == "b.png"


def test_class_ids_subset_and_custom_source(handmade):
    json_path, image_dir, expected = handmade
    dataset = _load(json_path, image_dir, class_ids=[42], source="mine")
    # Only images holding category 42 remain (the empty image goes), and only its annotations.
    assert dataset.num_images == 1 and dataset.class_names == ["BG", "answer"]
    masks, class_ids = dataset.load_mask(0)
    assert class_ids.tolist() == [-1, 1]
    np.testing.assert_array_equal(masks[..., 1], expected[3])
    assert dataset.get_source_class_id(1, "mine") == 42
    with pytest.raises(ValueError, match=r"\[5\]"):
        _load(json_path, image_dir, class_ids=[5, 7])


def test_wrong_mask_size_names_image_and_annotation(handmade):
    json_path, image_dir, _ = handmade
    data = json.loads(json_path.read_text())
    data["annotations"][2]["segmentation"] = _rle(_square(0, 0, 4, height=30, width=50))
    json_path.write_text(json.dumps(data))
    dataset = _load(json_path, image_dir)
    with pytest.raises(ValueError, match=r"annotation 3 of image 11 .*size"):
        dataset.load_mask(dataset.image_from_source_map["coco.11"])


def test_undeclared_category_is_an_error(handmade):
    json_path, image_dir, _ = handmade
    data = json.loads(json_path.read_text())
    data["annotations"][0]["category_id"] = 99
    json_path.write_text(json.dumps(data))
    dataset = _load(json_path, image_dir)
    with pytest.raises(ValueError, match="annotation 1 of image 11 .*category 99"):
        dataset.load_mask(dataset.image_from_source_map["coco.11"])


def test_bad_uncompressed_rle_is_a_clear_error():
    with pytest.raises(ValueError, match="ann 9: uncompressed RLE counts sum to 7"):
        decode_segmentation({"counts": [3, 4], "size": [3, 3]}, 3, 3, where="ann 9")
    with pytest.raises(ValueError, match="ann 9: segmentation must be"):
        decode_segmentation(42, 3, 3, where="ann 9")
    # No segmentation (a box-only annotation) is no mask, as an empty polygon list.
    assert not decode_segmentation(None, 3, 3).any() and decode_segmentation(None, 3, 4).shape == (3, 4)
    mask = decode_segmentation({"counts": [2, 3, 4], "size": [3, 3]}, 3, 3)
    np.testing.assert_array_equal(mask.flatten(order="F"), [0, 0, 1, 1, 1, 0, 0, 0, 0])


def test_load_mask_needs_prepare(handmade):
    json_path, image_dir, _ = handmade
    dataset = CocoDataset()
    dataset.load_coco_json(json_path, image_dir)
    with pytest.raises(RuntimeError, match="prepare"):
        dataset.load_mask(0)


# ----------------------------------------------------------------------------------------------
# Missing files and downloads
def test_missing_files_name_the_path(tmp_path, handmade):
    json_path, image_dir, _ = handmade
    missing_json = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match=str(missing_json)):
        CocoDataset().load_coco_json(missing_json, image_dir)
    missing_dir = tmp_path / "no_images"
    with pytest.raises(FileNotFoundError, match=str(missing_dir)):
        CocoDataset().load_coco_json(json_path, missing_dir)
    expected = tmp_path / "coco" / "annotations" / "instances_train2017.json"
    with pytest.raises(FileNotFoundError, match=str(expected)):
        CocoDataset().load_coco(tmp_path / "coco", "train", year="2017")


def _rewrite(json_path: Path, edit) -> None:
    data = json.loads(json_path.read_text())
    edit(data)
    json_path.write_text(json.dumps(data))


def test_annotation_without_segmentation_key_is_reported_and_left_out(handmade):
    # Found in review: a box-only file that leaves the key out passed the load-time check and then
    # raised in load_mask, mid-epoch.
    json_path, image_dir, masks = handmade
    _rewrite(json_path, lambda data: data["annotations"][2].pop("segmentation"))  # id 3
    with pytest.warns(UserWarning, match=r"3 of 6 annotations have an empty or missing segmentation .*ids \[3, 4, 5\]"):
        dataset = _load(json_path, image_dir)
    loaded, class_ids = dataset.load_mask(dataset.image_from_source_map["coco.11"])
    assert loaded.shape == (40, 50, 2) and sorted(class_ids.tolist()) == sorted([1, -2])
    np.testing.assert_array_equal(loaded[..., list(class_ids).index(1)], masks[1].astype(bool))


def test_missing_images_orphan_annotations_and_unnamed_categories_are_reported_at_load(handmade):
    json_path, image_dir, _ = handmade
    (image_dir / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the 2 images of .*handmade.json are not in .*imgs, e.g. \['b.png'\]"):
        CocoDataset().load_coco_json(json_path, image_dir)
    _rewrite(json_path, lambda data: data["images"].pop())  # b.png's entry gone: loads again
    _rewrite(json_path, lambda data: data["annotations"][2].update(image_id="11"))  # a string id
    dataset = CocoDataset()
    with pytest.warns(UserWarning, match=r"1 annotations refer to image ids that no image has \(e.g. \['11'\]\)"):
        dataset.load_coco_json(json_path, image_dir)
    dataset.prepare()
    assert len(dataset.image_info[0]["annotations"]) == 5
    _rewrite(json_path, lambda data: data["categories"][0].pop("name"))
    with pytest.raises(ValueError, match="category 7 in .*handmade.json has no 'name'"):
        CocoDataset().load_coco_json(json_path, image_dir)


def test_not_a_coco_file(tmp_path):
    (tmp_path / "images").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        CocoDataset().load_coco_json(bad, tmp_path / "images")
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        CocoDataset().load_coco_json(bad, tmp_path / "images")


def test_download_fails_clearly_offline(tmp_path, monkeypatch):
    def unreachable(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(RuntimeError, match=r"could not download http://images\.cocodataset\.org/.*cocodataset\.org"):
        download_coco(tmp_path / "coco", "val", "2017", verbose=0)
    assert not list((tmp_path / "coco").glob("*.part"))  # no half-written file left behind
    with pytest.raises(RuntimeError, match="no network"):
        CocoDataset().load_coco(tmp_path / "coco", "val", auto_download=True)
    with pytest.raises(ValueError, match="minival"):
        download_coco(tmp_path / "coco", "minival", "2014", verbose=0)


# ----------------------------------------------------------------------------------------------
# Person keypoints (Keypoint R-CNN)
def test_person_keypoints_follow_the_masks_and_the_json(person):
    from mrcnn.data.coco import COCO_PERSON_FLIP_MAP, COCO_PERSON_KEYPOINT_NAMES, COCO_PERSON_SKELETON

    dataset, raw = person
    assert dataset.keypoint_names == COCO_PERSON_KEYPOINT_NAMES
    # The file's skeleton is 1-based; ours is 0-based.
    assert [tuple(p) for p in raw["categories"][0]["skeleton"]] == [(a + 1, b + 1) for a, b in COCO_PERSON_SKELETON]
    assert COCO_PERSON_FLIP_MAP[5] == 6 and COCO_PERSON_FLIP_MAP[0] == 0  # shoulders swap, the nose stays
    by_image = {}
    for ann in raw["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image_id in dataset.image_ids:
        masks, _ = dataset.load_mask(image_id)
        keypoints = dataset.load_keypoints(image_id)
        assert keypoints.shape == (masks.shape[-1], 17, 3) and keypoints.dtype == np.float32
        anns = by_image[dataset.image_info[image_id]["id"]]
        assert [int((k[:, 2] > 0).sum()) for k in keypoints] == [a["num_keypoints"] for a in anns]
        for k, ann in zip(keypoints, anns):
            raw_points = np.asarray(ann["keypoints"], np.float32).reshape(17, 3)
            labelled = raw_points[:, 2] > 0
            # COCO's integer pixel indices become pixel centres.
            np.testing.assert_allclose(k[labelled, :2], raw_points[labelled, :2] + 0.5)
            np.testing.assert_array_equal(k[:, 2], raw_points[:, 2])


def test_keypoints_after_load_mask_reuse_its_rows_without_decoding_again(person, monkeypatch):
    import copy

    from mrcnn.data import coco as coco_module

    dataset, _ = person
    dataset = copy.deepcopy(dataset)
    first, second = dataset.image_ids[:2]
    anns = dataset.image_info[first]["annotations"]
    anns[0] = {**anns[0], "segmentation": [[1.0, 1.0, 2.0, 2.0]]}  # no area: load_mask drops it
    fresh = dataset.load_keypoints(first)  # nothing cached for this image: masks decoded
    assert len(fresh) == len(anns) - 1
    masks, _ = dataset.load_mask(first)
    calls = []
    original = coco_module.decode_segmentation
    monkeypatch.setattr(coco_module, "decode_segmentation", lambda *a, **k: calls.append(1) or original(*a, **k))
    cached = dataset.load_keypoints(first)
    assert calls == [] and len(cached) == masks.shape[-1]
    np.testing.assert_array_equal(cached, fresh)
    dataset.load_mask(second)
    np.testing.assert_array_equal(dataset.load_keypoints(first), fresh)  # another image cached: decoded again
    assert calls


def test_keypoints_of_a_file_without_keypoint_category(handmade):
    json_path, image_dir, _ = handmade
    dataset = _load(json_path, image_dir)
    with pytest.raises(ValueError, match="no category with 'keypoints'"):
        dataset.load_keypoints(0)
