"""The paper's mask-branch ablation switches through mrcnn/model.py (Config.MASK_LOSS,
MASK_CLASS_AGNOSTIC, MASK_HEAD_TYPE) and the Faster R-CNN mode (MASK_HEAD = False).

Each variant builds, trains 2 steps (finite losses, its mask head's weights move) and detects with
the right output shapes. The small conv backbone of tests/test_model_keypoints.py keeps each
variant to seconds: the switches live after the backbone, in the real model.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.data.generator import DataGenerator
from mrcnn.model import MaskRCNN, loss_names
from mrcnn.modeling.heads import MaskHead, MLPMaskHead
from mrcnn.weights import find_weight_layers
from tests.test_model import TinyConfig, _shapes
from tests.test_model_keypoints import SmallBackbone, small_backbone_shapes
from tests.test_tta import _with_foreground_bias


class AblationConfig(TinyConfig):
    NAME = "ablation"
    BACKBONE = SmallBackbone
    COMPUTE_BACKBONE_SHAPE = staticmethod(small_backbone_shapes)


VARIANTS = {
    "softmax": dict(MASK_LOSS="softmax"),
    "class_agnostic": dict(MASK_CLASS_AGNOSTIC=True),
    "mlp": dict(MASK_HEAD_TYPE="mlp"),
    "faster_rcnn": dict(MASK_HEAD=False),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def trained(request, tmp_path_factory):
    """(variant, model after 2 SGD steps, losses of both steps, weights before and after)."""
    keras.utils.set_random_seed(0)
    config = AblationConfig().update(**VARIANTS[request.param])
    model = MaskRCNN(mode="training", config=config, model_dir=str(tmp_path_factory.mktemp("logs")))
    model.ensure_built()
    model.set_trainable(".*")
    model.compile(learning_rate=0.01)
    batch = DataGenerator(_shapes(2, seed=1), config, shuffle=False, seed=0)[0]
    before = {id(v): v.numpy().copy() for v in model.trainable_variables}
    logs = [model.train_on_batch(batch, return_dict=True) for _ in range(2)]
    after = {id(v): v.numpy() for v in model.trainable_variables}
    return request.param, model, batch, logs, before, after


def test_variant_trains_two_steps_with_finite_losses(trained):
    variant, model, _, logs, before, after = trained
    for step in logs:
        assert set(step) == {"loss"} | set(loss_names(model.config))
        assert all(math.isfinite(value) for value in step.values()), step
    if variant == "faster_rcnn":
        assert model.mask_head is None
        return
    head = model.mask_head.trainable_variables
    assert head
    moved = [v.path for v in head if not np.allclose(before[id(v)], after[id(v)])]
    assert len(moved) == len(head), f"mask head weights that did not move: {set(v.path for v in head) - set(moved)}"


def test_variant_detects_with_the_right_shapes(trained):
    variant, model, _, _, _, _ = trained
    _with_foreground_bias(model)
    images = [_shapes(1, seed=9).load_image(0), np.random.default_rng(2).integers(0, 255, (50, 90, 3), np.uint8)]
    results = model.detect(images)
    assert sum(len(r["scores"]) for r in results) > 0
    for image, result in zip(images, results):
        n = len(result["scores"])
        assert result["rois"].shape == (n, 4) and result["class_ids"].shape == (n,)
        if variant == "faster_rcnn":
            assert "masks" not in result
        else:
            assert result["masks"].shape == image.shape[:2] + (n,) and result["masks"].dtype == bool
    if variant == "faster_rcnn":
        return
    raw = model.run_graph(images[:1], ["mrcnn_mask"])["mrcnn_mask"]
    channels = 1 if variant == "class_agnostic" else model.config.NUM_CLASSES
    assert raw.shape == (1, model.config.DETECTION_MAX_INSTANCES, 28, 28, channels)
    if variant == "softmax":  # a distribution over the K channels at every pixel
        np.testing.assert_allclose(raw.sum(-1), 1.0, rtol=1e-5)


def test_variant_heads_and_weight_shapes(trained):
    variant, model, batch, _, _, _ = trained
    layers = find_weight_layers(model)
    if variant == "faster_rcnn":  # no mask head, no mask targets, no mask loss
        assert model.mask_head is None and model.roi_align_mask is None
        assert not [name for name in layers if "mask" in name]
        outputs = model({k: tf.constant(v) for k, v in batch.items()}, training=True)
        assert not {"mrcnn_mask", "target_masks", "mask_class_ids"} & set(outputs)
        assert "mrcnn_mask_loss" not in model.compute_losses(batch, outputs)
        assert "mrcnn_mask_loss" not in {m.name for m in model.metrics}
        return
    kernel = layers["mrcnn_mask"].kernel.shape
    if variant == "mlp":
        assert isinstance(model.mask_head, MLPMaskHead)
        assert tuple(kernel) == (1024, 28 * 28 * model.config.NUM_CLASSES)
        assert tuple(layers["mrcnn_mask_fc1"].kernel.shape) == (14 * 14 * model.config.TOP_DOWN_PYRAMID_SIZE, 1024)
    else:
        assert isinstance(model.mask_head, MaskHead)
        channels = 1 if variant == "class_agnostic" else model.config.NUM_CLASSES
        assert tuple(kernel) == (1, 1, 256, channels)
        assert model.mask_head.activation == ("softmax" if variant == "softmax" else "sigmoid")
