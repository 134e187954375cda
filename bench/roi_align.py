"""Benchmark: RoIAlign compiled op vs the pure-TF fallback at FPN training sizes.

Setup (Mask R-CNN training with a ResNet-FPN on a 1024 px input): 2 images, feature maps P2..P5
(256, 128, 64, 32 px square), 256 channels. Two cases:
  * ``box_head_7x7``:   1000 RoIs -> 7 x 7 (the box head's pooling),
  * ``mask_head_14x14``: 200 RoIs -> 14 x 14 (the mask head's pooling).
RoIs are random boxes (side log-uniform in 16..600 px, inside the image), assigned to P2..P5 with
the FPN rule k = floor(4 + log2(sqrt(h w) / 224)) clamped to 2..5, and pooled level by level as
PyramidROIAlign does, with sampling_ratio=2, aligned=True. Each measurement is one tf.function call:
forward (pooled features of all levels) and forward+backward (gradient of sum(pooled * upstream)
with respect to the four feature maps). Median and min over the repeats after warm-up.
The machine's load average is recorded: on a shared machine the numbers move with it.
Writes bench/results/roi_align.json.

`--dtype bfloat16` times bfloat16 feature maps (and upstream gradients): "op" is the compiled op
reading and writing bfloat16 (float32 sums), "op_float32_casts" the same op in float32 with the
maps cast up and the pooled features cast down around it (what the model ran before the op took
bfloat16), "tf" the fallback (which casts to float32 itself).

    python bench/roi_align.py [--repeats 5] [--dtype float32] [--out bench/results/roi_align.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from mrcnn.ops import roi_align as ra

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from report import write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGE = 1024
BATCH = 2
CHANNELS = 256
LEVELS = (2, 3, 4, 5)
CASES = {"box_head_7x7": (1000, 7), "mask_head_14x14": (200, 14)}


def make_rois(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random boxes [count, 4] px, their image indices and FPN levels."""
    side = np.exp(rng.uniform(np.log(16), np.log(600), size=(count, 2)))
    y1 = rng.uniform(0, IMAGE - side[:, 0])
    x1 = rng.uniform(0, IMAGE - side[:, 1])
    boxes = np.stack([y1, x1, y1 + side[:, 0], x1 + side[:, 1]], axis=1).astype(np.float32)
    levels = np.clip(np.floor(4 + np.log2(np.sqrt(side[:, 0] * side[:, 1]) / 224.0)), 2, 5).astype(int)
    indices = rng.integers(0, BATCH, size=count).astype(np.int32)
    return boxes, indices, levels


def build_fns(impl: str, per_level, pool: int):
    """tf.functions for forward and forward+backward over all levels."""

    def pool_one(features, boxes, indices, level):
        if impl == "op_float32_casts":
            pooled = ra.roi_align(tf.cast(features, tf.float32), boxes, indices, pool, 1.0 / 2**level, 2, True,
                                  implementation="op")
            return tf.cast(pooled, features.dtype)
        return ra.roi_align(features, boxes, indices, pool, 1.0 / 2**level, 2, True, implementation=impl)

    def pool_all(maps):
        return [pool_one(maps[i], boxes, indices, level) for i, (level, boxes, indices, _) in enumerate(per_level)]

    @tf.function
    def forward(maps):
        return pool_all(maps)

    @tf.function
    def forward_backward(maps):
        with tf.GradientTape() as tape:
            tape.watch(maps)
            loss = tf.add_n([tf.reduce_sum(tf.cast(out * lv[3], tf.float32))
                             for out, lv in zip(pool_all(maps), per_level)])
        return tape.gradient(loss, maps)

    return forward, forward_backward


def time_fn(fn, maps, repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        _sync(fn(maps))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _sync(fn(maps))
        times.append(time.perf_counter() - start)
    return {"median_ms": round(1000 * float(np.median(times)), 2), "min_ms": round(1000 * min(times), 2),
            "all_ms": [round(1000 * t, 2) for t in times]}


def _sync(result) -> None:
    for tensor in tf.nest.flatten(result):
        tensor.numpy()  # forces completion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the feature maps and upstream gradients")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "roi_align.json")
    args = parser.parse_args()
    dtype = tf.as_dtype(args.dtype)

    impls = ["op", "tf"] if ra.load_op_library() is not None else ["tf"]
    if dtype == tf.bfloat16 and "op" in impls:
        impls.insert(1, "op_float32_casts")
    if impls == ["tf"]:
        print(f"compiled op unavailable ({ra.op_load_error()}): timing the fallback only")
    rng = np.random.default_rng(0)
    maps = [tf.constant(rng.normal(size=(BATCH, IMAGE // 2**k, IMAGE // 2**k, CHANNELS)).astype(np.float32), dtype)
            for k in LEVELS]
    results = {}
    for case, (count, pool) in CASES.items():
        boxes, indices, levels = make_rois(count, rng)
        per_level = []
        for level in LEVELS:
            keep = levels == level
            upstream = rng.normal(size=(int(keep.sum()), pool, pool, CHANNELS)).astype(np.float32)
            per_level.append((level, tf.constant(boxes[keep]), tf.constant(indices[keep]),
                              tf.constant(upstream, dtype)))
        entry = {"rois": count, "output": [pool, pool],
                 "rois_per_level": {f"P{lv}": int((levels == lv).sum()) for lv in LEVELS}}
        outputs = {}
        for impl in impls:
            forward, forward_backward = build_fns(impl, per_level, pool)
            outputs[impl] = [tf.cast(o, tf.float32).numpy() for o in forward(maps)]
            entry[impl] = {"forward": time_fn(forward, maps, args.repeats),
                           "forward_backward": time_fn(forward_backward, maps, args.repeats),
                           "load_avg_1min": round(os.getloadavg()[0], 2)}
            print(f"{case} {impl}: forward {entry[impl]['forward']['median_ms']} ms, "
                  f"forward+backward {entry[impl]['forward_backward']['median_ms']} ms", flush=True)
        if "op" in impls:
            entry["max_abs_diff_op_vs_tf"] = float(max(np.abs(a - b).max() if a.size else 0.0
                                                       for a, b in zip(outputs["op"], outputs["tf"])))
            for phase in ("forward", "forward_backward"):
                entry[f"speedup_{phase}"] = round(entry["tf"][phase]["median_ms"] / entry["op"][phase]["median_ms"], 2)
                if "op_float32_casts" in impls:
                    entry[f"speedup_over_casts_{phase}"] = round(
                        entry["op_float32_casts"][phase]["median_ms"] / entry["op"][phase]["median_ms"], 2)
        results[case] = entry

    report = {
        "benchmark": "roi_align",
        "setup": {"image": IMAGE, "batch": BATCH, "channels": CHANNELS, "levels": [f"P{k}" for k in LEVELS],
                  "sampling_ratio": 2, "aligned": True, "dtype": args.dtype, "repeats": args.repeats},
        "tf_version": tf.__version__,
        "machine": machine.describe(),
        "host": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                 "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()},
        "implementations": impls,
        "results": results,
        "target": "op >= 3x faster than the fallback in forward+backward on the 2-core CPU",
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
