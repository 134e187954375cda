"""Benchmark: the paper's RoI-pooling and mask-loss ablations (Table 2b, 2c) on the shapes data.

Trains one model per variant from scratch for the same number of steps (a step budget, not wall
time: the CPU is shared, so time would bias the comparison), with the same initial weights, the
same data order and the same schedule, then evaluates mask and box mAP@0.5 and mAP@[.5:.95] on the
same held-out shapes images. Writes bench/results/ablation_shapes.json.

Variants (everything else is the shapes config below):

* ``roi_align``: RoIAlign (bilinear, 2x2 samples per bin, averaged), sigmoid mask loss: the paper's.
* ``roi_pool``: RoIPool (quantized box and bins, max) (Table 2c).
* ``roi_warp``: RoIWarp (quantized box, bilinear) (Table 2c).
* ``crop_and_resize``: matterport's crop-and-resize approximation.
* ``softmax``: RoIAlign with the multinomial (softmax) mask loss (Table 2b).

The model: the shapes config (128 px, 4 images per step, Adam at --lr (3e-4) with a 10x drop at
75% of the steps, flips) with ``--backbone narrow`` (default: samples/shapes' DemoConfig, a narrow
ResNet with 2 blocks per stage, 128-channel FPN and RPN, ~0.3 CPU-s per step), ``small`` (a plain
6-conv backbone) or ``resnet50`` (ResNet-50-FPN at full width). FPN, RPN and heads are the real
model (GroupNorm heads, good from scratch). BatchNorm-trained backbones are recalibrated on 200
training images before evaluation (as the demo). Each variant runs in its own process.

    python bench/ablation_shapes.py --steps 1000 --seeds 0 1 2 --variants roi_align roi_pool softmax
    python bench/ablation_shapes.py --steps 20 --eval-images 8   # smoke test
    python bench/ablation_shapes.py --steps 300 --seeds 0 1 2 --resume   # add seed 2 to the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "ablation_shapes.json"
TRAIN_SEED, TEST_SEED = 1, 3  # samples/shapes' seeds: held-out images never seen in training

VARIANTS = {
    "roi_align": dict(POOLING_MODE="roi_align", MASK_LOSS="sigmoid"),
    "roi_pool": dict(POOLING_MODE="roi_pool", MASK_LOSS="sigmoid"),
    "roi_warp": dict(POOLING_MODE="roi_warp", MASK_LOSS="sigmoid"),
    "crop_and_resize": dict(POOLING_MODE="crop_and_resize", MASK_LOSS="sigmoid"),
    "softmax": dict(POOLING_MODE="roi_align", MASK_LOSS="softmax"),
}


def _small_backbone_class():
    import keras

    class SmallBackbone(keras.layers.Layer):
        """Six 3x3 convs + ReLU giving C2..C5 at strides 4, 8, 16, 32 (64..256 channels)."""

        def __init__(self, **kwargs):
            super().__init__(name="small_backbone", **kwargs)
            widths_strides = [(32, 2), (64, 2), (64, 1), (128, 2), (192, 2), (256, 2)]
            self.convs = [keras.layers.Conv2D(c, 3, strides=s, padding="same", activation="relu",
                                              name=f"small_conv{i}") for i, (c, s) in enumerate(widths_strides)]

        def call(self, images, training=None):
            outputs = []
            for i, conv in enumerate(self.convs):
                images = conv(images)
                if i >= 2:  # after strides 4, 8, 16, 32
                    outputs.append(images)
            return outputs

    return SmallBackbone


def _small_backbone_shapes(image_shape):
    import numpy as np

    return np.array([[math.ceil(image_shape[0] / s), math.ceil(image_shape[1] / s)] for s in (4, 8, 16, 32, 64)])


def make_config(variant: str, backbone: str, seed: int, inference: bool = False, learning_rate: float = 3e-4):
    """The shapes config of one variant (samples/shapes' DemoConfig settings, GroupNorm heads)."""
    from mrcnn.data.shapes import ShapesConfig

    attrs = dict(NAME=f"ablation_{variant}", IMAGES_PER_GPU=4, IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128,
                 TRAIN_ROIS_PER_IMAGE=16, OPTIMIZER="adam", LEARNING_RATE=learning_rate, HEAD_NORM="gn",
                 TRAIN_BN=False, WEIGHT_DECAY=1e-4, SEED=seed, STEPS_PER_EPOCH=1, VALIDATION_STEPS=0,
                 **VARIANTS[variant])
    if backbone == "small":
        attrs.update(BACKBONE=_small_backbone_class(), COMPUTE_BACKBONE_SHAPE=staticmethod(_small_backbone_shapes))
    elif backbone == "narrow":  # the demo's model, read from DemoConfig so the two cannot drift apart
        from samples.shapes.shapes import DemoConfig

        narrow = ("BACKBONE", "TOP_DOWN_PYRAMID_SIZE", "RPN_CONV_CHANNELS", "FPN_CLASSIF_FC_LAYERS_SIZE")
        attrs.update({name: getattr(DemoConfig, name) for name in narrow}, TRAIN_BN=True, BN_MOMENTUM=0.9)
    else:
        attrs.update(BACKBONE="resnet50", TRAIN_BN=True, BN_MOMENTUM=0.9)
    if inference:
        # mAP over the whole score range (COCO keeps detections above 0.05).
        attrs.update(DETECTION_MIN_CONFIDENCE=0.05)
    return type("AblationConfig", (ShapesConfig,), attrs)()


def _dataset(count: int, seed: int):
    from mrcnn.data.shapes import ShapesDataset

    dataset = ShapesDataset()
    dataset.load_shapes(count, 128, 128, seed=seed)
    dataset.prepare()
    return dataset


def run_variant(variant: str, backbone: str, steps: int, seed: int, train_images: int, eval_images: int,
                verbose: int, learning_rate: float = 3e-4) -> dict:
    """Trains and evaluates one variant (in a child process). Returns its row."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from mrcnn.data.augment import Compose, HorizontalFlip, VerticalFlip
    from mrcnn.data.generator import DataGenerator
    from mrcnn.evaluation.evaluate import evaluate_dataset
    from mrcnn.model import MaskRCNN

    config = make_config(variant, backbone, seed, learning_rate=learning_rate)
    keras.utils.set_random_seed(seed)  # same initial weights for every variant of a seed
    model = MaskRCNN(mode="training", config=config, model_dir="unused")
    model.ensure_built()
    model.set_trainable(".*")
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [max(1, int(0.75 * steps))], [config.LEARNING_RATE, config.LEARNING_RATE / 10])
    model.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=config.GRADIENT_CLIP_NORM))
    # One "epoch" of exactly `steps` batches: the image order wraps around into fresh shuffles.
    generator = DataGenerator(_dataset(train_images, TRAIN_SEED), config, shuffle=True,
                              augmentation=Compose([HorizontalFlip(0.5), VerticalFlip(0.5)]), seed=seed, steps=steps)
    load = [os.getloadavg()[0]]
    tic = time.monotonic()
    history = model.fit(generator, epochs=1, verbose=verbose)
    train_seconds = time.monotonic() - tic
    done = int(model.optimizer.iterations.numpy())
    if done != steps:
        raise RuntimeError(f"{variant}: trained {done} steps, expected {steps}")
    load.append(os.getloadavg()[0])

    inference = MaskRCNN(mode="inference", config=make_config(variant, backbone, seed, inference=True,
                                                               learning_rate=learning_rate))
    inference.ensure_built()
    inference.set_weights(model.get_weights())
    if config.TRAIN_BN:
        calibration = _dataset(200, TRAIN_SEED)
        inference.recalibrate_batchnorm([calibration.load_image(i) for i in calibration.image_ids], batch_size=4)
    tic = time.monotonic()
    metrics = evaluate_dataset(inference, _dataset(eval_images, TEST_SEED), verbose=verbose)
    load.append(os.getloadavg()[0])
    # Keras reports each loss's mean over the epoch, here the whole run.
    run_means = {name: float(values[-1]) for name, values in history.history.items()}
    return dict(variant=variant, seed=seed, steps=done, train_seconds=round(train_seconds, 1),
                eval_seconds=round(time.monotonic() - tic, 1),
                mask_mAP=metrics["mask_mAP"], mask_mAP50=metrics["mask_mAP50"],
                box_mAP=metrics["box_mAP"], box_mAP50=metrics["box_mAP50"], eval_images=metrics["num_images"],
                mean_losses={k: round(v, 4) for k, v in run_means.items()}, load_1min=[round(v, 2) for v in load],
                **VARIANTS[variant])


def _summary(rows: list[dict]) -> dict:
    """Mean over seeds per variant."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        out[variant] = {key: round(sum(r[key] for r in mine) / len(mine), 4)
                        for key in ("mask_mAP", "mask_mAP50", "box_mAP", "box_mAP50")}
        out[variant]["seeds"] = len(mine)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=300, help="training steps per variant (the budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per variant and seed")
    parser.add_argument("--backbone", choices=("narrow", "small", "resnet50"), default="narrow")
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (10x lower for the last quarter)")
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--verbose", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in --out and run only the missing (variant, seed) pairs")
    parser.add_argument("--run-variant", default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")

    if args.run_variant:
        row = run_variant(args.run_variant, args.backbone, args.steps, args.seeds[0], args.train_images,
                          args.eval_images, args.verbose, args.lr)
        print("ROW " + json.dumps(row))
        return 0

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if args.resume and out.is_file():
        previous = json.loads(out.read_text())
        setup = ("backbone", "steps", "train_images", "eval_images", "lr")
        mine = {key: getattr(args, key) for key in setup}
        theirs = {key: previous.get(key) for key in setup}
        if mine != theirs:
            raise SystemExit(f"--resume: {out} holds a run of {theirs}, not {mine}")
        rows = previous["rows"]
    for seed in args.seeds:
        for variant in args.variants:
            if any(r["variant"] == variant and r["seed"] == seed for r in rows):
                continue
            command = [sys.executable, __file__, "--run-variant", variant, "--backbone", args.backbone, "--lr", str(args.lr),
                       "--steps", str(args.steps), "--seeds", str(seed), "--train-images", str(args.train_images),
                       "--eval-images", str(args.eval_images), "--verbose", str(args.verbose)]
            print(f"[{time.strftime('%H:%M:%S')}] {variant} (seed {seed}, {args.steps} steps) ...", flush=True)
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
            lines = [line for line in done.stdout.splitlines() if line.startswith("ROW ")]
            if done.returncode != 0 or not lines:
                sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
                raise RuntimeError(f"variant {variant} (seed {seed}) failed with exit code {done.returncode}")
            row = json.loads(lines[-1][4:])
            rows.append(row)
            print(f"    mask mAP@[.5:.95] {row['mask_mAP']:.4f}  mask mAP@0.5 {row['mask_mAP50']:.4f}  "
                  f"box mAP@0.5 {row['box_mAP50']:.4f}  ({row['train_seconds']:.0f} s training, "
                  f"load {row['load_1min']})", flush=True)
            result = dict(benchmark="ablation_shapes", backbone=args.backbone, lr=args.lr, steps=args.steps,
                          train_images=args.train_images, eval_images=args.eval_images,
                          seeds=sorted({r["seed"] for r in rows}),
                          machine=machine.describe(),
                          host=dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count()),
                          summary=_summary(rows), rows=rows)
            out.write_text(json.dumps(result, indent=2))  # after every variant: partial results survive
    print(json.dumps(_summary(rows), indent=2))
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
