"""Keypoint R-CNN on the embedded synthetic stick figures (7 joints per figure).

No files are needed: images are generated from a seed (mrcnn.data.stick_figures).

    python samples/keypoints/keypoints.py --minutes 10 --logs runs/keypoints           # keypoint-only
    python samples/keypoints/keypoints.py --minutes 10 --mask --logs runs/keypoints   # mask + keypoints

Trains a ResNet-50-FPN Keypoint R-CNN from scratch on CPU for the given time budget, scores it
on held-out images with COCOeval (keypoint OKS AP with the stick figures' sigmas, and box AP),
and writes metrics.json, the weights, config.json and keypoints.png (detections with their
skeletons) into --logs.
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
from mrcnn.data.augment import HorizontalFlip  # noqa: E402
from mrcnn.data.stick_figures import OKS_SIGMAS, StickFiguresConfig, StickFiguresDataset  # noqa: E402
from mrcnn.evaluation.coco_eval import build_coco_results, coco_eval_stats, dataset_to_coco  # noqa: E402
from mrcnn.model import MaskRCNN  # noqa: E402

TRAIN_SEED, TEST_SEED = 1, 3


class DemoConfig(StickFiguresConfig):
    """Stick figures at 128 px, trained from scratch on a CPU."""

    NAME = "keypoints"
    TRAIN_BN = True  # from scratch: BatchNorm learns its statistics...
    BN_MOMENTUM = 0.9  # ...and its averages catch up within a short run
    HEAD_NORM = "gn"  # per-RoI normalization in the box/mask heads: same in training and inference
    TRAIN_ROIS_PER_IMAGE = 16
    OPTIMIZER = "adam"
    LEARNING_RATE = 0.001
    STEPS_PER_EPOCH = 25
    # The paper's keypoint head (8 x 512) is ~4 GFLOP per RoI: a narrower one trains on a CPU.
    KEYPOINT_HEAD_CONV_CHANNELS = 128
    MASK_HEAD = False
    SEED = 0


def _dataset(count: int, seed: int, size: int) -> StickFiguresDataset:
    dataset = StickFiguresDataset()
    dataset.load_stick_figures(count, size, size, seed=seed, max_figures=2)
    dataset.prepare()
    return dataset


def evaluate(model: MaskRCNN, dataset: StickFiguresDataset) -> dict:
    """COCOeval keypoint (OKS) and box AP of `model` on `dataset`."""
    images = [dataset.load_image(i) for i in dataset.image_ids]
    tic = time.perf_counter()
    detections = model.detect(images)
    seconds = (time.perf_counter() - tic) / len(images)
    results = build_coco_results(dataset, list(dataset.image_ids), [r["rois"] for r in detections],
                                 [r["class_ids"] for r in detections], [r["scores"] for r in detections],
                                 keypoints=[r["keypoints"] for r in detections])
    gt = dataset_to_coco(dataset, with_keypoints=True)
    metrics = {"seconds_per_image": seconds, "num_detections": len(results)}
    # No detection still scores (AP 0 where there is ground truth) rather than leaving the keys out.
    metrics["keypoints"] = coco_eval_stats(gt, results, "keypoints", kpt_oks_sigmas=OKS_SIGMAS)
    metrics["bbox"] = coco_eval_stats(gt, results, "bbox")
    if not results:
        metrics["note"] = "the model detected nothing (train longer: --minutes)"
    return metrics


def draw(model: MaskRCNN, dataset: StickFiguresDataset, out: Path, count: int = 4) -> None:
    from matplotlib.figure import Figure

    count = min(count, dataset.num_images)
    figure = Figure(figsize=(4 * count, 4))
    axes = np.atleast_1d(figure.subplots(1, count))
    for ax, image_id in zip(axes, dataset.image_ids[:count]):
        image = dataset.load_image(image_id)
        result = model.detect([image])[0]
        keep = result["scores"] >= 0.7
        visualize.display_keypoints(image, result["keypoints"][keep], skeleton=model.config.KEYPOINT_SKELETON,
                                    boxes=result["rois"][keep], min_score=0.0, ax=ax)
    figure.savefig(str(out), bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", default="runs/keypoints", help="output directory (default runs/keypoints)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    parser.add_argument("--epochs", type=int, default=1000, help="upper bound on epochs (the budget ends first)")
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--eval-images", type=int, default=50)
    parser.add_argument("--mask", action="store_true", help="multi-task: mask head as well (MASK_HEAD = True)")
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    return run_command(lambda: _run(args), prog="keypoints.py", show_traceback=args.verbose >= 2,
                       interrupted_hint="Interrupted: the run's state is in its folder under --logs")


def _run(args: argparse.Namespace) -> None:
    if args.minutes <= 0 or args.train_images < 1 or args.eval_images < 1:
        raise ValueError(f"--minutes must be positive and --train-images / --eval-images at least 1, got "
                         f"{args.minutes}, {args.train_images}, {args.eval_images}")
    keras.utils.set_random_seed(0)
    config = DemoConfig().update(MASK_HEAD=bool(args.mask))
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    train_set = _dataset(args.train_images, TRAIN_SEED, config.IMAGE_MAX_DIM)
    test_set = _dataset(args.eval_images, TEST_SEED, config.IMAGE_MAX_DIM)
    model = MaskRCNN(mode="training", config=config, model_dir=str(logs))
    tic = time.monotonic()
    model.train(train_set, None, learning_rate=config.LEARNING_RATE, epochs=args.epochs, layers="all",
                augmentation=HorizontalFlip(0.5), custom_callbacks=[TrainingBudget(wall_seconds=60 * args.minutes, decay_at=None)],
                verbose=args.verbose)
    train_seconds = time.monotonic() - tic
    # From-scratch BatchNorm: re-estimate the moving statistics on inference-time inputs.
    model.recalibrate_batchnorm([train_set.load_image(i) for i in train_set.image_ids[:200]], passes=1)
    weights = logs / "keypoints.weights.h5"
    model.save_weights(str(weights))
    config.save(logs / "config.json")
    # COCO-style evaluation scores the whole ranking: keep detections down to 0.05.
    inference = MaskRCNN(mode="inference", config=DemoConfig().update(
        MASK_HEAD=config.MASK_HEAD, IMAGES_PER_GPU=1, DETECTION_MIN_CONFIDENCE=0.05), model_dir=str(logs))
    inference.load_weights(str(weights))
    metrics = evaluate(inference, test_set)
    metrics.update(train_seconds=train_seconds, steps=int(model.optimizer.iterations.numpy()), mask_head=config.MASK_HEAD)
    (logs / "metrics.json").write_text(json.dumps(metrics, indent=2))
    draw(inference, test_set, logs / "keypoints.png")
    if args.verbose:
        print(json.dumps({k: metrics[k] for k in ("keypoints", "bbox", "note") if k in metrics}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
