"""Benchmark: `MaskRCNN.detect` latency per image, ResNet-50-FPN, COCO-sized heads (81 classes).

Writes bench/results/inference.json: for each input size, the median (and all) latencies of >= 5
timed single-image `detect` calls after warm-up, and the process's peak RSS. Weights are random
(seeded; those initialization leaves constant, biases and BatchNorm parameters, get seeded noise,
as training would, see `perturb_constant_weights`): latency does not depend on them except
through the number of detections, which DETECTION_MIN_CONFIDENCE = 0 makes the most (all
DETECTION_MAX_INSTANCES slots filled): the mask head, which runs on the real detections only,
runs on all 100, the worst case.

800 px is not a multiple of 64, so it runs in `pad64` mode: the 800x800 image is kept at its size
and zero-padded to 832x832.

Each size runs in float32 and under Config.MIXED_PRECISION="mixed_bfloat16" (convolutions in
bfloat16: AVX-512 BF16 on this CPU), with the same random weights (the same seed before each
model is built; variables are float32 under both policies).

Each row also splits the call: `graph_median_s` is the inference graph alone (`model._infer` on
the molded image, outputs copied to numpy), the rest of `median_s` is host work (molding, and
unmolding: mapping boxes back and pasting each instance's 28x28 mask into a full-size [H, W, N]
array). `detections` is how many instances the call returned (the graph fills all 100 slots;
unmolding drops boxes that round to zero area in the original image).

With `--optimize-for-inference` each row is timed again, on the same model right after, with
`MaskRCNN.optimize_for_inference()` (the graph with the weights frozen as constants), under the
row's "optimize_for_inference" key (its `first_call_s` includes freezing; `rss_added_mb` is the
resident memory the frozen graph added, Linux only). `--also-unfolded` then times the model
frozen once more with `optimize_for_inference(fold_batchnorm=False)`, under
"optimize_for_inference_unfolded".

    python bench/inference.py [--sizes 512 800 1024] [--repeats 5] [--precisions float32 mixed_bfloat16]
    python bench/inference.py --optimize-for-inference --out bench/results/inference_frozen.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mrcnn.config import Config  # noqa: E402
from mrcnn.model import MaskRCNN  # noqa: E402
from mrcnn.ops.roi_align import active_implementation  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from report import write_report  # noqa: E402
from timing import repeat_times, summarize  # noqa: E402


def make_config(size: int, precision: str = "float32") -> Config:
    if size % 64 == 0:
        dims = dict(IMAGE_RESIZE_MODE="square", IMAGE_MIN_DIM=size, IMAGE_MAX_DIM=size)
    else:  # pad64 keeps the image at its size (no upscaling: MIN_DIM 64) and pads to a multiple of 64
        dims = dict(IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64 * -(-size // 64))
    attrs = dict(NAME="bench", NUM_CLASSES=81, BACKBONE="resnet50", IMAGES_PER_GPU=1,
                 DETECTION_MIN_CONFIDENCE=0.0, MIXED_PRECISION=None if precision == "float32" else precision,
                 **dims)
    return type("BenchConfig", (Config,), attrs)()


def bench_size(size: int, repeats: int, precision: str = "float32", optimize: bool = False,
               unfolded: bool = False) -> dict:
    keras.utils.set_random_seed(0)  # the same random weights in every precision
    model = MaskRCNN(mode="inference", config=make_config(size, precision))
    perturb_constant_weights(model)
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    row = {"size": size, "precision": precision, **_measure_detect(model, image, repeats)}
    if optimize:  # the same model and weights, right after: an A/B free of the host's drift
        rss_plain = _resident_mb()
        row["optimize_for_inference"] = _measure_detect(model.optimize_for_inference(), image, repeats)
        if rss_plain is not None:  # what the frozen graph added to the process's resident memory
            row["optimize_for_inference"]["rss_added_mb"] = round(_resident_mb() - rss_plain)
        if unfolded:  # frozen again without folding the BatchNorms: what folding adds
            model.optimize_for_inference(fold_batchnorm=False)
            row["optimize_for_inference_unfolded"] = _measure_detect(model, image, repeats)
    return row


# The layers whose outputs are the RPN's and heads' predictions, left as initialized.
PREDICTION_LAYERS = ("rpn_class_raw", "rpn_bbox_pred", "mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask")


def perturb_constant_weights(model: MaskRCNN, scale: float = 0.01, seed: int = 0) -> None:
    """Adds seeded noise to every weight that initialization left constant (biases, BatchNorm's
    gamma/beta/moving statistics), as training would.

    With the weights frozen as constants (`optimize_for_inference`), Grappler simplifies the
    graph by their values: it deletes the add of an all-zero bias, and a convolution without its
    bias add is no longer fused with the ReLU that follows. Trained weights have no all-zero
    biases, so timing freshly initialized ones would time a graph no user runs.
    """
    model.ensure_built()  # the weights exist once built
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.path.split("/")[-2] in PREDICTION_LAYERS:
            continue  # their biases set the scores, hence how many detections the mask head runs on
        value = keras.ops.convert_to_numpy(variable.value)
        if value.size and np.all(value == value.flat[0]):
            noise = rng.normal(0.0, scale, value.shape)
            # Variances stay positive: 1 + |noise|; the rest (zeros or ones) get the noise as it is.
            variable.assign((value + (np.abs(noise) if "variance" in variable.path else noise)).astype(value.dtype))


def _measure_detect(model: MaskRCNN, image: np.ndarray, repeats: int) -> dict:
    """The first detect call (builds, traces or freezes) timed alone, then the steady latencies."""
    tic = time.perf_counter()
    detections = len(model.detect([image])[0]["class_ids"])
    first = time.perf_counter() - tic
    return {**_latencies(model, image, repeats), "detections": detections, "first_call_s": round(first, 2)}


def _resident_mb() -> float | None:
    """This process's resident memory now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return None


def _latencies(model: MaskRCNN, image: np.ndarray, repeats: int) -> dict:
    """detect's median/min/all seconds and the graph's median, after one untimed call."""
    times = repeat_times(lambda: model.detect([image]), repeats, warmup=1)
    molded, metas, _ = model.mold_inputs([image])
    molded, metas = tf.constant(molded), tf.constant(metas)
    graph = repeat_times(lambda: [v.numpy() for v in model._infer(molded, metas).values()], repeats)
    return {"molded": int(molded.shape[1]), **summarize(times), "graph_median_s": round(statistics.median(graph), 4)}


PRECISION_ALIASES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 800, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    # train_step.py and torchvision_peer.py spell them fp32 / bf16: both spellings are taken.
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"],
                        type=lambda name: PRECISION_ALIASES.get(name, name),
                        choices=["float32", "mixed_bfloat16", "mixed_float16"],
                        help="float32 (fp32), mixed_bfloat16 (bf16), mixed_float16 (fp16)")
    parser.add_argument("--optimize-for-inference", action="store_true",
                        help="detect from graphs with the weights frozen as constants")
    parser.add_argument("--also-unfolded", action="store_true",
                        help="with --optimize-for-inference, also time the frozen graph without BatchNorm folding")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "inference.json"))
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        for precision in args.precisions:
            result = bench_size(size, args.repeats, precision, args.optimize_for_inference, args.also_unfolded)
            print(json.dumps(result), flush=True)
            results.append(result)
    report = {
        "benchmark": "detect latency per image, ResNet-50-FPN, 81 classes, random weights (no constant biases or BatchNorm parameters)",
        "machine": machine.describe(),
        "tensorflow": tf.__version__, "roi_align": active_implementation(),
        "results": results,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "reference_torchvision_s": {"800": 3.0, "1024": 4.0},
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
