"""Tests for mrcnn.visualize: headless drawing, input validation, pure helpers."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest
import skimage.io

from mrcnn import visualize

CLASS_NAMES = ["BG", "square", "circle"]


def _instances(n=2, h=40, w=50):
    image = np.full((h, w, 3), 100, np.uint8)
    masks = np.zeros((h, w, n), bool)
    boxes = np.zeros((n, 4), np.int32)
    for i in range(n):
        y1, x1 = 5 + 10 * i, 5 + 12 * i
        masks[y1:y1 + 8, x1:x1 + 9, i] = True
        boxes[i] = (y1, x1, y1 + 8, x1 + 9)
    class_ids = np.array([1 + i % 2 for i in range(n)], np.int32)
    return image, boxes, masks, class_ids


def _png_ok(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = skimage.io.imread(str(path))
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50
    return pixels


def test_display_instances_writes_png(tmp_path):
    image, boxes, masks, class_ids = _instances()
    path = tmp_path / "inst.png"
    ax = visualize.display_instances(image, boxes, masks, class_ids, CLASS_NAMES, scores=np.array([0.9, 0.8]),
                                     figsize=(3, 3), title="t", save_path=path)
    pixels = _png_ok(path)
    # The red-ish/coloured masks make the picture more than one grey level.
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 5
    assert ax.get_title() == "t"
    # One box patch and at least one outline per instance.
    assert len(ax.patches) >= 4
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["square 0.900", "circle 0.800"]


def test_display_instances_zero_instances(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    path = tmp_path / "none.png"
    visualize.display_instances(image, np.zeros((0, 4)), np.zeros((20, 30, 0), bool), np.zeros((0,), np.int32),
                                CLASS_NAMES, figsize=(2, 2), save_path=path)
    _png_ok(path)


def test_display_instances_into_given_axes():
    from matplotlib.figure import Figure

    image, boxes, masks, class_ids = _instances(1)
    fig = Figure()
    ax = fig.add_subplot()
    out = visualize.display_instances(image, boxes, masks, class_ids, CLASS_NAMES, ax=ax, captions=["hello"])
    assert out is ax
    assert [t.get_text() for t in ax.texts] == ["hello"]
    assert len(ax.images) == 1


def test_display_instances_blends_and_outlines_each_mask_as_over_the_whole_image():
    from matplotlib.figure import Figure

    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    masks = np.zeros((40, 50, 4), bool)
    masks[5:15, 8:20, 0] = True
    masks[0:6, 40:50, 1] = True  # at the image corner
    masks[12:30, 15:35, 2] = rng.random((18, 20)) < 0.6  # ragged, overlaps mask 0, several outlines
    # mask 3 stays empty
    boxes = np.array([[5, 8, 15, 20], [0, 40, 6, 50], [12, 15, 30, 35], [0, 0, 0, 0]])
    colors = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)]
    ax = Figure().add_subplot()
    visualize.display_instances(image, boxes, masks, np.ones(4, np.int32), CLASS_NAMES, ax=ax, colors=colors,
                                show_bbox=False)
    expected = image.astype(np.float64)
    expected_outlines = []
    for i in range(4):  # the plain way: blend and trace over the whole image
        expected = visualize.apply_mask(expected, masks[..., i], colors[i])
        expected_outlines += [outline for outline in visualize._mask_outlines(masks[..., i])]
    np.testing.assert_array_equal(ax.images[0].get_array(), np.clip(expected, 0, 255).astype(np.uint8))
    drawn = [patch.get_xy() for patch in ax.patches]
    assert len(drawn) == len(expected_outlines) > 3
    for got, want in zip(drawn, expected_outlines):
        np.testing.assert_allclose(got[: len(want)], want)


def test_display_instances_crowd_caption():
    from matplotlib.figure import Figure

    image, boxes, masks, _ = _instances(1)
    ax = Figure().add_subplot()
    visualize.display_instances(image, boxes, masks, np.array([-2]), CLASS_NAMES, ax=ax)
    assert ax.texts[0].get_text() == "crowd:circle"


@pytest.mark.parametrize(
    "change",
    [
        {"boxes": np.zeros((3, 4))},
        {"masks": np.zeros((40, 50, 1), bool)},
        {"class_ids": np.array([1])},
        {"scores": np.array([0.5, 0.4, 0.3])},
    ],
)
def test_display_instances_mismatched_counts(change):
    image, boxes, masks, class_ids = _instances(2)
    kwargs = {"boxes": boxes, "masks": masks, "class_ids": class_ids, "scores": None}
    kwargs.update(change)
    name = next(iter(change))
    with pytest.raises(ValueError, match=name):
        visualize.display_instances(image, kwargs["boxes"], kwargs["masks"], kwargs["class_ids"], CLASS_NAMES,
                                    scores=kwargs["scores"], save_path="/nonexistent/never-written.png")


def test_display_instances_mask_size_mismatch():
    image, boxes, _, class_ids = _instances(2)
    with pytest.raises(ValueError, match=r"\(10, 10, 2\)"):
        visualize.display_instances(image, boxes, np.zeros((10, 10, 2), bool), class_ids, CLASS_NAMES)


def test_display_instances_unknown_class():
    image, boxes, masks, _ = _instances(2)
    with pytest.raises(ValueError, match=r"\[7\]"):
        visualize.display_instances(image, boxes, masks, np.array([1, 7]), CLASS_NAMES)


def test_plot_precision_recall(tmp_path):
    path = tmp_path / "pr.png"
    ax = visualize.plot_precision_recall(0.75, np.array([1, 1, 0.5, 0.5, 0]), np.array([0, 0.5, 0.5, 1, 1]),
                                         save_path=path)
    _png_ok(path)
    assert "0.750" in ax.get_title()
    with pytest.raises(ValueError, match="recalls"):
        visualize.plot_precision_recall(0.5, np.zeros(3), np.zeros(4))


def test_plot_overlaps(tmp_path):
    path = tmp_path / "ov.png"
    overlaps = np.array([[0.9, 0.0], [0.1, 0.6], [0.0, 0.7]])
    ax = visualize.plot_overlaps(np.array([1, 2]), np.array([1, 2, 1]), np.array([0.9, 0.8, 0.7]), overlaps,
                                 CLASS_NAMES, save_path=path)
    _png_ok(path)
    labels = [t.get_text() for t in ax.texts]
    assert labels[0] == "0.900\nmatch" and labels[3] == "0.600\nmatch" and labels[5] == "0.700\nwrong"
    with pytest.raises(ValueError, match="overlaps"):
        visualize.plot_overlaps(np.array([1]), np.array([1]), np.array([0.9]), np.zeros((2, 2)), CLASS_NAMES)
    # No predictions: compute_matches-style empty overlaps are accepted, without matplotlib warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = visualize.plot_overlaps(np.array([1]), np.zeros(0), np.zeros(0), np.zeros((0, 1)), CLASS_NAMES,
                                     save_path=tmp_path / "empty.png")
    assert [t.get_text() for t in ax.texts] == ["no predictions"]


def test_draw_boxes_and_top_masks_and_images(tmp_path):
    image, boxes, masks, class_ids = _instances(3)
    visualize.draw_boxes(image, boxes=boxes, refined_boxes=boxes + 1, masks=masks, captions=["a", "b", "c"],
                         visibilities=[0, 1, 2], save_path=tmp_path / "boxes.png")
    _png_ok(tmp_path / "boxes.png")
    with pytest.raises(ValueError, match="captions=2"):
        visualize.draw_boxes(image, boxes=boxes, captions=["a", "b"])
    fig = visualize.display_top_masks(image, masks, class_ids, CLASS_NAMES, limit=2, save_path=tmp_path / "top.png")
    _png_ok(tmp_path / "top.png")
    assert [ax.get_title() for ax in fig.axes][:3] == ["H x W=40x50", "square", "circle"]
    visualize.display_images([image, image[..., 0]], titles=["rgb", "gray"], save_path=tmp_path / "grid.png")
    _png_ok(tmp_path / "grid.png")


def test_random_colors():
    colors = visualize.random_colors(5, seed=1)
    assert len(colors) == 5 and len(set(colors)) == 5
    assert all(0 <= c <= 1 for color in colors for c in color)
    assert colors == visualize.random_colors(5, seed=1)
    assert max(max(c) for c in visualize.random_colors(4, bright=False)) == pytest.approx(0.7)


def test_apply_mask_blends_inside_only():
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[True, False], [False, False]])
    out = visualize.apply_mask(image, mask, (1.0, 0.0, 0.0), alpha=0.5)
    np.testing.assert_array_equal(out[0, 0], [178, 50, 50])  # 100*0.5 + 0.5*255 = 177.5 -> 178
    np.testing.assert_array_equal(out[1, 1], [100, 100, 100])
    assert (image == 100).all(), "input must not be modified"
    with pytest.raises(ValueError, match="mask shape"):
        visualize.apply_mask(image, np.zeros((3, 3), bool), (1, 0, 0))


def test_color_splash():
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0] = 200
    masks = np.zeros((2, 2, 1), bool)
    masks[0, 0, 0] = True
    out = visualize.color_splash(image, masks)
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[1, 1], [60, 60, 60])  # 0.299 * 200 = 59.8
    assert (visualize.color_splash(image, np.zeros((2, 2, 0), bool)) == 60).all()


def _soft(masks: np.ndarray) -> np.ndarray:
    """Soft-mask probabilities whose >= 0.5 part is `masks`, with a faint halo below the cut."""
    soft = np.where(masks, 0.9, 0.0).astype(np.float32)
    halo = np.zeros_like(soft)
    halo[1:] = soft[:-1]
    return np.maximum(soft, 0.3 * (halo > 0))


def test_soft_masks_are_drawn_as_detect_binarizes_them():
    from matplotlib.figure import Figure

    image, boxes, masks, class_ids = _instances(3)
    soft = _soft(masks)
    assert (soft > 0).sum() > masks.sum()  # the halo would be drawn if anything > 0 counted
    drawn = {}
    for name, given in (("bool", masks), ("soft", soft)):
        ax = Figure().add_subplot()
        visualize.display_instances(image, boxes, given, class_ids, CLASS_NAMES, ax=ax, show_bbox=False)
        drawn[name] = (ax.images[0].get_array().copy(), [patch.get_xy().tolist() for patch in ax.patches])
    np.testing.assert_array_equal(drawn["soft"][0], drawn["bool"][0])
    assert drawn["soft"][1] == drawn["bool"][1] and len(drawn["bool"][1]) == 3  # one outline per mask
    np.testing.assert_array_equal(visualize.color_splash(image, soft), visualize.color_splash(image, masks))


def test_grayscale_and_rgba_images_are_drawn_as_detect_takes_them():
    from matplotlib.figure import Figure

    rgb, boxes, masks, class_ids = _instances(2)
    rgb[:, :, 0] = np.arange(rgb.shape[1])  # columns differ: a column/row mix-up shows
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(visualize.color_splash(gray, masks), visualize.color_splash(np.dstack([gray] * 3), masks))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    for image, expected in ((gray, np.dstack([gray] * 3)), (rgba, rgb)):
        ax, reference = Figure().add_subplot(), Figure().add_subplot()
        visualize.display_instances(image, boxes, masks, class_ids, CLASS_NAMES, ax=ax)
        visualize.display_instances(expected, boxes, masks, class_ids, CLASS_NAMES, ax=reference)
        np.testing.assert_array_equal(ax.images[0].get_array(), reference.images[0].get_array())
    with pytest.raises(ValueError, match="image has 2 channels, the config expects 3"):
        visualize.color_splash(rgb[:, :, :2], masks)


def test_short_class_names_are_named_everywhere():
    image, _, masks, class_ids = _instances(3)  # ids 1, 2, 1
    with pytest.raises(ValueError, match=r"class ids \[2\] have no name: class_names has 2 entries"):
        visualize.display_top_masks(image, masks, class_ids, CLASS_NAMES[:2])
    with pytest.raises(ValueError, match=r"class ids \[2\] have no name"):
        visualize.plot_overlaps(class_ids, class_ids, np.ones(3), np.eye(3), CLASS_NAMES[:2])


def test_display_table_text(capsys):
    assert visualize.format_table([["a", "bb"], ["ccc", "d"]]) == "a    bb\nccc  d"
    # None, as matterport's: a returned string would be echoed under a notebook cell's table.
    assert visualize.display_table([["a", "bb"], ["ccc", "d"]]) is None
    assert capsys.readouterr().out == "a    bb\nccc  d\n"


def test_weight_stats_flags():
    class W:
        def __init__(self, path, values):
            self.path, self._values = path, np.asarray(values, np.float32)

        def numpy(self):
            return self._values

    model = types.SimpleNamespace(weights=[
        W("conv/kernel", [[1.0, -1.0]]),
        W("dead/kernel", np.zeros((3, 3))),
        W("bn/gamma", np.ones(4)),
        W("big/kernel", [0.0, 5000.0]),
        W("nan/kernel", [np.nan, 1.0]),
    ])
    rows = visualize.weight_stats(model)
    assert rows[0] == ["WEIGHT NAME", "SHAPE", "MIN", "MAX", "STD"]
    names = [r[0] for r in rows[1:]]
    assert names == ["conv/kernel", "dead/kernel  *** dead?", "bn/gamma", "big/kernel  *** overflow?",
                     "nan/kernel  *** nan/inf"]
    assert rows[1][1] == "(1, 2)" and float(rows[1][2]) == -1.0 and float(rows[1][4]) == 1.0


def test_display_weight_stats_keras_model(capsys):
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")])
    assert visualize.display_weight_stats(model) is None
    text = capsys.readouterr().out
    assert "fc/kernel" in text and "(3, 2)" in text and "fc/bias" in text


def test_display_differences(tmp_path):
    image, boxes, masks, class_ids = _instances(2)
    pred_boxes = boxes[::-1].copy()
    ax = visualize.display_differences(image, boxes, class_ids, masks, pred_boxes, class_ids[::-1],
                                       np.array([0.6, 0.9]), masks[..., ::-1], CLASS_NAMES,
                                       save_path=tmp_path / "diff.png")
    _png_ok(tmp_path / "diff.png")
    # Two GT (empty captions) then predictions by descending score, both matched with IoU 1.
    assert [t.get_text() for t in ax.texts] == ["", "", "0.90 / 1.00", "0.60 / 1.00"]


# ----------------------------------------------------------------------------------------------
# Keypoints
def test_display_keypoints_draws_points_and_limbs(tmp_path):
    from matplotlib.figure import Figure

    image = np.zeros((40, 50, 3), np.uint8)
    keypoints = np.array([[[10.5, 5.5, 2], [20.5, 25.5, 2], [30.5, 5.5, 0]],
                          [[40.5, 30.5, 0.9], [45.5, 35.5, 0.2], [44.5, 20.5, 0.8]]], np.float32)
    ax = Figure().subplots()
    visualize.display_keypoints(image, keypoints, skeleton=[(0, 1), (1, 2)], boxes=np.array([[0, 0, 30, 40], [20, 38, 40, 50]]),
                                min_score=0.5, keypoint_names=["a", "b", "c"], ax=ax)
    # Instance 0: limb 0-1 only (2 is unlabelled); instance 1: no limb has both ends above 0.5.
    assert len(ax.lines) == 1
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[10, 5], [20, 25]])  # pixel centres at integers
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    np.testing.assert_allclose(points, [[10, 5], [20, 25], [40, 30], [44, 20]])
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    path = tmp_path / "keypoints.png"
    visualize.display_keypoints(image, keypoints, save_path=path)
    assert skimage.io.imread(path).ndim == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(keypoints=np.zeros((2, 3))), r"\[N, K, 3\]"),
    (dict(skeleton=[(0, 5)]), "skeleton"),
    (dict(boxes=np.zeros((3, 4))), "boxes"),
    (dict(keypoint_names=["a"]), "keypoint_names"),
])
def test_display_keypoints_names_bad_inputs(kwargs, message):
    args = dict(image=np.zeros((10, 10, 3)), keypoints=np.zeros((2, 3, 3)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        visualize.display_keypoints(**args)
