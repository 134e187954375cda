"""Region Proposal Network head, shared over all pyramid levels.

matterport builds it as a nested Keras model named ``rpn_model`` holding ``rpn_conv_shared``,
``rpn_class_raw`` and ``rpn_bbox_pred``; its h5 files store those three under the group
``rpn_model``. Here it is one layer (default name ``rpn_model``) with the same sublayer names;
:func:`mrcnn.weights.load_weights_by_name` resolves the nested group by the weights' own layer names.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mrcnn")
class RPNHead(keras.layers.Layer):
    """3x3 shared conv + 1x1 objectness logits + 1x1 box deltas for every anchor of a level.

    Args:
        anchors_per_location: anchors per feature-map position A (len(RPN_ANCHOR_RATIOS)).
        anchor_stride: RPN_ANCHOR_STRIDE; 1 puts anchors at every position, 2 at every other
            (the shared conv then strides by 2, as in matterport).
        depth: channels of the pyramid maps (TOP_DOWN_PYRAMID_SIZE; C4's 1024 in the C4 model);
            used to build the layer before the first call and checked against the inputs.
        conv_channels: channels of the shared 3x3 conv: 512 (matterport's FPN RPN); the C4 model
            uses its input's 1024, as Detectron's C4 RPN.

    Call:
        feature_map: [B, H, W, depth], one pyramid level.
        Returns (rpn_class_logits [B, H'*W'*A, 2] (bg, fg), rpn_probs [B, H'*W'*A, 2] softmax,
        rpn_bbox [B, H'*W'*A, 4] (dy, dx, log(dh), log(dw)) / RPN_BBOX_STD_DEV), rows ordered
        (y, x, anchor) row-major, matching `utils.generate_anchors`. H' = ceil(H / anchor_stride).
        Outputs are float32.
    """

    def __init__(self, anchors_per_location: int, anchor_stride: int = 1, depth: int = 256,
                 conv_channels: int = 512, **kwargs: Any) -> None:
        kwargs.setdefault("name", "rpn_model")
        super().__init__(**kwargs)
        if int(anchors_per_location) < 1:
            raise ValueError(f"anchors_per_location must be >= 1, got {anchors_per_location!r}")
        if int(anchor_stride) < 1:
            raise ValueError(f"anchor_stride must be >= 1, got {anchor_stride!r}")
        self.anchors_per_location = int(anchors_per_location)
        self.anchor_stride = int(anchor_stride)
        self.depth = int(depth)
        self.conv_channels = int(conv_channels)
        a = self.anchors_per_location
        self.conv_shared = keras.layers.Conv2D(self.conv_channels, 3, padding="same", strides=self.anchor_stride,
                                               activation="relu", name="rpn_conv_shared")
        self.class_raw = keras.layers.Conv2D(2 * a, 1, padding="valid", dtype="float32", name="rpn_class_raw")
        self.bbox_pred = keras.layers.Conv2D(4 * a, 1, padding="valid", dtype="float32", name="rpn_bbox_pred")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = input_shape[-1]
        if channels is not None and channels != self.depth:
            raise ValueError(f"{self.name}: expected feature maps with depth={self.depth} channels, "
                             f"got input shape {tuple(input_shape)}")
        shape = tuple(input_shape[:-1]) + (self.depth,)
        self.conv_shared.build(shape)
        shared = self.conv_shared.compute_output_shape(shape)
        self.class_raw.build(shared)
        self.bbox_pred.build(shared)

    def call(self, feature_map: tf.Tensor, training: bool | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        shared = self.conv_shared(feature_map)
        batch = tf.shape(shared)[0]
        height, width = shared.shape[1], shared.shape[2]
        # A static anchor count when H, W are static, so concatenated levels keep a static shape.
        count = height * width * self.anchors_per_location if height is not None and width is not None else -1
        # [B, H, W, A*2] -> [B, H*W*A, 2]: row-major (y, x, anchor), the order of the anchors.
        logits = tf.reshape(tf.cast(self.class_raw(shared), tf.float32), [batch, count, 2])
        probs = tf.nn.softmax(logits, axis=-1)
        bbox = tf.reshape(tf.cast(self.bbox_pred(shared), tf.float32), [batch, count, 4])
        return logits, probs, bbox

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(anchors_per_location=self.anchors_per_location, anchor_stride=self.anchor_stride,
                      depth=self.depth, conv_channels=self.conv_channels)
        return config
