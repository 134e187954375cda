"""Mask R-CNN on the embedded synthetic shapes data (squares, circles, triangles).

No files are needed: images are generated from a seed (mrcnn.data.shapes).

    python samples/shapes/shapes.py demo                      # train from scratch, evaluate, draw
    python samples/shapes/shapes.py train --epochs 8 --logs runs/shapes
    python samples/shapes/shapes.py evaluate --weights last          # train's newest checkpoint
    python samples/shapes/shapes.py evaluate --weights runs/shapes/shapes.weights.h5   # demo's weights
    python samples/shapes/shapes.py detect --weights last --count 4 --out detections.png
    python samples/shapes/shapes.py export --weights runs/shapes/shapes.weights.h5 --out export/shapes/1 --frozen

`demo` is what `make demo` runs: it trains a Mask R-CNN with a narrow ResNet-FPN (`DemoConfig`)
from scratch on CPU within the time budget given by --minutes, evaluates mask and box mAP on 50
held-out images, and writes metrics.json, the weights, config.json and detections.png into --logs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mrcnn import visualize  # noqa: E402
from mrcnn.callbacks import TrainingBudget  # noqa: E402
from mrcnn.cli import run_command  # noqa: E402
from mrcnn.data.augment import Compose, HorizontalFlip, VerticalFlip  # noqa: E402
from mrcnn.data.shapes import ShapesConfig, ShapesDataset  # noqa: E402
from mrcnn.evaluation.evaluate import evaluate_dataset  # noqa: E402
from mrcnn.model import MaskRCNN  # noqa: E402
from mrcnn.modeling.architecture import Architecture  # noqa: E402

TRAIN_SEED, VAL_SEED, TEST_SEED = 1, 2, 3


class DemoConfig(ShapesConfig):
    """The shapes config `make demo` trains from scratch on 2 CPU cores.

    The whole Mask R-CNN (FPN, RPN, RoIAlign, box and mask heads) on a narrow ResNet: 2 bottleneck
    blocks per stage, 3x3 convolutions 32 wide and block outputs 128 wide at C2 (ResNet-50: 3-4-6-3
    blocks, 64 and 256), a 128-channel pyramid and RPN, a 256-wide box head. Three colours of three
    shapes need far less than ResNet-50-FPN, and a step costs ~3x less CPU (0.30 against 0.85
    CPU-s at 1 thread). In the same 6 CPU-minutes (1 thread, lr 3e-4) it scored mask mAP@0.5 0.72
    after 1061 steps where ResNet-50-FPN scored 0.22 after 375.
    """

    NAME = "shapes"
    BACKBONE = Architecture((2, 2, 2, 2), width=32, out_width=128)
    TOP_DOWN_PYRAMID_SIZE = 128
    RPN_CONV_CHANNELS = 128
    FPN_CLASSIF_FC_LAYERS_SIZE = 256  # GroupNorm's 32 groups need >= 256 (8 channels each)
    IMAGES_PER_GPU = 4
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    TRAIN_BN = True  # from scratch: BatchNorm must learn its statistics...
    BN_MOMENTUM = 0.9  # ...and its moving averages must catch up within a short run
    TRAIN_ROIS_PER_IMAGE = 16  # at most 4 shapes per image: 5 positive slots are plenty
    OPTIMIZER = "adam"  # from scratch in minutes: Adam moved the heads' losses faster than SGD here
    # GroupNorm in the box/mask heads: the heads' BatchNorm learnt statistics of training RoIs that
    # inference proposals do not share (same weights scored 4x higher with batch statistics).
    HEAD_NORM = "gn"
    # bfloat16 convolutions: ~1.7x faster on CPUs with AVX-512 BF16 (and on recent GPUs).
    MIXED_PRECISION = "mixed_bfloat16"
    # 3e-4, not 1e-3: at 1e-3 the RPN's 3x3 ReLU conv died within 100 steps (ResNet-50-FPN, P4: 2%
    # of its 512 channels ever active on held-out images, 19%/0.2% on P2/P4 after 1271 steps, the RPN
    # then scoring every anchor alike); at 3e-4 52% of the P4 channels were alive after 100 steps.
    # With the narrow model 6e-4 scored 0.36 against 0.72 at 3e-4 (6 CPU-minutes each).
    LEARNING_RATE = 0.0003
    STEPS_PER_EPOCH = 25
    KEEP_CHECKPOINTS = 2  # 12 minutes are ~130 epochs of 100 MB checkpoints (weights + Adam state)
    VALIDATION_STEPS = 2
    DETECTION_MIN_CONFIDENCE = 0.7
    SEED = 0


class InferenceConfig(DemoConfig):
    IMAGES_PER_GPU = 1
    # mAP is computed over the whole score range (COCO keeps detections above 0.05); the
    # pictures show only detections scoring DRAW_MIN_SCORE or more.
    DETECTION_MIN_CONFIDENCE = 0.05


DRAW_MIN_SCORE = 0.5


def _dataset(count: int, seed: int, size: int) -> ShapesDataset:
    dataset = ShapesDataset()
    dataset.load_shapes(count, size, size, seed=seed)
    dataset.prepare()
    return dataset


def _resolve_weights(model: MaskRCNN, weights: str | None) -> None:
    if not weights:
        return
    path = model.find_last() if weights == "last" else weights
    print(f"Loading weights {path}")
    model.load_weights(path)


def train(args: argparse.Namespace) -> tuple[MaskRCNN, TrainingBudget | None]:
    """Trains heads+backbone from scratch (or continues from --weights) for --epochs epochs.

    Returns:
        The model and its time-budget callback (None without a budget), which counts the steps.
    """
    overrides = {"STEPS_PER_EPOCH": args.steps, "IMAGES_PER_GPU": args.batch, "OPTIMIZER": args.optimizer,
                 "LEARNING_RATE": args.lr}
    config = DemoConfig().update(**{name: value for name, value in overrides.items() if value})
    keras.utils.set_random_seed(config.SEED)
    size = config.IMAGE_MAX_DIM
    train_set = _dataset(args.train_images, TRAIN_SEED, size)
    val_set = _dataset(args.val_images, VAL_SEED, size)
    model = MaskRCNN(mode="training", config=config, model_dir=args.logs)
    _resolve_weights(model, args.weights)
    augmentation = Compose([HorizontalFlip(0.5), VerticalFlip(0.5)])
    if args.cpu_minutes:
        callbacks = [TrainingBudget(cpu_seconds=args.cpu_minutes * 60, verbose=1)]
    else:
        callbacks = [TrainingBudget(wall_seconds=args.minutes * 60, verbose=1)] if args.minutes else []
    model.train(train_set, val_set, learning_rate=config.LEARNING_RATE, epochs=args.epochs, layers="all",
                augmentation=augmentation, custom_callbacks=callbacks, verbose=args.verbose)
    return model, (callbacks[0] if callbacks else None)


def evaluate(model: MaskRCNN, count: int, verbose: int = 1) -> dict:
    """mAP@0.5 and mAP@[.5:.95] (boxes and masks) on `count` held-out images."""
    config = model.config
    test_set = _dataset(count, TEST_SEED, config.IMAGE_MAX_DIM)
    return evaluate_dataset(model, test_set, verbose=verbose)


def draw(model: MaskRCNN, count: int, out: str) -> str:
    """Draws detections on `count` held-out images into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = _dataset(count, TEST_SEED + 100, model.config.IMAGE_MAX_DIM)
    images = [dataset.load_image(i) for i in dataset.image_ids]
    results = model.detect(images)
    cols = min(count, 4)
    rows = int(np.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax, image, r in zip(axes.ravel(), images, results):
        keep = r["scores"] >= DRAW_MIN_SCORE
        visualize.display_instances(image, r["rois"][keep], r["masks"][..., keep], r["class_ids"][keep],
                                    dataset.class_names, r["scores"][keep], ax=ax,
                                    title=f"{int(keep.sum())} found (score >= {DRAW_MIN_SCORE})")
    for ax in axes.ravel()[len(images):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def demo(args: argparse.Namespace) -> dict:
    """Train from scratch, evaluate on 50 held-out images, write metrics.json + weights + picture."""
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    tic, cpu_tic = time.monotonic(), time.process_time()
    model, budget = train(args)
    train_seconds, cpu_seconds = time.monotonic() - tic, time.process_time() - cpu_tic
    weights_path = logs / "shapes.weights.h5"
    model.save_weights(str(weights_path))
    model.config.save(logs / "config.json")
    inference = MaskRCNN(mode="inference", config=InferenceConfig(), model_dir=args.logs)
    inference.load_weights(str(weights_path))
    # From scratch with TRAIN_BN: re-estimate BatchNorm statistics on inference-time inputs.
    calibration = _dataset(args.calibration_images, TRAIN_SEED, inference.config.IMAGE_MAX_DIM)
    inference.recalibrate_batchnorm([calibration.load_image(i) for i in calibration.image_ids],
                                    batch_size=DemoConfig.IMAGES_PER_GPU, verbose=args.verbose)
    # The saved weights are the ones evaluated below (recalibrated statistics included).
    inference.save_weights(str(weights_path))
    metrics = evaluate(inference, args.eval_images, verbose=args.verbose)
    metrics.update(train_seconds=round(train_seconds, 1), epochs_trained=model.epoch,
                   train_steps=budget.steps if budget is not None else None,
                   train_cpu_seconds=round(cpu_seconds, 1),
                   train_images=args.train_images, eval_images=args.eval_images)
    (logs / "metrics.json").write_text(json.dumps(metrics, indent=2))
    picture = draw(inference, 4, str(logs / "detections.png"))
    print("\nHeld-out shapes ({} images): mask mAP@0.5 = {:.3f}, mask mAP@[.5:.95] = {:.3f}, "
          "box mAP@0.5 = {:.3f}".format(args.eval_images, metrics["mask_mAP50"], metrics["mask_mAP"],
                                         metrics["box_mAP50"]))
    print(f"Training took {train_seconds / 60:.1f} min.")
    print(f"Wrote {logs / 'metrics.json'}, {weights_path}, {logs / 'config.json'} and {picture}")
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--logs", default="runs/shapes", help="log/checkpoint directory (default runs/shapes)")
        p.add_argument("--verbose", type=int, default=1, help="0 silent, 1 progress bars")

    def training(p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=int, default=1000,
                       help="train up to this epoch (an upper bound: the --minutes budget ends the demo first)")
        p.add_argument("--steps", type=int, default=0, help="steps per epoch (default: the config's)")
        p.add_argument("--minutes", type=float, default=12.0, help="stop training after this many minutes")
        p.add_argument("--cpu-minutes", type=float, default=0.0,
                       help="instead of --minutes: stop after this many CPU-minutes of this process (all threads; "
                            "for measuring on a shared machine: 2 cores x 12 min = 24)")
        p.add_argument("--train-images", type=int, default=2000, help="generated training images")
        p.add_argument("--val-images", type=int, default=50, help="generated validation images")
        p.add_argument("--weights", default=None, help="start from: a path, or 'last'")
        p.add_argument("--batch", type=int, default=0, help="images per step (default: the config's)")
        p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None, help="default: the config's")
        p.add_argument("--lr", type=float, default=0.0, help="learning rate (default: the config's)")

    p = sub.add_parser("demo", help="train from scratch, evaluate on held-out images, draw detections")
    common(p)
    training(p)
    p.add_argument("--eval-images", type=int, default=50, help="held-out images for evaluation")
    p.add_argument("--calibration-images", type=int, default=200,
                   help="training images used to re-estimate BatchNorm statistics before evaluation")
    p = sub.add_parser("train", help="train on generated shapes")
    common(p)
    training(p)
    p = sub.add_parser("evaluate", help="mAP on held-out shapes")
    common(p)
    p.add_argument("--weights", required=True, help="a weights path, or 'last'")
    p.add_argument("--eval-images", type=int, default=50)
    p = sub.add_parser("detect", help="draw detections on generated images")
    common(p)
    p.add_argument("--weights", required=True, help="a weights path, or 'last'")
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--out", default="detections.png")
    p = sub.add_parser("export", help="write the inference model as a TensorFlow SavedModel (mrcnn.export)")
    common(p)
    p.add_argument("--weights", required=True, help="a weights path, or 'last'")
    p.add_argument("--out", required=True, help="the SavedModel folder (for TF Serving: NAME/1)")
    p.add_argument("--frozen", action="store_true", help="weights as constants, BatchNorms folded (faster on CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace an export already in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs a command; returns 0, 2 with one error line for a missing file or bad input, 130 on Ctrl-C."""
    args = _parser().parse_args(argv)
    return run_command(lambda: _run(args), prog="shapes.py", show_traceback=args.verbose >= 2,
                       interrupted_hint="Interrupted: continue with train --weights last")


def _run(args: argparse.Namespace) -> None:
    if args.command == "demo":
        demo(args)
    elif args.command == "train":
        train(args)
    else:
        model = MaskRCNN(mode="inference", config=InferenceConfig(), model_dir=args.logs)
        _resolve_weights(model, args.weights)
        if args.command == "evaluate":
            print(json.dumps(evaluate(model, args.eval_images, verbose=args.verbose), indent=2))
        elif args.command == "export":
            from mrcnn.export import export_saved_model

            path = export_saved_model(model, args.out, class_names=_dataset(1, TEST_SEED, 64).class_names,
                                      frozen=args.frozen, overwrite=args.overwrite)
            print(f"Wrote the SavedModel {path} (load it with mrcnn.export.ExportedMaskRCNN, or serve it)")
        else:
            print(f"Wrote {draw(model, args.count, args.out)}")


if __name__ == "__main__":
    sys.exit(main())
