"""C4 heads: res5 per RoI (matterport names, ResNet's stage-5 weights), 14x14 -> 7x7, pooled
classification and deltas, and the deconv mask head to 14x14."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.modeling.backbone import Architecture, BatchNorm, ResNet
from mrcnn.modeling.c4_heads import C4BoxHead, C4MaskHead
from mrcnn.weights import find_weight_layers, iter_layers

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def box_head() -> C4BoxHead:
    head = C4BoxHead(NUM_CLASSES, "resnet50", name="box_head")
    head(tf.zeros([1, 2, 14, 14, 1024]))
    return head


def test_box_head_shapes_and_outputs(box_head: C4BoxHead) -> None:
    pooled = tf.random.stateless_normal([2, 3, 14, 14, 1024], seed=(1, 2))
    logits, probs, bbox, features = box_head(pooled)
    assert tuple(logits.shape) == (2, 3, NUM_CLASSES) and tuple(probs.shape) == (2, 3, NUM_CLASSES)
    assert tuple(bbox.shape) == (2, 3, NUM_CLASSES, 4)
    assert tuple(features.shape) == (2, 3, 7, 7, 2048)  # res5's stride 2: 14x14 -> 7x7
    assert logits.dtype == probs.dtype == bbox.dtype == tf.float32
    np.testing.assert_allclose(probs.numpy().sum(-1), 1.0, rtol=1e-5)
    # The logits are a linear map of the global average of the res5 features, RoI by RoI.
    mean = features.numpy().mean(axis=(2, 3))
    np.testing.assert_allclose(logits.numpy(), mean @ box_head.class_logits.kernel.numpy()
                               + box_head.class_logits.bias.numpy(), rtol=1e-4, atol=1e-4)
    deltas = mean @ box_head.bbox_fc.kernel.numpy() + box_head.bbox_fc.bias.numpy()
    np.testing.assert_allclose(bbox.numpy(), deltas.reshape(2, 3, NUM_CLASSES, 4), rtol=1e-4, atol=1e-4)
    # Each RoI is its own: changing RoI 0 leaves RoI 1's outputs alone (frozen BatchNorm).
    changed = tf.concat([pooled[:, :1] * 2.0, pooled[:, 1:]], axis=1)
    np.testing.assert_allclose(box_head(changed)[0][:, 1:].numpy(), logits[:, 1:].numpy(), rtol=1e-5, atol=1e-5)


def test_box_head_is_resnet_stage5(box_head: C4BoxHead) -> None:
    """Same names and weight shapes as ResNet-50's res5, so an ImageNet ResNet h5 loads into it by name."""
    resnet = ResNet("resnet50")
    resnet.build((None, 64, 64, 3))
    theirs = {name: [tuple(w.shape) for w in layer.weights] for name, layer in find_weight_layers(resnet).items()
              if name.startswith(("res5", "bn5"))}
    ours = {name: [tuple(w.shape) for w in layer.weights] for name, layer in find_weight_layers(box_head).items()}
    assert len(theirs) == 3 * 3 * 2 + 2  # 3 blocks x (2a, 2b, 2c) x (conv, bn) + branch1 conv/bn
    assert {n: s for n, s in ours.items() if n.startswith(("res5", "bn5"))} == theirs
    assert set(ours) - set(theirs) == {"mrcnn_class_logits", "mrcnn_bbox_fc"}
    convs = {sub.name: sub for sub in iter_layers(box_head) if isinstance(sub, keras.layers.Conv2D)}
    assert tuple(convs["res5a_branch2a"].strides) == (2, 2) and tuple(convs["res5a_branch1"].strides) == (2, 2)
    assert all(isinstance(layer, BatchNorm) and layer.train_bn is False
               for layer in iter_layers(box_head) if isinstance(layer, keras.layers.BatchNormalization))


def test_box_head_gradient_reaches_res5(box_head: C4BoxHead) -> None:
    pooled = tf.random.stateless_normal([1, 2, 14, 14, 1024], seed=(3, 4))
    with tf.GradientTape() as tape:
        tape.watch(pooled)
        logits, _, bbox, _ = box_head(pooled, training=True)
        loss = tf.reduce_sum(logits ** 2) + tf.reduce_sum(bbox ** 2)
    grads = tape.gradient(loss, [pooled] + box_head.trainable_weights)
    assert all(g is not None for g in grads)
    kernel_grads = [g for w, g in zip(box_head.trainable_weights, grads[1:], strict=True) if "kernel" in w.path]
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in kernel_grads)
    assert float(tf.reduce_max(tf.abs(grads[0]))) > 0


def test_resnext_box_head_is_grouped() -> None:
    head = C4BoxHead(2, Architecture((1, 1, 1, 2), cardinality=8, width=32, stride_in_1x1=False))
    _, _, _, features = head(tf.random.stateless_normal([1, 2, 14, 14, 1024], seed=(5, 6)))
    assert tuple(features.shape) == (1, 2, 7, 7, 2048)
    grouped = [sub for sub in iter_layers(head) if isinstance(sub, keras.layers.Conv2D) and sub.groups > 1]
    assert sorted(c.name for c in grouped) == ["res5a_branch2b", "res5b_branch2b"]
    assert all(c.groups == 8 and tuple(c.kernel.shape) == (3, 3, 32, 256) for c in grouped)
    clone = C4BoxHead.from_config(head.get_config())
    assert clone.architecture == head.architecture and len(clone.blocks) == 2


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_mask_head(activation: str) -> None:
    head = C4MaskHead(NUM_CLASSES, activation=activation, name="mask_head")
    masks = head(tf.random.stateless_normal([2, 3, 7, 7, 2048], seed=(7, 8)))
    assert tuple(masks.shape) == (2, 3, 14, 14, NUM_CLASSES) and masks.dtype == tf.float32
    values = masks.numpy()
    assert values.min() >= 0.0 and values.max() <= 1.0
    if activation == "softmax":
        np.testing.assert_allclose(values.sum(-1), 1.0, rtol=1e-5)
    weights = {name: [tuple(w.shape) for w in layer.weights] for name, layer in find_weight_layers(head).items()}
    # The paper's C4 mask head: 2x2 stride-2 deconv to 256 channels, 1x1 conv to K masks.
    assert weights == {"mrcnn_mask_deconv": [(2, 2, 256, 2048), (256,)],
                       "mrcnn_mask": [(1, 1, 256, NUM_CLASSES), (NUM_CLASSES,)]}
    assert tuple(head.deconv.strides) == (2, 2)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        C4BoxHead(0)
    with pytest.raises(ValueError, match="architecture"):
        C4BoxHead(3, "vgg16")
    with pytest.raises(ValueError, match="activation"):
        C4MaskHead(3, activation="tanh")
    with pytest.raises(ValueError, match=r"expected \[B, N, m, m, C\]"):
        C4MaskHead(3)(tf.zeros([2, 7, 7, 2048]))
