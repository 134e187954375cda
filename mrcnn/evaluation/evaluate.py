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
from mrcnn.utils import extract_bboxes

DEFAULT_IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


def evaluate_dataset(model: Any, dataset: Any, image_ids: Sequence[int] | None = None,
                     iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS, verbose: int = 1
                     ) -> dict[str, float]:
    """Runs `model.detect` over images of `dataset` and averages per-image AP.

    Ground truth comes from `dataset.load_mask` at the original image resolution; crowd instances
    (negative class ids) are left out. Images without ground truth are skipped (their AP is
    undefined) and counted in ``images_without_gt``.

    Args:
        model: a MaskRCNN (anything with `detect(images)` and `config.BATCH_SIZE`).
        dataset: a prepared mrcnn Dataset.
        image_ids: which images (default: all).
        iou_thresholds: thresholds averaged for mAP@[.5:.95]; 0.5 must be among them.
        verbose: 1 shows a progress bar.
    Returns:
        dict with box_mAP50, box_mAP, mask_mAP50, mask_mAP (means over images), num_images,
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
            keep = gt_class_ids > 0
            gt_masks, gt_class_ids = gt_masks[..., keep], gt_class_ids[keep]
            if gt_class_ids.size == 0:
                skipped += 1
                continue
            gt_boxes = extract_bboxes(gt_masks)
            for kind, use_masks in (("box", False), ("mask", True)):
                aps = [compute_ap(gt_boxes, gt_class_ids, gt_masks, result["rois"], result["class_ids"],
                                  result["scores"], result["masks"], iou_threshold=float(t), use_masks=use_masks)[0]
                       for t in iou_thresholds]
                per_image[kind].append(float(np.mean(aps)))
                per_image_50[kind].append(float(aps[[round(float(t), 2) for t in iou_thresholds].index(0.5)]))
        if progress is not None:
            progress.update(len(ids))
    if progress is not None:
        progress.close()
    evaluated = len(per_image["box"])
    return {
        "box_mAP50": _mean(per_image_50["box"]),
        "box_mAP": _mean(per_image["box"]),
        "mask_mAP50": _mean(per_image_50["mask"]),
        "mask_mAP": _mean(per_image["mask"]),
        "num_images": evaluated,
        "images_without_gt": skipped,
        **timer.summary(),
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _progress(total: int, verbose: int):
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluate", unit="image")
