"""Tests for mrcnn/evaluation/coco_eval.py with a stand-in model (no TensorFlow)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pycocotools.mask as mask_util
import pytest
import skimage.io
from pycocotools.cocoeval import COCOeval

from mrcnn.data.coco import CocoDataset
from mrcnn.data.shapes import ShapesDataset, export_coco
from mrcnn.evaluation.coco_eval import (
    KEYPOINT_STAT_NAMES,
    STAT_NAMES,
    build_coco_results,
    coco_eval_stats,
    encode_label_image,
    encode_masks,
    evaluate_coco,
    uncompressed_rle_counts,
)
from mrcnn.utils import extract_bboxes

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PERSON_DIR = SHARED_DATA / "coco_person_kpts"
PERSON_JSON = PERSON_DIR / "test_coco.json"


def _key(image: np.ndarray) -> tuple:
    return image.shape, hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class OracleModel:
    """Stand-in for MaskRCNN: returns each image's ground truth (crowd left out) as detections.

    Images are mapped back to dataset ids by a content hash. Options make the answer worse:
    `shift` moves masks and boxes right by that many pixels, `keep_every` keeps only every n-th
    detection, `empty` returns nothing. `coco_boxes` uses the annotation's float box instead of
    the mask's pixel box (real COCO boxes are polygon extents, not pixel boxes).
    """

    def __init__(self, dataset, batch_size=2, shift=0, keep_every=1, empty=False, coco_boxes=False):
        self.dataset = dataset
        self.config = SimpleNamespace(BATCH_SIZE=batch_size)
        self.shift, self.keep_every, self.empty, self.coco_boxes = shift, keep_every, empty, coco_boxes
        self.ids = {_key(dataset.load_image(i)): int(i) for i in dataset.image_ids}
        self.batches = []

    def detect(self, images, verbose=0):
        self.batches.append(len(images))
        return [self._detect_one(self.ids[_key(image)]) for image in images]

    def _detect_one(self, image_id):
        masks, class_ids = self.dataset.load_mask(image_id)
        keep = np.flatnonzero(class_ids > 0)[:: self.keep_every]
        if self.empty:
            keep = keep[:0]
        masks, class_ids = masks[..., keep], class_ids[keep]
        if self.coco_boxes:
            anns = self.dataset.image_info[image_id]["annotations"]
            rois = np.array([[a["bbox"][1], a["bbox"][0], a["bbox"][1] + a["bbox"][3], a["bbox"][0] + a["bbox"][2]]
                             for a in anns], dtype=np.float64).reshape(-1, 4)[keep]
        else:
            rois = extract_bboxes(masks)
        if self.shift:
            masks = np.roll(masks, self.shift, axis=1)
            rois = rois + np.array([0, self.shift, 0, self.shift])
        return {"rois": rois, "class_ids": class_ids.astype(np.int32),
                "scores": np.ones(len(class_ids), np.float32), "masks": masks}


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory):
    """Shapes exported to COCO (RLE, some crowd) and loaded back: (dataset, coco)."""
    shapes = ShapesDataset()
    shapes.load_shapes(6, 64, 80, seed=5)
    shapes.prepare()
    folder = tmp_path_factory.mktemp("shapes_coco")
    json_path = export_coco(shapes, folder, crowd_fraction=0.2, seed=1)
    dataset = CocoDataset()
    coco = dataset.load_coco_json(json_path, folder / "images", return_coco=True)
    dataset.prepare()
    return dataset, coco


@pytest.fixture(scope="module")
def person_coco():
    if not PERSON_JSON.is_file():
        pytest.skip(f"shared data not available: {PERSON_JSON}")
    dataset = CocoDataset()
    coco = dataset.load_coco_json(PERSON_JSON, PERSON_DIR, return_coco=True)
    dataset.prepare()
    return dataset, coco


def _many_instances(tmp_path: Path, count: int = 150) -> tuple[CocoDataset, object]:
    """One 160x240 image holding `count` separate 8x8 squares (more than COCO's default 100)."""
    height, width = 160, 240
    (tmp_path / "imgs").mkdir()
    image = np.zeros((height, width, 3), np.uint8)
    annotations = []
    for k in range(count):
        row, col = divmod(k, 20)
        mask = np.zeros((height, width), np.uint8)
        mask[row * 16 + 4: row * 16 + 12, col * 12 + 2: col * 12 + 10] = 1
        image[mask.astype(bool)] = 200
        rle = mask_util.encode(np.asfortranarray(mask))
        annotations.append({
            "id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 64.0,
            "bbox": [float(v) for v in mask_util.toBbox(rle)],
            "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
        })
    skimage.io.imsave(str(tmp_path / "imgs" / "many.png"), image, check_contrast=False)
    data = {"images": [{"id": 1, "file_name": "many.png", "height": height, "width": width}],
            "annotations": annotations, "categories": [{"id": 1, "name": "dot"}]}
    (tmp_path / "many.json").write_text(json.dumps(data))
    dataset = CocoDataset()
    coco = dataset.load_coco_json(tmp_path / "many.json", tmp_path / "imgs", return_coco=True)
    dataset.prepare()
    return dataset, coco


# ----------------------------------------------------------------------------------------------
def test_uncompressed_rle_matches_pycocotools():
    rng = np.random.default_rng(0)
    for first in (False, True):
        mask = rng.random((7, 5)) > 0.5
        mask[0, 0] = first
        rle = mask_util.frPyObjects({"counts": uncompressed_rle_counts(mask), "size": [7, 5]}, 7, 5)
        np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), mask)


def test_encode_masks_gives_pycocotools_encoding_of_each_mask():
    rng = np.random.default_rng(11)
    height, width = 23, 31
    masks = np.zeros((height, width, 9), bool)
    masks[:, :, 1] = True  # the whole image
    masks[0, 0, 2] = True  # first pixel only
    masks[-1, -1, 3] = True  # last pixel only
    masks[:, 0, 4] = masks[:, -1, 4] = True  # first and last columns
    masks[5:9, 10:20, 5] = True  # a box inside
    masks[0:3, 12:15, 6] = masks[20:, 12:15, 6] = True  # touching top and bottom, same columns
    masks[:, :, 7] = rng.random((height, width)) < 0.5  # noise everywhere
    masks[4:18, 6:11, 8] = rng.random((14, 5)) < 0.3  # noise in a band
    encoded = encode_masks(masks)  # mask 0 stays empty
    assert len(encoded) == masks.shape[-1]
    for k, rle in enumerate(encoded):
        expected = mask_util.encode(np.asfortranarray(masks[:, :, k].astype(np.uint8)))
        assert rle["counts"] == expected["counts"] and list(rle["size"]) == [height, width], f"mask {k}"
        np.testing.assert_array_equal(mask_util.decode(rle), masks[:, :, k])
    assert encode_masks(np.zeros((4, 5, 0), bool)) == []
    with pytest.raises(ValueError, match="masks must be"):
        encode_masks(np.zeros((4, 5), bool))


def test_label_image_encodes_as_its_masks():
    rng = np.random.default_rng(5)
    height, width = 23, 31
    labels = rng.integers(0, 7, (height, width)).astype(np.int32)  # noisy instances 1..6
    labels[labels == 4] = 0  # value 4 absent: an empty instance
    labels[-1, -1] = 6  # last pixel: the band ends inside the instance
    labels[:, 0] = 2  # first column
    masks = np.stack([labels == k for k in range(1, 7)], axis=-1)
    assert [r["counts"] for r in encode_label_image(labels)] == [r["counts"] for r in encode_masks(masks)]
    assert encode_label_image(np.zeros((4, 5), np.int32)) == []
    with pytest.raises(ValueError, match=r"\[H, W\] integer label image, got \(4, 5\) float64"):
        encode_label_image(np.zeros((4, 5)))


def test_shapes_ground_truth_scores_one(shapes_coco):
    dataset, coco = shapes_coco
    assert any(a["iscrowd"] for a in coco.dataset["annotations"]), "fixture should hold crowd instances"
    model = OracleModel(dataset, batch_size=4)
    metrics = evaluate_coco(model, dataset, coco, verbose=0)
    for eval_type in ("bbox", "segm"):
        assert set(metrics[eval_type]) == set(STAT_NAMES)
        assert metrics[eval_type]["AP"] == pytest.approx(1.0), eval_type
        assert metrics[eval_type]["AP50"] == pytest.approx(1.0)
        assert metrics[eval_type]["AR_max"] == pytest.approx(1.0)
    assert metrics["num_images"] == 6
    assert model.batches == [4, 2]  # batches of BATCH_SIZE, the last one shorter
    assert metrics["seconds_per_image"] >= 0.0


def test_string_image_ids_are_evaluated(tmp_path):
    # Found in review: COCO-format files whose image ids are strings loaded, but evaluate_coco cast
    # the ids to int and raised "invalid literal for int()".
    shapes = ShapesDataset()
    shapes.load_shapes(3, 64, 64, seed=4)
    shapes.prepare()
    json_path = export_coco(shapes, tmp_path, crowd_fraction=0.0, seed=1)
    data = json.loads(json_path.read_text())
    for info in data["images"]:
        info["id"] = f"img{info['id']}"
    for annotation in data["annotations"]:
        annotation["image_id"] = f"img{annotation['image_id']}"
    json_path.write_text(json.dumps(data))
    dataset = CocoDataset()
    coco = dataset.load_coco_json(json_path, tmp_path / "images", return_coco=True)
    dataset.prepare()
    assert all(isinstance(info["id"], str) for info in dataset.image_info)
    metrics = evaluate_coco(OracleModel(dataset), dataset, coco, verbose=0)
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP"] == pytest.approx(1.0)
    worse = evaluate_coco(OracleModel(dataset, shift=4), dataset, coco, verbose=0)
    assert worse["segm"]["AP"] < 0.9


def test_per_class_ap_names_the_class_a_model_misses(shapes_coco):
    dataset, coco = shapes_coco

    class NoCircles(OracleModel):
        def _detect_one(self, image_id):
            result = super()._detect_one(image_id)
            keep = result["class_ids"] != dataset.class_names.index("circle")
            return {k: (v[..., keep] if k == "masks" else v[keep]) for k, v in result.items()}

    metrics = evaluate_coco(NoCircles(dataset), dataset, coco, verbose=0)
    for eval_type in ("bbox", "segm"):
        per_class = metrics["per_class"][eval_type]
        assert set(per_class) == {"square", "circle", "triangle"}
        assert per_class["circle"]["AP"] == 0.0 and per_class["circle"]["AP50"] == 0.0
        assert per_class["square"]["AP"] == pytest.approx(1.0) and per_class["triangle"]["AP75"] == pytest.approx(1.0)
        # The summary AP is their mean, as COCO averages over categories.
        assert metrics[eval_type]["AP"] == pytest.approx(np.mean([v["AP"] for v in per_class.values()]))


def test_time_per_image_separates_the_first_call(shapes_coco, monkeypatch):
    from mrcnn.evaluation import detect_timer

    dataset, coco = shapes_coco
    clock = {"now": 0.0}

    class TracingModel(OracleModel):  # the first call costs 10 s (a trace), then 1 s per image
        def detect(self, images, verbose=0):
            clock["now"] += 10.0 if not self.batches else float(len(images))
            return super().detect(images, verbose)

    monkeypatch.setattr(detect_timer.time, "perf_counter", lambda: clock["now"])
    metrics = evaluate_coco(TracingModel(dataset, batch_size=4), dataset, coco, eval_types="bbox", verbose=0)
    assert metrics["first_batch_seconds"] == 10.0
    assert metrics["seconds_per_image_after_first_batch"] == 1.0  # 2 images in 2 s after the first 4
    assert metrics["seconds_per_image"] == pytest.approx(12.0 / 6)
    one_batch = evaluate_coco(TracingModel(dataset, batch_size=8), dataset, coco, eval_types="bbox", verbose=0)
    assert one_batch["seconds_per_image_after_first_batch"] is None


def test_person_ground_truth_scores_one(person_coco):
    dataset, coco = person_coco
    metrics = evaluate_coco(OracleModel(dataset, coco_boxes=True), dataset, coco, verbose=0)
    for eval_type in ("bbox", "segm"):
        assert metrics[eval_type]["AP"] == pytest.approx(1.0), eval_type
        assert metrics[eval_type]["AR_max"] == pytest.approx(1.0), eval_type
    assert metrics["num_images"] == 4 and metrics["num_detections"] == 14


def test_person_shifted_masks_score_lower(person_coco):
    dataset, coco = person_coco
    metrics = evaluate_coco(OracleModel(dataset, shift=6, coco_boxes=True), dataset, coco, verbose=0)
    assert metrics["segm"]["AP"] < 0.9
    assert metrics["bbox"]["AP"] < 0.9


def test_perturbed_detections_score_lower(shapes_coco):
    dataset, coco = shapes_coco
    shifted = evaluate_coco(OracleModel(dataset, shift=3), dataset, coco, verbose=0)
    assert shifted["segm"]["AP"] < 0.8 and shifted["bbox"]["AP"] < 0.8
    assert shifted["segm"]["AP50"] >= shifted["segm"]["AP"]
    halved = evaluate_coco(OracleModel(dataset, keep_every=2), dataset, coco, verbose=0)
    assert halved["segm"]["AR_max"] < 0.8 and halved["bbox"]["AP"] < 0.8


def test_max_dets_above_100_is_honoured(tmp_path):
    dataset, coco = _many_instances(tmp_path)
    model = OracleModel(dataset)
    capped = evaluate_coco(model, dataset, coco, eval_types="segm", max_dets=100, verbose=0)
    assert capped["segm"]["AR_max"] == pytest.approx(100 / 150)
    assert capped["segm"]["AP"] < 0.8
    full = evaluate_coco(model, dataset, coco, eval_types=["segm", "bbox"], max_dets=200, verbose=0)
    for eval_type in ("segm", "bbox"):
        assert full[eval_type]["AP"] == pytest.approx(1.0), eval_type
        assert full[eval_type]["AR_max"] == pytest.approx(1.0), eval_type
        assert full[eval_type]["AR10"] == pytest.approx(10 / 150), eval_type
    assert full["max_dets"] == 200


def test_segm_sizes_come_from_mask_areas(tmp_path):
    # A thin diagonal false positive: 40 mask pixels (COCO "small") in a 40x40 box ("medium").
    # Segm evaluation must file it under its mask area, so it costs AP_small; filed by its box
    # area it would be ignored there.
    dataset, coco = _many_instances(tmp_path, count=1)
    truth, _ = dataset.load_mask(0)
    line = np.zeros_like(truth)
    line[np.arange(40, 80), np.arange(40, 80), 0] = True
    masks = np.concatenate([line, truth], axis=-1)
    results = build_coco_results(dataset, [0], extract_bboxes(masks), np.array([1, 1]), np.array([0.9, 0.5]), masks)
    segm = coco_eval_stats(coco, results, "segm", max_dets=100)
    assert segm["AP_small"] == pytest.approx(0.5, abs=0.02)
    assert segm["AP_medium"] == -1.0  # no medium ground truth: COCO's -1
    assert coco_eval_stats(coco, results, "bbox", max_dets=100)["AP_small"] == pytest.approx(1.0)


def test_zero_detections_do_not_crash(shapes_coco, capsys):
    dataset, coco = shapes_coco
    metrics = evaluate_coco(OracleModel(dataset, empty=True), dataset, coco, verbose=0)
    for eval_type in ("bbox", "segm"):
        assert metrics[eval_type]["AP"] == 0.0 and metrics[eval_type]["AR_max"] == 0.0
    assert metrics["num_detections"] == 0 and "no detections" in metrics["note"]
    assert capsys.readouterr().out == ""  # verbose=0 keeps pycocotools quiet


def test_results_file_limit_and_verbose(shapes_coco, tmp_path, capsys):
    dataset, coco = shapes_coco
    path = tmp_path / "results.json"
    metrics = evaluate_coco(OracleModel(dataset), dataset, coco, eval_types=("bbox",), limit=2,
                            max_dets=150, results_path=path, verbose=1)
    assert set(metrics) >= {"bbox", "seconds_per_image", "num_images"} and "segm" not in metrics
    assert metrics["num_images"] == 2 and metrics["bbox"]["AP"] == pytest.approx(1.0)
    results = json.loads(path.read_text())
    assert {r["image_id"] for r in results} == {dataset.image_info[0]["id"], dataset.image_info[1]["id"]}
    assert len(coco.loadRes(results).getAnnIds()) == len(results)
    out = capsys.readouterr().out
    assert "maxDets=150" in out and "maxDets=100" not in out


def test_bad_arguments(shapes_coco):
    dataset, coco = shapes_coco
    model = OracleModel(dataset)
    with pytest.raises(ValueError, match="keypoints"):
        evaluate_coco(model, dataset, coco, eval_types=("keypoints",), verbose=0)
    with pytest.raises(ValueError, match="max_dets"):
        evaluate_coco(model, dataset, coco, max_dets=5, verbose=0)
    model.config.NUM_CLASSES, model.batches = 81, []  # e.g. a COCO-class model on a 4-class dataset
    with pytest.raises(ValueError, match=rf"dataset has {dataset.num_classes} classes .* config.NUM_CLASSES is 81"):
        evaluate_coco(model, dataset, coco, verbose=0)
    assert model.batches == []  # checked before any detection


def test_build_coco_results_names_a_class_id_the_dataset_lacks(shapes_coco):
    dataset, _ = shapes_coco
    with pytest.raises(ValueError, match=rf"internal class 50 does not exist: the dataset has {dataset.num_classes}"):
        build_coco_results(dataset, [0], np.array([[0, 0, 4, 4]]), np.array([50]), np.array([0.9]))


# ----------------------------------------------------------------------------------------------
def test_build_coco_results_converts_boxes_ids_and_masks(tmp_path):
    # Non-contiguous category ids: internal 1 -> COCO 7, internal 2 -> COCO 42.
    (tmp_path / "imgs").mkdir()
    skimage.io.imsave(str(tmp_path / "imgs" / "a.png"), np.zeros((20, 30, 3), np.uint8), check_contrast=False)
    data = {"images": [{"id": 77, "file_name": "a.png", "height": 20, "width": 30}], "annotations": [],
            "categories": [{"id": 7, "name": "seven"}, {"id": 42, "name": "answer"}]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    dataset = CocoDataset()
    dataset.load_coco_json(tmp_path / "a.json", tmp_path / "imgs")
    dataset.prepare()
    masks = np.zeros((20, 30, 2), bool)
    masks[3:8, 4:10, 0] = True  # rows 3..7, cols 4..9
    masks[10:12, 0:30, 1] = True
    rois = extract_bboxes(masks)
    assert rois[0].tolist() == [3, 4, 8, 10]  # y2/x2 exclusive
    results = build_coco_results(dataset, [0], rois, np.array([2, 1]), np.array([0.9, 0.4]), masks)
    assert [r["image_id"] for r in results] == [77, 77]
    assert [r["category_id"] for r in results] == [42, 7]
    assert results[0]["bbox"] == [4.0, 3.0, 6.0, 5.0]  # x, y, w, h
    assert results[0]["bbox"] == [float(v) for v in mask_util.toBbox(mask_util.encode(
        np.asfortranarray(masks[..., 0].astype(np.uint8))))]
    assert [r["score"] for r in results] == pytest.approx([0.9, 0.4])
    json.dumps(results)  # JSON-ready: counts are str
    for k, result in enumerate(results):
        assert isinstance(result["segmentation"]["counts"], str)
        np.testing.assert_array_equal(mask_util.decode(result["segmentation"]).astype(bool), masks[..., k])
    # List-of-images form gives the same; no masks leaves segmentation out.
    assert build_coco_results(dataset, [0], [rois], [np.array([2, 1])], [np.array([0.9, 0.4])], [masks]) == results
    assert "segmentation" not in build_coco_results(dataset, [0], [rois], [[2, 1]], [[0.9, 0.4]])[0]
    with pytest.raises(ValueError, match="image 0 .*masks of shape"):
        build_coco_results(dataset, [0], rois, np.array([2, 1]), np.array([0.9, 0.4]), masks[:10])
    with pytest.raises(ValueError, match="class id 0"):
        build_coco_results(dataset, [0], rois, np.array([0, 1]), np.array([0.9, 0.4]), masks)


# ----------------------------------------------------------------------------------------------
# Keypoints (OKS)
@pytest.fixture(scope="module")
def person_keypoints(shared_data_dir):
    folder = shared_data_dir / "coco_person_kpts"
    if not (folder / "test_coco.json").is_file():
        pytest.skip(f"shared data not available: {folder}")
    dataset = CocoDataset()
    coco = dataset.load_coco_json(folder / "test_coco.json", folder, return_coco=True)
    dataset.prepare()
    return dataset, coco


def _gt_keypoint_results(dataset, shift=0.0):
    """The ground truth persons that have labelled keypoints, written as detections."""
    ids, rois, class_ids, scores, keypoints = [], [], [], [], []
    for image_id in dataset.image_ids:
        masks, classes = dataset.load_mask(image_id)
        points = dataset.load_keypoints(image_id)
        keep = (points[..., 2] > 0).any(axis=1)
        moved = points[keep].copy()
        moved[..., 0] += shift
        ids.append(image_id)
        rois.append(extract_bboxes(masks)[keep])
        class_ids.append(classes[keep])
        scores.append(np.linspace(1.0, 0.5, int(keep.sum())))
        keypoints.append(moved)
    return build_coco_results(dataset, ids, rois, class_ids, scores, keypoints=keypoints)


def test_person_keypoints_scored_against_themselves_give_ap_1(person_keypoints):
    dataset, coco = person_keypoints
    results = _gt_keypoint_results(dataset)
    assert len(results) == 12 and len(results[0]["keypoints"]) == 3 * 17
    stats = coco_eval_stats(coco, results, "keypoints")
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    assert list(stats) == list(KEYPOINT_STAT_NAMES)  # COCO has no small range for keypoints
    # Moving every keypoint 8 px lowers OKS: the evaluation looks at the keypoints.
    assert coco_eval_stats(coco, _gt_keypoint_results(dataset, shift=8.0), "keypoints")["AP"] < 0.9


def test_keypoint_stats_are_cocos_keypoint_summary_at_20_detections(person_keypoints):
    # 20 confident junk detections per image rank above the true persons: COCO's keypoint metric
    # (maxDets 20) never reaches the true ones; at 100 they would count.
    dataset, coco = person_keypoints
    truth = _gt_keypoint_results(dataset)
    for k, result in enumerate(truth):
        result["score"] = 0.8 - 0.01 * k
    junk = [{"image_id": image_id, "category_id": 1, "score": 0.99 - 0.004 * j,
             "keypoints": [1.0, 1.0, 1.0] * 17} for image_id in coco.getImgIds() for j in range(20)]
    results = junk + truth
    ours = coco_eval_stats(coco, results, "keypoints")
    reference = COCOeval(coco, coco.loadRes([{k: v for k, v in r.items() if k != "bbox"} for r in results]),
                         iouType="keypoints")
    with contextlib.redirect_stdout(io.StringIO()):
        reference.evaluate()
        reference.accumulate()
        reference.summarize()  # pycocotools' own keypoint summary: maxDets [20]
    np.testing.assert_allclose([ours[name] for name in KEYPOINT_STAT_NAMES], reference.stats, atol=1e-12)
    assert ours["AP"] == 0.0 and ours["AR"] == 0.0
    assert coco_eval_stats(coco, results, "keypoints", max_dets=100)["AR"] == pytest.approx(1.0)


def test_dataset_to_coco_reproduces_the_person_ground_truth(person_keypoints):
    from mrcnn.evaluation.coco_eval import dataset_to_coco

    dataset, coco = person_keypoints
    rebuilt = dataset_to_coco(dataset, with_keypoints=True, keypoint_names=dataset.keypoint_names,
                              skeleton=dataset.skeleton)
    results = _gt_keypoint_results(dataset)
    assert coco_eval_stats(rebuilt, results, "keypoints")["AP"] == pytest.approx(1.0)
    assert rebuilt.loadCats(1)[0]["skeleton"] == coco.loadCats(1)[0]["skeleton"]
    original = sorted((a["image_id"], a["num_keypoints"]) for a in coco.dataset["annotations"])
    assert sorted((a["image_id"], a["num_keypoints"]) for a in rebuilt.dataset["annotations"]) == original


def test_keypoint_sigmas_must_fit_the_ground_truth():
    from mrcnn.data.stick_figures import OKS_SIGMAS, StickFiguresDataset
    from mrcnn.evaluation.coco_eval import dataset_to_coco

    dataset = StickFiguresDataset()
    dataset.load_stick_figures(2, 64, 64, seed=0)
    dataset.prepare()
    gt = dataset_to_coco(dataset, with_keypoints=True)
    results = build_coco_results(dataset, [0], extract_bboxes(dataset.load_mask(0)[0]),
                                 dataset.load_mask(0)[1], np.ones(dataset.load_mask(0)[1].size),
                                 keypoints=dataset.load_keypoints(0))
    with pytest.raises(ValueError, match="kpt_oks_sigmas"):
        coco_eval_stats(gt, results, "keypoints")
    assert coco_eval_stats(gt, results, "keypoints", image_ids=[1], kpt_oks_sigmas=OKS_SIGMAS)["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="keypoints"):
        coco_eval_stats(gt, [{k: v for k, v in r.items() if k != "keypoints"} for r in results], "keypoints")
