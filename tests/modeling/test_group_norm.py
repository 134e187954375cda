"""mrcnn.modeling.group_norm.GroupNormalization against a NumPy reference and Keras' own layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.modeling.group_norm import GroupNormalization


def group_norm_reference(x: np.ndarray, groups: int, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """Slow float64 GroupNorm: each sample's groups of channels normalized over all their values."""
    x = x.astype(np.float64)
    out = np.empty_like(x)
    per_group = x.shape[-1] // groups
    for b in range(x.shape[0]):
        for g in range(groups):
            channels = slice(g * per_group, (g + 1) * per_group)
            values = x[b, ..., channels]
            mean = values.mean()
            variance = ((values - mean) ** 2).mean()
            out[b, ..., channels] = (values - mean) / np.sqrt(variance + epsilon)
    return out * gamma + beta


def _layers(shape: tuple[int, ...], groups: int, dtype: str = "float32", seed: int = 0, **kwargs
            ) -> tuple[GroupNormalization, keras.layers.GroupNormalization]:
    """Ours and Keras' layer, built on `shape` with the same random gamma and beta."""
    ours = GroupNormalization(groups, epsilon=1e-5, dtype=dtype, **kwargs)
    theirs = keras.layers.GroupNormalization(groups, epsilon=1e-5, dtype=dtype, **kwargs)
    rng = np.random.default_rng(seed)
    for layer in (ours, theirs):
        layer.build(shape)
    for name in ("gamma", "beta"):
        if getattr(ours, name, None) is not None:
            size = getattr(ours, name).shape
            value = rng.uniform(0.5, 1.5, size) if name == "gamma" else rng.normal(size=size)
            getattr(ours, name).assign(value)
            getattr(theirs, name).assign(value)
    return ours, theirs


@pytest.mark.parametrize("shape,groups", [((3, 5, 4, 16), 4), ((6, 1, 1, 32), 8), ((4, 16), 2), ((2, 3, 8), 8)])
def test_matches_numpy_reference_and_keras(shape: tuple[int, ...], groups: int) -> None:
    ours, theirs = _layers(shape, groups)
    x = np.random.default_rng(1).normal(2.0, 3.0, size=shape).astype(np.float32)
    expected = group_norm_reference(x, groups, ours.gamma.numpy(), ours.beta.numpy(), 1e-5)
    got = ours(x).numpy()
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-5)
    np.testing.assert_allclose(got, theirs(x).numpy(), atol=2e-5)


def test_large_mean_small_spread_keeps_the_variance() -> None:
    # mean 1000, spread 0.01: E[x^2] - mean^2 in float32 would lose the variance entirely.
    ours, _ = _layers((2, 4, 4, 8), 2, center=False, scale=False)
    x = 1000.0 + np.random.default_rng(2).normal(0.0, 0.01, size=(2, 4, 4, 8)).astype(np.float32)
    expected = group_norm_reference(x, 2, np.ones(8), np.zeros(8), 1e-5)
    np.testing.assert_allclose(ours(x).numpy(), expected, atol=0.02)  # float32 x keeps ~6e-5 of 1000
    assert ours(x).numpy().std() > 0.9  # spread 0.01 against epsilon 1e-5: std 0.95, not collapsed to 0


@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_without_center_or_scale(center: bool, scale: bool) -> None:
    ours, theirs = _layers((2, 3, 3, 8), 4, center=center, scale=scale)
    x = np.random.default_rng(3).normal(size=(2, 3, 3, 8)).astype(np.float32)
    np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), atol=2e-5)
    assert len(ours.weights) == len(theirs.weights)


def test_another_axis_falls_back_to_keras() -> None:
    ours, theirs = _layers((2, 8, 3, 3), 4, axis=1)
    x = np.random.default_rng(4).normal(size=(2, 8, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), atol=1e-6)


def test_float64_gradients_match_numerical_and_keras() -> None:
    ours, theirs = _layers((2, 3, 2, 8), 4, dtype="float64")
    x = tf.constant(np.random.default_rng(5).normal(size=(2, 3, 2, 8)))
    theoretical, numerical = tf.test.compute_gradient(lambda t: ours(t), [x])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)
    upstream = tf.constant(np.random.default_rng(6).normal(size=(2, 3, 2, 8)))
    grads = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * upstream)
        grads.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
    for mine, keras_grad in zip(*grads):
        np.testing.assert_allclose(mine.numpy(), keras_grad.numpy(), atol=1e-10)


def test_mixed_bfloat16_matches_keras() -> None:
    ours, theirs = _layers((4, 5, 5, 16), 4, dtype="mixed_bfloat16")
    x = np.random.default_rng(7).normal(1.0, 2.0, size=(4, 5, 5, 16)).astype(np.float32)
    got, expected = ours(x), theirs(x)
    assert got.dtype == tf.bfloat16
    # Both compute in float32 and round once to bfloat16: equal up to one bfloat16 step.
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), tf.cast(expected, tf.float32).numpy(),
                               rtol=2 ** -7, atol=1e-2)


def test_unknown_batch_and_spatial_dimensions() -> None:
    ours, theirs = _layers((2, 6, 6, 8), 2)
    graph = tf.function(ours.__call__, input_signature=[tf.TensorSpec([None, None, None, 8], tf.float32)])
    for shape in [(1, 3, 5, 8), (3, 6, 2, 8)]:
        x = np.random.default_rng(8).normal(size=shape).astype(np.float32)
        np.testing.assert_allclose(graph(x).numpy(), theirs(x).numpy(), atol=2e-5)


def test_weight_files_are_interchangeable_with_keras_layer(tmp_path) -> None:
    def model(norm: type) -> keras.Model:
        inputs = keras.Input((4, 4, 8))
        return keras.Model(inputs, norm(2, name="mrcnn_mask_gn1")(keras.layers.Conv2D(8, 1)(inputs)))

    x = np.random.default_rng(9).normal(size=(2, 4, 4, 8)).astype(np.float32)
    keras_model, our_model = model(keras.layers.GroupNormalization), model(GroupNormalization)
    for variable in keras_model.weights:
        variable.assign(np.random.default_rng(10).normal(size=variable.shape))
    keras_model.save_weights(tmp_path / "keras.weights.h5")
    our_model.load_weights(tmp_path / "keras.weights.h5")  # a file Keras' layer wrote
    np.testing.assert_allclose(our_model(x).numpy(), keras_model(x).numpy(), atol=2e-5)
    our_model.save_weights(tmp_path / "ours.weights.h5")
    fresh = model(keras.layers.GroupNormalization)
    fresh.load_weights(tmp_path / "ours.weights.h5")
    np.testing.assert_allclose(fresh(x).numpy(), keras_model(x).numpy(), atol=2e-5)


def test_config_round_trip_keeps_the_class() -> None:
    layer = GroupNormalization(4, epsilon=1e-3, name="mrcnn_class_gn1")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is GroupNormalization
    assert (restored.groups, restored.epsilon, restored.name) == (4, 1e-3, "mrcnn_class_gn1")
