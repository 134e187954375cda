"""Benchmark: the arithmetic a training step and a `detect` call need, and the least time this CPU needs for it.

Writes bench/results/flops.json. For the models of bench/train_step.py (ResNet-50-FPN, 81 classes,
2 images, 512 RoIs per image, all layers) and bench/inference.py (one image, all 100 detection
slots filled) it counts the floating-point operations of every convolution, matrix product and
einsum that actually runs, gradients included, and divides them by the fastest rate measured on
this machine (`floor_s`): no implementation can run the step faster in that precision here. Where
the matching timing is in bench/results (train_step*.json, inference.json), a row also gives
`measured_s` and `fraction_of_peak` (floor / measured).

How the count is taken: the model runs once eagerly (no tf.function) while an op callback
(TensorFlow's `op_callbacks`, the hook that tf.debugging's numeric checks use) reads the real
input shapes of each op, so RoI counts that depend on the data (positive RoIs, detections) and
every gradient op (Conv2DBackpropInput / Conv2DBackpropFilter, transposed MatMuls) are counted as
they ran. A multiply-add counts 2. Not counted: elementwise ops, BatchNorm, RoIAlign, NMS (by the
TF profiles in README's performance table, ~10% of a step's time), so the floor is a lower bound.

The peak: the best rate over a 4096^3 matmul and the RPN's 3x3 convolution on P2, in float32 and
bfloat16, on every core (TensorFlow's default threads), best of `--repeats`.

    python bench/flops.py              # ~2 minutes on 2 cores
    python bench/flops.py --quick      # the 512 px rows only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Not in TensorFlow's public API; tf.debugging.enable_check_numerics is built on it.
from tensorflow.python.framework import op_callbacks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import inference as inference_bench  # noqa: E402
import machine  # noqa: E402
import train_step as train_bench  # noqa: E402
from report import write_report  # noqa: E402
from timing import repeat_times  # noqa: E402

from mrcnn.model import MaskRCNN  # noqa: E402


def _attrs(attrs: Sequence[Any] | None) -> dict[str, Any]:
    # Eager callbacks get the attributes as a flat (name, value, name, value, ...) tuple.
    return dict(zip(attrs[::2], attrs[1::2])) if attrs else {}


def op_flops(op_type: str, inputs: Sequence[tf.Tensor], attrs: dict[str, Any], outputs: Sequence[tf.Tensor]) -> int:
    """Floating-point operations (2 per multiply-add) of one executed op; 0 for ops not counted.

    Args:
        op_type: e.g. "Conv2D", "Conv2DBackpropFilter", "MatMul".
        inputs, outputs: the op's eager tensors (NHWC feature maps, HWIO filters).
        attrs: the op's attributes (transpose flags, einsum equation).
    """
    if op_type == "Conv2D":  # input [N,H,W,C/g... ], filter [kh,kw,ci,co], output [N,Ho,Wo,co]
        kh, kw, ci, co = inputs[1].shape
        return 2 * int(np.prod(outputs[0].shape[:-1])) * kh * kw * ci * co
    if op_type == "Conv2DBackpropInput":  # (input_sizes, filter, out_backprop): a forward conv's work
        kh, kw, ci, co = inputs[1].shape
        return 2 * int(np.prod(inputs[2].shape[:-1])) * kh * kw * ci * co
    if op_type == "Conv2DBackpropFilter":  # (input, filter_sizes, out_backprop) -> filter gradient
        kh, kw, ci, co = outputs[0].shape
        return 2 * int(np.prod(inputs[2].shape[:-1])) * kh * kw * ci * co
    if op_type == "MatMul":
        a = inputs[0].shape
        depth = a[0] if attrs.get("transpose_a") else a[1]
        return 2 * int(np.prod(outputs[0].shape)) * depth
    if op_type in ("BatchMatMulV2", "BatchMatMulV3"):
        a = inputs[0].shape
        depth = a[-2] if attrs.get("adj_x") else a[-1]
        return 2 * int(np.prod(outputs[0].shape)) * depth
    if op_type == "Einsum":  # two operands: one multiply-add per point of the joint index space
        equation = attrs["equation"]
        equation = equation.decode() if isinstance(equation, bytes) else equation
        sizes: dict[str, int] = {}
        for operand, tensor in zip(equation.split("->")[0].split(","), inputs):
            sizes.update(zip(operand, tensor.shape))
        return 2 * int(np.prod(list(sizes.values()))) if len(inputs) == 2 else 0
    return 0


class FlopCounter:
    """Counts `op_flops` over the eager ops run inside a `with` block, per op type.

    Attributes:
        flops: Counter op type -> FLOPs.
        functions: Counter of tf.function graphs executed inside the block (their ops are not seen
            one by one, so a non-empty counter means an incomplete count).
    """

    def __init__(self) -> None:
        self.flops: Counter[str] = Counter()
        self.functions: Counter[str] = Counter()

    def _callback(self, op_type: str, inputs: Any, attrs: Any, outputs: Any, op_name: Any = None,
                  graph: Any = None) -> None:
        if graph is not None:  # an op being added to a graph (tracing), not executed
            return None
        op_type = op_type.decode() if isinstance(op_type, bytes) else op_type
        if op_type.startswith(("__inference", "__forward", "__backward")):
            self.functions[op_type] += 1
            return None
        count = op_flops(op_type, inputs, _attrs(attrs), outputs)
        if count:
            self.flops[op_type] += count
        return None

    def __enter__(self) -> FlopCounter:
        op_callbacks.add_op_callback(self._callback)
        return self

    def __exit__(self, *exc: Any) -> None:
        op_callbacks.remove_op_callback(self._callback)

    @property
    def total(self) -> int:
        return sum(self.flops.values())


def _gflop(counter: Counter[str]) -> dict[str, float]:
    return {k: round(v / 1e9, 2) for k, v in sorted(counter.items())}


def count_train_step(size: int, rpn_conv_channels: int) -> dict[str, Any]:
    """FLOPs of one training step of bench/train_step.py's model (forward, then all gradients)."""
    config = train_bench.make_config(size, 1, "fp32", False, rpn_conv_channels)
    batch = {k: tf.constant(v) for k, v in train_bench.make_batch(config, size).items()}
    keras.utils.set_random_seed(0)
    model = MaskRCNN("training", config, model_dir="/tmp/mrcnn_bench_logs")
    model.set_trainable(".*")
    forward, backward = FlopCounter(), FlopCounter()
    with tf.GradientTape() as tape:
        with forward:
            outputs = model(batch, training=True)
        # The same loss train_step() minimizes (matterport's weight decay included).
        total = model._total_loss(model.compute_losses(batch, outputs))
    with backward:
        tape.gradient(total, model.trainable_variables)
    positives = int(tf.reduce_sum(tf.cast(outputs["target_class_ids"] > 0, tf.int32)))
    return {"forward": forward, "backward": backward, "positive_rois": positives}


def count_detect(size: int) -> dict[str, Any]:
    """FLOPs of one `detect` graph of bench/inference.py's model (all 100 slots filled)."""
    keras.utils.set_random_seed(0)
    model = MaskRCNN(mode="inference", config=inference_bench.make_config(size))
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    molded, metas, _ = model.mold_inputs([image])
    model.ensure_built()
    with FlopCounter() as counter:
        outputs = model({"input_image": tf.constant(molded), "input_image_meta": tf.constant(metas)},
                        training=False, detected_class_masks=True)
    detections = int(tf.reduce_sum(tf.cast(outputs["detections"][0, :, 4] > 0, tf.int32)))
    return {"forward": counter, "detections": detections}


def _best_rate(fn: Callable[[], tf.Tensor], flops: float, repeats: int) -> float:
    """GFLOP/s of the fastest of `repeats` calls of `fn` (after one that traces it)."""
    return flops / min(repeat_times(lambda: fn().numpy(), repeats)) / 1e9


def measure_peak(repeats: int) -> dict[str, dict[str, float]]:
    """GFLOP/s of a 4096^3 matmul and of the RPN's 3x3 conv on a 2x128x128x256 P2, per dtype."""
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for name, dtype in (("float32", tf.float32), ("bfloat16", tf.bfloat16)):
        a = tf.constant(rng.standard_normal((4096, 4096)), dtype)
        x = tf.constant(rng.standard_normal((2, 128, 128, 256)), dtype)
        k = tf.constant(rng.standard_normal((3, 3, 256, 512)) * 0.02, dtype)
        matmul = tf.function(lambda a=a: tf.matmul(a, a))
        conv = tf.function(lambda x=x, k=k: tf.nn.conv2d(x, k, 1, "SAME"))
        rates = {"matmul_4096": _best_rate(matmul, 2 * 4096**3, repeats),
                 "conv3x3_p2_512": _best_rate(conv, 2 * 2 * 128 * 128 * 9 * 256 * 512, repeats)}
        out[name] = {k: round(v, 1) for k, v in rates.items()} | {"peak": round(max(rates.values()), 1)}
    return out


def rows_from_this_cpu(pattern: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Result rows of bench/results/`pattern` files measured on this CPU model (their "machine" names it),
    and the names of those files.

    A fraction of peak only means something when the timing and the peak come from the same CPU, and
    hosts of this machine type differ.
    """
    rows, names = [], []
    for path in sorted(RESULTS.glob(pattern)):
        report = json.loads(path.read_text())
        if str(report.get("machine", "")).startswith(machine.cpu_model()):
            names.append(path.name)
            rows.extend(report.get("results", []))
    return rows, names


def measured_train_s(rows: list[dict[str, Any]], size: int, precision: str, rpn_conv_channels: int) -> float | None:
    """The single-device seconds per step among bench/train_step.py's `rows`, if recorded."""
    for row in rows:
        if (row.get("size"), row.get("mode"), row.get("precision"), row.get("rpn_conv_channels", 512)) == (
                size, "single", precision, rpn_conv_channels) and "seconds_per_step" in row:
            return float(row["seconds_per_step"])
    return None


def measured_detect_graph_s(rows: list[dict[str, Any]], size: int, precision: str) -> float | None:
    """The graph-only median (what the count covers) among bench/inference.py's `rows`, if recorded."""
    for row in rows:
        if row.get("size") == size and row.get("precision") == precision and "graph_median_s" in row:
            return float(row["graph_median_s"])
    return None


def floors(gflop: float, peak: dict[str, dict[str, float]], measured: dict[str, float | None]) -> dict[str, Any]:
    out = {}
    for precision, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        floor = gflop / peak[dtype]["peak"]
        seconds = measured.get(precision)
        out[precision] = {"floor_s": round(floor, 3), "measured_s": seconds,
                          "fraction_of_peak": round(floor / seconds, 2) if seconds else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="512 px rows only")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per peak measurement (best kept)")
    parser.add_argument("--out", default=str(RESULTS / "flops.json"))
    args = parser.parse_args()

    peak = measure_peak(args.repeats)
    print("peak GFLOP/s", json.dumps(peak), flush=True)
    rows = []
    train_rows, train_files = rows_from_this_cpu("train_step*.json")
    detect_rows, detect_files = rows_from_this_cpu("inference*.json")
    train_cases = [(512, 512), (512, 256)] + ([] if args.quick else [(1024, 512)])
    for size, channels in train_cases:
        counted = count_train_step(size, channels)
        forward, backward = counted["forward"], counted["backward"]
        gflop = (forward.total + backward.total) / 1e9
        measured = {p: measured_train_s(train_rows, size, p, channels) for p in ("fp32", "bf16")}
        rows.append({"work": "train_step", "size": size, "rpn_conv_channels": channels, "images": 2,
                     "gflop": round(gflop, 1), "forward_gflop": _gflop(forward.flops),
                     "backward_gflop": _gflop(backward.flops), "positive_rois": counted["positive_rois"],
                     "uncounted_functions": sum(forward.functions.values()) + sum(backward.functions.values()),
                     **floors(gflop, peak, measured)})
        print(json.dumps(rows[-1]), flush=True)
    for size in [512] + ([] if args.quick else [800, 1024]):
        counted = count_detect(size)
        forward = counted["forward"]
        gflop = forward.total / 1e9
        measured = {p: measured_detect_graph_s(detect_rows, size, name) for p, name in (("fp32", "float32"),
                                                                             ("bf16", "mixed_bfloat16"))}
        rows.append({"work": "detect_graph", "size": size, "images": 1, "detections": counted["detections"],
                     "gflop": round(gflop, 1), "forward_gflop": _gflop(forward.flops),
                     "uncounted_functions": sum(forward.functions.values()), **floors(gflop, peak, measured)})
        print(json.dumps(rows[-1]), flush=True)
    out = {"benchmark": "FLOPs of a training step and a detect graph, and the time floor at this CPU's peak",
           "machine": machine.describe(), "tensorflow": tf.__version__,
           # measured_s: from the timing benchmarks' JSON whose "machine" is this CPU model (none: not measured here)
           "measured_s_from": sorted(train_files + detect_files),
           "threads": "TensorFlow's default (all cores)", "peak_gflops": peak,
           # the most bfloat16 can speed up work that runs at the same fraction of peak in both dtypes
           "bf16_over_fp32_peak": round(peak["bfloat16"]["peak"] / peak["float32"]["peak"], 2),
           "results": rows}
    write_report(args.out, out)


if __name__ == "__main__":
    main()
