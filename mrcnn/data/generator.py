"""DataGenerator: fixed-shape training batches for `MaskRCNN.fit` as a `keras.utils.PyDataset`.

Each batch is a dict of inputs (no separate targets: the model computes its losses from them):

    input_image        [B, H, W, 3]                         float32, MEAN_PIXEL subtracted
    input_image_meta   [B, IMAGE_META_SIZE]                 float32
    input_rpn_match    [B, A, 1]                            int32 (1 positive, -1 negative, 0 neutral)
    input_rpn_bbox     [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4]  float32 deltas / RPN_BBOX_STD_DEV
    input_gt_class_ids [B, MAX_GT_INSTANCES]                int32 (0 padding, < 0 crowd)
    input_gt_boxes     [B, MAX_GT_INSTANCES, 4]             float32 pixel boxes in the molded image
    input_gt_masks     [B, mh, mw, MAX_GT_INSTANCES]        bool (MINI_MASK_SHAPE or IMAGE_SHAPE[:2])
    input_gt_keypoints [B, MAX_GT_INSTANCES, K, 3]          float32 (x, y, visibility), continuous pixel
                                                            coordinates of the molded image; only when
                                                            config.KEYPOINT_HEAD (K = NUM_KEYPOINTS)

B = config.BATCH_SIZE, A = number of anchors for config.IMAGE_SHAPE.

Determinism: every random choice (epoch order, augmentation, crop, RPN subsampling, instance
truncation) comes from generators derived from ``(seed, epoch, batch index)``, so a batch depends
only on those, whichever worker thread or process builds it and in whatever order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from mrcnn import utils
from mrcnn.data import targets
from mrcnn.data.augment import Augmenter
from mrcnn.data.dataset import check_num_classes

# Stream tags mixed into the seed so that shuffling and per-batch randomness never share a stream.
_SHUFFLE_STREAM = 0
_BATCH_STREAM = 1


class DataGenerator(keras.utils.PyDataset):
    """Batches of molded images and padded ground truth from a `Dataset`.

    Args:
        dataset: a prepared `mrcnn.data.dataset.Dataset`.
        config: a `Config` (BATCH_SIZE, IMAGE_SHAPE, resize fields, anchors, MAX_GT_INSTANCES,
            USE_MINI_MASK / MINI_MASK_SHAPE, RPN_TRAIN_ANCHORS_PER_IMAGE, MEAN_PIXEL, SEED).
        shuffle: visit images in a new random order each epoch (else in `dataset.image_ids` order).
        augmentation: optional augmenter ``(image, masks, rng) -> (image, masks)`` (mrcnn.data.augment).
        seed: non-negative int; same seed -> identical batches. None: config.SEED, and if that is None
            too, a random seed drawn once here.
        steps: batches per epoch; default ceil(num_images / BATCH_SIZE). Positions past the end of
            the image order wrap around into a fresh order.
        workers, use_multiprocessing, max_queue_size: passed to `keras.utils.PyDataset`.
        no_augmentation_sources: dataset sources (e.g. ["coco"]) whose images are never augmented
            (matterport's `train(..., no_augmentation_sources=...)`).

    Attributes:
        anchors: [A, (y1, x1, y2, x2)] float64 pixel anchors of config.IMAGE_SHAPE.
        epoch: epoch counter (advanced by `on_epoch_end`; set it to resume at a given epoch).
        seed: the seed in use.
    """

    def __init__(
        self,
        dataset: Any,
        config: Any,
        shuffle: bool = True,
        augmentation: Augmenter | None = None,
        seed: int | None = None,
        steps: int | None = None,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        no_augmentation_sources: Sequence[str] | None = None,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.dataset = dataset
        self.config = config
        self.shuffle = bool(shuffle)
        self.augmentation = augmentation
        self.no_augmentation_sources = frozenset(no_augmentation_sources or ())
        self.image_ids = np.asarray(dataset.image_ids)
        if self.image_ids.size == 0:
            raise ValueError("dataset has no images: add images and call dataset.prepare() first")
        check_num_classes(dataset, config)
        if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 1):
            raise ValueError(f"steps must be a positive int or None, got {steps!r}")
        self.steps = None if steps is None else int(steps)
        if seed is None:
            seed = getattr(config, "SEED", None)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self.seed = int(seed)
        self.epoch = 0

        self.batch_size = int(config.BATCH_SIZE)
        self.image_shape = tuple(int(v) for v in config.IMAGE_SHAPE)
        # The model's anchors (FPN levels or C4's single level), in the RPN's output order.
        self.anchors = utils.generate_config_anchors(config, self.image_shape)
        self.mean_pixel = np.asarray(config.MEAN_PIXEL, dtype=np.float32)
        self.mask_shape = tuple(config.MINI_MASK_SHAPE) if config.USE_MINI_MASK else self.image_shape[:2]
        # The permutation of one (epoch, pass) is reused by all its batches; cache the latest few.
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self.failure: Exception | None = None  # the exception of the batch that failed to load

    # --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        if self.steps is not None:
            return self.steps
        return int(math.ceil(self.image_ids.size / self.batch_size))

    def on_epoch_end(self) -> None:
        """Advances the epoch counter: the next epoch gets a new order and new random draws."""
        self.epoch += 1
        self._orders.clear()

    def _order(self, epoch: int, cycle: int) -> np.ndarray:
        key = (epoch, cycle)
        order = self._orders.get(key)
        if order is None:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, _SHUFFLE_STREAM, epoch, cycle])
                order = self.image_ids[rng.permutation(self.image_ids.size)]
            else:
                order = self.image_ids
            if len(self._orders) > 4:
                self._orders.clear()
            self._orders[key] = order
        return order

    def batch_image_ids(self, index: int) -> np.ndarray:
        """Internal image ids of batch `index` in the current epoch, [BATCH_SIZE]."""
        num_images = self.image_ids.size
        positions = index * self.batch_size + np.arange(self.batch_size)
        return np.array([self._order(self.epoch, int(p) // num_images)[int(p) % num_images] for p in positions])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        try:
            return self._batch(index)
        except Exception as error:
            # Keras runs this inside tf.data, which re-raises it as a TF OpError (UnknownError,
            # InvalidArgumentError) with the message buried in a graph traceback; MaskRCNN.train
            # raises this original instead (e.g. the FileNotFoundError of a missing image).
            self.failure = error
            raise

    def _batch(self, index: int) -> dict[str, np.ndarray]:
        config = self.config
        batch = self.batch_size
        max_gt = int(config.MAX_GT_INSTANCES)
        num_train = int(config.RPN_TRAIN_ANCHORS_PER_IMAGE)
        x = {
            "input_image": np.zeros((batch,) + self.image_shape, dtype=np.float32),
            "input_image_meta": np.zeros((batch, int(config.IMAGE_META_SIZE)), dtype=np.float32),
            "input_rpn_match": np.zeros((batch, self.anchors.shape[0], 1), dtype=np.int32),
            "input_rpn_bbox": np.zeros((batch, num_train, 4), dtype=np.float32),
            "input_gt_class_ids": np.zeros((batch, max_gt), dtype=np.int32),
            "input_gt_boxes": np.zeros((batch, max_gt, 4), dtype=np.float32),
            "input_gt_masks": np.zeros((batch,) + self.mask_shape + (max_gt,), dtype=bool),
        }
        with_keypoints = bool(getattr(config, "KEYPOINT_HEAD", False))
        if with_keypoints:
            x["input_gt_keypoints"] = np.zeros((batch, max_gt, int(config.NUM_KEYPOINTS), 3), dtype=np.float32)
        image_ids = self.batch_image_ids(index)
        for slot, image_id in enumerate(image_ids):
            rng = np.random.default_rng([self.seed, _BATCH_STREAM, self.epoch, index, slot])
            augmentation = self.augmentation
            if augmentation is not None and self.dataset.image_info[image_id]["source"] in self.no_augmentation_sources:
                augmentation = None
            image, image_meta, class_ids, boxes, masks, *extra = targets.load_image_gt(
                self.dataset, config, int(image_id), augmentation=augmentation, rng=rng, with_keypoints=with_keypoints
            )
            keypoints = extra[0] if with_keypoints else None
            if image.shape != self.image_shape or masks.shape[:2] != self.mask_shape:
                raise ValueError(
                    f"image {image_id} ({self.dataset.image_reference(int(image_id))}) came out as {image.shape} "
                    f"with masks {masks.shape[:2]}, but batches need config.IMAGE_SHAPE {self.image_shape} and "
                    f"masks {self.mask_shape}; IMAGE_RESIZE_MODE {config.IMAGE_RESIZE_MODE!r} keeps sizes apart "
                    "('none'/'pad64' only batch images of one size): use 'square' or 'crop'"
                )
            rpn_match, rpn_bbox = targets.build_rpn_targets(self.anchors, class_ids, boxes, config, rng=rng)
            if class_ids.shape[0] > max_gt:
                # Too many instances for the fixed GT slots: keep a random subset (in original order).
                keep = np.sort(rng.choice(class_ids.shape[0], max_gt, replace=False))
                class_ids, boxes, masks = class_ids[keep], boxes[keep], masks[:, :, keep]
                keypoints = None if keypoints is None else keypoints[keep]
            count = class_ids.shape[0]
            # mold_image (image - MEAN_PIXEL) written straight into the batch array.
            # Over [H, W * C] rows against the mean tiled along a row: numpy broadcasts over one long
            # contiguous axis ~7x faster than over the short channel axis (4.5 -> 0.6 ms at 512 px).
            height, width, channels = self.image_shape
            np.subtract(image.reshape(height, width * channels), np.tile(self.mean_pixel, width),
                        out=x["input_image"][slot].reshape(height, width * channels), dtype=np.float32)
            x["input_image_meta"][slot] = image_meta
            x["input_rpn_match"][slot, :, 0] = rpn_match
            x["input_rpn_bbox"][slot] = rpn_bbox
            x["input_gt_class_ids"][slot, :count] = class_ids
            x["input_gt_boxes"][slot, :count] = boxes
            x["input_gt_masks"][slot, :, :, :count] = masks
            if keypoints is not None:
                x["input_gt_keypoints"][slot, :count] = keypoints
        return x
