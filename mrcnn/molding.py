"""Images in and detections out of the inference graph: molding, unmolding, batched detection.

NumPy only: the same code serves `MaskRCNN.detect` and an exported SavedModel
(`mrcnn.export.ExportedMaskRCNN`), so a served model molds and unmolds exactly as the Keras one.

    molded, metas, windows = mold_images(images, config)      # [N, h, w, C], [N, META], [N, 4]
    outputs = graph(molded, metas)                             # detections, mrcnn_mask[, mrcnn_keypoints]
    result = unmold_detections(outputs["detections"][0], outputs["mrcnn_mask"][0], images[0].shape,
                               molded[0].shape, windows[0])

Coordinates: the graph's boxes are (y1, x1, y2, x2) normalized to the molded canvas; results are
int32 pixels of the original image, y2/x2 exclusive.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from mrcnn import utils
from mrcnn.config import Config, is_scalar_of
from mrcnn.data.dataset import conform_channels

# What the inference graph returns: name -> array with the batch first.
GraphOutputs = dict[str, np.ndarray]


def image_list(images: Sequence[np.ndarray] | Any, where: str = "detect") -> list[np.ndarray]:
    """`images` (a list, tuple, generator or [N,H,W,C] array) as a list.

    Raises:
        TypeError: for one bare [H,W] / [H,W,C] image, which would be read as rows of pixels.
    """
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        raise TypeError(f"{where}() takes a list of images; wrap a single image as [image]")
    return list(images)


def _check_scale(scale: Any, where: str) -> None:
    if not is_scalar_of(scale, float) or not scale > 0:
        raise ValueError(f"{where}: scale must be a number > 0, got {scale!r}")


def mold_images(images: Sequence[np.ndarray], config: Config, target_shape: tuple[int, int] | None = None,
                scale: float = 1.0, where: str = "mold_inputs") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resizes and normalizes images as in training (`MaskRCNN.mold_inputs`).

    Args:
        images: list of [H,W,C] arrays (uint8 or float in [0,255]; grayscale or RGBA accepted).
        config: the model's config (IMAGE_* resize fields, MEAN_PIXEL, NUM_CLASSES).
        target_shape: force this molded (H, W) (used to build the model); default: the config's
            resize mode decides.
        scale: multiplies the config's resize scale (test-time augmentation, mrcnn.tta): the
            image is resized by exactly that product and padded (centered) to a square of
            side ceil64(max(IMAGE_MAX_DIM * scale, its sides)) in square mode, else each side
            to a multiple of 64. 1.0: the config's molding unchanged. Ignored with target_shape.
        where: the caller named in errors.

    Returns:
        molded [N,h,w,C] float32, metas [N,META] float32, windows [N,4] int32 pixel windows
        (y1, x1, y2, x2) of each image inside its canvas.

    Raises:
        ValueError / TypeError: naming the image for empty, non-finite or non-pixel inputs; for
            no images, one bare image array, and images that mold to different canvases
            (IMAGE_RESIZE_MODE "pad64" / "none"; the error lists the canvases).
    """
    _check_scale(scale, where)
    images = image_list(images, where)
    if not images:
        raise ValueError(f"{where} got no images")
    molded, metas, windows = zip(*[_mold_one(image, i, config, target_shape, scale) for i, image in enumerate(images)])
    canvases = sorted({m.shape for m in molded})
    if len(canvases) > 1:  # pad64 / "none" modes keep sizes apart
        raise ValueError(f"{where}: these images mold to different canvases {canvases} (IMAGE_RESIZE_MODE "
                         f"{config.IMAGE_RESIZE_MODE!r}); pass images of one canvas at a time"
                         + (" (detect groups them itself)" if where == "mold_inputs" else ""))
    return np.stack(molded), np.stack(metas), np.array(windows, np.int32)


class CanvasGroup(NamedTuple):
    """The images of one call that mold to one canvas (`mold_by_canvas`)."""

    indices: list[int]  # positions in the caller's list
    molded: np.ndarray  # [n, h, w, C] float32
    metas: np.ndarray  # [n, META] float32
    windows: np.ndarray  # [n, 4] int32


def mold_by_canvas(images: Sequence[np.ndarray], config: Config, scale: float = 1.0,
                   where: str = "detect") -> list[CanvasGroup]:
    """Molds each image on its own canvas and groups them by canvas (H, W), in first-seen order.

    "square"/"crop" modes give one group; "pad64"/"none" one per canvas size.

    Args:
        images: a list of images of any size (see `mold_images`).
        config: the model's config.
        scale: multiplies the config's resize scale (see `mold_images`).
        where: the caller named in errors.

    Returns:
        One `CanvasGroup` per canvas: the images' positions in `images`, molded [n,h,w,C]
        float32, metas [n,META] float32, windows [n,4] int32. No groups for no images.

    Raises:
        ValueError / TypeError: naming the image for bad pixels (`mold_images`), or a bad scale.
    """
    _check_scale(scale, where)
    positions: dict[tuple[int, ...], list[int]] = {}  # canvas -> the images molded to it
    molded, metas, windows = [], [], []
    for i, image in enumerate(images):
        one = _mold_one(image, i, config, None, scale)
        positions.setdefault(one[0].shape, []).append(i)
        molded.append(one[0])
        metas.append(one[1])
        windows.append(one[2])
    groups = []
    for shape, indices in positions.items():
        stacked = np.empty((len(indices),) + shape, np.float32)
        for row, i in enumerate(indices):
            stacked[row] = molded[i]
            molded[i] = None  # freed once copied: the pixels are held once, not per image and stacked
        groups.append(CanvasGroup(indices, stacked, np.stack([metas[i] for i in indices]),
                                  np.stack([windows[i] for i in indices])))
    return groups


def _mold_one(image: np.ndarray, index: int, config: Config, target_shape: tuple[int, int] | None, scale: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image of `mold_images`: molded [h,w,C] float32, meta [META] float32, window [4] int32."""
    c = config
    image = _as_rgb(np.asarray(image), c.IMAGE_CHANNEL_COUNT, index=index)
    _check_pixel_values(image, index=index)
    if target_shape is not None:
        resized, window, own_scale, _, _ = utils.resize_image(image, min_dim=min(target_shape),
                                                              max_dim=max(target_shape), mode="square")
    else:
        mode = "square" if c.IMAGE_RESIZE_MODE == "crop" else c.IMAGE_RESIZE_MODE
        # Crop mode trains on crops; at test time the whole image is seen, padded to square.
        max_dim = c.IMAGE_MAX_DIM if c.IMAGE_RESIZE_MODE != "crop" else max(c.IMAGE_MAX_DIM, c.IMAGE_MIN_DIM)
        if scale == 1.0:
            resized, window, own_scale, _, _ = utils.resize_image(
                image, min_dim=c.IMAGE_MIN_DIM, max_dim=max_dim, min_scale=c.IMAGE_MIN_SCALE, mode=mode)
        else:  # the config's own scale times `scale`, without resizing twice
            own_scale = utils.resize_scale(image.shape[0], image.shape[1], c.IMAGE_MIN_DIM, max_dim,
                                           c.IMAGE_MIN_SCALE, mode)
            resized, window, own_scale = _rescale_for_inference(image, own_scale * scale, max_dim * scale,
                                                                square=mode == "square")
    molded = utils.mold_image(resized.astype(np.float32), c).astype(np.float32)
    meta = utils.compose_image_meta(0, image.shape, resized.shape, window, own_scale, np.ones(c.NUM_CLASSES, np.int32))
    return molded, np.asarray(meta, np.float32), np.asarray(window, np.int32)


def unmold_detections(detections: np.ndarray, mrcnn_mask: np.ndarray | None, original_image_shape: Sequence[int],
                      image_shape: Sequence[int], window: np.ndarray, keypoints: np.ndarray | None = None,
                      soft_masks: bool = False) -> dict[str, np.ndarray]:
    """Maps one image's detections from the molded image back to the original.

    Args:
        detections: [D,6] (y1,x1,y2,x2 normalized, class_id, score), zero padded.
        mrcnn_mask: [D,h,w,K] mask probabilities ([D,h,w,1]: class-agnostic, or each detection's
            own class channel, channel 0 for every class); None for a model without mask head
            (the result then has no "masks").
        original_image_shape: (H, W[, C]) of the image before molding.
        image_shape: (h, w[, c]) of the molded image.
        window: (y1,x1,y2,x2) pixel window of the real image inside the molded one.
        keypoints: [D,NUM_KEYPOINTS,3] (x, y normalized, score) from the keypoint head; the result
            then has "keypoints" [N,NUM_KEYPOINTS,3] float32 (x, y continuous pixels of the
            original image, score).
        soft_masks: "masks" as [H,W,N] float32 probabilities pasted into the boxes (0 outside)
            instead of [H,W,N] bool thresholded at 0.5 (which is soft >= 0.5).

    Returns:
        rois [N,4] int32 (y1, x1, y2, x2) original pixels, class_ids [N] int32, scores [N]
        float32, masks [H,W,N] (with mrcnn_mask), keypoints [N,NUM_KEYPOINTS,3] (with keypoints).
    """
    keep = np.where(detections[:, 4] > 0)[0]
    boxes_norm = detections[keep, :4]
    class_ids = detections[keep, 4].astype(np.int32)
    scores = detections[keep, 5].astype(np.float32)
    if mrcnn_mask is not None:
        channels = class_ids if mrcnn_mask.shape[-1] > 1 else np.zeros_like(class_ids)  # 1: class-agnostic
        masks = mrcnn_mask[keep, :, :, channels] if keep.size else np.zeros((0,) + mrcnn_mask.shape[1:3])
    # Normalized molded coords -> molded pixels -> original pixels.
    boxes = boxes_norm * np.array([image_shape[0], image_shape[1]] * 2, np.float32)
    wy1, wx1, wy2, wx2 = np.asarray(window, np.float32)
    scale_y = (wy2 - wy1) / original_image_shape[0]
    scale_x = (wx2 - wx1) / original_image_shape[1]
    boxes = (boxes - np.array([wy1, wx1, wy1, wx1])) / np.array([scale_y, scale_x, scale_y, scale_x])
    if keypoints is not None:
        # Same map as the boxes: normalized molded -> molded pixels -> original pixels.
        points = keypoints[keep].astype(np.float32)
        points[..., 0] = (points[..., 0] * image_shape[1] - wx1) / scale_x
        points[..., 1] = (points[..., 1] * image_shape[0] - wy1) / scale_y
    height, width = int(original_image_shape[0]), int(original_image_shape[1])
    boxes = np.round(boxes).astype(np.int32)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, height)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, width)
    valid = np.where((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[0]
    boxes, class_ids, scores = boxes[valid], class_ids[valid], scores[valid]
    result = {"rois": boxes, "class_ids": class_ids, "scores": scores}
    if mrcnn_mask is not None:
        result["masks"] = utils.paste_masks(masks[valid], boxes, (height, width), soft=soft_masks)
    if keypoints is not None:
        result["keypoints"] = points[valid]
    return result


def detect_images(images: Sequence[np.ndarray], config: Config, graph: Callable[[np.ndarray, np.ndarray], GraphOutputs],
                  verbose: int = 0, scale: float = 1.0, soft_masks: bool = False,
                  canvas: tuple[int, int] | None = None) -> list[dict[str, np.ndarray]]:
    """Molds `images`, runs `graph` on batches of at most BATCH_SIZE equal canvases, unmolds.

    Args:
        images: list of images of any size (see `mold_images`).
        config: the model's config (molding fields and BATCH_SIZE).
        graph: ``graph(molded [n,h,w,C] float32, metas [n,META] float32)`` -> dict of numpy
            arrays: "detections" [n,D,6], and "mrcnn_mask" [n,D,h,w,K] / "mrcnn_keypoints"
            [n,D,NUM_KEYPOINTS,3] where the model has those heads.
        verbose: 1 shows a progress bar over batches.
        scale: detect at this multiple of the config's resize scale.
        soft_masks: float32 probability masks instead of bool (`unmold_detections`).
        canvas: the one molded (H, W) `graph` takes (an exported model's); None: any.

    Returns:
        One dict per image, in order (`unmold_detections`).

    Raises:
        TypeError: for a bare image array instead of a list of images.
        ValueError: naming the image for bad pixels (`mold_images`), or one that molds to
            another canvas than `canvas`, before the graph runs on any image.
    """
    # Arrays from here on (a PIL image or nested lists would pass molding, run the graph and
    # then fail in unmolding for want of .shape).
    images = [np.asarray(image) for image in image_list(images)]
    groups = mold_by_canvas(images, config, scale=scale)
    if canvas is not None:
        for group in groups:
            if tuple(group.molded.shape[1:3]) != tuple(canvas):
                raise ValueError(f"image {group.indices[0]} molds to a {tuple(group.molded.shape[1:3])} canvas; this "
                                 f"graph takes {tuple(canvas)} (an export holds one canvas: "
                                 "export_saved_model(canvas=...))")
    results: list[dict[str, np.ndarray]] = [None] * len(images)  # type: ignore[list-item]
    batch = config.BATCH_SIZE
    batches = [(group, k) for group in groups for k in range(0, len(group.indices), batch)]
    for group, k in utils.progress(batches, verbose, "detect", "batch"):
        out = graph(group.molded[k:k + batch], group.metas[k:k + batch])
        for j, i in enumerate(group.indices[k:k + batch]):
            results[i] = unmold_detections(
                out["detections"][j], out["mrcnn_mask"][j] if "mrcnn_mask" in out else None, images[i].shape,
                group.molded[k + j].shape, group.windows[k + j],
                keypoints=out["mrcnn_keypoints"][j] if "mrcnn_keypoints" in out else None, soft_masks=soft_masks)
    return results


def _rescale_for_inference(image: np.ndarray, scale: float, canvas: float, square: bool
                           ) -> tuple[np.ndarray, tuple[int, int, int, int], float]:
    """`image` resized by exactly `scale` and padded: to a square of side ceil64(max(canvas, sides))
    when `square`, else each side to a multiple of 64. Returns (image, window, scale)."""
    side = None
    if square:
        longest = max(round(image.shape[0] * scale), round(image.shape[1] * scale), round(canvas))
        side = 64 * int(np.ceil(longest / 64))
    resized, window, scale, _ = utils.rescale_image(image, scale, square_side=side)
    return resized, window, scale


def _check_pixel_values(image: np.ndarray, index: int) -> None:
    """Raises for NaN/inf pixels; warns about values off the 0..255 scale `Dataset.load_image` trains on.

    A 16-bit microscopy frame (values up to 65535) or a float image in [0, 1] would otherwise be
    molded as it is and detected on a scale the model never saw, without any error. The warning's
    message is the same for every image of a dtype, so Python's warning filter shows it once per
    call site. `image` is `_as_rgb`'s output (not empty).
    """
    if image.dtype == np.uint8:
        return
    if image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ValueError(f"image {index} has NaN or infinite values")
        if 0 < float(image.max()) <= 1.0:
            warnings.warn(f"detect/mold_inputs got a {image.dtype} image with values in [0, 1]; images are "
                          "expected on the 0..255 scale (as Dataset.load_image gives): multiply it by 255",
                          stacklevel=utils.user_stacklevel())
    elif np.issubdtype(image.dtype, np.integer) and int(image.max()) > 255:
        warnings.warn(f"detect/mold_inputs got a {image.dtype} image with values above 255; it is molded "
                      "as it is, while Dataset.load_image trains on 0..255: map it the same way first, e.g. "
                      "mrcnn.data.dataset.to_rgb_uint8(image, uint16_scaling='range' or 'image_max')",
                      stacklevel=utils.user_stacklevel())


def _as_rgb(image: np.ndarray, channels: int, index: int) -> np.ndarray:
    """[H, W, channels] view of one input image (its shape and dtype checked; its values by
    `_check_pixel_values`); ValueError/TypeError naming the image otherwise."""
    if image.dtype.kind in "USO":  # a path (or paths), not pixels
        what = repr(image.item()) if image.ndim == 0 else f"an array of {image.dtype}"
        raise TypeError(f"image {index} is {what}, not pixels: detect takes image arrays; read files first, "
                        "e.g. mrcnn.data.dataset.read_image_rgb(path)")
    image = conform_channels(image, channels, where=f"image {index}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image {index} is empty: shape {image.shape}")
    return image
