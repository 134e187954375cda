"""ResNet / FPN: output strides, matterport layer names and shapes, frozen BatchNorm."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.config import BACKBONES
from mrcnn.modeling.backbone import (
    ARCHITECTURES,
    FPN,
    Architecture,
    BatchNorm,
    BottleneckBlock,
    ResNet,
    architecture_to_config,
    backbone_layer_names,
    get_architecture,
)
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


def _frozen_bn_reference(x: np.ndarray, gamma, beta, mean, var, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * gamma + beta per channel (last axis), float64."""
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


@pytest.mark.parametrize("shape", [(2, 6, 6, 8), (5, 8), (2, 3, 4, 4, 8)])
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_frozen_batchnorm_fused_matches_keras_and_numpy(shape: tuple[int, ...], policy: str) -> None:
    """The fused frozen path (FusedBatchNormV3, is_training=False) computes what Keras' BatchNorm
    computes with the moving statistics: outputs and the gradients for x, gamma and beta, at any
    rank (the fused kernel is 4-D only; other ranks are folded) and in bfloat16."""
    rng = np.random.default_rng(3)
    weights = [rng.uniform(0.5, 1.5, 8), rng.normal(size=8), rng.normal(size=8), rng.uniform(0.5, 2.0, 8)]
    x64 = rng.normal(size=shape) * 2.0 + 0.5
    dy64 = rng.normal(size=shape)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        ours, keras_bn = BatchNorm(False), keras.layers.BatchNormalization(epsilon=1e-3)
        for layer in (ours, keras_bn):
            layer.build(shape)
            layer.set_weights([w.astype(np.float32) for w in weights])
        assert ours._fusable(tf.zeros(shape, ours.compute_dtype))
        x = tf.constant(x64, ours.compute_dtype)
        dy = tf.constant(dy64, ours.compute_dtype)
        results = []
        for layer in (ours, keras_bn):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=False)
            grads = tape.gradient(y, [x, layer.gamma.value, layer.beta.value], output_gradients=dy)
            results.append([y] + grads)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert results[0][0].dtype == x.dtype  # bfloat16 in, bfloat16 out (as Keras)
    tol = 1e-5 if policy == "float32" else 1e-2
    for ours_value, keras_value in zip(*results):
        np.testing.assert_allclose(tf.cast(ours_value, tf.float64).numpy(), tf.cast(keras_value, tf.float64).numpy(),
                                   rtol=tol, atol=tol)
    # Against float64 NumPy on the inputs as the layer saw them (bfloat16-rounded in mixed precision).
    x_seen = tf.cast(x, tf.float64).numpy()
    expected = _frozen_bn_reference(x_seen, *weights, eps=1e-3)
    np.testing.assert_allclose(tf.cast(results[0][0], tf.float64).numpy(), expected, rtol=tol, atol=tol * 4)
    dy_seen = tf.cast(dy, tf.float64).numpy()
    dgamma = (dy_seen * (x_seen - weights[2]) / np.sqrt(weights[3] + 1e-3)).reshape(-1, 8).sum(0)
    np.testing.assert_allclose(results[0][2].numpy(), dgamma, rtol=tol, atol=tol * 4)
    np.testing.assert_allclose(results[0][3].numpy(), dy_seen.reshape(-1, 8).sum(0), rtol=tol, atol=tol * 4)


def test_batchnorm_takes_keras_path_for_batch_statistics(monkeypatch) -> None:
    """train_bn=True while training uses batch statistics (Keras' path); channels-first, and bfloat16 on a
    GPU machine, fall back to it."""
    x = tf.random.stateless_normal([8, 4, 4, 3], seed=(1, 2)) * 3.0 + 2.0
    trained = BatchNorm(True)
    trained(x)
    assert trained._fusable(x)
    out = trained(x, training=True)
    np.testing.assert_allclose(out.numpy().mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    # bfloat16 with a GPU present: Keras' path (TensorFlow has no bfloat16 GPU kernel for the fused op).
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: ["/GPU:0"] if kind == "GPU" else [])
    assert not trained._fusable(tf.cast(x, tf.bfloat16)) and trained._fusable(x)
    monkeypatch.undo()
    channels_first = BatchNorm(False, axis=1)
    channels_first(x)
    assert not channels_first._fusable(x)
    np.testing.assert_allclose(channels_first(x).numpy(), x.numpy() / np.sqrt(1.0 + 1e-3), rtol=1e-5, atol=1e-5)


def test_batchnorm_skips_itself_only_as_constant_identity() -> None:
    # The values batchnorm_fold leaves behind (gamma 1, beta 0, mean 0, variance 1 - epsilon),
    # mapped to constants as freezing does, make the layer return its input unchanged; a
    # variable with those values, or constants one bfloat16 step off, is still a BatchNorm.
    layer = BatchNorm()
    layer.build((None, 4, 4, 3))
    identity = [np.ones(3), np.zeros(3), np.zeros(3), np.ones(3) * (np.float32(1) - np.float32(layer.epsilon))]
    layer.set_weights(identity)
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float32))
    variables = [layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance]

    def ops_with(values: list[np.ndarray]) -> list[str]:
        def call(inputs: tf.Tensor) -> tf.Tensor:
            mapping = [(v, tf.constant(value, tf.float32)) for v, value in zip(variables, values)]
            with keras.StatelessScope(state_mapping=mapping):
                return layer(inputs)
        graph = tf.function(call).get_concrete_function(tf.TensorSpec(x.shape)).graph
        np.testing.assert_allclose(tf.function(call)(x).numpy(), x.numpy() * values[0][0], rtol=2e-7)
        return [op.type for op in graph.get_operations()]

    assert not any("BatchNorm" in op for op in ops_with(identity))
    off_by_a_step = [identity[0] * (1 + 2 ** -8)] + identity[1:]
    assert any("BatchNorm" in op for op in ops_with(off_by_a_step))
    graph = tf.function(layer).get_concrete_function(tf.TensorSpec(x.shape)).graph  # the variables
    assert any("BatchNorm" in op.type for op in graph.get_operations())


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


# ----------------------------------------------------------------------------------------------
# ResNeXt (Xie et al.): C groups of d channels in the 3x3 convs at stage 2, doubling per stage.
RESNEXT = {"resnext101_32x4d": (32, 4), "resnext101_64x4d": (64, 4)}
# A test-only ResNeXt: one block per stage, 8 groups of 4 channels (the real 101 layers take ~5x longer).
TINY_RESNEXT = Architecture((1, 1, 1, 1), cardinality=8, width=8 * 4, stride_in_1x1=False)


def expected_resnext_shapes(cardinality: int, group_width: int) -> dict[str, tuple[int, ...]]:
    """matterport layer name -> kernel shape for ResNeXt-101 C x d (ResNet-101's layout)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1": (7, 7, 3, 64)}
    channels = 64
    for stage, count in BLOCKS["resnet101"].items():
        width = cardinality * group_width * 2 ** (stage - 2)
        out = 256 * 2 ** (stage - 2)
        for index in range(count):
            tag = f"{stage}{'abcdefghijklmnopqrstuvw'[index]}"
            shapes[f"res{tag}_branch2a"] = (1, 1, channels, width)
            shapes[f"res{tag}_branch2b"] = (3, 3, width // cardinality, width)  # grouped
            shapes[f"res{tag}_branch2c"] = (1, 1, width, out)
            if index == 0:
                shapes[f"res{tag}_branch1"] = (1, 1, channels, out)
            channels = out
    return shapes


@pytest.mark.parametrize("architecture", sorted(RESNEXT))
def test_resnext_layers_groups_and_names(architecture: str) -> None:
    cardinality, group_width = RESNEXT[architecture]
    model = ResNet(architecture)  # layers exist before building: cheap
    convs = {sub.name: sub for sub in iter_layers(model) if isinstance(sub, keras.layers.Conv2D)}
    expected = expected_resnext_shapes(cardinality, group_width)
    assert sorted(convs) == sorted(expected) and len(convs) == 104
    per_stage = {stage: sum(name.startswith(f"res{stage}") for name in convs) for stage in (2, 3, 4, 5)}
    assert per_stage == {2: 3 * 3 + 1, 3: 4 * 3 + 1, 4: 23 * 3 + 1, 5: 3 * 3 + 1}
    for name, conv in convs.items():
        assert conv.groups == (cardinality if name.endswith("_branch2b") else 1), name
        assert conv.filters == expected[name][-1], name
    # Same weight-bearing names as ResNet-101: trainability regexes and name-based loading apply.
    bn_and_convs = [sub.name for sub in iter_layers(model) if isinstance(sub, (keras.layers.Conv2D, BatchNorm))]
    assert sorted(bn_and_convs) == sorted(backbone_layer_names("resnet101"))
    assert backbone_layer_names(architecture) == backbone_layer_names("resnet101")


def test_resnext101_32x4d_kernel_shapes_and_strides() -> None:
    model = ResNet("resnext101_32x4d")
    model.build((None, 64, 64, 3))  # creates the weights without running the 101 layers
    expected = expected_resnext_shapes(32, 4)
    convs = {sub.name: sub for sub in iter_layers(model) if isinstance(sub, keras.layers.Conv2D)}
    assert {name: tuple(conv.kernel.shape) for name, conv in convs.items()} == expected
    # ResNeXt puts the stride on the (grouped) 3x3, padded 1 on every side, not on the first 1x1.
    for stage, stride in ((2, 1), (3, 2), (4, 2), (5, 2)):
        assert tuple(convs[f"res{stage}a_branch2a"].strides) == (1, 1)
        assert tuple(convs[f"res{stage}a_branch2b"].strides) == (stride, stride)
        assert tuple(convs[f"res{stage}a_branch1"].strides) == (stride, stride)
        assert convs[f"res{stage}a_branch2b"].padding == ("valid" if stride == 2 else "same")
    # The published ResNeXt-101 32x4d has 44.18M parameters: its convs have no bias (ours do, as
    # matterport's ResNet) and it ends with a 1000-class fc (not a backbone's).
    trainable = sum(w.shape.num_elements() for w in model.trainable_weights)
    conv_biases = sum(conv.filters for conv in convs.values())
    assert trainable - conv_biases + 2048 * 1000 + 1000 == 44_177_704


def test_architecture_specs() -> None:
    assert tuple(ARCHITECTURES) == BACKBONES  # Config.BACKBONE accepts exactly these names
    for name, (cardinality, group_width) in RESNEXT.items():
        spec = get_architecture(name)
        assert spec.blocks == (3, 4, 23, 3) and spec.cardinality == cardinality and not spec.stride_in_1x1
        assert [spec.filters(s) for s in (2, 3, 4, 5)] == [
            (cardinality * group_width * 2 ** k, cardinality * group_width * 2 ** k, 256 * 2 ** k) for k in range(4)]
    assert [get_architecture("resnet50").filters(s) for s in (2, 3, 4, 5)] == [FILTERS[s] for s in (2, 3, 4, 5)]
    with pytest.raises(ValueError, match="multiple of cardinality"):
        Architecture((1, 1, 1, 1), cardinality=3, width=32)
    with pytest.raises(ValueError, match="4 positive counts"):
        Architecture((1, 1, 1))
    with pytest.raises(ValueError, match="groups"):
        BottleneckBlock(2, "a", (30, 30, 256), groups=4)


@pytest.mark.parametrize("impl", ["native", "split"])
def test_tiny_resnext_strides_and_gradient(impl: str) -> None:
    model = ResNet(TINY_RESNEXT, grouped_conv=impl, name="resnet")
    images = tf.random.stateless_normal([2, 64, 64, 3], seed=(7, 8)) * 30.0
    with tf.GradientTape() as tape:
        c_maps = model(images)
        loss = tf.add_n([tf.reduce_mean(c) for c in c_maps])
    assert [tuple(c.shape) for c in c_maps] == [(2, 16, 16, 256), (2, 8, 8, 512), (2, 4, 4, 1024), (2, 2, 2, 2048)]
    grads = tape.gradient(loss, model.trainable_weights)
    named = {w.path: g for w, g in zip(model.trainable_weights, grads, strict=True)}
    grouped = [path for path in named if "branch2b/kernel" in path]
    convs_3x3 = [sub for sub in iter_layers(model) if isinstance(sub, keras.layers.Conv2D)
                 and sub.name.endswith("_branch2b")]
    assert len(grouped) == len(convs_3x3) == 4 and all(conv.groups == 8 for conv in convs_3x3)
    for path, grad in named.items():  # every weight gets a gradient, the grouped kernels a nonzero one
        assert grad is not None, path
        if path in grouped:
            assert float(tf.reduce_max(tf.abs(grad))) > 0, path


def test_tiny_resnext_native_equals_split() -> None:
    images = tf.random.stateless_normal([1, 64, 64, 3], seed=(9, 9)) * 30.0
    native = ResNet(TINY_RESNEXT, grouped_conv="native")
    split = ResNet(TINY_RESNEXT, grouped_conv="split")
    native(images)
    split(images)
    split.set_weights(native.get_weights())
    for a, b in zip(native(images), split(images), strict=True):
        scale = float(tf.reduce_max(tf.abs(b)))
        np.testing.assert_allclose(a.numpy() / scale, b.numpy() / scale, atol=1e-5)


def test_custom_architecture_round_trips() -> None:
    model = ResNet(TINY_RESNEXT, grouped_conv="split", name="backbone")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert clone.architecture == TINY_RESNEXT and clone.grouped_conv == "split"
    block = BottleneckBlock(3, "a", (64, 64, 512), strides=2, conv_shortcut=True, groups=8, stride_in_1x1=False)
    config = BottleneckBlock.from_config(block.get_config()).get_config()
    assert (config["groups"], config["stride_in_1x1"], config["strides"]) == (8, False, 2)


def test_narrow_architecture_out_width() -> None:
    # out_width sets the block outputs (C2..C5 channels), width the 3x3s; both double per stage.
    narrow = Architecture((2, 1, 1, 1), width=16, out_width=64)
    assert [narrow.filters(s) for s in (2, 3, 4, 5)] == [(16, 16, 64), (32, 32, 128), (64, 64, 256), (128, 128, 512)]
    model = ResNet(narrow, name="resnet")
    c_maps = model(tf.zeros([1, 64, 64, 3]))
    assert [tuple(c.shape) for c in c_maps] == [(1, 16, 16, 64), (1, 8, 8, 128), (1, 4, 4, 256), (1, 2, 2, 512)]
    assert get_architecture(architecture_to_config(narrow)) == narrow
    with pytest.raises(ValueError, match="out_width"):
        Architecture((1, 1, 1, 1), out_width=0)
