"""Keypoint geometry in numpy: validation, flip maps, and the transforms images go through.

Convention (docs/interfaces.md): keypoints of one image are ``[N, K, 3]`` float32
``(x, y, visibility)`` with N instances and K keypoint types, in **continuous pixel coordinates**
of the image: pixel ``(row r, column c)`` covers ``[c, c + 1) x [r, r + 1)``, so its centre is
``(c + 0.5, r + 0.5)`` (the frame the exclusive-end pixel boxes live in). Visibility is COCO's:
0 not labelled, 1 labelled but occluded, 2 labelled and visible; training uses every keypoint
with visibility > 0 (Detectron). COCO files store integer pixel indices: `CocoDataset` adds 0.5 on
loading and `build_coco_results` subtracts it on export (as detectron2).

Mirroring an image turns a left wrist into something that looks like a right wrist: a *flip map*
(``flip_map[i]`` = index of keypoint i's mirror partner, an involution) renames them. Rotations
keep handedness and only move points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Prefix pairs that `flip_map_from_names` recognises as mirror partners.
_SIDE_PREFIXES = (("left_", "right_"), ("l_", "r_"))


def check_keypoints(keypoints: np.ndarray, num_instances: int, num_keypoints: int, where: str = "keypoints"
                    ) -> np.ndarray:
    """Validates one image's keypoints and returns them as float32.

    Args:
        keypoints: [N, K, 3] (x, y, visibility); N may be 0.
        num_instances: expected N (the number of masks of the image).
        num_keypoints: expected K (Config.NUM_KEYPOINTS).
        where: what to name in the error (e.g. the image reference).

    Returns:
        [N, K, 3] float32 copy.

    Raises:
        ValueError: naming `where` and the shapes when they do not fit (and NUM_KEYPOINTS when
            only K differs), when a visibility is not 0, 1 or 2, or a labelled keypoint's x, y is
            not finite.
    """
    array = np.asarray(keypoints, dtype=np.float32)
    if array.size == 0 and num_instances == 0:
        return np.zeros((0, num_keypoints, 3), np.float32)
    if array.shape != (num_instances, num_keypoints, 3):
        raise ValueError(f"{where}: keypoints must be [N={num_instances}, K={num_keypoints}, 3] (x, y, visibility), "
                         f"got shape {array.shape}" + (f"; Config.NUM_KEYPOINTS is {num_keypoints}: set it to "
                                                       f"{array.shape[1]} for this data" if array.ndim == 3
                                                       and array.shape[0] == num_instances and array.shape[2] == 3
                                                       and array.shape[1] != num_keypoints else ""))
    if not np.isin(array[..., 2], (0, 1, 2)).all():
        raise ValueError(f"{where}: keypoint visibility must be 0, 1 or 2, got {np.unique(array[..., 2]).tolist()}")
    labelled = array[..., 2] > 0
    if not np.isfinite(array[..., :2][labelled]).all():
        # A labelled keypoint without a position would silently get no weight in the targets.
        instance = int(np.argwhere(labelled & ~np.isfinite(array[..., :2]).all(axis=-1))[0][0])
        raise ValueError(f"{where}: instance {instance} has a labelled keypoint (visibility > 0) with a NaN or "
                         "infinite x, y; give it visibility 0 if its position is unknown")
    return array.copy()


def flip_map_from_names(names: Sequence[str]) -> tuple[int, ...]:
    """Mirror partners from keypoint names: ``left_x`` <-> ``right_x`` (also ``l_``/``r_``).

    Names without a side keep their index (e.g. ``nose``).

    Raises:
        ValueError: when a sided name has no partner in `names`.
    """
    names = [str(n) for n in names]
    index = {name: i for i, name in enumerate(names)}
    flip = list(range(len(names)))
    for i, name in enumerate(names):
        for left, right in _SIDE_PREFIXES:
            for this, other in ((left, right), (right, left)):
                if name.startswith(this):
                    partner = other + name[len(this):]
                    if partner not in index:
                        raise ValueError(f"keypoint {name!r} has no mirror partner {partner!r} in {names}")
                    flip[i] = index[partner]
    return tuple(flip)


def check_flip_map(flip_map: Sequence[int], num_keypoints: int, name: str = "KEYPOINT_FLIP_MAP") -> tuple[int, ...]:
    """Validates a flip map: K ints in [0, K) with ``flip[flip[i]] == i``.

    Raises:
        ValueError: naming `name` when it is not such an involution.
    """
    flip = tuple(int(v) for v in flip_map)
    if len(flip) != num_keypoints or any(not 0 <= v < num_keypoints for v in flip):
        raise ValueError(f"{name} must list {num_keypoints} keypoint indices in [0, {num_keypoints}), got {list(flip)}")
    if any(flip[v] != i for i, v in enumerate(flip)):
        raise ValueError(f"{name} must pair keypoints symmetrically (flip[flip[i]] == i), got {list(flip)}")
    return flip


def resolve_flip_map(num_keypoints: int, flip_map: Sequence[int] | None = None,
                     names: Sequence[str] | None = None) -> tuple[int, ...]:
    """The flip map to use: `flip_map` if given, else derived from `names`, else the identity."""
    if flip_map is not None:
        return check_flip_map(flip_map, num_keypoints)
    if names is not None:
        return flip_map_from_names(names)
    return tuple(range(num_keypoints))


@dataclass(frozen=True)
class InstanceKeypoints:
    """One image's keypoints travelling through augmentation with the image and its masks.

    Attributes:
        points: [N, K, 3] float32 (x, y, visibility), continuous pixel coordinates.
        flip_map: K ints, the mirror partner of each keypoint type.
    """

    points: np.ndarray
    flip_map: tuple[int, ...]

    def _with(self, points: np.ndarray) -> InstanceKeypoints:
        return InstanceKeypoints(points.astype(np.float32), self.flip_map)

    def hflip(self, width: int) -> InstanceKeypoints:
        """Left-right mirror of an image `width` px wide: x -> width - x, partners swapped."""
        points = self.points.copy()
        points[..., 0] = width - points[..., 0]
        return self._with(points[:, list(self.flip_map)])

    def vflip(self, height: int) -> InstanceKeypoints:
        """Top-bottom mirror: y -> height - y; a mirror image, so partners are swapped too."""
        points = self.points.copy()
        points[..., 1] = height - points[..., 1]
        return self._with(points[:, list(self.flip_map)])

    def rot90(self, k: int, shape: Sequence[int]) -> InstanceKeypoints:
        """As ``np.rot90(image, k, axes=(0, 1))`` (counter-clockwise) on an image of `shape` (H, W, ...).

        One quarter turn maps pixel (r, c) to (W - 1 - c, r), i.e. the point (x, y) to (y, W - x).
        """
        points = self.points.copy()
        height, width = int(shape[0]), int(shape[1])
        for _ in range(int(k) % 4):
            x, y = points[..., 0].copy(), points[..., 1].copy()
            points[..., 0], points[..., 1] = y, width - x
            height, width = width, height
        return self._with(points)

    def rescale(self, scale_y: float, scale_x: float) -> InstanceKeypoints:
        """Image resized by (scale_y, scale_x): continuous coordinates scale exactly."""
        points = self.points.copy()
        points[..., 0] *= scale_x
        points[..., 1] *= scale_y
        return self._with(points)


def resize_keypoints(keypoints: np.ndarray, original_shape: Sequence[int], scale: float,
                     padding: Sequence[Sequence[int]], crop: Sequence[int] | None,
                     output_shape: Sequence[int]) -> np.ndarray:
    """Moves keypoints through `utils.resize_image` (scale, then pad or crop).

    Args:
        keypoints: [N, K, 3] in the frame of the image given to resize_image (`original_shape`).
        original_shape: (H, W, ...) before the resize.
        scale, padding, crop: as returned by `utils.resize_image`.
        output_shape: (h, w, ...) of the resized image.

    Returns:
        [N, K, 3] float32 in the resized image; keypoints that land outside it (cropped away) get
        visibility 0. The per-axis scale is that of the rounded new size (``round(H * scale) / H``),
        the one the image pixels actually went through.
    """
    points = np.array(keypoints, dtype=np.float32, copy=True)
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"keypoints must be [N, K, 3] (x, y, visibility), got shape {points.shape}")
    height, width = int(original_shape[0]), int(original_shape[1])
    if scale != 1.0:
        scale_y = round(height * scale) / height
        scale_x = round(width * scale) / width
    else:
        scale_y = scale_x = 1.0
    offset_y, offset_x = float(padding[0][0]), float(padding[1][0])
    if crop is not None:
        offset_y -= crop[0]
        offset_x -= crop[1]
    points[..., 0] = points[..., 0] * scale_x + offset_x
    points[..., 1] = points[..., 1] * scale_y + offset_y
    outside = ((points[..., 0] < 0) | (points[..., 0] >= output_shape[1])
               | (points[..., 1] < 0) | (points[..., 1] >= output_shape[0]))
    points[..., 2] = np.where(outside, 0.0, points[..., 2])
    return points
