"""Tests of mrcnn.utils (numpy box, mask, resize, anchor and meta utilities)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.transform
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn import utils
from mrcnn.config import Config


# ------------------------------------------------------------------------------------------------
# Strategies
@st.composite
def boxes_strategy(draw, min_size=0, max_boxes=12, integer=False):
    n = draw(st.integers(0, max_boxes))
    coords = st.integers(-20, 120) if integer else st.floats(-20, 120, allow_nan=False, width=32)
    sizes = st.integers(min_size, 80) if integer else st.floats(min_size, 80, allow_nan=False, width=32)
    rows = []
    for _ in range(n):
        y, x, h, w = draw(coords), draw(coords), draw(sizes), draw(sizes)
        rows.append([y, x, y + h, x + w])
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def slow_iou(a, b):
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    union = max(a[2] - a[0], 0) * max(a[3] - a[1], 0) + max(b[2] - b[0], 0) * max(b[3] - b[1], 0) - inter
    return inter / union if union > 0 else 0.0


def slow_nms(boxes, scores, threshold):
    """Greedy NMS, one box at a time: best remaining box kept, others with IoU > threshold dropped."""
    remaining = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    while remaining:
        best = remaining.pop(0)
        keep.append(best)
        remaining = [i for i in remaining if slow_iou(boxes[best], boxes[i]) <= threshold]
    return keep


# ------------------------------------------------------------------------------------------------
# Boxes
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 6), st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_extract_bboxes_matches_pixel_extent(height, width, count, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((height, width, count)) < rng.random(count) * 0.2
    boxes = utils.extract_bboxes(mask)
    assert boxes.shape == (count, 4) and boxes.dtype == np.int32
    for i in range(count):
        ys, xs = np.nonzero(mask[:, :, i])
        expected = [0, 0, 0, 0] if ys.size == 0 else [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        assert boxes[i].tolist() == expected


def test_extract_bboxes_rejects_2d_mask():
    with pytest.raises(ValueError, match=r"\[H, W, N\]"):
        utils.extract_bboxes(np.zeros((4, 4), bool))


@given(boxes_strategy(), boxes_strategy())
@settings(max_examples=60, deadline=None)
def test_compute_overlaps_range_symmetry_and_reference(boxes1, boxes2):
    overlaps = utils.compute_overlaps(boxes1, boxes2)
    assert overlaps.shape == (len(boxes1), len(boxes2))
    assert np.all((overlaps >= 0) & (overlaps <= 1 + 1e-12))
    np.testing.assert_allclose(overlaps, utils.compute_overlaps(boxes2, boxes1).T, rtol=0, atol=1e-12)
    for i, a in enumerate(boxes1):
        for j, b in enumerate(boxes2):
            assert overlaps[i, j] == pytest.approx(slow_iou(a, b), abs=1e-9)
    # compute_iou agrees row by row.
    if len(boxes1) and len(boxes2):
        row = utils.compute_iou(boxes1[0], boxes2, utils.box_area(boxes1[:1])[0], utils.box_area(boxes2))
        np.testing.assert_allclose(row, overlaps[0], atol=1e-12)


@given(boxes_strategy(min_size=1))
@settings(max_examples=30, deadline=None)
def test_compute_overlaps_self_iou_is_one(boxes):
    np.testing.assert_allclose(np.diag(utils.compute_overlaps(boxes, boxes)), 1.0, atol=1e-9)


@given(boxes_strategy(min_size=1, integer=True, max_boxes=5), st.integers(0, 2**31 - 1))
@settings(max_examples=30, deadline=None)
def test_mask_overlaps_equal_box_overlaps_for_rectangles(boxes, seed):
    # Rectangular masks inside a canvas: pixel IoU is exactly the IoU of the clipped pixel boxes.
    boxes = np.clip(boxes, 0, 100).astype(int)
    masks = np.zeros((100, 100, len(boxes)), dtype=bool)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        masks[y1:y2, x1:x2, i] = True
    other = masks[:, :, np.random.default_rng(seed).permutation(len(boxes))]
    expected = utils.compute_overlaps(utils.extract_bboxes(masks), utils.extract_bboxes(other))
    np.testing.assert_allclose(utils.compute_overlaps_masks(masks, other), expected, atol=1e-12)


def test_mask_overlaps_empty_inputs():
    assert utils.compute_overlaps_masks(np.zeros((5, 5, 0)), np.ones((5, 5, 2), bool)).shape == (0, 2)
    with pytest.raises(ValueError, match="same H, W"):
        utils.compute_overlaps_masks(np.zeros((5, 5, 1)), np.zeros((4, 5, 1)))


@given(boxes_strategy(min_size=1, max_boxes=25), st.integers(0, 2**31 - 1), st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
       st.booleans())
@settings(max_examples=80, deadline=None)
def test_nms_matches_slow_reference(boxes, seed, threshold, with_ties):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, len(boxes)).astype(float) if with_ties else rng.random(len(boxes))
    keep = utils.non_max_suppression(boxes, scores, threshold)
    assert keep.dtype == np.int32
    assert keep.tolist() == slow_nms(boxes.tolist(), scores.tolist(), threshold)


def test_nms_shape_error():
    with pytest.raises(ValueError, match="scores"):
        utils.non_max_suppression(np.zeros((3, 4)), np.zeros(2), 0.5)


@given(boxes_strategy(min_size=1, max_boxes=10), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_box_refinement_apply_box_deltas_round_trip(boxes, seed):
    rng = np.random.default_rng(seed)
    # Targets: shifted and rescaled versions of the boxes (positive sizes).
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2 + rng.uniform(-10, 10, (len(boxes), 2))
    sizes = (boxes[:, 2:] - boxes[:, :2]) * rng.uniform(0.3, 3.0, (len(boxes), 2))
    gt = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
    deltas = utils.box_refinement(boxes, gt)
    assert deltas.dtype == np.float32 and deltas.shape == boxes.shape
    np.testing.assert_allclose(utils.apply_box_deltas(boxes, deltas), gt, rtol=1e-4, atol=1e-3)
    # And the other way: deltas -> boxes -> the same deltas.
    random_deltas = rng.uniform(-1, 1, boxes.shape).astype(np.float32)
    refined = utils.apply_box_deltas(boxes, random_deltas)
    np.testing.assert_allclose(utils.box_refinement(boxes, refined), random_deltas, atol=2e-3)


def test_box_refinement_known_values():
    box = np.array([[10, 20, 30, 60]])  # h = 20, w = 40, center (20, 40)
    gt = np.array([[15, 10, 55, 50]])  # h = 40, w = 40, center (35, 30)
    np.testing.assert_allclose(utils.box_refinement(box, gt), [[15 / 20, -10 / 40, np.log(2), 0]], atol=1e-6)


def test_norm_denorm_round_trip():
    boxes = np.array([[0, 0, 96, 128], [10, 20, 30, 40]])
    normed = utils.norm_boxes(boxes, (96, 128))
    assert normed.dtype == np.float32
    np.testing.assert_allclose(normed[0], [0, 0, 1, 1])
    denormed = utils.denorm_boxes(normed, (96, 128, 3))
    assert denormed.dtype == np.int32 and denormed.tolist() == boxes.tolist()


# ------------------------------------------------------------------------------------------------
# Resampling helpers against skimage
@pytest.mark.parametrize("shape,out", [((17, 23), (40, 11)), ((64, 48), (128, 96)), ((100, 140), (37, 52)), ((1, 5), (3, 2))])
def test_resize_bilinear_matches_skimage(shape, out):
    array = np.random.default_rng(0).random(shape + (3,)).astype(np.float32) * 255
    expected = skimage.transform.resize(array, out, order=1, mode="edge", anti_aliasing=False, preserve_range=True)
    np.testing.assert_allclose(utils.resize_bilinear(array, out), expected, atol=1e-3)


@pytest.mark.parametrize("shape,out", [((17, 23), (40, 11)), ((64, 48), (128, 96)), ((100, 140), (37, 52))])
def test_resize_nearest_matches_skimage(shape, out):
    masks = np.random.default_rng(1).random(shape + (4,)) > 0.5
    expected = skimage.transform.resize(masks, out, order=0, anti_aliasing=False, preserve_range=True).astype(bool)
    result = utils.resize_nearest(masks, out)
    assert result.dtype == bool and result.shape == expected.shape
    # Identical except possibly at exact half-pixel ties, where rounding conventions may differ.
    assert np.mean(result != expected) < 0.02


# ------------------------------------------------------------------------------------------------
# resize_image / resize_mask
def _rectangle_image(height, width, box):
    y1, x1, y2, x2 = box
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[y1:y2, x1:x2] = (255, 40, 0)
    mask = np.zeros((height, width, 1), dtype=bool)
    mask[y1:y2, x1:x2, 0] = True
    return image, mask


@pytest.mark.parametrize(
    "mode,min_dim,max_dim,min_scale,shape",
    [
        ("square", 64, 128, 0, (60, 90)),  # upscale, pad to 128 x 128
        ("square", 32, 64, 0, (150, 90)),  # downscale to fit max_dim
        ("square", 64, 128, 3.0, (30, 20)),  # min_scale wins, then max_dim caps it
        ("pad64", 64, None, 0, (70, 100)),
        ("crop", 64, None, 0, (90, 120)),
        ("none", None, None, None, (37, 53)),
    ],
)
def test_resize_image_keeps_mask_aligned(mode, min_dim, max_dim, min_scale, shape):
    rng = np.random.default_rng(3)
    height, width = shape
    box = (height // 4, width // 3, height // 4 + height // 2, width // 3 + width // 2)
    image, mask = _rectangle_image(height, width, box)
    resized, window, scale, padding, crop = utils.resize_image(image, min_dim, max_dim, min_scale, mode, rng=rng)
    resized_mask = utils.resize_mask(mask, scale, padding, crop)
    assert resized.dtype == np.uint8
    assert resized_mask.dtype == bool and resized_mask.shape[:2] == resized.shape[:2]

    if mode == "square":
        assert resized.shape == (max_dim, max_dim, 3)
        assert max(round(height * scale), round(width * scale)) <= max_dim
    elif mode == "pad64":
        assert resized.shape[0] % 64 == 0 and resized.shape[1] % 64 == 0
    elif mode == "crop":
        assert resized.shape == (min_dim, min_dim, 3) and crop is not None and crop[2:] == (min_dim, min_dim)
    else:
        assert resized is image and scale == 1.0
    # The window is the resized image without its padding.
    y1, x1, y2, x2 = window
    assert (y2 - y1, x2 - x1) == (
        (min_dim, min_dim) if mode == "crop" else (round(height * scale), round(width * scale))
    )
    outside = np.ones(resized.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert not resized[outside].any()
    assert [tuple(p) for p in padding[:2]] == (
        [(0, 0), (0, 0)] if mode in ("crop", "none") else [(y1, resized.shape[0] - y2), (x1, resized.shape[1] - x2)]
    )

    # The mask's box matches the coloured region within 1 px.
    colour_box = utils.extract_bboxes(resized[:, :, :1] > 127)[0]
    mask_box = utils.extract_bboxes(resized_mask)[0]
    assert resized_mask.any()
    assert np.abs(colour_box.astype(int) - mask_box.astype(int)).max() <= 1, (colour_box, mask_box)


@pytest.mark.parametrize("shape", [(1, 300), (300, 1), (2, 900)])
def test_a_thin_image_keeps_at_least_one_pixel_per_side(shape):
    # Scaled down to fit 128 px, a 1 x 300 image's height would round to 0 (an error in resize).
    image = np.full(shape + (3,), 200, np.uint8)
    mask = np.ones(shape + (1,), bool)
    resized, window, scale, padding, crop = utils.resize_image(image, 64, 128, 0, "square")
    assert resized.shape == (128, 128, 3)
    y1, x1, y2, x2 = window
    assert (y2 - y1, x2 - x1) == utils.scaled_shape(*shape, scale) and min(y2 - y1, x2 - x1) >= 1
    assert utils.resize_mask(mask, scale, padding, crop)[y1:y2, x1:x2].all()
    bbox, mini = utils.resize_and_minimize_mask(mask, scale, padding, crop, (8, 8))
    assert tuple(bbox[0]) == (y1, x1, y2, x2) and mini.all()


def test_resize_image_crop_uses_rng():
    image = np.random.default_rng(0).integers(0, 255, (100, 140, 3), dtype=np.uint8)
    crops = [utils.resize_image(image, 64, None, 0, "crop", rng=np.random.default_rng(s))[4] for s in (5, 5, 6, 7, 8)]
    assert crops[0] == crops[1]
    assert len(set(crops)) > 2


def test_resize_image_errors():
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="mode"):
        utils.resize_image(image, 64, 64, mode="stretch")
    with pytest.raises(ValueError, match="max_dim"):
        utils.resize_image(image, 64, None, mode="square")
    with pytest.raises(ValueError, match="multiple of 64"):
        utils.resize_image(image, 60, None, mode="pad64")
    with pytest.raises(ValueError, match="image"):
        utils.resize_image(np.zeros((10, 10)), 64, 64)


def test_resize_image_keeps_float_dtype():
    image = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    resized = utils.resize_image(image, 40, 64, mode="square")[0]
    assert resized.dtype == np.float32 and resized.shape == (64, 64, 3)


# ------------------------------------------------------------------------------------------------
# Mini masks
def _shape_masks(height, width):
    yy, xx = np.mgrid[:height, :width]
    rectangle = (yy >= 10) & (yy < 70) & (xx >= 5) & (xx < 38)
    ellipse = ((yy - 50) / 30.0) ** 2 + ((xx - 80) / 18.0) ** 2 <= 1
    small = (yy >= 3) & (yy < 9) & (xx >= 90) & (xx < 97)
    return np.stack([rectangle, ellipse, small], axis=-1)


@pytest.mark.parametrize("mini_shape", [(56, 56), (28, 28), (20, 40)])
def test_minimize_expand_round_trip(mini_shape):
    masks = _shape_masks(96, 128)
    boxes = utils.extract_bboxes(masks)
    mini = utils.minimize_mask(boxes, masks, mini_shape)
    assert mini.shape == mini_shape + (3,) and mini.dtype == bool
    expanded = utils.expand_mask(boxes, mini, (96, 128, 3))
    assert expanded.shape == masks.shape and expanded.dtype == bool
    ious = np.diag(utils.compute_overlaps_masks(masks, expanded))
    assert np.all(ious > 0.95), ious
    # A rectangle comes back exactly: its crop is all ones.
    np.testing.assert_array_equal(expanded[:, :, 0], masks[:, :, 0])


@given(st.integers(0, 2**31 - 1), st.sampled_from(["square", "pad64", "crop", "none"]), st.integers(8, 90),
       st.integers(8, 90), st.sampled_from([(64, 64), (32, 64), (64, 128)]))
@settings(max_examples=40, deadline=None)
def test_resize_and_minimize_mask_equals_separate_steps(seed, mode, height, width, dims):
    rng = np.random.default_rng(seed)
    min_dim, max_dim = dims
    if mode == "crop":
        min_dim = min(min_dim, 32)
    elif mode == "pad64":
        min_dim = 64
    count = int(rng.integers(0, 6))
    masks = np.zeros((height, width, count), dtype=bool)
    for i in range(count):  # blobs of random size, some a single pixel, some empty
        y, x = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(0, 20), rng.integers(0, 20)
        masks[y : y + h, x : x + w, i] = rng.random((min(h, height - y), min(w, width - x))) < 0.8
    image = np.zeros((height, width, 3), np.uint8)
    _, _, scale, padding, crop = utils.resize_image(image, min_dim, max_dim, 0, mode, rng=rng)
    full = utils.resize_mask(masks, scale, padding, crop)
    keep = full.any(axis=(0, 1))
    expected_boxes = utils.extract_bboxes(full[:, :, keep])
    expected_mini = utils.minimize_mask(expected_boxes, full[:, :, keep], (14, 20))
    boxes, mini = utils.resize_and_minimize_mask(masks, scale, padding, crop, (14, 20))
    np.testing.assert_array_equal(boxes[keep], expected_boxes)
    np.testing.assert_array_equal(mini[:, :, keep], expected_mini)
    assert not boxes[~keep].any() and not mini[:, :, ~keep].any()


def test_minimize_mask_rejects_empty_box():
    with pytest.raises(ValueError, match="zero area"):
        utils.minimize_mask(np.zeros((1, 4), np.int32), np.zeros((8, 8, 1), bool), (4, 4))


def test_unmold_mask_pastes_and_clips():
    soft = np.zeros((28, 28), np.float32)
    soft[:, :14] = 0.9  # left half on
    full = utils.unmold_mask(soft, (10, 20, 30, 60), (50, 50, 3))
    assert full.shape == (50, 50) and full.dtype == bool
    assert full[10:30, 20:40].all() and not full[10:30, 40:60].any() and full.sum() == 20 * 20
    # Box partly outside the image: only the inside part is pasted.
    clipped = utils.unmold_mask(np.ones((7, 7)), (-5, 40, 10, 70), (50, 50))
    assert clipped.sum() == 10 * 10 and clipped[:10, 40:].all()
    assert not utils.unmold_mask(np.ones((7, 7)), (5, 5, 5, 9), (20, 20)).any()


# ------------------------------------------------------------------------------------------------
# Anchors
def test_generate_anchors_order_and_geometry():
    ratios = [0.5, 1, 2]
    anchors = utils.generate_anchors(32, ratios, (3, 5), 8, 1)
    assert anchors.shape == (3 * 5 * 3, 4)
    grid = anchors.reshape(3, 5, 3, 4)  # row-major (y, x, ratio)
    centers = (grid[..., :2] + grid[..., 2:]) / 2
    np.testing.assert_allclose(centers[..., 0], np.broadcast_to(np.arange(3)[:, None, None] * 8, (3, 5, 3)))
    np.testing.assert_allclose(centers[..., 1], np.broadcast_to(np.arange(5)[None, :, None] * 8, (3, 5, 3)))
    heights = grid[..., 2] - grid[..., 0]
    widths = grid[..., 3] - grid[..., 1]
    np.testing.assert_allclose(widths / heights, np.broadcast_to(ratios, (3, 5, 3)))
    np.testing.assert_allclose(widths * heights, 32.0**2)
    assert utils.generate_anchors(32, ratios, (4, 6), 8, 2).shape == (2 * 3 * 3, 4)


def test_pyramid_anchors_and_backbone_shapes():
    class Tiny(Config):
        NUM_CLASSES = 2
        IMAGE_MIN_DIM = 128
        IMAGE_MAX_DIM = 128

    config = Tiny()
    shapes = utils.compute_backbone_shapes(config, config.IMAGE_SHAPE)
    assert shapes.tolist() == [[32, 32], [16, 16], [8, 8], [4, 4], [2, 2]]
    assert utils.compute_backbone_shapes(config, (100, 70, 3)).tolist()[0] == [25, 18]
    anchors = utils.generate_pyramid_anchors(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS, shapes,
                                             config.BACKBONE_STRIDES, 1)
    counts = [h * w * 3 for h, w in shapes]
    assert anchors.shape == (sum(counts), 4)
    # Level by level: the areas step through the scales.
    start = 0
    for count, scale in zip(counts, config.RPN_ANCHOR_SCALES):
        level = anchors[start : start + count]
        np.testing.assert_allclose((level[:, 2] - level[:, 0]) * (level[:, 3] - level[:, 1]), scale**2)
        start += count
    with pytest.raises(ValueError, match="per level"):
        utils.generate_pyramid_anchors((32, 64), [1], shapes, config.BACKBONE_STRIDES, 1)
    # The model's and the generator's anchors: the same for an FPN config, 3 per position.
    np.testing.assert_array_equal(utils.generate_config_anchors(config, config.IMAGE_SHAPE), anchors)
    assert utils.rpn_anchors_per_location(config) == 3


def test_c4_anchors_all_scales_on_one_level():
    from mrcnn.config import C4Config

    class TinyC4(C4Config):
        NUM_CLASSES = 2
        IMAGE_MIN_DIM = 128
        IMAGE_MAX_DIM = 128

    config = TinyC4()
    assert utils.anchor_scales_per_level(config) == [(32, 64, 128, 256, 512)]
    assert utils.rpn_anchors_per_location(config) == 15  # Detectron's C4: 5 sizes x 3 ratios
    anchors = utils.generate_config_anchors(config, config.IMAGE_SHAPE)
    assert anchors.shape == (8 * 8 * 15, 4)  # C4 of a 128 px image is 8 x 8
    per_position = anchors.reshape(8, 8, 15, 4)
    centers = (per_position[..., :2] + per_position[..., 2:]) / 2  # (cy, cx)
    np.testing.assert_allclose(centers[..., 0], np.broadcast_to(16.0 * np.arange(8)[:, None, None], (8, 8, 15)))
    np.testing.assert_allclose(centers[..., 1], np.broadcast_to(16.0 * np.arange(8)[None, :, None], (8, 8, 15)))
    heights = per_position[0, 0, :, 2] - per_position[0, 0, :, 0]
    widths = per_position[0, 0, :, 3] - per_position[0, 0, :, 1]
    assert sorted(np.round(np.sqrt(heights * widths)).astype(int).tolist()) == sorted([32, 64, 128, 256, 512] * 3)
    assert sorted(np.round(widths / heights, 3).tolist()) == sorted([0.5, 1.0, 2.0] * 5)


# ------------------------------------------------------------------------------------------------
# Molding and meta
def test_mold_unmold_round_trip():
    class Tiny(Config):
        NUM_CLASSES = 2

    config = Tiny()
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    molded = utils.mold_image(images, config)
    assert molded.dtype == np.float32
    np.testing.assert_allclose(molded[0, 0, 0], images[0, 0, 0] - config.MEAN_PIXEL, atol=1e-4)
    np.testing.assert_array_equal(utils.unmold_image(molded, config), images)


def test_compose_parse_image_meta_round_trip():
    metas = np.stack([
        utils.compose_image_meta(7, (480, 640, 3), (1024, 1024, 3), (128, 0, 896, 1024), 1.6, [1, 1, 0, 1]),
        utils.compose_image_meta(8, (300, 200, 3), (1024, 1024, 3), (0, 171, 1024, 853), 3.41, [1, 0, 1, 1]),
    ])
    assert metas.shape == (2, 1 + 3 + 3 + 4 + 1 + 4) and metas.dtype == np.float32
    parsed = utils.parse_image_meta(metas)
    assert parsed["image_id"].tolist() == [7, 8]
    assert parsed["original_image_shape"].tolist() == [[480, 640, 3], [300, 200, 3]]
    assert parsed["image_shape"].tolist() == [[1024, 1024, 3]] * 2
    assert parsed["window"].tolist() == [[128, 0, 896, 1024], [0, 171, 1024, 853]]
    np.testing.assert_allclose(parsed["scale"], [1.6, 3.41], rtol=1e-6)
    assert parsed["active_class_ids"].tolist() == [[1, 1, 0, 1], [1, 0, 1, 1]]
    assert utils.parse_image_meta(metas[0])["window"].tolist() == [128, 0, 896, 1024]


def _paste_on_padded_canvas(mask: np.ndarray, box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """Slow reference: resize to the box, draw on a canvas large enough for any test box, crop."""
    pad = 200
    canvas = np.zeros((height + 2 * pad, width + 2 * pad), np.float32)
    y1, x1, y2, x2 = box
    if y2 > y1 and x2 > x1:
        canvas[y1 + pad : y2 + pad, x1 + pad : x2 + pad] = utils.resize_bilinear(mask, (y2 - y1, x2 - x1))
    return canvas[pad : pad + height, pad : pad + width]


@pytest.mark.parametrize("soft", [False, True])
def test_paste_masks_matches_pasting_each_mask_on_a_canvas(soft):
    rng = np.random.default_rng(5)
    height, width = 60, 80
    fixed = [(10, 20, 30, 60), (-5, 40, 10, 95), (50, -30, 75, 5), (5, 5, 5, 9), (70, 10, 90, 30),
             (0, 0, 60, 80), (-40, -40, -10, -10)]  # inside, over edges, zero area, below, whole, outside
    ys, xs = np.sort(rng.integers(-20, 100, (2, 20, 2)), axis=-1)
    boxes = np.concatenate([np.array(fixed), np.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], axis=1)])
    masks = rng.random((len(boxes), 28, 28)).astype(np.float32)
    pasted = utils.paste_masks(masks, boxes, (height, width, 3), soft=soft)
    assert pasted.shape == (height, width, len(boxes)) and pasted.dtype == (np.float32 if soft else bool)
    for n, box in enumerate(boxes):
        expected = _paste_on_padded_canvas(masks[n], tuple(box), height, width)
        if soft:
            np.testing.assert_allclose(pasted[:, :, n], expected, atol=1e-6, err_msg=f"box {box}")
        else:
            np.testing.assert_array_equal(pasted[:, :, n], expected >= 0.5, err_msg=f"box {box}")
    assert pasted[:, :, 3].max() == 0 and pasted[:, :, 6].max() == 0  # zero area, wholly outside


def test_paste_masks_rejects_bad_shapes_by_name():
    with pytest.raises(ValueError, match="masks must be"):
        utils.paste_masks(np.zeros((28, 28)), np.zeros((1, 4)), (10, 10))
    with pytest.raises(ValueError, match="boxes must be"):
        utils.paste_masks(np.zeros((2, 28, 28)), np.zeros((3, 4)), (10, 10))
    assert utils.paste_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), (10, 12)).shape == (10, 12, 0)


def test_unmold_soft_mask_is_unmold_mask_before_its_threshold():
    soft = np.random.default_rng(3).random((28, 28)).astype(np.float32)
    for box in ((10, 20, 30, 60), (-5, 40, 10, 70), (5, 5, 5, 9)):
        full = utils.unmold_soft_mask(soft, box, (50, 50))
        assert full.dtype == np.float32 and full.shape == (50, 50)
        np.testing.assert_array_equal(full >= 0.5, utils.unmold_mask(soft, box, (50, 50)))
    full = utils.unmold_soft_mask(soft, (10, 20, 30, 60), (50, 50))
    assert full[:10].max() == 0 and full[:, :20].max() == 0 and full[10:30, 20:50].max() > 0.5
    np.testing.assert_allclose(full[10:30, 20:50], utils.resize_bilinear(soft, (20, 40))[:, :30])


@pytest.mark.parametrize("scale, square_side, shape", [
    (2.0, 128, (50, 64)), (0.5, None, (50, 90)), (1.0, None, (64, 64)), (1.37, 256, (100, 40)),
])
def test_rescale_image_scales_exactly_and_pads_centered(scale, square_side, shape):
    image = np.random.default_rng(0).integers(0, 255, shape + (3,), dtype=np.uint8)
    out, window, used, padding = utils.rescale_image(image, scale, square_side=square_side)
    h, w = round(shape[0] * scale), round(shape[1] * scale)
    assert used == scale and out.dtype == np.uint8
    y1, x1, y2, x2 = window
    assert (y2 - y1, x2 - x1) == (h, w)
    if square_side is None:
        assert out.shape[0] % 64 == 0 and out.shape[1] % 64 == 0 and out.shape[0] - h < 64
    else:
        assert out.shape[:2] == (square_side, square_side)
    assert abs(y1 - (out.shape[0] - y2)) <= 1 and abs(x1 - (out.shape[1] - x2)) <= 1  # centered
    assert padding[0] == (y1, out.shape[0] - y2) and padding[1] == (x1, out.shape[1] - x2)
    assert out[:y1].max(initial=0) == 0 and out[y2:].max(initial=0) == 0
    # The window holds the bilinear resize, rounded back to uint8 (resize_image's resampling).
    expected = np.clip(np.rint(utils.resize_bilinear(image, (h, w))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[y1:y2, x1:x2], expected)


def test_rescale_image_errors():
    image = np.zeros((10, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="scale"):
        utils.rescale_image(image, 0.0)
    with pytest.raises(ValueError, match="square_side"):
        utils.rescale_image(image, 4.0, square_side=64)
