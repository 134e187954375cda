"""Benchmark: pasting the mask head's 28x28 masks into full-size [H, W, N] masks (`detect`'s last step).

`MaskRCNN.detect` returns matterport's format, masks [H, W, N] of the original image. Filling it
one full [H, W] plane per instance (`utils.unmold_mask` for each, copied into the strided output)
costs O(H * W) per instance; `utils.paste_masks` writes each box's pixels only, O(box area). This
times both on the same random masks and boxes (same outputs, checked), for the cases that matter:
100 detections at 512 and 1024 px, and 300 nucleus-sized instances at 1024 px. Both bool masks
and `soft_masks` (float32). Writes bench/results/unmold.json (minimum of --repeats, wall seconds).

    python bench/unmold.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mrcnn import utils

# (instances, image side px, largest box side px)
CASES = [(100, 512, 100), (100, 1024, 200), (300, 1024, 40)]


def _min_seconds(step: Callable[[], np.ndarray], repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        step()
        times.append(time.perf_counter() - tic)
    return min(times)


def plane_per_instance(masks: np.ndarray, boxes: np.ndarray, side: int, soft: bool) -> np.ndarray:
    """The O(H * W)-per-instance way: one full plane per instance, copied into [H, W, N]."""
    full = np.zeros((side, side, len(boxes)), dtype=np.float32 if soft else bool)
    paste = utils.unmold_soft_mask if soft else utils.unmold_mask
    for n in range(len(boxes)):
        full[:, :, n] = paste(masks[n], boxes[n], (side, side))
    return full


def bench_case(count: int, side: int, box_side: int, soft: bool, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    sizes = (rng.uniform(0.3, 1.0, (count, 2)) * box_side).astype(np.int32) + 1
    corners = (rng.random((count, 2)) * (side - sizes)).astype(np.int32)
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    masks = rng.random((count, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(utils.paste_masks(masks, boxes, (side, side), soft=soft),
                                  plane_per_instance(masks, boxes, side, soft))
    box_wise = _min_seconds(lambda: utils.paste_masks(masks, boxes, (side, side), soft=soft), repeats)
    per_plane = _min_seconds(lambda: plane_per_instance(masks, boxes, side, soft), repeats)
    return {"instances": count, "image_px": side, "max_box_px": box_side, "soft": soft,
            "paste_masks_ms": round(box_wise * 1e3, 1), "plane_per_instance_ms": round(per_plane * 1e3, 1),
            "speedup": round(per_plane / box_wise, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "unmold.json"))
    args = parser.parse_args()
    rows = []
    for count, side, box_side in CASES:
        for soft in (False, True):
            row = bench_case(count, side, box_side, soft, args.repeats)
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {"benchmark": "pasting N 28x28 masks into [H, W, N] (detect's unmolding), wall ms, minimum of repeats",
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "numpy": np.__version__, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
