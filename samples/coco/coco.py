"""Mask R-CNN on MS COCO: train (staged, the paper's schedule) and evaluate (pycocotools).

    # Train from ImageNet weights, 8 GPUs (global batch 16 = the paper's), to the paper's 160k iterations
    python samples/coco/coco.py train --dataset /data/coco --year 2017 --model imagenet --gpus 8
    # Continue the newest run where it stopped (next epoch, same LR schedule and momentum)
    python samples/coco/coco.py train --dataset /data/coco --model last
    # Evaluate (bbox and segm AP) on 500 val images
    python samples/coco/coco.py evaluate --dataset /data/coco --model last --limit 500
    # A quick look on a small machine: a tiny model for 1 step on 8 images
    python samples/coco/coco.py train --dataset /data/coco --model none --limit 8 --steps 1 \\
        --set IMAGE_MIN_DIM=128 --set IMAGE_MAX_DIM=128 --set BACKBONE=resnet50

    # Keypoint R-CNN (the paper's Sec. 5): persons with masks and 17 keypoints, scored by OKS too
    python samples/coco/coco.py train --dataset /data/coco --model imagenet --gpus 8 --keypoints
    python samples/coco/coco.py evaluate --dataset /data/coco --model last --keypoints

`--dataset` is a folder in the standard COCO layout (``annotations/instances_<subset><year>.json``
and ``<subset><year>/``; mrcnn.data.coco.coco_paths). With `--keypoints` the annotations are
``annotations/person_keypoints_<subset><year>.json``, the model has the keypoint branch
(`KEYPOINT_HEAD`, COCO's 17 person keypoints, their left/right partners and skeleton) and two
classes (background, person), and `evaluate` adds COCO's keypoint AP (maxDets 20). `--model`: a weights path, ``last`` (newest
checkpoint under --logs), ``imagenet`` (ImageNet ResNet backbone), ``coco`` (matterport's
mask_rcnn_coco.h5) or ``none`` (from scratch). Published weights are taken from the cache
(mrcnn.weights.default_weights_dir) and downloaded only with --download.

Training (`CocoConfig`, `train_stages`): the paper's recipe (Mask R-CNN, Sec. 3.1): SGD with
momentum 0.9, weight decay 1e-4, learning rate 0.02 for a global batch of 16 images (scaled
linearly to the actual global batch: IMAGES_PER_GPU x the replicas of every worker), divided by 10 at 120k of 160k iterations (both counted at
batch 16 and rescaled), images rescaled so the shorter side is random in [640, 800] (scale
augmentation, as the paper's Appendix B / keypoint training) with horizontal flips. One
learning-rate schedule runs over matterport's three stages, whose epoch boundaries keep
matterport's 40/120/160 proportions: heads, then ResNet stage 4 and up ("4+"), then all layers.
The schedule reads the optimizer's iteration count, which `MaskRCNN.train` carries across stages
and restores from checkpoints, so a resumed run continues it exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STAGES = (("heads", 0.25), ("4+", 0.75), ("all", 1.0))  # matterport's 40 / 120 / 160 epochs
PERSON_CATEGORY_ID = 1  # COCO's; the one category of the person_keypoints files


def _config_classes():
    """CocoConfig / CocoInferenceConfig (built lazily: importing mrcnn pulls in TensorFlow)."""
    from mrcnn.config import Config

    class CocoConfig(Config):
        """COCO with the paper's training recipe; fields below SCHEDULE_* are this sample's own."""

        NAME = "coco"
        NUM_CLASSES = 1 + 80
        BACKBONE = "resnet101"
        IMAGES_PER_GPU = 2
        STEPS_PER_EPOCH = 1000
        VALIDATION_STEPS = 50
        LEARNING_RATE = 0.02  # for SCHEDULE_BATCH images per step; scaled to the real batch
        LEARNING_MOMENTUM = 0.9
        WEIGHT_DECAY = 0.0001
        # Scale augmentation: images arrive with their shorter side in [640, 800] (ScaleJitter);
        # IMAGE_MIN_DIM must not scale them back up, IMAGE_MAX_DIM is the square canvas.
        IMAGE_MIN_DIM = 640
        IMAGE_MAX_DIM = 1024
        TRAIN_ROIS_PER_IMAGE = 512  # the paper's FPN setting (matterport used 200)
        ROI_POSITIVE_RATIO = 0.25
        # --- this sample's schedule (the paper's, at its batch of 16 images) ---------------------
        SCHEDULE_BATCH = 16
        SCHEDULE_ITERATIONS = 160000
        SCHEDULE_DECAY_AT = (120000,)
        SCHEDULE_WARMUP_ITERATIONS = 500  # Detectron's linear warm-up (the paper states none)
        SCALE_JITTER = (640, 800)

    class CocoInferenceConfig(CocoConfig):
        IMAGES_PER_GPU = 1
        GPU_COUNT = 1
        IMAGE_MIN_DIM = 800  # the paper's test scale
        DETECTION_MIN_CONFIDENCE = 0.05  # COCO AP integrates over the whole score range

    return CocoConfig, CocoInferenceConfig


def make_config(args: argparse.Namespace, inference: bool = False):
    """The config of a command line: CocoConfig (or its inference variant) + --gpus, --steps, --set."""
    train_cls, inference_cls = _config_classes()
    config = (inference_cls if inference else train_cls)()
    from mrcnn.cli import parse_overrides

    if getattr(args, "keypoints", False):
        from mrcnn.data.coco import COCO_PERSON_FLIP_MAP, COCO_PERSON_KEYPOINT_NAMES, COCO_PERSON_SKELETON

        # Persons only, with the keypoint branch beside the mask branch; --set may still change these.
        config = config.update(NAME=f"{config.NAME}_keypoints", NUM_CLASSES=1 + 1, KEYPOINT_HEAD=True,
                               NUM_KEYPOINTS=len(COCO_PERSON_KEYPOINT_NAMES), KEYPOINT_NAMES=COCO_PERSON_KEYPOINT_NAMES,
                               KEYPOINT_FLIP_MAP=COCO_PERSON_FLIP_MAP, KEYPOINT_SKELETON=COCO_PERSON_SKELETON)
    overrides = parse_overrides(getattr(args, "set", None))
    if not inference and getattr(args, "gpus", None):
        overrides.setdefault("GPU_COUNT", int(args.gpus))
    if not inference and getattr(args, "steps", None):
        overrides.setdefault("STEPS_PER_EPOCH", int(args.steps))
    if not inference and getattr(args, "limit", 0) and "VALIDATION_STEPS" not in overrides:
        overrides["VALIDATION_STEPS"] = 1  # a --limit run is a smoke test
    return config.update(**overrides) if overrides else config


class PaperSchedule:
    """Builds the paper's step schedule for a config (see module docstring)."""

    @staticmethod
    def iterations(config: Any, global_batch: int | None = None) -> tuple[int, list[int], int]:
        """(total iterations, decay boundaries, warm-up) at the global batch (default BATCH_SIZE)."""
        factor = config.SCHEDULE_BATCH / (global_batch or config.BATCH_SIZE)
        total = max(1, round(config.SCHEDULE_ITERATIONS * factor))
        boundaries = [max(1, round(b * factor)) for b in config.SCHEDULE_DECAY_AT]
        warmup = round(config.SCHEDULE_WARMUP_ITERATIONS * factor)
        return total, boundaries, warmup

    @staticmethod
    def base_learning_rate(config: Any, global_batch: int | None = None) -> float:
        """LEARNING_RATE scaled linearly from SCHEDULE_BATCH to the global batch (default
        BATCH_SIZE; Goyal et al.)."""
        return config.LEARNING_RATE * (global_batch or config.BATCH_SIZE) / config.SCHEDULE_BATCH


def make_schedule(config: Any, global_batch: int | None = None):
    """A Keras LearningRateSchedule: linear warm-up, then base LR divided by 10 at each boundary.

    `global_batch`: images per step over every replica and worker (`distribute.global_batch_size`;
    default config.BATCH_SIZE, which counts one machine's replicas only).
    """
    import keras

    total, boundaries, warmup = PaperSchedule.iterations(config, global_batch)
    base = PaperSchedule.base_learning_rate(config, global_batch)

    @keras.saving.register_keras_serializable(package="mrcnn_samples")
    class StepSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, base_lr: float, boundaries: list[int], warmup: int, factor: float = 0.1) -> None:
            self.base_lr, self.boundaries, self.warmup, self.factor = base_lr, list(boundaries), warmup, factor

        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            lr = keras.ops.convert_to_tensor(self.base_lr, "float32")
            for boundary in self.boundaries:
                lr = keras.ops.where(step >= boundary, lr * self.factor, lr)
            if self.warmup:
                # Detectron: from base/3 to base over the warm-up iterations.
                ramp = 1.0 / 3.0 + (2.0 / 3.0) * keras.ops.minimum(step / self.warmup, 1.0)
                lr = lr * ramp
            return lr

        def get_config(self) -> dict[str, Any]:
            return {"base_lr": self.base_lr, "boundaries": self.boundaries, "warmup": self.warmup,
                    "factor": self.factor}

    return StepSchedule(base, boundaries, warmup)


def train_stages(config: Any, global_batch: int | None = None) -> list[tuple[str, int]]:
    """[(layers, train up to epoch)] for the heads / 4+ / all stages over the whole schedule
    (at `global_batch` images per step, default config.BATCH_SIZE)."""
    total, _, _ = PaperSchedule.iterations(config, global_batch)
    epochs = max(len(STAGES), math.ceil(total / config.STEPS_PER_EPOCH))
    stages, previous = [], 0
    for layers, fraction in STAGES:
        end = max(previous + 1, round(epochs * fraction))
        stages.append((layers, end))
        previous = end
    return stages


def load_datasets(args: argparse.Namespace, subsets: tuple[str, ...]):
    """Prepared CocoDatasets for `subsets` (--limit keeps the first N images of each)."""
    from mrcnn.data.coco import CocoDataset

    datasets = []
    for subset in subsets:
        dataset = CocoDataset()
        keypoints = getattr(args, "keypoints", False)
        coco = dataset.load_coco(args.dataset, subset, year=args.year, return_coco=True, auto_download=args.download,
                                 kind="person_keypoints" if keypoints else "instances",
                                 class_ids=[PERSON_CATEGORY_ID] if keypoints else None)
        if args.limit:
            dataset.image_info = dataset.image_info[:args.limit]
        dataset.prepare()
        datasets.append((dataset, coco))
    return datasets


def load_initial_weights(model: Any, spec: str, download: bool, verbose: int = 1) -> str | None:
    """Applies --model to a freshly built model; returns what was loaded (None for 'none')."""
    from mrcnn import weights as weights_io

    if spec in ("none", "scratch"):
        if model.mode == "training":
            weights_io.warn_if_scratch_with_frozen_batchnorm(model.config)
        return None
    if spec == "last":
        try:
            path = model.find_last()
        except FileNotFoundError as error:
            from mrcnn import distribute

            if distribute.is_multi_worker_config(distribute.read_tf_config()):
                # Only the chief writes checkpoints; this worker would otherwise leave its peers
                # failing in their first collective with nothing but "the tasks have crashed".
                raise FileNotFoundError(
                    f"{error}. Under TF_CONFIG only the chief writes checkpoints and every worker must load "
                    "them: give all workers one shared --logs folder, or copy the chief's checkpoint to "
                    "each worker and pass its path as --model") from error
            raise
        model.load_weights(path)
        return path
    if spec == "imagenet":
        architecture = model.config.BACKBONE if isinstance(model.config.BACKBONE, str) else "resnet50"
        path = weights_io.weights_file_path(weights_io.imagenet_weights_key(architecture), download=download,
                                            verbose=verbose)
        model.ensure_built()
        weights_io.load_imagenet_backbone(model, path)
        return str(path)
    if spec == "coco":
        path = weights_io.weights_file_path("coco", download=download, verbose=verbose)
        # Heads of another class count cannot take COCO's 81-class layers.
        exclude = weights_io.MATTERPORT_HEAD_LAYERS if model.config.NUM_CLASSES != 81 else None
        model.load_weights(str(path), by_name=True, exclude=exclude)
        return str(path)
    model.load_weights(spec, by_name=not spec.endswith(".weights.h5"))
    return spec


def train(args: argparse.Namespace) -> Any:
    """Staged training over the paper's schedule; returns the model."""
    from mrcnn import distribute
    from mrcnn.data.augment import Compose, HorizontalFlip, ScaleJitter
    from mrcnn.model import MaskRCNN

    config = make_config(args)
    strategy = distribute.make_strategy(config)  # GPU_COUNT > 1: MirroredStrategy; TF_CONFIG: multi-worker
    if args.verbose:
        config.display()
    (train_set, _), (val_set, _) = load_datasets(args, (args.train_subset, args.val_subset))
    with strategy.scope():
        model = MaskRCNN(mode="training", config=config, model_dir=args.logs)
        loaded = load_initial_weights(model, args.model, args.download, args.verbose)
    # Under TF_CONFIG the replicas of every worker share each step: the schedule scales to all of them.
    global_batch = distribute.global_batch_size(config, strategy)
    print(f"Initial weights: {loaded or 'none (from scratch)'}; replicas: {strategy.num_replicas_in_sync}; "
          f"global batch: {global_batch}")
    augmentation = Compose([ScaleJitter(*config.SCALE_JITTER, max_size=config.IMAGE_MAX_DIM), HorizontalFlip(0.5)])
    schedule = make_schedule(config, global_batch)
    stages = train_stages(config, global_batch)
    if args.epochs:
        stages = [(layers, min(end, args.epochs)) for layers, end in stages]
    for layers, end in stages:
        if model.epoch >= end:
            continue  # a resumed run skips the stages it has finished
        print(f"Training {layers} up to epoch {end}")
        model.train(train_set, val_set, learning_rate=schedule, epochs=end, layers=layers,
                    augmentation=augmentation, verbose=args.verbose, workers=args.workers)
    return model


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """COCO bbox and segm AP (and keypoint AP with --keypoints) of --model on --limit images of the val subset."""
    from mrcnn.evaluation.coco_eval import evaluate_coco
    from mrcnn.model import MaskRCNN

    config = make_config(args, inference=True)
    ((dataset, coco),) = load_datasets(args, (args.val_subset,))
    model = MaskRCNN(mode="inference", config=config, model_dir=args.logs)
    loaded = load_initial_weights(model, args.model, args.download, args.verbose)
    print(f"Evaluating {loaded or 'random weights (--model none)'} on {len(dataset.image_ids)} images of "
          f"{args.val_subset}{args.year}")
    results_path = Path(args.logs) / f"detections_{args.val_subset}{args.year}.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    eval_types = ("bbox", "segm") + (("keypoints",) if config.KEYPOINT_HEAD else ())
    stats = evaluate_coco(model, dataset, coco, eval_types=eval_types, max_dets=args.max_dets,
                          results_path=str(results_path), verbose=args.verbose)
    print(json.dumps(stats, indent=2, default=float))
    return stats


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "train on COCO (staged, the paper's schedule)"),
                            ("evaluate", "COCO bbox/segm AP with pycocotools")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--dataset", required=True, help="COCO folder (annotations/, train2017/, val2017/)")
        p.add_argument("--year", default="2017", help="2014 or 2017 (default 2017)")
        p.add_argument("--model", default="imagenet" if name == "train" else "last",
                       help="weights: a path, 'last', 'imagenet', 'coco' or 'none'")
        p.add_argument("--logs", default="logs", help="log and checkpoint folder (default logs/)")
        p.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
        p.add_argument("--download", action="store_true", help="download missing COCO files / published weights")
        p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a Config field (repeatable)")
        p.add_argument("--val-subset", default="val", help="validation/evaluation subset (default val)")
        p.add_argument("--keypoints", action="store_true",
                       help="Keypoint R-CNN on person_keypoints_*.json (persons, masks and 17 keypoints)")
        p.add_argument("--verbose", type=int, default=1)
        if name == "train":
            p.add_argument("--gpus", type=int, default=0, help="replicas (MirroredStrategy); default GPU_COUNT")
            p.add_argument("--train-subset", default="train")
            p.add_argument("--steps", type=int, default=0, help="steps per epoch (default STEPS_PER_EPOCH)")
            p.add_argument("--epochs", type=int, default=0, help="stop after this epoch (default: the schedule's end)")
            p.add_argument("--workers", type=int, default=1, help="data loading threads")
        else:
            p.add_argument("--max-dets", type=int, default=100,
                           help="COCOeval maxDets for bbox/segm (default 100; keypoints use COCO's 20)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs a command; returns 0, 2 with one error line for a missing file or bad input, 130 on Ctrl-C."""
    from mrcnn.cli import run_command

    args = build_parser().parse_args(argv)
    command = train if args.command == "train" else evaluate
    return run_command(lambda: command(args), prog="coco.py", show_traceback=args.verbose >= 2,
                       interrupted_hint="Interrupted: resume with --model last")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
