"""Tests for samples/nucleus/dataset.py: Kaggle layout and label images, cache, split, targets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from mrcnn import utils
from mrcnn.config import Config
from mrcnn.data import targets
from mrcnn.data.augment import Compose, HorizontalFlip, Rot90
from mrcnn.data.dataset import Dataset, labels_to_masks
from samples.nucleus.dataset import (
    NucleusDataset,
    masks_to_labels,
    read_kaggle_labels,
    split_of,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "nucleus"


def _mask_files(folder: Path) -> list[np.ndarray]:
    """The fixture's instance masks read the obvious way (one full PNG each)."""
    return [np.asarray(Image.open(p)) > 0 for p in sorted((folder / "masks").glob("*.png"))]


@pytest.fixture()
def kaggle() -> NucleusDataset:
    dataset = NucleusDataset()
    dataset.load_kaggle(FIXTURE / "kaggle")
    dataset.prepare()
    return dataset


def test_kaggle_fixture_counts_and_pixels_match_files(kaggle):
    assert kaggle.num_images == 2 and kaggle.class_names == ["BG", "nucleus"]
    for image_id in kaggle.image_ids:
        folder = FIXTURE / "kaggle" / kaggle.image_info[image_id]["id"]
        expected = _mask_files(folder)
        masks, class_ids = kaggle.load_mask(image_id)
        image = kaggle.load_image(image_id)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        raw = np.asarray(Image.open(folder / "images" / f"{folder.name}.png"))
        np.testing.assert_array_equal(image, raw[..., :3])  # alpha dropped, nothing else changed
        assert masks.shape == (128, 128, len(expected)) and masks.dtype == bool
        np.testing.assert_array_equal(class_ids, np.ones(len(expected)))
        for k, mask in enumerate(expected):
            # Same pixels, file order kept (the fixture's masks do not overlap).
            np.testing.assert_array_equal(masks[..., k], mask, err_msg=f"{folder.name} mask {k}")


def test_16_bit_kaggle_images_are_stretched_as_the_dataset_says(tmp_path):
    """UINT16_SCALING ("image_max" for nuclei) applies to the Kaggle layout's PNGs too."""
    import shutil

    source = next(p for p in sorted((FIXTURE / "kaggle").iterdir()) if p.is_dir())
    folder = tmp_path / "kaggle" / source.name
    shutil.copytree(source, folder)
    image_path = folder / "images" / f"{source.name}.png"
    gray = np.asarray(Image.open(image_path).convert("L")).astype(np.uint16) * 12  # 12-bit values, max <= 3060
    Image.fromarray(gray).save(image_path)
    assert np.asarray(Image.open(image_path)).dtype == np.uint16
    dataset = NucleusDataset()
    dataset.load_kaggle(tmp_path / "kaggle")
    dataset.prepare()
    image = dataset.load_image(0)
    assert image.dtype == np.uint8 and image.max() == 255  # stretched to the image's maximum
    np.testing.assert_array_equal(image[..., 0], np.rint(gray / gray.max() * 255).astype(np.uint8))


def test_label_image_fixture_relabels_and_matches_kaggle(kaggle):
    dataset = NucleusDataset()
    stem = "dsb_0e5edb07_crop128"
    dataset.load_label_image(FIXTURE / "labels" / f"{stem}_image.tif", FIXTURE / "labels" / f"{stem}_labels.tif")
    dataset.prepare()
    raw = tifffile.imread(FIXTURE / "labels" / f"{stem}_labels.tif")
    labels = dataset.load_labels(0)
    assert labels.dtype == np.uint16 and labels.max() == len(np.unique(raw)) - 1  # 10, 20, ... -> 1, 2, ...
    for k, value in enumerate(np.unique(raw)[1:], start=1):
        np.testing.assert_array_equal(labels == k, raw == value)
    kaggle_id = kaggle.image_from_source_map[f"nucleus.{stem}"]
    np.testing.assert_array_equal(dataset.load_mask(0)[0], kaggle.load_mask(kaggle_id)[0])
    image = dataset.load_image(0)
    assert image.shape == (128, 128, 3) and image.max() == 255  # uint16 stretched to 8 bits per image
    assert dataset.image_info[0]["id"] == f"{stem}_image"


def test_cache_round_trip_and_invalidation(tmp_path, kaggle):
    root = tmp_path / "data"
    source = FIXTURE / "kaggle" / "dsb_30f65741_crop128"
    copy = root / source.name
    (copy / "images").mkdir(parents=True)
    (copy / "masks").mkdir()
    for path in source.rglob("*.png"):
        (copy / path.relative_to(source)).write_bytes(path.read_bytes())
    cache = tmp_path / "cache"
    first = NucleusDataset(cache_dir=cache)
    first.load_kaggle(root)
    first.prepare()
    labels = first.load_labels(0).copy()
    files = list(cache.glob("*.npy"))
    assert len(files) == 1
    second = NucleusDataset(cache_dir=cache)
    second.load_kaggle(root)
    second.prepare()
    np.testing.assert_array_equal(second.load_labels(0), labels)
    np.testing.assert_array_equal(second.load_image(0), first.load_image(0))
    # Removing a mask file changes the folder's mtime: a new cache file, one nucleus fewer.
    removed = sorted((copy / "masks").glob("*.png"))[0]
    removed.unlink()
    os.utime(copy / "masks", ns=(0, 10**18))
    third = NucleusDataset(cache_dir=cache)
    third.load_kaggle(root)
    third.prepare()
    assert third.load_labels(0).max() == labels.max() - 1
    assert len(list(cache.glob("*.npy"))) == 2


def test_loaded_arrays_are_read_only(kaggle):
    with pytest.raises(ValueError, match="read-only"):
        kaggle.load_image(0)[0, 0, 0] = 1


def test_split_is_fixed_and_partitions_ids():
    ids = [f"{i:04x}" for i in range(500)]
    subsets = [split_of(i) for i in ids]
    assert set(subsets) == {"train", "val"}
    assert 0.12 < subsets.count("val") / len(ids) < 0.28
    assert [split_of(i) for i in ids] == subsets  # no randomness
    dataset = NucleusDataset()
    train = dataset.load_kaggle(FIXTURE / "kaggle", subset="train")
    val = dataset.load_kaggle(FIXTURE / "kaggle", subset="val")
    assert train + val == 2


def test_errors_name_the_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        NucleusDataset().load_kaggle(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="subset"):
        NucleusDataset().load_kaggle(FIXTURE / "kaggle", subset="test")
    bad = tmp_path / "masks"
    bad.mkdir()
    Image.fromarray(np.full((10, 12), 255, np.uint8)).save(bad / "a.png")
    with pytest.raises(ValueError, match="a.png"):
        read_kaggle_labels(bad, (12, 10))
    (bad / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="b.png"):
        read_kaggle_labels(bad, (10, 12))


def test_labels_masks_round_trip():
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 50), np.int32)
    for k in range(1, 8):
        y, x = rng.integers(0, 35), rng.integers(0, 45)
        labels[y : y + 5, x : x + 5] = k
    present = np.unique(labels)[1:]
    masks = labels_to_masks(labels)
    assert masks.shape == (40, 50, labels.max())
    for k in range(1, labels.max() + 1):
        np.testing.assert_array_equal(masks[..., k - 1], labels == k)
    np.testing.assert_array_equal(masks_to_labels(masks), labels)
    assert len(present) <= masks.shape[-1]


class _StackDataset(Dataset):
    """The same images through the plain load_mask path (no load_label_mask)."""

    def __init__(self, source: NucleusDataset) -> None:
        super().__init__()
        self.source = source
        self.add_class("nucleus", 1, "nucleus")
        for info in source.image_info:
            self.add_image("nucleus", info["id"], info["path"])

    def load_image(self, image_id):
        return self.source.load_image(image_id)

    def load_mask(self, image_id):
        return self.source.load_mask(image_id)


class _Config(Config):
    NAME = "nucleus_test"
    NUM_CLASSES = 2
    IMAGE_MIN_DIM = 256
    IMAGE_MAX_DIM = 256
    MINI_MASK_SHAPE = (28, 28)


@pytest.mark.parametrize("mini", [True, False])
@pytest.mark.parametrize("mode", ["square", "crop"])
def test_label_path_of_load_image_gt_equals_mask_path(kaggle, mini, mode):
    config = _Config().update(USE_MINI_MASK=mini, IMAGE_RESIZE_MODE=mode, IMAGE_MIN_DIM=64 if mode == "crop" else 256)
    plain = _StackDataset(kaggle)
    plain.prepare()
    augmentation = Compose([HorizontalFlip(0.5), Rot90()])
    for image_id in kaggle.image_ids:
        for seed in range(3):
            fast = targets.load_image_gt(kaggle, config, image_id, augmentation, np.random.default_rng(seed))
            slow = targets.load_image_gt(plain, config, image_id, augmentation, np.random.default_rng(seed))
            for a, b in zip(fast, slow):
                np.testing.assert_array_equal(a, b)
            assert len(fast[2]) > 0


def test_dsb2018_real_images_match_files(shared_data_dir):
    root = shared_data_dir / "dsb2018" / "stage1_train"
    if not root.is_dir():
        pytest.skip(f"DSB2018 not found at {root}")
    dataset = NucleusDataset()
    dataset.load_kaggle(root, limit=3)
    dataset.prepare()
    for image_id in dataset.image_ids:
        folder = root / dataset.image_info[image_id]["id"]
        expected = _mask_files(folder)
        masks, _ = dataset.load_mask(image_id)
        assert masks.shape[-1] == len(expected)
        # Pixel counts match the files (a pixel two files claim would go to the first: none here).
        np.testing.assert_array_equal(masks.sum(axis=(0, 1)), [m.sum() for m in expected])
        boxes = utils.extract_bboxes(masks)
        assert np.all(boxes[:, 2] > boxes[:, 0])
