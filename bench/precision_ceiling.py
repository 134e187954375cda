"""Benchmark: how much faster bfloat16 can make Mask R-CNN inference on this CPU, and where it does not.

Issue 5 expects bfloat16 inference >= 2x faster than float32. `bench/inference.py` measures the
whole `detect` call; this benchmark explains the figure in two parts, each in float32 and in
bfloat16 with the same inputs, written to bench/results/precision_ceiling.json:

1. **Layers**: the convolutions and the matmul that dominate ResNet-50-FPN Mask R-CNN inference
   at 512 px, alone (a 3x3 conv + ReLU, or the box head's first fully-connected layer), in
   GFLOP/s. The bfloat16 / float32 ratio of these is the ceiling for the whole model: the rest
   (RoIAlign, NMS, casts, numpy unmolding) gains less. Two rows measure the CPU rather than the
   model: a 4096^3 matmul (the hardware's bfloat16 / float32 ratio where float32 is near its
   FMA peak) and the wide 3x3 conv behind the issue's "~850 vs ~300 GFLOP/s".
2. **Stages** of one `detect` graph at `--size` px (ResNet-50-FPN, 81 classes, random weights,
   DETECTION_MIN_CONFIDENCE 0 so that all 100 detection slots are filled and the mask head, which
   runs on the real detections only, runs on all 100): backbone + FPN + RPN, proposals, RoIAlign for the box head,
   box head, detection layer, mask branch, the whole graph with all K mask channels or with only
   each detection's own (what `detect` runs), and the whole detect call (molding and unmolding too).

Times are CPU seconds (`time.process_time`, all threads; minimum of `--repeats` after a warm-up),
so the figures hold on a machine shared with other jobs; `--threads` sets TF's intra- and
inter-op threads (default 1: one core, the cleanest per-core figure).

    python bench/precision_ceiling.py [--size 512] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from inference import make_config  # noqa: E402
from report import write_report  # noqa: E402
from timing import repeat_times  # noqa: E402

from mrcnn.model import MaskRCNN  # noqa: E402

DTYPES = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16}
# (name, input shape NHWC, kernel size, output channels) at 512 px; "fc" is [rois, 7*7*256] @ [12544, 1024].
LAYERS = [
    ("res2 3x3 (stride 4)", (1, 128, 128, 64), 3, 64),
    ("res2 1x1 expand", (1, 128, 128, 64), 1, 256),
    ("res3 3x3 (stride 8)", (1, 64, 64, 128), 3, 128),
    ("res4 3x3 (stride 16)", (1, 32, 32, 256), 3, 256),
    ("res5 3x3 (stride 32)", (1, 16, 16, 512), 3, 512),
    ("FPN P2 3x3", (1, 128, 128, 256), 3, 256),
    ("RPN conv on P2 (512 wide)", (1, 128, 128, 256), 3, 512),
    ("mask head 3x3, 100 RoIs", (100, 14, 14, 256), 3, 256),
    ("box head fc1, 1000 RoIs", (1000, 12544), 0, 1024),
    # What this CPU's bfloat16 path can give at best, independent of Mask R-CNN's layer shapes: a
    # large matmul (float32 near its FMA peak) and the issue's own example, a wide 3x3 conv.
    ("peak: matmul 4096^3", (4096, 4096), 0, 4096),
    ("issue's example: 3x3 conv 256->256 on 256x256", (1, 256, 256, 256), 3, 256),
]


def cpu_seconds(step: Callable[[], object], repeats: int) -> float:
    """Minimum CPU time of `repeats` calls of `step` (after one warm-up call)."""
    return min(repeat_times(step, repeats, clock=time.process_time))


def _materialize(outputs: object) -> None:
    for value in tf.nest.flatten(outputs):
        if hasattr(value, "numpy"):
            value.numpy()


def bench_layer(shape: tuple[int, ...], kernel: int, channels: int, dtype: tf.DType, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random(shape, np.float32), dtype)
    if kernel == 0:  # fully connected
        w = tf.constant(rng.random((shape[-1], channels), np.float32) * 0.01, dtype)
        run = tf.function(lambda x: tf.nn.relu(tf.matmul(x, w)))
        flops = 2 * shape[0] * shape[1] * channels
    else:
        w = tf.constant(rng.random((kernel, kernel, shape[-1], channels), np.float32) * 0.01, dtype)
        run = tf.function(lambda x: tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME")))
        flops = 2 * int(np.prod(shape[:3])) * kernel * kernel * shape[-1] * channels
    seconds = cpu_seconds(lambda: run(x).numpy(), repeats)
    return {"cpu_s": round(seconds, 4), "gflops": round(flops / seconds / 1e9, 1)}


def bench_stages(size: int, precision: str, repeats: int) -> dict:
    """CPU seconds of each stage of one image's detect graph."""
    keras.utils.set_random_seed(0)  # the same random weights in both precisions
    model = MaskRCNN(mode="inference", config=make_config(size, precision))
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    model.detect([image])  # builds the model
    molded, metas, _ = model.mold_inputs([image])
    images, meta = tf.constant(molded), tf.constant(metas)
    features_fn = tf.function(lambda x: model._features(x, False))
    features = features_fn(images)
    pyramid = model._roi_feature_maps(features, meta)
    proposals_fn = tf.function(lambda *a: model.proposal_inference(list(a)))
    rpn = (features["rpn_class"], features["rpn_bbox"], features["anchors"])
    proposals = proposals_fn(*rpn)
    align_fn = tf.function(lambda boxes, *maps: model.roi_align_classifier([boxes, *maps], training=False))
    pooled = align_fn(proposals, *pyramid)
    head_fn = tf.function(lambda x: model.box_head(x, training=False)[1:3])
    classes, deltas = head_fn(pooled)
    detection_fn = tf.function(lambda *a: model.detection(list(a)))
    detections = detection_fn(proposals, classes, deltas, meta)
    mask_fn = tf.function(lambda d, *maps: model._mask_branch(d[..., :4], list(maps), False))
    inputs = {"input_image": images, "input_image_meta": meta}
    # The whole graph with mrcnn_mask as all K class channels (run_graph's) or only each
    # detection's own (detect's: the final 1x1 mask conv computes one channel per RoI).
    graph_fns = {own: tf.function(lambda own=own: model(inputs, training=False, detected_class_masks=own))
                 for own in (False, True)}
    stages = {
        "backbone_fpn_rpn": lambda: features_fn(images),
        "proposals": lambda: proposals_fn(*rpn),
        "roi_align_box": lambda: align_fn(proposals, *pyramid),
        "box_head": lambda: head_fn(pooled),
        "detection": lambda: detection_fn(proposals, classes, deltas, meta),
        "mask_branch": lambda: mask_fn(detections, *pyramid),
        "graph_all_class_masks": graph_fns[False],
        "graph_own_class_mask": graph_fns[True],
        "detect_call": lambda: model.detect([image]),
    }
    return {name: round(cpu_seconds(lambda s=step: _materialize(s()), repeats), 4) for name, step in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="TF intra- and inter-op threads (0: TF's default)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "precision_ceiling.json"))
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    layers = []
    for name, shape, kernel, channels in LAYERS:
        row = {"layer": name, "input": list(shape), "kernel": kernel, "out_channels": channels}
        for precision, dtype in DTYPES.items():
            row[precision] = bench_layer(shape, kernel, channels, dtype, args.repeats)
        row["speedup"] = round(row["float32"]["cpu_s"] / row["mixed_bfloat16"]["cpu_s"], 2)
        print(json.dumps(row), flush=True)
        layers.append(row)
    stages = {precision: bench_stages(args.size, precision, args.repeats) for precision in DTYPES}
    speedups = {name: round(stages["float32"][name] / stages["mixed_bfloat16"][name], 2)
                for name in stages["float32"]}
    print(json.dumps({"stages": stages, "speedup": speedups}), flush=True)
    report = {
        "benchmark": "bfloat16 vs float32 CPU seconds: single layers and the stages of detect, ResNet-50-FPN",
        "machine": machine.describe(),
        "tensorflow": tf.__version__, "threads": args.threads, "size": args.size,
        "layers": layers, "stages": stages, "stage_speedup": speedups,
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
