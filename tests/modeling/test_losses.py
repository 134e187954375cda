"""Losses against NumPy computations on hand-built cases; finiteness without positives."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.modeling import losses

RNG = np.random.default_rng(0)


def np_smooth_l1(d: np.ndarray) -> np.ndarray:
    a = np.abs(d)
    return np.where(a < 1.0, 0.5 * d * d, a - 0.5)


def np_softmax_ce(logits: np.ndarray, label: int) -> float:
    logits = logits.astype(np.float64)
    return float(np.log(np.exp(logits).sum()) - logits[label])


def assert_finite_with_finite_gradient(fn, *tensors: np.ndarray) -> tf.Tensor:
    variables = [tf.Variable(t, dtype=tf.float32) if t.dtype.kind == "f" else tf.constant(t) for t in tensors]
    with tf.GradientTape() as tape:
        value = fn(*variables)
    grads = tape.gradient(value, [v for v in variables if isinstance(v, tf.Variable)])
    assert value.dtype == tf.float32 and value.shape == ()
    assert np.isfinite(value.numpy())
    for g in grads:
        if g is not None:
            assert np.all(np.isfinite(tf.convert_to_tensor(g).numpy()))
    return value


# ----------------------------------------------------------------------------------------------
def test_rpn_class_loss_matches_numpy() -> None:
    match = np.array([[1, -1, 0, 0, 1], [0, -1, -1, 0, 1]], np.int32)[..., None]
    logits = RNG.normal(size=(2, 5, 2)).astype(np.float32) * 3
    expected = [np_softmax_ce(logits[b, a], int(match[b, a, 0] == 1))
                for b in range(2) for a in range(5) if match[b, a, 0] != 0]
    value = losses.rpn_class_loss(tf.constant(match), tf.constant(logits))
    np.testing.assert_allclose(value.numpy(), np.mean(expected), rtol=1e-5)
    # Also accepts [B, A] matches.
    np.testing.assert_allclose(losses.rpn_class_loss(match[..., 0], logits).numpy(), np.mean(expected), rtol=1e-5)


def test_rpn_class_loss_all_neutral_is_zero() -> None:
    value = assert_finite_with_finite_gradient(losses.rpn_class_loss, np.zeros((2, 6, 1), np.int32),
                                               RNG.normal(size=(2, 6, 2)).astype(np.float32))
    assert value.numpy() == 0.0


def test_rpn_bbox_loss_pairs_positives_in_order_per_image() -> None:
    match = np.zeros((2, 7, 1), np.int32)
    match[0, [1, 4], 0] = 1
    match[1, [0, 2, 6], 0] = 1
    match[1, 3, 0] = -1
    targets = np.zeros((2, 4, 4), np.float32)
    targets[0, :2] = RNG.normal(size=(2, 4))
    targets[1, :3] = RNG.normal(size=(3, 4)) * 2
    pred = RNG.normal(size=(2, 7, 4)).astype(np.float32) * 2
    rows = []
    for b in range(2):
        positives = np.flatnonzero(match[b, :, 0] == 1)
        for row, anchor in enumerate(positives):
            rows.append(np_smooth_l1(targets[b, row] - pred[b, anchor]))
    expected = np.mean(rows)  # mean over all 4 coordinates of the 5 positives
    value = losses.rpn_bbox_loss(targets, match, pred)
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5)
    # A different pairing (e.g. global instead of per-image order) would give another number.
    shuffled = targets.copy()
    shuffled[1, [0, 1]] = shuffled[1, [1, 0]]
    assert not np.isclose(losses.rpn_bbox_loss(shuffled, match, pred).numpy(), expected)


def test_rpn_bbox_loss_ignores_positives_beyond_target_rows() -> None:
    match = np.zeros((1, 5, 1), np.int32)
    match[0, [0, 1, 2], 0] = 1
    targets = RNG.normal(size=(1, 2, 4)).astype(np.float32)
    pred = RNG.normal(size=(1, 5, 4)).astype(np.float32)
    expected = np.mean([np_smooth_l1(targets[0, i] - pred[0, i]) for i in range(2)])
    np.testing.assert_allclose(losses.rpn_bbox_loss(targets, match, pred).numpy(), expected, rtol=1e-5)


def test_rpn_bbox_loss_no_positive_is_zero() -> None:
    match = -np.ones((2, 6, 1), np.int32)
    value = assert_finite_with_finite_gradient(losses.rpn_bbox_loss, np.zeros((2, 3, 4), np.float32), match,
                                               RNG.normal(size=(2, 6, 4)).astype(np.float32))
    assert value.numpy() == 0.0


# ----------------------------------------------------------------------------------------------
def test_mrcnn_class_loss_matches_numpy_with_inactive_classes() -> None:
    target = np.array([[1, 0, 2, 0], [2, 1, 0, 0]], np.int32)
    logits = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    # Image 1's RoI 0 and 3 predict class 2, which image 1's source does not have.
    logits[1, 0] = [0.0, 0.5, 4.0]
    logits[1, 3] = [0.1, 0.0, 3.0]
    logits[1, 1] = [0.0, 3.0, 0.0]
    logits[1, 2] = [2.0, 0.0, 1.0]
    logits[0, 2] = [0.0, 0.0, 5.0]  # image 0 has class 2: penalised normally
    active = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
    terms = []
    for b in range(2):
        for t in range(4):
            if active[b, np.argmax(logits[b, t])]:
                terms.append(np_softmax_ce(logits[b, t], target[b, t]))
    assert len(terms) == 6
    value = losses.mrcnn_class_loss(target, logits, active)
    np.testing.assert_allclose(value.numpy(), np.mean(terms), rtol=1e-5)


def test_mrcnn_class_loss_leaves_padding_rows_out() -> None:
    # Image 0 has 2 real RoIs and 2 padding rows, image 1 one real RoI: the mean is over 3 terms.
    target = np.array([[1, 0, 0, 0], [2, 0, 0, 0]], np.int32)
    logits = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    valid = np.array([[True, True, False, False], [True, False, False, False]])
    terms = [np_softmax_ce(logits[b, t], target[b, t]) for b in range(2) for t in range(4) if valid[b, t]]
    value = losses.mrcnn_class_loss(target, logits, np.ones((2, 3), np.float32), valid_rois=valid)
    np.testing.assert_allclose(value.numpy(), np.mean(terms), rtol=1e-5)
    # Whatever the padding rows predict, the loss is the same.
    changed = logits.copy()
    changed[~valid] += RNG.normal(size=(5, 3)).astype(np.float32) * 10
    np.testing.assert_allclose(losses.mrcnn_class_loss(target, changed, np.ones((2, 3), np.float32),
                                                       valid_rois=valid).numpy(), value.numpy(), rtol=1e-6)
    none_valid = losses.mrcnn_class_loss(target, logits, np.ones((2, 3), np.float32), valid_rois=np.zeros((2, 4), bool))
    assert none_valid.numpy() == 0.0


def test_mrcnn_class_loss_finite_without_gt_or_active_classes() -> None:
    logits = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    value = assert_finite_with_finite_gradient(losses.mrcnn_class_loss, np.zeros((2, 4), np.int32), logits,
                                               np.ones((2, 3), np.float32))
    expected = np.mean([np_softmax_ce(logits[b, t], 0) for b in range(2) for t in range(4)])
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5)
    value = assert_finite_with_finite_gradient(losses.mrcnn_class_loss, np.zeros((2, 4), np.int32), logits,
                                               np.zeros((2, 3), np.float32))
    assert value.numpy() == 0.0


def test_mrcnn_bbox_loss_uses_true_class_of_positive_rois() -> None:
    target_ids = np.array([[2, 0, 1], [0, 0, 3]], np.int32)
    deltas = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    pred = RNG.normal(size=(2, 3, 4, 4)).astype(np.float32) * 2
    rows = [np_smooth_l1(deltas[b, t] - pred[b, t, target_ids[b, t]])
            for b in range(2) for t in range(3) if target_ids[b, t] > 0]
    value = losses.mrcnn_bbox_loss(deltas, target_ids, pred)
    np.testing.assert_allclose(value.numpy(), np.mean(rows), rtol=1e-5)
    # Another class's prediction and negative RoIs do not matter.
    changed = pred.copy()
    changed[0, 0, 1] += 10.0
    changed[0, 1] += 10.0
    np.testing.assert_allclose(losses.mrcnn_bbox_loss(deltas, target_ids, changed).numpy(), value.numpy(),
                               rtol=1e-6)


def test_mrcnn_bbox_loss_no_positive_is_zero() -> None:
    value = assert_finite_with_finite_gradient(losses.mrcnn_bbox_loss, RNG.normal(size=(2, 3, 4)).astype(np.float32),
                                               np.zeros((2, 3), np.int32),
                                               RNG.normal(size=(2, 3, 4, 4)).astype(np.float32))
    assert value.numpy() == 0.0


def _mask_case():
    target_ids = np.array([[1, 0, 2], [0, 2, 0]], np.int32)
    masks = (RNG.random((2, 3, 4, 4)) > 0.5).astype(np.float32)
    pred = RNG.uniform(0.05, 0.95, size=(2, 3, 4, 4, 3)).astype(np.float32)
    return target_ids, masks, pred


def test_mrcnn_mask_loss_matches_numpy() -> None:
    target_ids, masks, pred = _mask_case()
    pixels = []
    for b in range(2):
        for t in range(3):
            k = target_ids[b, t]
            if k > 0:
                p, y = pred[b, t, :, :, k].astype(np.float64), masks[b, t]
                pixels.append(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    expected = np.mean(pixels)
    value = losses.mrcnn_mask_loss(masks, target_ids, pred)
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5)
    logits = np.log(pred / (1 - pred))
    np.testing.assert_allclose(losses.mrcnn_mask_loss(masks, target_ids, logits, from_logits=True).numpy(),
                               expected, rtol=1e-4)


def test_mrcnn_mask_loss_only_uses_gt_class_channel() -> None:
    target_ids, masks, pred = _mask_case()
    base = losses.mrcnn_mask_loss(masks, target_ids, pred).numpy()
    changed = pred.copy()
    changed[0, 0, :, :, 0] = 0.999  # RoI (0, 0) is class 1: channels 0 and 2 are not its mask
    changed[0, 0, :, :, 2] = 0.001
    changed[1, 1, :, :, 1] = 0.5
    changed[0, 1] = 0.999  # a negative RoI
    np.testing.assert_allclose(losses.mrcnn_mask_loss(masks, target_ids, changed).numpy(), base, rtol=1e-6)
    changed[0, 0, :, :, 1] = 0.5  # its own channel does change the loss
    assert not np.isclose(losses.mrcnn_mask_loss(masks, target_ids, changed).numpy(), base)


def test_mrcnn_mask_loss_no_positive_is_zero() -> None:
    _, masks, pred = _mask_case()
    value = assert_finite_with_finite_gradient(losses.mrcnn_mask_loss, masks, np.zeros((2, 3), np.int32), pred)
    assert value.numpy() == 0.0


def test_mrcnn_mask_loss_saturated_predictions_are_finite() -> None:
    target_ids, masks, _ = _mask_case()
    pred = np.where(masks[..., None] > 0.5, 0.0, 1.0) * np.ones((1, 1, 1, 1, 3), np.float32)
    assert np.isfinite(losses.mrcnn_mask_loss(masks, target_ids, pred.astype(np.float32)).numpy())


# ----------------------------------------------------------------------------------------------
def test_l2_weight_decay_plain_and_matterport_quirk() -> None:
    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    bn = keras.layers.BatchNormalization()
    bn.build((None, 3))
    for v in dense.weights + bn.weights:
        v.assign(RNG.normal(size=v.shape).astype(np.float32))
    kernel, bias = dense.kernel.numpy(), dense.bias.numpy()
    variables = dense.weights + bn.weights
    plain = losses.l2_weight_decay(variables, 1e-2)
    np.testing.assert_allclose(plain.numpy(), 1e-2 * 0.5 * ((kernel ** 2).sum() + (bias ** 2).sum()), rtol=1e-5)
    quirk = losses.l2_weight_decay(variables, 1e-2, per_element_normalized=True)
    np.testing.assert_allclose(quirk.numpy(), 1e-2 * ((kernel ** 2).mean() + (bias ** 2).mean()), rtol=1e-5)
    # TF-style names ("bn/gamma:0") are recognised too.
    gamma = tf.Variable(np.ones(3, np.float32), name="bn/gamma")
    assert losses.l2_weight_decay([gamma], 1.0).numpy() == 0.0
    assert losses.l2_weight_decay([], 1.0).numpy() == 0.0


def test_losses_in_tf_function_with_unknown_shapes() -> None:
    """The losses trace once with unknown batch/anchor/RoI counts (model.fit's tf.function)."""
    f32, i32 = tf.float32, tf.int32

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, 1], i32), tf.TensorSpec([None, None, 2], f32), tf.TensorSpec([None, None, 4], f32),
        tf.TensorSpec([None, None, 4], f32), tf.TensorSpec([None, None], i32), tf.TensorSpec([None, None, None], f32),
        tf.TensorSpec([None, None], f32), tf.TensorSpec([None, None, 4], f32),
        tf.TensorSpec([None, None, None, 4], f32), tf.TensorSpec([None, None, None, None], f32),
        tf.TensorSpec([None, None, None, None, None], f32)])
    def all_losses(match, rpn_logits, rpn_targets, rpn_bbox, ids, logits, active, deltas, bbox, masks, pred_masks):
        return tf.stack([
            losses.rpn_class_loss(match, rpn_logits), losses.rpn_bbox_loss(rpn_targets, match, rpn_bbox),
            losses.mrcnn_class_loss(ids, logits, active), losses.mrcnn_bbox_loss(deltas, ids, bbox),
            losses.mrcnn_mask_loss(masks, ids, pred_masks)])

    ids, masks, pred_masks = _mask_case()
    args = [np.array([[[1], [0], [-1]], [[0], [1], [1]]], np.int32), RNG.normal(size=(2, 3, 2)),
            RNG.normal(size=(2, 2, 4)), RNG.normal(size=(2, 3, 4)), ids, RNG.normal(size=(2, 3, 3)),
            np.ones((2, 3)), RNG.normal(size=(2, 3, 4)), RNG.normal(size=(2, 3, 3, 4)), masks, pred_masks]
    args = [tf.constant(a, tf.int32 if a.dtype.kind == "i" else tf.float32) for a in args]
    graph = all_losses(*args).numpy()
    eager = all_losses.python_function(*args).numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-6)
    assert np.all(np.isfinite(graph)) and np.all(graph > 0)


# ------------------------------------------------------------------------------------------------
# Keypoint loss (Keypoint R-CNN)
def test_keypoint_loss_is_the_mean_softmax_ce_over_counted_keypoints():
    m, k = 5, 3
    logits = RNG.normal(size=(2, 4, m, m, k)).astype(np.float32)
    labels = RNG.integers(0, m * m, size=(2, 4, k)).astype(np.int32)
    weights = (RNG.random((2, 4, k)) > 0.5).astype(np.float32)
    weights[0, 0, 0] = 1.0
    expected = [np_softmax_ce(logits[b, r, :, :, j].reshape(-1), labels[b, r, j])
                for b, r, j in zip(*np.nonzero(weights))]
    loss = losses.mrcnn_keypoint_loss(labels, weights, logits)
    np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5)


def test_keypoint_loss_ignores_invisible_keypoints():
    m, k = 4, 2
    logits = tf.Variable(RNG.normal(size=(1, 2, m, m, k)).astype(np.float32))
    labels = np.array([[[3, 7], [1, 2]]], np.int32)
    weights = np.array([[[1, 0], [0, 0]]], np.float32)  # only keypoint 0 of RoI 0 counts
    with tf.GradientTape() as tape:
        loss = losses.mrcnn_keypoint_loss(labels, weights, logits)
    gradient = tape.gradient(loss, logits).numpy()
    assert np.abs(gradient[0, 0, :, :, 0]).sum() > 0
    gradient[0, 0, :, :, 0] = 0
    assert not gradient.any(), "an ignored keypoint got a gradient"
    # Whatever an ignored heatmap says, the loss is the same.
    changed = logits.numpy()
    changed[0, 0, :, :, 1] += 50 * RNG.normal(size=(m, m))
    changed[0, 1] = -changed[0, 1]
    np.testing.assert_allclose(float(losses.mrcnn_keypoint_loss(labels, weights, changed)), float(loss), rtol=1e-6)


def test_keypoint_loss_is_zero_without_counted_keypoints():
    loss = losses.mrcnn_keypoint_loss(np.zeros((1, 2, 3), np.int32), np.zeros((1, 2, 3), np.float32),
                                      np.ones((1, 2, 4, 4, 3), np.float32))
    assert float(loss) == 0.0


# ------------------------------------------------------------------------------------------------
# Mask-branch ablations (paper Table 2b: softmax vs sigmoid; class-agnostic masks)
def _softmax_ce_reference(target_ids: np.ndarray, masks: np.ndarray, logits: np.ndarray) -> float:
    """Slow reference: loop over RoIs and pixels; K-way softmax per pixel, target class k on the
    mask and background (0) off it, weighted by the (possibly soft) target t."""
    terms = []
    for b in range(target_ids.shape[0]):
        for r in range(target_ids.shape[1]):
            k = int(target_ids[b, r])
            if k <= 0:
                continue
            for y in range(masks.shape[2]):
                for x in range(masks.shape[3]):
                    z = logits[b, r, y, x].astype(np.float64)
                    log_p = z - np.log(np.exp(z).sum())
                    t = float(masks[b, r, y, x])
                    terms.append(-(t * log_p[k] + (1.0 - t) * log_p[0]))
    return float(np.mean(terms)) if terms else 0.0


def test_mrcnn_mask_softmax_loss_matches_a_slow_reference() -> None:
    target_ids = np.array([[2, 0, 1], [0, 1, 0]], np.int32)
    masks = np.zeros((2, 3, 3, 3), np.float32)
    masks[0, 0, 1:, 1:] = 1.0  # a 2x2 square in a 3x3 mask
    masks[0, 2, 0, :] = 1.0  # top row
    masks[1, 1, :, 0] = 1.0  # left column
    masks[1, 1, 2, 2] = 0.5  # a soft target value
    logits = RNG.normal(size=(2, 3, 3, 3, 3)).astype(np.float32) * 2
    probs = tf.nn.softmax(logits, axis=-1).numpy()
    value = losses.mrcnn_mask_softmax_loss(masks, target_ids, probs)
    np.testing.assert_allclose(value.numpy(), _softmax_ce_reference(target_ids, masks, logits), rtol=1e-5)
    # Unlike the sigmoid loss, the other classes' channels count (they share the softmax).
    other = logits.copy()
    other[0, 0, :, :, 1] += 3.0  # class 1 channel of a class-2 RoI
    changed = losses.mrcnn_mask_softmax_loss(masks, target_ids, tf.nn.softmax(other, axis=-1).numpy())
    np.testing.assert_allclose(changed.numpy(), _softmax_ce_reference(target_ids, masks, other), rtol=1e-5)
    assert changed.numpy() > value.numpy()


def test_mrcnn_mask_softmax_loss_no_positive_is_zero_and_saturation_is_finite() -> None:
    target_ids, masks, _ = _mask_case()
    probs = tf.nn.softmax(RNG.normal(size=(2, 3, 4, 4, 3)).astype(np.float32), axis=-1).numpy()
    value = assert_finite_with_finite_gradient(losses.mrcnn_mask_softmax_loss, masks, np.zeros((2, 3), np.int32), probs)
    assert value.numpy() == 0.0
    saturated = np.zeros((2, 3, 4, 4, 3), np.float32)
    saturated[..., 1] = 1.0  # all mass on class 1: log(0) for background and class 2 pixels
    assert_finite_with_finite_gradient(losses.mrcnn_mask_softmax_loss, masks, target_ids, saturated)
    with pytest.raises(ValueError, match="K >= 2"):
        losses.mrcnn_mask_softmax_loss(masks, target_ids, saturated[..., :1])


def test_class_agnostic_mask_loss_reads_channel_zero_for_every_class() -> None:
    target_ids, masks, pred = _mask_case()
    shared = pred[..., :1]
    value = losses.mrcnn_mask_loss(masks, target_ids, shared, class_agnostic=True)
    # The same as class-specific masks whose every channel is that one channel.
    repeated = np.repeat(shared, 3, axis=-1)
    np.testing.assert_allclose(value.numpy(), losses.mrcnn_mask_loss(masks, target_ids, repeated).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="1 mask channel"):
        losses.mrcnn_mask_loss(masks, target_ids, pred, class_agnostic=True)
