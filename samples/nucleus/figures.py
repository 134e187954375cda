"""Pictures of nucleus predictions next to the ground truth, one row per image, one panel per model.

Each model's panel draws its instances' outlines: green where the instance matches a ground-truth
nucleus (mask IoU > 0.5), red where it matches none (false positive), and the nuclei it missed in
yellow. Only detections scoring at least `min_score` are drawn (the set the DSB score counts).

    python samples/nucleus/figures.py --mrcnn-weights runs/nucleus/mrcnn.weights.h5 \
        --unet-weights runs/nucleus/unet.weights.h5 --out samples/nucleus/figures

Without --images it picks two validation images (`pick_images`): the fluorescence image and the
brightfield (stained tissue / light background) image with the most nuclei, each at most 600 px.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import skimage.segmentation

if __package__ in (None, ""):  # run as a script: make `samples.nucleus` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mrcnn.evaluation.dsb import instance_iou  # noqa: E402
from samples.nucleus.evaluate import is_brightfield  # noqa: E402

GREEN, RED, YELLOW = (0.1, 0.9, 0.1), (1.0, 0.15, 0.15), (1.0, 0.9, 0.0)


def pick_images(dataset, max_side: int = 600) -> list[int]:
    """[fluorescence id, brightfield id]: in each kind, the image (no side above `max_side`) with the
    most nuclei. Raises ValueError when the dataset lacks one of the kinds."""
    best: dict[bool, tuple[int, int]] = {}
    for image_id in dataset.image_ids:
        labels = dataset.load_labels(image_id)
        if max(labels.shape) > max_side:
            continue
        kind = is_brightfield(dataset.load_image(image_id))
        count = int(np.unique(labels[labels > 0]).size)
        if kind not in best or count > best[kind][0]:
            best[kind] = (count, int(image_id))
    missing = [name for kind, name in ((False, "fluorescence"), (True, "brightfield")) if kind not in best]
    if missing:
        raise ValueError(f"no {' or '.join(missing)} image of at most {max_side} px in the dataset")
    return [best[False][1], best[True][1]]


def match(gt_masks: np.ndarray, pred_masks: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching by mask IoU (highest first, IoU > threshold).

    Args:
        gt_masks: [H, W, N] bool; pred_masks: [H, W, M] bool.

    Returns:
        (gt_matched [N] bool, pred_matched [M] bool).
    """
    n, m = gt_masks.shape[-1], pred_masks.shape[-1]
    gt_matched, pred_matched = np.zeros(n, bool), np.zeros(m, bool)
    if n == 0 or m == 0:
        return gt_matched, pred_matched
    iou = instance_iou(gt_masks, pred_masks)
    for flat in np.argsort(-iou, axis=None):
        g, p = np.unravel_index(flat, iou.shape)
        if iou[g, p] <= threshold:
            break
        if not gt_matched[g] and not pred_matched[p]:
            gt_matched[g] = pred_matched[p] = True
    return gt_matched, pred_matched


def _draw_outlines(canvas: np.ndarray, masks: np.ndarray, color: Sequence[float]) -> None:
    for k in range(masks.shape[-1]):
        canvas[skimage.segmentation.find_boundaries(masks[..., k], mode="inner")] = color


def prediction_panels(image: np.ndarray, gt_masks: np.ndarray, results: Mapping[str, dict],
                      min_score: float = 0.5) -> list[tuple[str, np.ndarray]]:
    """(title, [H, W, 3] float image) panels: the ground truth, then one per model in `results`
    (name -> a `detect` result dict with "masks" [H, W, M] and "scores" [M])."""
    base = np.asarray(image)[..., :3].astype(np.float32) / 255.0
    panels = []
    canvas = base.copy()
    _draw_outlines(canvas, gt_masks, GREEN)
    panels.append((f"ground truth: {gt_masks.shape[-1]} nuclei", canvas))
    for name, result in results.items():
        keep = np.asarray(result["scores"]) >= min_score
        pred = np.asarray(result["masks"], bool)[..., keep]
        gt_hit, pred_hit = match(gt_masks, pred)
        canvas = base.copy()
        _draw_outlines(canvas, gt_masks[..., ~gt_hit], YELLOW)
        _draw_outlines(canvas, pred[..., ~pred_hit], RED)
        _draw_outlines(canvas, pred[..., pred_hit], GREEN)
        panels.append((f"{name}: {int(pred_hit.sum())} found, {int((~pred_hit).sum())} false, "
                       f"{int((~gt_hit).sum())} missed", canvas))
    return panels


def save_figure(rows: Sequence[tuple[str, list[tuple[str, np.ndarray]]]], path: str | Path,
                panel_inches: float = 4.2, dpi: int = 100) -> Path:
    """Writes rows of panels (row caption, [(title, image)]) as one PNG (palette-quantized to keep
    it small) and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    ncols = max(len(panels) for _, panels in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(panel_inches * ncols, panel_inches * len(rows) + 0.4),
                             squeeze=False)
    for r, (caption, panels) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(panels):
                title, picture = panels[c]
                ax.imshow(np.clip(picture, 0, 1), interpolation="nearest")
                ax.set_title(f"{caption}: {title}" if c == 0 and len(rows) > 1 else title, fontsize=9)
    if len(rows) == 1:
        fig.suptitle(rows[0][0], fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)
    return path


def _val_image(val: Any, prefix: str) -> int:
    """The validation image whose id starts with `prefix`; ValueError naming it otherwise."""
    for image_id in val.image_ids:
        if val.image_info[image_id]["id"].startswith(prefix):
            return int(image_id)
    raise ValueError(f"--images {prefix}: no validation image id starts with it (training images are not drawn)")


def main(argv: list[str] | None = None) -> int:
    import types

    from samples.nucleus import nucleus

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mrcnn-weights", required=True)
    parser.add_argument("--unet-weights", required=True)
    parser.add_argument("--data", type=Path, default=nucleus.DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=nucleus.DEFAULT_CACHE)
    parser.add_argument("--images", nargs="*", default=None, help="val image ids (default: pick_images)")
    parser.add_argument("--min-score", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("samples/nucleus/figures"))
    args = parser.parse_args(argv)
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    common = dict(data=args.data, cache=args.cache, no_cache=False, limit=0, logs=str(args.out), tile=0, overlap=64,
                  unet_depth=4, unet_filters=32)
    val = nucleus.load_split(types.SimpleNamespace(**common), "val")
    ids = pick_images(val) if not args.images else [_val_image(val, name) for name in args.images]
    detectors = {"Mask R-CNN": nucleus.load_detector(types.SimpleNamespace(**common, model="mrcnn",
                                                                           weights=args.mrcnn_weights)),
                 "U-Net + watershed": nucleus.load_detector(types.SimpleNamespace(**common, model="unet",
                                                                                  weights=args.unet_weights))}
    for image_id in ids:
        image = val.load_image(image_id)
        gt, _ = val.load_mask(image_id)
        results = {name: detect([image])[0] for name, detect in detectors.items()}
        name = str(val.image_info[image_id]["id"])
        kind = "brightfield" if is_brightfield(image) else "fluorescence"
        caption = f"{kind} {name[:8]} ({image.shape[1]}x{image.shape[0]})"
        path = save_figure([(caption, prediction_panels(image, gt, results, args.min_score))],
                           args.out / f"val_{kind}_{name[:8]}.png")
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
