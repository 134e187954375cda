"""Joint image + instance-mask augmentation in numpy.

Every augmenter is a callable ``augmenter(image, masks, rng) -> (image, masks)``:

* ``image``: [H, W, C] uint8 (RGB),
* ``masks``: [H, W, N] bool, one channel per instance (N may be 0),
* ``rng``: a ``np.random.Generator``; all randomness comes from it, so a seeded generator makes
  the result reproducible (the DataGenerator hands one per image derived from its seed).

Geometric augmenters move image and masks together so they stay pixel-aligned; photometric ones
leave the masks alone. Combine them with `Compose`:

    augmentation = Compose([HorizontalFlip(0.5), Rot90(), ScaleJitter(640, 800), BrightnessContrast()])
    DataGenerator(dataset, config, augmentation=augmentation, seed=0)

`load_image_gt` applies the augmentation to the image as loaded, *before* the config's resize, so
shape-changing augmenters (Rot90 on a non-square image, ScaleJitter) work with every resize mode.

Keypoints (Keypoint R-CNN): every augmenter here also takes ``keypoints=`` an
`mrcnn.data.keypoints.InstanceKeypoints` and then returns ``(image, masks, keypoints)``, the
keypoints moved with the image (mirrors swap left/right partners through the flip map). A custom
augmenter used for keypoint training must accept ``keypoints=`` the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np

from mrcnn import utils
from mrcnn.data.keypoints import InstanceKeypoints

Augmenter = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _out(image: np.ndarray, masks: np.ndarray, keypoints: InstanceKeypoints | None) -> tuple:
    # The two-value return stays the contract when no keypoints are passed.
    return (image, masks) if keypoints is None else (image, masks, keypoints)

__all__ = [
    "Augmenter",
    "BrightnessContrast",
    "Compose",
    "HorizontalFlip",
    "Rot90",
    "ScaleJitter",
    "VerticalFlip",
    "check_pair",
]


def check_pair(image: np.ndarray, masks: np.ndarray) -> None:
    """Checks that `image` is [H, W, C] and `masks` is [H, W, N] with the same H, W.

    Raises:
        ValueError: naming the shapes when they do not fit.
    """
    if np.ndim(image) != 3 or np.ndim(masks) != 3 or np.shape(image)[:2] != np.shape(masks)[:2]:
        raise ValueError(
            f"augmentation needs image [H, W, C] and masks [H, W, N] of the same H, W; got image "
            f"{np.shape(image)} and masks {np.shape(masks)}"
        )


def takes_keypoints(augmenter: Callable) -> bool:
    """Whether `augmenter` accepts ``keypoints=`` (a parameter of that name, or ``**kwargs``)."""
    try:
        parameters = inspect.signature(augmenter).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume a plain augmenter
        return False
    return any(p.name == "keypoints" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def keypoints_not_taken(augmenter: Callable) -> TypeError:
    """The error for an augmenter that cannot move keypoints, in a keypoint model's training."""
    return TypeError(f"augmentation {augmenter!r} does not take keypoints=: keypoint training needs augmenters "
                     "that move keypoints too (those of mrcnn.data.augment do; a function of your own needs a "
                     "keypoints=None parameter and must return (image, masks, keypoints) when it is given)")


def apply_with_keypoints(augmenter: Callable, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                         keypoints: InstanceKeypoints) -> tuple:
    """``augmenter(image, masks, rng, keypoints=keypoints)`` -> (image, masks, keypoints).

    Raises:
        TypeError: `keypoints_not_taken` when the augmenter takes no ``keypoints=`` (`takes_keypoints`)
            or returns something else than three values (e.g. ``**kwargs`` that drop them).
    """
    if not takes_keypoints(augmenter):
        raise keypoints_not_taken(augmenter)
    returned = augmenter(image, masks, rng, keypoints=keypoints)
    if not isinstance(returned, tuple) or len(returned) != 3:
        raise keypoints_not_taken(augmenter)
    return returned


def _check_probability(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability p must be in [0, 1], got {p!r}")
    return float(p)


class Compose:
    """Applies augmenters in order.

    Args:
        augmenters: sequence of augmenters (callables with the signature of this module).
    """

    def __init__(self, augmenters: Sequence[Augmenter]) -> None:
        for i, augmenter in enumerate(augmenters):
            if not callable(augmenter):
                raise TypeError(f"augmenters[{i}] is not callable: {augmenter!r}")
        self.augmenters = list(augmenters)

    def __call__(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                 keypoints: InstanceKeypoints | None = None) -> tuple:
        check_pair(image, masks)
        for augmenter in self.augmenters:
            if keypoints is None:
                image, masks = augmenter(image, masks, rng)
            else:
                image, masks, keypoints = apply_with_keypoints(augmenter, image, masks, rng, keypoints)
        return _out(image, masks, keypoints)

    def __repr__(self) -> str:
        return f"Compose({self.augmenters!r})"


class HorizontalFlip:
    """Mirrors left-right with probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = _check_probability(p)

    def __call__(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                 keypoints: InstanceKeypoints | None = None) -> tuple:
        check_pair(image, masks)
        if rng.random() < self.p:
            flipped = None if keypoints is None else keypoints.hflip(image.shape[1])
            return _out(image[:, ::-1], masks[:, ::-1], flipped)
        return _out(image, masks, keypoints)

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


class VerticalFlip:
    """Mirrors top-bottom with probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = _check_probability(p)

    def __call__(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                 keypoints: InstanceKeypoints | None = None) -> tuple:
        check_pair(image, masks)
        if rng.random() < self.p:
            flipped = None if keypoints is None else keypoints.vflip(image.shape[0])
            return _out(image[::-1], masks[::-1], flipped)
        return _out(image, masks, keypoints)

    def __repr__(self) -> str:
        return f"VerticalFlip(p={self.p})"


class Rot90:
    """Rotates by k * 90 degrees counter-clockwise, k drawn uniformly from `ks`, with probability `p`.

    On a non-square image k = 1 or 3 swaps height and width (fine before the config's resize).
    """

    def __init__(self, p: float = 1.0, ks: Sequence[int] = (0, 1, 2, 3)) -> None:
        self.p = _check_probability(p)
        if len(ks) == 0:
            raise ValueError("ks must list at least one number of quarter turns")
        self.ks = tuple(int(k) % 4 for k in ks)

    def __call__(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                 keypoints: InstanceKeypoints | None = None) -> tuple:
        check_pair(image, masks)
        if rng.random() >= self.p:
            return _out(image, masks, keypoints)
        k = self.ks[int(rng.integers(len(self.ks)))]
        rotated = None if keypoints is None else keypoints.rot90(k, image.shape)
        return _out(np.rot90(image, k, axes=(0, 1)), np.rot90(masks, k, axes=(0, 1)), rotated)

    def __repr__(self) -> str:
        return f"Rot90(p={self.p}, ks={self.ks})"


class ScaleJitter:
    """Rescales so the shorter side is a random integer in [min_side, max_side] (paper: 640..800).

    Applied before the config's resize (see module docstring). That resize only scales *up* to
    IMAGE_MIN_DIM and down to fit IMAGE_MAX_DIM ("square"), so for the jitter to survive set
    IMAGE_MIN_DIM <= min_side (e.g. 0) and IMAGE_MAX_DIM to the canvas size; in "crop" mode the
    jitter changes the scale of the random crop.

    Args:
        min_side: smallest shorter side in pixels.
        max_side: largest shorter side in pixels.
        max_size: optional cap on the longer side (paper: 1333); the scale is reduced to respect it.
        p: probability of applying.
    """

    def __init__(self, min_side: int, max_side: int, max_size: int | None = None, p: float = 1.0) -> None:
        if not 0 < min_side <= max_side:
            raise ValueError(f"need 0 < min_side <= max_side, got min_side={min_side}, max_side={max_side}")
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.min_side = int(min_side)
        self.max_side = int(max_side)
        self.max_size = max_size
        self.p = _check_probability(p)

    def __call__(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                 keypoints: InstanceKeypoints | None = None) -> tuple:
        check_pair(image, masks)
        if rng.random() >= self.p:
            return _out(image, masks, keypoints)
        side = int(rng.integers(self.min_side, self.max_side + 1))
        height, width = image.shape[:2]
        scale = side / min(height, width)
        if self.max_size is not None and max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        new_shape = (max(1, round(height * scale)), max(1, round(width * scale)))
        if new_shape == (height, width):
            return _out(image, masks, keypoints)
        resized = utils.resize_bilinear(image, new_shape)
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            resized = np.clip(np.rint(resized), info.min, info.max)
        scaled = None if keypoints is None else keypoints.rescale(new_shape[0] / height, new_shape[1] / width)
        return _out(resized.astype(image.dtype), utils.resize_nearest(masks, new_shape), scaled)

    def __repr__(self) -> str:
        return f"ScaleJitter(min_side={self.min_side}, max_side={self.max_side}, max_size={self.max_size}, p={self.p})"


class BrightnessContrast:
    """Random brightness shift and contrast gain; masks unchanged.

    ``out = (image - mean) * c + mean + b * 255`` with c uniform in [1 - contrast, 1 + contrast],
    b uniform in [-brightness, brightness] and ``mean`` the image's mean intensity; rounded and clipped
    to uint8.

    Args:
        brightness: maximum brightness shift as a fraction of 255.
        contrast: maximum relative contrast change.
        p: probability of applying.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, p: float = 1.0) -> None:
        if brightness < 0 or not 0 <= contrast < 1:
            raise ValueError(f"need brightness >= 0 and 0 <= contrast < 1, got brightness={brightness}, contrast={contrast}")
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.p = _check_probability(p)

    def __call__(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                 keypoints: InstanceKeypoints | None = None) -> tuple:
        check_pair(image, masks)
        if rng.random() >= self.p:
            return _out(image, masks, keypoints)
        gain = rng.uniform(1.0 - self.contrast, 1.0 + self.contrast)
        shift = rng.uniform(-self.brightness, self.brightness) * 255.0
        values = image.astype(np.float32)
        mean = float(values.mean())
        values = (values - mean) * gain + (mean + shift)
        return _out(np.clip(np.rint(values), 0, 255).astype(np.uint8), masks, keypoints)

    def __repr__(self) -> str:
        return f"BrightnessContrast(brightness={self.brightness}, contrast={self.contrast}, p={self.p})"
