"""Nucleus segmentation on DSB2018: Mask R-CNN vs a U-Net baseline, one protocol for both.

    python samples/nucleus/nucleus.py train    --model mrcnn --budget-minutes 45 --logs runs/nucleus
    python samples/nucleus/nucleus.py train    --model unet  --budget-minutes 45 --logs runs/nucleus
    python samples/nucleus/nucleus.py evaluate --model mrcnn --weights runs/nucleus/mrcnn.weights.h5
    python samples/nucleus/nucleus.py detect   --model unet  --weights runs/nucleus/unet.weights.h5 \
        --image some.png --tile 512 --overlap 64 --out detections.png --labels labels.png

Data: `--data` (default ../shared/data/dsb2018/stage1_train), Kaggle layout, the fixed train/val
split of samples/nucleus/dataset.py. `--cache` holds one decoded file per image (default
~/.cache/mrcnn/dsb2018). Evaluation is at native scale with pycocotools (maxDets 1000) and the
DSB2018 score; results go to `<logs>/<model>_metrics.json`. See samples/nucleus/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `samples.nucleus` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mrcnn.callbacks import TrainingBudget  # noqa: E402
from mrcnn.cli import run_command  # noqa: E402
from mrcnn.tiling import detect_tiled  # noqa: E402
from samples.nucleus.augment import microscopy_augmentation  # noqa: E402
from samples.nucleus.config import NucleusConfig, NucleusInferenceConfig  # noqa: E402
from samples.nucleus.dataset import NucleusDataset, masks_to_labels  # noqa: E402
from samples.nucleus.evaluate import evaluate_nuclei  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dsb2018" / "stage1_train"
DEFAULT_CACHE = Path("~/.cache/mrcnn/dsb2018").expanduser()
DEFAULT_TILE_OVERLAP = 64  # pixels; > the largest nucleus radius at DSB2018's scales


def load_split(args: argparse.Namespace, subset: str) -> NucleusDataset:
    dataset = NucleusDataset(cache_dir=None if args.no_cache else args.cache)
    dataset.load_kaggle(args.data, subset=subset, limit=args.limit or None)
    dataset.prepare()
    return dataset


def train(args: argparse.Namespace) -> Path:
    """Trains one model on the train split until --budget-minutes (wall) or --budget-cpu-minutes
    (CPU time) is spent; returns the weights path. Writes `<logs>/<model>_train.json` with the
    steps, wall and CPU minutes."""
    if not args.budget_minutes and not args.budget_cpu_minutes:
        raise ValueError("train needs --budget-minutes or --budget-cpu-minutes")
    if args.model == "unet" and args.crop % 2**args.unet_depth:  # each pooling halves it; skips must line up
        raise ValueError(f"--crop {args.crop} must be a multiple of {2**args.unet_depth} for a U-Net of "
                         f"--unet-depth {args.unet_depth}")
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    train_set = load_split(args, "train")
    augmentation = microscopy_augmentation(elastic=not args.no_elastic)
    # lr / 10 at 75% of the budget: the paper's step schedule scaled to the budget.
    budget = TrainingBudget(wall_seconds=(args.budget_minutes or 0) * 60,
                            cpu_seconds=(args.budget_cpu_minutes or 0) * 60, verbose=args.verbose)
    if args.model == "mrcnn":
        from mrcnn.model import MaskRCNN

        config = NucleusConfig().update(IMAGE_MIN_DIM=args.crop, SEED=args.seed)
        if args.learning_rate:
            config = config.update(LEARNING_RATE=args.learning_rate)
        model = MaskRCNN(mode="training", config=config, model_dir=str(logs))
        model.train(train_set, None, learning_rate=config.LEARNING_RATE, epochs=args.max_epochs, layers="all",
                    augmentation=augmentation, custom_callbacks=[budget], verbose=args.verbose)
        weights = logs / "mrcnn.weights.h5"
        model.save_weights(str(weights))
        config.save(logs / "mrcnn_config.json")
    else:
        from samples.nucleus.unet import build_unet, train_unet

        model = build_unet(depth=args.unet_depth, base_filters=args.unet_filters)
        train_unet(model, train_set, steps=args.max_epochs * 50, crop=args.crop, batch_size=args.batch,
                   augmentation=augmentation, callbacks=[budget], seed=args.seed, verbose=args.verbose)
        weights = logs / "unet.weights.h5"
        model.save_weights(str(weights))
    wall, cpu = budget.elapsed()
    (logs / f"{args.model}_train.json").write_text(json.dumps(
        {"model": args.model, "steps": budget.steps, "wall_minutes": round(wall / 60, 2),
         "cpu_minutes": round(cpu / 60, 2), "budget_minutes": args.budget_minutes,
         "budget_cpu_minutes": args.budget_cpu_minutes, "threads": args.threads,
         "train_images": int(train_set.num_images), "crop": args.crop, "seed": args.seed,
         "images_per_step": args.batch if args.model == "unet" else config.BATCH_SIZE,
         **({"unet_depth": args.unet_depth, "unet_filters": args.unet_filters} if args.model == "unet" else {})},
        indent=2))
    print(f"Wrote {weights}")
    return weights


def _unet_shape(args: argparse.Namespace) -> tuple[int, int]:
    """(depth, base filters) of the U-Net behind --weights: the `unet_train.json` that training wrote
    beside them when there is one (said when it overrides the flags), else the flags."""
    record = Path(args.weights).parent / "unet_train.json"
    depth, filters = args.unet_depth, args.unet_filters
    if record.is_file():
        saved = json.loads(record.read_text())
        depth, filters = int(saved.get("unet_depth", depth)), int(saved.get("unet_filters", filters))
        if (depth, filters) != (args.unet_depth, args.unet_filters):
            print(f"U-Net depth {depth}, {filters} base filters, as trained ({record})")
    return depth, filters


def load_detector(args: argparse.Namespace, output: str = "masks"):
    """A `detect(images)` callable for --model with --weights (tiled when --tile is set).

    output "labels": results carry an [H, W] int32 label image instead of the [H, W, N] mask stack
    where the detector can give one (tiled inference, the U-Net); Mask R-CNN's untiled `detect`
    gives masks either way. `evaluate_nuclei` scores both.
    """
    if args.model == "mrcnn":
        from mrcnn.model import MaskRCNN

        model = MaskRCNN(mode="inference", config=NucleusInferenceConfig(), model_dir=args.logs)
        model.load_weights(args.weights)
    else:
        from samples.nucleus.unet import UNetDetector, build_unet

        depth, filters = _unet_shape(args)
        network = build_unet(depth=depth, base_filters=filters)
        # Weights of another shape make Keras warn once per layer, then raise listing every variable:
        # those warnings are held back, and the error says what is wrong first.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                network.load_weights(args.weights)
            except ValueError as error:
                raise ValueError(f"--weights {args.weights} do not fit a U-Net of depth {depth} with {filters} "
                                 "base filters: pass the --unet-depth / --unet-filters it was trained with, or a "
                                 f"U-Net's weights (Keras: {str(error).splitlines()[0][:200]})") from None
        for warning in caught:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        model = UNetDetector(network, tile=256, margin=32)
    if args.tile:
        return lambda images: [detect_tiled(model, image, args.tile, args.overlap, output=output) for image in images]
    if args.model == "unet":
        return lambda images: model.detect(images, output=output)
    return model.detect


def _check_tiling_flags(args: argparse.Namespace) -> None:
    """--overlap only means something with --tile: alone it would be ignored without a word."""
    if args.overlap is not None and not args.tile:
        raise ValueError(f"--overlap {args.overlap} needs --tile (tiled inference); without it the whole image is "
                         "detected at once")
    if args.overlap is None:
        args.overlap = DEFAULT_TILE_OVERLAP


def evaluate(args: argparse.Namespace) -> dict:
    _check_tiling_flags(args)
    val_set = load_split(args, "val")
    # The U-Net's watershed instances never overlap: one label image holds them without the
    # [H, W, N] stack. Mask R-CNN's may overlap (kept tiled duplicates up to half the smaller
    # one), which a label image would cut: its masks are scored as they are.
    output = "labels" if args.model == "unet" else "masks"
    metrics = evaluate_nuclei(load_detector(args, output=output), val_set, max_dets=1000, verbose=args.verbose)
    # What produced these numbers, so that two metrics files can be told apart.
    metrics.update(model=args.model, weights=str(args.weights), tile=args.tile or None,
                   overlap=args.overlap if args.tile else None, output=output)
    out = Path(args.logs) / f"{args.model}_metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2))
    print(json.dumps({k: v for k, v in metrics.items() if k != "per_image_dsb"}, indent=2))
    return metrics


def detect(args: argparse.Namespace) -> str:
    from mrcnn import visualize
    from mrcnn.data.dataset import read_image_rgb

    _check_tiling_flags(args)
    image = read_image_rgb(args.image, uint16_scaling="image_max")
    result = load_detector(args)([image])[0]
    visualize.display_instances(image, result["rois"], result["masks"], result["class_ids"], ["BG", "nucleus"],
                                result["scores"], show_bbox=False, title=f"{len(result['scores'])} nuclei",
                                save_path=args.out)
    print(f"{len(result['scores'])} nuclei; wrote {args.out}")
    if args.labels:
        write_label_image(masks_to_labels(result["masks"]), args.labels)
        print(f"wrote {args.labels}")
    return args.out


def write_label_image(labels: np.ndarray, path: str | Path) -> None:
    """Writes an instance label image (0 background, k for the k-th detection by score) as a
    16-bit PNG or TIFF, the form other microscopy tools read; ValueError past 65535 instances."""
    import skimage.io

    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{int(labels.max())} instances do not fit a 16-bit label image ({path})")
    skimage.io.imsave(str(path), labels.astype(np.uint16), check_contrast=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("train", "train on the train split for a time budget"),
                       ("evaluate", "COCO mask AP, AP50, DSB score and time per image on the val split"),
                       ("detect", "draw detected nuclei on one image")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--model", choices=("mrcnn", "unet"), required=True)
        p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kaggle-layout folder (default: DSB2018 stage 1)")
        p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="decoded-image cache folder")
        p.add_argument("--no-cache", action="store_true", help="read the PNGs every time")
        p.add_argument("--limit", type=int, default=0, help="use only the first N images of the split")
        p.add_argument("--logs", default="runs/nucleus", help="output folder (default runs/nucleus)")
        p.add_argument("--unet-depth", type=int, default=4)
        p.add_argument("--unet-filters", type=int, default=32)
        p.add_argument("--verbose", type=int, default=1)
        p.add_argument("--threads", type=int, default=0, help="TF intra- and inter-op threads (0: TF's default)")
        if name == "train":
            p.add_argument("--budget-minutes", type=float, default=0, help="wall-clock training budget")
            p.add_argument("--budget-cpu-minutes", type=float, default=0,
                           help="CPU-time training budget (time.process_time(), all threads)")
            p.add_argument("--max-epochs", type=int, default=1000, help="upper bound; the budget usually ends first")
            p.add_argument("--crop", type=int, default=256, help="random training crop (multiple of 64)")
            p.add_argument("--batch", type=int, default=4, help="U-Net crops per step (Mask R-CNN: the config's)")
            p.add_argument("--no-elastic", action="store_true", help="leave out the elastic deformation")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--learning-rate", type=float, default=0,
                           help="Mask R-CNN's Adam learning rate (0: NucleusConfig.LEARNING_RATE)")
        else:
            p.add_argument("--weights", required=True, help="weights written by train")
            p.add_argument("--tile", type=int, default=0, help="tiled inference with this tile size (0: whole image)")
            p.add_argument("--overlap", type=int, default=None, help="tile overlap for --tile (default 64)")
        if name == "detect":
            p.add_argument("--image", required=True, help="image file (PNG/TIFF, gray, RGB or 16-bit)")
            p.add_argument("--out", default="detections.png")
            p.add_argument("--labels", default=None,
                           help="also write the instances as a 16-bit label image (PNG or TIFF path)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        # Must run before TF starts its runtime (the first op); one thread each lets two runs share 2 cores.
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    command = {"train": train, "evaluate": evaluate, "detect": detect}[args.command]
    return run_command(lambda: command(args), prog="nucleus.py", show_traceback=args.verbose >= 2)


if __name__ == "__main__":
    sys.exit(main())
