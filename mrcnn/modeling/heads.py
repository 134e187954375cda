"""Per-RoI heads of Mask R-CNN (FPN variant): box/class head and mask head.

matterport wraps each layer in TimeDistributed over the RoI axis; here the RoI axis is folded
into the batch ([B, N, ...] -> [B*N, ...]) around plain layers, which is the same computation with
the same weights. Sublayers keep matterport's names (mrcnn_class_conv1, mrcnn_mask, ...), so
``mask_rcnn_coco.h5`` loads by name. Outputs are float32 even under a mixed-precision policy.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from mrcnn.config import GROUP_NORM_GROUPS, HEAD_NORMS, MASK_LOSSES
from mrcnn.modeling.backbone import BatchNorm
from mrcnn.modeling.group_norm import GroupNormalization

# A mask head's output activation follows Config.MASK_LOSS: per-channel sigmoid or a softmax over
# the K channels.
MASK_ACTIVATIONS = MASK_LOSSES


def check_mask_activation(activation: str) -> str:
    """`activation` if it is one of MASK_ACTIVATIONS; ValueError naming it otherwise."""
    if activation not in MASK_ACTIVATIONS:
        raise ValueError(f"mask activation must be one of {MASK_ACTIVATIONS}, got {activation!r}")
    return activation


def make_head_norm(kind: str, train_bn: bool | None, name: str) -> keras.layers.Layer:
    """The normalization after a head's conv/fc layer (Config.HEAD_NORM).

    Args:
        kind: "bn": BatchNorm named ``mrcnn_*_bn<i>`` as matterport (its h5 weights load), following
            `train_bn`. Its statistics come from all sampled RoIs of the batch, zero-padded slots
            included, so they differ from the proposals seen at inference; fine for fine-tuning from
            matterport's weights, poor for short from-scratch runs. "gn": GroupNormalization with 32
            groups, named ``mrcnn_*_gn<i>``: per-RoI statistics, identical in training and inference
            (`mrcnn.modeling.group_norm.GroupNormalization`: Keras' layer, computed faster on CPU).
            "none": no normalization (the paper's heads); an Identity layer keeps the call sites simple.
        train_bn: see `mrcnn.modeling.backbone.BatchNorm` (used by "bn" only).
        name: the BatchNorm name, e.g. "mrcnn_class_bn1"; "gn" and "none" replace its "_bn".
    """
    if kind == "bn":
        return BatchNorm(train_bn, name=name)
    if kind == "gn":
        return GroupNormalization(GROUP_NORM_GROUPS, epsilon=1e-5, name=name.replace("_bn", "_gn"))
    if kind == "none":
        return keras.layers.Identity(name=name.replace("_bn", "_norm"))
    raise ValueError(f"head norm must be one of {HEAD_NORMS}, got {kind!r}")


def static_or_dynamic_shape(x: tf.Tensor) -> list[int | tf.Tensor]:
    """x's shape with static dimensions as ints and unknown ones as scalar tensors."""
    dynamic = tf.shape(x)
    return [dim if dim is not None else dynamic[i] for i, dim in enumerate(x.shape)]


def fold_rois(pooled: tf.Tensor, name: str) -> tuple[tf.Tensor, list[int | tf.Tensor]]:
    """[B, N, h, w, C] -> ([B*N, h, w, C], [B, N]) (static dimensions as ints), for per-RoI layers."""
    if pooled.shape.rank != 5:
        raise ValueError(f"{name}: expected pooled RoI features [B, N, h, w, C], got shape {pooled.shape}")
    dims = static_or_dynamic_shape(pooled)
    return tf.reshape(pooled, [-1] + dims[2:]), dims[:2]


def unfold_rois(x: tf.Tensor, batch_rois: list[int | tf.Tensor]) -> tf.Tensor:
    """[B*N, ...] -> [B, N, ...], with `batch_rois` = [B, N] from `fold_rois`."""
    return tf.reshape(x, list(batch_rois) + static_or_dynamic_shape(x)[1:])


def select_class_masks(masks: tf.Tensor, class_ids: tf.Tensor) -> tf.Tensor:
    """Each RoI's own class channel of K-channel masks.

    Args:
        masks: [B, N, h, w, K] mask probabilities.
        class_ids: [B, N] int, a channel per RoI (0..K-1).
    Returns:
        [B, N, h, w, 1].
    """
    channels_first = tf.transpose(masks, [0, 1, 4, 2, 3])  # [B, N, K, h, w]
    return tf.gather(channels_first, tf.cast(class_ids, tf.int32), axis=2, batch_dims=2)[..., None]


@keras.saving.register_keras_serializable(package="mrcnn")
class ClassMaskConv(keras.layers.Conv2D):
    """The mask head's final 1x1 convolution to K class channels (matterport's ``mrcnn_mask``),
    which can also compute one chosen channel per RoI.

    Called as a Conv2D it is one, except that the activation (sigmoid or softmax) always runs in
    float32: the 1x1 product computes in the layer's compute dtype (bfloat16/float16 under mixed
    precision, with float32 accumulation), and its logits are cast to float32 before the
    activation, so the mask probabilities are float32. (As a float32 layer it had to cast its
    [R, 28, 28, 256] input up first, which cost more than the product itself.) Called with
    ``channels`` [R] int (R = the RoIs of the batch), it returns [R, h, w] probabilities: each
    RoI's dot product with its channel's kernel column only (at inference the class of each
    detection is known, and the other K - 1 channels would be thrown away).

    Args:
        filters, kernel_size, **kwargs: as keras.layers.Conv2D.
        activation: applied in float32 to the logits (None: float32 logits).
    """

    def __init__(self, filters: int, kernel_size: Any, activation: Any = None, **kwargs: Any) -> None:
        super().__init__(filters, kernel_size, activation=None, **kwargs)
        self.logit_activation = keras.activations.get(activation)

    def call(self, inputs: tf.Tensor, channels: tf.Tensor | None = None) -> tf.Tensor:
        if channels is None:
            logits = super().call(inputs)
        else:
            if tuple(self.kernel_size) != (1, 1) or self.groups != 1:
                raise ValueError(f"{self.name}: one channel per RoI needs a 1x1 convolution without groups")
            channels = tf.cast(channels, tf.int32)
            # Inside call Keras reads the variables in the compute dtype, as the full convolution.
            columns = tf.gather(tf.reshape(self.kernel, [-1, self.filters]), channels, axis=1)  # [C, R]
            logits = tf.einsum("rhwc,cr->rhw", tf.cast(inputs, columns.dtype), columns)
            if self.use_bias:
                logits += tf.gather(self.bias, channels)[:, None, None]
        # keras.activations.get(None) is the identity: without an activation these are the logits.
        return self.logit_activation(tf.cast(logits, tf.float32))

    def compute_output_spec(self, inputs: keras.KerasTensor, channels: keras.KerasTensor | None = None
                            ) -> keras.KerasTensor:
        if channels is None:
            shape = self.compute_output_shape(inputs.shape)
        else:
            shape = tuple(inputs.shape[:3])
        return keras.KerasTensor(shape, dtype="float32")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["activation"] = keras.activations.serialize(self.logit_activation)
        return config


def _full_window_conv(conv: keras.layers.Conv2D, x: tf.Tensor) -> tf.Tensor:
    """A 'valid' conv whose kernel covers the whole input, computed as one matmul.

    Same numbers and the same (p, p, C, F) kernel as ``conv(x)`` (so h5 weights still load), but
    TF's CPU gradient of a 7x7 conv over a 7x7 input is ~70x slower than that of the equivalent
    matmul (16 s vs 0.22 s for 256 RoIs at 1024 channels, measured on 2 cores); the 1x1 conv
    over the resulting 1x1 map has the same problem (0.5 s per step for 128 RoIs).

    Args:
        conv: a built Conv2D with kernel [p, p, C, F], 'valid' padding, stride 1.
        x: [M, p, p, C].
    Returns:
        [M, 1, 1, F].
    """
    kernel = tf.cast(conv.kernel, x.dtype)
    window = kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
    # Row-major flattening of [p, p, C] matches the HWIO kernel reshaped to [p*p*C, F].
    y = tf.matmul(tf.reshape(x, [-1, window]), tf.reshape(kernel, [window, kernel.shape[3]]))
    if conv.use_bias:
        y = tf.nn.bias_add(y, tf.cast(conv.bias, x.dtype))
    return tf.reshape(y, [-1, 1, 1, kernel.shape[3]])


def upsample_deconv(deconv: keras.layers.Conv2DTranspose, x: tf.Tensor) -> tf.Tensor:
    """``deconv(x)`` for the mask heads' 2x2 stride-2 'valid' transposed convolution, computed as a
    1x1 convolution to 4x the channels followed by depth_to_space.

    With kernel 2 and stride 2 the output windows do not overlap: output pixel (2i + a, 2j + b)
    is x[i, j] @ K[a, b] (+ bias, then the activation), which is channel block a * 2 + b of a 1x1
    convolution with the kernel laid out [C, (a, b, F)]; depth_to_space puts block a * 2 + b at
    offset (a, b). Same numbers and the same [2, 2, F, C] kernel (h5 weights load), but oneDNN
    fuses a convolution with its bias add and ReLU, not a transposed one: the separate bias add
    and ReLU over the [R, 28, 28, 256] bfloat16 output took 31 ms of a 512 px ResNet-50-FPN
    `detect` (100 detection slots, 2-core AMX Xeon), the transposed convolution itself 11 ms.
    Other transposed convolutions run as they are.

    Args:
        deconv: a built Conv2DTranspose, channels-last.
        x: [M, h, w, C].
    Returns:
        [M, 2h, 2w, F] (for other configurations, whatever ``deconv(x)`` returns).
    """
    if not (tuple(deconv.kernel_size) == (2, 2) and tuple(deconv.strides) == (2, 2) and deconv.padding == "valid"
            and tuple(deconv.dilation_rate) == (1, 1) and deconv.data_format == "channels_last"):
        return deconv(x)
    kernel = tf.cast(deconv.kernel, x.dtype)  # [a, b, F, C]
    filters, channels = kernel.shape[2], kernel.shape[3]
    as_1x1 = tf.reshape(tf.transpose(kernel, [3, 0, 1, 2]), [1, 1, channels, 4 * filters])  # [C, (a, b, F)]
    y = tf.nn.conv2d(x, as_1x1, strides=1, padding="VALID")
    if deconv.use_bias:
        y = tf.nn.bias_add(y, tf.tile(tf.cast(deconv.bias, x.dtype), [4]))
    # The activation is per element, so it commutes with the pixel shuffle.
    return tf.nn.depth_to_space(deconv.activation(y), 2)


@keras.saving.register_keras_serializable(package="mrcnn")
class BoxHead(keras.layers.Layer):
    """Classifier and box-regression head ("2-fc" head built as convolutions, as matterport).

    mrcnn_class_conv1 (pool_size x pool_size valid conv = fc) -> mrcnn_class_bn1 -> ReLU ->
    mrcnn_class_conv2 (1x1 = fc) -> mrcnn_class_bn2 -> ReLU -> mrcnn_class_logits Dense(K) and
    mrcnn_bbox_fc Dense(4K). The normalization is `norm` (see `make_head_norm`).

    Args:
        num_classes: K, background included.
        pool_size: RoI feature size p (POOL_SIZE, 7).
        fc_layers_size: width of the two fc layers (FPN_CLASSIF_FC_LAYERS_SIZE, 1024).
        train_bn: see `mrcnn.modeling.backbone.BatchNorm`.
        norm: "bn" (matterport), "gn" or "none" (Config.HEAD_NORM).

    Call:
        pooled: [B, N, p, p, C] RoI features.
        Returns (mrcnn_class_logits [B, N, K], mrcnn_probs [B, N, K] softmax,
        mrcnn_bbox [B, N, K, 4] per-class deltas (dy, dx, log(dh), log(dw)) / BBOX_STD_DEV), float32.
    """

    def __init__(self, num_classes: int, pool_size: int = 7, fc_layers_size: int = 1024,
                 train_bn: bool | None = False, norm: str = "bn", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.pool_size = int(pool_size)
        self.fc_layers_size = int(fc_layers_size)
        self.train_bn = train_bn
        self.norm = norm
        self.class_conv1 = keras.layers.Conv2D(self.fc_layers_size, self.pool_size, padding="valid",
                                               name="mrcnn_class_conv1")
        self.class_bn1 = make_head_norm(norm, train_bn, "mrcnn_class_bn1")
        self.class_conv2 = keras.layers.Conv2D(self.fc_layers_size, 1, name="mrcnn_class_conv2")
        self.class_bn2 = make_head_norm(norm, train_bn, "mrcnn_class_bn2")
        self.class_logits = keras.layers.Dense(self.num_classes, dtype="float32", name="mrcnn_class_logits")
        self.bbox_fc = keras.layers.Dense(4 * self.num_classes, dtype="float32", name="mrcnn_bbox_fc")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 5:
            raise ValueError(f"{self.name}: expected [B, N, p, p, C], got shape {tuple(input_shape)}")
        if any(dim is not None and dim != self.pool_size for dim in input_shape[2:4]):
            raise ValueError(f"{self.name}: expected {self.pool_size}x{self.pool_size} RoI features "
                             f"(pool_size), got shape {tuple(input_shape)}")
        shape = (None,) + tuple(input_shape[2:])
        self.class_conv1.build(shape)
        shape = self.class_conv1.compute_output_shape(shape)
        self.class_bn1.build(shape)
        self.class_conv2.build(shape)
        self.class_bn2.build(shape)
        flat = (None, self.fc_layers_size)
        self.class_logits.build(flat)
        self.bbox_fc.build(flat)

    def conv_batchnorm_pairs(self) -> list[tuple[keras.layers.Conv2D, keras.layers.Layer]]:
        """(mrcnn_class_conv<i>, mrcnn_class_bn<i>) with HEAD_NORM "bn", for folding; [] otherwise."""
        return [(self.class_conv1, self.class_bn1), (self.class_conv2, self.class_bn2)] if self.norm == "bn" else []

    def call(self, pooled: tf.Tensor, training: bool | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        x, (batch, rois) = fold_rois(pooled, self.name)
        x = keras.ops.relu(self.class_bn1(_full_window_conv(self.class_conv1, x), training=training))
        x = keras.ops.relu(self.class_bn2(_full_window_conv(self.class_conv2, x), training=training))
        shared = tf.reshape(x, [-1, self.fc_layers_size])  # [B*N, 1, 1, F] -> [B*N, F]
        logits = tf.cast(self.class_logits(shared), tf.float32)
        bbox = tf.cast(self.bbox_fc(shared), tf.float32)
        logits = tf.reshape(logits, [batch, rois, self.num_classes])
        bbox = tf.reshape(bbox, [batch, rois, self.num_classes, 4])
        return logits, tf.nn.softmax(logits, axis=-1), bbox

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_classes=self.num_classes, pool_size=self.pool_size, fc_layers_size=self.fc_layers_size,
                      train_bn=self.train_bn, norm=self.norm)
        return config


@keras.saving.register_keras_serializable(package="mrcnn")
class MaskHead(keras.layers.Layer):
    """FCN mask head: 4 x (3x3 conv + norm + ReLU), 2x2 stride-2 deconv + ReLU, 1x1 conv to K sigmoids.

    One mask per class; the loss only looks at the ground-truth class's channel (the paper's
    decoupling of mask and class prediction).

    Args:
        num_classes: K, background included (the output channels; 1 for class-agnostic masks).
        conv_channels: channels of the four convolutions and the deconvolution (256).
        train_bn: see `mrcnn.modeling.backbone.BatchNorm`.
        norm: "bn" (matterport), "gn" or "none" (Config.HEAD_NORM; see `make_head_norm`).
        activation: "sigmoid" (default: an independent probability per channel) or "softmax"
            (over the K channels per pixel: Config.MASK_LOSS = "softmax" ablation).

    Call:
        pooled: [B, N, m, m, C] RoI features (m = MASK_POOL_SIZE).
        class_ids: optional [B, N] int: return only each RoI's class channel (inference on the
            detections, whose class is known). With the sigmoid activation the final 1x1 conv
            then computes that channel alone (K times fewer of its multiply-adds).
        Returns masks [B, N, 2m, 2m, K] ([B, N, 2m, 2m, 1] with class_ids), probabilities in
        [0, 1], float32.
    """

    def __init__(self, num_classes: int, conv_channels: int = 256, train_bn: bool | None = False,
                 norm: str = "bn", activation: str = "sigmoid", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.conv_channels = int(conv_channels)
        self.train_bn = train_bn
        self.norm = norm
        self.activation = check_mask_activation(activation)
        self.convs = [keras.layers.Conv2D(self.conv_channels, 3, padding="same", name=f"mrcnn_mask_conv{i}")
                      for i in range(1, 5)]
        self.bns = [make_head_norm(norm, train_bn, f"mrcnn_mask_bn{i}") for i in range(1, 5)]
        self.deconv = keras.layers.Conv2DTranspose(self.conv_channels, 2, strides=2, activation="relu",
                                                   name="mrcnn_mask_deconv")
        # Keras' "softmax" activation normalizes over the last (channel) axis: per pixel over K.
        self.mask = ClassMaskConv(self.num_classes, 1, activation=self.activation, name="mrcnn_mask")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 5:
            raise ValueError(f"{self.name}: expected [B, N, m, m, C], got shape {tuple(input_shape)}")
        shape = (None,) + tuple(input_shape[2:])
        for conv, bn in zip(self.convs, self.bns):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            bn.build(shape)
        self.deconv.build(shape)
        self.mask.build(self.deconv.compute_output_shape(shape))

    def conv_batchnorm_pairs(self) -> list[tuple[keras.layers.Conv2D, keras.layers.Layer]]:
        """(mrcnn_mask_conv<i>, mrcnn_mask_bn<i>) with HEAD_NORM "bn", for folding; [] otherwise."""
        return list(zip(self.convs, self.bns)) if self.norm == "bn" else []

    def call(self, pooled: tf.Tensor, training: bool | None = None, class_ids: tf.Tensor | None = None
             ) -> tf.Tensor:
        x, (batch, rois) = fold_rois(pooled, self.name)
        for conv, bn in zip(self.convs, self.bns):
            x = keras.ops.relu(bn(conv(x), training=training))
        x = upsample_deconv(self.deconv, x)
        if class_ids is None or self.num_classes == 1:
            return unfold_rois(tf.cast(self.mask(x), tf.float32), [batch, rois])
        if self.activation != "sigmoid":  # a softmax over K needs every channel
            return select_class_masks(unfold_rois(tf.cast(self.mask(x), tf.float32), [batch, rois]), class_ids)
        # Each RoI's class channel alone (a per-pixel sigmoid does not need the others).
        masks = self.mask(x, channels=tf.reshape(class_ids, [-1]))  # [B*N, 2m, 2m]
        return unfold_rois(tf.cast(masks, tf.float32)[..., None], [batch, rois])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_classes=self.num_classes, conv_channels=self.conv_channels, train_bn=self.train_bn,
                      norm=self.norm, activation=self.activation)
        return config


def make_mask_head(head_type: str, num_classes: int, mask_size: int = 28, train_bn: bool | None = False,
                   norm: str = "bn", activation: str = "sigmoid", name: str = "mask_head") -> keras.layers.Layer:
    """The mask head of a Config's mask-branch ablation switches (the model reads the Config).

    Args:
        head_type: "fcn" (`MaskHead`, matterport's layer names) or "mlp" (`MLPMaskHead`)
            (Config.MASK_HEAD_TYPE).
        num_classes: output channels: NUM_CLASSES, or 1 for class-agnostic masks.
        mask_size: output side (MASK_SHAPE; the FCN head's is twice its input, fixed by the layers).
        train_bn, norm: the FCN head's normalization (the MLP head has none).
        activation: "sigmoid" or "softmax" (Config.MASK_LOSS).
        name: the layer name.
    """
    if head_type == "fcn":
        return MaskHead(num_classes, train_bn=train_bn, norm=norm, activation=activation, name=name)
    if head_type == "mlp":
        return MLPMaskHead(num_classes, mask_size=mask_size, activation=activation, name=name)
    raise ValueError(f"mask head type must be 'fcn' or 'mlp', got {head_type!r}")


@keras.saving.register_keras_serializable(package="mrcnn")
class MLPMaskHead(keras.layers.Layer):
    """The paper's MLP mask head (Table 2e ablation): fc -> fc -> fc to K masks of 2m x 2m.

    Flattens each RoI's m x m x C features, then mrcnn_mask_fc1 (fc_size, ReLU) -> mrcnn_mask_fc2
    (fc_size, ReLU) -> mrcnn_mask (K * 2m * 2m), reshaped to [2m, 2m, K] per RoI. No normalization
    (the paper's MLP). Unlike the FCN head it has no spatial weight sharing: every output pixel
    has its own weights over the whole RoI, which is what the paper shows costs 2.1 AP.

    Args:
        num_classes: K, background included (1 for class-agnostic masks).
        mask_size: output side 2m (MASK_SHAPE, 28).
        fc_size: width of the two hidden fc layers (the paper's 1024).
        activation: "sigmoid" or "softmax" (over the K channels per pixel), as `MaskHead`.

    Call:
        pooled: [B, N, m, m, C] RoI features.
        Returns masks [B, N, mask_size, mask_size, K], probabilities in [0, 1], float32.
    """

    def __init__(self, num_classes: int, mask_size: int = 28, fc_size: int = 1024, activation: str = "sigmoid",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        if int(mask_size) < 1 or int(fc_size) < 1:
            raise ValueError(f"mask_size and fc_size must be positive, got {mask_size!r} and {fc_size!r}")
        self.num_classes = int(num_classes)
        self.mask_size = int(mask_size)
        self.fc_size = int(fc_size)
        self.activation = check_mask_activation(activation)
        self.fc1 = keras.layers.Dense(self.fc_size, activation="relu", name="mrcnn_mask_fc1")
        self.fc2 = keras.layers.Dense(self.fc_size, activation="relu", name="mrcnn_mask_fc2")
        self.mask = keras.layers.Dense(self.mask_size * self.mask_size * self.num_classes, dtype="float32",
                                       name="mrcnn_mask")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 5 or any(dim is None for dim in input_shape[2:]):
            raise ValueError(f"{self.name}: expected [B, N, m, m, C] with static m and C, got shape "
                             f"{tuple(input_shape)}")
        flat = int(input_shape[2]) * int(input_shape[3]) * int(input_shape[4])
        self.fc1.build((None, flat))
        self.fc2.build((None, self.fc_size))
        self.mask.build((None, self.fc_size))

    def call(self, pooled: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x, (batch, rois) = fold_rois(pooled, self.name)
        x = tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]])  # row-major flatten of [m, m, C]
        logits = tf.cast(self.mask(self.fc2(self.fc1(x))), tf.float32)
        logits = tf.reshape(logits, [batch, rois, self.mask_size, self.mask_size, self.num_classes])
        if self.activation == "softmax":
            return tf.nn.softmax(logits, axis=-1)
        return tf.sigmoid(logits)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_classes=self.num_classes, mask_size=self.mask_size, fc_size=self.fc_size,
                      activation=self.activation)
        return config
