"""Fine-tune Mask R-CNN on your own polygon-annotated data (labelme or VIA JSON).

Dataset layout: DATASET/train and DATASET/val, each holding labelme JSON files (one per image,
next to the images) and/or a VIA 1.x/2.x JSON file with its images.

    # start from ImageNet (keras.applications ResNet; --download fetches it once)
    python samples/custom/custom.py train --dataset mydata --weights imagenet --download
    # start from matterport's COCO model (a ResNet-101-FPN): heads are re-initialised
    python samples/custom/custom.py train --dataset mydata --weights coco --set BACKBONE=resnet101
    python samples/custom/custom.py train --dataset mydata --weights last          # continue
    python samples/custom/custom.py evaluate --dataset mydata --weights last
    python samples/custom/custom.py detect --weights last --image photo.jpg --out detections.png
    python samples/custom/custom.py splash --weights last --image photo.jpg --out splash.png
    python samples/custom/custom.py export --weights last --out export/custom/1   # SavedModel for serving

Training runs two stages, as matterport's balloon sample: the heads (FPN, RPN, box and mask
heads) up to --epochs-heads, then all layers up to --epochs-all at a tenth of the learning rate.
`--set FIELD=VALUE` overrides any Config field (the value is read as JSON when it parses).
Nothing is downloaded unless --download is given; offline, the error names the URL and where to
put the file. Each run's log dir holds config.json and class_names.json, which evaluate, detect,
splash and export read back from beside the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `samples.custom` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from mrcnn.cli import parse_canvas, parse_overrides  # noqa: E402
from mrcnn.config import Config  # noqa: E402
from samples.custom.polygon_dataset import PolygonDataset  # noqa: E402

CLASS_NAMES_FILE = "class_names.json"


class CustomConfig(Config):
    """Defaults for fine-tuning on a small custom dataset (NUM_CLASSES is set from the data)."""

    NAME = "custom"
    NUM_CLASSES = 1 + 1  # replaced by 1 + the number of classes found in the data
    BACKBONE = "resnet50"
    IMAGES_PER_GPU = 2
    IMAGE_MIN_DIM = 512
    IMAGE_MAX_DIM = 512
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 5
    DETECTION_MIN_CONFIDENCE = 0.9  # few classes: keep only confident detections (matterport's balloon)
    LEARNING_RATE = 0.001


def make_config(num_classes: int, overrides: dict[str, Any] | None = None, inference: bool = False,
                base: dict[str, Any] | None = None) -> CustomConfig:
    """CustomConfig for `num_classes` classes (background excluded), with overrides applied.

    Args:
        base: saved config values (config.json of a run) to start from instead of the defaults.
        inference: one image per batch.
    """
    config = CustomConfig.from_dict(base) if base else CustomConfig()
    fields = {"NUM_CLASSES": 1 + num_classes}
    if inference:
        fields.update(GPU_COUNT=1, IMAGES_PER_GPU=1)
    fields.update(overrides or {})
    return config.update(**fields)


def load_subset(dataset_dir: str | Path, subset: str, class_names: list[str] | None,
                class_attribute: str, default_class: str | None) -> PolygonDataset:
    """The prepared dataset of DATASET/<subset>."""
    dataset = PolygonDataset()
    dataset.load_folder(Path(dataset_dir) / subset, class_names=class_names, class_attribute=class_attribute,
                        default_class=default_class)
    dataset.prepare()
    return dataset


# ----------------------------------------------------------------------------------------------
# Weights to start from
def resolve_start_weights(args: argparse.Namespace, config: Config) -> tuple[str, Path | None]:
    """(kind, file) for --weights, checked before any model is built so that errors come first.

    kind: "imagenet", "coco", "last", "file" or "none". Raises FileNotFoundError (offline:
    WeightsNotAvailableError naming the URL and the destination) or ValueError.
    """
    from mrcnn.weights import imagenet_weights_key, weights_file_path

    choice = args.weights
    if choice == "none":
        return "none", None
    if choice == "last":
        return "last", None
    if choice == "imagenet":
        key = imagenet_weights_key(config.BACKBONE, args.imagenet_source)
        return "imagenet", weights_file_path(key, path=args.weights_file, download=args.download)
    if choice == "coco":
        if config.BACKBONE != "resnet101":
            raise ValueError("matterport's mask_rcnn_coco.h5 is a ResNet-101-FPN: add --set BACKBONE=resnet101 "
                             f"(BACKBONE is {config.BACKBONE!r}), or start from --weights imagenet")
        return "coco", weights_file_path("coco", path=args.weights_file, download=args.download)
    path = Path(choice)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {choice}: no such file (expected imagenet, coco, last, none or a path)")
    return "file", path


def own_weights_file(args: argparse.Namespace) -> Path | None:
    """The weights file of --weights last (the newest checkpoint under --logs) or --weights PATH;
    None for imagenet, coco and none. FileNotFoundError naming what is missing."""
    from mrcnn.model import MaskRCNN

    if args.weights in ("imagenet", "coco", "none"):
        return None
    if args.weights == "last":
        # find_last needs only model_dir and the config's NAME; layers get weights only when called.
        probe = MaskRCNN(mode="inference", config=make_config(1, _name_override(args.set)), model_dir=args.logs)
        return Path(probe.find_last())
    path = Path(args.weights)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {args.weights}: no such file (expected imagenet, coco, last, none "
                                "or a path)")
    return path


def saved_config(weights: Path) -> dict[str, Any] | None:
    """The config.json that training wrote beside `weights` (the run's settings), or None (said)."""
    saved = weights.parent / "config.json"
    if not saved.is_file():
        print(f"No config.json beside {weights}: CustomConfig's defaults and --set apply")
        return None
    print(f"Settings of the run that wrote the weights: {saved} (--set overrides them)")
    return json.loads(saved.read_text())


def load_start_weights(model: Any, kind: str, path: Path | None, exclude: list[str] | None) -> None:
    """Loads what `resolve_start_weights` found into a built model."""
    from mrcnn.weights import MATTERPORT_HEAD_LAYERS, load_imagenet_backbone, warn_if_scratch_with_frozen_batchnorm

    if kind == "none":
        print("Training from scratch (no starting weights)")
        warn_if_scratch_with_frozen_batchnorm(model.config)
        return
    if kind == "last":
        path = Path(model.find_last())
    print(f"Loading weights {path}")
    if kind == "imagenet":
        report = load_imagenet_backbone(model, path)
        print(f"  ImageNet backbone: {len(report['loaded'])} layers loaded")
    elif kind == "coco":
        # The class-specific layers have another shape for another class count: leave them out.
        model.load_weights(str(path), by_name=True, exclude=exclude if exclude is not None else MATTERPORT_HEAD_LAYERS)
    else:
        model.load_weights(str(path), exclude=exclude or None)


# ----------------------------------------------------------------------------------------------
# Commands
def train(args: argparse.Namespace) -> Any:
    """Heads up to --epochs-heads, then all layers up to --epochs-all (if larger)."""
    import keras

    from mrcnn.data.augment import Compose, HorizontalFlip
    from mrcnn.model import MaskRCNN

    classes = _split(args.classes)
    train_set = load_subset(args.dataset, "train", classes, args.class_attribute, args.default_class)
    class_names = train_set.class_names[1:]
    val_set = load_subset(args.dataset, "val", class_names, args.class_attribute, args.default_class)
    own = own_weights_file(args)  # continuing a run (--weights last or a checkpoint): its settings
    config = make_config(len(class_names), parse_overrides(args.set), base=saved_config(own) if own else None)
    kind, path = resolve_start_weights(args, config)
    if args.verbose:
        config.display()
    keras.utils.set_random_seed(config.SEED if config.SEED is not None else 0)
    model = MaskRCNN(mode="training", config=config, model_dir=args.logs)
    model.ensure_built()
    load_start_weights(model, kind, path, _split(args.exclude))
    # Loading one of our checkpoints continues its run (and epoch count); otherwise a new run.
    (Path(model.make_log_dir()) / CLASS_NAMES_FILE).write_text(json.dumps(class_names))
    lr = args.lr or config.LEARNING_RATE
    augmentation = Compose([HorizontalFlip(0.5)])
    if model.epoch < args.epochs_heads:  # a resumed run may be past this stage already
        print(f"Training the heads up to epoch {args.epochs_heads}")
        model.train(train_set, val_set, learning_rate=lr, epochs=args.epochs_heads, layers="heads",
                    augmentation=augmentation, verbose=args.verbose)
    if args.epochs_all > max(args.epochs_heads, model.epoch):
        print(f"Training all layers up to epoch {args.epochs_all}")
        model.train(train_set, val_set, learning_rate=lr / 10, epochs=args.epochs_all, layers="all",
                    augmentation=augmentation, verbose=args.verbose)
    print(f"Checkpoints in {model.log_dir}")
    return model


def inference_model(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """The model for evaluate/detect/splash, configured from the run that wrote the weights."""
    from mrcnn.model import MaskRCNN

    path = own_weights_file(args)
    if path is None:
        raise ValueError(f"--weights {args.weights}: evaluate, detect, splash and export take last or a weights file")
    base = saved_config(path)
    names_file = path.parent / CLASS_NAMES_FILE
    class_names = _split(args.classes) or (json.loads(names_file.read_text()) if names_file.is_file() else None)
    if class_names is None:
        raise ValueError(f"no {CLASS_NAMES_FILE} beside {path}: pass --classes a,b,... (in training order)")
    overrides = parse_overrides(args.set)
    if getattr(args, "min_score", None) is not None:
        overrides["DETECTION_MIN_CONFIDENCE"] = args.min_score
    config = make_config(len(class_names), overrides, inference=True, base=base)
    model = MaskRCNN(mode="inference", config=config, model_dir=args.logs)
    print(f"Loading weights {path}")
    model.load_weights(str(path))
    return model, ["BG"] + class_names


def evaluate(args: argparse.Namespace) -> dict:
    """mAP@0.5 and mAP@[.5:.95] (boxes and masks) on DATASET/<subset>."""
    from mrcnn.evaluation.evaluate import evaluate_dataset

    model, class_names = inference_model(args)
    dataset = load_subset(args.dataset, args.subset, class_names[1:], args.class_attribute, args.default_class)
    metrics = evaluate_dataset(model, dataset, verbose=args.verbose)
    print(json.dumps(metrics, indent=2))
    return metrics


def _read_images(paths: list[str]) -> list[np.ndarray]:
    from mrcnn.data.dataset import read_image_rgb

    return [read_image_rgb(p) for p in paths]


def detect(args: argparse.Namespace) -> list[str]:
    """Draws detections on each --image into --out (one PNG per image: name_<i>.png when several)."""
    from mrcnn import visualize

    images = _read_images(args.image)  # missing images fail before the model is built
    model, class_names = inference_model(args)
    written = []
    for i, (image, r) in enumerate(zip(images, model.detect(images, verbose=args.verbose))):
        out = _numbered(args.out, i, len(images))
        visualize.display_instances(image, r["rois"], r["masks"], r["class_ids"], class_names, r["scores"],
                                    title=f"{len(r['scores'])} detections", figsize=(8, 8), save_path=out)
        print(f"{args.image[i]}: {len(r['scores'])} detections -> {out}")
        written.append(out)
    return written


def splash(args: argparse.Namespace) -> list[str]:
    """Colour on the detected instances, greyscale elsewhere, for each --image."""
    import skimage.io

    from mrcnn import visualize

    images = _read_images(args.image)  # missing images fail before the model is built
    model, _ = inference_model(args)
    written = []
    for i, (image, r) in enumerate(zip(images, model.detect(images, verbose=args.verbose))):
        out = _numbered(args.out, i, len(images))
        skimage.io.imsave(out, visualize.color_splash(image, r["masks"]), check_contrast=False)
        print(f"{args.image[i]}: {r['masks'].shape[-1]} instances splashed -> {out}")
        written.append(out)
    return written


def export(args: argparse.Namespace) -> str:
    """Writes the trained model as a SavedModel into --out (`mrcnn.export`), class names included."""
    from mrcnn.export import export_saved_model

    model, class_names = inference_model(args)
    path = export_saved_model(model, args.out, canvas=parse_canvas(args.canvas), class_names=class_names,
                              frozen=args.frozen, overwrite=args.overwrite)
    print(f"Wrote the SavedModel {path} (load it with mrcnn.export.ExportedMaskRCNN, or serve it)")
    return str(path)


def _numbered(out: str, index: int, count: int) -> str:
    if count == 1:
        return out
    stem, suffix = os.path.splitext(out)
    return f"{stem}_{index}{suffix or '.png'}"


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _name_override(items: list[str] | None) -> dict[str, Any]:
    return {k: v for k, v in parse_overrides(items).items() if k == "NAME"}


# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--logs", default="runs/custom", help="log/checkpoint directory (default runs/custom)")
        p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a Config field (repeatable)")
        p.add_argument("--classes", default=None, help="comma-separated class names in id order "
                       "(default: the sorted names found in DATASET/train, or class_names.json beside the weights)")
        p.add_argument("--verbose", type=int, default=1, help="0 silent, 1 progress bars")

    def data(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", required=True, help="folder with train/ and val/ subfolders")
        p.add_argument("--class-attribute", default="name", help="VIA region attribute holding the class name")
        p.add_argument("--default-class", default=None, help="class of VIA regions without that attribute")

    p = sub.add_parser("train", help="fine-tune: heads, then all layers")
    common(p)
    data(p)
    p.add_argument("--weights", default="imagenet", help="imagenet | coco | last | none | PATH (default imagenet)")
    p.add_argument("--weights-file", default=None, help="a local copy of the imagenet/coco file")
    p.add_argument("--download", action="store_true", help="download the imagenet/coco file when not cached")
    p.add_argument("--imagenet-source", choices=("keras", "fchollet"), default="keras",
                   help="keras.applications' ResNet50/101 or fchollet's ResNet-50 (default keras)")
    p.add_argument("--exclude", default=None, help="comma-separated layer names/regexes not to load "
                   "(default for coco: mrcnn_class_logits,mrcnn_bbox_fc,mrcnn_bbox,mrcnn_mask)")
    p.add_argument("--epochs-heads", type=int, default=20, help="train the heads up to this epoch")
    p.add_argument("--epochs-all", type=int, default=40, help="then all layers up to this epoch")
    p.add_argument("--lr", type=float, default=0.0, help="learning rate (default: the config's)")

    p = sub.add_parser("evaluate", help="mAP on DATASET/<subset>")
    common(p)
    data(p)
    p.add_argument("--weights", default="last", help="last | PATH")
    p.add_argument("--subset", default="val")

    for name, text in (("detect", "draw detections"), ("splash", "colour splash on the detected instances")):
        p = sub.add_parser(name, help=text)
        common(p)
        p.add_argument("--weights", default="last", help="last | PATH")
        p.add_argument("--image", action="append", required=True, help="an image file (repeatable)")
        p.add_argument("--out", default=f"{name}.png", help="output PNG")
        p.add_argument("--min-score", type=float, default=None, help="detection score threshold")
    p = sub.add_parser("export", help="write the trained model as a TensorFlow SavedModel (mrcnn.export)")
    common(p)
    p.add_argument("--weights", default="last", help="last | PATH")
    p.add_argument("--out", required=True, help="the SavedModel folder to write (for TF Serving: NAME/1)")
    p.add_argument("--min-score", type=float, default=None, help="detection score threshold baked into the graph")
    p.add_argument("--frozen", action="store_true",
                   help="weights as graph constants, BatchNorms folded: faster on CPU (optimize_for_inference's graph)")
    p.add_argument("--overwrite", action="store_true", help="replace an export already in --out")
    p.add_argument("--canvas", default=None, metavar="H,W",
                   help="the molded size the export takes (IMAGE_RESIZE_MODE pad64/none only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs a command; returns 0, 2 with one error line for a missing file or bad input, 130 on Ctrl-C."""
    from mrcnn.cli import run_command

    args = build_parser().parse_args(argv)
    command = {"train": train, "evaluate": evaluate, "detect": detect, "splash": splash, "export": export}[args.command]
    return run_command(lambda: command(args), prog="custom.py", show_traceback=args.verbose >= 2,
                       interrupted_hint="Interrupted: resume with --weights last")


if __name__ == "__main__":
    sys.exit(main())
