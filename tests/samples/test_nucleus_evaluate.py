"""samples/nucleus/evaluate.py: one protocol (COCO mask AP, DSB2018 score, time) for any detector."""

from __future__ import annotations

import numpy as np
import pytest

from samples.nucleus.dataset import NucleusDataset
from samples.nucleus.evaluate import evaluate_nuclei, is_brightfield
from tests.samples.nucleus_fixture import load_fixture


def _oracle(dataset: NucleusDataset, extra_score: float):
    """A detector that returns the ground truth (score 0.9) plus one made-up false positive."""
    truth = {dataset.load_image(i).tobytes(): dataset.load_mask(i)[0] for i in dataset.image_ids}

    def detect(images):
        gt = truth[np.asarray(images[0]).tobytes()]
        fake = np.zeros(gt.shape[:2] + (1,), bool)
        fake[:6, :6, 0] = ~gt[:6, :6].any(axis=-1)  # a corner patch that is no nucleus
        masks = np.concatenate([gt, fake], axis=-1)
        scores = np.array([0.9] * gt.shape[-1] + [extra_score], np.float32)
        return [{"rois": np.zeros((masks.shape[-1], 4), np.int32), "class_ids": np.ones(masks.shape[-1], np.int32),
                 "scores": scores, "masks": masks}]

    return detect


def test_perfect_detections_score_one_and_low_scores_leave_the_dsb_score(fixture_images):
    metrics = evaluate_nuclei(_oracle(fixture_images, extra_score=0.1), fixture_images, verbose=0)
    # A false positive ranked below every true one costs COCO AP nothing...
    assert metrics["mask_AP50"] == pytest.approx(1.0) and metrics["mask_AP"] == pytest.approx(1.0)
    # ...and, below dsb_min_score (0.5), nothing in the DSB score either.
    assert metrics["dsb_score"] == pytest.approx(1.0)
    assert metrics["num_images"] == 2 and metrics["num_detections"] == 8 + 9 + 2


@pytest.mark.parametrize("max_dets", [0, -5, 9, 100.5])
def test_meaningless_max_dets_are_refused(fixture_images, max_dets):
    with pytest.raises(ValueError, match=rf"max_dets must be an int >= 10 .*got {max_dets}"):
        evaluate_nuclei(_oracle(fixture_images, extra_score=0.1), fixture_images, max_dets=max_dets, verbose=0)


def test_confident_false_positives_lower_the_dsb_score(fixture_images):
    metrics = evaluate_nuclei(_oracle(fixture_images, extra_score=0.95), fixture_images, verbose=0)
    # One false positive per image: precision TP / (TP + FP + FN) = 8/9 and 9/10 at every threshold.
    assert metrics["dsb_score"] == pytest.approx((8 / 9 + 9 / 10) / 2)
    everything = evaluate_nuclei(_oracle(fixture_images, extra_score=0.1), fixture_images, verbose=0,
                                 dsb_min_score=0.0)
    assert everything["dsb_score"] == pytest.approx(metrics["dsb_score"])


class _OneBrightfield(NucleusDataset):
    """The fixture with its second image inverted: a light background, as brightfield images have."""

    def load_image(self, image_id: int) -> np.ndarray:
        image = super().load_image(image_id)
        return 255 - image if image_id == 1 else image


def test_fluorescence_and_brightfield_are_scored_apart():
    dataset = load_fixture(_OneBrightfield)
    oracle = _oracle(dataset, extra_score=0.1)

    def fluorescence_only(images):  # the ground truth on dark images, nothing on light ones
        result = oracle(images)[0]
        if is_brightfield(images[0]):
            result = {k: v[..., :0] if k == "masks" else v[:0] for k, v in result.items()}
        return [result]

    metrics = evaluate_nuclei(fluorescence_only, dataset, verbose=0)
    fluorescence, brightfield = metrics["by_kind"]["fluorescence"], metrics["by_kind"]["brightfield"]
    assert fluorescence["num_images"] == brightfield["num_images"] == 1
    assert fluorescence["mask_AP50"] == pytest.approx(1.0) and fluorescence["dsb_score"] == pytest.approx(1.0)
    assert brightfield["mask_AP50"] == pytest.approx(0.0) and brightfield["dsb_score"] == pytest.approx(0.0)
    assert 0.0 < metrics["mask_AP50"] < 1.0 and metrics["dsb_score"] == pytest.approx(0.5)
    assert {"mask_AP_small", "mask_AP_medium", "mask_AP_large", "mask_AR_max"} <= set(metrics)


def test_label_image_results_score_as_their_masks(fixture_images):
    # Every instance shifted 2 px down (IoU below 1: the scores depend on the thresholds), plus
    # the made-up false positive. As disjoint instances, the label image is the same detections.
    from samples.nucleus.dataset import masks_to_labels

    oracle = _oracle(fixture_images, extra_score=0.95)

    def shifted(images):
        result = dict(oracle(images)[0])
        result["masks"] = np.concatenate([np.roll(result["masks"][..., :-1], 2, axis=0), result["masks"][..., -1:]],
                                         axis=-1)
        return [result]

    def as_labels(images):
        result = shifted(images)[0]
        return [{**{k: v for k, v in result.items() if k != "masks"}, "labels": masks_to_labels(result["masks"])}]

    with_masks = evaluate_nuclei(shifted, fixture_images, verbose=0)
    with_labels = evaluate_nuclei(as_labels, fixture_images, verbose=0)
    assert 0.0 < with_masks["mask_AP"] < 0.99 and 0.0 < with_masks["dsb_score"] < 0.99
    for key in ("mask_AP", "mask_AP50", "mask_AP75", "mask_AR_max", "dsb_score", "per_image_dsb", "by_kind",
                "num_detections"):
        assert with_labels[key] == with_masks[key], key

    def too_few_scores(images):
        result = as_labels(images)[0]
        return [{**result, "scores": result["scores"][:1]}]

    with pytest.raises(ValueError, match=r"image 0: result 'labels' go up to \d+ but there are 1 scores"):
        evaluate_nuclei(too_few_scores, fixture_images, verbose=0)
