"""Tests for mrcnn.data.dataset: registration, prepare() maps, image loading conversions, errors."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import skimage.io

from mrcnn.data.dataset import Dataset, labels_to_masks, to_rgb_uint8


def _dataset_with_files(paths, scaling=None) -> Dataset:
    cls = Dataset
    if scaling is not None:
        cls = type("ScaledDataset", (Dataset,), {"UINT16_SCALING": scaling})
    dataset = cls()
    dataset.add_class("files", 1, "thing")
    for i, path in enumerate(paths):
        dataset.add_image("files", image_id=i, path=path)
    dataset.prepare()
    return dataset


def _save(tmp_path, name, array):
    path = tmp_path / name
    skimage.io.imsave(str(path), array, check_contrast=False)
    return path


# ----------------------------------------------------------------------------------------------
# Registration and prepare()
def test_prepare_builds_maps():
    dataset = Dataset()
    dataset.add_class("coco", 1, "person, people")
    dataset.add_class("coco", 3, "car")
    dataset.add_class("coco", 1, "duplicate ignored")
    dataset.add_class("oid", 7, "tree")
    dataset.add_image("coco", image_id=42, path="a.jpg", width=10, height=5)
    dataset.add_image("oid", image_id="x9", path="b.jpg")
    dataset.prepare()

    assert dataset.num_classes == 4
    np.testing.assert_array_equal(dataset.class_ids, [0, 1, 2, 3])
    assert dataset.class_names == ["BG", "person", "car", "tree"]
    assert dataset.num_images == 2
    np.testing.assert_array_equal(dataset.image_ids, [0, 1])
    assert dataset.class_from_source_map == {".0": 0, "coco.1": 1, "coco.3": 2, "oid.7": 3}
    assert dataset.image_from_source_map == {"coco.42": 0, "oid.x9": 1}
    assert dataset.sources == ["coco", "oid"]
    assert dataset.source_class_ids == {"coco": [0, 1, 2], "oid": [0, 3]}
    assert dataset.map_source_class_id("coco.3") == 2
    assert dataset.get_source_class_id(2, "coco") == 3
    assert dataset.get_source_class_id(3, "oid") == 7
    assert dataset.image_info[0]["width"] == 10
    assert dataset.image_reference(1) == "b.jpg"
    assert dataset.source_image_link(0) == "a.jpg"


def test_get_source_class_id_wrong_source():
    dataset = Dataset()
    dataset.add_class("coco", 1, "person")
    dataset.prepare()
    with pytest.raises(ValueError, match="oid"):
        dataset.get_source_class_id(1, "oid")


def test_map_source_class_id_unknown_key_names_it():
    dataset = Dataset()
    dataset.add_class("coco", 1, "person")
    dataset.prepare()
    with pytest.raises(KeyError, match="coco.99"):
        dataset.map_source_class_id("coco.99")


def test_image_ids_without_prepare_is_clear():
    dataset = Dataset()
    dataset.add_image("s", 0, "a.png")
    with pytest.raises(RuntimeError, match="prepare"):
        _ = dataset.image_ids
    with pytest.raises(AttributeError, match="prepare"):
        _ = dataset.num_classes
    dataset.prepare()
    assert len(dataset.image_ids) == 1
    # Adding after prepare() makes the ids stale: say so instead of silently dropping the image.
    dataset.add_image("s", 1, "b.png")
    with pytest.raises(RuntimeError, match="prepare"):
        _ = dataset.image_ids


def test_source_with_dot_rejected():
    with pytest.raises(ValueError, match="a.b"):
        Dataset().add_class("a.b", 1, "x")
    with pytest.raises(ValueError, match="a.b"):
        Dataset().add_image("a.b", 1, "x.png")


def test_dataset_pickles_after_prepare():
    dataset = _dataset_with_files(["a.png"])
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone.image_ids, [0])
    assert clone.class_names == ["BG", "thing"]


def test_base_load_mask_is_empty_with_image_size(tmp_path):
    path = _save(tmp_path, "g.png", np.zeros((7, 9), np.uint8))
    dataset = _dataset_with_files([path])
    with pytest.warns(UserWarning, match="load_mask"):
        masks, class_ids = dataset.load_mask(0)
    assert masks.shape == (7, 9, 0) and masks.dtype == bool
    assert class_ids.shape == (0,) and class_ids.dtype == np.int32


def test_base_load_keypoints_names_the_subclass_and_the_fix():
    class NoKeypoints(Dataset):
        pass

    dataset = NoKeypoints()
    with pytest.raises(NotImplementedError, match=r"NoKeypoints\.load_keypoints is not implemented.*image 3.*"
                                                  r"override load_keypoints\(image_id\).*KEYPOINT_HEAD = False.*"
                                                  r"with_keypoints=False"):
        dataset.load_keypoints(3)


# ----------------------------------------------------------------------------------------------
# load_image conversions
def test_load_rgb_uint8_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    image = _dataset_with_files([_save(tmp_path, "rgb.png", array)]).load_image(0)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, array)


def test_load_grayscale_2d(tmp_path):
    array = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    image = _dataset_with_files([_save(tmp_path, "gray.png", array)]).load_image(0)
    assert image.shape == (12, 10, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], array)


def test_load_grayscale_hw1(tmp_path):
    array = np.arange(8 * 6, dtype=np.uint8).reshape(8, 6, 1)
    # In memory and through a TIFF file (PNG would store [H,W,1] as 2-D).
    image = to_rgb_uint8(array)
    assert image.shape == (8, 6, 3)
    np.testing.assert_array_equal(image[..., 2], array[..., 0])
    path = tmp_path / "hw1.tif"
    skimage.io.imsave(str(path), array, check_contrast=False)
    loaded = _dataset_with_files([path]).load_image(0)
    assert loaded.shape == (8, 6, 3)
    np.testing.assert_array_equal(loaded[..., 1], array[..., 0])


def test_load_rgba_drops_alpha(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    array[..., 3] = 0  # fully transparent: we drop alpha rather than composite, so RGB survives
    image = _dataset_with_files([_save(tmp_path, "rgba.png", array)]).load_image(0)
    assert image.shape == (5, 7, 3)
    np.testing.assert_array_equal(image, array[..., :3])


def test_load_gray_alpha(tmp_path):
    array = np.stack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 7, np.uint8)], axis=-1)
    image = to_rgb_uint8(array)
    assert image.shape == (4, 4, 3)
    assert (image == 100).all()


def test_load_uint16_range_scaling(tmp_path):
    array = np.array([[0, 257, 65535], [32896, 1000, 65278]], dtype=np.uint16)
    image = _dataset_with_files([_save(tmp_path, "16.png", array)]).load_image(0)
    assert image.dtype == np.uint8 and image.shape == (2, 3, 3)
    # 65535 -> 255 exactly, 257 -> 1, 32896 = 128 * 257 -> 128, 1000/257 = 3.89 -> 4, 65278 -> 254.
    np.testing.assert_array_equal(image[..., 0], [[0, 1, 255], [128, 4, 254]])


def test_load_uint16_image_max_scaling(tmp_path):
    # 12-bit style data: with "image_max" the brightest pixel becomes 255.
    array = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    path = _save(tmp_path, "12bit.png", array)
    image = _dataset_with_files([path], scaling="image_max").load_image(0)
    np.testing.assert_array_equal(image[..., 0], [[0, 64], [128, 255]])  # 63.75 -> 64, 127.5 -> 128
    # The default keeps the absolute meaning: 4000 / 257 = 15.56 -> 16, and says the image is dark.
    with pytest.warns(UserWarning, match=r"image file .*12bit.png: 16-bit values only up to 4000 keep 17 of 256 "
                                         r"grey levels.*UINT16_SCALING = 'image_max'") as caught:
        default = _dataset_with_files([path]).load_image(0)
    np.testing.assert_array_equal(default[..., 0], [[0, 4], [8, 16]])
    assert {w.filename for w in caught} == {__file__}


def test_uint16_low_range_warning_only_where_range_scaling_loses_the_image():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_rgb_uint8(np.array([[0, 4400]], np.uint16))  # 18 grey levels: no warning
        to_rgb_uint8(np.array([[0, 100]], np.uint16), uint16_scaling="image_max")
        to_rgb_uint8(np.zeros((2, 2), np.uint16))  # all zero: nothing to lose
        to_rgb_uint8(np.array([[0, 100]], np.int32))  # 8-bit values in a wider type are kept
    with pytest.warns(UserWarning, match=r"frame 3: 16-bit values only up to 255 keep 2 of 256"):
        to_rgb_uint8(np.array([[0, 255]], np.uint16), where="frame 3")


def test_uint16_image_max_all_zero_stays_zero():
    image = to_rgb_uint8(np.zeros((3, 3), np.uint16), uint16_scaling="image_max")
    assert (image == 0).all()


def test_load_float_unit_range(tmp_path):
    array = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    image = _dataset_with_files([_save(tmp_path, "f.tif", array)]).load_image(0)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], [[0, 128], [255, 64]])  # 127.5 -> 128 (round half even: 128)


def test_float_above_one_is_clipped():
    array = np.array([[-5.0, 2.0], [254.6, 300.0]], dtype=np.float64)
    np.testing.assert_array_equal(to_rgb_uint8(array)[..., 0], [[0, 2], [255, 255]])


def test_float_nan_becomes_zero():
    array = np.array([[np.nan, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(to_rgb_uint8(array)[..., 0], [[0, 128]])


def test_bool_image():
    np.testing.assert_array_equal(to_rgb_uint8(np.array([[True, False]]))[..., 1], [[255, 0]])


def test_int32_8bit_values_kept():
    np.testing.assert_array_equal(to_rgb_uint8(np.array([[3, 200]], np.int32))[..., 0], [[3, 200]])


def test_bad_shape_rejected():
    with pytest.raises(ValueError, match=r"\(4, 4, 5\)"):
        to_rgb_uint8(np.zeros((4, 4, 5), np.uint8))


def test_first_frame_of_stack():
    frames = np.zeros((2, 3, 3, 3), np.uint8)
    frames[1] = 9
    assert (to_rgb_uint8(frames) == 0).all()


# ----------------------------------------------------------------------------------------------
# Errors name the file
def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.png"
    dataset = _dataset_with_files([path])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        dataset.load_image(0)


@pytest.mark.parametrize("content", [b"", b"this is not a png" * 10, "truncated"])
def test_corrupt_file_names_path(tmp_path, content):
    path = tmp_path / "broken.png"
    if content == "truncated":
        good = _save(tmp_path, "good.png", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    dataset = _dataset_with_files([path])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="broken.png"):
            dataset.load_image(0)


def test_no_path_is_clear():
    dataset = Dataset()
    dataset.add_image("gen", 0, None)
    dataset.prepare()
    with pytest.raises(ValueError, match="load_image"):
        dataset.load_image(0)


class _LabelOnly(Dataset):
    """A dataset defining only load_label_mask, as the README's label-image hook allows."""

    def __init__(self, labels: np.ndarray, class_ids: list[int]) -> None:
        super().__init__()
        self.add_class("cells", 1, "cell")
        self.add_class("cells", 2, "dividing cell")
        self.add_image("cells", "frame0", None, height=labels.shape[0], width=labels.shape[1])
        self.labels, self.label_class_ids = labels, class_ids
        self.prepare()

    def load_label_mask(self, image_id: int):
        return self.labels, self.label_class_ids


def test_base_load_mask_expands_a_label_image():
    # Found in review: evaluation and COCO export (which read load_mask) saw no instances at all.
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 1:4] = 1
    labels[4:6, 5:8] = 3  # value 2 has no pixel: an empty channel, as load_mask's contract allows
    dataset = _LabelOnly(labels, [1, 2, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks, class_ids = dataset.load_mask(0)
    assert masks.shape == (6, 8, 3) and masks.dtype == bool
    for k in range(3):
        np.testing.assert_array_equal(masks[:, :, k], labels == k + 1)
    assert class_ids.tolist() == [1, 2, 2] and class_ids.dtype == np.int32


@pytest.mark.parametrize("bad,message", [(7, r"label values 0\.\.7 but 2 class ids"),
                                         (-1, r"label values -1\.\.2 but 2 class ids")])
def test_base_load_mask_refuses_labels_outside_the_class_ids(bad, message):
    labels = np.array([[0, 1], [2, bad]], np.int32)
    with pytest.raises(ValueError, match=r"image 0 \(cells:frame0\): load_label_mask gave " + message):
        _LabelOnly(labels, [1, 1]).load_mask(0)


def test_labels_to_masks_count():
    labels = np.array([[0, 1, 1], [3, 0, 2]], np.int32)
    assert labels_to_masks(labels).shape == (2, 3, 3)
    masks = labels_to_masks(labels, count=5)
    assert masks.shape == (2, 3, 5) and not masks[..., 3:].any()
    assert labels_to_masks(labels, count=0).shape == (2, 3, 0)
    with pytest.raises(ValueError, match=r"labels must be \[H, W\], got shape \(2, 3, 1\)"):
        labels_to_masks(labels[..., None])
