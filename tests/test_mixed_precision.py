"""Config.MIXED_PRECISION: the model built under a Keras mixed policy (mrcnn/model.py)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import utils
from mrcnn.config import Config
from mrcnn.data.generator import DataGenerator
from mrcnn.freezing import freeze
from mrcnn.model import MaskRCNN
from tests.test_model import TinyConfig, _set_trained_like_batchnorms, _shapes


class Float32Config(TinyConfig):
    DETECTION_MIN_CONFIDENCE = 0.5


class BFloat16Config(Float32Config):
    MIXED_PRECISION = "mixed_bfloat16"


class Float16Config(Float32Config):
    MIXED_PRECISION = "mixed_float16"


def _layers_by_name(model: MaskRCNN) -> dict[str, keras.layers.Layer]:
    return {layer.name: layer for layer in model._flatten_layers(include_self=False)}


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    return DataGenerator(_shapes(2, seed=1), Float32Config(), shuffle=False, seed=0)[0]


def test_policy_reaches_convs_not_outputs_and_is_restored() -> None:
    before = keras.config.dtype_policy().name
    model = MaskRCNN("inference", BFloat16Config())
    model.ensure_built()
    assert keras.config.dtype_policy().name == before  # the global policy is put back
    layers = _layers_by_name(model)
    # The mask head's 1x1 output conv too: its logits are cast to float32 before the sigmoid.
    for name in ("conv1", "res2a_branch2a", "fpn_p2", "rpn_conv_shared", "mrcnn_mask_conv1", "mrcnn_mask"):
        assert layers[name].compute_dtype == "bfloat16", name
    # Logits and box deltas are computed in float32: losses and NMS never see bfloat16. (The RPN's
    # two-class softmax reads the difference of two logits, which bfloat16 rounding would swamp.)
    for name in ("rpn_class_raw", "rpn_bbox_pred", "mrcnn_class_logits", "mrcnn_bbox_fc"):
        assert layers[name].compute_dtype == "float32", name
    assert {v.dtype for v in model.weights} == {"float32"}  # variables stay float32 (same weight files)
    outputs = model.run_graph([np.zeros((64, 64, 3), np.uint8)], ["P2", "rpn_class", "detections", "mrcnn_mask"])
    for name in ("P2", "rpn_class", "detections", "mrcnn_mask"):  # run_graph widens bfloat16 maps for numpy
        assert outputs[name].dtype == np.float32, name


def test_bfloat16_fit_step_matches_float32_loss_and_moves_weights(batch) -> None:
    keras.utils.set_random_seed(0)
    reference = MaskRCNN("training", Float32Config())
    reference.ensure_built()
    model = MaskRCNN("training", BFloat16Config())
    model.ensure_built()
    model.set_weights(reference.get_weights())
    for m in (reference, model):
        m.set_trainable(".*")
        m.compile(learning_rate=0.01)
    loss32 = reference.test_on_batch(batch, return_dict=True)
    loss16 = model.test_on_batch(batch, return_dict=True)
    assert all(np.isfinite(value) for value in loss16.values()), loss16
    # The RPN losses are a deterministic function of the weights (the heads' depend on RoIs that
    # DetectionTargetLayer samples at random): the same weights give nearly the same values.
    for name in ("rpn_class_loss", "rpn_bbox_loss"):
        assert loss16[name] == pytest.approx(loss32[name], rel=0.05, abs=0.01), name
    before = [v.numpy().copy() for v in model.trainable_variables]
    history = model.fit(DataGenerator(_shapes(2, seed=1), Float32Config(), shuffle=False),
                        steps_per_epoch=1, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert all(moved), f"{moved.count(False)} variables did not move"


def test_bfloat16_detect_agrees_with_float32() -> None:
    keras.utils.set_random_seed(0)
    reference = MaskRCNN("inference", Float32Config())
    reference.ensure_built()
    # An untrained box head calls everything background; a bias towards class 1 gives detections.
    logits = reference.box_head.class_logits
    kernel, bias = logits.get_weights()
    bias[:] = [0.0, 4.0, 0.0, 0.0]
    logits.set_weights([kernel, bias])
    model = MaskRCNN("inference", BFloat16Config())
    model.ensure_built()
    model.set_weights(reference.get_weights())
    dataset = _shapes(3, seed=7)
    images = [dataset.load_image(i) for i in dataset.image_ids]
    matched = total = 0
    for ours, theirs in zip(model.detect(images), reference.detect(images)):
        assert abs(len(ours["rois"]) - len(theirs["rois"])) <= 1
        total += len(theirs["rois"])
        if not len(ours["rois"]) or not len(theirs["rois"]):
            continue
        overlaps = utils.compute_overlaps(theirs["rois"].astype(np.float64), ours["rois"].astype(np.float64))
        best = overlaps.argmax(axis=1)
        good = overlaps.max(axis=1) >= 0.9
        matched += int(good.sum())
        np.testing.assert_allclose(ours["scores"][best[good]], theirs["scores"][good], atol=0.02)
        np.testing.assert_array_equal(ours["class_ids"][best[good]], theirs["class_ids"][good])
    assert total > 0
    # bfloat16 keeps 8 mantissa bits: near-tied proposals may swap; most boxes must coincide.
    assert matched / total >= 0.7, f"{matched}/{total} float32 detections matched"


def _model_with_batchnorm_statistics(config: Config) -> MaskRCNN:
    """Seeded random weights, with BatchNorm parameters far from the identity (as trained ones)."""
    keras.utils.set_random_seed(0)
    model = MaskRCNN("inference", config)
    model.ensure_built()
    _set_trained_like_batchnorms(model, gamma=(0.5, 1.5), shift=0.2, variance=(0.5, 2.0))
    return model


def _pyramid_function(model: MaskRCNN):
    """(images, metas) -> the pyramid levels and the RPN probabilities, a function to freeze."""
    def pyramid(images: tf.Tensor, image_metas: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = model({"input_image": images, "input_image_meta": image_metas}, training=False)
        return {name: outputs[name] for name in ("P2", "P3", "P4", "P5", "P6", "rpn_class")}
    return pyramid


def test_frozen_bfloat16_graph_matches_the_variables_to_bfloat16_rounding() -> None:
    # optimize_for_inference freezes the weights; with constants Grappler folds the bfloat16
    # weight casts and may fuse differently, so values may differ in the last bfloat16 bit
    # (2**-8 relative), not more. Feature maps are compared (detections of random weights tie).
    model = _model_with_batchnorm_statistics(BFloat16Config())
    molded, metas, _ = model.mold_inputs([_shapes(1, seed=7).load_image(0)])
    pyramid = _pyramid_function(model)
    signature = [tf.TensorSpec(molded.shape, tf.float32), tf.TensorSpec(metas.shape, tf.float32)]
    frozen = freeze(pyramid, signature, model.variables)
    assert not frozen.reads_variables()
    expected, got = tf.function(pyramid)(molded, metas), frozen(tf.constant(molded), tf.constant(metas))
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        want, have = want.numpy().astype(np.float32), got[name].numpy().astype(np.float32)
        assert np.abs(want).max() > 0, name
        # Pyramid levels: 2 bfloat16 steps of the largest value. RPN probabilities: an RPN conv
        # over those features moved them by up to 0.02 here (bfloat16 against float32 scores
        # moves as much: test_bfloat16_detect_agrees_with_float32 allows 0.02).
        atol = 0.03 if name == "rpn_class" else 2 ** -6 * np.abs(want).max()
        np.testing.assert_allclose(have, want, rtol=0, atol=atol, err_msg=name)


def test_folded_bfloat16_graph_is_as_close_to_float32_as_the_variables() -> None:
    # Folding a BatchNorm rounds the scaled kernel W * s to bfloat16 where the variables' graph
    # rounds W and scales in float32: other rounding, so the reference is float32 with the same
    # weights. Measured here: the folded graph's error is 0.6-1.12x the variables' per level
    # (0.6x on the RPN probabilities); a wrong fold (e.g. s on the wrong axis) is off by O(1).
    model = _model_with_batchnorm_statistics(BFloat16Config())
    reference = MaskRCNN("inference", BFloat16Config().update(MIXED_PRECISION=None))
    reference.ensure_built()
    reference.set_weights(model.get_weights())
    molded, metas, _ = model.mold_inputs([_shapes(1, seed=7).load_image(0)])
    signature = [tf.TensorSpec(molded.shape, tf.float32), tf.TensorSpec(metas.shape, tf.float32)]
    folds = model.batchnorm_folds()
    assert folds
    folded = freeze(_pyramid_function(model), signature, model.variables, folds)
    exact = tf.function(_pyramid_function(reference))(molded, metas)
    variables = tf.function(_pyramid_function(model))(molded, metas)
    got = folded(tf.constant(molded), tf.constant(metas))
    for name, want in exact.items():
        want = want.numpy()
        error = np.abs(got[name].numpy().astype(np.float32) - want).max()
        variables_error = np.abs(variables[name].numpy().astype(np.float32) - want).max()
        assert error <= 1.5 * variables_error + 2 ** -8 * np.abs(want).max(), (name, error, variables_error)


def test_float16_without_a_gpu_warns_to_use_bfloat16() -> None:
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("the warning is for machines without a GPU")
    with pytest.warns(UserWarning, match="use 'mixed_bfloat16' on CPUs"):
        MaskRCNN("inference", Float16Config())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MaskRCNN("inference", BFloat16Config())


@pytest.mark.filterwarnings("ignore:MIXED_PRECISION 'mixed_float16' without a GPU")  # loss scaling, not speed
def test_float16_wraps_the_optimizer_in_loss_scaling(batch) -> None:
    model = MaskRCNN("training", Float16Config())
    model.ensure_built()
    model.set_trainable(".*")
    model.compile(learning_rate=0.01)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    logs = model.train_on_batch(batch, return_dict=True)
    assert np.isfinite(logs["loss"])
