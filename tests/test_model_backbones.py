"""MaskRCNN with the paper's other backbones: the C4 model (Config.BACKBONE_TYPE = "c4") and
ResNeXt-FPN. Tiny configs (64 px, 16 RoIs): each trains two steps and detects."""

from __future__ import annotations

import math

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.config import C4Config, Config
from mrcnn.data.generator import DataGenerator
from mrcnn.data.shapes import ShapesDataset
from mrcnn.model import MaskRCNN, layer_regex
from mrcnn.modeling.backbone import Architecture
from mrcnn.weights import find_weight_layers, iter_layers
from tests.test_model import TinySettings


class TinyC4Config(TinySettings, C4Config):
    """ResNet-50-C4 with the paper's C4 heads (POOL_SIZE 14 -> res5 -> 7, masks 14x14), tiny otherwise."""

    NAME = "tiny_c4"
    BACKBONE = "resnet50"


# One block per stage, 8 groups of 4 channels at stage 2 and half ResNet's block outputs: ResNeXt's
# structure at a fraction of the cost of the 101 layers (their names and groups are checked on the
# real model below, unbuilt). Config.BACKBONE takes the Architecture itself.
TINY_RESNEXT = Architecture((1, 1, 1, 1), cardinality=8, width=32, stride_in_1x1=False, out_width=128)


class TinyResNeXtConfig(TinySettings, Config):
    NAME = "tiny_resnext"
    BACKBONE = TINY_RESNEXT


def _shapes(count: int, seed: int) -> ShapesDataset:
    dataset = ShapesDataset()
    dataset.load_shapes(count, 64, 64, seed=seed)
    dataset.prepare()
    return dataset


def _train_two_steps(config: Config):
    keras.utils.set_random_seed(0)
    model = MaskRCNN(mode="training", config=config, model_dir="unused")
    model.ensure_built()
    model.set_trainable(".*")
    model.compile(learning_rate=0.01)
    batch = DataGenerator(_shapes(4, seed=1), config, shuffle=False, seed=0)[0]
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    logs = [model.train_on_batch(batch, return_dict=True) for _ in range(2)]
    after = {v.path: v.numpy() for v in model.trainable_variables}
    return model, batch, logs, before, after


@pytest.fixture(scope="module")
def c4_trained():
    return _train_two_steps(TinyC4Config())


def _layer_weights(model: MaskRCNN) -> dict[str, list[tuple[int, ...]]]:
    return {name: [tuple(w.shape) for w in layer.weights] for name, layer in find_weight_layers(model).items()}


# ----------------------------------------------------------------------------------------------
# C4
def test_c4_graph_is_the_papers(c4_trained) -> None:
    model = c4_trained[0]
    weights = _layer_weights(model)
    assert model.fpn is None and not any(name.startswith("fpn_") for name in weights)
    # The backbone stops at C4; res5 lives in the box head (matterport names, ResNet-50 shapes).
    backbone_names = {sub.name for sub in iter_layers(model.backbone)}
    box_head_names = {sub.name for sub in iter_layers(model.box_head)}
    assert "res4f_branch2c" in backbone_names and not any(n.startswith(("res5", "bn5")) for n in backbone_names)
    assert {"res5a_branch2a", "res5a_branch1", "res5c_branch2c", "bn5c_branch2c"} <= box_head_names
    assert weights["res5a_branch2a"] == [(1, 1, 1024, 512), (512,)]
    assert weights["res5c_branch2c"] == [(1, 1, 512, 2048), (2048,)]
    # RPN on C4 (1024 channels, Detectron's 1024-wide conv), 5 scales x 3 ratios = 15 anchors per position.
    assert weights["rpn_conv_shared"] == [(3, 3, 1024, 1024), (1024,)]
    assert weights["rpn_class_raw"] == [(1, 1, 1024, 2 * 15), (2 * 15,)]
    assert weights["rpn_bbox_pred"] == [(1, 1, 1024, 4 * 15), (4 * 15,)]
    # Box head: global average pool of res5 -> fc; mask head: 2x2 deconv (256) + 1x1 to K.
    assert weights["mrcnn_class_logits"] == [(2048, 4), (4,)]
    assert weights["mrcnn_bbox_fc"] == [(2048, 16), (16,)]
    assert weights["mrcnn_mask_deconv"] == [(2, 2, 256, 2048), (256,)]
    assert weights["mrcnn_mask"] == [(1, 1, 256, 4), (4,)]
    assert not any(name.startswith(("mrcnn_class_conv", "mrcnn_mask_conv")) for name in weights)


def test_c4_heads_stage_trains_res5() -> None:
    class TinyFPN(TinySettings, Config):
        BACKBONE = "resnet50"

    config = TinyC4Config()
    assert layer_regex("heads", config) == layer_regex("5+", config)  # res5 is the C4 box head
    assert layer_regex("heads", TinyFPN()) != layer_regex("5+", TinyFPN())
    model = MaskRCNN(mode="training", config=config)
    names = set(model.set_trainable(layer_regex("heads", config)))
    assert {"res5a_branch2a", "bn5c_branch2c", "rpn_conv_shared", "mrcnn_class_logits", "mrcnn_mask"} <= names
    assert "res4f_branch2c" not in names and "conv1" not in names


def test_c4_trains(c4_trained) -> None:
    _, _, logs, before, after = c4_trained
    for step in logs:
        assert set(step) >= {"loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
                             "mrcnn_mask_loss"}
        assert all(math.isfinite(v) for v in step.values()), step
    for part in ("/rpn_conv_shared/", "/res5a_branch2a/", "/res5c_branch2c/", "/mrcnn_class_logits/",
                 "/mrcnn_bbox_fc/", "/mrcnn_mask_deconv/", "/mrcnn_mask/", "/res2a_branch2a/"):
        moved = [p for p in before if part in p and not np.allclose(before[p], after[p])]
        assert moved, f"no weight of {part!r} changed in 2 steps"


def test_c4_training_and_inference_outputs(c4_trained) -> None:
    model, batch, _, _, _ = c4_trained
    config = model.config
    out = model({k: tf.constant(v) for k, v in batch.items()}, training=False)
    assert tuple(out["mrcnn_class_logits"].shape) == (2, config.TRAIN_ROIS_PER_IMAGE, 4)
    assert tuple(out["mrcnn_bbox"].shape) == (2, config.TRAIN_ROIS_PER_IMAGE, 4, 4)
    n = out["mrcnn_mask"].shape[1]
    assert tuple(out["mrcnn_mask"].shape) == (1, n, 14, 14, 4) and tuple(out["target_masks"].shape) == (1, n, 14, 14)
    names = ["C4", "rpn_class_logits", "anchors", "proposals", "detections", "mrcnn_mask"]
    result = model.run_graph([_shapes(1, seed=9).load_image(0), np.zeros((64, 64, 3), np.uint8)], names)
    assert tuple(result["C4"].shape) == (2, 4, 4, 1024)
    assert tuple(result["rpn_class_logits"].shape) == (2, 4 * 4 * 15, 2)
    assert tuple(result["anchors"].shape) == (2, 4 * 4 * 15, 4)
    assert tuple(result["proposals"].shape) == (2, config.POST_NMS_ROIS_INFERENCE, 4)
    assert tuple(result["detections"].shape) == (2, config.DETECTION_MAX_INSTANCES, 6)
    masks = result["mrcnn_mask"]
    assert masks.shape == (2, config.DETECTION_MAX_INSTANCES, 14, 14, 4)
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    with pytest.raises(ValueError, match=r"\['C5', 'P2'\] do not exist"):  # no FPN, no C5 on the image
        model.run_graph([np.zeros((64, 64, 3), np.uint8)], ["P2", "C5", "C4"])


def test_c4_training_masks_reuse_the_box_heads_res5(c4_trained) -> None:
    """Training feeds the box head's res5 output of the positive RoIs to the mask head; that must
    equal the inference path (RoIAlign of those RoIs, res5 again, mask head) with frozen BN."""
    from mrcnn.model import _positive_roi_list

    model, batch, _, _, _ = c4_trained
    inputs = {k: tf.constant(v) for k, v in batch.items()}
    out = model(inputs, training=False)
    slots = model.max_positive_rois
    rois, class_ids, _, image_ids = _positive_roi_list(out["rois"][:, :slots], out["target_class_ids"][:, :slots],
                                                       out["rois"][:, :slots, :, None])  # any [B, P, h, w]
    np.testing.assert_array_equal(class_ids.numpy(), out["mask_class_ids"].numpy())
    c4 = model._features(inputs["input_image"], False)["C4"]
    expected = model._mask_branch(rois, [c4], False, box_image_ids=image_ids)
    np.testing.assert_allclose(out["mrcnn_mask"].numpy(), expected.numpy(), atol=1e-4)


def test_c4_detect(c4_trained) -> None:
    model = c4_trained[0]
    images = [_shapes(1, seed=9).load_image(0), np.zeros((50, 90, 3), np.uint8)]
    results = model.detect(images)
    assert len(results) == 2
    for result, image in zip(results, images, strict=True):
        n = len(result["class_ids"])
        assert result["rois"].shape == (n, 4) and result["rois"].dtype == np.int32
        assert result["scores"].shape == (n,) and result["masks"].shape == image.shape[:2] + (n,)
        assert result["masks"].dtype == bool


def test_c4_save_load_round_trip(c4_trained, tmp_path) -> None:
    model = c4_trained[0]
    path = str(tmp_path / "c4.weights.h5")
    model.save_weights(path)
    other = MaskRCNN(mode="inference", config=model.config)
    other.load_weights(path)
    images = [_shapes(1, seed=9).load_image(0)]
    a = model.run_graph(images, ["rpn_class", "mrcnn_class", "detections", "mrcnn_mask"])
    b = other.run_graph(images, ["rpn_class", "mrcnn_class", "detections", "mrcnn_mask"])
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_imagenet_resnet_h5_loads_into_the_c4_box_head(c4_trained, tmp_path) -> None:
    """An ImageNet ResNet file (matterport/fchollet names) fills res5 of the C4 box head by name."""
    model = c4_trained[0]
    rng = np.random.default_rng(0)
    groups = {"conv1": [("conv1/kernel:0", (7, 7, 3, 64)), ("conv1/bias:0", (64,))],
              "res5a_branch2a": [("res5a_branch2a/kernel:0", (1, 1, 1024, 512)), ("res5a_branch2a/bias:0", (512,))],
              "bn5c_branch2c": [(f"bn5c_branch2c/{w}:0", (2048,))
                                for w in ("gamma", "beta", "moving_mean", "moving_variance")]}
    values = {}
    path = tmp_path / "resnet50_imagenet.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name in groups]
        for name, weights in groups.items():
            group = f.create_group(name)
            group.attrs["weight_names"] = [w.encode() for w, _ in weights]
            for weight, shape in weights:
                values[weight] = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
                group.create_dataset(weight, data=values[weight])
    report = model.load_weights(str(path), by_name=True)
    assert sorted(report["loaded"]) == ["bn5c_branch2c", "conv1", "res5a_branch2a"]
    layers = find_weight_layers(model)
    assert any(layers["res5a_branch2a"] is sub for sub in iter_layers(model.box_head))
    np.testing.assert_array_equal(layers["res5a_branch2a"].kernel.numpy(), values["res5a_branch2a/kernel:0"])
    np.testing.assert_array_equal(layers["bn5c_branch2c"].moving_variance.numpy(),
                                  values["bn5c_branch2c/moving_variance:0"])


# ----------------------------------------------------------------------------------------------
# ResNeXt-FPN
def test_resnext_fpn_trains_and_detects() -> None:
    model, _, logs, before, after = _train_two_steps(TinyResNeXtConfig())
    assert all(math.isfinite(v) for step in logs for v in step.values()), logs
    grouped = [p for p in before if "_branch2b/kernel" in p]
    assert len(grouped) == 4
    assert all(not np.allclose(before[p], after[p]) for p in grouped), "a grouped 3x3 kernel did not train"
    assert all(conv.groups == 8 for conv in iter_layers(model.backbone)
               if isinstance(conv, keras.layers.Conv2D) and conv.name.endswith("_branch2b"))
    results = model.detect([_shapes(1, seed=9).load_image(0)])
    n = len(results[0]["class_ids"])
    assert results[0]["masks"].shape == (64, 64, n) and results[0]["rois"].shape == (n, 4)
    maps = model.run_graph([_shapes(1, seed=9).load_image(0)], ["C2", "C5", "P2"])
    assert [maps[k].shape[-1] for k in ("C2", "C5", "P2")] == [128, 1024, TinyResNeXtConfig.TOP_DOWN_PYRAMID_SIZE]


@pytest.mark.parametrize("name, groups", [("resnext101_32x4d", 32), ("resnext101_64x4d", 64)])
def test_resnext101_by_name_builds_the_real_backbone(name: str, groups: int) -> None:
    class RealResNeXt(TinySettings, Config):
        BACKBONE = name

    model = MaskRCNN(mode="inference", config=RealResNeXt())  # layers only; weights are created lazily
    convs = [sub for sub in iter_layers(model.backbone) if isinstance(sub, keras.layers.Conv2D)]
    assert len(convs) == 104 and len(model.backbone.blocks) == 33
    assert sorted({c.groups for c in convs if c.name.endswith("_branch2b")}) == [groups]
    assert {c.groups for c in convs if not c.name.endswith("_branch2b")} == {1}
