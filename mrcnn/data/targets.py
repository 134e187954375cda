"""Training targets in numpy: one image's ground truth (`load_image_gt`) and RPN targets.

Coordinates: pixel boxes ``(y1, x1, y2, x2)`` with exclusive ``y2``/``x2`` in the molded (resized and
padded) image; deltas ``(dy, dx, log(dh), log(dw))`` with ``h = y2 - y1`` (docs/interfaces.md).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
import scipy.ndimage as ndi

from mrcnn import utils
from mrcnn.data import keypoints as kp
from mrcnn.data.augment import Augmenter, Compose, HorizontalFlip, apply_with_keypoints
from mrcnn.data.dataset import check_label_image, conform_channels

# matterport's RPN labelling thresholds (Faster R-CNN paper, section 3.1.2).
RPN_POSITIVE_IOU = 0.7
RPN_NEGATIVE_IOU = 0.3
# Anchors whose IoU with a crowd box reaches this are never negatives (matterport: IoU < 0.001 is "no crowd").
RPN_CROWD_IOU = 0.001
# Anchors per block and (block, box) pairs per chunk in _match_anchors: small blocks prune well
# (a block of one pyramid row covers a small image region); chunks bound the memory.
_ANCHOR_BLOCK = 64
_MAX_PAIRS = 8192


def load_image_gt(
    dataset: Any,
    config: Any,
    image_id: int,
    augmentation: Augmenter | None = None,
    rng: np.random.Generator | None = None,
    with_keypoints: bool = False,
    use_mini_mask: bool | None = None,
    augment: bool = False,
) -> tuple[np.ndarray, ...]:
    """Loads one image with its ground truth, resized (and augmented) for training.

    Steps: load image and masks; augment them together (before resizing, so shape-changing
    augmenters work in every resize mode); resize + pad/crop per IMAGE_RESIZE_MODE, IMAGE_MIN_DIM,
    IMAGE_MAX_DIM, IMAGE_MIN_SCALE; drop instances whose mask vanished (cropped away or too thin to
    survive the resize); boxes from the masks; mini masks when USE_MINI_MASK.

    Args:
        dataset: a prepared `mrcnn.data.dataset.Dataset`.
        config: a `Config`.
        image_id: internal image id.
        augmentation: optional augmenter ``(image, masks, rng) -> (image, masks)`` (see augment.py).
        rng: random generator for augmentation and the "crop" resize mode; a fresh unseeded one when None.
        with_keypoints: also load `dataset.load_keypoints` and return them, moved through the same
            augmentation (mirrors swap left/right partners, see config.KEYPOINT_FLIP_MAP) and resize.
        use_mini_mask: overrides config.USE_MINI_MASK (None: the config's; matterport's default
            was False). matterport's keyword: evaluation code compares full-size masks,
            ``load_image_gt(..., use_mini_mask=False)``.
        augment: matterport's deprecated switch, kept so its calls run: True adds a random
            left-right flip (``HorizontalFlip(0.5)``, before `augmentation`), with a FutureWarning.

    Returns:
        image: [H, W, IMAGE_CHANNEL_COUNT] in `dataset.load_image`'s dtype (uint8 from the base
            class; a subclass's uint16/float images pass through with a warning), the molded size
            (config.IMAGE_SHAPE except in "none"/"pad64" modes).
        image_meta: [IMAGE_META_SIZE] float32 (`utils.compose_image_meta`); its original_image_shape
            is the shape after augmentation and before resizing (the frame window/scale refer to).
        class_ids: [N] int32 internal class ids (negative for crowd instances).
        bbox: [N, (y1, x1, y2, x2)] int32 pixel boxes in the molded image.
        mask: [mh, mw, N] bool mini masks (MINI_MASK_SHAPE) with mini masks, else [H, W, N] bool.
        keypoints (only with `with_keypoints`): [N, NUM_KEYPOINTS, 3] float32 (x, y, visibility) in
            continuous pixel coordinates of the molded image; keypoints cropped away get visibility 0.

    Raises:
        ValueError: when the dataset returns inconsistent shapes (naming the image).
    """
    if rng is None:
        rng = np.random.default_rng()
    if augment:
        warnings.warn("load_image_gt(augment=True) is matterport's deprecated switch for a random left-right flip; "
                      "pass augmentation=mrcnn.data.augment.HorizontalFlip(0.5)", FutureWarning,
                      stacklevel=utils.user_stacklevel())
        flip = HorizontalFlip(0.5)
        augmentation = flip if augmentation is None else Compose([flip, augmentation])
    mini_mask = bool(config.USE_MINI_MASK if use_mini_mask is None else use_mini_mask)
    if getattr(dataset, "load_label_mask", None) is not None and not with_keypoints:
        # Datasets of non-overlapping instances (nuclei) hand over one label image: much faster.
        return load_image_gt_from_labels(dataset, config, image_id, augmentation, rng, use_mini_mask=mini_mask)
    where = f"image {image_id} ({dataset.image_reference(image_id)})"
    image = _checked_image(dataset.load_image(image_id), config, where)
    mask, class_ids = dataset.load_mask(image_id)
    mask = np.asarray(mask)
    class_ids = _checked_class_ids(class_ids, config, where, "load_mask")
    if mask.ndim != 3 or image.shape[:2] != mask.shape[:2] or mask.shape[-1] != class_ids.shape[0]:
        raise ValueError(
            f"{where}: load_image gave {image.shape}, load_mask gave masks {mask.shape} and class_ids "
            f"{class_ids.shape}; expected [H, W, {config.IMAGE_CHANNEL_COUNT}], [H, W, N] and [N]"
        )
    if mask.dtype != np.bool_:
        mask = mask > 0
    keypoints = None
    if with_keypoints:
        keypoints = kp.InstanceKeypoints(
            kp.check_keypoints(dataset.load_keypoints(image_id), class_ids.shape[0], int(config.NUM_KEYPOINTS),
                               where=f"image {image_id} ({dataset.image_reference(image_id)})"),
            _flip_map(dataset, config, augmentation is not None))

    if augmentation is not None:
        if keypoints is None:
            image, mask = augmentation(image, mask, rng)
        else:
            image, mask, keypoints = apply_with_keypoints(augmentation, image, mask, rng, keypoints)
        if image.ndim != 3 or mask.ndim != 3 or image.shape[:2] != mask.shape[:2] or mask.shape[-1] != class_ids.shape[0]:
            raise ValueError(
                f"augmentation {augmentation!r} returned image {image.shape} and masks {mask.shape} for image "
                f"{image_id}; expected [H, W, C] and [H, W, {class_ids.shape[0]}]"
            )
    original_shape = image.shape

    image, window, scale, padding, crop = utils.resize_image(
        image,
        min_dim=config.IMAGE_MIN_DIM,
        max_dim=config.IMAGE_MAX_DIM,
        min_scale=config.IMAGE_MIN_SCALE,
        mode=config.IMAGE_RESIZE_MODE,
        rng=rng,
    )
    if mini_mask:
        # Same result as resize_mask + extract_bboxes + minimize_mask, without full-size masks.
        bbox, mask = utils.resize_and_minimize_mask(mask, scale, padding, crop, config.MINI_MASK_SHAPE)
        keep = bbox[:, 2] > bbox[:, 0]
    else:
        mask = utils.resize_mask(mask, scale, padding, crop)
        keep = mask.any(axis=(0, 1))
        bbox = None
    points = None
    if keypoints is not None:
        points = kp.resize_keypoints(keypoints.points, original_shape, scale, padding, crop, image.shape)
    if not keep.all():
        mask = mask[:, :, keep]
        class_ids = class_ids[keep]
        bbox = None if bbox is None else bbox[keep]
        points = None if points is None else points[keep]
    if bbox is None:
        bbox = utils.extract_bboxes(mask)

    active_class_ids = np.zeros([dataset.num_classes], dtype=np.int32)
    source = dataset.image_info[image_id]["source"]
    active_class_ids[dataset.source_class_ids[source]] = 1

    image_meta = utils.compose_image_meta(image_id, original_shape, image.shape, window, scale, active_class_ids)
    if with_keypoints:
        return np.ascontiguousarray(image), image_meta, class_ids, bbox, mask, points
    return np.ascontiguousarray(image), image_meta, class_ids, bbox, mask


def _flip_map(dataset: Any, config: Any, augmenting: bool) -> tuple[int, ...]:
    """The keypoints' mirror partners: KEYPOINT_FLIP_MAP, else from KEYPOINT_NAMES, else (when
    augmenting) from the dataset's `keypoint_names` (a COCO file's), else the identity.

    Only augmentation mirrors, so without it the dataset's names are not read (names whose sides
    do not pair, a side view's "left_front_paw" alone, must not stop plain training). Augmenting
    with an identity map that the config did not ask for warns: a mirror would keep a left label
    on the right side.
    """
    count = int(config.NUM_KEYPOINTS)
    if config.KEYPOINT_FLIP_MAP is not None or config.KEYPOINT_NAMES is not None:
        flip = kp.resolve_flip_map(count, config.KEYPOINT_FLIP_MAP, config.KEYPOINT_NAMES)
    else:
        flip = tuple(range(count))
        dataset_names = getattr(dataset, "keypoint_names", None)
        if augmenting and dataset_names is not None and len(dataset_names) == count:
            try:
                flip = kp.flip_map_from_names(dataset_names)
            except ValueError:
                pass  # unpaired sides: the identity, and the warning below says what to set
    if augmenting and count > 1 and config.KEYPOINT_FLIP_MAP is None and flip == tuple(range(count)):
        warnings.warn("keypoint flip map is the identity (no KEYPOINT_FLIP_MAP, and no left_/right_ pairs in "
                      "KEYPOINT_NAMES or dataset.keypoint_names): a mirroring augmenter keeps each keypoint's "
                      "label (left on the right side); set KEYPOINT_FLIP_MAP (the identity, if meant)",
                      stacklevel=utils.user_stacklevel())
    return flip


def load_image_gt_from_labels(
    dataset: Any,
    config: Any,
    image_id: int,
    augmentation: Augmenter | None = None,
    rng: np.random.Generator | None = None,
    use_mini_mask: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`load_image_gt` for datasets whose instances never overlap and come as one label image.

    `load_image_gt` calls this when the dataset has ``load_label_mask(image_id) -> (labels
    [H, W] int, class_ids [N] int32)`` (0 background, instance k has value k and class
    ``class_ids[k - 1]``). Results equal the ``load_mask`` path's, but the [H, W, N] mask stack is
    never built: the label image is augmented (as a one-channel mask, so augmenters must resample
    masks by nearest neighbour, as all of mrcnn.data.augment's do), resized by nearest neighbour,
    and each instance's box and mini mask are read from it. DSB2018 at 512 px: 5 ms instead of
    15 ms per image for this step (bench/data_pipeline.py).

    Args and returns: as `load_image_gt` (without keypoints).

    Raises:
        ValueError: naming the image, as `load_image_gt`, and for label values outside 0..N
            (`mrcnn.data.dataset.check_label_image`).
    """
    if rng is None:
        rng = np.random.default_rng()
    where = f"image {image_id} ({dataset.image_reference(image_id)})"
    image = _checked_image(dataset.load_image(image_id), config, where)
    labels, class_ids = dataset.load_label_mask(image_id)
    labels = np.asarray(labels)
    class_ids = _checked_class_ids(class_ids, config, where, "load_label_mask")
    if labels.shape != image.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: load_image gave {image.shape}, load_label_mask gave labels {labels.shape} {labels.dtype}; "
            f"expected [H, W, {config.IMAGE_CHANNEL_COUNT}] and [H, W] integer"
        )
    check_label_image(labels, len(class_ids), where)
    if augmentation is not None:
        image, stacked = augmentation(image, labels[:, :, None], rng)
        if image.ndim != 3 or stacked.ndim != 3 or stacked.shape[-1] != 1 or image.shape[:2] != stacked.shape[:2]:
            raise ValueError(
                f"augmentation {augmentation!r} returned image {image.shape} and labels {stacked.shape} for image "
                f"{image_id}; expected [H, W, C] and [H, W, 1]"
            )
        labels = stacked[:, :, 0]
    original_shape = image.shape
    image, window, scale, padding, crop = utils.resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM, min_scale=config.IMAGE_MIN_SCALE,
        mode=config.IMAGE_RESIZE_MODE, rng=rng,
    )
    mini_mask = config.USE_MINI_MASK if use_mini_mask is None else use_mini_mask
    mini_shape = tuple(config.MINI_MASK_SHAPE) if mini_mask else None
    present, bbox, mask = labels_to_targets(labels, class_ids.shape[0], scale, padding, crop, mini_shape)
    class_ids = class_ids[present]

    active_class_ids = np.zeros([dataset.num_classes], dtype=np.int32)
    active_class_ids[dataset.source_class_ids[dataset.image_info[image_id]["source"]]] = 1
    image_meta = utils.compose_image_meta(image_id, original_shape, image.shape, window, scale, active_class_ids)
    return np.ascontiguousarray(image), image_meta, class_ids, bbox, mask


def _checked_image(image: Any, config: Any, where: str) -> np.ndarray:
    """`load_image`'s output with IMAGE_CHANNEL_COUNT channels (grayscale and RGBA conformed as
    `detect` does, `conform_channels`); ValueError for NaN/inf pixels (the loss would turn NaN with
    no image named); warns once about floats on the [0, 1] scale."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or min(image.shape[:2], default=0) < 1:
        raise ValueError(f"{where}: load_image gave an image of shape {image.shape}; expected [H, W] or "
                         "[H, W, C] with H, W >= 1")
    image = conform_channels(image, int(config.IMAGE_CHANNEL_COUNT), where)
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError(f"{where}: load_image gave NaN or infinite pixel values")
    # The same text for every image of a dtype: Python's warning filter shows it once. detect
    # warns about the same inputs (MaskRCNN.mold_inputs), so training and inference agree.
    if image.dtype.kind == "f" and image.size and 0 < float(image.max()) <= 1.0:
        warnings.warn("load_image gave a float image with values in [0, 1]; the model trains on the 0..255 "
                      "scale (Dataset.load_image returns uint8) and would see nearly black images: multiply "
                      "by 255 or return uint8", stacklevel=utils.user_stacklevel())
    elif image.dtype.kind in "iu" and image.size and int(image.max()) > 255:
        warnings.warn(f"load_image gave a {image.dtype} image with values above 255; the model trains on the "
                      "0..255 scale (augmenters such as BrightnessContrast clip to it): map it first, e.g. "
                      "mrcnn.data.dataset.to_rgb_uint8(image, uint16_scaling='range' or 'image_max')",
                      stacklevel=utils.user_stacklevel())
    return image


def _checked_class_ids(class_ids: Any, config: Any, where: str, source: str) -> np.ndarray:
    """[N] int32 class ids; ValueError naming the image for ids that are neither a class nor a crowd
    (< 0), or that are not whole numbers (1.7 would otherwise be read as class 1)."""
    class_ids = np.asarray(class_ids).reshape(-1)
    if class_ids.dtype.kind == "f" and not np.array_equal(class_ids, np.round(class_ids)):
        raise ValueError(f"{where}: {source} gave class ids that are not whole numbers: "
                         f"{sorted(set(class_ids[class_ids != np.round(class_ids)].tolist()))[:5]}")
    class_ids = class_ids.astype(np.int32)
    bad = class_ids[(class_ids == 0) | (class_ids >= config.NUM_CLASSES)]
    if bad.size:
        raise ValueError(f"{where}: {source} gave class ids {sorted(set(bad.tolist()))}, outside "
                         f"1..{config.NUM_CLASSES - 1} (NUM_CLASSES = {config.NUM_CLASSES}; 0 is the background, "
                         "negative ids mark crowd regions)")
    return class_ids


def labels_to_targets(
    labels: np.ndarray,
    count: int,
    scale: float,
    padding: Any,
    crop: Any,
    mini_shape: tuple[int, int] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes and (mini) masks of the instances of a label image after `utils.resize_image`.

    Same numbers as ``resize_mask`` + ``extract_bboxes`` + ``minimize_mask`` on the expanded masks
    (nearest-neighbour resize with the same sampling, then a bilinear sample of each box
    thresholded at 0.5), in time proportional to the output image plus the mini masks.

    Args:
        labels: [H, W] int, 0 background, instance k (1..count) has value k.
        count: number of instances N (values above it are ignored).
        scale, padding, crop: as returned by `utils.resize_image` for the image.
        mini_shape: (mh, mw) for mini masks, or None for full-size masks.

    Returns:
        present: [N] bool, the instances that still have pixels (the others are dropped).
        bbox: [P, (y1, x1, y2, x2)] int32 pixel boxes in the resized image of the P present ones.
        mask: [mh, mw, P] bool mini masks, or [H', W', P] bool full-size masks.
    """
    height, width = labels.shape
    if scale != 1:
        labels = labels[utils._nearest_index(height, round(height * scale))][
            :, utils._nearest_index(width, round(width * scale))]
    if crop is not None:
        y, x, crop_h, crop_w = (int(v) for v in crop)
        labels = labels[y : y + crop_h, x : x + crop_w]
    else:
        labels = np.pad(labels, [tuple(padding[0]), tuple(padding[1])], mode="constant")
    objects = ndi.find_objects(labels, max_label=count) if count else []  # one C pass: every box
    index = np.array([k for k, found in enumerate(objects) if found is not None], dtype=np.intp)
    present = np.zeros(count, dtype=bool)
    present[index] = True
    bbox = np.array([[objects[k][0].start, objects[k][1].start, objects[k][0].stop, objects[k][1].stop]
                     for k in index], dtype=np.int32).reshape(-1, 4)
    values = (index + 1).astype(labels.dtype)
    if mini_shape is None:
        mask = np.zeros(labels.shape + (index.size,), dtype=bool)
        for j, k in enumerate(index):
            mask[objects[k] + (j,)] = labels[objects[k]] == values[j]
        return present, bbox, mask
    mh, mw = int(mini_shape[0]), int(mini_shape[1])
    if index.size == 0:
        return present, bbox, np.zeros((mh, mw, 0), dtype=bool)
    # Bilinear sampling of each instance's indicator (labels == k) inside its box, vectorized
    # over instances with the same weights and operation order as minimize_mask.
    y_lo, y_hi, y_frac = utils._linear_weights_batch(bbox[:, 0], bbox[:, 2] - bbox[:, 0], mh)  # [P, mh]
    x_lo, x_hi, x_frac = utils._linear_weights_batch(bbox[:, 1], bbox[:, 3] - bbox[:, 1], mw)  # [P, mw]
    flat = labels.reshape(-1)
    row_stride = labels.shape[1]
    values = values[:, None, None]

    def sample(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return (flat[ys[:, :, None] * row_stride + xs[:, None, :]] == values).astype(np.float32)

    right = utils.bilinear_blend(sample, y_lo, y_hi, x_lo, x_hi, y_frac, x_frac)
    return present, bbox, np.ascontiguousarray(np.moveaxis(right >= 0.5, 0, -1))


# ------------------------------------------------------------------------------------------------
def _as_boxes(name: str, boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be [N, 4] (y1, x1, y2, x2), got shape {boxes.shape}")
    return boxes


class _Matches(NamedTuple):
    anchor_max: np.ndarray  # [A] best IoU of each anchor over the boxes (0 if none overlaps)
    anchor_arg: np.ndarray  # [A] index of that box (lowest on ties), -1 where anchor_max is 0
    box_best: np.ndarray  # [A] bool: anchor tied at the maximum IoU of some box (a box whose maximum is > 0)


def _pair_iou(
    coords: np.ndarray, areas: np.ndarray, pair_block: np.ndarray, box_coords: np.ndarray, box_areas: np.ndarray,
    pair_box: np.ndarray,
) -> np.ndarray:
    """IoU of each (anchor block, box) pair -> [P, block].

    coords: [4, nb, block] anchor coordinates by block; areas: [nb, block]; box_coords: [4, N];
    box_areas: [N]. Same formula, operation order and float64 rounding as utils.compute_overlaps
    (the tie-breaking rules compare IoUs for equality). Coordinate-major arrays and in-place updates
    keep every operation on contiguous memory.
    """
    anchor = coords[:, pair_block]  # [4, P, block]
    box = box_coords[:, pair_box, None]  # [4, P, 1]
    height = np.minimum(anchor[2], box[2])
    height -= np.maximum(anchor[0], box[0])
    np.maximum(height, 0, out=height)
    width = np.minimum(anchor[3], box[3])
    width -= np.maximum(anchor[1], box[1])
    np.maximum(width, 0, out=width)
    intersection = height
    intersection *= width
    union = areas[pair_block]
    union += box_areas[pair_box, None]
    union -= intersection
    width.fill(0)  # reused as the output: 0 where the union is empty
    return np.divide(intersection, union, out=width, where=union > 0)


def _match_anchors(anchors: np.ndarray, boxes: np.ndarray) -> _Matches:
    """Exact anchor/box IoU statistics without the dense [A, N] IoU matrix.

    Anchors are cut into blocks of _ANCHOR_BLOCK consecutive anchors. Consecutive anchors of a
    pyramid level are neighbours in the image, so a block covers a small region, and only the
    (block, box) pairs whose extents intersect can have a non-zero IoU. IoUs are computed for those
    pairs only, in chunks of at most _MAX_PAIRS pairs (bounded memory); the result is the same as
    from the dense matrix whatever the anchor order (only the speed depends on it).
    """
    num_anchors, num_boxes = anchors.shape[0], boxes.shape[0]
    block = _ANCHOR_BLOCK
    num_blocks = -(-num_anchors // block)
    # Pad with copies of the last anchor (same extents); padded slots are cut off at the end.
    padded = np.concatenate([anchors, np.repeat(anchors[-1:], num_blocks * block - num_anchors, axis=0)])
    anchor_max = np.zeros((num_blocks, block))
    anchor_arg = np.full((num_blocks, block), -1, dtype=np.int64)
    box_best = np.zeros(num_blocks * block, dtype=bool)
    if num_anchors == 0 or num_boxes == 0:
        return _Matches(anchor_max.ravel()[:num_anchors], anchor_arg.ravel()[:num_anchors], box_best[:num_anchors])

    # Coordinate-major copies [4, nb, block]: reductions and gathers then run over contiguous memory.
    coords = np.ascontiguousarray(padded.T).reshape(4, num_blocks, block)
    areas = np.maximum(coords[2] - coords[0], 0) * np.maximum(coords[3] - coords[1], 0)
    box_coords = np.ascontiguousarray(boxes.T)
    box_areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    y1, x1 = coords[0].min(axis=1), coords[1].min(axis=1)
    y2, x2 = coords[2].max(axis=1), coords[3].max(axis=1)
    crossing = (
        (boxes[None, :, 0] < y2[:, None]) & (boxes[None, :, 2] > y1[:, None])
        & (boxes[None, :, 1] < x2[:, None]) & (boxes[None, :, 3] > x1[:, None])
    )
    pair_block, pair_box = np.nonzero(crossing)  # sorted by block, then box
    if pair_block.size == 0:
        return _Matches(anchor_max.ravel()[:num_anchors], anchor_arg.ravel()[:num_anchors], box_best[:num_anchors])

    # Chunks end at block boundaries so that every anchor's pairs are in one chunk.
    per_block_end = np.cumsum(crossing.sum(axis=1))
    box_max = np.zeros(num_boxes)
    pair_max = np.empty(pair_block.size)
    start = 0
    while start < pair_block.size:
        last = np.searchsorted(per_block_end, start + _MAX_PAIRS, side="right") - 1
        stop = int(per_block_end[last]) if last >= 0 else 0
        if stop <= start:  # one block alone has more pairs than _MAX_PAIRS
            stop = int(per_block_end[pair_block[start]])
        chunk_block, chunk_box = pair_block[start:stop], pair_box[start:stop]
        iou = _pair_iou(coords, areas, chunk_block, box_coords, box_areas, chunk_box)  # [P, block]
        segments = np.flatnonzero(np.r_[True, chunk_block[1:] != chunk_block[:-1]])  # first pair of each block
        segment_id = np.repeat(np.arange(segments.size), np.diff(np.r_[segments, chunk_block.size]))
        best = np.maximum.reduceat(iou, segments, axis=0)  # [S, block] per-anchor maximum
        # Lowest box index among the boxes tied at the maximum (pairs are sorted by box).
        tied_box = np.where(iou == best[segment_id], chunk_box[:, None], num_boxes)
        best_box = np.minimum.reduceat(tied_box, segments, axis=0)
        segment_blocks = chunk_block[segments]
        anchor_max[segment_blocks] = best
        anchor_arg[segment_blocks] = np.where(best > 0, best_box, -1)
        pair_max[start:stop] = iou.max(axis=1)
        np.maximum.at(box_max, chunk_box, pair_max[start:stop])
        start = stop

    # Each box's best anchors: only the pairs that reach the box's maximum hold them; recompute those.
    top = (pair_max == box_max[pair_box]) & (box_max[pair_box] > 0)
    top_block, top_box = pair_block[top], pair_box[top]
    iou = _pair_iou(coords, areas, top_block, box_coords, box_areas, top_box)
    rows, cols = np.nonzero(iou == box_max[top_box][:, None])
    box_best[top_block[rows] * block + cols] = True
    return _Matches(anchor_max.ravel()[:num_anchors], anchor_arg.ravel()[:num_anchors], box_best[:num_anchors])


def label_anchors(
    anchors: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_boxes: np.ndarray,
    positive_iou: float = RPN_POSITIVE_IOU,
    negative_iou: float = RPN_NEGATIVE_IOU,
    crowd_iou: float = RPN_CROWD_IOU,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels anchors positive / negative / neutral, before any subsampling.

    Rules (matterport / Faster R-CNN):
      * GT entries with class id 0 are padding and ignored; negative class ids are crowd boxes,
        which are removed from the GT.
      * anchor negative (-1) if its best IoU with the (non-crowd) GT is < `negative_iou` and its
        best IoU with any crowd box is < `crowd_iou`;
      * anchor positive (+1) if its best IoU is >= `positive_iou`, or if it is the best anchor of
        some GT box (all anchors tied at that GT's maximum). Unlike matterport, a GT box that
        overlaps no anchor at all (maximum IoU 0) makes no anchor positive;
      * neutral (0) otherwise.

    Args:
        anchors: [A, (y1, x1, y2, x2)] pixel anchors.
        gt_class_ids: [N] int class ids (0 padding, < 0 crowd).
        gt_boxes: [N, (y1, x1, y2, x2)] pixel boxes.
        positive_iou, negative_iou, crowd_iou: thresholds (see above).

    Returns:
        rpn_match: [A] int32 in {-1, 0, 1}.
        gt_index: [A] int64 index into `gt_boxes` of each anchor's best non-crowd GT box (lowest
            index on ties); -1 for anchors that overlap none.

    Raises:
        ValueError: on malformed shapes.
    """
    anchors = _as_boxes("anchors", anchors)
    gt_boxes = _as_boxes("gt_boxes", gt_boxes)
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    if gt_class_ids.shape[0] != gt_boxes.shape[0]:
        raise ValueError(
            f"gt_class_ids has {gt_class_ids.shape[0]} entries but gt_boxes has {gt_boxes.shape[0]} boxes"
        )
    num_anchors = anchors.shape[0]

    # Crowd boxes only protect anchors from becoming negatives.
    crowd = _match_anchors(anchors, gt_boxes[gt_class_ids < 0])
    no_crowd = crowd.anchor_max < crowd_iou

    valid = np.flatnonzero(gt_class_ids > 0)
    matches = _match_anchors(anchors, gt_boxes[valid])
    rpn_match = np.zeros(num_anchors, dtype=np.int32)
    rpn_match[(matches.anchor_max < negative_iou) & no_crowd] = -1
    rpn_match[matches.box_best] = 1
    rpn_match[matches.anchor_max >= positive_iou] = 1

    gt_index = np.full(num_anchors, -1, dtype=np.int64)
    matched = matches.anchor_arg >= 0
    gt_index[matched] = valid[matches.anchor_arg[matched]]
    return rpn_match, gt_index


def subsample_anchors(rpn_match: np.ndarray, num_anchors: int, rng: np.random.Generator) -> np.ndarray:
    """Keeps at most `num_anchors` labelled anchors, at most half of them positive.

    Surplus positives, then surplus negatives, are drawn uniformly with `rng` and set neutral.

    Args:
        rpn_match: [A] int32 in {-1, 0, 1} (not modified).
        num_anchors: RPN_TRAIN_ANCHORS_PER_IMAGE.
        rng: random generator.

    Returns:
        [A] int32 subsampled copy.
    """
    rpn_match = np.array(rpn_match, dtype=np.int32, copy=True)
    positives = np.flatnonzero(rpn_match == 1)
    extra = positives.size - num_anchors // 2
    if extra > 0:
        rpn_match[rng.choice(positives, extra, replace=False)] = 0
    negatives = np.flatnonzero(rpn_match == -1)
    extra = negatives.size - (num_anchors - int(np.count_nonzero(rpn_match == 1)))
    if extra > 0:
        rpn_match[rng.choice(negatives, extra, replace=False)] = 0
    return rpn_match


def build_rpn_targets(
    anchors: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_boxes: np.ndarray,
    config: Any,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """RPN training targets of one image: anchor labels and box deltas of the positives.

    Labels as `label_anchors`, then `subsample_anchors` to RPN_TRAIN_ANCHORS_PER_IMAGE.

    Args:
        anchors: [A, (y1, x1, y2, x2)] pixel anchors (`utils.generate_pyramid_anchors`).
        gt_class_ids: [N] int class ids (0 padding, < 0 crowd).
        gt_boxes: [N, (y1, x1, y2, x2)] pixel boxes in the same image as the anchors.
        config: reads RPN_TRAIN_ANCHORS_PER_IMAGE and RPN_BBOX_STD_DEV.
        rng: random generator for the subsampling; a fresh unseeded one when None.

    Returns:
        rpn_match: [A] int32, 1 positive, -1 negative, 0 neutral.
        rpn_bbox: [RPN_TRAIN_ANCHORS_PER_IMAGE, (dy, dx, log(dh), log(dw))] float32: deltas from
            each positive anchor to its best GT box, divided by RPN_BBOX_STD_DEV, in the order the
            positives appear in `rpn_match`; zero rows after.
    """
    if rng is None:
        rng = np.random.default_rng()
    num_train = int(config.RPN_TRAIN_ANCHORS_PER_IMAGE)
    rpn_match, gt_index = label_anchors(anchors, gt_class_ids, gt_boxes)
    rpn_match = subsample_anchors(rpn_match, num_train, rng)

    rpn_bbox = np.zeros((num_train, 4), dtype=np.float32)
    positives = np.flatnonzero(rpn_match == 1)
    if positives.size:
        anchors = np.asarray(anchors, dtype=np.float64)
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64)
        deltas = utils.box_refinement(anchors[positives], gt_boxes[gt_index[positives]])
        rpn_bbox[: positives.size] = deltas / np.asarray(config.RPN_BBOX_STD_DEV, dtype=np.float32)
    return rpn_match, rpn_bbox
