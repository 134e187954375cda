"""Benchmark: host-side (numpy) work after the inference graph, for many instances.

1. **Pasting masks** (`detect`'s last step). `MaskRCNN.detect` returns matterport's format, masks
   [H, W, N] of the original image. Filling it one full [H, W] plane per instance
   (`utils.unmold_mask` for each, copied into the strided output) costs O(H * W) per instance;
   `utils.paste_masks` writes each box's pixels only, O(box area). Both run on the same random
   masks and boxes (same outputs, checked): 100 detections at 512 and 1024 px, and 300
   nucleus-sized instances at 1024 px, as bool masks and as `soft_masks` (float32).
2. **Tiled inference's candidates** (`mrcnn.tiling`): cutting one tile's detections ([h, w, N]
   masks) to their boxes. Scanning each instance's strided [h, w] plane for its extent against
   finding every extent in two passes over the whole array (what `detect_tiled` does), 300
   nuclei in a 512 px tile.
3. **COCO RLE encoding** (`mrcnn.evaluation.coco_eval`: the results JSON and `dataset_to_coco`):
   `encode_masks` (run lengths over each instance's columns, compressed by pycocotools) against
   ``pycocotools.mask.encode`` on each instance's full [H, W] mask, same strings (checked), 100
   detections and 300 nuclei at 1024 px.
4. **`visualize.display_instances`** with 300 disk-shaped nuclei on a 1024 px image: the whole
   call (saving a PNG), and the part that changed: blending and tracing each mask inside its own
   box against over the whole image (same image and outlines: tests/test_visualize.py).

Writes bench/results/postprocess.json (wall ms, minimum of --repeats).

    python bench/postprocess.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util

from mrcnn import tiling, utils, visualize
from mrcnn.evaluation.coco_eval import encode_masks

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from report import write_report  # noqa: E402
from timing import repeat_times  # noqa: E402

# (instances, image side px, largest box side px)
CASES = [(100, 512, 100), (100, 1024, 200), (300, 1024, 40)]


def _min_seconds(step: Callable[[], object], repeats: int) -> float:
    return min(repeat_times(step, repeats))


def random_instances(count: int, side: int, box_side: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` boxes [N, 4] of 0.3-1.0 x `box_side` px inside a `side` px image, and [N, 28, 28]
    random mask-head outputs for them (the same for every run: seed 0)."""
    rng = np.random.default_rng(0)
    sizes = (rng.uniform(0.3, 1.0, (count, 2)) * box_side).astype(np.int32) + 1
    corners = (rng.random((count, 2)) * (side - sizes)).astype(np.int32)
    return np.concatenate([corners, corners + sizes], axis=1), rng.random((count, 28, 28)).astype(np.float32)


def plane_per_instance(masks: np.ndarray, boxes: np.ndarray, side: int, soft: bool) -> np.ndarray:
    """The O(H * W)-per-instance way: one full plane per instance, copied into [H, W, N]."""
    full = np.zeros((side, side, len(boxes)), dtype=np.float32 if soft else bool)
    paste = utils.unmold_soft_mask if soft else utils.unmold_mask
    for n in range(len(boxes)):
        full[:, :, n] = paste(masks[n], boxes[n], (side, side))
    return full


def bench_case(count: int, side: int, box_side: int, soft: bool, repeats: int) -> dict:
    boxes, masks = random_instances(count, side, box_side)
    np.testing.assert_array_equal(utils.paste_masks(masks, boxes, (side, side), soft=soft),
                                  plane_per_instance(masks, boxes, side, soft))
    box_wise = _min_seconds(lambda: utils.paste_masks(masks, boxes, (side, side), soft=soft), repeats)
    per_plane = _min_seconds(lambda: plane_per_instance(masks, boxes, side, soft), repeats)
    return {"instances": count, "image_px": side, "max_box_px": box_side, "soft": soft,
            "paste_masks_ms": round(box_wise * 1e3, 1), "plane_per_instance_ms": round(per_plane * 1e3, 1),
            "speedup": round(per_plane / box_wise, 1)}


def extents_per_instance(masks: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The O(h * w)-strided-scan-per-instance way to find each mask's box."""
    boxes = []
    for k in range(masks.shape[-1]):
        mask = masks[:, :, k]
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes.append((int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1))
    return boxes


def bench_tile_candidates(count: int, side: int, box_side: int, repeats: int) -> dict:
    boxes, small = random_instances(count, side, box_side)
    masks = utils.paste_masks(small, boxes, (side, side))
    # C order, as detect returns it (fancy indexing would give each instance its own contiguous plane).
    masks = np.ascontiguousarray(masks[:, :, masks.any(axis=(0, 1))])
    result = {"rois": np.zeros((masks.shape[-1], 4), np.int32), "class_ids": np.ones(masks.shape[-1], np.int32),
              "scores": np.ones(masks.shape[-1], np.float32), "masks": masks}

    def candidates() -> tiling._Candidates:
        found = tiling._Candidates()
        found.add_tile(result, 0, 0, side, side, 2 * side, 2 * side)
        return found

    assert [tuple(int(v) for v in b) for b in candidates().boxes] == extents_per_instance(masks)
    two_passes = _min_seconds(candidates, repeats)
    per_instance = _min_seconds(lambda: extents_per_instance(masks), repeats)
    return {"instances": int(masks.shape[-1]), "tile_px": side, "max_box_px": box_side,
            "add_tile_ms": round(two_passes * 1e3, 1), "scan_per_instance_ms": round(per_instance * 1e3, 1),
            "speedup": round(per_instance / two_passes, 1)}


def bench_encode(count: int, side: int, box_side: int, repeats: int) -> dict:
    boxes, small = random_instances(count, side, box_side)
    masks = utils.paste_masks(small, boxes, (side, side))

    def each_full_mask() -> list[dict]:
        return [mask_util.encode(np.asfortranarray(masks[:, :, k].astype(np.uint8))) for k in range(count)]

    assert [r["counts"] for r in encode_masks(masks)] == [r["counts"] for r in each_full_mask()]
    column_runs = _min_seconds(lambda: encode_masks(masks), repeats)
    full_masks = _min_seconds(each_full_mask, repeats)
    return {"instances": count, "image_px": side, "max_box_px": box_side,
            "encode_masks_ms": round(column_runs * 1e3, 1), "pycocotools_per_mask_ms": round(full_masks * 1e3, 1),
            "speedup": round(full_masks / column_runs, 1)}


def bench_display(count: int, side: int, repeats: int) -> dict:
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    centres = rng.uniform(20, side - 20, (count, 2))
    radii = rng.uniform(5, 15, count)
    yy, xx = np.mgrid[:side, :side]
    masks = np.zeros((side, side, count), bool)
    for k, ((cy, cx), r) in enumerate(zip(centres, radii)):
        y1, y2, x1, x2 = int(cy - r), int(cy + r) + 1, int(cx - r), int(cx + r) + 1
        masks[y1:y2, x1:x2, k] = (yy[y1:y2, x1:x2] - cy) ** 2 + (xx[y1:y2, x1:x2] - cx) ** 2 <= r * r
    boxes = utils.extract_bboxes(masks)
    image = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    colors = visualize.random_colors(count, seed=0)

    def whole_call() -> None:
        with tempfile.TemporaryDirectory() as folder:
            visualize.display_instances(image, boxes, masks, np.ones(count, np.int32), ["bg", "nucleus"],
                                        scores=np.ones(count), save_path=f"{folder}/figure.png")

    def over_whole_image() -> None:
        blended = image.astype(np.float64)
        for k in range(count):
            blended = visualize.apply_mask(blended, masks[..., k], colors[k])
            visualize._mask_outlines(masks[..., k])

    def in_boxes() -> None:
        blended = image.astype(np.float64)
        for k, (y1, x1, y2, x2) in enumerate(boxes):
            blended[y1:y2, x1:x2] = visualize.apply_mask(blended[y1:y2, x1:x2], masks[y1:y2, x1:x2, k], colors[k])
            visualize._mask_outlines(masks[y1:y2, x1:x2, k])

    boxed = _min_seconds(in_boxes, repeats)
    whole = _min_seconds(over_whole_image, repeats)
    return {"instances": count, "image_px": side, "display_instances_s": round(_min_seconds(whole_call, 1), 2),
            "blend_and_outline_in_boxes_ms": round(boxed * 1e3, 1),
            "blend_and_outline_over_image_ms": round(whole * 1e3, 1), "speedup": round(whole / boxed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "postprocess.json"))
    args = parser.parse_args()
    rows = []
    for count, side, box_side in CASES:
        for soft in (False, True):
            row = bench_case(count, side, box_side, soft, args.repeats)
            print(json.dumps(row), flush=True)
            rows.append(row)
    tile = bench_tile_candidates(300, 512, 40, args.repeats)
    print(json.dumps(tile), flush=True)
    encode = [bench_encode(count, side, box_side, args.repeats) for count, side, box_side in CASES[1:]]
    for row in encode:
        print(json.dumps(row), flush=True)
    display = bench_display(300, 1024, args.repeats)
    print(json.dumps(display), flush=True)
    report = {"benchmark": "host-side post-processing, wall ms, minimum of repeats: pasting N 28x28 masks into "
                           "[H, W, N] (detect's unmolding); cutting a tile's masks to their boxes (tiled inference); "
                           "COCO RLE encoding of [H, W, N] masks; display_instances",
              "machine": machine.describe(),
              "numpy": np.__version__, "paste_masks": rows, "tile_candidates": tile, "coco_rle": encode,
              "display_instances": display}
    write_report(args.out, report)


if __name__ == "__main__":
    main()
