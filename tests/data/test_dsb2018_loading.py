"""Real-data check of load_image_gt on three DSB2018 stage-1 images (skipped without ../shared/data).

The loader is samples/nucleus's NucleusDataset, so load_image_gt takes its label-image path here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrcnn import utils
from mrcnn.config import Config
from mrcnn.data import targets
from samples.nucleus.dataset import NucleusDataset

DSB_ROOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dsb2018" / "stage1_train"


class NucleiConfig(Config):
    NAME = "nucleus"
    NUM_CLASSES = 2
    IMAGE_MIN_DIM = 512
    IMAGE_MAX_DIM = 512
    USE_MINI_MASK = False


@pytest.fixture(scope="module")
def dataset():
    if not DSB_ROOT.is_dir():
        pytest.skip(f"DSB2018 data not found at {DSB_ROOT}")
    data = NucleusDataset()
    data.load_kaggle(DSB_ROOT, limit=3)
    data.prepare()
    return data


def test_load_image_gt_on_dsb2018(dataset):
    config = NucleiConfig()
    mini_config = NucleiConfig()
    mini_config.USE_MINI_MASK = True
    for image_id in dataset.image_ids:
        original = dataset.load_image(image_id)
        original_masks, _ = dataset.load_mask(image_id)
        image, meta, class_ids, bbox, masks = targets.load_image_gt(dataset, config, image_id,
                                                                    rng=np.random.default_rng(0))
        parsed = utils.parse_image_meta(meta)
        scale = float(parsed["scale"])
        y1, x1, y2, x2 = parsed["window"].tolist()
        assert image.shape == (512, 512, 3) and image.dtype == np.uint8
        assert parsed["original_image_shape"].tolist() == list(original.shape)
        assert (y2 - y1, x2 - x1) == (round(original.shape[0] * scale), round(original.shape[1] * scale))
        assert max(y2 - y1, x2 - x1) == 512
        # Upscaling keeps every nucleus; all class 1; boxes inside the window.
        assert len(class_ids) == original_masks.shape[-1] > 0 and np.all(class_ids == 1)
        assert np.all(bbox[:, 0] >= y1) and np.all(bbox[:, 2] <= y2)
        assert np.all(bbox[:, 1] >= x1) and np.all(bbox[:, 3] <= x2)
        assert not image[:y1].any() and not image[y2:].any()
        # Each mask is its original nucleus scaled: box and area follow the scale.
        expected_boxes = utils.extract_bboxes(original_masks) * scale + np.array([y1, x1, y1, x1])
        assert np.abs(bbox - expected_boxes).max() <= scale + 1
        areas = masks.sum(axis=(0, 1))
        expected_areas = original_masks.sum(axis=(0, 1)) * scale**2
        np.testing.assert_allclose(areas, expected_areas, rtol=0.25, atol=4 * scale)
        # The masks sit on the nuclei: their pixels differ clearly from the background's.
        gray = image[y1:y2, x1:x2].mean(axis=-1)
        inside = masks[y1:y2, x1:x2].any(axis=-1)
        assert abs(gray[inside].mean() - gray[~inside].mean()) > 20

        # Mini masks: same instances, [56, 56, N], and they expand back close to the full masks.
        _, _, mini_ids, mini_bbox, mini = targets.load_image_gt(dataset, mini_config, image_id,
                                                                rng=np.random.default_rng(0))
        assert mini.shape == (56, 56, len(class_ids))
        np.testing.assert_array_equal(mini_bbox, bbox)
        expanded = utils.expand_mask(mini_bbox, mini, image.shape)
        ious = np.diag(utils.compute_overlaps_masks(expanded, masks))
        assert np.median(ious) > 0.9
