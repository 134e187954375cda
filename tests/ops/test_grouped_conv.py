"""grouped_conv2d: the same numbers as a direct NumPy grouped convolution, in every implementation,
and gradients that run (and agree) where Keras' own grouped Conv2D would take the XLA detour."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.ops.grouped_conv import GROUPED_CONV_IMPLS, grouped_conv2d, native_grouped_conv_supported, resolve_impl


def np_grouped_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, groups: int, stride: int,
                    pad: tuple[int, int]) -> np.ndarray:
    """Slow, obvious grouped convolution: x [B,H,W,C], kernel [k,k,C/G,F], pad (before, after) rows/cols."""
    x = np.pad(x, ((0, 0), pad, pad, (0, 0)))
    batch, height, width, _ = x.shape
    k, _, c_in, filters = kernel.shape
    f_per_group = filters // groups
    out_h, out_w = (height - k) // stride + 1, (width - k) // stride + 1
    out = np.zeros((batch, out_h, out_w, filters))
    for f in range(filters):
        g = f // f_per_group  # output channel f reads input channels [g*c_in, (g+1)*c_in)
        for i in range(out_h):
            for j in range(out_w):
                window = x[:, i * stride:i * stride + k, j * stride:j * stride + k, g * c_in:(g + 1) * c_in]
                out[:, i, j, f] = np.sum(window * kernel[:, :, :, f], axis=(1, 2, 3)) + bias[f]
    return out


def _layer(filters: int, groups: int, strides: int, padding: str, channels: int, dtype: str = "float32",
           seed: int = 0) -> keras.layers.Conv2D:
    conv = keras.layers.Conv2D(filters, 3, strides=strides, padding=padding, groups=groups, dtype=dtype,
                               bias_initializer=keras.initializers.RandomNormal(seed=seed + 1),
                               kernel_initializer=keras.initializers.RandomNormal(seed=seed))
    conv.build((None, None, None, channels))
    return conv


# "same" with stride 1 pads 1 on each side; with stride 2 on an even size TF pads (0, 1).
@pytest.mark.parametrize("strides, padding, pad", [(1, "same", (1, 1)), (2, "same", (0, 1)), (2, "valid", (0, 0))])
@pytest.mark.parametrize("impl", ["native", "split", "auto"])
def test_matches_numpy_reference(impl: str, strides: int, padding: str, pad: tuple[int, int]) -> None:
    if impl == "native" and not native_grouped_conv_supported("CPU", "float32"):
        pytest.skip("this TF build has no native grouped convolution on the CPU (no oneDNN)")
    conv = _layer(12, 4, strides, padding, channels=8)
    x = tf.random.stateless_normal([2, 6, 6, 8], seed=(3, 4))
    expected = np_grouped_conv(x.numpy(), conv.kernel.numpy(), conv.bias.numpy(), 4, strides, pad)
    got = grouped_conv2d(conv, x, impl).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_native_and_split_gradients_agree_in_a_graph() -> None:
    if not native_grouped_conv_supported("CPU", "float32"):
        pytest.skip("this TF build has no native grouped convolution on the CPU (no oneDNN)")
    conv = _layer(32, 8, 2, "valid", channels=16, seed=5)
    x = tf.random.stateless_normal([2, 9, 9, 16], seed=(5, 6))

    @tf.function
    def grads(x: tf.Tensor, impl: str) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.relu(grouped_conv2d(conv, x, impl))
            loss = tf.reduce_sum(y * tf.sin(y))
        return tape.gradient(loss, [x, conv.kernel, conv.bias])

    for native, split in zip(grads(x, "native"), grads(x, "split"), strict=True):
        scale = float(tf.reduce_max(tf.abs(split)))
        assert scale > 0
        np.testing.assert_allclose(native.numpy() / scale, split.numpy() / scale, atol=1e-5)


def _block_diagonal(kernel: tf.Tensor, groups: int) -> tf.Tensor:
    """Grouped kernel [k, k, C/G, F] -> the equivalent dense [k, k, C, F] (zero off the groups)."""
    k, _, c_in, filters = kernel.shape
    f_per_group = filters // groups
    blocks = [tf.pad(kernel[..., g * f_per_group:(g + 1) * f_per_group],
                     [[0, 0], [0, 0], [g * c_in, (groups - 1 - g) * c_in], [0, 0]]) for g in range(groups)]
    return tf.concat(blocks, axis=-1)


def test_float64_gradients() -> None:
    """float64 has no native grouped-conv gradient in TF's CPU kernels; "auto" must still train."""
    conv = _layer(6, 3, 1, "same", channels=6, dtype="float64", seed=7)
    x = tf.random.stateless_normal([1, 4, 4, 6], seed=(7, 8), dtype=tf.float64)
    # d/dx against finite differences.
    theoretical, numerical = tf.test.compute_gradient(lambda t: grouped_conv2d(conv, t, "auto"), [x])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-8)
    # d/dkernel against the dense convolution with the block-diagonal kernel (a plain conv gradient).
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(grouped_conv2d(conv, x, "auto") ** 2)
    grouped_grad = tape.gradient(loss, conv.kernel)
    dense = tf.Variable(_block_diagonal(conv.kernel, 3))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.nn.bias_add(tf.nn.conv2d(x, dense, 1, "SAME"), conv.bias) ** 2)
    dense_grad = tape.gradient(loss, dense)
    np.testing.assert_allclose(_block_diagonal(grouped_grad, 3).numpy(), dense_grad.numpy() *
                               (_block_diagonal(tf.ones_like(conv.kernel), 3).numpy()), atol=1e-9)


def test_groups_one_calls_the_layer_and_bad_impl() -> None:
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
    x = tf.random.stateless_normal([1, 5, 5, 2], seed=(1, 1))
    np.testing.assert_array_equal(grouped_conv2d(conv, x, "split").numpy(), conv(x).numpy())
    assert set(GROUPED_CONV_IMPLS) == {"auto", "native", "split"}
    assert resolve_impl("split", tf.float32) == "split"
    assert resolve_impl("auto", tf.float32) in ("native", "split")
    with pytest.raises(ValueError, match="xla"):
        resolve_impl("xla", tf.float32)
