"""Synthetic keypoint data: stick figures with 7 joints, for Keypoint R-CNN tests and the demo.

    train = StickFiguresDataset()
    train.load_stick_figures(200, 128, 128, seed=0)
    train.prepare()
    masks, class_ids = train.load_mask(0)        # [H, W, N] bool: limbs and head of each figure
    keypoints = train.load_keypoints(0)          # [N, 7, 3] (x, y, visibility)

A figure is a head (disc) on a neck, two arms from the neck, a body from the neck to the pelvis and
two legs from the pelvis, drawn as thick lines in one colour on a plain background. Its keypoints
are the joints (`KEYPOINT_NAMES`). "Left" and "right" are the viewer's: the left hand is the one
further left in the image (a figure seen from behind). That keeps the names learnable from the
pixels and consistent with a horizontal flip (which mirrors the figure and swaps the names through
`FLIP_MAP`); vertical flips and rotations would break it, so augment these images with
`HorizontalFlip` only.

Every image is a pure function of ``(seed, index, height, width, max_figures)``. Figures drawn later
occlude earlier ones: a keypoint under a later figure has visibility 1 (labelled, occluded), the
others 2; a figure left with too little visible area is not drawn at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mrcnn.config import Config
from mrcnn.data.dataset import Dataset
from mrcnn.data.keypoints import flip_map_from_names

KEYPOINT_NAMES = ("head", "neck", "left_hand", "right_hand", "pelvis", "left_foot", "right_foot")
SKELETON = ((0, 1), (1, 2), (1, 3), (1, 4), (4, 5), (4, 6))  # limbs as keypoint index pairs
FLIP_MAP = flip_map_from_names(KEYPOINT_NAMES)
# OKS per-keypoint sigmas for COCOeval (COCO's run 0.025 for eyes .. 0.107 for hips). The figures'
# mask area (COCO's scale) is small for their extent (thin limbs), so joints get hip-like sigmas.
OKS_SIGMAS = (0.1,) * len(KEYPOINT_NAMES)
CLASS_NAME = "figure"


class StickFiguresConfig(Config):
    """Keypoint R-CNN on `StickFiguresDataset` (128 px): small enough to train on a CPU."""

    NAME = "stick_figures"
    IMAGES_PER_GPU = 4
    NUM_CLASSES = 1 + 1
    BACKBONE = "resnet50"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    PRE_NMS_LIMIT = 1000
    POST_NMS_ROIS_TRAINING = 300
    POST_NMS_ROIS_INFERENCE = 100
    TRAIN_ROIS_PER_IMAGE = 32
    MAX_GT_INSTANCES = 4
    DETECTION_MAX_INSTANCES = 8
    MINI_MASK_SHAPE = (28, 28)
    KEYPOINT_HEAD = True
    NUM_KEYPOINTS = len(KEYPOINT_NAMES)
    KEYPOINT_NAMES = KEYPOINT_NAMES
    KEYPOINT_FLIP_MAP = FLIP_MAP
    KEYPOINT_SKELETON = SKELETON
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 5


def figure_height_range(height: int, width: int) -> tuple[int, int]:
    """Smallest and largest figure height (px) drawn on a height x width image."""
    dim = min(height, width)
    return max(16, dim // 3), max(17, (dim * 2) // 3)


def _random_joints(rng: np.random.Generator, size: float) -> np.ndarray:
    """Joint positions [7, 2] (x, y) of one figure of height ~`size`, relative to its head centre."""
    head_radius = 0.12 * size
    neck = np.array([rng.uniform(-0.05, 0.05) * size, head_radius + 0.08 * size])
    pelvis = neck + np.array([rng.uniform(-0.08, 0.08) * size, rng.uniform(0.3, 0.38) * size])
    arm, leg = 0.3 * size, 0.4 * size

    def limb(origin: np.ndarray, length: float, side: float, spread: tuple[float, float], drop: tuple[float, float]):
        # side -1 reaches to the image left, +1 to the right: left/right stay the viewer's.
        direction = np.array([side * rng.uniform(*spread), rng.uniform(*drop)])
        return origin + length * direction / np.linalg.norm(direction)

    joints = [
        np.zeros(2),
        neck,
        limb(neck, arm, -1.0, (0.3, 1.0), (-0.7, 0.9)),
        limb(neck, arm, 1.0, (0.3, 1.0), (-0.7, 0.9)),
        pelvis,
        limb(pelvis, leg, -1.0, (0.15, 0.7), (0.7, 1.0)),
        limb(pelvis, leg, 1.0, (0.15, 0.7), (0.7, 1.0)),
    ]
    return np.stack(joints)


def random_image_spec(seed: int, index: int, height: int, width: int, max_figures: int = 2) -> dict[str, Any]:
    """The random description of one image; deterministic in ``(seed, index)``.

    Returns:
        dict with ``bg_color`` (3 ints) and ``figures``: list of dicts ``color`` (3 ints),
        ``joints`` ([7, 2] float (x, y) continuous pixel coordinates), ``thickness`` (limb width,
        px) and ``head_radius`` (px), in drawing order (bottom first). Every joint lies inside
        the image by at least half a limb width.

    Raises:
        ValueError: if the image is too small for a figure or max_figures < 1.
    """
    if height < 32 or width < 32:
        raise ValueError(f"stick figure images must be at least 32x32, got {height}x{width}")
    if max_figures < 1:
        raise ValueError(f"max_figures must be >= 1, got {max_figures}")
    rng = np.random.default_rng([seed, index])
    bg_color = rng.integers(0, 256, size=3)
    low, high = figure_height_range(height, width)
    figures = []
    for _ in range(int(rng.integers(1, max_figures + 1))):
        while True:  # a colour clearly distinct from the background (else the figure is invisible)
            color = rng.integers(0, 256, size=3)
            if np.abs(color - bg_color).sum() >= 150:
                break
        size = float(rng.integers(low, high + 1))
        joints = _random_joints(rng, size)
        thickness = max(2.0, 0.09 * size)
        head_radius = 0.12 * size
        margin = np.array([head_radius, head_radius]) + 1.0
        lower = -joints.min(axis=0) + margin
        upper = np.array([width, height]) - joints.max(axis=0) - margin
        # Shrinking never fails for figure heights up to 2/3 of the image; clip if it ever would.
        offset = rng.uniform(lower, np.maximum(upper, lower + 1e-3))
        figures.append({"color": tuple(int(c) for c in color), "joints": joints + offset,
                        "thickness": thickness, "head_radius": head_radius})
    full = [_figure_mask(f, height, width) for f in figures]
    visible = _visible_masks(full)
    keep = [i for i in range(len(figures))
            if i == len(figures) - 1 or visible[i].sum() >= 0.5 * full[i].sum()]
    return {"bg_color": tuple(int(c) for c in bg_color), "figures": [figures[i] for i in keep]}


def _segment_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points (px, py) to the segment a-b."""
    ab = b - a
    t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1]) / max(float(ab @ ab), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(px - (a[0] + t * ab[0]), py - (a[1] + t * ab[1]))


def _figure_mask(figure: dict[str, Any], height: int, width: int) -> np.ndarray:
    """[H, W] bool: the pixels whose centre lies on a limb (within half the width) or in the head."""
    py, px = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    joints = np.asarray(figure["joints"])
    mask = np.hypot(px - joints[0, 0], py - joints[0, 1]) <= figure["head_radius"]
    for i, j in SKELETON:
        mask |= _segment_distance(px, py, joints[i], joints[j]) <= figure["thickness"] / 2
    return mask


def _visible_masks(full_masks: list[np.ndarray]) -> list[np.ndarray]:
    """Subtracts from each mask everything drawn after it (on top)."""
    visible = []
    covered = np.zeros_like(full_masks[0])
    for mask in reversed(full_masks):
        visible.append(mask & ~covered)
        covered = covered | mask
    return visible[::-1]


class StickFiguresDataset(Dataset):
    """Generated stick figures (one class, "figure") with 7 keypoints each; see the module docstring."""

    keypoint_names = KEYPOINT_NAMES
    skeleton = SKELETON
    flip_map = FLIP_MAP
    oks_sigmas = OKS_SIGMAS

    def load_stick_figures(self, count: int, height: int, width: int, seed: int = 0, max_figures: int = 2) -> None:
        """Adds `count` generated images (source "stick_figures", ids 1..count).

        Ids start at 1 because COCO tools treat id 0 specially; images are a function of
        (seed, index) for index 0..count-1.
        """
        self.add_class("stick_figures", 1, CLASS_NAME)
        for index in range(count):
            spec = random_image_spec(seed, index, height, width, max_figures)
            self.add_image("stick_figures", image_id=index + 1, path=None, width=width, height=height,
                           seed=seed, index=index, **spec)

    def load_image(self, image_id: int) -> np.ndarray:
        """Renders the image: [H, W, 3] uint8, figures painted bottom first."""
        info = self.image_info[image_id]
        if info["source"] != "stick_figures":
            return super().load_image(image_id)
        image = np.empty((info["height"], info["width"], 3), dtype=np.uint8)
        image[...] = np.array(info["bg_color"], dtype=np.uint8)
        for figure in info["figures"]:
            image[_figure_mask(figure, info["height"], info["width"])] = np.array(figure["color"], np.uint8)
        return image

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Visible-part masks [H, W, N] bool and class ids [N] int32 (all "figure")."""
        info = self.image_info[image_id]
        if info["source"] != "stick_figures":
            return super().load_mask(image_id)
        height, width = info["height"], info["width"]
        full = [_figure_mask(f, height, width) for f in info["figures"]]
        masks = np.stack(_visible_masks(full), axis=-1)
        class_id = self.class_from_source_map["stick_figures.1"] if self._prepared else 1
        return masks, np.full(masks.shape[-1], class_id, dtype=np.int32)

    def load_keypoints(self, image_id: int) -> np.ndarray:
        """[N, 7, 3] float32 (x, y, visibility): 2 visible, 1 under a figure drawn later."""
        info = self.image_info[image_id]
        if info["source"] != "stick_figures":
            return super().load_keypoints(image_id)
        height, width = info["height"], info["width"]
        full = [_figure_mask(f, height, width) for f in info["figures"]]
        keypoints = np.zeros((len(full), len(KEYPOINT_NAMES), 3), np.float32)
        covered = np.zeros((height, width), bool)
        for n in range(len(full) - 1, -1, -1):  # top figure first: what lies above figure n is `covered`
            joints = np.asarray(info["figures"][n]["joints"])
            rows = np.clip(joints[:, 1].astype(int), 0, height - 1)
            cols = np.clip(joints[:, 0].astype(int), 0, width - 1)
            keypoints[n, :, :2] = joints
            keypoints[n, :, 2] = np.where(covered[rows, cols], 1.0, 2.0)
            covered |= full[n]
        return keypoints

    def image_reference(self, image_id: int) -> str:
        """E.g. ``"stick_figures seed=0 index=3: 2 figures"``."""
        info = self.image_info[image_id]
        if info["source"] != "stick_figures":
            return super().image_reference(image_id)
        return f"stick_figures seed={info['seed']} index={info['index']}: {len(info['figures'])} figures"
