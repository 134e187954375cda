"""The Mask R-CNN losses, one pure function each.

Every function returns a float32 scalar that stays finite (0) when the batch has no positive
anchor / RoI or no ground truth: means are ``sum / max(count, 1)``. Conventions follow matterport
(its weights were trained with them), with its NaN-on-empty cases and its image-0 quirk in the
class loss fixed:

* box losses are the mean over all coordinates of the positive rows (``mean`` of an [N, 4]
  smooth-L1 tensor), smooth L1 with beta = 1;
* the class losses average over the anchors / RoIs they apply to.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf

_BCE_EPSILON = 1e-7  # Keras' epsilon: clip probabilities so log() stays finite
_NORM_PARAMETER_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")


def _safe_mean(total: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """total / max(count, 1) as float32: 0 for an empty selection instead of NaN."""
    return tf.cast(total, tf.float32) / tf.maximum(tf.cast(count, tf.float32), 1.0)


def smooth_l1(diff: tf.Tensor) -> tf.Tensor:
    """Elementwise smooth L1 (Huber with beta = 1): 0.5 d^2 if |d| < 1 else |d| - 0.5."""
    absolute = tf.abs(diff)
    return tf.where(absolute < 1.0, 0.5 * tf.square(diff), absolute - 0.5)


def _squeeze_match(rpn_match: tf.Tensor) -> tf.Tensor:
    """[B, A, 1] or [B, A] -> [B, A] int32."""
    rpn_match = tf.convert_to_tensor(rpn_match)
    if rpn_match.shape.rank == 3:
        rpn_match = tf.squeeze(rpn_match, axis=-1)
    elif rpn_match.shape.rank != 2:
        raise ValueError(f"rpn_match must be [B, A, 1] or [B, A], got shape {rpn_match.shape}")
    return tf.cast(rpn_match, tf.int32)


def rpn_class_loss(rpn_match: tf.Tensor, rpn_class_logits: tf.Tensor) -> tf.Tensor:
    """RPN objectness loss: softmax cross-entropy over the non-neutral anchors.

    Args:
        rpn_match: [B, A, 1] int, 1 positive, -1 negative, 0 neutral (ignored).
        rpn_class_logits: [B, A, 2] logits (background, foreground).

    Returns:
        Scalar float32: mean cross-entropy over anchors with rpn_match != 0 (0 if there are none).
    """
    match = _squeeze_match(rpn_match)
    labels = tf.cast(tf.equal(match, 1), tf.int32)
    weights = tf.cast(tf.not_equal(match, 0), tf.float32)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.cast(rpn_class_logits, tf.float32))
    return _safe_mean(tf.reduce_sum(cross_entropy * weights), tf.reduce_sum(weights))


def rpn_bbox_loss(target_bbox: tf.Tensor, rpn_match: tf.Tensor, rpn_bbox: tf.Tensor,
                  images_per_gpu: int | None = None) -> tf.Tensor:
    """RPN box-regression loss: smooth L1 on positive anchors.

    The targets are packed: the positive anchors of image b, in anchor order, pair with rows
    0..n_b-1 of target_bbox[b] (what `targets.build_rpn_targets` writes; matterport's
    batch_pack_graph). Positives beyond the R target rows are ignored.

    Args:
        target_bbox: [B, R, 4] float deltas / RPN_BBOX_STD_DEV, zero padded.
        rpn_match: [B, A, 1] int, 1 marks positive anchors.
        rpn_bbox: [B, A, 4] predicted deltas.
        images_per_gpu: unused; accepted for matterport's signature (the batch size is read from
            the tensors).

    Returns:
        Scalar float32: mean smooth L1 over the 4 coordinates of every positive anchor (0 if none).
    """
    del images_per_gpu
    target_bbox = tf.cast(target_bbox, tf.float32)
    positive = tf.equal(_squeeze_match(rpn_match), 1)
    # Rank of each positive anchor among its image's positives = its target row.
    rank = tf.cumsum(tf.cast(positive, tf.int32), axis=1) - 1
    usable = tf.logical_and(positive, rank < tf.shape(target_bbox)[1])
    anchor_index = tf.where(usable)  # [P, 2] (image, anchor), int64
    rows = tf.gather_nd(rank, anchor_index)
    target = tf.gather_nd(target_bbox, tf.stack([tf.cast(anchor_index[:, 0], tf.int32), rows], axis=1))
    predicted = tf.gather_nd(tf.cast(rpn_bbox, tf.float32), anchor_index)
    loss = smooth_l1(target - predicted)
    return _safe_mean(tf.reduce_sum(loss), tf.size(loss))


def mrcnn_class_loss(target_class_ids: tf.Tensor, pred_class_logits: tf.Tensor,
                     active_class_ids: tf.Tensor, valid_rois: tf.Tensor | None = None) -> tf.Tensor:
    """Classifier loss over the sampled RoIs.

    With several datasets (sources) in one model, an image only knows the classes of its own
    source: RoIs whose *predicted* class is not active for the image are not penalised (their loss
    is dropped and they leave the mean), as in matterport. matterport looked at image 0's active
    classes for the whole batch; here each image uses its own.

    The zero rows that pad an image's RoIs up to T are not RoIs: with `valid_rois` they leave the
    mean too. matterport counted them as background examples (target 0 on an all-zero box): while
    the RPN finds few positives, hundreds of such rows outweighed the real RoIs' gradient.

    Args:
        target_class_ids: [B, T] int (0 = background, also for zero-padded RoIs).
        pred_class_logits: [B, T, K] logits.
        active_class_ids: [B, K], 1 for classes of the image's source, 0 otherwise.
        valid_rois: [B, T] bool, False for padding rows (`MaskRCNN.compute_losses` passes the
            rows whose RoI box is not all zeros); None counts every row (matterport).

    Returns:
        Scalar float32: mean cross-entropy over the real RoIs with an active predicted class (0 if none).
    """
    target = tf.cast(target_class_ids, tf.int32)
    logits = tf.cast(pred_class_logits, tf.float32)
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    weights = tf.gather(tf.cast(active_class_ids, tf.float32), predicted, batch_dims=1)  # [B, T]
    if valid_rois is not None:
        weights *= tf.cast(valid_rois, tf.float32)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)
    return _safe_mean(tf.reduce_sum(cross_entropy * weights), tf.reduce_sum(weights))


def mrcnn_bbox_loss(target_deltas: tf.Tensor, target_class_ids: tf.Tensor, pred_bbox: tf.Tensor) -> tf.Tensor:
    """Box refinement loss: smooth L1 on positive RoIs, for their ground-truth class only.

    Args:
        target_deltas: [B, T, 4] deltas / BBOX_STD_DEV.
        target_class_ids: [B, T] int, > 0 for positive RoIs.
        pred_bbox: [B, T, K, 4] per-class deltas.

    Returns:
        Scalar float32: mean smooth L1 over the 4 coordinates of the positive RoIs (0 if none).
    """
    class_ids = tf.cast(target_class_ids, tf.int32)
    roi_index = tf.where(class_ids > 0)  # [P, 2] (image, roi)
    positive_classes = tf.cast(tf.gather_nd(class_ids, roi_index), tf.int64)
    target = tf.gather_nd(tf.cast(target_deltas, tf.float32), roi_index)
    predicted = tf.gather_nd(tf.cast(pred_bbox, tf.float32),
                             tf.concat([roi_index, positive_classes[:, None]], axis=1))
    loss = smooth_l1(target - predicted)
    return _safe_mean(tf.reduce_sum(loss), tf.size(loss))


def _positive_mask_rows(target_masks: tf.Tensor, target_class_ids: tf.Tensor, pred_masks: tf.Tensor
                        ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The positive RoIs' (class ids [P], targets [P, h, w], predictions [P, h, w, K]), float32."""
    class_ids = tf.cast(target_class_ids, tf.int32)
    roi_index = tf.where(class_ids > 0)  # [P, 2]
    return (tf.gather_nd(class_ids, roi_index), tf.gather_nd(tf.cast(target_masks, tf.float32), roi_index),
            tf.gather_nd(tf.cast(pred_masks, tf.float32), roi_index))


def mrcnn_mask_loss(target_masks: tf.Tensor, target_class_ids: tf.Tensor, pred_masks: tf.Tensor,
                    from_logits: bool = False, class_agnostic: bool = False) -> tf.Tensor:
    """Mask loss: per-pixel binary cross-entropy on the ground-truth class's channel of positive RoIs.

    Only the mask of the RoI's ground-truth class k is penalised (the paper's decoupling: no
    competition between classes); negative RoIs have no mask loss.

    Args:
        target_masks: [B, T, h, w] float in [0, 1].
        target_class_ids: [B, T] int, > 0 for positive RoIs.
        pred_masks: [B, T, h, w, K] probabilities (the head's sigmoid), or logits with from_logits;
            [B, T, h, w, 1] with class_agnostic.
        from_logits: pred_masks are logits (numerically safer); default False (matterport's head).
        class_agnostic: one mask channel shared by all classes (Config.MASK_CLASS_AGNOSTIC): every
            positive RoI reads channel 0.

    Returns:
        Scalar float32: mean binary cross-entropy over the pixels of the positive RoIs (0 if none).
    """
    if class_agnostic and pred_masks.shape[-1] not in (None, 1):
        raise ValueError(f"class_agnostic mask loss expects 1 mask channel, got pred_masks shape {pred_masks.shape}")
    positive_classes, target, predicted = _positive_mask_rows(target_masks, target_class_ids, pred_masks)
    if class_agnostic:
        predicted = predicted[..., 0]  # [P, h, w]
    else:
        predicted = tf.gather(predicted, positive_classes, axis=3, batch_dims=1)  # [P, h, w]
    if from_logits:
        loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=predicted)
    else:
        probability = tf.clip_by_value(predicted, _BCE_EPSILON, 1.0 - _BCE_EPSILON)
        loss = -(target * tf.math.log(probability) + (1.0 - target) * tf.math.log(1.0 - probability))
    return _safe_mean(tf.reduce_sum(loss), tf.size(loss))


def mrcnn_mask_softmax_loss(target_masks: tf.Tensor, target_class_ids: tf.Tensor, pred_masks: tf.Tensor
                            ) -> tf.Tensor:
    """The paper's "softmax" ablation (Table 2b): a multinomial per-pixel loss over the K mask channels.

    As in FCN semantic segmentation, each pixel of a positive RoI of ground-truth class k is a
    K-way classification over the mask channels (channel 0 = background): the target is class k
    where the mask target is 1 and background where it is 0. With a target value t in [0, 1] the
    pixel's loss is the cross-entropy against (t at k, 1 - t at 0):
    ``-(t log p_k + (1 - t) log p_0)``; the classes compete for every pixel, which is what the
    paper shows costs 5.5 AP. Negative RoIs have no mask loss.

    Args:
        target_masks: [B, T, h, w] float in [0, 1] (DetectionTargetLayer gives {0, 1}).
        target_class_ids: [B, T] int, > 0 for positive RoIs.
        pred_masks: [B, T, h, w, K] probabilities of a softmax over the K channels (the mask head
            with activation "softmax"); K >= 2.

    Returns:
        Scalar float32: mean cross-entropy over the pixels of the positive RoIs (0 if none).
    """
    if pred_masks.shape[-1] is not None and pred_masks.shape[-1] < 2:
        raise ValueError("the softmax mask loss needs K >= 2 channels (background + classes), got pred_masks "
                         f"shape {pred_masks.shape}")
    positive_classes, target, predicted = _positive_mask_rows(target_masks, target_class_ids, pred_masks)
    # Clip as the sigmoid loss does: log() of a saturated softmax stays finite.
    predicted = tf.clip_by_value(predicted, _BCE_EPSILON, 1.0)
    own_class = tf.gather(predicted, positive_classes, axis=3, batch_dims=1)  # [P, h, w]
    background = predicted[..., 0]
    loss = -(target * tf.math.log(own_class) + (1.0 - target) * tf.math.log(background))
    return _safe_mean(tf.reduce_sum(loss), tf.size(loss))


def _variable_short_name(variable: tf.Variable) -> str:
    # Keras 3 variables are named "kernel"; TF/Keras 2 ones "layer/kernel:0".
    return str(variable.name).split("/")[-1].split(":")[0]


def l2_weight_decay(variables: Iterable[tf.Variable], weight_decay: float,
                    per_element_normalized: bool = False) -> tf.Tensor:
    """L2 regularisation of the weights, BatchNorm/GroupNorm parameters excluded.

    Variables named gamma, beta, moving_mean or moving_variance are skipped (normalisation
    parameters are not decayed); kernels and biases are (as matterport does, and detectron with
    its default WEIGHT_DECAY_BIAS). Pass the trainable variables.

    Args:
        variables: the variables to regularise.
        weight_decay: the coefficient (WEIGHT_DECAY, 1e-4).
        per_element_normalized: False (default): ``weight_decay * sum(w^2) / 2`` summed over the
            variables, the plain L2 whose gradient is ``weight_decay * w`` (the paper's weight
            decay). True: matterport's quirk ``weight_decay * sum(w^2) / size(w)`` per variable,
            which makes the decay of a variable inversely proportional to its size (much weaker
            than intended for large kernels); use it only to reproduce matterport's training.

    Returns:
        Scalar float32 (0 when no variable qualifies).
    """
    terms = []
    for variable in variables:
        if _variable_short_name(variable) in _NORM_PARAMETER_NAMES:
            continue
        value = tf.cast(tf.convert_to_tensor(variable), tf.float32)
        # sum(w^2) / 2 as one op (L2Loss), whose gradient is one multiply: cheaper than
        # square + sum over the ~45M weights of a ResNet-50-FPN every step.
        half_squares = tf.nn.l2_loss(value)
        if per_element_normalized:
            terms.append(2.0 * half_squares / tf.cast(tf.size(value), tf.float32))
        else:
            terms.append(half_squares)
    if not terms:
        return tf.constant(0.0, tf.float32)
    return tf.cast(weight_decay, tf.float32) * tf.add_n(terms)


def mrcnn_keypoint_loss(target_labels: tf.Tensor, target_weights: tf.Tensor, pred_logits: tf.Tensor) -> tf.Tensor:
    """Keypoint loss (Keypoint R-CNN): cross-entropy of an m^2-way softmax per labelled keypoint.

    Each keypoint's heatmap is one softmax over its m x m positions, trained towards the one-hot
    target cell; keypoints with weight 0 (not labelled, outside the RoI, negative RoI) are left
    out, and the mean is over the keypoints that count (Detectron normalizes by their number).

    Args:
        target_labels: [B, S, K] int cell index ``row * m + col`` (KeypointTargetLayer).
        target_weights: [B, S, K] float, 1 for keypoints that count, else 0.
        pred_logits: [B, S, m, m, K] heatmap logits (KeypointHead).

    Returns:
        Scalar float32: mean cross-entropy over the counted keypoints (0 if none).
    """
    logits = tf.cast(pred_logits, tf.float32)
    shape = tf.shape(logits)
    flat = tf.reshape(tf.transpose(logits, [0, 1, 4, 2, 3]), [shape[0], shape[1], shape[4], -1])  # [B, S, K, m*m]
    index = tf.where(tf.cast(target_weights, tf.float32) > 0)  # [P, 3] (image, roi, keypoint)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.gather_nd(tf.cast(target_labels, tf.int32), index), logits=tf.gather_nd(flat, index))
    return _safe_mean(tf.reduce_sum(loss), tf.size(loss))
