"""Evaluate a model over a `Dataset` with VOC-style AP (mrcnn.evaluation.ap).

For COCO-style evaluation through pycocotools see mrcnn.evaluation.coco_eval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mrcnn.data.dataset import check_num_classes
from mrcnn.evaluation.ap import compute_ap
from mrcnn.evaluation.detect_timer import DetectTimer
from mrcnn.utils import binary_masks, extract_bboxes

DEFAULT_IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))
CROWD_OVERLAP = 0.5  # a detection this much inside crowd regions is ignored (COCO's crowd IoU at 0.5)


def evaluate_dataset(model: Any, dataset: Any, image_ids: Sequence[int] | None = None,
                     iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS, verbose: int = 1
                     ) -> dict[str, float]:
    """Runs `model.detect` over images of `dataset` and averages per-image AP.

    Ground truth comes from `dataset.load_mask` at the original image resolution; crowd instances
    (negative class ids) are not targets, and a detection lying on a crowd region (at least
    `CROWD_OVERLAP` of its mask, or box without masks, inside the crowd regions) is left out
    rather than counted as a false positive, as COCO ignores detections matched to a crowd.
    Images without ground truth are skipped (their AP is undefined; their detections are not
    scored, as in matterport) and counted in ``images_without_gt``.

    The numbers are matterport's per-image AP (`compute_ap`: all classes of an image ranked
    together, then averaged over images), not COCO's per-class AP over the whole dataset
    (`evaluate_coco`): the two differ by a few points on the same detections.

    Args:
        model: a MaskRCNN (anything with `detect(images)` and `config.BATCH_SIZE`).
        dataset: a prepared mrcnn Dataset.
        image_ids: which images (default: all).
        iou_thresholds: thresholds averaged for mAP@[.5:.95]; 0.5 must be among them.
        verbose: 1 shows a progress bar.
    Returns:
        dict with box_mAP50, box_mAP, mask_mAP50, mask_mAP (means over images; no mask keys
        for a model whose results have no "masks", MASK_HEAD = False), num_images,
        images_without_gt, and `DetectTimer.summary`'s seconds_per_image, first_batch_seconds
        and seconds_per_image_after_first_batch (detection only; the first call traces the graph).

    Raises:
        ValueError: iou_thresholds without 0.5, no images, or a model whose config.NUM_CLASSES is
            not the dataset's class count.
    """
    if 0.5 not in [round(float(t), 2) for t in iou_thresholds]:
        raise ValueError(f"iou_thresholds must include 0.5, got {list(iou_thresholds)}")
    if getattr(model.config, "NUM_CLASSES", None) is not None:  # stand-in models may not say
        check_num_classes(dataset, model.config)
    image_ids = list(dataset.image_ids if image_ids is None else image_ids)
    if not image_ids:
        raise ValueError("evaluate_dataset needs at least one image id")
    per_image: dict[str, list[float]] = {"box": [], "mask": []}
    per_image_50: dict[str, list[float]] = {"box": [], "mask": []}
    timer = DetectTimer()
    skipped = 0
    batch = max(1, int(model.config.BATCH_SIZE))
    progress = _progress(len(image_ids), verbose)
    for start in range(0, len(image_ids), batch):
        ids = image_ids[start:start + batch]
        images = [dataset.load_image(i) for i in ids]
        with timer.measure(len(images)):
            results = model.detect(images, verbose=0)
        for image_id, result in zip(ids, results):
            gt_masks, gt_class_ids = dataset.load_mask(image_id)
            if (gt_class_ids < 0).any():
                result = drop_crowd_detections(result, gt_masks[..., gt_class_ids < 0])
            keep = gt_class_ids > 0
            gt_masks, gt_class_ids = gt_masks[..., keep], gt_class_ids[keep]
            if gt_class_ids.size == 0:
                skipped += 1
                continue
            gt_boxes = extract_bboxes(gt_masks)
            # A model without mask head (MASK_HEAD = False) returns no "masks": boxes only.
            kinds = (("box", False), ("mask", True)) if "masks" in result else (("box", False),)
            for kind, use_masks in kinds:
                aps = [compute_ap(gt_boxes, gt_class_ids, gt_masks, result["rois"], result["class_ids"],
                                  result["scores"], result.get("masks"), iou_threshold=float(t),
                                  use_masks=use_masks)[0]
                       for t in iou_thresholds]
                per_image[kind].append(float(np.mean(aps)))
                per_image_50[kind].append(float(aps[[round(float(t), 2) for t in iou_thresholds].index(0.5)]))
        if progress is not None:
            progress.update(len(ids))
    if progress is not None:
        progress.close()
    evaluated = len(per_image["box"])
    masks = {"mask_mAP50": _mean(per_image_50["mask"]), "mask_mAP": _mean(per_image["mask"])}
    return {
        "box_mAP50": _mean(per_image_50["box"]),
        "box_mAP": _mean(per_image["box"]),
        **(masks if per_image["mask"] or not evaluated else {}),  # no mask keys for a box-only model
        "num_images": evaluated,
        "images_without_gt": skipped,
        **timer.summary(),
    }


def drop_crowd_detections(result: dict[str, np.ndarray], crowd_masks: np.ndarray,
                          overlap: float | None = None) -> dict[str, np.ndarray]:
    """`result` without the detections that lie on crowd regions.

    Args:
        result: a `detect` result (rois [N, 4], class_ids, scores, masks [H, W, N] when present).
        crowd_masks: [H, W, C] bool masks of the image's crowd regions.
        overlap: fraction of a detection inside the crowd regions from which it is dropped
            (default `CROWD_OVERLAP`, 0.5: COCO's crowd IoU, intersection over the detection's own
            area, at the 0.5 threshold). Measured on the mask, or on the box without masks.
    Returns:
        A new dict with the kept detections (the same arrays' rows).
    """
    overlap = CROWD_OVERLAP if overlap is None else overlap
    crowd = np.asarray(crowd_masks, bool).any(axis=-1)  # [H, W]
    count = len(result["class_ids"])
    if count == 0 or not crowd.any():
        return result
    if result.get("masks") is not None:
        masks = binary_masks(result["masks"])  # soft masks: detect's threshold
        area = masks.sum(axis=(0, 1)).astype(np.float64)
        inside = (masks & crowd[..., None]).sum(axis=(0, 1))
    else:
        boxes = np.asarray(result["rois"], int)
        area = np.array([(y2 - y1) * (x2 - x1) for y1, x1, y2, x2 in boxes], np.float64)
        inside = np.array([crowd[y1:y2, x1:x2].sum() for y1, x1, y2, x2 in boxes])
    keep = ~(inside >= overlap * np.maximum(area, 1.0))
    kept = {key: value[keep] for key, value in result.items() if key != "masks" and np.ndim(value) >= 1
            and len(value) == count}
    if result.get("masks") is not None:
        kept["masks"] = result["masks"][..., keep]
    return {**result, **kept}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _progress(total: int, verbose: int):
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluate", unit="image")
