"""Tests of mrcnn.data.generator.DataGenerator (fixed-shape batches of inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn import utils
from mrcnn.config import Config
from mrcnn.data import augment, targets
from mrcnn.data.generator import DataGenerator
from tests.reference.toy_datasets import SquaresDataset


class TinyConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 4
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    MAX_GT_INSTANCES = 4
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    MINI_MASK_SHAPE = (28, 28)
    IMAGES_PER_GPU = 2


def num_anchors(config):
    return sum(int(h * w) * len(config.RPN_ANCHOR_RATIOS)
               for h, w in utils.compute_backbone_shapes(config, config.IMAGE_SHAPE))


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("use_mini_mask", [True, False])
def test_batch_shapes_and_dtypes(use_mini_mask):
    config = TinyConfig()
    config.USE_MINI_MASK = use_mini_mask
    dataset = SquaresDataset(5, 48, 64, instances=(1, 6), crowd_every=3, seed=0)
    generator = DataGenerator(dataset, config, seed=0)
    assert len(generator) == 3  # ceil(5 / 2)
    x = generator[0]
    assert isinstance(x, dict)
    b, a, g = config.BATCH_SIZE, num_anchors(config), config.MAX_GT_INSTANCES
    mask_shape = (28, 28) if use_mini_mask else (64, 64)
    expected = {
        "input_image": ((b, 64, 64, 3), np.float32),
        "input_image_meta": ((b, config.IMAGE_META_SIZE), np.float32),
        "input_rpn_match": ((b, a, 1), np.int32),
        "input_rpn_bbox": ((b, config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), np.float32),
        "input_gt_class_ids": ((b, g), np.int32),
        "input_gt_boxes": ((b, g, 4), np.float32),
        "input_gt_masks": ((b,) + mask_shape + (g,), np.bool_),
    }
    assert generator.anchors.shape == (a, 4)
    for index in range(len(generator)):
        x = generator[index]
        assert set(x) == set(expected)
        for key, (shape, dtype) in expected.items():
            assert x[key].shape == shape, key
            assert x[key].dtype == dtype, key
        # Images are molded; boxes and masks are consistent with the class ids (zero padding after).
        assert x["input_image"].min() < 0
        for slot in range(b):
            count = np.count_nonzero(x["input_gt_class_ids"][slot])
            assert np.all(x["input_gt_class_ids"][slot, count:] == 0)
            assert not x["input_gt_boxes"][slot, count:].any()
            assert not x["input_gt_masks"][slot, ..., count:].any()
            assert np.all(x["input_gt_masks"][slot, ..., :count].any(axis=(0, 1)))
            boxes = x["input_gt_boxes"][slot, :count]
            assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
            match = x["input_rpn_match"][slot, :, 0]
            positives = np.count_nonzero(match == 1)
            assert positives + np.count_nonzero(match == -1) <= config.RPN_TRAIN_ANCHORS_PER_IMAGE
            assert np.count_nonzero(x["input_rpn_bbox"][slot].any(axis=1)) <= positives


def test_batches_match_load_image_gt():
    # Without shuffling or augmentation, batch contents are load_image_gt's output, molded and padded.
    config = TinyConfig()
    dataset = SquaresDataset(3, 48, 64, instances=(1, 3), seed=1)
    x = DataGenerator(dataset, config, shuffle=False, seed=0)[0]
    for slot, image_id in enumerate([0, 1]):
        image, meta, class_ids, bbox, mask = targets.load_image_gt(dataset, config, image_id)
        np.testing.assert_allclose(x["input_image"][slot], utils.mold_image(image, config))
        np.testing.assert_array_equal(x["input_image_meta"][slot], meta)
        n = len(class_ids)
        np.testing.assert_array_equal(x["input_gt_class_ids"][slot, :n], class_ids)
        np.testing.assert_array_equal(x["input_gt_boxes"][slot, :n], bbox)
        np.testing.assert_array_equal(x["input_gt_masks"][slot, ..., :n], mask)
        # rpn_match labels agree with an independent labelling (up to subsampling).
        full, _ = targets.label_anchors(utils.generate_pyramid_anchors(
            config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
            utils.compute_backbone_shapes(config, config.IMAGE_SHAPE), config.BACKBONE_STRIDES, 1), class_ids, bbox)
        match = x["input_rpn_match"][slot, :, 0]
        assert np.all((match == full) | (match == 0))


def test_same_seed_same_batches_and_epochs_differ():
    config = TinyConfig()
    dataset = SquaresDataset(6, 48, 64, instances=(1, 5), seed=2)
    augmentation = augment.Compose([augment.HorizontalFlip(), augment.Rot90(), augment.BrightnessContrast()])
    first = DataGenerator(dataset, config, augmentation=augmentation, seed=123)
    second = DataGenerator(dataset, config, augmentation=augmentation, seed=123)
    # Out-of-order access (as worker threads do) gives the same batches.
    batches = [first[i] for i in range(len(first))]
    for i in reversed(range(len(second))):
        assert_batches_equal(batches[i], second[i])
    # Next epoch: a new order / new augmentation; still reproducible.
    first.on_epoch_end()
    second.on_epoch_end()
    epoch1 = first[0]
    assert_batches_equal(epoch1, second[0])
    assert not np.array_equal(epoch1["input_image"], batches[0]["input_image"])
    # A different seed gives different batches.
    other = DataGenerator(dataset, config, augmentation=augmentation, seed=124)[0]
    assert not np.array_equal(other["input_image"], batches[0]["input_image"])


def test_no_augmentation_sources():
    config = TinyConfig()
    dataset = SquaresDataset(2, 48, 64, instances=2, seed=8)
    flip = augment.HorizontalFlip(p=1.0)
    plain = DataGenerator(dataset, config, shuffle=False, seed=0)[0]
    flipped = DataGenerator(dataset, config, shuffle=False, seed=0, augmentation=flip)[0]
    skipped = DataGenerator(dataset, config, shuffle=False, seed=0, augmentation=flip,
                            no_augmentation_sources=["toy"])[0]
    assert not np.array_equal(plain["input_image"], flipped["input_image"])
    np.testing.assert_array_equal(plain["input_image"], skipped["input_image"])
    np.testing.assert_array_equal(plain["input_gt_boxes"], skipped["input_gt_boxes"])


def test_shuffle_visits_every_image_once_per_epoch():
    config = TinyConfig()
    dataset = SquaresDataset(6, 48, 64, instances=1, seed=3)
    generator = DataGenerator(dataset, config, seed=5)
    orders = []
    for _ in range(3):
        ids = np.concatenate([generator.batch_image_ids(i) for i in range(len(generator))])
        assert sorted(ids.tolist()) == list(range(6))
        orders.append(ids.tolist())
        generator.on_epoch_end()
    assert len({tuple(o) for o in orders}) > 1
    ordered = DataGenerator(dataset, config, shuffle=False, seed=5)
    assert np.concatenate([ordered.batch_image_ids(i) for i in range(3)]).tolist() == list(range(6))


def test_steps_and_wrap_around():
    config = TinyConfig()
    dataset = SquaresDataset(3, 48, 64, instances=1, seed=4)
    generator = DataGenerator(dataset, config, shuffle=False, seed=0)
    assert len(generator) == 2
    assert generator.batch_image_ids(1).tolist() == [2, 0]  # the last batch wraps around
    long = DataGenerator(dataset, config, steps=7, seed=0)
    assert len(long) == 7
    ids = np.concatenate([long.batch_image_ids(i) for i in range(7)])
    for start in range(0, 12, 3):  # every full pass over the data is a permutation
        assert sorted(ids[start : start + 3].tolist()) == [0, 1, 2]
    long[6]
    with pytest.raises(IndexError):
        long[7]
    with pytest.raises(ValueError, match="steps"):
        DataGenerator(dataset, config, steps=0)


def test_image_without_instances():
    config = TinyConfig()
    dataset = SquaresDataset(2, 48, 64, instances=0, seed=0)
    x = DataGenerator(dataset, config, seed=0)[0]
    assert not x["input_gt_class_ids"].any()
    assert not x["input_gt_boxes"].any()
    assert not x["input_gt_masks"].any()
    assert not x["input_rpn_bbox"].any()
    match = x["input_rpn_match"][..., 0]
    assert not np.any(match == 1)
    assert np.all(np.sum(match == -1, axis=1) == config.RPN_TRAIN_ANCHORS_PER_IMAGE)


def test_too_many_instances_are_subsampled():
    config = TinyConfig()
    config.MAX_GT_INSTANCES = 2
    dataset = SquaresDataset(2, 48, 64, instances=6, seed=6)
    generator = DataGenerator(dataset, config, shuffle=False, seed=0)
    x = generator[0]
    assert x["input_gt_class_ids"].shape == (2, 2)
    for slot in range(2):
        image, _, class_ids, bbox, _ = targets.load_image_gt(dataset, config, slot)
        assert np.all(x["input_gt_class_ids"][slot] != 0)
        # The kept instances are real instances of the image.
        kept = [tuple(b) for b in x["input_gt_boxes"][slot].astype(int)]
        assert set(kept) <= {tuple(b) for b in bbox}


def test_pad64_mode_with_mixed_sizes_is_rejected():
    class Pad64(TinyConfig):
        IMAGE_RESIZE_MODE = "pad64"

    dataset = SquaresDataset(2, 100, 70, instances=1, seed=0)
    with pytest.raises(ValueError, match="IMAGE_SHAPE"):
        DataGenerator(dataset, Pad64(), seed=0)[0]


def test_keras_fit_accepts_dict_batches():
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")

    class Probe(keras.Model):
        """Reads the batch dict in train_step, as MaskRCNN does."""

        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)
            self.seen = []

        def call(self, images):
            return self.dense(tf.reduce_mean(images, axis=[1, 2]))

        def train_step(self, data):
            assert isinstance(data, dict), type(data)
            with tf.GradientTape() as tape:
                positives = tf.reduce_sum(tf.cast(data["input_rpn_match"] == 1, tf.float32))
                loss = tf.reduce_mean(self(data["input_image"]) ** 2) + 0.0 * positives
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            return {"loss": loss, "positives": positives}

    dataset = SquaresDataset(4, 48, 64, instances=(1, 3), seed=7)
    model = Probe()
    model.compile(optimizer="sgd")
    history = model.fit(DataGenerator(dataset, TinyConfig(), seed=0, workers=2), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert history.history["positives"][0] > 0


def test_keypoints_are_batched_only_with_a_keypoint_head():
    from mrcnn.data.stick_figures import KEYPOINT_NAMES, StickFiguresDataset

    class KeypointConfig(TinyConfig):
        NUM_CLASSES = 2
        KEYPOINT_HEAD = True
        NUM_KEYPOINTS = len(KEYPOINT_NAMES)
        MAX_GT_INSTANCES = 1  # fewer slots than figures: keypoints must follow the kept instances

    dataset = StickFiguresDataset()
    dataset.load_stick_figures(4, 64, 64, seed=1, max_figures=3)
    dataset.prepare()
    config = KeypointConfig()
    batch = DataGenerator(dataset, config, shuffle=False, seed=0)[0]
    assert batch["input_gt_keypoints"].shape == (2, 1, len(KEYPOINT_NAMES), 3)
    assert batch["input_gt_keypoints"].dtype == np.float32
    for slot, image_id in enumerate(DataGenerator(dataset, config, shuffle=False, seed=0).batch_image_ids(0)):
        _, _, _, _, _, keypoints = targets.load_image_gt(dataset, config, int(image_id), with_keypoints=True)
        # The kept instance's keypoints, whichever it is, and its box contains them.
        assert any(np.allclose(batch["input_gt_keypoints"][slot, 0], k) for k in keypoints)
        y1, x1, y2, x2 = batch["input_gt_boxes"][slot, 0]
        shown = batch["input_gt_keypoints"][slot, 0, :, 2] > 0
        xs, ys = batch["input_gt_keypoints"][slot, 0, shown, 0], batch["input_gt_keypoints"][slot, 0, shown, 1]
        assert ((xs >= x1 - 1) & (xs <= x2 + 1) & (ys >= y1 - 1) & (ys <= y2 + 1)).all()
    plain = DataGenerator(dataset, TinyConfig().update(NUM_CLASSES=2), shuffle=False, seed=0)[0]
    assert "input_gt_keypoints" not in plain
