"""One evaluation protocol for every nucleus model: COCO mask AP (pycocotools, maxDets up to 1000),
the DSB2018 score, and the time per image.

Any model with ``detect(images) -> [dict(rois, class_ids, scores, masks)]`` is scored the same way
(MaskRCNN, `UNetDetector`, or either wrapped by `mrcnn.tiling.detect_tiled`). A result may carry
``labels`` ([H, W] int, instance k valued k + 1) instead of ``masks``, as
``detect_tiled(..., output="labels")`` and ``UNetDetector.detect(..., output="labels")`` give: large
fields with hundreds of nuclei are then scored without an [H, W, N] stack. Images are scored one
at a time (RLEs and DSB precisions kept, pixels dropped).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO

from mrcnn.evaluation.coco_eval import coco_eval_stats, encode_label_image, encode_masks, rle_to_json
from mrcnn.evaluation.dsb import dsb_precisions, summarize_precisions


def _rles(instances: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLE of each instance of [H, W, N] masks or an [H, W] int label image, JSON-ready."""
    encoded = encode_label_image(instances) if instances.ndim == 2 else encode_masks(instances)
    return [rle_to_json(rle) for rle in encoded]


def _gt_annotations(instances: np.ndarray, image_id: int) -> list[dict[str, Any]]:
    """COCO annotations (ids unset) of one image's ground-truth instances; empty ones left out."""
    annotations = []
    for rle in _rles(instances):
        area = float(mask_util.area(rle))
        if area == 0:
            continue
        annotations.append({"image_id": image_id, "category_id": 1, "iscrowd": 0, "segmentation": rle,
                            "area": area, "bbox": [float(v) for v in mask_util.toBbox(rle)]})
    return annotations


def _coco_from(sizes: Sequence[tuple[int, int]], annotations: list[dict[str, Any]]) -> COCO:
    images = [{"id": image_id, "height": int(h), "width": int(w)} for image_id, (h, w) in enumerate(sizes)]
    for k, annotation in enumerate(annotations):
        annotation["id"] = k + 1
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "nucleus"}]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return coco


def ground_truth_coco(gt_masks: Sequence[np.ndarray]) -> COCO:
    """A pycocotools COCO object of one category ("nucleus", id 1) from per-image [H, W, N] masks
    (or [H, W] int label images); COCO image id i is the i-th entry."""
    annotations = [a for image_id, masks in enumerate(gt_masks) for a in _gt_annotations(np.asarray(masks), image_id)]
    return _coco_from([np.shape(masks)[:2] for masks in gt_masks], annotations)


def _ground_truth(dataset: Any, image_id: int) -> np.ndarray:
    """The image's instances as a label image when the dataset has one (`load_label_mask`, as
    NucleusDataset does: no [H, W, N] stack), else `load_mask`'s masks."""
    if getattr(dataset, "load_label_mask", None) is not None:
        labels, _ = dataset.load_label_mask(image_id)
        return np.asarray(labels)
    masks, _ = dataset.load_mask(image_id)
    return np.asarray(masks, bool)


def _predicted(result: dict[str, np.ndarray], image_id: int) -> np.ndarray:
    """A detect result's instances: "labels" [H, W] int (`detect_tiled(output="labels")`,
    `UNetDetector.detect(output="labels")`) when present, else "masks" [H, W, N] bool."""
    if "labels" in result:
        labels = np.asarray(result["labels"])
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"image {image_id}: result 'labels' must be an [H, W] integer image, got "
                             f"{labels.shape} {labels.dtype}")
        if int(labels.max(initial=0)) > len(result["scores"]):
            raise ValueError(f"image {image_id}: result 'labels' go up to {int(labels.max())} but there are "
                             f"{len(result['scores'])} scores")
        return labels
    return np.asarray(result["masks"], bool)


def _keep_scoring(instances: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The instances whose `keep` is True (labels renumbered 1..K in order)."""
    if instances.ndim == 3:
        return instances[..., keep[:instances.shape[-1]]]
    lookup = np.zeros(len(keep) + 1, np.int32)
    lookup[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lookup[instances]


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
            around `mrcnn.tiling.detect_tiled`); called once per image and timed. A result holds
            "scores" [N] and "masks" [H, W, N] bool or "labels" [H, W] int (values 1..N).
        dataset: a prepared NucleusDataset (ground truth from `load_label_mask` when the dataset
            has it, else `load_mask`).
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

    # One image at a time: its instances go to RLEs and its DSB precisions are scored at once, so
    # memory holds one image's instances, not every image's [H, W, N] stacks until the end.
    sizes, gt_annotations, results, brightfield, precisions = [], [], [], [], []
    seconds = 0.0
    for index, image_id in enumerate(tqdm(image_ids, desc="evaluate", unit="image", disable=not verbose)):
        image = dataset.load_image(image_id)
        gt = _ground_truth(dataset, image_id)
        tic = time.perf_counter()
        result = detect([image])[0]
        seconds += time.perf_counter() - tic
        predicted = _predicted(result, image_id)
        if predicted.shape[:2] != gt.shape[:2]:
            raise ValueError(f"image {image_id}: predicted masks {predicted.shape} do not match the image "
                             f"{gt.shape[:2]}")
        sizes.append(gt.shape[:2])
        gt_annotations.extend(_gt_annotations(gt, index))
        brightfield.append(is_brightfield(image))
        scores = np.asarray(result["scores"], np.float64)
        precisions.append(dsb_precisions(gt, _keep_scoring(predicted, scores >= dsb_min_score)))
        for k, rle in enumerate(_rles(predicted)):
            results.append({"image_id": index, "category_id": 1, "score": float(scores[k]), "segmentation": rle})
    coco_gt = _coco_from(sizes, gt_annotations)
    stats = coco_eval_stats(coco_gt, results, "segm", image_ids=list(range(len(image_ids))), max_dets=max_dets)
    dsb = summarize_precisions(precisions)
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
