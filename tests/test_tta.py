"""Tests for mrcnn/tta.py: test-time augmentation through MaskRCNN.detect(tta=...)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mrcnn.model import MaskRCNN
from mrcnn.tta import TTA, ViewDetections, as_tta, detect_tta, detect_view, merge_views
from tests.test_model import TinyConfig, _shapes


def _with_foreground_bias(model: MaskRCNN) -> MaskRCNN:
    """Random weights classify almost every RoI as background: lift class 1's logit so that the
    model detects things, and shrink the logits so that scores vary with the RoI features instead
    of saturating at 1.0 (ties would make the merge order arbitrary)."""
    layer = next(layer for layer in model.all_layers() if layer.name == "mrcnn_class_logits")
    kernel, bias = layer.get_weights()
    bias = np.zeros_like(bias)
    bias[1] = 2.0
    layer.set_weights([kernel * 0.05, bias])
    return model


@pytest.fixture(scope="module")
def model() -> MaskRCNN:
    keras.utils.set_random_seed(0)
    model = MaskRCNN(mode="inference", config=TinyConfig())
    model.ensure_built()
    return _with_foreground_bias(model)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    # A square shapes image, a wide and a tall one (different windows inside the 64 px canvas).
    return [_shapes(1, seed=9).load_image(0), rng.integers(0, 255, (50, 90, 3), dtype=np.uint8),
            _shapes(1, seed=4).load_image(0)[:, 10:50]]


def _mirror(result: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """A detect result of a mirrored image, mirrored back: boxes [x1, x2) -> [W - x2, W - x1)."""
    rois = result["rois"].copy()
    rois[:, [1, 3]] = width - result["rois"][:, [3, 1]]
    return dict(result, rois=rois, masks=result["masks"][:, ::-1])


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], mask_atol: float = 0.0) -> None:
    assert set(a) == set(b)
    np.testing.assert_array_equal(a["rois"], b["rois"])
    np.testing.assert_array_equal(a["class_ids"], b["class_ids"])
    np.testing.assert_array_equal(a["scores"], b["scores"])
    assert a["masks"].dtype == b["masks"].dtype and a["masks"].shape == b["masks"].shape
    np.testing.assert_allclose(a["masks"], b["masks"], atol=mask_atol, rtol=0)


def test_single_view_at_the_models_own_scale_is_plain_detect(model, images):
    plain = model.detect(images)
    assert sum(len(r["scores"]) for r in plain) > 0, "the fixture must detect something"
    for tta in ({"scales": [1.0]}, TTA()):
        for a, b in zip(model.detect(images, tta=tta), plain):
            _assert_same(a, b)
    # The same through the merge step (one view: each detection its own cluster).
    views = detect_view(model, images)
    for image, view, b in zip(images, views, plain):
        _assert_same(merge_views([view], image.shape, 0.3, 100), b)


def test_max_instances_applies_to_a_single_view(model, images):
    """Found in review: with one unflipped view detect's own result came back uncut."""
    plain = model.detect(images)
    assert max(len(r["scores"]) for r in plain) > 1, "the fixture must detect more than one instance"
    for a, b in zip(model.detect(images, tta={"scales": (1.0,), "max_instances": 1}), plain):
        assert len(a["scores"]) == min(1, len(b["scores"])) and a["masks"].shape[-1] == len(a["scores"])
        np.testing.assert_array_equal(a["rois"], b["rois"][:1])
        np.testing.assert_array_equal(a["masks"], b["masks"][..., :1])


def test_soft_masks_threshold_to_detects_masks(model, images):
    soft = model.detect(images, soft_masks=True)
    for s, b in zip(soft, model.detect(images)):
        assert s["masks"].dtype == np.float32 and 0.0 <= s["masks"].min() and s["masks"].max() <= 1.0
        np.testing.assert_array_equal(s["masks"] >= 0.5, b["masks"])


def test_mirrored_view_mapped_back_matches_detect_on_the_mirrored_image(model, images):
    flipped = [np.ascontiguousarray(image[:, ::-1]) for image in images]
    direct = model.detect(flipped, soft_masks=True)
    for image, view, result in zip(images, detect_view(model, images, flip=True), direct):
        expected = _mirror(result, image.shape[1])
        np.testing.assert_array_equal(view.rois, expected["rois"])
        np.testing.assert_array_equal(view.scores, expected["scores"])
        for n, (y1, x1, y2, x2) in enumerate(view.rois):
            np.testing.assert_array_equal(view.crops[n], expected["masks"][y1:y2, x1:x2, n])


def test_flip_tta_of_a_mirrored_image_mirrored_back_matches(model, images):
    # {image, mirror} and {mirror, image} are the same views: the merged results must agree.
    tta = {"hflip": True}
    flipped = [np.ascontiguousarray(image[:, ::-1]) for image in images]
    results = model.detect(images, tta=tta, soft_masks=True)
    for image, a, b in zip(images, results, model.detect(flipped, tta=tta, soft_masks=True)):
        _assert_same(a, _mirror(b, image.shape[1]), mask_atol=1e-6)
    assert any(len(r["scores"]) for r in results)


def test_scaled_view_equals_a_model_built_at_that_size(model):
    """scale=2 on the 64 px model is what the same weights give with a 128 px config."""
    big = MaskRCNN(mode="inference", config=TinyConfig().update(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128))
    big.ensure_built()
    big.set_weights(model.get_weights())
    images = [_shapes(1, seed=9).load_image(0), np.random.default_rng(1).integers(0, 255, (50, 90, 3), np.uint8)]
    molded, metas, windows = model.mold_inputs(images, scale=2.0)
    big_molded, big_metas, big_windows = big.mold_inputs(images)
    np.testing.assert_array_equal(molded, big_molded)
    np.testing.assert_array_equal(metas, big_metas)
    for a, b in zip(model.detect(images, scale=2.0), big.detect(images)):
        _assert_same(a, b)


def test_multi_scale_flip_tta_gives_well_formed_results(model, images):
    results = model.detect(images, tta={"scales": (0.5, 1.0, 1.5), "hflip": True, "max_instances": 5})
    for image, r in zip(images, results):
        n = len(r["scores"])
        assert n <= 5 and r["rois"].shape == (n, 4) and r["rois"].dtype == np.int32
        assert r["class_ids"].dtype == np.int32 and r["scores"].dtype == np.float32
        assert r["masks"].shape == image.shape[:2] + (n,) and r["masks"].dtype == bool
        assert np.all(np.diff(r["scores"]) <= 0)
        assert (r["rois"][:, :2] >= 0).all() and (r["rois"][:, 2] <= image.shape[0]).all()
        assert (r["rois"][:, 3] <= image.shape[1]).all()


# ----------------------------------------------------------------------------------------------
# merge_views on hand-made detections
def _view(rois, class_ids, scores, fill) -> ViewDetections:
    rois = np.array(rois, np.int32).reshape(-1, 4)
    crops = [np.full((y2 - y1, x2 - x1), f, np.float32) for (y1, x1, y2, x2), f in zip(rois, fill)]
    return ViewDetections(rois, np.array(class_ids, np.int32), np.array(scores, np.float32), crops)


def test_merge_votes_boxes_and_averages_masks_of_a_cluster():
    a = _view([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0.9, 0.8], [1.0, 0.7])
    b = _view([[0, 2, 10, 12], [20, 20, 30, 30]], [1, 2], [0.6, 0.5], [0.2, 1.0])
    out = merge_views([a, b], (40, 40), iou_threshold=0.5, max_instances=10, soft_masks=True)
    # [0,0,10,10] and [0,2,10,12] overlap with IoU 80/120 > 0.5 and share class 1: one cluster.
    np.testing.assert_array_equal(out["class_ids"], [1, 1, 2])
    np.testing.assert_allclose(out["scores"], [0.9, 0.8, 0.5])
    voted_x = (0.9 * 0 + 0.6 * 2) / 1.5, (0.9 * 10 + 0.6 * 12) / 1.5
    np.testing.assert_array_equal(out["rois"][0], [0, round(voted_x[0]), 10, round(voted_x[1])])
    np.testing.assert_array_equal(out["rois"][1:], [[20, 20, 30, 30]] * 2)  # other class: not merged
    mask = out["masks"][..., 0]
    np.testing.assert_allclose(mask[0:10, 2:10], (1.0 + 0.2) / 2)  # both members
    np.testing.assert_allclose(mask[0:10, 0:2], 1.0 / 2)  # only a's box
    np.testing.assert_allclose(mask[0:10, 10:12], 0.2 / 2)  # only b's box
    assert mask[10:].sum() == 0
    binary = merge_views([a, b], (40, 40), iou_threshold=0.5, max_instances=10)["masks"]
    np.testing.assert_array_equal(binary, out["masks"] >= 0.5)


def test_merge_nms_mode_keeps_the_best_box_and_max_instances_cuts():
    a = _view([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0.9, 0.8], [1.0, 1.0])
    b = _view([[0, 2, 10, 12]], [1], [0.95], [1.0])
    out = merge_views([a, b], (40, 40), iou_threshold=0.5, max_instances=1, merge="nms")
    np.testing.assert_array_equal(out["rois"], [[0, 2, 10, 12]])
    np.testing.assert_allclose(out["scores"], [0.95])
    assert out["masks"].shape == (40, 40, 1)
    empty = merge_views([_view([], [], [], []), _view([], [], [], [])], (8, 6), 0.5, 10)
    assert empty["rois"].shape == (0, 4) and empty["masks"].shape == (8, 6, 0) and empty["scores"].dtype == np.float32


def test_tta_spec_is_validated():
    assert as_tta({"scales": 2, "hflip": True}).views() == [(2.0, False), (2.0, True)]
    paper = TTA.paper()
    assert paper.scales[0] == 0.5 and paper.scales[-1] == 1.5 and len(paper.scales) == 9 and paper.hflip
    with pytest.raises(ValueError, match="flips"):
        as_tta({"flips": True})
    with pytest.raises(ValueError, match="scales"):
        TTA(scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="merge"):
        TTA(merge="mean")
    with pytest.raises(TypeError, match="tta"):
        as_tta([1.0])


def test_detect_rejects_tta_with_scale_and_keypoint_models(model, images):
    with pytest.raises(ValueError, match="scale"):
        model.detect(images, tta={"scales": [1.0]}, scale=2.0)

    class _KeypointModel:
        config = TinyConfig().update(KEYPOINT_HEAD=True)

    with pytest.raises(ValueError, match="KEYPOINT_HEAD"):
        detect_tta(_KeypointModel(), images, {"hflip": True})


def test_pixel_scale_warnings_point_at_the_callers_line(model):
    # The warning names the user's call, however deep inside mrcnn the check runs.
    from mrcnn.tiling import detect_tiled

    image = np.random.default_rng(1).random((64, 64, 3), dtype=np.float32)  # [0, 1]: warns
    for call in (lambda: model.detect([image]), lambda: model.detect([image], tta={"hflip": True}),
                 lambda: detect_tiled(model, image, tile_size=64, overlap=16)):
        with pytest.warns(UserWarning, match=r"values in \[0, 1\]") as caught:
            call()
        assert {w.filename for w in caught} == {__file__}
