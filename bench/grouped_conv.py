"""Benchmark: ResNeXt's grouped 3x3 convolution on the CPU, and ResNeXt-101 vs ResNet-101.

Why `mrcnn.ops.grouped_conv` exists: Keras 3 runs `Conv2D(groups > 1)` through XLA, whose CPU
gradient of a grouped convolution is very slow. Two measurements, each a forward + backward step
in a `tf.function` (median of the timed repeats after one warm-up), written to
bench/results/grouped_conv.json:

1. One 3x3 convolution, input [2, 32, 32, 512], 32 groups (ResNeXt-101 32x4d stage 4), by
   implementation: Keras' Conv2D (XLA), TF's native op (oneDNN), split into per-group convs, and a
   dense convolution with the block-diagonal kernel.
2. The backbone alone (C2..C5, loss = sum of their means), 2 images: ResNet-101, ResNeXt-101
   32x4d with the native and the split grouped convolution, and ResNeXt through Keras' XLA path
   (at the smallest size only: seconds per step).

    python bench/grouped_conv.py [--sizes 128 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import mrcnn.modeling.backbone as backbone_module  # noqa: E402
from mrcnn.modeling.backbone import ResNet  # noqa: E402
from mrcnn.ops.grouped_conv import grouped_conv2d  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from report import write_report  # noqa: E402


def _time(step: Callable[[], object], repeats: int) -> dict:
    tic = time.perf_counter()
    step()  # trace (and compile) + first run
    first = time.perf_counter() - tic
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        step()
        times.append(time.perf_counter() - tic)
    return {"median_s": round(statistics.median(times), 4), "all_s": [round(t, 4) for t in times],
            "first_call_s": round(first, 2)}


def _block_diagonal(kernel: tf.Tensor, groups: int) -> tf.Tensor:
    k, _, c_in, filters = kernel.shape
    per_group = filters // groups
    return tf.concat([tf.pad(kernel[..., g * per_group:(g + 1) * per_group],
                             [[0, 0], [0, 0], [g * c_in, (groups - 1 - g) * c_in], [0, 0]]) for g in range(groups)],
                     axis=-1)


def bench_single_conv(repeats: int) -> list[dict]:
    x = tf.random.stateless_normal([2, 32, 32, 512], seed=(1, 2))
    conv = keras.layers.Conv2D(512, 3, padding="same", groups=32)
    conv.build(x.shape)
    variants = {
        "keras_conv2d_xla": lambda t: conv(t),
        "native": lambda t: grouped_conv2d(conv, t, "native"),
        "split": lambda t: grouped_conv2d(conv, t, "split"),
        "dense_block_diagonal": lambda t: tf.nn.conv2d(t, _block_diagonal(conv.kernel, 32), 1, "SAME") + conv.bias,
    }
    results = []
    for name, fn in variants.items():
        @tf.function
        def step(t: tf.Tensor, fn=fn) -> list[tf.Tensor]:
            with tf.GradientTape() as tape:
                tape.watch(t)
                loss = tf.reduce_sum(fn(t) ** 2)
            return tape.gradient(loss, [t, conv.kernel])

        result = {"what": "one 3x3 conv [2,32,32,512], 32 groups, fwd+bwd", "impl": name,
                  **_time(lambda step=step: [g.numpy() for g in step(x)], repeats)}
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def bench_backbone(architecture: str, impl: str, size: int, repeats: int) -> dict:
    keras_path = impl == "keras_conv2d_xla"
    original = backbone_module.grouped_conv2d
    if keras_path:  # what a plain Conv2D(groups=...) call does: Keras' XLA-compiled convolution
        backbone_module.grouped_conv2d = lambda conv, x, impl: conv(x)
    try:
        model = ResNet(architecture, grouped_conv="native" if keras_path else impl)
        images = tf.random.stateless_normal([2, size, size, 3], seed=(3, 4)) * 50.0
        model(images)

        @tf.function
        def step(images: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                loss = tf.add_n([tf.reduce_mean(c) for c in model(images, training=True)])
            grads = tape.gradient(loss, model.trainable_weights)
            return loss + tf.add_n([tf.reduce_sum(g) for g in grads]) * 0.0

        result = {"what": "backbone C2..C5 fwd+bwd, 2 images", "architecture": architecture, "impl": impl,
                  "size": size, **_time(lambda: step(images).numpy(), repeats)}
    finally:
        backbone_module.grouped_conv2d = original
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "grouped_conv.json"))
    args = parser.parse_args()
    results = bench_single_conv(args.repeats)
    for size in args.sizes:
        results.append(bench_backbone("resnet101", "native", size, args.repeats))
        for impl in ("native", "split"):
            results.append(bench_backbone("resnext101_32x4d", impl, size, args.repeats))
    results.append(bench_backbone("resnext101_32x4d", "keras_conv2d_xla", min(args.sizes), args.repeats))
    report = {
        "benchmark": "grouped 3x3 convolution implementations; ResNeXt-101 32x4d vs ResNet-101 backbone",
        "machine": machine.describe(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "results": results,
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
