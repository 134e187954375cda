"""ResNet / FPN: output strides, matterport layer names and shapes, frozen BatchNorm."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.modeling.backbone import FPN, BatchNorm, ResNet
from mrcnn.weights import iter_layers

# matterport's spec, written out independently of the implementation.
BLOCKS = {"resnet50": {2: 3, 3: 4, 4: 6, 5: 3}, "resnet101": {2: 3, 3: 4, 4: 23, 5: 3}}
FILTERS = {2: (64, 64, 256), 3: (128, 128, 512), 4: (256, 256, 1024), 5: (512, 512, 2048)}


def expected_backbone_shapes(architecture: str) -> dict[str, tuple[int, ...]]:
    """matterport layer name -> kernel shape (convs) or (channels,) (BatchNorm)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1": (7, 7, 3, 64), "bn_conv1": (64,)}
    channels = 64
    for stage, count in BLOCKS[architecture].items():
        f1, f2, f3 = FILTERS[stage]
        for index in range(count):
            tag = f"{stage}{'abcdefghijklmnopqrstuvw'[index]}"
            shapes[f"res{tag}_branch2a"] = (1, 1, channels, f1)
            shapes[f"bn{tag}_branch2a"] = (f1,)
            shapes[f"res{tag}_branch2b"] = (3, 3, f1, f2)
            shapes[f"bn{tag}_branch2b"] = (f2,)
            shapes[f"res{tag}_branch2c"] = (1, 1, f2, f3)
            shapes[f"bn{tag}_branch2c"] = (f3,)
            if index == 0:
                shapes[f"res{tag}_branch1"] = (1, 1, channels, f3)
                shapes[f"bn{tag}_branch1"] = (f3,)
            channels = f3
    return shapes


@pytest.fixture(scope="module")
def resnet50() -> ResNet:
    model = ResNet("resnet50", name="resnet")
    model(tf.zeros([1, 64, 64, 3]))
    return model


def _names(layer: keras.layers.Layer) -> list[str]:
    return [sub.name for sub in iter_layers(layer)]


def test_output_strides_64(resnet50: ResNet) -> None:
    images = tf.random.stateless_normal([2, 64, 64, 3], seed=(1, 2))
    c_maps = resnet50(images)
    assert [tuple(c.shape) for c in c_maps] == [(2, 16, 16, 256), (2, 8, 8, 512), (2, 4, 4, 1024), (2, 2, 2, 2048)]
    p_maps = FPN(256)(c_maps)
    assert [tuple(p.shape) for p in p_maps] == [(2, 16, 16, 256), (2, 8, 8, 256), (2, 4, 4, 256),
                                                (2, 2, 2, 256), (2, 1, 1, 256)]
    assert all(c.dtype == tf.float32 for c in c_maps + p_maps)


def test_fpn_handles_odd_level_sizes() -> None:
    # 80 px: C4 is 5x5 and C5 3x3; upsampling P5 gives 6x6, cropped to C4's 5x5.
    c_maps = [tf.zeros([1, 20, 20, 256]), tf.zeros([1, 10, 10, 512]), tf.zeros([1, 5, 5, 1024]),
              tf.zeros([1, 3, 3, 2048])]
    p_maps = FPN(32)(c_maps)
    assert [tuple(p.shape[1:3]) for p in p_maps] == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2)]


def test_symbolic_call_keeps_static_shapes() -> None:
    inputs = keras.Input((64, 64, 3))
    c_maps = ResNet("resnet50")(inputs)
    p_maps = FPN()(c_maps)
    assert [tuple(p.shape) for p in p_maps] == [(None, 16, 16, 256), (None, 8, 8, 256), (None, 4, 4, 256),
                                                (None, 2, 2, 256), (None, 1, 1, 256)]


@pytest.mark.parametrize("architecture, convs", [("resnet50", 53), ("resnet101", 104)])
def test_every_matterport_name_once(architecture: str, convs: int) -> None:
    # Layers (and their names) exist before building, so ResNet-101 costs nothing here.
    names = _names(ResNet(architecture))
    expected = expected_backbone_shapes(architecture)
    for name in expected:
        assert names.count(name) == 1, f"{name} appears {names.count(name)} times"
    weighted = [n for n in names if n.startswith(("res", "bn", "conv1")) and n in expected]
    assert len(weighted) == len(expected)
    conv_layers = [sub for sub in iter_layers(ResNet(architecture)) if isinstance(sub, keras.layers.Conv2D)]
    assert len(conv_layers) == convs
    assert sorted(c.name for c in conv_layers) == sorted(n for n in expected if not n.startswith("bn"))


def test_weight_shapes_and_strides(resnet50: ResNet) -> None:
    expected = expected_backbone_shapes("resnet50")
    found = {}
    for layer in iter_layers(resnet50):
        if isinstance(layer, keras.layers.Conv2D):
            found[layer.name] = tuple(layer.kernel.shape)
            assert layer.use_bias, f"{layer.name} must have a bias (matterport/Caffe convs do)"
            assert tuple(layer.bias.shape) == (layer.filters,)
        elif isinstance(layer, BatchNorm):
            found[layer.name] = tuple(layer.gamma.shape)
            assert [w.name for w in layer.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert found == expected
    by_name = {layer.name: layer for layer in iter_layers(resnet50)}
    assert tuple(by_name["conv1"].strides) == (2, 2)
    # Caffe style: stride 2 on the first 1x1 (and the shortcut) of stages 3-5, stage 2 stride 1.
    for stage, stride in ((2, 1), (3, 2), (4, 2), (5, 2)):
        assert tuple(by_name[f"res{stage}a_branch2a"].strides) == (stride, stride)
        assert tuple(by_name[f"res{stage}a_branch1"].strides) == (stride, stride)
        assert tuple(by_name[f"res{stage}a_branch2b"].strides) == (1, 1)
        assert tuple(by_name[f"res{stage}b_branch2a"].strides) == (1, 1)


def test_stage5_false_and_bad_architecture() -> None:
    model = ResNet("resnet50", stage5=False)
    assert not any(name.startswith(("res5", "bn5")) for name in _names(model))
    c_maps = model(tf.zeros([1, 64, 64, 3]))
    assert c_maps[3] is None and tuple(c_maps[2].shape) == (1, 4, 4, 1024)
    with pytest.raises(ValueError, match="resnet152"):
        ResNet("resnet152")


def test_batchnorm_frozen_by_default(resnet50: ResNet) -> None:
    images = tf.random.stateless_normal([2, 64, 64, 3], seed=(3, 4)) * 50.0
    bn = next(layer for layer in iter_layers(resnet50) if layer.name == "bn_conv1")
    before = [w.numpy().copy() for w in bn.weights]
    c_train = resnet50(images, training=True)
    c_infer = resnet50(images, training=False)
    for old, new in zip(before, bn.weights):
        np.testing.assert_array_equal(old, new.numpy())
    np.testing.assert_allclose(c_train[3].numpy(), c_infer[3].numpy(), rtol=1e-5, atol=1e-5)


def test_batchnorm_train_bn_follows_training() -> None:
    x = tf.random.stateless_normal([8, 4, 4, 3], seed=(5, 6)) * 3.0 + 2.0
    frozen, trained = BatchNorm(False), BatchNorm(True)
    for layer in (frozen, trained):
        layer(x)
    np.testing.assert_allclose(frozen(x, training=True).numpy(), frozen(x, training=False).numpy())
    assert np.all(frozen.moving_mean.numpy() == 0.0)
    out = trained(x, training=True)
    assert not np.allclose(trained.moving_mean.numpy(), 0.0)
    # Batch statistics: per-channel mean ~0 after normalization.
    np.testing.assert_allclose(out.numpy().mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    assert frozen.epsilon == pytest.approx(1e-3)


def test_configs_round_trip() -> None:
    model = ResNet("resnet101", train_bn=True, stage5=False, bn_epsilon=1e-5, name="backbone")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(clone, ResNet)
    assert (clone.architecture, clone.train_bn, clone.stage5, clone.bn_epsilon, clone.name) == (
        "resnet101", True, False, 1e-5, "backbone")
    fpn = FPN.from_config(FPN(128, name="fpn").get_config())
    assert fpn.pyramid_size == 128 and fpn.name == "fpn"
    bn = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(BatchNorm(True, name="bn_x")))
    assert isinstance(bn, BatchNorm) and bn.train_bn is True and bn.name == "bn_x"
