"""RPN head, box head and mask head: shapes, output order, names, dtypes, configs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.modeling.heads import BoxHead, ClassMaskConv, MaskHead, select_class_masks
from mrcnn.modeling.rpn import RPNHead
from mrcnn.weights import find_weight_layers


def test_rpn_shapes_and_names() -> None:
    head = RPNHead(3, anchor_stride=1, depth=32)
    logits, probs, bbox = head(tf.random.stateless_normal([2, 8, 6, 32], seed=(1, 1)))
    assert tuple(logits.shape) == (2, 8 * 6 * 3, 2)
    assert tuple(probs.shape) == (2, 144, 2) and tuple(bbox.shape) == (2, 144, 4)
    np.testing.assert_allclose(probs.numpy().sum(-1), 1.0, rtol=1e-6)
    layers = find_weight_layers(head)
    assert head.name == "rpn_model"
    assert {n: tuple(layer.kernel.shape) for n, layer in layers.items()} == {
        "rpn_conv_shared": (3, 3, 32, 512), "rpn_class_raw": (1, 1, 512, 6), "rpn_bbox_pred": (1, 1, 512, 12)}


def test_rpn_row_order_is_y_x_anchor() -> None:
    head = RPNHead(3, depth=8)
    features = tf.random.stateless_normal([2, 4, 5, 8], seed=(2, 2))
    logits, _, bbox = head(features)
    shared = head.conv_shared(features)
    raw_class = head.class_raw(shared).numpy()  # [B, H, W, 2A]
    raw_bbox = head.bbox_pred(shared).numpy()  # [B, H, W, 4A]
    for b, y, x, a in [(0, 0, 0, 0), (0, 0, 1, 2), (1, 3, 4, 1), (1, 2, 0, 2)]:
        row = (y * 5 + x) * 3 + a
        np.testing.assert_allclose(logits.numpy()[b, row], raw_class[b, y, x, 2 * a:2 * a + 2], rtol=1e-6)
        np.testing.assert_allclose(bbox.numpy()[b, row], raw_bbox[b, y, x, 4 * a:4 * a + 4], rtol=1e-6)


def test_rpn_anchor_stride_and_depth_check() -> None:
    logits, _, _ = RPNHead(3, anchor_stride=2, depth=8)(tf.zeros([1, 8, 8, 8]))
    assert tuple(logits.shape) == (1, 4 * 4 * 3, 2)
    with pytest.raises(ValueError, match="depth=16"):
        RPNHead(3, depth=16)(tf.zeros([1, 8, 8, 8]))


def test_rpn_shared_over_levels_symbolic() -> None:
    head = RPNHead(3, depth=16)
    outs = [head(keras.Input((s, s, 16))) for s in (8, 4)]
    assert [tuple(o[0].shape) for o in outs] == [(None, 192, 2), (None, 48, 2)]
    assert len(head.weights) == 6  # one set of weights for every level


def test_box_head_shapes_and_names() -> None:
    head = BoxHead(num_classes=4, pool_size=7, fc_layers_size=32)
    logits, probs, bbox = head(tf.random.stateless_normal([2, 5, 7, 7, 16], seed=(3, 3)))
    assert tuple(logits.shape) == (2, 5, 4) and tuple(probs.shape) == (2, 5, 4)
    assert tuple(bbox.shape) == (2, 5, 4, 4)
    np.testing.assert_allclose(probs.numpy().sum(-1), 1.0, rtol=1e-6)
    shapes = {n: tuple(layer.weights[0].shape) for n, layer in find_weight_layers(head).items()}
    assert shapes == {"mrcnn_class_conv1": (7, 7, 16, 32), "mrcnn_class_bn1": (32,),
                      "mrcnn_class_conv2": (1, 1, 32, 32), "mrcnn_class_bn2": (32,),
                      "mrcnn_class_logits": (32, 4), "mrcnn_bbox_fc": (32, 16)}


def test_box_head_rois_are_independent() -> None:
    # Folding RoIs into the batch must not mix them: RoI (1, 2) alone gives the same output.
    head = BoxHead(num_classes=3, pool_size=7, fc_layers_size=16)
    pooled = tf.random.stateless_normal([2, 3, 7, 7, 8], seed=(4, 4))
    logits, _, bbox = head(pooled)
    single_logits, _, single_bbox = head(pooled[1:2, 2:3])
    np.testing.assert_allclose(logits.numpy()[1, 2], single_logits.numpy()[0, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bbox.numpy()[1, 2], single_bbox.numpy()[0, 0], rtol=1e-5, atol=1e-6)


def test_box_head_wrong_pool_size() -> None:
    with pytest.raises(ValueError, match="7x7"):
        BoxHead(3, pool_size=7, fc_layers_size=8)(tf.zeros([1, 2, 5, 5, 4]))


def test_mask_head_shapes_and_names() -> None:
    head = MaskHead(num_classes=3, conv_channels=16)
    masks = head(tf.random.stateless_normal([2, 4, 14, 14, 8], seed=(5, 5)))
    assert tuple(masks.shape) == (2, 4, 28, 28, 3)
    assert masks.dtype == tf.float32
    assert float(tf.reduce_min(masks)) >= 0.0 and float(tf.reduce_max(masks)) <= 1.0
    shapes = {n: tuple(layer.weights[0].shape) for n, layer in find_weight_layers(head).items()}
    expected = {f"mrcnn_mask_conv{i}": (3, 3, 8 if i == 1 else 16, 16) for i in range(1, 5)}
    expected.update({f"mrcnn_mask_bn{i}": (16,) for i in range(1, 5)})
    expected.update(mrcnn_mask_deconv=(2, 2, 16, 16), mrcnn_mask=(1, 1, 16, 3))
    assert shapes == expected


def test_select_class_masks_takes_each_rois_channel() -> None:
    masks = np.random.default_rng(1).random((2, 3, 4, 5, 6)).astype(np.float32)
    class_ids = np.array([[0, 5, 2], [3, 3, 1]])
    selected = select_class_masks(tf.constant(masks), tf.constant(class_ids)).numpy()
    assert selected.shape == (2, 3, 4, 5, 1)
    for b in range(2):
        for n in range(3):
            np.testing.assert_array_equal(selected[b, n, :, :, 0], masks[b, n, :, :, class_ids[b, n]])


@pytest.mark.parametrize("activation, policy", [("sigmoid", None), ("sigmoid", "mixed_bfloat16"),
                                                ("softmax", None)])
def test_mask_head_class_ids_give_each_rois_own_channel(activation: str, policy: str | None) -> None:
    """With class_ids the sigmoid head computes only each RoI's class channel (its own dot product
    with the final 1x1 conv's column): the same numbers as that channel of all K."""
    previous = keras.config.dtype_policy()
    if policy:
        keras.config.set_dtype_policy(policy)
    try:
        head = MaskHead(num_classes=5, conv_channels=16, activation=activation)
        pooled = tf.random.stateless_normal([2, 3, 14, 14, 8], seed=(7, 7))
        class_ids = tf.constant([[1, 4, 2], [0, 3, 3]])
        every = head(pooled).numpy()
        own = head(pooled, class_ids=class_ids).numpy()
    finally:
        keras.config.set_dtype_policy(previous)
    assert own.shape == (2, 3, 28, 28, 1) and own.dtype == np.float32
    expected = np.take_along_axis(every, class_ids.numpy()[..., None, None, None], axis=-1)
    np.testing.assert_allclose(own, expected, rtol=1e-5, atol=1e-6)
    # The channels differ, so a wrong channel would show.
    assert np.abs(every[..., 1] - every[..., 4]).max() > 1e-3


def test_heads_symbolic_dynamic_roi_count() -> None:
    logits, _, bbox = BoxHead(3, 7, 16)(keras.Input((None, 7, 7, 8)))
    assert tuple(logits.shape) == (None, None, 3) and tuple(bbox.shape) == (None, None, 3, 4)
    masks = MaskHead(3, conv_channels=8)(keras.Input((6, 14, 14, 8)))
    assert tuple(masks.shape) == (None, 6, 28, 28, 3)


def test_outputs_float32_under_mixed_precision() -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        box = BoxHead(3, 7, 16)
        mask = MaskHead(3, conv_channels=8)
        rpn = RPNHead(3, depth=8)
        outputs = list(box(tf.zeros([1, 2, 7, 7, 8]))) + [mask(tf.zeros([1, 2, 14, 14, 8]))]
        outputs += list(rpn(tf.zeros([1, 4, 4, 8])))
    finally:
        keras.config.set_dtype_policy(previous)
    assert all(o.dtype == tf.float32 for o in outputs)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_class_mask_conv_products_in_bfloat16_activation_in_float32(activation: str) -> None:
    """Under mixed_bfloat16 the 1x1 product is bfloat16 and the activation reads float32 logits
    (the sigmoid of a bfloat16 logit would be rounded to 8 bits again); the config keeps the
    activation."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = ClassMaskConv(3, 1, activation=activation, name="mrcnn_mask")
        linear = ClassMaskConv(3, 1, name="linear")
        x = tf.random.stateless_normal([4, 6, 6, 8], seed=(3, 3))
        probs = layer(x)
        linear.build(x.shape)
        linear.set_weights(layer.get_weights())
        logits = linear(x)
    finally:
        keras.config.set_dtype_policy(previous)
    assert layer.compute_dtype == "bfloat16"
    assert probs.dtype == tf.float32 and logits.dtype == tf.float32
    # float32 logits holding bfloat16 values: the product's rounding, not the activation's.
    np.testing.assert_array_equal(tf.cast(tf.cast(logits, tf.bfloat16), tf.float32).numpy(), logits.numpy())
    expected = tf.nn.sigmoid(logits) if activation == "sigmoid" else tf.nn.softmax(logits, axis=-1)
    np.testing.assert_allclose(probs.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)
    clone = ClassMaskConv.from_config(layer.get_config())
    assert clone.get_config()["activation"] == activation and clone.get_config() == layer.get_config()


def test_head_configs_round_trip() -> None:
    for layer in (RPNHead(5, anchor_stride=2, depth=64), BoxHead(7, 5, 128, train_bn=True, name="box"),
                  MaskHead(9, conv_channels=32, name="mask")):
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(clone) is type(layer)
        assert clone.get_config() == layer.get_config()


def test_full_window_conv_matches_the_conv_it_replaces():
    from mrcnn.modeling.heads import _full_window_conv

    conv = keras.layers.Conv2D(16, 7, padding="valid")
    x = tf.random.normal([5, 7, 7, 8], seed=1)
    conv.build(x.shape)
    conv.bias.assign(tf.random.normal([16], seed=2))  # a non-zero bias must be applied too
    expected = conv(x)
    np.testing.assert_allclose(_full_window_conv(conv, x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    pointwise = keras.layers.Conv2D(4, 1)
    x1 = tf.random.normal([5, 1, 1, 16], seed=3)
    expected = pointwise(x1)  # builds the layer
    np.testing.assert_allclose(_full_window_conv(pointwise, x1).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def _numpy_stride2_deconv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A 2x2 stride-2 transposed convolution by its definition: out[2i + a, 2j + b] = x[i, j] @ K[a, b]^T + b."""
    m, h, w, _ = x.shape
    out = np.zeros((m, 2 * h, 2 * w, kernel.shape[2]))
    for a in range(2):
        for b in range(2):
            out[:, a::2, b::2, :] = np.einsum("mijc,fc->mijf", x, kernel[a, b]) + bias
    return out


@pytest.mark.parametrize("activation", ["relu", None])
def test_upsample_deconv_matches_the_transposed_conv_and_numpy(activation):
    from mrcnn.modeling.heads import upsample_deconv

    deconv = keras.layers.Conv2DTranspose(5, 2, strides=2, activation=activation, dtype="float64")
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 4, 6, 7)))
    deconv.build(x.shape)
    deconv.bias.assign(np.random.default_rng(1).normal(size=5))  # a non-zero bias must be applied too
    expected = _numpy_stride2_deconv(x.numpy(), deconv.kernel.numpy(), deconv.bias.numpy())
    expected = np.maximum(expected, 0) if activation else expected
    np.testing.assert_allclose(upsample_deconv(deconv, x).numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(deconv(x).numpy(), expected, rtol=1e-12, atol=1e-12)
    # Training takes gradients through it: the same as through the transposed convolution.
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = tf.reduce_sum(upsample_deconv(deconv, x) ** 2), tf.reduce_sum(deconv(x) ** 2)
    for ours_grad, theirs_grad in zip(tape.gradient(ours, [x, deconv.kernel, deconv.bias]),
                                      tape.gradient(theirs, [x, deconv.kernel, deconv.bias])):
        np.testing.assert_allclose(ours_grad.numpy(), theirs_grad.numpy(), rtol=1e-10, atol=1e-10)


def test_upsample_deconv_leaves_other_transposed_convs_to_keras():
    from mrcnn.modeling.heads import upsample_deconv

    deconv = keras.layers.Conv2DTranspose(5, 3, strides=2, padding="same")  # overlapping windows
    x = tf.random.normal([2, 4, 4, 3], seed=4)
    np.testing.assert_array_equal(upsample_deconv(deconv, x).numpy(), deconv(x).numpy())


@pytest.mark.parametrize("norm, norm_names", [
    ("gn", {"mrcnn_class_gn1", "mrcnn_class_gn2"}),
    ("none", set()),
])
def test_box_head_norm_variants(norm: str, norm_names: set[str]) -> None:
    # 256 wide: 8 channels per GroupNorm group (the 1024-wide default has 32). With 2 per group
    # (64 wide), normalizing two nearly equal values amplified matmul rounding past the tolerance
    # for about 1 in 40 random initializations. Seeded so that a run is reproducible.
    keras.utils.set_random_seed(0)
    head = BoxHead(num_classes=3, pool_size=7, fc_layers_size=256, norm=norm)
    pooled = tf.random.stateless_normal([2, 4, 7, 7, 8], seed=(7, 7))
    logits, _, _ = head(pooled, training=True)
    names = set(find_weight_layers(head))
    assert {n for n in names if "_bn" in n or "_gn" in n} == norm_names
    # Per-RoI normalization: the same RoI gives the same output in training and inference mode, and
    # whatever the other RoIs of the batch are (BatchNorm in training mode fails both).
    logits_eval, _, _ = head(pooled, training=False)
    np.testing.assert_allclose(logits.numpy(), logits_eval.numpy(), rtol=1e-5, atol=1e-5)
    alone, _, _ = head(pooled[:1, :1], training=True)
    np.testing.assert_allclose(alone.numpy()[0, 0], logits.numpy()[0, 0], rtol=1e-4, atol=1e-5)
    assert BoxHead.from_config(head.get_config()).norm == norm


def test_mask_head_group_norm_is_per_roi() -> None:
    head = MaskHead(num_classes=3, conv_channels=32, norm="gn")
    pooled = tf.random.stateless_normal([1, 3, 14, 14, 8], seed=(8, 8))
    masks = head(pooled, training=True)
    assert {n for n in find_weight_layers(head) if "_gn" in n} == {f"mrcnn_mask_gn{i}" for i in range(1, 5)}
    alone = head(pooled[:, 1:2], training=True)
    np.testing.assert_allclose(alone.numpy()[0, 0], masks.numpy()[0, 1], rtol=1e-4, atol=1e-5)


def test_head_norm_must_be_known() -> None:
    with pytest.raises(ValueError, match="head norm must be one of"):
        MaskHead(num_classes=3, norm="layer")


# ------------------------------------------------------------------------------------------------
# Mask-branch ablations: MLP head, class-agnostic masks, softmax over the mask channels
def test_mlp_mask_head_output_shape_names_and_independent_rois() -> None:
    from mrcnn.modeling.heads import MLPMaskHead

    head = MLPMaskHead(num_classes=3, mask_size=28, fc_size=32)
    pooled = tf.random.stateless_normal([2, 4, 14, 14, 8], seed=(9, 9))
    masks = head(pooled)
    assert tuple(masks.shape) == (2, 4, 28, 28, 3) and masks.dtype == tf.float32
    assert float(tf.reduce_min(masks)) >= 0.0 and float(tf.reduce_max(masks)) <= 1.0
    shapes = {n: tuple(layer.weights[0].shape) for n, layer in find_weight_layers(head).items()}
    assert shapes == {"mrcnn_mask_fc1": (14 * 14 * 8, 32), "mrcnn_mask_fc2": (32, 32),
                      "mrcnn_mask": (32, 28 * 28 * 3)}
    # Each RoI is its own MLP input: one RoI alone gives the same masks.
    np.testing.assert_allclose(head(pooled[1:, 2:3]).numpy()[0, 0], masks.numpy()[1, 2], rtol=1e-5, atol=1e-6)
    # Channel c of pixel (y, x) is output unit (y * 28 + x) * K + c of the last fc (row-major reshape).
    fc = head.fc2(head.fc1(tf.reshape(pooled[:1, :1], [1, -1])))
    logits = head.mask(fc).numpy().reshape(-1)
    np.testing.assert_allclose(masks.numpy()[0, 0, 5, 7, 2], 1 / (1 + np.exp(-logits[(5 * 28 + 7) * 3 + 2])), rtol=1e-5)
    dynamic = MLPMaskHead(3, fc_size=16)(keras.Input((None, 14, 14, 8)))
    assert tuple(dynamic.shape) == (None, None, 28, 28, 3)


@pytest.mark.parametrize("head_type", ["fcn", "mlp"])
def test_softmax_and_class_agnostic_mask_heads(head_type: str) -> None:
    from mrcnn.modeling.heads import make_mask_head

    pooled = tf.random.stateless_normal([1, 3, 14, 14, 8], seed=(4, 4))
    softmax = make_mask_head(head_type, 4, activation="softmax")
    probs = softmax(pooled).numpy()
    assert probs.shape == (1, 3, 28, 28, 4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)  # a distribution over the K channels
    agnostic = make_mask_head(head_type, 1)
    assert tuple(agnostic(pooled).shape) == (1, 3, 28, 28, 1)
    kernel = find_weight_layers(agnostic)["mrcnn_mask"].kernel.shape
    assert tuple(kernel) == ((1, 1, 256, 1) if head_type == "fcn" else (1024, 28 * 28))
    for head in (softmax, agnostic):
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
        assert clone.get_config() == head.get_config()
    with pytest.raises(ValueError, match="mask activation"):
        make_mask_head(head_type, 4, activation="tanh")
    with pytest.raises(ValueError, match="mask head type"):
        make_mask_head("deeplab", 4)
