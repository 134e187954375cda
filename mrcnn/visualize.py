"""Drawing helpers for images, instances, boxes, precision/recall and weights (matplotlib).

Matplotlib backends: this module never calls ``matplotlib.use()``; the backend stays whatever
the user (or Jupyter) chose. Three ways to draw:

* ``save_path=...`` (and no ``ax``): the figure is built with ``matplotlib.figure.Figure``
  directly, without pyplot, written as PNG (or any format matplotlib infers from the
  extension) and never shown. Works headless and in parallel workers; leaks no pyplot figures.
* ``ax=...``: draws into your Axes; nothing is shown or saved, you own the figure.
* neither: a pyplot figure is created and ``plt.show()`` is called, like matterport's
  functions, except when the backend is non-interactive (e.g. Agg, which matplotlib picks by
  itself on a machine without a display), where showing would only warn.

pyplot is imported lazily inside functions, so ``import mrcnn.visualize`` is cheap and does not
select a backend. Images are [H, W, 3] with values 0..255; boxes are pixel (y1, x1, y2, x2) with
y2/x2 exclusive; masks are [H, W, N] bool; colours are RGB tuples in [0, 1].
"""

from __future__ import annotations

import colorsys
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn.data.dataset import conform_channels
from mrcnn.utils import binary_masks, extract_bboxes

# Backends that cannot open a window: plt.show() would only warn.
_NON_INTERACTIVE_BACKENDS = ("agg", "pdf", "pgf", "ps", "svg", "cairo", "template")


# ----------------------------------------------------------------------------------------------
# Figure plumbing
def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _new_figure(figsize: tuple[float, float], save_path: str | Path | None, nrows: int = 1, ncols: int = 1):
    """A figure and its axes array: pyplot's when it may be shown, a bare Figure when only saved."""
    if save_path is not None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        axes = fig.subplots(nrows, ncols, squeeze=False)
    else:
        fig, axes = _pyplot().subplots(nrows, ncols, figsize=figsize, squeeze=False)
    return fig, axes


def _finish(fig, save_path: str | Path | None, owns_figure: bool) -> None:
    """Saves the figure, or shows it when this module created it through pyplot."""
    if save_path is not None:
        fig.savefig(str(save_path), bbox_inches="tight")
    elif owns_figure:
        import matplotlib

        if matplotlib.get_backend().lower().split(".")[-1] not in _NON_INTERACTIVE_BACKENDS:
            _pyplot().show()


def _axes(ax, figsize, save_path):
    """(fig, ax, owns_figure): the given Axes, or a new figure with one Axes."""
    if ax is not None:
        return ax.figure, ax, False
    fig, axes = _new_figure(figsize, save_path)
    return fig, axes[0, 0], True


def _image_axes(ax: Any, figsize: tuple[float, float], save_path: str | None, image_shape: tuple[int, ...],
                title: str) -> tuple[Any, Any, bool]:
    """`_axes`, framed for an image of `image_shape` (10 px margin, y down) with no ticks and a title."""
    fig, ax, owns = _axes(ax, figsize, save_path)
    height, width = image_shape[:2]
    ax.set_ylim(height + 10, -10)
    ax.set_xlim(-10, width + 10)
    ax.axis("off")
    ax.set_title(title)
    return fig, ax, owns


# ----------------------------------------------------------------------------------------------
# Colours and masks

def random_colors(N: int, bright: bool = True, seed: int | None = None) -> list[tuple[float, float, float]]:
    """N distinct RGB colours in [0, 1]: evenly spaced hues, shuffled.

    Args:
        N: number of colours.
        bright: full brightness (True) or 0.7.
        seed: seed for the shuffle; None for a different order each call.

    Returns:
        list of N (r, g, b) tuples.
    """
    brightness = 1.0 if bright else 0.7
    colors = [colorsys.hsv_to_rgb(i / max(N, 1), 1.0, brightness) for i in range(N)]
    order = np.random.default_rng(seed).permutation(N)
    return [tuple(float(c) for c in colors[i]) for i in order]


def _rgb(image: np.ndarray) -> np.ndarray:
    """The image as [H, W, 3] for drawing: grayscale repeated, RGBA without its alpha."""
    return conform_channels(np.asarray(image), 3, "image")


def _check_class_names(class_ids: np.ndarray, class_names: Sequence[str]) -> None:
    bad = sorted({int(c) for c in np.asarray(class_ids).reshape(-1) if abs(int(c)) >= len(class_names)})
    if bad:
        raise ValueError(f"class ids {bad} have no name: class_names has {len(class_names)} entries")


def apply_mask(image: np.ndarray, mask: np.ndarray, color: Sequence[float], alpha: float = 0.5) -> np.ndarray:
    """Blends `color` into `image` where `mask` is set.

    Unlike matterport's, the input is not modified: a new array is returned.

    Args:
        image: [H, W, 3] values 0..255 (any numeric dtype; the result has the same dtype).
        mask: [H, W] bool (nonzero = inside; float probabilities: >= 0.5, `binary_masks`).
        color: (r, g, b) in [0, 1].
        alpha: colour weight inside the mask.

    Returns:
        [H, W, 3] image.

    Raises:
        ValueError: if the mask's shape is not the image's height and width.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape}")
    blended = image.astype(np.float64)
    inside = binary_masks(mask)
    blended[inside] = blended[inside] * (1 - alpha) + alpha * 255.0 * np.asarray(color[:3], np.float64)
    if np.issubdtype(image.dtype, np.integer):
        blended = np.clip(np.rint(blended), np.iinfo(image.dtype).min, np.iinfo(image.dtype).max)
    return blended.astype(image.dtype)


def color_splash(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Keeps colour on the instances and turns everything else grey.

    Args:
        image: [H, W, 3] uint8 RGB ([H, W] grayscale and RGBA are taken as `detect` takes them).
        masks: [H, W, N] bool (N may be 0: all grey; float probabilities: >= 0.5).

    Returns:
        [H, W, 3] uint8.
    """
    image = _rgb(image)
    masks = binary_masks(masks)
    if masks.ndim != 3 or masks.shape[:2] != image.shape[:2]:
        raise ValueError(f"masks shape {masks.shape} does not match image shape {image.shape} (expected [H, W, N])")
    # ITU-R 601 luma, as skimage.color.rgb2gray uses 709; either is fine for a splash.
    gray = image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    gray = np.repeat(np.clip(np.rint(gray), 0, 255)[..., None], 3, axis=-1).astype(np.uint8)
    inside = masks.any(axis=-1) if masks.shape[-1] else np.zeros(image.shape[:2], bool)
    return np.where(inside[..., None], image[..., :3].astype(np.uint8), gray)


def _mask_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Outline polygons of a [H, W] mask as (x, y) arrays, along pixel edges in imshow coordinates."""
    from skimage.measure import find_contours

    padded = np.pad(binary_masks(mask).astype(np.uint8), 1)
    # Contour indices are in the padded frame: subtract the pad; imshow puts pixel centres at integers.
    return [np.fliplr(c) - 1 for c in find_contours(padded, 0.5)]


def _box_patch(box, color, **kwargs):
    from matplotlib import patches

    y1, x1, y2, x2 = (float(v) for v in box)
    # Exclusive pixel box -> rectangle along the outer pixel edges (pixel centres at integers).
    return patches.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=color, **kwargs)


# ----------------------------------------------------------------------------------------------
def display_instances(
    image: np.ndarray,
    boxes: np.ndarray,
    masks: np.ndarray,
    class_ids: np.ndarray,
    class_names: Sequence[str],
    scores: np.ndarray | None = None,
    title: str = "",
    figsize: tuple[float, float] = (16, 16),
    ax: Any = None,
    show_mask: bool = True,
    show_bbox: bool = True,
    colors: Sequence[Sequence[float]] | None = None,
    captions: Sequence[str] | None = None,
    save_path: str | Path | None = None,
) -> Any:
    """Draws an image with its instances: boxes, masks, mask outlines and captions.

    Args:
        image: [H, W, 3] values 0..255 ([H, W] grayscale and RGBA are taken as `detect` takes them).
        boxes: [N, (y1, x1, y2, x2)] pixel boxes.
        masks: [H, W, N] bool (float probabilities of ``soft_masks=True``: drawn where >= 0.5).
        class_ids: [N] int; negative ids (crowd) are drawn with a "crowd:" caption.
        class_names: names indexed by class id.
        scores: optional [N] confidences, shown in captions.
        title: Axes title.
        figsize: size of a new figure (ignored with `ax`).
        ax: Axes to draw into; None creates a figure (see module docstring).
        show_mask, show_bbox: draw the masks / the boxes.
        colors: one colour per instance; default `random_colors(N, seed=0)`.
        captions: one string per instance instead of "class score".
        save_path: write the figure here (PNG etc.) instead of showing it.

    Returns:
        The matplotlib Axes (its figure is ``ax.figure``).

    Raises:
        ValueError: naming the shapes when boxes, masks, class_ids, scores, captions or colors
            disagree on N, masks do not match the image, or a class id has no name.
    """
    image = _rgb(image)
    boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes)
    class_ids = np.asarray(class_ids).reshape(-1)
    n = boxes.shape[0]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4], got shape {boxes.shape}")
    if masks is None:
        masks = np.zeros(image.shape[:2] + (n,), bool)
        show_mask = False
    masks = binary_masks(masks)
    counts = {"boxes": boxes.shape, "masks": masks.shape, "class_ids": class_ids.shape}
    if scores is not None:
        scores = np.asarray(scores).reshape(-1)
        counts["scores"] = scores.shape
    if captions is not None:
        counts["captions"] = (len(captions),)
    if colors is not None:
        counts["colors"] = (len(colors),)
    sizes = {name: (shape[-1] if name == "masks" else shape[0]) for name, shape in counts.items() if len(shape)}
    if masks.ndim != 3 or len(set(sizes.values())) > 1 or sizes.get("masks", n) != n:
        details = ", ".join(f"{name} {shape}" for name, shape in counts.items())
        raise ValueError(f"instance counts disagree: {details} (N is boxes[0], masks[-1], class_ids[0])")
    if masks.shape[:2] != image.shape[:2]:
        raise ValueError(f"masks shape {masks.shape} does not match image shape {image.shape}")
    _check_class_names(class_ids, class_names)

    fig, ax, owns = _image_axes(ax, figsize, save_path, image.shape, title)
    colors = colors if colors is not None else random_colors(n, seed=0)

    from matplotlib.patches import Polygon

    masked = image.astype(np.float64)
    # Blend and outline each mask inside its own tight box: over the whole image, each instance
    # cost a full-image blend and contour trace (seconds for hundreds of nuclei at 1024 px).
    extents = extract_bboxes(masks) if show_mask else None
    for i in range(n):
        color = colors[i]
        if show_bbox and np.any(boxes[i]):
            ax.add_patch(_box_patch(boxes[i], color, linewidth=2, alpha=0.7, linestyle="dashed"))
        if captions is not None:
            caption = captions[i]
        else:
            class_id = int(class_ids[i])
            name = class_names[abs(class_id)]
            caption = f"crowd:{name}" if class_id < 0 else name
            if scores is not None:
                caption = f"{caption} {scores[i]:.3f}"
        y1, x1 = float(boxes[i][0]), float(boxes[i][1])
        ax.text(x1, y1 + 8, caption, color="w", size=11, backgroundcolor="none")
        if show_mask:
            y1, x1, y2, x2 = (int(v) for v in extents[i])
            if y2 > y1:  # an empty mask has an all-zero box and nothing to draw
                mask = masks[y1:y2, x1:x2, i]
                masked[y1:y2, x1:x2] = apply_mask(masked[y1:y2, x1:x2], mask, color)
                for outline in _mask_outlines(mask):
                    ax.add_patch(Polygon(outline + (x1, y1), facecolor="none", edgecolor=color))
    ax.imshow(np.clip(masked, 0, 255).astype(np.uint8))
    _finish(fig, save_path, owns)
    return ax


def display_keypoints(
    image: np.ndarray,
    keypoints: np.ndarray,
    skeleton: Sequence[Sequence[int]] | None = None,
    boxes: np.ndarray | None = None,
    min_score: float = 0.0,
    keypoint_names: Sequence[str] | None = None,
    title: str = "",
    figsize: tuple[float, float] = (12, 12),
    ax: Any = None,
    colors: Sequence[Sequence[float]] | None = None,
    save_path: str | Path | None = None,
) -> Any:
    """Draws instances' keypoints as dots joined by their skeleton (Keypoint R-CNN output or GT).

    Args:
        image: [H, W, 3] values 0..255.
        keypoints: [N, K, 3] (x, y, v) in continuous pixel coordinates (pixel (r, c) spans
            [c, c+1) x [r, r+1)); v is a visibility (GT: 0 unlabelled) or a score (`detect`).
            A keypoint is drawn when v > min_score.
        skeleton: limbs as keypoint index pairs (e.g. Config.KEYPOINT_SKELETON); a limb is drawn
            when both its ends are.
        boxes: optional [N, (y1, x1, y2, x2)] pixel boxes, drawn dashed.
        min_score: threshold on v (0: every labelled GT keypoint / every prediction with score > 0).
        keypoint_names: optional K names, written next to the first instance's keypoints.
        title, figsize, ax, save_path: as `display_instances`.
        colors: one colour per instance; default `random_colors(N, seed=0)`.

    Returns:
        The matplotlib Axes.

    Raises:
        ValueError: naming the shapes when keypoints are not [N, K, 3], boxes or colours do not have
            N entries, a skeleton index is out of range, or keypoint_names does not have K names.
    """
    image = _rgb(image)
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"keypoints must be [N, K, 3] (x, y, visibility or score), got shape {keypoints.shape}")
    n, k = keypoints.shape[:2]
    if boxes is not None and np.shape(boxes) != (n, 4):
        raise ValueError(f"boxes must be [N={n}, 4] to match keypoints {keypoints.shape}, got {np.shape(boxes)}")
    if colors is not None and len(colors) != n:
        raise ValueError(f"colors has {len(colors)} entries for {n} instances")
    skeleton = [tuple(int(i) for i in pair) for pair in (skeleton or ())]
    bad = [pair for pair in skeleton if len(pair) != 2 or not all(0 <= i < k for i in pair)]
    if bad:
        raise ValueError(f"skeleton pairs {bad} are not pairs of keypoint indices in [0, {k})")
    if keypoint_names is not None and len(keypoint_names) != k:
        raise ValueError(f"keypoint_names has {len(keypoint_names)} names for {k} keypoints")

    fig, ax, owns = _image_axes(ax, figsize, save_path, image.shape, title)
    colors = colors if colors is not None else random_colors(n, seed=0)
    # imshow puts pixel (r, c)'s centre at (c, r): continuous coordinates shift by -0.5.
    ax.imshow(np.clip(image, 0, 255).astype(np.uint8))
    for i in range(n):
        color = colors[i]
        if boxes is not None and np.any(boxes[i]):
            ax.add_patch(_box_patch(boxes[i], color, linewidth=2, alpha=0.7, linestyle="dashed"))
        shown = keypoints[i, :, 2] > min_score
        x, y = keypoints[i, :, 0] - 0.5, keypoints[i, :, 1] - 0.5
        for a, b in skeleton:
            if shown[a] and shown[b]:
                ax.plot([x[a], x[b]], [y[a], y[b]], color=color, linewidth=2, alpha=0.8)
        ax.scatter(x[shown], y[shown], s=18, color=color, edgecolors="white", linewidths=0.8, zorder=3)
        if keypoint_names is not None and i == 0:
            for j in np.flatnonzero(shown):
                ax.text(x[j] + 2, y[j], keypoint_names[j], color="w", size=8)
    _finish(fig, save_path, owns)
    return ax


def display_images(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    cols: int = 4,
    cmap: str | None = None,
    norm: Any = None,
    interpolation: str | None = None,
    save_path: str | Path | None = None,
) -> Any:
    """Shows images in a grid, `cols` per row, with optional titles.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: if titles are given but not one per image.
    """
    images = list(images)
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    titles = list(titles) if titles is not None else [""] * len(images)
    cols = max(1, min(cols, len(images)))
    rows = max(1, -(-len(images) // cols))
    fig, axes = _new_figure((14, 14 * rows / cols), save_path, rows, cols)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < len(images):
            image = np.asarray(images[k])
            ax.set_title(titles[k], fontsize=9)
            shown = image.astype(np.uint8) if image.ndim == 3 and image.dtype != np.uint8 else image
            ax.imshow(shown, cmap=cmap, norm=norm, interpolation=interpolation)
    _finish(fig, save_path, True)
    return fig


def display_top_masks(
    image: np.ndarray,
    mask: np.ndarray,
    class_ids: np.ndarray,
    class_names: Sequence[str],
    limit: int = 4,
    save_path: str | Path | None = None,
) -> Any:
    """Shows the image and, for the `limit` classes with most mask pixels, the union of their masks.

    Args:
        image: [H, W, 3].
        mask: [H, W, N] bool (float probabilities: >= 0.5).
        class_ids: [N] int (negative crowd ids count for their class).

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: when mask and class_ids disagree, or a class id has no name.
    """
    mask = binary_masks(mask)
    class_ids = np.abs(np.asarray(class_ids).reshape(-1))
    if mask.ndim != 3 or mask.shape[-1] != len(class_ids):
        raise ValueError(f"mask shape {mask.shape} does not match class_ids shape {class_ids.shape}")
    _check_class_names(class_ids, class_names)
    images, titles = [image], ["H x W={}x{}".format(*image.shape[:2])]
    unique = np.unique(class_ids)
    areas = [mask[..., class_ids == c].sum() for c in unique]
    top = [int(c) for _, c in sorted(zip(areas, unique), key=lambda pair: -pair[0])]
    for k in range(limit):
        if k < len(top):
            images.append(mask[..., class_ids == top[k]].any(axis=-1).astype(np.float32))
            titles.append(class_names[top[k]])
        else:
            images.append(np.zeros(image.shape[:2], np.float32))
            titles.append("-")
    return display_images(images, titles=titles, cols=limit + 1, cmap="Blues_r", save_path=save_path)


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray | None = None,
    refined_boxes: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    captions: Sequence[str] | None = None,
    visibilities: Sequence[int] | None = None,
    title: str = "",
    ax: Any = None,
    figsize: tuple[float, float] = (12, 12),
    save_path: str | Path | None = None,
) -> Any:
    """Draws boxes (e.g. anchors or RoIs), their refinements, masks and captions.

    Args:
        image: [H, W, 3].
        boxes: [N, 4] pixel boxes before refinement (dashed when `refined_boxes` is given).
        refined_boxes: [N, 4] the same boxes after refinement; a line joins each pair.
        masks: [H, W, N] bool (float probabilities: >= 0.5), blended into the image.
        captions: N strings, placed at the refined box if there is one, else at the box.
        visibilities: N ints: 0 hidden, 1 faint grey dotted, 2 in colour (default 2 for all).
        title: Axes title.

    Returns:
        The matplotlib Axes.

    Raises:
        ValueError: naming the lengths when the per-box inputs disagree, or no boxes are given.
    """
    if boxes is None and refined_boxes is None:
        raise ValueError("draw_boxes needs boxes or refined_boxes")
    n = len(boxes) if boxes is not None else len(refined_boxes)
    lengths = {
        "boxes": None if boxes is None else len(boxes),
        "refined_boxes": None if refined_boxes is None else len(refined_boxes),
        "masks": None if masks is None else np.asarray(masks).shape[-1],
        "captions": None if captions is None else len(captions),
        "visibilities": None if visibilities is None else len(visibilities),
    }
    if any(v is not None and v != n for v in lengths.values()):
        given = ", ".join(f"{k}={v}" for k, v in lengths.items() if v is not None)
        raise ValueError(f"draw_boxes inputs disagree on the number of boxes: {given}")

    fig, ax, owns = _axes(ax, figsize, save_path)
    from matplotlib import lines
    from matplotlib.patches import Polygon

    colors = random_colors(n, seed=0)
    image = _rgb(image)
    height, width = image.shape[:2]
    ax.set_ylim(height + 15, -15)
    ax.set_xlim(-50, width + 50)
    ax.axis("off")
    ax.set_title(title)
    masked = image.astype(np.float64)
    for i in range(n):
        visibility = visibilities[i] if visibilities is not None else 2
        if visibility == 0:
            continue
        if visibility == 1:
            color, style, alpha = "gray", "dotted", 0.5
        else:
            color, style, alpha = colors[i], ("dashed" if refined_boxes is not None else "solid"), 1.0
        if boxes is not None and np.any(boxes[i]):
            ax.add_patch(_box_patch(boxes[i], color, linewidth=2, alpha=alpha, linestyle=style))
        if refined_boxes is not None and visibility > 0:
            ry1, rx1, ry2, rx2 = (float(v) for v in refined_boxes[i])
            ax.add_patch(_box_patch(refined_boxes[i], color, linewidth=2))
            if boxes is not None:
                ax.add_line(lines.Line2D([boxes[i][1], rx1], [boxes[i][0], ry1], color=color))
        if captions is not None:
            anchor = refined_boxes[i] if refined_boxes is not None else boxes[i]
            ax.text(float(anchor[1]), float(anchor[0]), captions[i], size=11, verticalalignment="top",
                    color="w", backgroundcolor="none", bbox={"facecolor": color, "alpha": 0.5, "pad": 2,
                                                             "edgecolor": "none"})
        if masks is not None:
            mask = binary_masks(np.asarray(masks)[..., i])
            masked = apply_mask(masked, mask, color if visibility == 2 else (0.5, 0.5, 0.5))
            for outline in _mask_outlines(mask):
                ax.add_patch(Polygon(outline, facecolor="none", edgecolor=color))
    ax.imshow(np.clip(masked, 0, 255).astype(np.uint8))
    _finish(fig, save_path, owns)
    return ax


def plot_precision_recall(
    AP: float,
    precisions: np.ndarray,
    recalls: np.ndarray,
    ax: Any = None,
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Any:
    """Plots a precision-recall curve as returned by `mrcnn.evaluation.ap.compute_ap`.

    Returns:
        The matplotlib Axes.

    Raises:
        ValueError: if precisions and recalls differ in length.
    """
    precisions = np.asarray(precisions).reshape(-1)
    recalls = np.asarray(recalls).reshape(-1)
    if precisions.shape != recalls.shape:
        raise ValueError(f"precisions {precisions.shape} and recalls {recalls.shape} differ in shape")
    fig, ax, owns = _axes(ax, (8, 6), save_path)
    ax.set_title(title if title is not None else f"Precision-Recall Curve. AP@50 = {AP:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.1)
    ax.set_xlim(0, 1.1)
    ax.plot(recalls, precisions, drawstyle="steps-post")
    _finish(fig, save_path, owns)
    return ax


def plot_overlaps(
    gt_class_ids: np.ndarray,
    pred_class_ids: np.ndarray,
    pred_scores: np.ndarray,
    overlaps: np.ndarray,
    class_names: Sequence[str],
    threshold: float = 0.5,
    ax: Any = None,
    save_path: str | Path | None = None,
) -> Any:
    """Grid of IoUs between predictions (rows) and ground truth (columns).

    Cells show the IoU; "match" when the classes agree and IoU > threshold, "wrong" when only
    the IoU does.

    Args:
        overlaps: [num_pred, num_gt] IoU (as `compute_matches` returns).

    Returns:
        The matplotlib Axes.

    Raises:
        ValueError: naming the shapes when overlaps does not match the id lists, or a class id
            that has no name.
    """
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    pred_class_ids = np.asarray(pred_class_ids).reshape(-1)
    pred_scores = np.asarray(pred_scores).reshape(-1)
    overlaps = np.asarray(overlaps, dtype=np.float64)
    if overlaps.size == 0 and len(pred_class_ids) * len(gt_class_ids) == 0:
        # compute_matches returns e.g. [0, 0] when there are no predictions: give it the right shape.
        overlaps = overlaps.reshape(len(pred_class_ids), len(gt_class_ids))
    if overlaps.shape != (len(pred_class_ids), len(gt_class_ids)) or len(pred_scores) != len(pred_class_ids):
        raise ValueError(
            f"overlaps {overlaps.shape} must be [num_pred, num_gt] = [{len(pred_class_ids)}, {len(gt_class_ids)}] "
            f"with {len(pred_scores)} scores"
        )
    _check_class_names(np.concatenate([pred_class_ids, gt_class_ids]), class_names)
    fig, ax, owns = _axes(ax, (12, 10), save_path)
    if overlaps.size:
        ax.imshow(overlaps, interpolation="nearest", cmap="Blues", vmin=0, vmax=1, aspect="auto")
    else:  # an empty image has no extent (matplotlib warns about singular limits): say what is missing
        ax.text(0.5, 0.5, "no predictions" if len(pred_class_ids) == 0 else "no ground truth",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_yticks(np.arange(len(pred_class_ids)))
    ax.set_yticklabels([f"{class_names[int(c)]} ({s:.2f})" for c, s in zip(pred_class_ids, pred_scores)])
    ax.set_xticks(np.arange(len(gt_class_ids)))
    ax.set_xticklabels([class_names[abs(int(c))] for c in gt_class_ids], rotation=90)
    for i in range(overlaps.shape[0]):
        for j in range(overlaps.shape[1]):
            value = overlaps[i, j]
            label = ""
            if value > threshold:
                label = "match" if pred_class_ids[i] == gt_class_ids[j] else "wrong"
            color = "white" if value > 0.5 else ("black" if value > 0 else "grey")
            ax.text(j, i, f"{value:.3f}\n{label}", ha="center", va="center", fontsize=9, color=color)
    ax.set_xlabel("Ground Truth")
    ax.set_ylabel("Predictions")
    _finish(fig, save_path, owns)
    return ax


# ----------------------------------------------------------------------------------------------
def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    # Only the Jupyter kernel renders HTML; the terminal IPython shell prints text.
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def display_table(table: Sequence[Sequence[Any]]) -> None:
    """Shows a table (a list of rows of cells): HTML in a Jupyter notebook, aligned text elsewhere.

    Returns None, as matterport's did: a returned string would be echoed under the table when the
    call ends a notebook cell. `format_table` gives the text.
    """
    rows = [[str(cell) for cell in row] for row in table]
    if _in_notebook():
        from IPython.display import HTML, display

        body = "".join(
            "<tr>" + "".join(f'<td style="text-align:left">{html.escape(c)}</td>' for c in row) + "</tr>" for row in rows
        )
        display(HTML(f"<table>{body}</table>"))
        return
    print(format_table(rows))


def format_table(table: Sequence[Sequence[Any]]) -> str:
    """A table (a list of rows of cells) as left-aligned text columns, two spaces apart."""
    rows = [[str(cell) for cell in row] for row in table]
    widths = [max(len(r[k]) for r in rows if k < len(r)) for k in range(max((len(r) for r in rows), default=0))]
    return "\n".join("  ".join(c.ljust(widths[k]) for k, c in enumerate(row)).rstrip() for row in rows)


def weight_stats(model: Any) -> list[list[str]]:
    """Rows [name, shape, min, max, std] for each weight of a Keras model (header row first).

    A note is appended to the name when the weights look broken: "*** nan/inf" for non-finite
    values; "*** dead?" for a kernel of more than one element with std 0 (biases and BatchNorm
    parameters start constant, so only kernels are checked); "*** overflow?" when a value exceeds 1000 in
    magnitude (moving variances of BatchNorm can legitimately be large).
    """
    rows = [["WEIGHT NAME", "SHAPE", "MIN", "MAX", "STD"]]
    for weight in getattr(model, "weights", []):
        name = getattr(weight, "path", None) or getattr(weight, "name", "?")
        values = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
        note = ""
        if values.size and not np.isfinite(values).all():
            note = "  *** nan/inf"
        elif values.size > 1 and values.std() == 0 and "kernel" in name:
            note = "  *** dead?"
        elif values.size and np.abs(values).max() > 1000:
            note = "  *** overflow?"
        if values.size:
            stats = [f"{values.min():+9.4f}", f"{values.max():+10.4f}", f"{values.std():+9.4f}"]
        else:
            stats = ["-", "-", "-"]
        rows.append([name + note, str(values.shape)] + stats)
    return rows


def display_weight_stats(model: Any) -> None:
    """Displays `weight_stats(model)` with `display_table`; works for any Keras model."""
    display_table(weight_stats(model))


def display_differences(
    image: np.ndarray,
    gt_box: np.ndarray,
    gt_class_id: np.ndarray,
    gt_mask: np.ndarray,
    pred_box: np.ndarray,
    pred_class_id: np.ndarray,
    pred_score: np.ndarray,
    pred_mask: np.ndarray,
    class_names: Sequence[str],
    title: str = "",
    ax: Any = None,
    show_mask: bool = True,
    show_box: bool = True,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
    save_path: str | Path | None = None,
) -> Any:
    """Ground truth (green) and predictions (red) on one image, with match IoUs in the captions.

    Predictions scoring below `score_threshold` are left out; matching follows
    `mrcnn.evaluation.ap.compute_matches` at `iou_threshold` (mask IoU). Captions: "" for
    ground truth, "<score> / <IoU of its match>" for predictions (IoU shown even when the
    best-overlapping ground truth has another class, as matterport does).

    Returns:
        The matplotlib Axes.
    """
    from mrcnn.evaluation.ap import compute_matches

    pred_box = np.asarray(pred_box).reshape(-1, 4)
    pred_score = np.asarray(pred_score, dtype=np.float64).reshape(-1)
    pred_class_id = np.asarray(pred_class_id).reshape(-1)
    pred_mask = np.asarray(pred_mask)
    gt_box = np.asarray(gt_box).reshape(-1, 4)
    gt_class_id = np.asarray(gt_class_id).reshape(-1)
    gt_mask = np.asarray(gt_mask)
    # Put predictions in the order compute_matches uses (kept by score, descending) so indices line up.
    order = np.flatnonzero(pred_score >= score_threshold)
    order = order[np.argsort(-pred_score[order], kind="stable")]
    pred_box, pred_class_id, pred_score = pred_box[order], pred_class_id[order], pred_score[order]
    pred_mask = pred_mask[..., order]
    gt_match, pred_match, overlaps = compute_matches(
        gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score, pred_mask,
        iou_threshold=iou_threshold, score_threshold=score_threshold,
    )
    n_gt, n_pred = len(gt_class_id), len(pred_class_id)
    colors = [(0.0, 1.0, 0.0, 0.8)] * n_gt + [(1.0, 0.0, 0.0, 1.0)] * n_pred
    class_ids = np.concatenate([gt_class_id, pred_class_id])
    scores = np.concatenate([np.zeros(n_gt), pred_score])
    boxes = np.concatenate([gt_box, pred_box])
    masks = np.concatenate([gt_mask, pred_mask], axis=-1)
    match_ious = [
        overlaps[i, int(pred_match[i])] if pred_match[i] > -1 else (overlaps[i].max() if n_gt else 0.0)
        for i in range(n_pred)
    ]
    captions = [""] * n_gt + [f"{score:.2f} / {iou:.2f}" for score, iou in zip(pred_score, match_ious)]
    title = title or "Ground Truth and Detections\n GT=green, pred=red, captions: score/IoU"
    return display_instances(
        image, boxes, masks, class_ids, class_names, scores, ax=ax, show_bbox=show_box, show_mask=show_mask,
        colors=colors, captions=captions, title=title, save_path=save_path,
    )
