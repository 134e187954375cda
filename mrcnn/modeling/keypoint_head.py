"""Keypoint R-CNN head (the paper's section 5): RoI features -> one m x m heatmap per keypoint.

    head = KeypointHead(num_keypoints=17)            # 8 x conv3x3 512 + ReLU, deconv, 2x bilinear
    logits = head(pooled)                            # [B, N, 14, 14, C] -> [B, N, 56, 56, 17]
    keypoints = heatmaps_to_keypoints(logits, boxes) # [B, N, 17, 3] (x, y normalized, score)

Each keypoint's heatmap is a distribution over the m^2 positions (softmax; trained by
`mrcnn.modeling.losses.mrcnn_keypoint_loss`), so a keypoint is read off at its heatmap's maximum.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mrcnn")
class KeypointHead(keras.layers.Layer):
    """Keypoint head: `num_convs` x (3x3 conv + ReLU), a 4x4 stride-2 deconv to K channels, 2x bilinear.

    The paper's head (8 convs of 512 channels, no normalization, "deconv" then bilinear
    upsampling: 14 x 14 RoI features -> 56 x 56 heatmaps). Layer names start with
    ``mrcnn_keypoint_`` so that `train(layers="heads")` trains them.

    Args:
        num_keypoints: K.
        num_convs: number of 3x3 convs (KEYPOINT_HEAD_NUM_CONVS, 8).
        conv_channels: their width (KEYPOINT_HEAD_CONV_CHANNELS, 512).

    Call:
        pooled: [B, N, p, p, C] RoI features (p = KEYPOINT_POOL_SIZE).
        Returns logits [B, N, 4p, 4p, K] float32 (pre-softmax heatmaps, one channel per keypoint).
    """

    def __init__(self, num_keypoints: int, num_convs: int = 8, conv_channels: int = 512, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("num_keypoints", num_keypoints), ("num_convs", num_convs),
                            ("conv_channels", conv_channels)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_keypoints = int(num_keypoints)
        self.num_convs = int(num_convs)
        self.conv_channels = int(conv_channels)
        # He init (Detectron's MSRA fill): the head has no normalization, so the init keeps the
        # activations' scale through 8 ReLU convs.
        self.convs = [keras.layers.Conv2D(self.conv_channels, 3, padding="same", activation="relu",
                                          kernel_initializer="he_normal", name=f"mrcnn_keypoint_conv{i}")
                      for i in range(1, self.num_convs + 1)]
        # A small init of the output layer starts every heatmap near uniform (loss ~ log(m^2)):
        # He init there gives logits in the tens and a first loss ~10x that, which the first
        # SGD steps spend undoing.
        self.deconv = keras.layers.Conv2DTranspose(
            self.num_keypoints, 4, strides=2, padding="same",
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001), dtype="float32",
            name="mrcnn_keypoint_deconv")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 5:
            raise ValueError(f"{self.name}: expected pooled RoI features [B, N, p, p, C], got shape {tuple(input_shape)}")
        shape = (None,) + tuple(input_shape[2:])
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.deconv.build(shape)

    def call(self, pooled: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if pooled.shape.rank != 5:
            raise ValueError(f"{self.name}: expected pooled RoI features [B, N, p, p, C], got shape {pooled.shape}")
        dynamic = tf.shape(pooled)
        batch, rois = (pooled.shape[i] if pooled.shape[i] is not None else dynamic[i] for i in (0, 1))
        height, width, channels = pooled.shape[2], pooled.shape[3], pooled.shape[4]
        # The RoI axis folds into the batch: each RoI is an independent image for the convs.
        x = tf.reshape(pooled, [-1, height, width, channels])
        for conv in self.convs:
            x = conv(x)
        x = self.deconv(x)
        # Bilinear 2x with half-pixel centres (torch's align_corners=False, as Detectron).
        x = tf.image.resize(x, [4 * height, 4 * width], method="bilinear")
        x = tf.cast(x, tf.float32)
        return tf.reshape(x, [batch, rois, 4 * height, 4 * width, self.num_keypoints])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_keypoints=self.num_keypoints, num_convs=self.num_convs, conv_channels=self.conv_channels)
        return config


def heatmaps_to_keypoints(logits: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """Reads keypoints off heatmaps: the centre of each heatmap's best cell, mapped into its box.

    Args:
        logits: [B, N, m, m, K] keypoint head output.
        boxes: [B, N, 4] (y1, x1, y2, x2) normalized boxes the heatmaps were computed for.

    Returns:
        [B, N, K, 3] float32 (x, y, score): x, y normalized to the molded image (continuous
        coordinates, x = x1 + (col + 0.5) / m * (x2 - x1)), score = the heatmap's softmax
        probability at that cell (0..1).
    """
    logits = tf.cast(logits, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    m = logits.shape[2]
    dynamic = tf.shape(logits)
    flat = tf.transpose(tf.reshape(logits, [dynamic[0], dynamic[1], m * m, dynamic[4]]), [0, 1, 3, 2])  # [B,N,K,m*m]
    best = tf.argmax(flat, axis=-1, output_type=tf.int32)
    score = tf.reduce_max(tf.nn.softmax(flat, axis=-1), axis=-1)
    row = tf.cast(best // m, tf.float32)
    col = tf.cast(best % m, tf.float32)
    y1, x1, y2, x2 = (boxes[..., i:i + 1] for i in range(4))  # [B, N, 1]: broadcast over K
    x = x1 + (col + 0.5) / m * (x2 - x1)
    y = y1 + (row + 0.5) / m * (y2 - y1)
    return tf.stack([x, y, score], axis=-1)
