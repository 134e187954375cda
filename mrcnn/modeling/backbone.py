"""ResNet-50/101 and ResNeXt-101 backbones (C2..C5) and the Feature Pyramid Network (P2..P6).

Every weight-bearing sublayer carries matterport/Mask_RCNN's layer name (``conv1``, ``bn_conv1``,
``res2a_branch2a``, ``bn2a_branch2a``, ..., ``fpn_c5p5``, ``fpn_p2``, ...), so that
``mask_rcnn_coco.h5`` and fchollet's ImageNet ResNet h5 files load by name through
:func:`mrcnn.weights.load_weights_by_name`. The sublayers are attributes (or list items) of their
parent layer, so Keras tracks them and ``layer._flatten_layers()`` reaches every one of them.

Architecture (He et al., "Deep Residual Learning", as in the Caffe release and matterport):
stem 7x7/2 conv + BN + ReLU + 3x3/2 max-pool ("same" padding), then bottleneck stages with the
stride 2 on the first 1x1 convolution of the first block of stages 3-5 ("Caffe style"; torchvision
puts it on the 3x3 instead). Output strides: C2 4, C3 8, C4 16, C5 32; P6 64.

ResNeXt (Xie et al., "Aggregated Residual Transformations"; the paper's X-101-FPN): the same
stage layout as ResNet-101, bottlenecks whose 3x3 convolution is grouped (cardinality C groups of
d channels at stage 2, "C x d", the width doubling per stage: C * d * 2^(stage - 2); outputs
256 * 2^(stage - 2) as ResNet), and the stride on the 3x3 convolution (Detectron's and
torchvision's ResNeXt, STRIDE_1X1 = False), padded by one pixel on every side like Caffe/PyTorch.
Its layers carry the same names (res2a_branch2b, ...), so name-based selection (``set_trainable``,
``backbone_layer_names``) works unchanged; no ImageNet ResNeXt weights are bundled.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mrcnn.modeling.architecture import (  # noqa: F401  (re-exported: the backbone's public names)
    ARCHITECTURES,
    Architecture,
    architecture_to_config,
    get_architecture,
)
from mrcnn.ops.grouped_conv import GROUPED_CONV_IMPLS, grouped_conv2d

# The ResNets with published ImageNet weights (mrcnn.weights maps their layer names); ResNeXt has none.
STAGE_BLOCKS = {name: ARCHITECTURES[name].blocks for name in ("resnet50", "resnet101")}
BN_EPSILON = 1e-3  # Keras' default, as in matterport and fchollet's original ResNet50


def block_letter(index: int) -> str:
    """Block suffix used in layer names: 0 -> "a", 1 -> "b", ..., 22 -> "w" (ResNet-101 stage 4)."""
    if not 0 <= index < 26:
        raise ValueError(f"block index must be in [0, 26) to map to a letter, got {index}")
    return chr(ord("a") + index)


def backbone_layer_names(architecture: str | Architecture = "resnet50", stage5: bool = True) -> list[str]:
    """The weight-bearing layer names of `ResNet(architecture)`, in forward order.

    Args:
        architecture: a key of ARCHITECTURES ("resnet50", "resnet101", "resnext101_32x4d", ...;
            ResNeXt-101 has ResNet-101's names) or an `Architecture`.
        stage5: whether stage 5 is included.

    Returns:
        Names such as ["conv1", "bn_conv1", "res2a_branch2a", "bn2a_branch2a", ...].
    """
    spec = get_architecture(architecture)
    names = ["conv1", "bn_conv1"]
    blocks = spec.blocks if stage5 else spec.blocks[:3]
    for stage, count in zip(range(2, 6), blocks):
        for index in range(count):
            tag = f"{stage}{block_letter(index)}"
            for branch in ("2a", "2b", "2c"):
                names += [f"res{tag}_branch{branch}", f"bn{tag}_branch{branch}"]
            if index == 0:
                names += [f"res{tag}_branch1", f"bn{tag}_branch1"]
    return names


@keras.saving.register_keras_serializable(package="mrcnn")
class BatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization whose statistics are frozen unless `train_bn` is set.

    Mask R-CNN trains with small batches (1-2 images per GPU), too small for batch statistics, so
    matterport (TRAIN_BN=False) runs every BatchNorm in inference mode: the moving mean/variance
    from ImageNet are used and never updated. gamma/beta stay trainable (unless the trainer freezes
    the layer), exactly as in matterport.

    Args:
        train_bn: False (default): always inference mode, whatever `training` says. True or None:
            follow the `training` argument (batch statistics while training, moving statistics in
            inference). Unlike matterport, True does not force batch statistics at inference.
        **kwargs: passed to `keras.layers.BatchNormalization` (epsilon defaults to 1e-3).
    """

    def __init__(self, train_bn: bool | None = False, **kwargs: Any) -> None:
        kwargs.setdefault("epsilon", BN_EPSILON)
        super().__init__(**kwargs)
        self.train_bn = train_bn

    def call(self, inputs: tf.Tensor, training: bool | None = None, mask: Any = None) -> tf.Tensor:
        if self.train_bn is False:
            training = False
        # Keras uses the moving statistics unless training a trainable layer (a tensor-valued
        # `training` is left to Keras).
        uses_moving_statistics = training is None or training is False or not self.trainable
        if uses_moving_statistics and self._is_frozen_identity():
            return tf.cast(inputs, self.compute_dtype)  # folded into the convolution before it
        if uses_moving_statistics and mask is None and self._fusable(inputs):
            return self._frozen_fused(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _is_frozen_identity(self) -> bool:
        """Whether gamma, beta and the moving statistics are constants (a graph frozen by
        `mrcnn.freezing.freeze`) that make this BatchNorm the identity, as `batchnorm_fold` leaves
        it after folding it into the convolution before it. Read variables are not constants."""
        if not (self.center and self.scale) or self.renorm:
            return False
        values = []
        for variable in (self.gamma, self.beta, self.moving_mean, self.moving_variance):
            value = variable.value  # the mapped tensor inside a StatelessScope, else the variable
            static = tf.get_static_value(value) if isinstance(value, tf.Tensor) else None
            if static is None:
                return False
            values.append(np.asarray(static, np.float32))
        gamma, beta, mean, variance = values
        scale = gamma / np.sqrt(variance + np.float32(self.epsilon))  # float32, as the kernel computes
        return bool(np.all(scale == 1) and np.all(beta - mean * scale == 0))

    def _fusable(self, inputs: tf.Tensor) -> bool:
        """Whether `_frozen_fused` computes exactly what Keras' own call would: a channels-last
        BatchNorm with gamma and beta, no renormalization, on floating inputs."""
        rank = inputs.shape.rank
        if inputs.dtype == tf.bfloat16 and tf.config.list_logical_devices("GPU"):
            # TensorFlow's GPU FusedBatchNormV3 kernels take float32 and float16 only; bfloat16
            # ones exist on the CPU (oneDNN).
            return False
        return (rank is not None and rank >= 2 and self.axis in (-1, rank - 1) and self.center and self.scale
                and not self.renorm and inputs.dtype in (tf.float32, tf.bfloat16, tf.float16))

    def _frozen_fused(self, inputs: tf.Tensor) -> tf.Tensor:
        """BatchNorm with the moving statistics as one fused kernel (forward and gradient).

        Keras computes a frozen BatchNorm as separate ops in float32: a cast of the (bfloat16)
        input, a multiply and an add over the whole tensor, a cast back, and for the gamma/beta
        gradients another multiply and two reductions. FusedBatchNormV3 with is_training=False
        does the same affine transform (y = (x - mean) / sqrt(var + eps) * gamma + beta, float32
        arithmetic inside) and its gradient in one pass each, and reads bfloat16 directly: 2.2x
        faster than Keras' ops for a conv's [2, 128, 128, 256] output in bfloat16, forward plus
        backward, on one CPU core. gamma and beta still receive gradients, as in Keras.

        Args:
            inputs: [..., C] channels-last features (any rank >= 2), float32/bfloat16/float16.
        Returns:
            [..., C] normalized features, the input's dtype.
        """
        channels = inputs.shape[-1]
        # The fused kernel takes NHWC; the transform is per channel, so any [..., C] folds to 4-D.
        x = inputs if inputs.shape.rank == 4 else tf.reshape(inputs, [1, 1, -1, channels])
        outputs = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=tf.cast(self.gamma, tf.float32), offset=tf.cast(self.beta, tf.float32),
            mean=tf.cast(self.moving_mean, tf.float32), variance=tf.cast(self.moving_variance, tf.float32),
            epsilon=self.epsilon, is_training=False, data_format="NHWC")[0]
        if inputs.shape.rank != 4:
            outputs = tf.reshape(outputs, tf.shape(inputs))
        return tf.cast(outputs, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["train_bn"] = self.train_bn
        return config


@keras.saving.register_keras_serializable(package="mrcnn")
class BottleneckBlock(keras.layers.Layer):
    """One ResNet / ResNeXt bottleneck block: 1x1 -> 3x3 -> 1x1 convolutions plus a shortcut.

    The sublayers are named res{stage}{block}_branch2a/2b/2c and bn{stage}{block}_branch2a/2b/2c;
    a block with `conv_shortcut` (matterport's "conv_block", the first of each stage) also has
    res{stage}{block}_branch1 / bn{stage}{block}_branch1 on the shortcut. `strides` applies to the
    shortcut convolution and to the first 1x1 convolution (Caffe style, `stride_in_1x1`) or to the
    3x3 one (ResNeXt). A strided 3x3 pads one pixel on every side (Caffe/PyTorch), not Keras'
    asymmetric "same"; the output size is the same, ceil(H / strides).

    Args:
        stage: stage number, 2..5.
        block: block letter, "a", "b", ...
        filters: (f1, f2, f3) output channels of the three convolutions.
        strides: stride of the block (on the first 1x1 or the 3x3, and on the shortcut).
        conv_shortcut: projection shortcut (needed when channels or resolution change).
        train_bn: see `BatchNorm`.
        bn_epsilon: BatchNorm epsilon.
        groups: groups of the 3x3 convolution (ResNeXt's cardinality; f1 and f2 must divide by it).
        stride_in_1x1: put the stride on the first 1x1 convolution (True, Caffe ResNet) or on the 3x3.
        grouped_conv: how a grouped 3x3 is computed, see `mrcnn.ops.grouped_conv.grouped_conv2d`
            ("auto", "native", "split"); the weights are the same in every case.

    Call:
        inputs: [B, H, W, C] -> [B, ceil(H / strides), ceil(W / strides), f3].
    """

    def __init__(self, stage: int, block: str, filters: tuple[int, int, int] | list[int], strides: int = 1,
                 conv_shortcut: bool = False, train_bn: bool | None = False, bn_epsilon: float = BN_EPSILON,
                 groups: int = 1, stride_in_1x1: bool = True, grouped_conv: str = "auto", **kwargs: Any) -> None:
        kwargs.setdefault("name", f"res{stage}{block}")
        super().__init__(**kwargs)
        if len(filters) != 3:
            raise ValueError(f"filters must have 3 values (1x1, 3x3, 1x1), got {filters!r}")
        if int(groups) < 1 or filters[0] % int(groups) or filters[1] % int(groups):
            raise ValueError(f"groups must be >= 1 and divide the 3x3 convolution's channels {tuple(filters[:2])}, "
                             f"got {groups!r}")
        if grouped_conv not in GROUPED_CONV_IMPLS:
            raise ValueError(f"grouped_conv must be one of {GROUPED_CONV_IMPLS}, got {grouped_conv!r}")
        self.stage = int(stage)
        self.block = str(block)
        self.filters = tuple(int(f) for f in filters)
        self.strides = int(strides)
        self.conv_shortcut = bool(conv_shortcut)
        self.train_bn = train_bn
        self.bn_epsilon = float(bn_epsilon)
        self.groups = int(groups)
        self.stride_in_1x1 = bool(stride_in_1x1)
        self.grouped_conv = grouped_conv
        f1, f2, f3 = self.filters
        tag = f"{stage}{block}"
        stride_1x1, stride_3x3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
        self.conv2a = keras.layers.Conv2D(f1, 1, strides=stride_1x1, use_bias=True, name=f"res{tag}_branch2a")
        self.bn2a = BatchNorm(train_bn, epsilon=self.bn_epsilon, name=f"bn{tag}_branch2a")
        # Stride 1: "same" is the symmetric 1-pixel pad. Strided: pad explicitly, as Caffe/PyTorch.
        self.pad2b = keras.layers.ZeroPadding2D(1, name=f"res{tag}_branch2b_pad") if stride_3x3 > 1 else None
        self.conv2b = keras.layers.Conv2D(f2, 3, strides=stride_3x3, padding="valid" if stride_3x3 > 1 else "same",
                                          groups=self.groups, use_bias=True, name=f"res{tag}_branch2b")
        self.bn2b = BatchNorm(train_bn, epsilon=self.bn_epsilon, name=f"bn{tag}_branch2b")
        self.conv2c = keras.layers.Conv2D(f3, 1, use_bias=True, name=f"res{tag}_branch2c")
        self.bn2c = BatchNorm(train_bn, epsilon=self.bn_epsilon, name=f"bn{tag}_branch2c")
        if self.conv_shortcut:
            self.conv1 = keras.layers.Conv2D(f3, 1, strides=self.strides, use_bias=True, name=f"res{tag}_branch1")
            self.bn1 = BatchNorm(train_bn, epsilon=self.bn_epsilon, name=f"bn{tag}_branch1")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] is None:
            raise ValueError(f"{self.name}: the channel dimension of the input must be known, got {input_shape}")
        if not self.conv_shortcut and input_shape[-1] != self.filters[2]:
            raise ValueError(
                f"{self.name}: an identity shortcut needs {self.filters[2]} input channels, got {input_shape[-1]}; "
                "use conv_shortcut=True")
        shape = tuple(input_shape)
        for conv, bn in ((self.conv2a, self.bn2a), (self.conv2b, self.bn2b), (self.conv2c, self.bn2c)):
            if conv is self.conv2b and self.pad2b is not None:
                shape = self.pad2b.compute_output_shape(shape)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            bn.build(shape)
        if self.conv_shortcut:
            self.conv1.build(tuple(input_shape))
            self.bn1.build(self.conv1.compute_output_shape(tuple(input_shape)))

    def conv_batchnorm_pairs(self) -> list[tuple[keras.layers.Conv2D, BatchNorm]]:
        """(convolution, the BatchNorm reading only its output) for each branch of the block, the
        pairs `optimize_for_inference` folds (`mrcnn.freezing.batchnorm_fold`)."""
        pairs = [(self.conv2a, self.bn2a), (self.conv2b, self.bn2b), (self.conv2c, self.bn2c)]
        return pairs + ([(self.conv1, self.bn1)] if self.conv_shortcut else [])

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = self.conv2a.compute_output_shape(tuple(input_shape))
        if self.pad2b is not None:
            shape = self.pad2b.compute_output_shape(shape)
        return self.conv2c.compute_output_shape(self.conv2b.compute_output_shape(shape))

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = keras.ops.relu(self.bn2a(self.conv2a(inputs), training=training))
        if self.pad2b is not None:
            x = self.pad2b(x)
        x = keras.ops.relu(self.bn2b(grouped_conv2d(self.conv2b, x, self.grouped_conv), training=training))
        x = self.bn2c(self.conv2c(x), training=training)
        shortcut = self.bn1(self.conv1(inputs), training=training) if self.conv_shortcut else inputs
        return keras.ops.relu(x + shortcut)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(stage=self.stage, block=self.block, filters=list(self.filters), strides=self.strides,
                      conv_shortcut=self.conv_shortcut, train_bn=self.train_bn, bn_epsilon=self.bn_epsilon,
                      groups=self.groups, stride_in_1x1=self.stride_in_1x1, grouped_conv=self.grouped_conv)
        return config


def make_stage(architecture: str | Architecture, stage: int, train_bn: bool | None = False,
               bn_epsilon: float = BN_EPSILON, grouped_conv: str = "auto") -> list[BottleneckBlock]:
    """The bottleneck blocks of one stage of `architecture`, with their matterport names.

    The first block has the projection shortcut and, for stages 3-5, stride 2. Used by `ResNet`
    and by the C4 box head, which runs stage 5 per RoI.

    Args:
        architecture: a key of ARCHITECTURES or an `Architecture`.
        stage: 2..5.
        train_bn, bn_epsilon, grouped_conv: see `BottleneckBlock`.

    Returns:
        [res{stage}a, res{stage}b, ...].
    """
    spec = get_architecture(architecture)
    if stage not in (2, 3, 4, 5):
        raise ValueError(f"stage must be 2, 3, 4 or 5, got {stage!r}")
    return [BottleneckBlock(stage, block_letter(index), spec.filters(stage),
                            strides=1 if (stage == 2 or index > 0) else 2, conv_shortcut=index == 0,
                            train_bn=train_bn, bn_epsilon=bn_epsilon, groups=spec.cardinality,
                            stride_in_1x1=spec.stride_in_1x1, grouped_conv=grouped_conv)
            for index in range(spec.blocks[stage - 2])]


@keras.saving.register_keras_serializable(package="mrcnn")
class ResNet(keras.layers.Layer):
    """ResNet-50/101 / ResNeXt-101 feature extractor with matterport's layer names.

    Args:
        architecture: a key of ARCHITECTURES: "resnet50" (stage 4 blocks a..f), "resnet101" (stage 4
            blocks a..w), "resnext101_32x4d" or "resnext101_64x4d" (ResNet-101's layout and names,
            grouped 3x3 convolutions, see the module docstring); or a custom `Architecture`.
        train_bn: see `BatchNorm`; False (matterport's default) freezes the BN statistics.
        stage5: build stage 5 (C5). Without it, C5 is returned as None (matterport's option; the
            C4 model runs stage 5 per RoI in its box head instead).
        bn_epsilon: BatchNorm epsilon. 1e-3 (Keras' default) is what matterport and fchollet's
            ImageNet h5 use; keras.applications' ResNet uses 1.001e-5.
        grouped_conv: how ResNeXt's grouped 3x3 convolutions are computed ("auto", "native",
            "split"; `mrcnn.ops.grouped_conv`). No effect on ResNet.

    Call:
        images: [B, H, W, 3] float, molded (mean pixel subtracted).
        Returns [C2, C3, C4, C5] with strides 4, 8, 16, 32 and 256, 512, 1024, 2048 channels;
        e.g. a 64x64 input gives 16x16, 8x8, 4x4, 2x2 maps.

    Attributes:
        conv1, bn_conv1, pool: the stem layers (ZeroPadding 3 is applied in `call`).
        blocks: every `BottleneckBlock`, in forward order; `stages` groups them per stage.
    """

    def __init__(self, architecture: str | Architecture = "resnet50", train_bn: bool | None = False,
                 stage5: bool = True, bn_epsilon: float = BN_EPSILON, grouped_conv: str = "auto",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        get_architecture(architecture)  # raises for an unknown name
        self.architecture = architecture if isinstance(architecture, str) else get_architecture(architecture)
        self.train_bn = train_bn
        self.stage5 = bool(stage5)
        self.bn_epsilon = float(bn_epsilon)
        self.grouped_conv = grouped_conv
        self.conv1_pad = keras.layers.ZeroPadding2D(3, name="conv1_pad")
        self.conv1 = keras.layers.Conv2D(64, 7, strides=2, padding="valid", use_bias=True, name="conv1")
        self.bn_conv1 = BatchNorm(train_bn, epsilon=self.bn_epsilon, name="bn_conv1")
        # "same" padding (asymmetric: extra row/column at the end) as in matterport; keras.applications
        # pads 1 on both sides and pools "valid", which shifts the pooling grid by one pixel.
        self.pool = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")
        stages = [make_stage(architecture, stage, train_bn, self.bn_epsilon, grouped_conv)
                  for stage in ((2, 3, 4, 5) if self.stage5 else (2, 3, 4))]
        self._stage_sizes = tuple(len(blocks) for blocks in stages)
        # A flat list: Keras tracks the layers of a list attribute.
        self.blocks = [block for blocks in stages for block in blocks]

    @property
    def stages(self) -> list[list[BottleneckBlock]]:
        """The blocks grouped per stage: [[res2a, res2b, res2c], [res3a, ...], ...]."""
        out, start = [], 0
        for size in self._stage_sizes:
            out.append(list(self.blocks[start:start + size]))
            start += size
        return out

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: expected images [B, H, W, C], got shape {input_shape}")
        shape = self.conv1_pad.compute_output_shape(tuple(input_shape))
        self.conv1.build(shape)
        shape = self.conv1.compute_output_shape(shape)
        self.bn_conv1.build(shape)
        shape = self.pool.compute_output_shape(shape)
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)

    def conv_batchnorm_pairs(self) -> list[tuple[keras.layers.Conv2D, BatchNorm]]:
        """The stem's (conv1, bn_conv1), for folding (the blocks declare their own pairs)."""
        return [(self.conv1, self.bn_conv1)]

    def call_stem(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """conv1 + bn_conv1 + ReLU + max-pool: [B, H, W, 3] -> [B, H/4, W/4, 64]."""
        x = self.conv1(self.conv1_pad(images))
        x = keras.ops.relu(self.bn_conv1(x, training=training))
        return self.pool(x)

    def call_stages(self, x: tf.Tensor, training: bool | None = None) -> list[tf.Tensor | None]:
        """Stages 2-5 on the stem output: [B, h, w, 64] -> [C2, C3, C4, C5] (C5 None without stage 5)."""
        outputs: list[tf.Tensor | None] = []
        for stage in self.stages:
            for block in stage:
                x = block(x, training=training)
            outputs.append(x)
        if not self.stage5:
            outputs.append(None)
        return outputs

    def call(self, images: tf.Tensor, training: bool | None = None) -> list[tf.Tensor | None]:
        return self.call_stages(self.call_stem(images, training=training), training=training)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(architecture=architecture_to_config(self.architecture), train_bn=self.train_bn,
                      stage5=self.stage5, bn_epsilon=self.bn_epsilon, grouped_conv=self.grouped_conv)
        return config


def _crop_like(x: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
    """Crops x [B, H, W, C] to reference's H, W.

    Needed when a finer level has an odd size (the coarser one is its ceil / 2, so upsampling gives
    one row/column too many). Skipped when the static shapes already agree, which keeps them static.
    """
    if x.shape[1] is not None and x.shape[1] == reference.shape[1] and x.shape[2] == reference.shape[2]:
        return x
    return x[:, :tf.shape(reference)[1], :tf.shape(reference)[2], :]


@keras.saving.register_keras_serializable(package="mrcnn")
class FPN(keras.layers.Layer):
    """Feature Pyramid Network top-down path (Lin et al.), matterport's layer names.

    P5 = fpn_c5p5(C5); P4 = up2(P5) + fpn_c4p4(C4); P3 = up2(P4) + fpn_c3p3(C3);
    P2 = up2(P3) + fpn_c2p2(C2); then a 3x3 conv (fpn_p2..fpn_p5) on each, and P6 is a
    1x1 max-pool with stride 2 of P5 (subsampling, as in the FPN paper).

    Args:
        pyramid_size: channels of every P level (TOP_DOWN_PYRAMID_SIZE, 256).

    Call:
        inputs: [C2, C3, C4, C5], each [B, h_i, w_i, c_i] with h_i = ceil(h_{i-1} / 2).
        Returns [P2, P3, P4, P5, P6], each [B, h, w, pyramid_size], strides 4..64.
    """

    def __init__(self, pyramid_size: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pyramid_size = int(pyramid_size)
        size = self.pyramid_size
        # Lateral 1x1 convolutions, C5 first.
        self.lateral = [keras.layers.Conv2D(size, 1, name=f"fpn_c{i}p{i}") for i in (5, 4, 3, 2)]
        # 3x3 output convolutions, P5 first.
        self.output_convs = [keras.layers.Conv2D(size, 3, padding="same", name=f"fpn_p{i}") for i in (5, 4, 3, 2)]
        self.upsample = [keras.layers.UpSampling2D(2, interpolation="nearest", name=f"fpn_p{i}upsampled")
                         for i in (5, 4, 3)]
        self.p6_pool = keras.layers.MaxPooling2D(1, strides=2, name="fpn_p6")

    def build(self, input_shape: list[tuple[int | None, ...]]) -> None:
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: expected [C2, C3, C4, C5], got {len(input_shape)} inputs")
        shapes = [tuple(s) for s in reversed(input_shape)]  # C5, C4, C3, C2
        for lateral, out_conv, shape in zip(self.lateral, self.output_convs, shapes):
            lateral.build(shape)
            out_conv.build(lateral.compute_output_shape(shape))

    def call(self, inputs: list[tf.Tensor], training: bool | None = None) -> list[tf.Tensor]:
        if len(inputs) != 4 or any(c is None for c in inputs):
            raise ValueError(f"{self.name}: expected [C2, C3, C4, C5] tensors, got {inputs!r}")
        c_maps = list(reversed(inputs))  # C5, C4, C3, C2
        merged = [self.lateral[0](c_maps[0])]
        for lateral, upsample, c in zip(self.lateral[1:], self.upsample, c_maps[1:]):
            top_down = upsample(merged[-1])
            top_down = _crop_like(top_down, c)
            merged.append(top_down + lateral(c))
        p5, p4, p3, p2 = (conv(m) for conv, m in zip(self.output_convs, merged))
        return [p2, p3, p4, p5, self.p6_pool(p5)]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(pyramid_size=self.pyramid_size)
        return config
