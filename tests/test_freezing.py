"""Tests for mrcnn/freezing.py: frozen graphs compute what the variables computed, without reading them."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.freezing import FrozenFunction, batchnorm_fold, freeze
from mrcnn.modeling.backbone import BatchNorm


class TwoHeads(keras.Model):
    """A conv trunk with a dict output holding a tuple: the nested structure freezing must keep."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.dense = keras.layers.Dense(3)

    def call(self, images: tf.Tensor, scale: tf.Tensor) -> dict:
        features = self.norm(self.conv(images), training=False)
        pooled = tf.reduce_mean(features, axis=[1, 2])
        return {"logits": self.dense(pooled) * scale[:, None], "maps": (features, pooled)}


@pytest.fixture()
def model() -> TwoHeads:
    keras.utils.set_random_seed(0)
    model = TwoHeads()
    model(tf.zeros((1, 8, 8, 2)), tf.ones((1,)))
    # Non-trivial BatchNorm statistics, so that folding them in would show if it went wrong.
    model.norm.moving_mean.assign(np.linspace(-0.5, 0.5, 4).astype(np.float32))
    model.norm.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype(np.float32))
    return model


def _signature(batch: int | None = None) -> list[tf.TensorSpec]:
    return [tf.TensorSpec((batch, 8, 8, 2), tf.float32), tf.TensorSpec((batch,), tf.float32)]


def _inputs(batch: int) -> tuple[tf.Tensor, tf.Tensor]:
    rng = np.random.default_rng(batch)
    return (tf.constant(rng.normal(size=(batch, 8, 8, 2)).astype(np.float32)),
            tf.constant(rng.uniform(0.5, 2.0, size=(batch,)).astype(np.float32)))


def test_frozen_outputs_equal_the_variables_outputs_in_the_same_structure(model):
    frozen = freeze(model, _signature(), model.variables)
    assert isinstance(frozen, FrozenFunction)
    for batch in (1, 3):  # the batch dimension was left free
        images, scale = _inputs(batch)
        expected, got = model(images, scale), frozen(images, scale)
        assert set(got) == {"logits", "maps"} and isinstance(got["maps"], tuple) and len(got["maps"]) == 2
        for want, have in zip(tf.nest.flatten(expected), tf.nest.flatten(got)):
            assert have.shape == want.shape
            np.testing.assert_allclose(have.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_frozen_graph_reads_no_variable_and_keeps_the_values_it_froze(model):
    frozen = freeze(model, _signature(), model.variables)
    assert not frozen.reads_variables()
    # The check can fail: variables left out of the mapping are still read.
    assert freeze(model, _signature(), model.dense.variables).reads_variables()
    images, scale = _inputs(2)
    before = frozen(images, scale)["logits"].numpy()
    model.dense.kernel.assign(model.dense.kernel.numpy() + 1.0)
    # The variables moved, the frozen graph did not: that is the documented contract.
    assert not np.allclose(model(images, scale)["logits"].numpy(), before)
    np.testing.assert_array_equal(frozen(images, scale)["logits"].numpy(), before)
    refrozen = freeze(model, _signature(), model.variables)
    np.testing.assert_allclose(refrozen(images, scale)["logits"].numpy(), model(images, scale)["logits"].numpy(),
                               rtol=1e-5, atol=1e-6)


def test_frozen_function_rejects_inputs_outside_its_signature(model):
    frozen = freeze(model, _signature(batch=2), model.variables)
    with pytest.raises(ValueError, match=r"argument 0: float32 \(3, 8, 8, 2\) does not match .* \(2, 8, 8, 2\)"):
        frozen(*_inputs(3))
    with pytest.raises(ValueError, match="argument 1: int32"):
        frozen(_inputs(2)[0], tf.constant([1, 2]))
    with pytest.raises(TypeError, match="takes 2 tensors, got 1"):
        frozen(_inputs(2)[0])


def _conv_batchnorm(groups: int = 1, use_bias: bool = True) -> tuple[keras.Model, keras.layers.Conv2D, BatchNorm]:
    """conv -> BatchNorm -> ReLU with a bias and statistics far from their initial values."""
    keras.utils.set_random_seed(groups)
    inputs = keras.Input((8, 8, 4))
    conv = keras.layers.Conv2D(6, 3, padding="same", groups=groups, use_bias=use_bias)
    norm = BatchNorm()
    model = keras.Model(inputs, keras.ops.relu(norm(conv(inputs))))
    rng = np.random.default_rng(groups)
    if use_bias:
        conv.bias.assign(rng.normal(0, 0.5, 6).astype(np.float32))
    norm.set_weights([rng.uniform(0.5, 1.5, 6), rng.normal(0, 0.5, 6), rng.normal(0, 0.5, 6), rng.uniform(0.3, 2, 6)])
    return model, conv, norm


def _batchnorm_ops(frozen: FrozenFunction) -> int:
    return sum("BatchNorm" in op for op in frozen.op_types())


@pytest.mark.parametrize("groups", [1, 2])
def test_batchnorm_fold_computes_conv_then_batchnorm_without_the_batchnorm(groups):
    model, conv, norm = _conv_batchnorm(groups)
    signature = [tf.TensorSpec((None, 8, 8, 4), tf.float32)]
    images = tf.constant(np.random.default_rng(3).normal(size=(2, 8, 8, 4)).astype(np.float32))
    folds = batchnorm_fold(conv, norm)
    assert len(folds) == 6
    folded = freeze(model, signature, model.variables, folds)
    np.testing.assert_allclose(folded(images).numpy(), model(images).numpy(), rtol=1e-5, atol=1e-5)
    assert _batchnorm_ops(folded) == 0  # the identity BatchNorm is skipped ...
    assert _batchnorm_ops(freeze(model, signature, model.variables)) == 1  # ... the real one is not
    # The variables are untouched: folding only changes what is frozen.
    assert not np.allclose(norm.moving_variance.numpy() + norm.epsilon, 1.0)


def test_batchnorm_fold_leaves_pairs_it_cannot_fold():
    _, conv, norm = _conv_batchnorm(use_bias=False)  # no bias to carry the shift
    assert batchnorm_fold(conv, norm) == []
    transpose = keras.layers.Conv2DTranspose(6, 2, strides=2)
    transpose.build((None, 4, 4, 4))
    assert batchnorm_fold(transpose, norm) == []
    _, conv, _ = _conv_batchnorm()
    group_norm = keras.layers.GroupNormalization(2)
    group_norm.build((None, 8, 8, 6))
    assert batchnorm_fold(conv, group_norm) == []


def test_freeze_rejects_overrides_it_cannot_apply(model):
    stranger = keras.Variable(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="not one of the variables to freeze"):
        freeze(model, _signature(), model.variables, [(stranger, np.ones(4))])
    with pytest.raises(ValueError, match=r"override for .* has shape \(3,\), the variable \(4,\)"):
        freeze(model, _signature(), model.variables, [(model.norm.gamma, np.ones(3))])
