"""Test-time augmentation (the paper's Appendix B): detect several scales and flips of each image, merge.

    results = model.detect(images, tta={"scales": (0.75, 1.0, 1.25), "hflip": True})
    results = model.detect(images, tta=TTA.paper())   # shorter side 400..1200 step 100 at base 800, + flips

Views: every entry of `scales` is a multiple of the model's own resize scale (1.0 is plain
detection; the canvas grows or shrinks with it, see `mrcnn.molding.mold_images`), and with `hflip`
each scale is also run on the horizontally mirrored image. Each view is detected with soft
(probability) masks and mapped back to the original image (a mirrored view's boxes and masks are
mirrored back). The views' detections of an image are then merged:

1. concatenated, sorted by score (stable);
2. per-class greedy NMS at `iou_threshold` (default the model's DETECTION_NMS_THRESHOLD): each
   kept detection forms a cluster with the same-class detections it suppresses (IoU above the
   threshold), itself included;
3. the cluster's box is the score-weighted mean of its members' boxes with ``merge="vote"``
   (box voting, Gidaris & Komodakis 2015, as Detectron's BBOX_VOTE), the kept box with
   ``merge="nms"``; its class and score are the kept detection's (the highest score);
4. its mask is the mean of the members' soft masks (each pasted at the original resolution, 0
   outside its own box), thresholded at 0.5 (so it may reach slightly past the voted box);
5. the `max_instances` (default DETECTION_MAX_INSTANCES) best clusters are kept, by score.

One view has nothing to merge: its detections are returned as detected (already per-class NMS'ed
in the graph; only `max_instances` applies), so ``TTA(scales=(1.0,))`` gives exactly `detect`
without TTA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from mrcnn import utils
from mrcnn.molding import image_list

MERGE_MODES = ("vote", "nms")


@dataclass(frozen=True)
class TTA:
    """Which views test-time augmentation runs and how it merges them (see the module docstring).

    Attributes:
        scales: multiples of the model's own resize scale, each > 0 (1.0 = as trained).
        hflip: also run every scale on the horizontally mirrored image.
        merge: "vote" (score-weighted box voting over each NMS cluster) or "nms" (the kept box).
        iou_threshold: per-class NMS / cluster IoU threshold; None: the model's DETECTION_NMS_THRESHOLD.
        max_instances: detections kept per image; None: the model's DETECTION_MAX_INSTANCES.
    """

    scales: tuple[float, ...] = (1.0,)
    hflip: bool = False
    merge: str = "vote"
    iou_threshold: float | None = None
    max_instances: int | None = None

    def __post_init__(self) -> None:
        scales = self.scales
        if isinstance(scales, (int, float)):
            scales = (scales,)
        try:
            scales = tuple(float(s) for s in scales)
        except (TypeError, ValueError) as error:
            raise ValueError(f"TTA scales must be numbers, got {self.scales!r}") from error
        if not scales or any(not (math.isfinite(s) and s > 0) for s in scales):
            raise ValueError(f"TTA scales must be a non-empty list of positive numbers, got {self.scales!r}")
        object.__setattr__(self, "scales", scales)
        if not isinstance(self.hflip, (bool, np.bool_)):
            raise ValueError(f"TTA hflip must be True or False, got {self.hflip!r}")
        if self.merge not in MERGE_MODES:
            raise ValueError(f"TTA merge must be one of {MERGE_MODES}, got {self.merge!r}")
        if self.iou_threshold is not None and not 0.0 <= float(self.iou_threshold) <= 1.0:
            raise ValueError(f"TTA iou_threshold must be in [0, 1], got {self.iou_threshold!r}")
        if self.max_instances is not None and (not isinstance(self.max_instances, (int, np.integer))
                                               or self.max_instances < 1):
            raise ValueError(f"TTA max_instances must be a positive int, got {self.max_instances!r}")

    @classmethod
    def paper(cls, base_min_dim: int = 800, **overrides: Any) -> TTA:
        """The paper's Appendix B views: shorter side 400, 500, ..., 1200 px and their mirrors.

        Args:
            base_min_dim: the shorter side the model is run at (the paper's 800), which the
                scales are relative to.
            overrides: other fields (merge, iou_threshold, max_instances).
        """
        scales = tuple(side / base_min_dim for side in range(400, 1201, 100))
        return cls(scales=scales, hflip=True, **overrides)

    def views(self) -> list[tuple[float, bool]]:
        """(scale, mirrored) of every view, in run order: each scale, then its mirror with hflip."""
        return [(scale, flip) for scale in self.scales for flip in ((False, True) if self.hflip else (False,))]


def as_tta(spec: TTA | dict[str, Any]) -> TTA:
    """A `TTA` from a `TTA` or a dict of its fields.

    Raises:
        ValueError: for a dict with unknown keys or bad values (naming them).
        TypeError: for anything else.
    """
    if isinstance(spec, TTA):
        return spec
    if isinstance(spec, dict):
        known = {f.name for f in fields(TTA)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"unknown TTA keys {unknown}; known: {sorted(known)}")
        return TTA(**spec)
    raise TypeError(f"tta must be None, an mrcnn.tta.TTA or a dict of its fields, got {type(spec).__name__}")


@dataclass
class ViewDetections:
    """One image's detections from one view, in the original image's pixels.

    Attributes:
        rois: [N, (y1, x1, y2, x2)] int32, y2/x2 exclusive, inside the image.
        class_ids: [N] int32.
        scores: [N] float32.
        crops: N soft masks, crop n float32 [y2 - y1, x2 - x1] (the mask inside roi n; outside it
            is 0); None for a model without mask head.
    """

    rois: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    crops: list[np.ndarray] | None


def detect_view(model: Any, images: Sequence[np.ndarray], scale: float = 1.0, flip: bool = False,
                verbose: int = 0) -> list[ViewDetections]:
    """Detects one view (scale, horizontal mirror) of each image, mapped back to the original image.

    Args:
        model: a MaskRCNN (`detect(images, scale=, soft_masks=)`).
        images: list of [H, W(, C)] images.
        scale: multiple of the model's own resize scale.
        flip: detect on the horizontally mirrored images, then mirror the boxes and masks back.
        verbose: passed to `detect`.
    Returns:
        One `ViewDetections` per image.
    """
    images = list(images)
    if flip:
        images = [np.ascontiguousarray(np.asarray(image)[:, ::-1]) for image in images]
    results = model.detect(images, verbose=verbose, scale=scale, soft_masks=True)
    views = []
    for image, result in zip(images, results):
        width = int(np.asarray(image).shape[1])
        rois = result["rois"].astype(np.int32)
        crops = None
        if "masks" in result:
            masks = result["masks"]
            crops = [np.ascontiguousarray(masks[y1:y2, x1:x2, n]) for n, (y1, x1, y2, x2) in enumerate(rois)]
        if flip:
            # Column c of the mirror is column W - 1 - c: box [x1, x2) -> [W - x2, W - x1).
            rois = rois.copy()
            rois[:, [1, 3]] = width - rois[:, [3, 1]]
            if crops is not None:
                crops = [np.ascontiguousarray(crop[:, ::-1]) for crop in crops]
        views.append(ViewDetections(rois, result["class_ids"].astype(np.int32),
                                    result["scores"].astype(np.float32), crops))
    return views


def merge_views(views: Sequence[ViewDetections], image_shape: Sequence[int], iou_threshold: float,
                max_instances: int, merge: str = "vote", soft_masks: bool = False) -> dict[str, np.ndarray]:
    """Merges one image's detections from several views (steps 1-5 of the module docstring).

    Args:
        views: the image's `ViewDetections`, one per view.
        image_shape: (H, W, ...) of the original image.
        iou_threshold: per-class NMS / cluster IoU threshold.
        max_instances: clusters kept (the highest scores).
        merge: "vote" (score-weighted mean box of each cluster) or "nms" (the kept box).
        soft_masks: return the averaged masks as float32 instead of thresholding them at 0.5.
    Returns:
        `detect`'s dict: rois [N, 4] int32, class_ids [N] int32, scores [N] float32 (descending),
        masks [H, W, N] bool (float32 with soft_masks) unless the views have no masks.
    """
    if merge not in MERGE_MODES:
        raise ValueError(f"merge must be one of {MERGE_MODES}, got {merge!r}")
    height, width = int(image_shape[0]), int(image_shape[1])
    with_masks = all(v.crops is not None for v in views) and len(views) > 0
    rois = np.concatenate([v.rois for v in views]).reshape(-1, 4).astype(np.int32) if views else np.zeros((0, 4), np.int32)
    class_ids = np.concatenate([v.class_ids for v in views]).astype(np.int32) if views else np.zeros(0, np.int32)
    scores = np.concatenate([v.scores for v in views]).astype(np.float32) if views else np.zeros(0, np.float32)
    crops = [c for v in views for c in v.crops] if with_masks else None

    order = np.argsort(-scores, kind="stable")
    if len(views) == 1:  # one view: already NMS'ed in the graph, nothing to merge
        clusters = [np.array([i]) for i in order]
    else:  # greedy NMS over all classes at once, each cluster within one class
        overlaps = utils.compute_overlaps(rois, rois) if len(rois) else np.zeros((0, 0))
        clusters = []
        taken = np.zeros(len(rois), bool)
        for i in order:
            if taken[i]:
                continue
            members = order[~taken[order] & (class_ids[order] == class_ids[i]) & (overlaps[i, order] > iou_threshold)]
            members = np.concatenate([[i], members[members != i]])  # kept first, then by score
            taken[members] = True
            clusters.append(members)
    clusters = clusters[:max_instances]  # formed in score order of their kept detection

    out_rois = np.zeros((len(clusters), 4), np.int32)
    for n, members in enumerate(clusters):
        if merge == "vote":
            weights = scores[members].astype(np.float64)
            box = (weights[:, None] * rois[members].astype(np.float64)).sum(0) / max(weights.sum(), 1e-12)
            out_rois[n] = np.round(box).astype(np.int32)
        else:
            out_rois[n] = rois[members[0]]
    kept = np.array([m[0] for m in clusters], np.int64)
    result = {"rois": out_rois, "class_ids": class_ids[kept].astype(np.int32),
              "scores": scores[kept].astype(np.float32)}
    if with_masks:
        masks = np.zeros((height, width, len(clusters)), np.float32)
        for n, members in enumerate(clusters):
            for m in members:
                y1, x1, y2, x2 = rois[m]
                masks[y1:y2, x1:x2, n] += crops[m]
            # Only the members' boxes hold non-zero values: dividing there, not over the whole
            # strided [H, W] plane, keeps the cost at the boxes' area.
            y1, x1 = rois[members, :2].min(axis=0)
            y2, x2 = rois[members, 2:].max(axis=0)
            masks[y1:y2, x1:x2, n] /= len(members)
        result["masks"] = masks if soft_masks else masks >= 0.5
    return result


def detect_tta(model: Any, images: Sequence[np.ndarray], tta: TTA | dict[str, Any], verbose: int = 0,
               soft_masks: bool = False) -> list[dict[str, np.ndarray]]:
    """`MaskRCNN.detect` with test-time augmentation (what ``model.detect(images, tta=...)`` runs).

    Args:
        model: a MaskRCNN.
        images: list of [H, W(, C)] images.
        tta: a `TTA` or a dict of its fields.
        verbose: 1 shows a progress bar over the views.
        soft_masks: masks as the averaged float32 probabilities instead of bool.
    Returns:
        One dict per image, as `detect` (rois, class_ids, scores, masks).

    Raises:
        ValueError: for a bad `tta`, or a model with a keypoint head (keypoints are not merged).
    """
    tta = as_tta(tta)
    images = image_list(images)
    if getattr(model.config, "KEYPOINT_HEAD", False):
        raise ValueError("test-time augmentation does not merge keypoints: detect without tta for a "
                         "model with KEYPOINT_HEAD = True")
    views = tta.views()
    if len(views) == 1:
        scale, flip = views[0]
        if not flip:  # nothing to merge or map back: detect's own result (the identity case)
            results = model.detect(images, verbose=verbose, scale=scale, soft_masks=soft_masks)
            if tta.max_instances is not None:  # detect sorts by score: keep the best
                k = int(tta.max_instances)
                results = [{key: (value[..., :k] if key == "masks" else value[:k]) for key, value in r.items()}
                           for r in results]
            return results
    per_view = []
    for scale, flip in utils.progress(views, verbose, "tta views", "view"):
        per_view.append(detect_view(model, images, scale=scale, flip=flip))
    iou = model.config.DETECTION_NMS_THRESHOLD if tta.iou_threshold is None else float(tta.iou_threshold)
    limit = model.config.DETECTION_MAX_INSTANCES if tta.max_instances is None else int(tta.max_instances)
    return [merge_views([view[i] for view in per_view], np.asarray(image).shape, iou, limit, tta.merge, soft_masks)
            for i, image in enumerate(images)]
