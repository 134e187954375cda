"""Synthetic "shapes" data: squares, circles and triangles on a plain background.

Needs no files, so it is the default data for demos, notebooks and tests:

    config = ShapesConfig()
    train = ShapesDataset()
    train.load_shapes(500, config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1], seed=0)
    train.prepare()

Every image is a pure function of ``(seed, index, height, width, max_shapes)``: its random
generator is seeded from ``(seed, index)`` alone, so images can be generated in any order, in any
process, and two datasets with different seeds do not share images. `export_coco` writes any
prepared `Dataset` as a COCO-style folder (PNG images + annotations JSON), e.g. to test COCO code
on data with known answers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import scipy.ndimage
import skimage.draw
import skimage.io
import skimage.measure

from mrcnn.config import Config
from mrcnn.data.dataset import Dataset
from mrcnn.evaluation.coco_eval import encode_masks, rle_to_json, uncompressed_rle_counts

SHAPE_NAMES = ("square", "circle", "triangle")  # class ids 1, 2, 3 (matterport's order)
SEGMENTATION_FORMATS = ("rle", "polygon")


class ShapesConfig(Config):
    """A configuration that trains on `ShapesDataset` in minutes on a CPU.

    Small images (128x128), anchors scaled to the small shapes, few RoIs per image.
    """

    NAME = "shapes"
    GPU_COUNT = 1
    IMAGES_PER_GPU = 4
    NUM_CLASSES = 1 + len(SHAPE_NAMES)  # background + square, circle, triangle
    BACKBONE = "resnet50"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    # Shapes are 8..64 px across: anchors from 8 (P2) to 128 (P6) px cover them.
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    PRE_NMS_LIMIT = 2000
    POST_NMS_ROIS_TRAINING = 500
    POST_NMS_ROIS_INFERENCE = 250
    # Few objects per image, so few RoIs are enough and keep the heads cheap.
    TRAIN_ROIS_PER_IMAGE = 32
    MAX_GT_INSTANCES = 8
    DETECTION_MAX_INSTANCES = 16
    MINI_MASK_SHAPE = (28, 28)
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 5


def shape_size_range(height: int, width: int) -> tuple[int, int]:
    """Smallest and largest shape "size" (half-extent in px) drawn on a height x width image."""
    dim = min(height, width)
    low = max(4, dim // 16)
    high = max(low + 1, dim // 4)
    return low, high


def random_image_spec(
    seed: int,
    index: int,
    height: int,
    width: int,
    max_shapes: int = 4,
    min_visible_area: int = 20,
    min_visible_fraction: float = 0.25,
) -> dict[str, Any]:
    """Draws the random description of one image; deterministic in ``(seed, index)``.

    Shapes are placed at random (overlaps allowed); later shapes occlude earlier ones. A shape
    whose visible part would be smaller than `min_visible_area` pixels or `min_visible_fraction`
    of its own area is removed from the image altogether (not drawn), so the image never shows
    an unannotated sliver. Removing a shape only uncovers the ones below it, so a single pass
    is enough. The topmost shape is fully visible and always kept: every image has >= 1 instance.

    Returns:
        dict with ``bg_color`` (3 ints) and ``shapes``: list of ``(name, color, (cy, cx, size))``
        in drawing order (bottom first).

    Raises:
        ValueError: if the image is too small to hold a shape.
    """
    if height < 16 or width < 16:
        raise ValueError(f"shapes images must be at least 16x16, got {height}x{width}")
    if max_shapes < 1:
        raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
    rng = np.random.default_rng([seed, index])
    bg_color = rng.integers(0, 256, size=3)
    low, high = shape_size_range(height, width)
    shapes = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        name = SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
        # Rejection sampling keeps every shape clearly distinct from the background colour;
        # otherwise some instances would be invisible and impossible to learn.
        while True:
            color = rng.integers(0, 256, size=3)
            if np.abs(color - bg_color).sum() >= 120:
                break
        size = int(rng.integers(low, high + 1))
        # Whole shape inside the image: a triangle reaches 2/sqrt(3) * size sideways.
        margin = int(math.ceil(size * 2 / math.sqrt(3))) + 1
        cy = int(rng.integers(min(margin, height // 2), max(height - margin, height // 2 + 1)))
        cx = int(rng.integers(min(margin, width // 2), max(width - margin, width // 2 + 1)))
        shapes.append((name, tuple(int(c) for c in color), (cy, cx, size)))

    full = [_shape_mask(shape, height, width) for shape in shapes]
    visible = _visible_masks(full)
    keep = [
        i
        for i in range(len(shapes))
        if i == len(shapes) - 1
        or (visible[i].sum() >= min_visible_area and visible[i].sum() >= min_visible_fraction * full[i].sum())
    ]
    return {"bg_color": tuple(int(c) for c in bg_color), "shapes": [shapes[i] for i in keep]}


def _shape_pixels(shape: tuple, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    name, _, (cy, cx, size) = shape
    if name == "square":
        rows = [cy - size, cy - size, cy + size, cy + size]
        cols = [cx - size, cx + size, cx + size, cx - size]
        return skimage.draw.polygon(rows, cols, shape=(height, width))
    if name == "circle":
        return skimage.draw.disk((cy, cx), size, shape=(height, width))
    if name == "triangle":
        # Equilateral, apex up, height 2 * size centred on (cy, cx).
        half_base = size * 2 / math.sqrt(3)
        rows = [cy - size, cy + size, cy + size]
        cols = [cx, cx - half_base, cx + half_base]
        return skimage.draw.polygon(rows, cols, shape=(height, width))
    raise ValueError(f"unknown shape {name!r}; expected one of {SHAPE_NAMES}")


def _shape_mask(shape: tuple, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    rr, cc = _shape_pixels(shape, height, width)
    mask[rr, cc] = True
    return mask


def _visible_masks(full_masks: list[np.ndarray]) -> list[np.ndarray]:
    """Subtracts from each mask everything drawn after it (on top)."""
    visible = []
    covered = np.zeros_like(full_masks[0]) if full_masks else None
    for mask in reversed(full_masks):
        visible.append(mask & ~covered)
        covered = covered | mask
    return visible[::-1]


class ShapesDataset(Dataset):
    """Generated squares (class 1), circles (2) and triangles (3); see `random_image_spec`."""

    def load_shapes(
        self,
        count: int,
        height: int,
        width: int,
        seed: int = 0,
        max_shapes: int = 4,
        min_visible_area: int = 20,
    ) -> None:
        """Adds `count` generated images (source "shapes", ids 0..count-1).

        Args:
            count: number of images.
            height, width: image size in pixels (>= 16).
            seed: images are a function of (seed, index); use different seeds for train and val.
            max_shapes: at most this many shapes per image (at least one).
            min_visible_area: occluded shapes with fewer visible pixels are left out.
        """
        for i, name in enumerate(SHAPE_NAMES, start=1):
            self.add_class("shapes", i, name)
        for index in range(count):
            spec = random_image_spec(seed, index, height, width, max_shapes, min_visible_area)
            self.add_image(
                "shapes", image_id=index, path=None, width=width, height=height, seed=seed, **spec
            )

    def load_image(self, image_id: int) -> np.ndarray:
        """Renders the image: [H, W, 3] uint8, shapes painted bottom first."""
        info = self.image_info[image_id]
        if info["source"] != "shapes":
            return super().load_image(image_id)
        image = np.empty((info["height"], info["width"], 3), dtype=np.uint8)
        image[...] = np.array(info["bg_color"], dtype=np.uint8)
        for shape in info["shapes"]:
            rr, cc = _shape_pixels(shape, info["height"], info["width"])
            image[rr, cc] = np.array(shape[1], dtype=np.uint8)
        return image

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Visible-part masks, [H, W, N] bool, and class ids [N] int32 (1 square, 2 circle, 3 triangle)."""
        info = self.image_info[image_id]
        if info["source"] != "shapes":
            return super().load_mask(image_id)
        height, width = info["height"], info["width"]
        full = [_shape_mask(shape, height, width) for shape in info["shapes"]]
        masks = np.stack(_visible_masks(full), axis=-1) if full else np.zeros((height, width, 0), bool)
        source_ids = [SHAPE_NAMES.index(shape[0]) + 1 for shape in info["shapes"]]
        if self._prepared:
            # Internal ids equal the source ids unless other classes were added first.
            source_ids = [self.class_from_source_map[f"shapes.{i}"] for i in source_ids]
        class_ids = np.array(source_ids, dtype=np.int32)
        return masks, class_ids

    def image_reference(self, image_id: int) -> str:
        """E.g. ``"shapes seed=0 index=3: square, circle"``."""
        info = self.image_info[image_id]
        if info["source"] != "shapes":
            return super().image_reference(image_id)
        names = ", ".join(shape[0] for shape in info["shapes"])
        return f"shapes seed={info['seed']} index={info['id']}: {names}"

    def export_coco(self, path: str | Path, **kwargs: Any) -> Path:
        """`export_coco(self, path, **kwargs)`; see the module function."""
        return export_coco(self, path, **kwargs)


# ----------------------------------------------------------------------------------------------
def export_coco(
    dataset: Dataset,
    path: str | Path,
    crowd_fraction: float = 0.0,
    segmentation: str = "rle",
    seed: int = 0,
    image_ids: list[int] | np.ndarray | None = None,
    verbose: int = 0,
) -> Path:
    """Writes a prepared dataset as a COCO-style folder.

    Layout: ``<path>/images/<image id, 6 digits>.png`` and ``<path>/annotations.json`` with
    ``images``, ``categories``, ``annotations`` (plus empty ``info``/``licenses``).

    Ids: category id = the dataset's internal class id (1..num_classes-1; background is not
    written); image id = internal image id + 1 and annotation ids count from 1, because
    pycocotools' COCOeval treats id 0 as "unmatched".

    Annotations: ``bbox`` [x, y, w, h] of the mask's pixels, ``area`` = pixel count, and
    ``segmentation`` as compressed RLE (``segmentation="rle"``, exact) or polygons
    (``"polygon"``, contours through pixel edges; diagonal corners are cut, so decoding gives a
    slightly different mask; COCO polygons cannot express holes, so a mask with a hole, e.g. a
    shape with a smaller one on top of its middle, or without a usable contour is written as
    RLE). Crowd
    instances (``iscrowd=1``) always use uncompressed RLE (counts as a list), like COCO's own
    files. An instance is crowd if `load_mask` gave it a negative class id, or at random with
    probability `crowd_fraction` (deterministic in `seed`).

    Args:
        dataset: a prepared `Dataset`.
        path: output folder (created).
        crowd_fraction: probability in [0, 1] of marking each instance iscrowd=1.
        segmentation: "rle" or "polygon" for non-crowd instances.
        seed: seed for the crowd choice.
        image_ids: internal image ids to export (default: all).
        verbose: 1 shows a progress bar.

    Returns:
        Path of the annotations JSON file.

    Raises:
        ValueError: for an unknown `segmentation`, or `crowd_fraction` outside [0, 1].
    """
    if segmentation not in SEGMENTATION_FORMATS:
        raise ValueError(f"segmentation must be one of {SEGMENTATION_FORMATS}, got {segmentation!r}")
    if not 0.0 <= crowd_fraction <= 1.0:
        raise ValueError(f"crowd_fraction must be in [0, 1], got {crowd_fraction!r}")
    folder = Path(path)
    image_folder = folder / "images"
    image_folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = dataset.image_ids if image_ids is None else np.asarray(image_ids)

    categories = [
        {"id": int(class_id), "name": dataset.class_names[class_id], "supercategory": dataset.class_info[class_id]["source"]}
        for class_id in dataset.class_ids[1:]
    ]
    images, annotations = [], []
    iterator = ids
    if verbose:
        from tqdm import tqdm

        iterator = tqdm(ids, desc="export_coco")
    for internal_id in iterator:
        internal_id = int(internal_id)
        image = dataset.load_image(internal_id)
        masks, class_ids = dataset.load_mask(internal_id)
        height, width = image.shape[:2]
        if masks.shape[:2] != (height, width) or masks.shape[-1] != len(class_ids):
            raise ValueError(
                f"image {internal_id} ({dataset.image_reference(internal_id)}): masks {masks.shape} do not fit "
                f"image {image.shape} and {len(class_ids)} class ids"
            )
        coco_image_id = internal_id + 1
        file_name = f"{coco_image_id:06d}.png"
        skimage.io.imsave(str(image_folder / file_name), image, check_contrast=False)
        images.append({"id": coco_image_id, "file_name": file_name, "height": int(height), "width": int(width)})
        for k, rle in enumerate(encode_masks(masks)):
            crowd = bool(class_ids[k] < 0) or bool(rng.random() < crowd_fraction)
            if crowd:
                segm: Any = {"counts": uncompressed_rle_counts(masks[..., k]), "size": [int(height), int(width)]}
            elif segmentation == "polygon" and not _has_holes(masks[..., k]):
                segm = mask_to_polygons(masks[..., k]) or rle_to_json(rle)
            else:
                segm = rle_to_json(rle)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": coco_image_id,
                "category_id": int(abs(class_ids[k])),
                "segmentation": segm,
                "area": float(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": int(crowd),
            })
    coco = {"info": {}, "licenses": [], "images": images, "categories": categories, "annotations": annotations}
    json_path = folder / "annotations.json"
    json_path.write_text(json.dumps(coco))
    return json_path


def _has_holes(mask: np.ndarray) -> bool:
    return bool((scipy.ndimage.binary_fill_holes(mask) != mask).any())


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons ([x1, y1, x2, y2, ...] per contour) of a [H, W] bool mask.

    Contours are traced at level 0.5 around a zero-padded mask and shifted by +0.5 so that they
    run along pixel edges in COCO's continuous coordinates (pixel (x, y) covers [x, x+1)).
    Contours with fewer than 3 points are dropped.
    """
    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    polygons = []
    for contour in skimage.measure.find_contours(padded, 0.5):
        if len(contour) < 3:
            continue
        # -1 undoes the padding, +0.5 moves from pixel-centre indices to pixel-edge coordinates.
        yx = contour - 1 + 0.5
        polygons.append([float(v) for v in np.round(yx[:, ::-1], 2).ravel()])
    return polygons
