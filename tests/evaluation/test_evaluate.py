"""Tests for mrcnn/evaluation/evaluate.py with a stand-in model."""

from types import SimpleNamespace

import numpy as np
import pytest

from mrcnn.data.shapes import ShapesDataset
from mrcnn.evaluation.evaluate import evaluate_dataset
from mrcnn.utils import extract_bboxes


class OracleModel:
    """Returns the ground truth as detections, optionally shifted by `shift` pixels."""

    def __init__(self, dataset, shift: int = 0, batch_size: int = 2):
        self.dataset = dataset
        self.shift = shift
        self.config = SimpleNamespace(BATCH_SIZE=batch_size)
        self.calls = 0

    def detect(self, images, verbose=0):
        results = []
        for image in images:
            image_id = next(i for i in self.dataset.image_ids if np.array_equal(self.dataset.load_image(i), image))
            masks, class_ids = self.dataset.load_mask(image_id)
            masks = np.roll(masks, self.shift, axis=1)
            results.append({"rois": extract_bboxes(masks), "class_ids": class_ids.astype(np.int32),
                            "scores": np.linspace(1.0, 0.5, len(class_ids)).astype(np.float32), "masks": masks})
        self.calls += 1
        return results


@pytest.fixture(scope="module")
def dataset():
    d = ShapesDataset()
    d.load_shapes(5, 64, 64, seed=11)
    d.prepare()
    return d


def test_ground_truth_scores_one(dataset):
    metrics = evaluate_dataset(OracleModel(dataset), dataset, verbose=0)
    for key in ("box_mAP50", "box_mAP", "mask_mAP50", "mask_mAP"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["num_images"] == 5


def test_shifted_predictions_score_lower(dataset):
    metrics = evaluate_dataset(OracleModel(dataset, shift=4), dataset, verbose=0)
    assert metrics["mask_mAP"] < 0.9
    assert metrics["mask_mAP50"] >= metrics["mask_mAP"]


def test_batches_follow_the_models_batch_size(dataset):
    model = OracleModel(dataset, batch_size=2)
    metrics = evaluate_dataset(model, dataset, image_ids=[0, 1, 2], verbose=0)
    assert model.calls == 2
    # The first call (a real model's trace) is timed apart: 2 calls give a steady rate.
    assert metrics["first_batch_seconds"] >= 0.0 and metrics["seconds_per_image_after_first_batch"] >= 0.0


def test_thresholds_must_include_half(dataset):
    with pytest.raises(ValueError, match="0.5"):
        evaluate_dataset(OracleModel(dataset), dataset, iou_thresholds=[0.75], verbose=0)


def test_a_model_of_another_class_count_is_refused(dataset):
    model = OracleModel(dataset)
    model.config.NUM_CLASSES = dataset.num_classes + 1
    with pytest.raises(ValueError, match=rf"config.NUM_CLASSES is {dataset.num_classes + 1}: they must match"):
        evaluate_dataset(model, dataset, verbose=0)
    model.config.NUM_CLASSES = dataset.num_classes
    assert evaluate_dataset(model, dataset, image_ids=[0], verbose=0)["mask_mAP"] == 1.0


class _CrowdShapes(ShapesDataset):
    """Shapes whose first instance of image 0 is a crowd region (negative class id)."""

    def load_mask(self, image_id):
        masks, class_ids = super().load_mask(image_id)
        if image_id == 0:
            class_ids = class_ids.copy()
            class_ids[0] = -class_ids[0]
        return masks, class_ids


def test_a_detection_on_a_crowd_region_is_ignored_not_a_false_positive():
    from mrcnn.evaluation.evaluate import drop_crowd_detections

    crowd = _CrowdShapes()
    crowd.load_shapes(3, 64, 64, seed=11)
    crowd.prepare()
    oracle = OracleModel(crowd)  # also "detects" the crowd region, as a model would (its class id made positive)
    detect = oracle.detect

    def detect_with_positive_ids(images, verbose=0):
        results = detect(images, verbose)
        for result in results:
            result["class_ids"] = np.abs(result["class_ids"])
        return results

    oracle.detect = detect_with_positive_ids
    metrics = evaluate_dataset(oracle, crowd, verbose=0)
    assert metrics["mask_mAP"] == pytest.approx(1.0) and metrics["box_mAP"] == pytest.approx(1.0)
    # The rule itself: half of the detection inside the crowd drops it, by mask or (no masks) by box.
    masks = np.zeros((10, 10, 2), bool)
    masks[0:4, 0:4, 0] = True  # 16 px, 8 of them in the crowd
    masks[6:9, 6:9, 1] = True  # outside
    crowd_mask = np.zeros((10, 10, 1), bool)
    crowd_mask[0:2, 0:4, 0] = True
    result = {"rois": extract_bboxes(masks), "class_ids": np.array([1, 2], np.int32),
              "scores": np.array([0.9, 0.8], np.float32), "masks": masks}
    kept = drop_crowd_detections(result, crowd_mask)
    assert kept["class_ids"].tolist() == [2] and kept["masks"].shape == (10, 10, 1)
    assert drop_crowd_detections(result, crowd_mask, overlap=0.6)["class_ids"].tolist() == [1, 2]
    boxes_only = {k: v for k, v in result.items() if k != "masks"}
    assert drop_crowd_detections(boxes_only, crowd_mask)["class_ids"].tolist() == [2]


def test_a_model_without_masks_is_scored_on_boxes_only(dataset):
    # MASK_HEAD = False: detect returns no "masks"; evaluate_dataset raised KeyError on them.
    oracle = OracleModel(dataset)

    class BoxesOnly:
        config = oracle.config

        @staticmethod
        def detect(images, verbose=0):
            return [{k: v for k, v in r.items() if k != "masks"} for r in oracle.detect(images)]

    metrics = evaluate_dataset(BoxesOnly(), dataset, verbose=0)
    assert metrics["box_mAP50"] == metrics["box_mAP"] == 1.0
    assert "mask_mAP50" not in metrics and "mask_mAP" not in metrics
