"""Microscopy augmentation, shared by the Mask R-CNN and U-Net training of this sample.

Same interface as `mrcnn.data.augment`: ``augmenter(image, masks, rng) -> (image, masks)`` with
image [H, W, C] uint8 and masks [H, W, N] (bool instance masks, or the [H, W, 1] integer label
image that `load_image_gt`'s label path and the U-Net pass). Geometric augmenters resample masks
by nearest neighbour, so label values survive.

* `ElasticDeformation`: the U-Net paper's random elastic deformation (displacements on a coarse
  3 x 3 grid drawn from N(0, 10 px), interpolated bicubically to every pixel).
* `RandomGamma`: intensity gamma in [0.7, 1.5] (brightfield/fluorescence exposure differences).
* `ColorRobustness`: grayscale conversion, channel permutation and, rarely, inversion (dark nuclei
  on a bright brightfield background vs bright nuclei on dark fluorescence).

`microscopy_augmentation()` combines them with flips, rot90 and brightness/contrast.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from mrcnn.data.augment import BrightnessContrast, Compose, HorizontalFlip, Rot90, VerticalFlip, check_pair


def _probability(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability p must be in [0, 1], got {p!r}")
    return float(p)


class ElasticDeformation:
    """Random smooth warp (U-Net, Ronneberger et al. 2015, section 3.1).

    A ``grid x grid`` field of displacement vectors with components from N(0, sigma) pixels is
    interpolated bicubically to the image size; the image is resampled bilinearly and the masks by
    nearest neighbour at the displaced positions (borders reflected).

    Args:
        sigma: standard deviation of the grid displacements in pixels (paper: 10).
        grid: control points per axis (paper: 3).
        p: probability of applying.
    """

    def __init__(self, sigma: float = 10.0, grid: int = 3, p: float = 1.0) -> None:
        if sigma < 0 or grid < 2:
            raise ValueError(f"need sigma >= 0 and grid >= 2, got sigma={sigma}, grid={grid}")
        self.sigma = float(sigma)
        self.grid = int(grid)
        self.p = _probability(p)

    def displacement(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """[2, H, W] float32 displacement (dy, dx) in pixels, smooth over the image."""
        coarse = rng.normal(0.0, self.sigma, size=(2, self.grid, self.grid))
        zoom = (shape[0] / self.grid, shape[1] / self.grid)
        # order=3: bicubic spline through the control points, as in the paper.
        field = np.stack([ndi.zoom(c, zoom, order=3, mode="nearest", grid_mode=True) for c in coarse])
        return field[:, : shape[0], : shape[1]].astype(np.float32)

    def __call__(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        check_pair(image, masks)
        if rng.random() >= self.p:
            return image, masks
        height, width = image.shape[:2]
        dy, dx = self.displacement((height, width), rng)
        ys = np.arange(height, dtype=np.float32)[:, None] + dy
        xs = np.arange(width, dtype=np.float32)[None, :] + dx
        warped = np.empty_like(image)
        for c in range(image.shape[-1]):
            channel = ndi.map_coordinates(image[:, :, c].astype(np.float32), [ys, xs], order=1, mode="reflect")
            warped[:, :, c] = np.clip(np.rint(channel), 0, 255) if image.dtype == np.uint8 else channel
        # Masks: nearest source pixel, reflected at the borders like the image (one gather for all N).
        rows = _reflect(np.rint(ys).astype(np.intp), height)
        cols = _reflect(np.rint(xs).astype(np.intp), width)
        return warped, masks[rows, cols]

    def __repr__(self) -> str:
        return f"ElasticDeformation(sigma={self.sigma}, grid={self.grid}, p={self.p})"


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    # scipy's "reflect" (half-sample symmetric): -1 -> 0, size -> size - 1.
    period = 2 * size
    index = np.mod(index, period)
    return np.where(index >= size, period - 1 - index, index)


class RandomGamma:
    """``out = 255 * (image / 255) ** gamma`` with gamma log-uniform in [low, high]; masks unchanged."""

    def __init__(self, low: float = 0.7, high: float = 1.5, p: float = 0.5) -> None:
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)
        self.p = _probability(p)

    def __call__(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        check_pair(image, masks)
        if rng.random() >= self.p:
            return image, masks
        gamma = float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))
        table = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
        return table[image], masks  # a lookup table: one gather instead of float math per pixel

    def __repr__(self) -> str:
        return f"RandomGamma(low={self.low}, high={self.high}, p={self.p})"


class ColorRobustness:
    """Grayscale/RGB robustness: with `p_gray` the image becomes gray (mean of its channels) in all
    three channels, else with `p_permute` its channels are permuted; with `p_invert` it is inverted
    (255 - x). Masks unchanged."""

    def __init__(self, p_gray: float = 0.3, p_permute: float = 0.3, p_invert: float = 0.1) -> None:
        self.p_gray, self.p_permute, self.p_invert = (_probability(p) for p in (p_gray, p_permute, p_invert))

    def __call__(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        check_pair(image, masks)
        if image.shape[-1] == 3:
            if rng.random() < self.p_gray:
                gray = np.rint(image.astype(np.float32).mean(axis=-1)).astype(image.dtype)
                image = np.repeat(gray[:, :, None], 3, axis=-1)
            elif rng.random() < self.p_permute:
                image = image[:, :, rng.permutation(3)]
        if rng.random() < self.p_invert:
            image = 255 - image
        return image, masks

    def __repr__(self) -> str:
        return f"ColorRobustness(p_gray={self.p_gray}, p_permute={self.p_permute}, p_invert={self.p_invert})"


def microscopy_augmentation(elastic: bool = True) -> Compose:
    """Flips, rot90, elastic deformation (optional), brightness/contrast, gamma, color robustness."""
    augmenters = [HorizontalFlip(0.5), VerticalFlip(0.5), Rot90()]
    if elastic:
        augmenters.append(ElasticDeformation(sigma=10.0, grid=3, p=0.5))
    augmenters += [BrightnessContrast(0.1, 0.2, p=0.5), RandomGamma(), ColorRobustness()]
    return Compose(augmenters)
