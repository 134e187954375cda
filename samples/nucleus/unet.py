"""U-Net baseline for nucleus instance segmentation (Ronneberger, Fischer, Brox, MICCAI 2015).

* `build_unet`: the paper's contracting/expanding architecture in Keras 3 layers (3x3 convs with
  "same" padding instead of the paper's unpadded ones, so output size = input size; optional
  BatchNorm for training from scratch in minutes; 2x2 max-pool, 2x2 up-convolution, skip
  concatenation, 1x1 conv to 2 classes: background / nucleus).
* `unet_targets` / `weight_map`: the training target separates touching nuclei by a background
  line, and the pixel-wise loss weight is the paper's
  ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` (w0 = 10, sigma = 5 px), with
  w_c balancing class frequencies and d1, d2 the distances to the nearest and second nearest
  nucleus; the border term is put on background pixels, where the separating gaps are.
* `UNetGenerator`: random crops with the sample's augmentation (elastic deformation included),
  targets and weight maps, for `model.fit` (weights go in as Keras per-pixel sample weights).
* `UNetDetector`: overlap-tile inference (mirror-padded tiles, central part kept) and instances
  by watershed on the distance transform of the predicted foreground; its `detect(images)` returns
  `MaskRCNN.detect`'s dicts, so the same evaluation and `mrcnn.tiling.detect_tiled` apply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import scipy.ndimage as ndi
import skimage.feature
import skimage.segmentation

from mrcnn.callbacks import TrainingBudget
from mrcnn.data.dataset import labels_to_masks

W0 = 10.0
SIGMA = 5.0


# ----------------------------------------------------------------------------------------------
# Model
def build_unet(depth: int = 4, base_filters: int = 16, input_channels: int = 3, batch_norm: bool = True,
               name: str = "unet") -> keras.Model:
    """U-Net with `depth` poolings; filters double per level from `base_filters` (paper: 4, 64).

    Input [B, H, W, input_channels] float32 (image / 255), H and W multiples of 2**depth.
    Output [B, H, W, 2] logits (0 background, 1 nucleus).
    """
    if depth < 1 or base_filters < 1:
        raise ValueError(f"need depth >= 1 and base_filters >= 1, got depth={depth}, base_filters={base_filters}")
    inputs = keras.Input((None, None, input_channels), name="image")

    def block(x: Any, filters: int, tag: str) -> Any:
        for i in (1, 2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=f"{tag}_conv{i}")(x)
            if batch_norm:
                x = keras.layers.BatchNormalization(momentum=0.9, name=f"{tag}_bn{i}")(x)
            x = keras.layers.ReLU(name=f"{tag}_relu{i}")(x)
        return x

    skips = []
    x = inputs
    for level in range(depth):
        x = block(x, base_filters * 2**level, f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = block(x, base_filters * 2**depth, "bottom")
    for level in reversed(range(depth)):
        x = keras.layers.Conv2DTranspose(base_filters * 2**level, 2, strides=2, name=f"upconv{level}")(x)
        x = keras.layers.Concatenate(name=f"concat{level}")([skips[level], x])
        x = block(x, base_filters * 2**level, f"up{level}")
    outputs = keras.layers.Conv2D(2, 1, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


# ----------------------------------------------------------------------------------------------
# Targets
def separate_touching(labels: np.ndarray) -> np.ndarray:
    """Foreground [H, W] bool with every pixel that touches another nucleus (8-neighbourhood) set to
    background, so touching nuclei become separate components (the paper's separating borders)."""
    labels = np.asarray(labels)
    values = labels.astype(np.int32)
    # Background as "above every label" for the minimum (scipy's filters mishandle int64 extremes).
    big = int(values.max()) + 1 if values.size else 1
    neighbour_max = ndi.maximum_filter(values, size=3, mode="constant", cval=0)
    neighbour_min = ndi.minimum_filter(np.where(values > 0, values, big), size=3, mode="constant", cval=big)
    touching = (neighbour_max > values) | (neighbour_min < values)
    return (values > 0) & ~touching


def weight_map(labels: np.ndarray, w0: float = W0, sigma: float = SIGMA, foreground: np.ndarray | None = None
               ) -> np.ndarray:
    """The U-Net paper's loss weight map of one image.

    Args:
        labels: [H, W] int instance labels (0 background).
        w0, sigma: border term height and width (paper: 10, 5 px).
        foreground: [H, W] bool training target (default `separate_touching(labels)`); w_c
            balances its two classes: each class gets total weight 1/2 of the image.

    Returns:
        [H, W] float32: w_c(x) + w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on background pixels
        (d1, d2: distances to the nearest and second nearest nucleus), w_c(x) on nuclei.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
    fg = separate_touching(labels) if foreground is None else np.asarray(foreground, bool)
    total = fg.size
    count_fg = int(fg.sum())
    if 0 < count_fg < total:
        w_c = np.where(fg, total / (2.0 * count_fg), total / (2.0 * (total - count_fg)))
    else:
        w_c = np.ones(labels.shape)
    # Beyond `reach` the border term is < 1e-3: each nucleus's distance map is computed only in
    # its box grown by `reach`, so the cost is per nucleus, not per nucleus x image.
    reach = int(math.ceil(sigma * math.sqrt(2.0 * math.log(max(w0, 1e-3) / 1e-3))))
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    height, width = labels.shape
    for value, slices in enumerate(ndi.find_objects(labels.astype(np.int64)), start=1):
        if slices is None:
            continue
        y1, y2 = max(slices[0].start - reach, 0), min(slices[0].stop + reach, height)
        x1, x2 = max(slices[1].start - reach, 0), min(slices[1].stop + reach, width)
        window = labels[y1:y2, x1:x2] != value
        distance = ndi.distance_transform_edt(window)
        near1, near2 = d1[y1:y2, x1:x2], d2[y1:y2, x1:x2]
        near2[...] = np.minimum(near2, np.maximum(near1, distance))
        near1[...] = np.minimum(near1, distance)
    border = np.where(np.isfinite(d2), w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2)), 0.0)
    return (w_c + np.where(labels == 0, border, 0.0)).astype(np.float32)


def unet_targets(labels: np.ndarray, w0: float = W0, sigma: float = SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """(target [H, W] uint8 in {0, 1}, weights [H, W] float32) for one label image."""
    foreground = separate_touching(labels)
    return foreground.astype(np.uint8), weight_map(labels, w0, sigma, foreground)


# ----------------------------------------------------------------------------------------------
# Training data
class UNetGenerator(keras.utils.PyDataset):
    """Random `crop` x `crop` patches of a NucleusDataset with augmentation, targets and weights.

    Each batch is ``(x [B, crop, crop, 3] float32 in [0, 1], y [B, crop, crop] uint8,
    w [B, crop, crop] float32)``. Images smaller than the crop are mirror-padded (overlap-tile
    style). Deterministic for a `seed`: batch i of epoch e depends only on (seed, e, i).
    """

    def __init__(self, dataset: Any, crop: int = 256, batch_size: int = 4, steps: int = 50,
                 augmentation: Any = None, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.crop = int(crop)
        self.batch_size = int(batch_size)
        self.steps = int(steps)
        self.augmentation = augmentation
        self.seed = int(seed)
        self.epoch = 0
        self.image_ids = np.asarray(dataset.image_ids)
        if self.image_ids.size == 0:
            raise ValueError("dataset has no images: add images and call dataset.prepare() first")

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        size = self.crop
        x = np.zeros((self.batch_size, size, size, 3), np.float32)
        y = np.zeros((self.batch_size, size, size), np.uint8)
        w = np.zeros((self.batch_size, size, size), np.float32)
        for slot in range(self.batch_size):
            rng = np.random.default_rng([self.seed, self.epoch, index, slot])
            image_id = int(self.image_ids[rng.integers(self.image_ids.size)])
            image = self.dataset.load_image(image_id)
            labels = self.dataset.load_labels(image_id)
            image, labels = random_crop(image, labels, size, rng)
            if self.augmentation is not None:
                image, stacked = self.augmentation(image, labels[:, :, None], rng)
                labels = stacked[:, :, 0]
            target, weights = unet_targets(labels)
            x[slot] = image / np.float32(255.0)
            y[slot] = target
            w[slot] = weights
        return x, y, w


def random_crop(image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """A random size x size crop of image [H, W, 3] and labels [H, W] (mirror-padded when smaller)."""
    height, width = labels.shape
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
        labels = np.pad(labels, ((0, pad_h), (0, pad_w)), mode="symmetric")
        height, width = labels.shape
    y = int(rng.integers(0, height - size + 1))
    x = int(rng.integers(0, width - size + 1))
    return image[y:y + size, x:x + size], labels[y:y + size, x:x + size]


def train_unet(model: keras.Model, dataset: Any, steps: int, crop: int = 256, batch_size: int = 4,
               learning_rate: float = 1e-3, augmentation: Any = None, budget_seconds: float | None = None,
               seed: int = 0, verbose: int = 1, callbacks: Sequence[keras.callbacks.Callback] = ()
               ) -> keras.callbacks.History:
    """Trains `model` with Adam and the weighted pixel-wise cross-entropy for `steps` steps (or
    until `budget_seconds` of wall time, or until a callback stops it, e.g. the CLI's CPU-time
    budget), in epochs of at most 50 steps."""
    per_epoch = min(50, steps)
    generator = UNetGenerator(dataset, crop, batch_size, per_epoch, augmentation, seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = list(callbacks)
    if budget_seconds:  # wall clock only, constant learning rate; the CLI passes its own budget
        callbacks.insert(0, TrainingBudget(wall_seconds=budget_seconds, decay_at=None))
    return model.fit(generator, epochs=max(1, math.ceil(steps / per_epoch)), callbacks=callbacks, verbose=verbose)


# ----------------------------------------------------------------------------------------------
# Inference
class UNetDetector:
    """Nucleus instances from a U-Net: overlap-tile foreground probabilities, then watershed.

    Args:
        model: a `build_unet` model.
        tile: tile size fed to the network (a multiple of 2**depth).
        margin: mirrored context on each side of a tile's kept centre (overlap-tile strategy).
        threshold: foreground probability threshold.
        min_distance: minimum distance between two nucleus centres (watershed markers), pixels.
        min_size: instances smaller than this many pixels are dropped.
        batch_size: tiles per forward pass.
    """

    def __init__(self, model: keras.Model, tile: int = 256, margin: int = 32, threshold: float = 0.5,
                 min_distance: int = 4, min_size: int = 10, batch_size: int = 4) -> None:
        if tile <= 2 * margin:
            raise ValueError(f"tile ({tile}) must exceed 2 * margin ({2 * margin})")
        self.model = model
        self.tile = int(tile)
        self.margin = int(margin)
        self.threshold = float(threshold)
        self.min_distance = int(min_distance)
        self.min_size = int(min_size)
        self.batch_size = int(batch_size)

    def predict_foreground(self, image: np.ndarray) -> np.ndarray:
        """[H, W] float32 nucleus probability of an [H, W, 3] uint8 image, by overlap-tile."""
        image = _as_rgb(image)
        height, width = image.shape[:2]
        step = self.tile - 2 * self.margin
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        # Mirror the border (the paper's overlap-tile): every kept centre sees `margin` context.
        padded = np.pad(image, ((self.margin, self.margin + rows * step - height),
                                (self.margin, self.margin + cols * step - width), (0, 0)), mode="symmetric")
        padded = padded.astype(np.float32) / np.float32(255.0)
        out = np.zeros((rows * step, cols * step), np.float32)
        corners = [(r * step, c * step) for r in range(rows) for c in range(cols)]
        for k in range(0, len(corners), self.batch_size):
            batch = corners[k:k + self.batch_size]
            tiles = np.stack([padded[y:y + self.tile, x:x + self.tile] for y, x in batch])
            logits = np.asarray(self.model(tiles, training=False))
            probs = _softmax_foreground(logits)
            for (y, x), prob in zip(batch, probs):
                out[y:y + step, x:x + step] = prob[self.margin:self.margin + step, self.margin:self.margin + step]
        return out[:height, :width]

    def instances(self, probability: np.ndarray) -> np.ndarray:
        """[H, W] int32 instance labels from a foreground probability map (watershed)."""
        return watershed_instances(probability, self.threshold, self.min_distance, self.min_size)

    def detect(self, images: Sequence[np.ndarray], verbose: int = 0, output: str = "masks") -> list[dict[str, np.ndarray]]:
        """`MaskRCNN.detect`'s output for each image: rois, class_ids (1), scores (mean
        probability inside the instance), masks [H, W, N] bool.

        Args:
            images: [H, W, 3] uint8 images (or grayscale / RGBA, conformed as `detect` does).
            verbose: accepted for `detect`'s signature; no progress bar (one pass per image).
            output: "masks" ([H, W, N] bool: H * W * N bytes) or "labels" (the watershed's [H, W]
                int32 label image, instance k valued k + 1, in the place of "masks": a large field
                with hundreds of nuclei then needs 4 bytes a pixel, not N).
        """
        del verbose
        if output not in ("masks", "labels"):
            raise ValueError(f"output must be 'masks' or 'labels', got {output!r}")
        results = []
        for image in images:
            probability = self.predict_foreground(image)
            labels = self.instances(probability)
            count = int(labels.max(initial=0))
            boxes = np.zeros((count, 4), np.int32)
            for k, slices in enumerate(ndi.find_objects(labels, max_label=count)):
                if slices is not None:
                    boxes[k] = (slices[0].start, slices[1].start, slices[0].stop, slices[1].stop)
            scores = ndi.mean(probability, labels, index=np.arange(1, count + 1)) if count else np.zeros(0)
            result = {"rois": boxes, "class_ids": np.ones(count, np.int32), "scores": np.asarray(scores, np.float32)}
            result[output] = labels if output == "labels" else labels_to_masks(labels)
            results.append(result)
        return results


def watershed_instances(probability: np.ndarray, threshold: float = 0.5, min_distance: int = 4,
                        min_size: int = 10) -> np.ndarray:
    """Splits the foreground (probability > threshold) into nuclei: markers at the maxima of its
    distance transform (at least `min_distance` apart, one per component at least), watershed on
    the negated distance inside the foreground, instances below `min_size` pixels removed.

    Returns:
        [H, W] int32 labels 1..N (0 background).
    """
    foreground = np.asarray(probability) > threshold
    components, count = ndi.label(foreground)
    if count == 0:
        return np.zeros(foreground.shape, np.int32)
    distance = ndi.distance_transform_edt(foreground)
    peaks = skimage.feature.peak_local_max(distance, min_distance=min_distance, labels=components,
                                           exclude_border=False)
    markers = np.zeros(foreground.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # A component without a peak (e.g. a flat plateau) still gets one marker.
    unmarked = np.setdiff1d(np.arange(1, count + 1), np.unique(components[markers > 0]))
    next_id = len(peaks) + 1
    for value in unmarked:
        ys, xs = np.nonzero(components == value)
        markers[ys[0], xs[0]] = next_id
        next_id += 1
    labels = skimage.segmentation.watershed(-distance, markers, mask=foreground)
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < min_size] = 0
    labels, _, _ = skimage.segmentation.relabel_sequential(labels)
    return labels.astype(np.int32)


def _softmax_foreground(logits: np.ndarray) -> np.ndarray:
    # p(nucleus) of 2-class logits = sigmoid(l1 - l0).
    return (1.0 / (1.0 + np.exp(-(logits[..., 1] - logits[..., 0])))).astype(np.float32)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image must be [H, W], [H, W, 3] or [H, W, 4], got shape {image.shape}")
    return image[:, :, :3]
