"""Grouped 2-D convolution (ResNeXt's 3x3 convolutions) that trains on every TF device.

Why not just call ``keras.layers.Conv2D(groups=G)``: Keras 3's TensorFlow backend runs every
grouped convolution through an XLA-compiled function, because TF's CPU kernels only partly
support them. XLA's CPU backward pass of a grouped convolution is extremely slow. Measured with
TF 2.21 / Keras 3.15 on 2 shared CPU cores, input [2, 32, 32, 512], 3x3 kernel, 32 groups
(ResNeXt-101 32x4d stage 4), one step in a ``tf.function``:

    ========================  ============  =================
    implementation            forward       forward + grads
    ========================  ============  =================
    Keras Conv2D (XLA)        35-50 ms      6.2-7.9 s
    native tf.nn.convolution  3 ms          13 ms
    split (per-group convs)   9 ms          24 ms
    dense block-diagonal      65 ms         207 ms
    ========================  ============  =================

TF's native op (one ``Conv2D`` whose kernel has C_in / G input channels) computes grouped
convolutions and their gradients through oneDNN (float32 and bfloat16 on x86 CPUs, on by default)
and cuDNN (GPU). Without them -- float16 or float64 on a CPU, or ``TF_ENABLE_ONEDNN_OPTS=0`` --
the gradient fails ("Gradients for grouped convolutions are not supported on CPU"). Splitting the
channels into G groups, convolving each with its slice of the kernel and concatenating is the
same computation and works everywhere, at about twice the native cost on a CPU.

`grouped_conv2d` uses the native op where a probe shows that it and its gradient run (once per
device type and dtype, cached), else the split form. Both use the Conv2D layer's own kernel, so
the weights and their names are those of ``keras.layers.Conv2D(groups=G)``.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

GROUPED_CONV_IMPLS = ("auto", "native", "split")


@functools.cache
def native_grouped_conv_supported(device_type: str, dtype_name: str) -> bool:
    """Whether TF's native grouped convolution and its gradient run on `device_type` in `dtype_name`.

    A fact about the installed TF build and its environment (oneDNN, cuDNN), so it is cached.

    Args:
        device_type: "CPU" or "GPU".
        dtype_name: e.g. "float32", "bfloat16".
    """
    dtype = tf.as_dtype(dtype_name)
    # Outside any graph being traced, so that the probe really runs. Gradient tapes do not record
    # inside init_scope: the gradient's two ops are called directly instead.
    with tf.init_scope(), tf.device(f"/{device_type}:0"):
        x = tf.ones([1, 3, 3, 2], dtype)
        kernel = tf.ones([3, 3, 1, 2], dtype)  # 2 groups of 1 input channel
        strides = [1, 1, 1, 1]
        try:
            y = tf.nn.convolution(x, kernel, padding="SAME")
            tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel, out_backprop=y,
                                           strides=strides, padding="SAME")
            tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(kernel), out_backprop=y,
                                            strides=strides, padding="SAME")
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.NotFoundError):
            return False
    return True


def _device_type() -> str:
    """Where unplaced ops run: the first GPU if TF sees one, else the CPU."""
    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def resolve_impl(impl: str, dtype: tf.DType | str) -> str:
    """"native" or "split" for `impl` ("auto" probes the default device with `dtype`).

    Raises:
        ValueError: for an unknown `impl`.
    """
    if impl not in GROUPED_CONV_IMPLS:
        raise ValueError(f"grouped conv impl must be one of {GROUPED_CONV_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    return "native" if native_grouped_conv_supported(_device_type(), tf.as_dtype(dtype).name) else "split"


def grouped_conv2d(conv: keras.layers.Conv2D, x: tf.Tensor, impl: str = "auto") -> tf.Tensor:
    """Applies a built grouped ``Conv2D`` layer (its kernel, bias, strides, padding) to `x`.

    Same result as ``conv(x)`` (activation included), computed without Keras' XLA detour (see the
    module docstring). A layer with ``groups == 1`` is simply called.

    Args:
        conv: a built ``keras.layers.Conv2D`` with ``groups = G``, kernel [kh, kw, C / G, F],
            channels_last, dilation 1.
        x: [B, H, W, C] in the layer's compute dtype (or castable to it).
        impl: "auto" (native op where TF supports its gradient, else split), "native" or "split".

    Returns:
        [B, H', W', F], H' = ceil(H / stride) ("same") or ceil((H - kh + 1) / stride) ("valid").
    """
    groups = int(conv.groups)
    if groups == 1:
        return conv(x)
    if conv.data_format != "channels_last" or tuple(conv.dilation_rate) != (1, 1):
        raise ValueError(f"{conv.name}: grouped_conv2d supports channels_last, dilation 1 only")
    x = tf.cast(x, conv.compute_dtype)
    kernel = tf.cast(conv.kernel, x.dtype)
    strides = tuple(conv.strides)
    padding = conv.padding.upper()
    if resolve_impl(impl, x.dtype) == "native":
        y = tf.nn.convolution(x, kernel, strides=strides, padding=padding)
    else:
        # Group g: input channels [g*C/G, (g+1)*C/G) with output channels [g*F/G, (g+1)*F/G),
        # the layout of TF's (and Keras') grouped kernel [kh, kw, C/G, F].
        y = tf.concat([tf.nn.convolution(xg, kg, strides=strides, padding=padding)
                       for xg, kg in zip(tf.split(x, groups, axis=-1), tf.split(kernel, groups, axis=-1))],
                      axis=-1)
    if conv.use_bias:
        y = tf.nn.bias_add(y, tf.cast(conv.bias, y.dtype))
    if conv.activation is not None:
        y = conv.activation(y)
    return y
