"""COCO-style evaluation (pycocotools COCOeval) of a model's detections on a COCO-format dataset.

    dataset = CocoDataset()
    coco = dataset.load_coco("/data/coco", "val", return_coco=True)
    dataset.prepare()
    metrics = evaluate_coco(model, dataset, coco, limit=500)
    metrics["segm"]["AP"], metrics["bbox"]["AP50"]

Results follow COCO's result format: one dict per detection with the COCO ``image_id``, the COCO
``category_id``, ``bbox`` ``[x, y, w, h]`` in pixels, ``score`` and ``segmentation`` as
compressed RLE (counts as str so the list can be written as JSON).

The 12 numbers per type are COCO's usual summary (AP over IoU .50:.95, AP50, AP75, AP by object
size, AR at 1 / 10 / `max_dets` detections per image, AR by size), computed here from COCOeval's
accumulated arrays rather than by `COCOeval.summarize()`: summarize() hard-codes 100 detections
for its first AP line, which gives -1 (or the wrong number) when `max_dets` is not 100, and
microscopy images with hundreds of nuclei need more than 100.

Keypoints (Keypoint R-CNN): ``eval_types`` may include ``"keypoints"``; results then carry
``"keypoints": [x1, y1, s1, ..., xK, yK, sK]`` in COCO's pixel-index convention (continuous
coordinates - 0.5, as detectron2) with the heatmap score as third value (COCOeval ignores it), and
COCOeval scores them by OKS with ``kpt_oks_sigmas`` (COCO person's when K = 17). Keypoints get
COCO's own keypoint summary: the 10 `KEYPOINT_STAT_NAMES` (AP, AP50, AP75, AP_medium, AP_large,
AR, AR50, AR75, AR_medium, AR_large; COCO has no "small" range for them) at 20 detections per image
(`KEYPOINT_MAX_DETS`, pycocotools' setting), so the numbers compare with published keypoint AP. `dataset_to_coco` turns any
`Dataset` (e.g. the synthetic stick figures) into COCO ground truth to score against.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn.data.dataset import check_num_classes
from mrcnn.evaluation.detect_timer import DetectTimer
from mrcnn.utils import extract_bboxes

EVAL_TYPES = ("bbox", "segm", "keypoints")
# COCO's keypoint summary (pycocotools' _summarizeKps): 10 numbers at 20 detections per image.
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "AP_medium", "AP_large", "AR", "AR50", "AR75", "AR_medium", "AR_large")
KEYPOINT_MAX_DETS = 20
DEFAULT_EVAL_TYPES = ("bbox", "segm")  # what evaluate_coco scores unless told otherwise
STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR_max", "AR_small", "AR_medium", "AR_large",
)


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLE of each instance mask, as ``pycocotools.mask.encode`` gives for it.

    ``encode`` reads the whole [H, W] image per instance (after a strided copy out of the [H, W, N]
    array); an instance only spans a few columns, and COCO's RLE runs down the columns, so here
    each mask's run lengths are counted over the columns it occupies (`uncompressed_rle_counts`),
    the all-zero columns before and after are added to the first and last zero run, and
    pycocotools compresses the counts (``frPyObjects``). Same strings, O(H x instance width) per
    instance.

    Args:
        masks: [H, W, N] masks (bool, or numbers where nonzero is inside).
    Returns:
        N dicts {"size": [H, W], "counts": bytes}: COCO's compressed RLE.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [H, W, N], got shape {masks.shape}")
    height, width, count = masks.shape
    masks = masks.astype(bool, copy=False)
    occupied = masks.any(axis=0)  # [W, N]: every instance's columns in one pass over the array
    encoded = []
    for k in range(count):
        columns = np.flatnonzero(occupied[:, k])
        if columns.size == 0:
            encoded.append(_encode_band(None, 0, height, width))
        else:
            x1, x2 = int(columns[0]), int(columns[-1]) + 1
            encoded.append(_encode_band(masks[:, x1:x2, k], x1, height, width))
    return encoded


def encode_label_image(labels: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLE of each instance of an [H, W] label image, without an [H, W, N] stack.

    Args:
        labels: [H, W] integer, 0 background, instance k on the pixels valued k + 1 (as
            `detect_tiled(output="labels")` gives).
    Returns:
        labels.max() dicts, as `encode_masks` gives for the masks ``labels == k + 1`` (an absent
        value gives an empty mask's RLE). Each instance costs O(H x its width).
    """
    import scipy.ndimage

    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an [H, W] integer label image, got {labels.shape} {labels.dtype}")
    height, width = labels.shape
    count = int(labels.max()) if labels.size else 0
    encoded = []
    for k, slices in enumerate(scipy.ndimage.find_objects(labels, max_label=count) if count > 0 else []):
        if slices is None:
            encoded.append(_encode_band(None, 0, height, width))
            continue
        x1, x2 = slices[1].start, slices[1].stop
        encoded.append(_encode_band(labels[:, x1:x2] == k + 1, x1, height, width))
    return encoded


def _encode_band(band: np.ndarray | None, x1: int, height: int, width: int) -> dict[str, Any]:
    """Compressed RLE of an [H, W] mask that is zero outside columns x1:x1 + band width.

    The band's own runs are counted; the all-zero columns before and after are added to its first
    and last zero runs. band None: an empty mask.
    """
    if band is None:
        counts = [height * width]
    else:
        x2 = x1 + band.shape[1]
        counts = uncompressed_rle_counts(band)
        counts[0] += x1 * height  # the empty columns before
        after = (width - x2) * height
        if not band[-1, -1]:  # the band ends with a zero run: the empty columns extend it
            counts[-1] += after
        elif after:
            counts.append(after)  # COCO's counts never end with an empty run
    return mask_util.frPyObjects({"size": [height, width], "counts": counts}, height, width)


def uncompressed_rle_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE of a [H, W] mask: run lengths over the column-major pixels, starting
    with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()  # Python ints
    return [0] + counts if flat.size and flat[0] else counts


def rle_to_json(rle: dict[str, Any]) -> dict[str, Any]:
    """A compressed RLE as JSON can hold it: counts as str, size as ints."""
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def build_coco_results(
    dataset: Any,
    image_ids: Sequence[int],
    rois: np.ndarray | Sequence[np.ndarray],
    class_ids: np.ndarray | Sequence[np.ndarray],
    scores: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray | None] | None = None,
    keypoints: np.ndarray | Sequence[np.ndarray | None] | None = None,
) -> list[dict[str, Any]]:
    """Converts detections to COCO result dicts.

    Either one image in matterport's call style (`image_ids` of length 1 and plain arrays), or
    lists of per-image arrays parallel to `image_ids`.

    Args:
        dataset: prepared Dataset whose images came from a COCO file (e.g. `CocoDataset`):
            ``image_info[i]["id"]`` is the COCO image id and classes map back to COCO category
            ids through ``get_source_class_id(class_id, image_info[i]["source"])``.
        image_ids: internal image ids.
        rois: [N, (y1, x1, y2, x2)] pixel boxes of the original image, y2/x2 exclusive (as
            `MaskRCNN.detect` returns them), per image.
        class_ids: [N] internal class ids (> 0), per image.
        scores: [N] scores, per image.
        masks: [H, W, N] bool masks at the original image size, per image; None (or None for an
            image) leaves ``segmentation`` out.
        keypoints: [N, K, 3] (x, y, score) per image in continuous pixel coordinates of the original
            image (as `MaskRCNN.detect` returns them); written as ``keypoints`` [x - 0.5, y - 0.5,
            score] * K. None leaves them out.

    Returns:
        list of dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score",
        "segmentation": {"size": [H, W], "counts": str}}``.

    Raises:
        ValueError: naming the image when the arrays disagree in length or masks do not have the
            image's size, or the class id that is not a class of the image's source.
    """
    image_ids = [int(i) for i in image_ids]
    if isinstance(rois, np.ndarray):
        # matterport style: a single image's arrays.
        if len(image_ids) != 1:
            raise ValueError(
                f"rois is one array but {len(image_ids)} image ids were given; pass lists of per-image arrays"
            )
        rois, class_ids, scores, masks, keypoints = [rois], [class_ids], [scores], [masks], [keypoints]
    if masks is None:
        masks = [None] * len(image_ids)
    if keypoints is None:
        keypoints = [None] * len(image_ids)
    lengths = {"rois": len(rois), "class_ids": len(class_ids), "scores": len(scores), "masks": len(masks),
               "keypoints": len(keypoints)}
    if any(n != len(image_ids) for n in lengths.values()):
        raise ValueError(f"need one entry per image id ({len(image_ids)} image ids), got lengths {lengths}")

    results = []
    for image_id, image_rois, image_class_ids, image_scores, image_masks, image_keypoints in zip(
        image_ids, rois, class_ids, scores, masks, keypoints
    ):
        info = dataset.image_info[image_id]
        where = f"image {image_id} (COCO id {info['id']})"
        image_rois = np.asarray(image_rois, dtype=np.float64).reshape(-1, 4)
        image_class_ids = np.asarray(image_class_ids).reshape(-1)
        image_scores = np.asarray(image_scores, dtype=np.float64).reshape(-1)
        n = len(image_rois)
        if len(image_class_ids) != n or len(image_scores) != n:
            raise ValueError(
                f"{where}: {n} rois but {len(image_class_ids)} class ids and {len(image_scores)} scores"
            )
        if image_masks is not None:
            image_masks = np.asarray(image_masks)
            expected = (info.get("height"), info.get("width"))
            if image_masks.ndim != 3 or image_masks.shape[-1] != n or (
                None not in expected and tuple(image_masks.shape[:2]) != tuple(int(v) for v in expected)
            ):
                raise ValueError(
                    f"{where}: masks of shape {image_masks.shape} do not fit {n} detections on a "
                    f"{expected[0]}x{expected[1]} image; expected [H, W, N] at the original size"
                )
        if image_keypoints is not None:
            image_keypoints = np.asarray(image_keypoints, dtype=np.float64)
            if image_keypoints.ndim != 3 or image_keypoints.shape[0] != n or image_keypoints.shape[2] != 3:
                raise ValueError(f"{where}: keypoints of shape {image_keypoints.shape} do not fit {n} detections; "
                                 "expected [N, K, 3] (x, y, score)")
        rles = encode_masks(image_masks) if image_masks is not None else None
        for k in range(n):
            class_id = int(image_class_ids[k])
            if class_id <= 0:
                raise ValueError(f"{where}: detection {k} has class id {class_id}; detections need ids > 0")
            y1, x1, y2, x2 = image_rois[k]
            result = {
                "image_id": info["id"],
                "category_id": dataset.get_source_class_id(class_id, info["source"]),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(image_scores[k]),
            }
            if image_masks is not None:
                result["segmentation"] = rle_to_json(rles[k])
            if image_keypoints is not None:
                points = image_keypoints[k].copy()
                points[:, :2] -= 0.5  # continuous coordinates -> COCO's pixel indices
                result["keypoints"] = [float(v) for v in points.reshape(-1)]
            results.append(result)
    return results


def evaluate_coco(
    model: Any,
    dataset: Any,
    coco: COCO,
    eval_types: Sequence[str] | str = DEFAULT_EVAL_TYPES,
    image_ids: Sequence[int] | None = None,
    limit: int = 0,
    max_dets: int = 100,
    results_path: str | Path | None = None,
    verbose: int = 1,
    kpt_oks_sigmas: Sequence[float] | None = None,
    keypoint_max_dets: int = KEYPOINT_MAX_DETS,
) -> dict[str, Any]:
    """Runs `model.detect` over a COCO-format dataset and scores it with pycocotools' COCOeval.

    Args:
        model: a MaskRCNN, or anything with ``detect(images, verbose=0)`` returning per image a
            dict with ``rois``, ``class_ids``, ``scores``, ``masks`` and ``config.BATCH_SIZE``.
        dataset: prepared Dataset loaded from `coco` (e.g. `CocoDataset.load_coco_json`).
        coco: the ground truth COCO object (``return_coco=True`` when loading).
        eval_types: any of "bbox", "segm", "keypoints" (needs a model with KEYPOINT_HEAD).
        image_ids: internal image ids to evaluate (default: all).
        limit: if > 0, only the first `limit` of those images.
        max_dets: detections per image and category that count for "bbox" and "segm" (COCOeval
            ``maxDets = [1, 10, max_dets]``, pycocotools' meaning); raise it above 100 for images with
            many instances (microscopy).
        results_path: where to write the results JSON (COCO result format), if given.
        verbose: 1 shows a progress bar and pycocotools' output plus a summary; 0 is silent.
        kpt_oks_sigmas: per-keypoint OKS sigmas for "keypoints" (default: COCO person's, K = 17).
        keypoint_max_dets: detections per image that count for "keypoints" (COCO's: 20).

    Returns:
        ``{"bbox": {name: float}, "segm": {name: float}}`` for the requested types with the
        names in `STAT_NAMES` ("keypoints": `KEYPOINT_STAT_NAMES`; -1 where the images hold no
        ground truth of that kind, as in COCO); ``per_class``: per type, each category's name ->
        {"AP", "AP50", "AP75"} (`per_class_ap`); plus ``seconds_per_image`` (time in `model.detect`), ``first_batch_seconds``
        (the first call, which traces the graph), ``seconds_per_image_after_first_batch`` (the
        steady rate; None with a single batch), ``num_images``,
        ``num_detections``, ``max_dets`` and, when the model found nothing, a ``note``.

    Raises:
        ValueError: for unknown eval types, max_dets < 10, no images, images that are not in
            `coco`, or a model whose config.NUM_CLASSES is not the dataset's class count.
    """
    eval_types = (eval_types,) if isinstance(eval_types, str) else tuple(eval_types)
    unknown = [t for t in eval_types if t not in EVAL_TYPES]
    if unknown or not eval_types:
        raise ValueError(f"eval_types must be a non-empty subset of {EVAL_TYPES}, got {eval_types}")
    if int(max_dets) < 10:
        raise ValueError(f"max_dets must be >= 10 (COCO reports AR at 1 and 10 detections too), got {max_dets}")
    if getattr(model.config, "NUM_CLASSES", None) is not None:  # stand-in models may not say
        check_num_classes(dataset, model.config)
    image_ids = [int(i) for i in (dataset.image_ids if image_ids is None else image_ids)]
    if limit:
        image_ids = image_ids[:limit]
    if not image_ids:
        raise ValueError("evaluate_coco needs at least one image")
    coco_image_ids = [dataset.image_info[i]["id"] for i in image_ids]
    missing = [c for c in coco_image_ids if c not in coco.imgs]
    if missing:
        raise ValueError(f"COCO image ids {missing[:10]} of the dataset are not in the given COCO ground truth")

    results: list[dict[str, Any]] = []
    timer = DetectTimer()
    batch = max(1, int(model.config.BATCH_SIZE))
    from tqdm.auto import tqdm

    with tqdm(total=len(image_ids), desc="evaluate_coco", unit="image", disable=not verbose) as progress:
        for start in range(0, len(image_ids), batch):
            ids = image_ids[start:start + batch]
            images = [dataset.load_image(i) for i in ids]
            with timer.measure(len(images)):
                detections = model.detect(images, verbose=0)
            results.extend(build_coco_results(
                dataset, ids,
                [r["rois"] for r in detections], [r["class_ids"] for r in detections],
                [r["scores"] for r in detections], [r.get("masks") for r in detections],
                [r.get("keypoints") for r in detections],
            ))
            progress.update(len(ids))
    if results_path is not None:
        Path(results_path).write_text(json.dumps(results))

    # Only the dataset's categories count: a dataset loaded with class_ids=[...] is not
    # blamed for missing the other categories of the file.
    source = dataset.image_info[image_ids[0]]["source"]
    cat_ids = sorted(
        dataset.get_source_class_id(c, source) for c in dataset.source_class_ids.get(source, []) if c != 0
    )
    metrics: dict[str, Any] = {"per_class": {}}
    for eval_type in eval_types:
        evaluator = run_coco_eval(
            coco, results, eval_type, coco_image_ids, max_dets=keypoint_max_dets if eval_type == "keypoints" else max_dets,
            cat_ids=cat_ids or None, verbose=verbose, kpt_oks_sigmas=kpt_oks_sigmas)
        metrics[eval_type] = summarize(evaluator, eval_type, verbose)
        metrics["per_class"][eval_type] = {coco.loadCats(cat)[0].get("name", str(cat)): values
                                           for cat, values in per_class_ap(evaluator).items()}
    metrics.update(timer.summary())
    metrics["num_images"] = len(image_ids)
    metrics["num_detections"] = len(results)
    metrics["max_dets"] = int(max_dets)
    if "keypoints" in eval_types:
        metrics["keypoint_max_dets"] = int(keypoint_max_dets)
    if not results:
        metrics["note"] = (
            "the model returned no detections: AP and AR are 0 wherever there is ground truth "
            "(COCO.loadRes cannot load an empty result list, so an empty result set was scored)"
        )
    return metrics


def coco_eval_stats(coco: COCO, results: list[dict[str, Any]], eval_type: str, **options: Any) -> dict[str, float]:
    """Scores COCO results against ground truth with COCOeval: `run_coco_eval`, then `summarize`.

    Args:
        coco, results, eval_type: as `run_coco_eval`.
        **options: `run_coco_eval`'s keyword arguments (image_ids, max_dets, cat_ids, verbose,
            kpt_oks_sigmas); verbose 1 also prints the summary lines.

    Returns:
        bbox/segm: dict of the 12 `STAT_NAMES`; keypoints: the 10 `KEYPOINT_STAT_NAMES` (COCO's
        keypoint summary). Floats; -1 where no ground truth exists.
    """
    evaluator = run_coco_eval(coco, results, eval_type, **options)
    return summarize(evaluator, eval_type, options.get("verbose", 0))


def _sorted_coco_ids(image_ids: Sequence[int | str]) -> list[int | str]:
    """COCO image ids as the ground truth's index holds them, sorted: numbers as plain ints (numpy
    integers included), strings unchanged (COCO-format files with ids such as "img10" load too)."""
    ids = [i if isinstance(i, str) else int(i) for i in image_ids]
    return sorted(ids, key=lambda i: (isinstance(i, str), i))


def run_coco_eval(
    coco: COCO,
    results: list[dict[str, Any]],
    eval_type: str,
    image_ids: Sequence[int] | None = None,
    max_dets: int | None = None,
    cat_ids: Sequence[int] | None = None,
    verbose: int = 0,
    kpt_oks_sigmas: Sequence[float] | None = None,
) -> COCOeval:
    """Scores COCO results against ground truth: the evaluated and accumulated COCOeval, for the
    summary (`summarize`, `coco_eval_stats`) and numbers beyond it (`per_class_ap`).

    Args:
        coco: ground truth.
        results: COCO result dicts (as `build_coco_results` makes); may be empty.
        eval_type: "bbox", "segm" or "keypoints" (OKS).
        image_ids: COCO image ids to evaluate (default: all of `coco`).
        max_dets: bbox/segm: COCOeval ``maxDets = [1, 10, max_dets]`` (default 100);
            keypoints: ``maxDets = [max_dets]`` (default 20, `KEYPOINT_MAX_DETS`).
        cat_ids: COCO category ids to evaluate (default: all of `coco`).
        verbose: 1 lets pycocotools print.
        kpt_oks_sigmas: K per-keypoint OKS sigmas for "keypoints"; default COCO person's (K = 17).

    Raises:
        ValueError: for an unknown eval type, or results without the geometry it scores.
    """
    if eval_type not in EVAL_TYPES:
        raise ValueError(f"eval_type must be one of {EVAL_TYPES}, got {eval_type!r}")
    # Each type sees only its own geometry: loadRes derives a detection's area from "bbox" when
    # present, and segm needs the mask area (COCO's small/medium/large split uses it).
    # Keypoint results keep neither: loadRes then takes area and box from the keypoints' extent.
    drop = {"bbox": ("segmentation", "keypoints"), "segm": ("bbox", "keypoints"),
            "keypoints": ("bbox", "segmentation")}[eval_type]
    typed = [{k: v for k, v in r.items() if k not in drop} for r in results]
    if eval_type == "segm" and any("segmentation" not in r for r in typed):
        raise ValueError("segm evaluation needs a 'segmentation' in every result (the model returned no masks)")
    if eval_type == "keypoints" and any("keypoints" not in r for r in typed):
        raise ValueError("keypoints evaluation needs 'keypoints' in every result (the model has no keypoint head)")
    output = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with output:
        detections = coco.loadRes(typed) if typed else _empty_results(coco)
        evaluator = COCOeval(coco, detections, iouType=eval_type)
        if eval_type == "keypoints":
            evaluator.params.kpt_oks_sigmas = _oks_sigmas(coco, kpt_oks_sigmas)
        if image_ids is not None:
            evaluator.params.imgIds = _sorted_coco_ids(image_ids)
        if cat_ids is not None:
            evaluator.params.catIds = sorted(int(c) for c in cat_ids)
        if eval_type == "keypoints":
            evaluator.params.maxDets = [int(max_dets or KEYPOINT_MAX_DETS)]
        else:
            evaluator.params.maxDets = [1, 10, int(max_dets or 100)]
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def summarize(evaluator: COCOeval, eval_type: str, verbose: int = 0) -> dict[str, float]:
    """The summary numbers of an accumulated COCOeval (`coco_eval_stats`' return value); also
    sets ``evaluator.stats`` as COCOeval.summarize() would."""
    if eval_type == "keypoints":
        stats = summarize_keypoint_eval(evaluator)
        names = KEYPOINT_STAT_NAMES
    else:
        stats = summarize_coco_eval(evaluator)
        names = STAT_NAMES
    evaluator.stats = np.array([stats[name] for name in names])
    if verbose:
        print(format_stats(stats, eval_type, evaluator.params))
    return stats


def per_class_ap(evaluator: COCOeval) -> dict[int, dict[str, float]]:
    """AP, AP50 and AP75 of each category of an accumulated COCOeval (all areas, the last maxDets).

    Returns:
        {COCO category id: {"AP", "AP50", "AP75"}}; -1 for a category without ground truth.
    """
    params = evaluator.params
    precision = evaluator.eval["precision"][:, :, :, params.areaRngLbl.index("all"), -1]  # [T, R, K]
    iou_index = {round(float(t), 2): i for i, t in enumerate(params.iouThrs)}

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(np.mean(valid)) if valid.size else -1.0

    return {int(cat): {"AP": mean(precision[:, :, k]), "AP50": mean(precision[iou_index[0.5], :, k]),
                       "AP75": mean(precision[iou_index[0.75], :, k])}
            for k, cat in enumerate(params.catIds)}


def summarize_coco_eval(evaluator: COCOeval) -> dict[str, float]:
    """The 12 COCO summary numbers of an accumulated COCOeval, at ``params.maxDets`` (see module doc).

    AP lines and the last four AR lines use ``maxDets[-1]``; AR1 / AR10 use ``maxDets[0]`` /
    ``maxDets[1]``. A number is the mean over the entries that are not -1 (COCO's marker for "no
    ground truth"), or -1 when none is left.
    """
    params = evaluator.params
    precision = evaluator.eval["precision"]  # [T iou thresholds, R recall points, K cats, A areas, M maxDets]
    recall = evaluator.eval["recall"]  # [T, K, A, M]
    area = {label: i for i, label in enumerate(params.areaRngLbl)}
    iou_index = {round(float(t), 2): i for i, t in enumerate(params.iouThrs)}

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(np.mean(valid)) if valid.size else -1.0

    def ap(area_label: str = "all", iou: float | None = None) -> float:
        if area_label not in area:  # keypoints have no "small" range
            return -1.0
        values = precision[..., area[area_label], -1]
        return mean(values if iou is None else values[iou_index[iou]])

    def ar(area_label: str = "all", m: int = -1) -> float:
        if area_label not in area:
            return -1.0
        return mean(recall[..., area[area_label], m])

    return {
        "AP": ap(), "AP50": ap(iou=0.5), "AP75": ap(iou=0.75),
        "AP_small": ap("small"), "AP_medium": ap("medium"), "AP_large": ap("large"),
        "AR1": ar(m=0), "AR10": ar(m=1), "AR_max": ar(),
        "AR_small": ar("small"), "AR_medium": ar("medium"), "AR_large": ar("large"),
    }


def summarize_keypoint_eval(evaluator: COCOeval) -> dict[str, float]:
    """COCO's 10 keypoint summary numbers (pycocotools' ``_summarizeKps``) of an accumulated
    COCOeval, at ``params.maxDets[-1]``; -1 where no entry has ground truth."""
    params = evaluator.params
    precision = evaluator.eval["precision"][..., -1]  # [T, R, K, A] at the last maxDets
    recall = evaluator.eval["recall"][..., -1]  # [T, K, A]
    area = {label: i for i, label in enumerate(params.areaRngLbl)}
    iou_index = {round(float(t), 2): i for i, t in enumerate(params.iouThrs)}

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(np.mean(valid)) if valid.size else -1.0

    def pick(values: np.ndarray, area_label: str, iou: float | None) -> float:
        values = values[..., area[area_label]]
        return mean(values if iou is None else values[iou_index[iou]])

    return {
        "AP": pick(precision, "all", None), "AP50": pick(precision, "all", 0.5), "AP75": pick(precision, "all", 0.75),
        "AP_medium": pick(precision, "medium", None), "AP_large": pick(precision, "large", None),
        "AR": pick(recall, "all", None), "AR50": pick(recall, "all", 0.5), "AR75": pick(recall, "all", 0.75),
        "AR_medium": pick(recall, "medium", None), "AR_large": pick(recall, "large", None),
    }


def format_stats(stats: dict[str, float], eval_type: str, params: Any) -> str:
    """COCO's summary lines (12; keypoints: 10) with the real maxDets of each line."""
    thresholds = f"{params.iouThrs[0]:0.2f}:{params.iouThrs[-1]:0.2f}"
    lines = [f"COCO {eval_type}:"]
    if eval_type == "keypoints":
        rows = [(name, "0.50" if name.endswith("50") else "0.75" if name.endswith("75") else thresholds,
                 name.split("_")[1] if "_" in name else "all", -1) for name in KEYPOINT_STAT_NAMES]
    else:
        rows = [
            ("AP", thresholds, "all", 2), ("AP50", "0.50", "all", 2), ("AP75", "0.75", "all", 2),
            ("AP_small", thresholds, "small", 2), ("AP_medium", thresholds, "medium", 2),
            ("AP_large", thresholds, "large", 2), ("AR1", thresholds, "all", 0), ("AR10", thresholds, "all", 1),
            ("AR_max", thresholds, "all", 2), ("AR_small", thresholds, "small", 2),
            ("AR_medium", thresholds, "medium", 2), ("AR_large", thresholds, "large", 2),
        ]
    for name, iou, area, m in rows:
        title = "Average Precision  (AP)" if name.startswith("AP") else "Average Recall     (AR)"
        lines.append(f" {title} @[ IoU={iou:<9} | area={area:>6s} | maxDets={params.maxDets[m]:>3d} ] = {stats[name]:0.3f}")
    return "\n".join(lines)


def _empty_results(coco: COCO) -> COCO:
    """A results COCO object without detections (COCO.loadRes rejects an empty list)."""
    empty = COCO()
    empty.dataset = {
        "images": list(coco.dataset.get("images", [])),
        "categories": copy.deepcopy(coco.dataset.get("categories", [])),
        "annotations": [],
    }
    empty.createIndex()
    return empty


def _oks_sigmas(coco: COCO, sigmas: Sequence[float] | None) -> np.ndarray:
    """Per-keypoint OKS sigmas, checked against the number of keypoints in the ground truth."""
    num_keypoints = next((len(a["keypoints"]) // 3 for a in coco.dataset.get("annotations", []) if a.get("keypoints")),
                         None)
    if sigmas is None:
        from mrcnn.data.coco import COCO_PERSON_OKS_SIGMAS

        if num_keypoints not in (None, len(COCO_PERSON_OKS_SIGMAS)):
            raise ValueError(f"the ground truth has {num_keypoints} keypoints per instance: pass kpt_oks_sigmas "
                             f"(COCO person's {len(COCO_PERSON_OKS_SIGMAS)} sigmas do not fit)")
        sigmas = COCO_PERSON_OKS_SIGMAS
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if num_keypoints is not None and sigmas.size != num_keypoints:
        raise ValueError(f"kpt_oks_sigmas has {sigmas.size} values but the ground truth has {num_keypoints} keypoints")
    return sigmas


def dataset_to_coco(
    dataset: Any,
    image_ids: Sequence[int] | None = None,
    with_keypoints: bool = False,
    keypoint_names: Sequence[str] | None = None,
    skeleton: Sequence[Sequence[int]] | None = None,
) -> COCO:
    """COCO ground truth (in memory) from any prepared `Dataset`, to score detections with COCOeval.

    Ids and categories follow `build_coco_results`: image id ``image_info[i]["id"]`` (avoid 0 in
    your source ids; COCO tools treat id 0 as "none"), category id = the class's id in its source.
    Annotations: compressed-RLE ``segmentation`` of each `load_mask` instance, ``area`` = its pixel
    count, ``bbox`` [x, y, w, h] of its pixels, ``iscrowd`` for negative class ids, and with
    `with_keypoints` COCO ``keypoints`` ([x - 0.5, y - 0.5, v] * K; unlabelled ones 0, 0, 0) and
    ``num_keypoints`` from `load_keypoints`.

    Args:
        dataset: prepared Dataset.
        image_ids: internal image ids (default: all).
        with_keypoints: also read `load_keypoints`.
        keypoint_names, skeleton: written into the categories (skeleton 0-based here, 1-based in
            the file as COCO's).

    Returns:
        A pycocotools COCO object with its index built.
    """
    from mrcnn.data.keypoints import check_keypoints

    image_ids = [int(i) for i in (dataset.image_ids if image_ids is None else image_ids)]
    images, annotations, categories = [], [], {}
    for image_id in image_ids:
        info = dataset.image_info[image_id]
        masks, class_ids = dataset.load_mask(image_id)
        masks = np.asarray(masks, dtype=bool)
        height, width = masks.shape[:2]
        images.append({"id": info["id"], "height": int(height), "width": int(width)})
        points = None
        if with_keypoints:
            raw = dataset.load_keypoints(image_id)
            points = check_keypoints(raw, masks.shape[-1], np.shape(raw)[1] if np.ndim(raw) == 3 else 0,
                                     where=f"image {image_id} ({dataset.image_reference(image_id)})")
        boxes = extract_bboxes(masks)
        rles = encode_masks(masks)
        for n, class_id in enumerate(np.asarray(class_ids).reshape(-1)):
            category = dataset.get_source_class_id(abs(int(class_id)), info["source"])
            categories.setdefault(category, {"id": category, "name": dataset.class_names[abs(int(class_id))]})
            rle = rles[n]
            y1, x1, y2, x2 = (int(v) for v in boxes[n])
            annotation = {
                "id": len(annotations) + 1, "image_id": info["id"], "category_id": category,
                "segmentation": rle_to_json(rle),
                "area": float(mask_util.area(rle)), "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": int(class_id < 0),
            }
            if points is not None:
                kp = points[n].astype(np.float64)
                labelled = kp[:, 2] > 0
                kp[:, :2] -= 0.5
                kp[~labelled] = 0.0  # COCO writes unlabelled keypoints as 0, 0, 0
                annotation["keypoints"] = [float(v) for v in kp.reshape(-1)]
                annotation["num_keypoints"] = int(labelled.sum())
            annotations.append(annotation)
    for category in categories.values():
        if keypoint_names is not None:
            category["keypoints"] = [str(name) for name in keypoint_names]
        if skeleton is not None:
            category["skeleton"] = [[int(a) + 1, int(b) + 1] for a, b in skeleton]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": sorted(categories.values(),
                                                                                        key=lambda c: c["id"])}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
