"""samples/custom/polygon_dataset.py: the Dataset over labelme/VIA files (class mapping, masks, errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mrcnn.config import Config
from mrcnn.data.targets import load_image_gt
from samples.custom.polygon_dataset import PolygonDataset

FIXTURE = Path(__file__).resolve().parents[2] / "samples" / "custom" / "fixture"


def test_labelme_folder_class_mapping_and_masks() -> None:
    dataset = PolygonDataset()
    assert dataset.load_folder(FIXTURE / "train") == ["balloon", "box"]  # sorted names found
    dataset.prepare()
    assert dataset.class_names == ["BG", "balloon", "box"] and dataset.num_images == 2
    masks, class_ids = dataset.load_mask(1)  # b.json: circle balloon, two-part box, box
    assert masks.shape == (72, 96, 3) and masks.dtype == bool
    assert class_ids.tolist() == [1, 2, 2] and class_ids.dtype == np.int32
    assert masks[..., 1].sum() == 16 * 12 + 16 * 14
    assert dataset.load_image(1).shape == (72, 96, 3)
    # The painted image agrees with the masks: balloon pixels are red.
    image = dataset.load_image(1)
    assert (image[masks[..., 0]] == (220, 40, 40)).all()


def test_given_class_order_sets_ids_and_val_shares_it() -> None:
    dataset = PolygonDataset()
    dataset.load_folder(FIXTURE / "train", class_names=["box", "balloon"])
    dataset.load_folder(FIXTURE / "val", class_names=["box", "balloon"])  # VIA project, same classes
    dataset.prepare()
    assert dataset.class_names == ["BG", "box", "balloon"] and dataset.num_images == 4
    _, class_ids = dataset.load_mask(0)
    assert class_ids.tolist() == [2, 1]  # a.json: balloon, box
    masks, class_ids = dataset.load_mask(3)  # d.png: circle balloon, ellipse box
    assert class_ids.tolist() == [2, 1] and masks.shape == (72, 96, 2)
    with pytest.raises(ValueError, match="already 'box', not 'balloon'"):
        dataset.load_folder(FIXTURE / "val", class_names=["balloon", "box"])


def test_unknown_class_names_the_file() -> None:
    dataset = PolygonDataset()
    with pytest.raises(ValueError, match=r"a.json: instance 1 of a.png has class 'box', not one of \['balloon'\]"):
        dataset.load_labelme(FIXTURE / "train", class_names=["balloon"])


def test_via1_file_and_missing_folder(tmp_path: Path) -> None:
    dataset = PolygonDataset()
    dataset.load_via(FIXTURE / "via1" / "via_region_data.json", default_class="balloon")
    dataset.prepare()
    masks, class_ids = dataset.load_mask(0)
    assert class_ids.tolist() == [1, 1] and masks.shape == (72, 96, 2)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PolygonDataset().load_folder(tmp_path / "nowhere")
    (tmp_path / "notes.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(FileNotFoundError, match="no labelme or VIA JSON files"):
        PolygonDataset().load_folder(tmp_path)


def test_an_image_annotated_in_two_files_of_a_folder_is_refused(tmp_path: Path) -> None:
    """A VIA project file beside its own export: every image would count twice."""
    import shutil

    for name in ("c.png", "d.png", "via_project.json"):
        shutil.copy(FIXTURE / "val" / name, tmp_path / name)
    shutil.copy(FIXTURE / "val" / "via_project.json", tmp_path / "via_export.json")
    with pytest.raises(ValueError, match=r"c.png is annotated in both via_export.json and via_project.json"):
        PolygonDataset().load_folder(tmp_path)
    (tmp_path / "via_export.json").unlink()
    assert PolygonDataset().load_folder(tmp_path) == ["balloon", "box"]


def test_feeds_the_training_pipeline() -> None:
    class SmallConfig(Config):
        NAME = "polygons"
        NUM_CLASSES = 3
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = 64
        USE_MINI_MASK = False

    dataset = PolygonDataset()
    dataset.load_folder(FIXTURE / "val")
    dataset.prepare()
    image, _, class_ids, boxes, masks = load_image_gt(dataset, SmallConfig(), 0)
    assert image.shape == (64, 64, 3) and class_ids.tolist() == [1, 2]
    # c.png's rect (x 52..86, y 30..60 on 96 x 72) scaled by 64/96 and padded 8 px on top.
    np.testing.assert_allclose(boxes[1], np.array([30, 52, 60, 86]) * 64 / 96 + [8, 0, 8, 0], atol=1.5)
    assert masks.shape == (64, 64, 2)
