"""One evaluation protocol for every nucleus model: COCO mask AP (pycocotools, maxDets up to 1000),
the DSB2018 score, and the time per image.

Any model with ``detect(images) -> [dict(rois, class_ids, scores, masks)]`` is scored the same way
(MaskRCNN, `UNetDetector`, or either wrapped by `mrcnn.tiling.detect_tiled`).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from mrcnn.evaluation.coco_eval import coco_eval_stats, encode_masks, rle_to_json
from mrcnn.evaluation.dsb import dsb_score_dataset
from mrcnn.utils import extract_bboxes


def _rles(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLE of each of [H, W, N] masks, as JSON-ready dicts (counts as str)."""
    return [rle_to_json(rle) for rle in encode_masks(masks)]


def ground_truth_coco(gt_masks: Sequence[np.ndarray]) -> COCO:
    """A pycocotools COCO object of one category ("nucleus", id 1) from per-image [H, W, N] masks;
    COCO image id i is the i-th entry."""
    images, annotations = [], []
    for image_id, masks in enumerate(gt_masks):
        images.append({"id": image_id, "height": int(masks.shape[0]), "width": int(masks.shape[1])})
        masks = np.asarray(masks, bool)
        boxes, areas = extract_bboxes(masks), masks.sum(axis=(0, 1))
        for rle, (y1, x1, y2, x2), area in zip(_rles(masks), boxes, areas):
            if area == 0:
                continue
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "segmentation": rle, "area": float(area),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            })
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "nucleus"}]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return coco


def is_brightfield(image: np.ndarray) -> bool:
    """True for a light-background image (stained tissue, brightfield), False for fluorescence
    (dark background): the median pixel is the background."""
    return float(np.median(np.asarray(image)[..., :3].mean(axis=-1))) > 100.0


def evaluate_nuclei(detect: Callable[[list[np.ndarray]], list[dict[str, np.ndarray]]], dataset: Any,
                    image_ids: Sequence[int] | None = None, max_dets: int = 1000, verbose: int = 1,
                    dsb_min_score: float = 0.5) -> dict[str, Any]:
    """Scores a detector on images of a NucleusDataset at native scale.

    Args:
        detect: ``detect(list_of_one_image) -> [result]`` (e.g. ``model.detect`` or a lambda
            around `mrcnn.tiling.detect_tiled`); called once per image and timed.
        dataset: a prepared NucleusDataset (ground truth from `load_mask`).
        image_ids: which images (default all).
        max_dets: COCOeval maxDets (DSB2018 has up to 375 nuclei per image).
        verbose: 1 shows a progress bar.
        dsb_min_score: the DSB2018 score takes the detections scoring at least this (it counts
            every false positive, so a ranked list down to score 0, which COCO AP wants, would
            sink it); COCO AP takes them all.

    Returns:
        ``{"mask_AP", "mask_AP50", "mask_AP75", "mask_AP_small", "mask_AP_medium", "mask_AP_large",
        "mask_AR_max", "dsb_score", "seconds_per_image", "num_images", "num_detections",
        "per_image_dsb", "by_kind"}``: COCO numbers from pycocotools' segm evaluation (small:
        nuclei under 32 x 32 px of area); ``by_kind`` holds, for "fluorescence" and "brightfield"
        images (`is_brightfield`), their count, mask AP / AP50 / AP75 and DSB score (-1 without images).
    """
    if not isinstance(max_dets, (int, np.integer)) or max_dets < 10:
        raise ValueError(f"max_dets must be an int >= 10 (COCO also reports recall at 1 and 10), got {max_dets!r}")
    image_ids = [int(i) for i in (dataset.image_ids if image_ids is None else image_ids)]
    if not image_ids:
        raise ValueError("evaluate_nuclei needs at least one image")
    from tqdm.auto import tqdm

    gts, preds, results, brightfield = [], [], [], []
    seconds = 0.0
    for index, image_id in enumerate(tqdm(image_ids, desc="evaluate", unit="image", disable=not verbose)):
        image = dataset.load_image(image_id)
        gt, _ = dataset.load_mask(image_id)
        tic = time.perf_counter()
        result = detect([image])[0]
        seconds += time.perf_counter() - tic
        masks = np.asarray(result["masks"], bool)
        if masks.shape[:2] != gt.shape[:2]:
            raise ValueError(f"image {image_id}: predicted masks {masks.shape} do not match the image {gt.shape[:2]}")
        gts.append(gt)
        brightfield.append(is_brightfield(image))
        keep = np.asarray(result["scores"], np.float64) >= dsb_min_score
        preds.append(masks[..., keep])
        for k, rle in enumerate(_rles(masks)):
            results.append({"image_id": index, "category_id": 1, "score": float(result["scores"][k]),
                            "segmentation": rle})
    coco_gt = ground_truth_coco(gts)
    stats = coco_eval_stats(coco_gt, results, "segm", image_ids=list(range(len(image_ids))), max_dets=max_dets)
    dsb = dsb_score_dataset(list(zip(gts, preds)))
    by_kind = {}
    for kind, flag in (("fluorescence", False), ("brightfield", True)):
        members = [index for index, bright in enumerate(brightfield) if bright == flag]
        entry: dict[str, Any] = {"num_images": len(members)}
        if members:
            kind_results = [r for r in results if brightfield[r["image_id"]] == flag]
            kind_stats = coco_eval_stats(coco_gt, kind_results, "segm", image_ids=members, max_dets=max_dets)
            entry.update(mask_AP=kind_stats["AP"], mask_AP50=kind_stats["AP50"], mask_AP75=kind_stats["AP75"],
                         dsb_score=float(np.mean([dsb["per_image"][index] for index in members])))
        else:
            entry.update(mask_AP=-1.0, mask_AP50=-1.0, mask_AP75=-1.0, dsb_score=-1.0)
        by_kind[kind] = entry
    return {
        "mask_AP": stats["AP"], "mask_AP50": stats["AP50"], "mask_AP75": stats["AP75"],
        "mask_AP_small": stats["AP_small"], "mask_AP_medium": stats["AP_medium"], "mask_AP_large": stats["AP_large"],
        "mask_AR_max": stats["AR_max"],
        "dsb_score": dsb["dsb_score"], "seconds_per_image": seconds / len(image_ids),
        "num_images": len(image_ids), "num_detections": len(results), "max_dets": int(max_dets),
        "dsb_min_score": float(dsb_min_score),
        "per_image_dsb": dsb["per_image"], "by_kind": by_kind,
    }
