"""Per-RoI heads of the C4 Mask R-CNN (the paper's Fig. 4 left, "ResNet-50-C4").

Without an FPN, the RPN and the RoIs read C4 (stride 16) alone, and ResNet's stage 5 becomes the
box head: each RoI's 14 x 14 x 1024 RoIAlign crop of C4 goes through res5 (stride 2 on its first
block, as on the image) to 7 x 7 x 2048, is averaged over its 7 x 7 positions and classified
(logits for K classes) and regressed (4 deltas per class). The mask branch reads the same res5
output: a 2 x 2 stride-2 deconvolution (256 channels, ReLU) and a 1 x 1 convolution to K masks at
14 x 14 (Detectron's "upshare" head: training reuses the box head's res5 features, inference
runs res5 again on the detected boxes).

The res5 blocks keep matterport/Caffe names (res5a_branch2a, bn5a_branch2a, ...), so an ImageNet
ResNet h5 (whose res5 would otherwise be unused) loads into the box head by name; the output
layers are named like the FPN heads' (mrcnn_class_logits, mrcnn_bbox_fc, mrcnn_mask_deconv,
mrcnn_mask). Outputs are float32 even under a mixed-precision policy.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from mrcnn.modeling.backbone import (
    BN_EPSILON,
    Architecture,
    BottleneckBlock,
    architecture_to_config,
    get_architecture,
    make_stage,
)
from mrcnn.modeling.heads import (
    ClassMaskConv,
    check_mask_activation,
    fold_rois,
    static_or_dynamic_shape,
    unfold_rois,
    upsample_deconv,
)


@keras.saving.register_keras_serializable(package="mrcnn")
class C4BoxHead(keras.layers.Layer):
    """res5 per RoI -> global average pool -> class logits and per-class box deltas.

    Args:
        num_classes: K, background included.
        architecture: the backbone's architecture (a key of ``backbone.ARCHITECTURES`` or an
            ``Architecture``): its stage 5 (ResNet's 3 blocks; ResNeXt's grouped) is built here,
            named res5a.. / bn5a...
        train_bn: see `mrcnn.modeling.backbone.BatchNorm` (TRAIN_BN, as the backbone's).
        bn_epsilon, grouped_conv: see `mrcnn.modeling.backbone.BottleneckBlock`.

    Call:
        pooled: [B, N, p, p, C4 channels] RoI features (p = POOL_SIZE, 14).
        Returns (mrcnn_class_logits [B, N, K], mrcnn_probs [B, N, K] softmax,
        mrcnn_bbox [B, N, K, 4] per-class deltas (dy, dx, log(dh), log(dw)) / BBOX_STD_DEV,
        res5 features [B, N, ceil(p/2), ceil(p/2), 2048] for the mask head); the first three float32.

    Attributes:
        blocks: the res5 `BottleneckBlock`s, in order.
    """

    def __init__(self, num_classes: int, architecture: str | Architecture = "resnet50",
                 train_bn: bool | None = False, bn_epsilon: float = BN_EPSILON, grouped_conv: str = "auto",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.architecture = architecture if isinstance(architecture, str) else get_architecture(architecture)
        self.train_bn = train_bn
        self.bn_epsilon = float(bn_epsilon)
        self.grouped_conv = grouped_conv
        self.blocks: list[BottleneckBlock] = make_stage(architecture, 5, train_bn, self.bn_epsilon, grouped_conv)
        self.class_logits = keras.layers.Dense(self.num_classes, dtype="float32", name="mrcnn_class_logits")
        self.bbox_fc = keras.layers.Dense(4 * self.num_classes, dtype="float32", name="mrcnn_bbox_fc")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 5 or input_shape[-1] is None:
            raise ValueError(f"{self.name}: expected [B, N, p, p, C] with known C, got shape {tuple(input_shape)}")
        shape = (None,) + tuple(input_shape[2:])
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)
        self.class_logits.build((None, shape[-1]))
        self.bbox_fc.build((None, shape[-1]))

    def res5(self, pooled: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """res5 on RoI features: [B, N, p, p, C] -> [B, N, ceil(p/2), ceil(p/2), 2048]."""
        x, batch_rois = fold_rois(pooled, self.name)
        for block in self.blocks:
            x = block(x, training=training)
        return unfold_rois(x, batch_rois)

    def call(self, pooled: tf.Tensor, training: bool | None = None
             ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        features = self.res5(pooled, training=training)
        # [B, N, 2048]: global average pool, in float32 (a 49-term mean under bfloat16 loses digits)
        shared = tf.reduce_mean(tf.cast(features, tf.float32), axis=[2, 3])
        logits = tf.cast(self.class_logits(shared), tf.float32)
        bbox = tf.cast(self.bbox_fc(shared), tf.float32)
        bbox = unfold_rois(tf.reshape(bbox, [-1, self.num_classes, 4]), static_or_dynamic_shape(logits)[:2])
        return logits, tf.nn.softmax(logits, axis=-1), bbox, features

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_classes=self.num_classes, architecture=architecture_to_config(self.architecture),
                      train_bn=self.train_bn,
                      bn_epsilon=self.bn_epsilon, grouped_conv=self.grouped_conv)
        return config


@keras.saving.register_keras_serializable(package="mrcnn")
class C4MaskHead(keras.layers.Layer):
    """The C4 mask head on res5 features: 2x2 stride-2 deconv (ReLU) -> 1x1 conv to K masks.

    Args:
        num_classes: output channels: K (background included), or 1 for class-agnostic masks.
        conv_channels: channels of the deconvolution (the paper's 256).
        activation: "sigmoid" (independent per-class masks, the paper's) or "softmax" over the
            channels per pixel (Config.MASK_LOSS ablation).

    Call:
        features: [B, N, m, m, 2048] res5 features of the RoIs (m = 7).
        Returns masks [B, N, 2m, 2m, K], probabilities in [0, 1], float32.
    """

    def __init__(self, num_classes: int, conv_channels: int = 256, activation: str = "sigmoid",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.conv_channels = int(conv_channels)
        self.activation = check_mask_activation(activation)
        self.deconv = keras.layers.Conv2DTranspose(self.conv_channels, 2, strides=2, activation="relu",
                                                   name="mrcnn_mask_deconv")
        # Keras' "softmax" activation normalizes over the last (channel) axis; it runs in float32.
        self.mask = ClassMaskConv(self.num_classes, 1, activation=activation, name="mrcnn_mask")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 5 or input_shape[-1] is None:
            raise ValueError(f"{self.name}: expected [B, N, m, m, C] with known C, got shape {tuple(input_shape)}")
        shape = (None,) + tuple(input_shape[2:])
        self.deconv.build(shape)
        self.mask.build(self.deconv.compute_output_shape(shape))

    def call(self, features: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x, batch_rois = fold_rois(features, self.name)
        return unfold_rois(tf.cast(self.mask(upsample_deconv(self.deconv, x)), tf.float32), batch_rois)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_classes=self.num_classes, conv_channels=self.conv_channels, activation=self.activation)
        return config
