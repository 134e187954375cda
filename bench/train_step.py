"""Benchmark: seconds per training step and images/s, ResNet-50-FPN, 81 classes, 2 images per step.

Writes bench/results/train_step.json with one row per (size, mode, precision):

* size: 512 and 1024 px square inputs (synthetic shapes images with masks, random weights);
* mode: "single" (one device, 2 images) or "mirrored2" (MirroredStrategy over 2 logical CPU
  devices, 1 image each: the same global batch);
* precision: "fp32", and "bf16" (Config.MIXED_PRECISION = "mixed_bfloat16") when the Config has
  that field (otherwise the row is skipped with a note).

Each row runs in its own process (logical devices must be configured before TensorFlow starts,
and one MirroredStrategy per process), builds the model, runs `--warmup` steps (tracing), then
times `--repeats` `train_on_batch` calls on the same batch and reports the median. All layers
are trained (layers="all"), the paper's 512 RoIs per image are sampled, SGD with momentum.

    python bench/train_step.py                      # full run (minutes per row on 2 cores)
    python bench/train_step.py --tiny --repeats 2   # smoke test: 128 px, narrow heads, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from report import write_report  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "train_step.json"
PRECISIONS = {"fp32": None, "bf16": "mixed_bfloat16"}


def make_config(size: int, replicas: int, precision: str, tiny: bool, rpn_conv_channels: int = 512):
    from mrcnn.config import Config

    attrs = dict(NAME="bench", NUM_CLASSES=81, BACKBONE="resnet50", GPU_COUNT=replicas, IMAGES_PER_GPU=2 // replicas,
                 IMAGE_MIN_DIM=size, IMAGE_MAX_DIM=size, TRAIN_ROIS_PER_IMAGE=512, ROI_POSITIVE_RATIO=0.25,
                 STEPS_PER_EPOCH=1, VALIDATION_STEPS=0, SEED=0)
    if rpn_conv_channels != 512:  # 512: matterport's width (the default); torchvision's is 256
        attrs["RPN_CONV_CHANNELS"] = rpn_conv_channels
    if tiny:
        attrs.update(NUM_CLASSES=4, TRAIN_ROIS_PER_IMAGE=16, RPN_TRAIN_ANCHORS_PER_IMAGE=32, PRE_NMS_LIMIT=200,
                     POST_NMS_ROIS_TRAINING=64, TOP_DOWN_PYRAMID_SIZE=32, FPN_CLASSIF_FC_LAYERS_SIZE=64,
                     MAX_GT_INSTANCES=4, MINI_MASK_SHAPE=(16, 16), RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128))
    if PRECISIONS[precision] is not None:
        attrs["MIXED_PRECISION"] = PRECISIONS[precision]
    return type("BenchConfig", (Config,), attrs)()


def make_batch(config, size: int) -> dict:
    """The benchmarks' training batch: 2 seeded shapes images of `size` px, as DataGenerator gives it.

    The dataset gets placeholder classes up to config.NUM_CLASSES, so the heads are COCO-sized (81).
    """
    from mrcnn.data.generator import DataGenerator
    from mrcnn.data.shapes import ShapesDataset

    dataset = ShapesDataset()
    dataset.load_shapes(2, size, size, seed=0)
    for class_id in range(len(dataset.class_info), config.NUM_CLASSES):
        dataset.add_class("bench", class_id, f"class{class_id}")
    dataset.prepare()
    return DataGenerator(dataset, config, shuffle=False, seed=0)[0]


def run_row(size: int, mode: str, precision: str, warmup: int, repeats: int, tiny: bool,
            rpn_conv_channels: int = 512) -> dict:
    """One measurement (called in a child process)."""
    import tensorflow as tf

    replicas = 2 if mode == "mirrored2" else 1
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    import keras
    import numpy as np

    from mrcnn import distribute
    from mrcnn.config import Config
    from mrcnn.model import MaskRCNN

    if PRECISIONS[precision] is not None and "MIXED_PRECISION" not in Config.field_names():
        return {"skipped": "Config has no MIXED_PRECISION field yet"}
    config = make_config(size, replicas, precision, tiny, rpn_conv_channels)
    batch = make_batch(config, size)
    # Keras averages a first batch over replicas to build; bool masks cannot be added (see distribute).
    batch = {k: v.astype(np.uint8) if v.dtype == bool else v for k, v in batch.items()}
    keras.utils.set_random_seed(0)
    strategy = distribute.make_strategy(replicas)
    with strategy.scope():
        model = MaskRCNN("training", config, model_dir="/tmp/mrcnn_bench_logs")
        model.set_trainable(".*")
        model.compile()
    tic = time.perf_counter()
    for _ in range(warmup):
        model.train_on_batch(batch)
    warmup_s = time.perf_counter() - tic
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        logs = model.train_on_batch(batch, return_dict=True)
        times.append(time.perf_counter() - tic)
    median = statistics.median(times)
    return {"seconds_per_step": round(median, 4), "images_per_second": round(config.BATCH_SIZE / median, 3),
            "min_s": round(min(times), 4), "all_s": [round(t, 4) for t in times],
            "warmup_s": round(warmup_s, 1), "loss": float(logs["loss"]), "replicas": strategy.num_replicas_in_sync,
            "global_batch": config.BATCH_SIZE,
            # Shows whether the precision setting reached the layers (the first convolution's dtype).
            "conv_compute_dtype": next((layer.compute_dtype for layer in model.all_layers()
                                        if isinstance(layer, keras.layers.Conv2D)), None)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--modes", nargs="+", default=["single", "mirrored2"], choices=["single", "mirrored2"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(PRECISIONS))
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (the first one traces)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps")
    parser.add_argument("--tiny", action="store_true", help="smoke test: narrow heads, few RoIs (use small --sizes)")
    parser.add_argument("--rpn-conv-channels", type=int, default=512,
                        help="RPN_CONV_CHANNELS: 512 matterport's (default), 256 torchvision's")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per row")
    parser.add_argument("--child", nargs=3, metavar=("SIZE", "MODE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, mode, precision = int(args.child[0]), args.child[1], args.child[2]
        print("RESULT " + json.dumps(run_row(size, mode, precision, args.warmup, args.repeats, args.tiny,
                                             args.rpn_conv_channels)))
        return 0

    rows = []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    for size in args.sizes:
        for precision in args.precisions:
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--child", str(size), mode, precision, "--warmup", str(args.warmup),
                       "--repeats", str(args.repeats), "--rpn-conv-channels", str(args.rpn_conv_channels)
                       ] + (["--tiny"] if args.tiny else [])
                load_before = os.getloadavg()[0]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    result = {"error": (proc.stderr or proc.stdout)[-2000:]}
                else:
                    result = json.loads(lines[-1][len("RESULT "):])
                row = {"size": size, "mode": mode, "precision": precision,
                       "rpn_conv_channels": args.rpn_conv_channels, **result,
                       "load_1min_before": round(load_before, 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = {
        "benchmark": "training step, ResNet-50-FPN, 81 classes, 2 images per step, all layers, random weights",
        "machine": machine.describe(),
        "tensorflow": __import__("tensorflow").__version__,
        "tiny": args.tiny,
        "note": "2 CPU cores are shared with other work unless load_1min_before is near 0; "
                "mirrored2 splits the same 2 cores into 2 logical devices (it tests the code path, "
                "it cannot be faster than single here)",
        "results": rows,
    }
    write_report(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
