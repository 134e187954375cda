"""The Mask R-CNN model: one Keras 3 `Model` subclass for training and inference.

    model = MaskRCNN(mode="training", config=config, model_dir="logs")
    model.train(train_ds, val_ds, learning_rate=config.LEARNING_RATE, epochs=10, layers="heads")
    results = model.detect([image])          # list of dicts: rois, class_ids, scores, masks

Graph (ARCHITECTURE.md): ResNet -> FPN -> shared RPN head over P2..P6 -> ProposalLayer ->
(training) DetectionTargetLayer -> PyramidROIAlign -> box head + mask head -> losses;
(inference) PyramidROIAlign -> box head -> DetectionLayer -> PyramidROIAlign -> mask head.
With Config.BACKBONE_TYPE = "c4" (the paper's ResNet-C4): ResNet to C4 -> RPN on C4 ->
ProposalLayer -> (DetectionTargetLayer) -> SingleLevelROIAlign from C4 -> res5 box head
(mrcnn.modeling.c4_heads) -> (DetectionLayer) -> mask head on the res5 features of the boxes.
`call()` picks the training graph when the inputs carry ground truth (``input_gt_class_ids``).
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import re
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mrcnn import distribute, molding, utils
from mrcnn.config import Config, is_scalar_of
from mrcnn.freezing import FrozenFunction, batchnorm_fold, freeze
from mrcnn.layers import DetectionLayer, DetectionTargetLayer, ProposalLayer, PyramidROIAlign, SingleLevelROIAlign
from mrcnn.layers.keypoint_target import KeypointTargetLayer
from mrcnn.modeling import losses as loss_fns
from mrcnn.modeling.backbone import FPN, ResNet, get_architecture
from mrcnn.modeling.c4_heads import C4BoxHead, C4MaskHead
from mrcnn.modeling.heads import BoxHead, MaskHead, make_mask_head, select_class_masks
from mrcnn.modeling.keypoint_head import KeypointHead, heatmaps_to_keypoints
from mrcnn.modeling.rpn import RPNHead
from mrcnn.ops.boxes import norm_boxes

LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss")
KEYPOINT_LOSS_NAME = "mrcnn_keypoint_loss"


def loss_names(config: Config) -> tuple[str, ...]:
    """The losses a model of `config` computes: LOSS_NAMES without the mask loss when MASK_HEAD is
    False, plus the keypoint loss with KEYPOINT_HEAD."""
    names = tuple(n for n in LOSS_NAMES if config.MASK_HEAD or n != "mrcnn_mask_loss")
    return names + ((KEYPOINT_LOSS_NAME,) if config.KEYPOINT_HEAD else ())

# Regular expressions over layer names selecting what `train(layers=...)` trains (matterport's sets).
_HEADS = r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)"
LAYER_REGEX = {
    "heads": _HEADS,
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "5+": r"(res5.*)|(bn5.*)|" + _HEADS,
    "all": ".*",
}
C4_STRIDE = 16  # the C4 model's one feature map (BACKBONE_STRIDES = [16])


def layer_regex(layers: str, config: Config) -> str:
    """The regex `train(layers=...)` uses: LAYER_REGEX[layers], or `layers` itself as a regex.

    In the C4 model res5 is the box head, so "heads" trains it too (= "5+").
    """
    if layers == "heads" and config.BACKBONE_TYPE == "c4":
        return LAYER_REGEX["5+"]
    return LAYER_REGEX.get(layers, layers)

# The data seed of a multi-worker run whose config has SEED None: the workers must share it.
MULTI_WORKER_DEFAULT_SEED = 0

# optimize_for_inference warns past this many frozen canvas sizes: each costs a freeze and memory
# (ResNet-50-FPN at 512 px: +1.8-1.9 GB bf16, +2.4-2.7 GB float32 RSS on the README's CPU host).
FROZEN_CANVASES_WARNING = 2

# Names `run_graph()` understands (see its docstring).
GRAPH_OUTPUTS = (
    "anchors", "C2", "C3", "C4", "C5", "P2", "P3", "P4", "P5", "P6",
    "rpn_class_logits", "rpn_class", "rpn_bbox", "proposals",
    "mrcnn_class", "mrcnn_bbox", "detections", "mrcnn_mask",
    "mrcnn_keypoints",  # with KEYPOINT_HEAD: [B, D, K, 3] (x, y normalized, score)
)


@keras.saving.register_keras_serializable(package="mrcnn")
class MaskRCNN(keras.Model):
    """Mask R-CNN built from a `Config`.

    Args:
        mode: "training" or "inference". Kept for matterport compatibility: one model serves both,
            the mode only sets the default of `detect`'s and `train`'s checks.
        config: the model's `Config` (subclass).
        model_dir: directory under which `train()` makes a log dir per run.

    Inputs (a dict, as `DataGenerator` yields; docs/interfaces.md):
        input_image [B,H,W,3] float32 molded; input_image_meta [B,META] float32; for training also
        input_rpn_match [B,A,1], input_rpn_bbox [B,R,4], input_gt_class_ids [B,G],
        input_gt_boxes [B,G,4] pixels, input_gt_masks [B,h,w,G] bool.
    """

    def __init__(self, mode: str | Config = "training", config: Config | None = None,
                 model_dir: str | os.PathLike = "logs", **kwargs: Any) -> None:
        if isinstance(mode, Config):  # MaskRCNN(config) positional
            mode, config = "training", mode
        if mode not in ("training", "inference"):
            raise ValueError(f"mode must be 'training' or 'inference', got {mode!r}")
        if not isinstance(config, Config):
            raise TypeError(f"config must be an mrcnn.Config instance, got {type(config).__name__}")
        super().__init__(name=kwargs.pop("name", "mask_rcnn"), **kwargs)
        config.validate()
        self.mode = mode
        self.config = config
        self.model_dir = str(model_dir)
        self.epoch = 0
        self.log_dir: str | None = None
        self.checkpoint_path: str | None = None
        self._new_run = False  # set_log_dir() for a new run: its folder is not claimed yet
        self.resumed_from: str | None = None  # set by train(): the checkpoint its stage resumed from
        self._anchor_cache: dict[tuple[int, int], np.ndarray] = {}
        self._traced_functions: dict[tuple[str, int, int], Any] = {}  # (function, molded H, W) -> traced
        self._constant_weights = False  # optimize_for_inference(): detect from frozen graphs
        self._fold_batchnorm = True  # ... with each BatchNorm folded into its convolution
        self._frozen_infer: dict[tuple[int, int], FrozenFunction] = {}  # molded (H, W) -> frozen graph
        # Sublayers create their own sublayers in __init__ and read the global dtype policy there:
        # building under Config.MIXED_PRECISION makes every conv/dense compute in half precision
        # (variables stay float32). The graph layers (proposals, targets, RoIAlign boxes,
        # detections) opt out with autocast=False, and the heads' output layers are float32.
        if config.MIXED_PRECISION == "mixed_float16" and not tf.config.list_logical_devices("GPU"):
            # TensorFlow's float16 CPU kernels are unvectorized Eigen loops, bfloat16 goes to oneDNN.
            warnings.warn("MIXED_PRECISION 'mixed_float16' without a GPU: TensorFlow's float16 convolutions "
                          "on CPU are very slow (the shapes demo's detect took 4.09 s per image against 0.055 s "
                          "in float32 and 0.047 s in 'mixed_bfloat16'); use 'mixed_bfloat16' on CPUs",
                          stacklevel=utils.user_stacklevel())
        with _dtype_policy(config.MIXED_PRECISION):
            self._build_layers()
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in ("loss",) + loss_names(config)}

    # ------------------------------------------------------------------------------------------
    # Graph
    def _build_layers(self) -> None:
        c = self.config
        train_bn = c.TRAIN_BN  # None: BatchNorm follows `training` (matterport); False: frozen
        # C4 (the paper's Fig. 4 left): no FPN, the RPN and the RoIs read C4, stage 5 is the box head.
        c4 = c.BACKBONE_TYPE == "c4"
        if callable(c.BACKBONE):
            self.backbone = c.BACKBONE()
        else:
            self.backbone = ResNet(c.BACKBONE, train_bn=train_bn, stage5=not c4, name="resnet")
        self.fpn = None if c4 else FPN(c.TOP_DOWN_PYRAMID_SIZE, name="fpn")
        # FPN: RPN_CONV_CHANNELS (matterport's 512) over the levels; C4: 1024 in and out (Detectron).
        rpn_depth = get_architecture(c.BACKBONE).filters(4)[2] if c4 else c.TOP_DOWN_PYRAMID_SIZE
        self.rpn = RPNHead(utils.rpn_anchors_per_location(c), c.RPN_ANCHOR_STRIDE, depth=rpn_depth,
                           conv_channels=rpn_depth if c4 else c.RPN_CONV_CHANNELS, name="rpn_model")
        self.proposal_training = ProposalLayer(c.POST_NMS_ROIS_TRAINING, c.RPN_NMS_THRESHOLD, c.PRE_NMS_LIMIT,
                                               c.RPN_BBOX_STD_DEV, name="ROI")
        self.proposal_inference = ProposalLayer(c.POST_NMS_ROIS_INFERENCE, c.RPN_NMS_THRESHOLD, c.PRE_NMS_LIMIT,
                                                c.RPN_BBOX_STD_DEV, name="ROI_inference")
        self.detection_target = DetectionTargetLayer(
            c.TRAIN_ROIS_PER_IMAGE, c.ROI_POSITIVE_RATIO, c.BBOX_STD_DEV, tuple(c.MASK_SHAPE),
            c.USE_MINI_MASK, add_gt_boxes=c.ADD_GT_TO_PROPOSALS, mask_targets=c.MASK_HEAD,
            fill_negatives=c.ROI_SAMPLING == "paper", name="proposal_targets")
        pooling = dict(pooling_mode=c.POOLING_MODE, sampling_ratio=c.ROI_ALIGN_SAMPLING_RATIO,
                       aligned=c.ROI_ALIGN_ALIGNED, level_mode=c.ROI_LEVEL_MODE)
        if c4:
            self._build_c4_heads()
        else:
            self.roi_align_classifier = PyramidROIAlign(c.POOL_SIZE, name="roi_align_classifier", **pooling)
            # MASK_HEAD = False (keypoint-only / boxes-only model): no mask branch at all.
            self.roi_align_mask = (PyramidROIAlign(c.MASK_POOL_SIZE, name="roi_align_mask", **pooling)
                                   if c.MASK_HEAD else None)
            self.box_head = BoxHead(c.NUM_CLASSES, c.POOL_SIZE, c.FPN_CLASSIF_FC_LAYERS_SIZE, train_bn=train_bn,
                                    norm=c.HEAD_NORM, name="box_head")
            # The paper's mask-branch ablations (Table 2): head type, class-agnostic, sigmoid/softmax.
            self.mask_head = (make_mask_head(c.MASK_HEAD_TYPE, 1 if c.MASK_CLASS_AGNOSTIC else c.NUM_CLASSES,
                                             int(c.MASK_SHAPE[0]), train_bn=train_bn, norm=c.HEAD_NORM,
                                             activation=c.MASK_LOSS, name="mask_head")
                              if c.MASK_HEAD else None)
        # Keypoint R-CNN branch (Config.KEYPOINT_HEAD): its own RoIAlign (14x14), head and targets.
        self.roi_align_keypoint = self.keypoint_head = self.keypoint_target = None
        if c.KEYPOINT_HEAD:
            self.roi_align_keypoint = PyramidROIAlign(c.KEYPOINT_POOL_SIZE, name="roi_align_keypoint", **pooling)
            self.keypoint_head = KeypointHead(c.NUM_KEYPOINTS, c.KEYPOINT_HEAD_NUM_CONVS, c.KEYPOINT_HEAD_CONV_CHANNELS,
                                              name="keypoint_head")
            self.keypoint_target = KeypointTargetLayer(int(c.KEYPOINT_MASK_SHAPE[0]), name="keypoint_targets")
        self.detection = DetectionLayer(c.DETECTION_MAX_INSTANCES, c.DETECTION_MIN_CONFIDENCE,
                                        c.DETECTION_NMS_THRESHOLD, c.BBOX_STD_DEV, name="mrcnn_detection")
        # One setting for every BatchNorm of the model (backbone and heads); Keras reads it at call time.
        for layer in self._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(c.BN_MOMENTUM)

    def _build_c4_heads(self) -> None:
        """The C4 model's RoI pooling (C4, stride 16) and its res5 box head and deconv mask head.

        One pooler serves both branches: the mask head reads the res5 output of its boxes
        (training: the box branch's own res5 output of the positive RoIs; inference: the
        detections, pooled and run through res5).
        """
        c = self.config
        self.roi_align_classifier = SingleLevelROIAlign(
            c.POOL_SIZE, C4_STRIDE, pooling_mode=c.POOLING_MODE, sampling_ratio=c.ROI_ALIGN_SAMPLING_RATIO,
            aligned=c.ROI_ALIGN_ALIGNED, name="roi_align_classifier")
        self.roi_align_mask = None
        self.box_head = C4BoxHead(c.NUM_CLASSES, c.BACKBONE, train_bn=c.TRAIN_BN, name="box_head")
        self.mask_head = (C4MaskHead(1 if c.MASK_CLASS_AGNOSTIC else c.NUM_CLASSES, activation=c.MASK_LOSS,
                                     name="mask_head")
                          if c.MASK_HEAD else None)

    def build(self, input_shape: Any = None) -> None:
        # Sublayers create their weights on the first call (`ensure_built`); nothing to do here.
        self.built = True

    def get_anchors(self, image_shape: Sequence[int]) -> np.ndarray:
        """Anchors for a molded image shape, normalized, cached per shape.

        Returns:
            [A, (y1, x1, y2, x2)] float32 normalized to the molded image, in the RPN's output order.
        """
        key = (int(image_shape[0]), int(image_shape[1]))
        if key not in self._anchor_cache:
            anchors = utils.generate_config_anchors(self.config, key)
            self._anchor_cache[key] = utils.norm_boxes(anchors, key).astype(np.float32)
        return self._anchor_cache[key]

    def _features(self, images: tf.Tensor, training: bool) -> dict[str, Any]:
        """Backbone, FPN and RPN over every level (C4 model: RPN on C4). Returns a dict of named tensors."""
        c_maps = self.backbone(images, training=training)
        # The RPN's levels: P2..P6, or C4 alone (no P maps, and no C5 on the image).
        p_maps = self.fpn(c_maps, training=training) if self.fpn is not None else []
        rpn_maps = p_maps or [c_maps[2]]
        level_outputs = [self.rpn(p, training=training) for p in rpn_maps]
        rpn_class_logits, rpn_class, rpn_bbox = (tf.concat(list(o), axis=1) for o in zip(*level_outputs))
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            raise ValueError("MaskRCNN needs a static image height and width to place its anchors; "
                             f"got input_image shape {images.shape}")
        anchors = tf.constant(self.get_anchors((height, width)))
        batch_anchors = tf.broadcast_to(anchors[None], [tf.shape(images)[0], anchors.shape[0], 4])
        out = {f"C{i + 2}": t for i, t in enumerate(c_maps) if t is not None}
        out.update({f"P{i + 2}": t for i, t in enumerate(p_maps)})
        out.update(anchors=batch_anchors, rpn_class_logits=rpn_class_logits, rpn_class=rpn_class, rpn_bbox=rpn_bbox)
        return out

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False,
             detected_class_masks: bool = False) -> dict[str, tf.Tensor]:
        """Runs the training graph when `inputs` has ground truth, else the inference graph.

        Args:
            detected_class_masks: inference graph only: mrcnn_mask holds each detection's own
                class channel alone, [B,D,h,w,1] (what `detect` needs; the FCN head then computes
                only that channel), instead of all K.

        Returns:
            training graph: rpn_class_logits [B,A,2], rpn_bbox [B,A,4], rois [B,T,4] normalized,
                target_class_ids [B,T], target_deltas [B,T,4], target_masks [B,T,h,w],
                mrcnn_class_logits [B,T,K], mrcnn_bbox [B,T,K,4], mrcnn_mask [B,T,h,w,K].
            inference graph: the names in GRAPH_OUTPUTS; detections [B,D,6] (y1,x1,y2,x2 normalized,
                class_id, score), mrcnn_mask [B,D,h,w,K] (or [B,D,h,w,1], above).
        """
        if "input_gt_class_ids" in inputs:
            return self._training_graph(inputs, training)
        return self._inference_graph(inputs, training, detected_class_masks)

    def _training_graph(self, inputs: dict[str, tf.Tensor], training: bool) -> dict[str, tf.Tensor]:
        images = inputs["input_image"]
        meta = inputs["input_image_meta"]
        feats = self._features(images, training)
        pyramid = self._roi_feature_maps(feats, meta)
        proposals = self.proposal_training([feats["rpn_class"], feats["rpn_bbox"], feats["anchors"]])
        gt_boxes = norm_boxes(tf.cast(inputs["input_gt_boxes"], tf.float32), tf.shape(images)[1:3])
        rois, target_class_ids, target_deltas, target_masks = self.detection_target(
            [proposals, tf.cast(inputs["input_gt_class_ids"], tf.int32), gt_boxes,
             tf.cast(inputs["input_gt_masks"], tf.float32)])
        # [:3]: the C4 box head also returns its res5 features.
        box_outputs = self.box_head(self.roi_align_classifier([rois] + pyramid, training=training),
                                    training=training)
        class_logits, _, bbox = box_outputs[:3]
        # The mask loss reads positive RoIs only, and DetectionTargetLayer puts them first (at most
        # int(T * ROI_POSITIVE_RATIO) per image): the mask (and keypoint) branches look at those
        # slots alone, as in Detectron.
        positive_slots = self.max_positive_rois
        mask_rois = rois[:, :positive_slots]
        slot_class_ids = target_class_ids[:, :positive_slots]
        # The real positives among those slots, [n, 2] (image, slot): the mask and keypoint heads run
        # on them alone, gathered into one flat [1, n] list over the batch.
        index = _positive_index(slot_class_ids)
        outputs = dict(rpn_class_logits=feats["rpn_class_logits"], rpn_bbox=feats["rpn_bbox"], rois=rois,
                       target_class_ids=target_class_ids, target_deltas=target_deltas,
                       mrcnn_class_logits=class_logits, mrcnn_bbox=bbox)
        if self.mask_head is not None:
            # Only the real positives go through the mask head, as one flat [1, n] list over the
            # batch (a box head's worth of padded slots would cost several times the mask head's
            # useful work at the paper's 512 RoIs/image, and would enter the head's BatchNorm).
            positive_rois, mask_class_ids, mask_targets, image_ids = _positive_roi_list(
                mask_rois, slot_class_ids, target_masks[:, :positive_slots], index)
            if self.fpn is None:
                # C4: the mask head reads the box head's res5 output of the same RoIs (Detectron's
                # shared res5): res5 runs once per step.
                res5 = tf.gather_nd(box_outputs[3][:, :positive_slots], index)[None]
                outputs["mrcnn_mask"] = self.mask_head(res5, training=training)  # [1, n, h, w, K]
            else:
                outputs["mrcnn_mask"] = self._mask_branch(positive_rois, pyramid, training,  # [1, n, h, w, K]
                                                          box_image_ids=image_ids)
            outputs["target_masks"] = mask_targets  # [1, n, h, w]
            outputs["mask_class_ids"] = mask_class_ids  # [1, n]
        if self.keypoint_head is not None:
            # Same leading positive slots as the mask branch; keypoints normalized like the boxes.
            size = tf.cast(tf.shape(images)[1:3], tf.float32)
            keypoints = tf.cast(inputs["input_gt_keypoints"], tf.float32)
            keypoints = tf.concat([keypoints[..., :2] / tf.stack([size[1], size[0]]), keypoints[..., 2:]], axis=-1)
            labels, weights = self.keypoint_target(
                [mask_rois, slot_class_ids, tf.cast(inputs["input_gt_class_ids"], tf.int32), gt_boxes, keypoints])
            # Only the real positives go through the keypoint head (negative slots have weight 0 in
            # the loss): at the paper's 8 x 512 head, the padded slots were most of its work.
            outputs["target_keypoint_labels"] = tf.gather_nd(labels, index)[None]  # [1, n, K]
            outputs["target_keypoint_weights"] = tf.gather_nd(weights, index)[None]
            outputs["mrcnn_keypoint_logits"] = self.keypoint_head(  # [1, n, m, m, K]
                self.roi_align_keypoint([tf.gather_nd(mask_rois, index)[None]] + pyramid,
                                        box_image_ids=tf.cast(index[:, 0], tf.int32), training=training),
                training=training)
        return outputs

    def _roi_feature_maps(self, feats: dict[str, Any], meta: tf.Tensor) -> list[tf.Tensor]:
        """What the RoI poolers take after the boxes: [meta, P2..P5] (FPN) or [C4] (C4 model)."""
        if self.fpn is None:
            return [feats["C4"]]
        return [meta] + [feats[f"P{i}"] for i in range(2, 6)]

    def _mask_branch(self, boxes: tf.Tensor, pyramid: list[tf.Tensor], training: bool,
                     box_image_ids: tf.Tensor | None = None, class_ids: tf.Tensor | None = None) -> tf.Tensor:
        """Mask head on `boxes` [B, N, 4] normalized (or the flat [1, N, 4] with box_image_ids).

        FPN: RoIAlign at MASK_POOL_SIZE from the pyramid, then the FCN head. C4: RoIAlign at
        POOL_SIZE from C4 and the box head's res5 (shared weights) before the deconv head (used at
        inference on the detections; training reuses the box branch's res5 output instead).

        Args:
            class_ids: optional [B, N] int: only each box's class channel is returned (the FCN
                head with sigmoid masks computes only that channel; other heads select it).

        Returns:
            [B, N, h, w, K] mask probabilities (h, w = MASK_SHAPE), float32; [B, N, h, w, 1] with
            class_ids.
        """
        if self.fpn is None:
            pooled = self.roi_align_classifier([boxes] + pyramid, box_image_ids=box_image_ids)
            masks = self.mask_head(self.box_head.res5(pooled, training=training), training=training)
        else:
            pooled = self.roi_align_mask([boxes] + pyramid, box_image_ids=box_image_ids, training=training)
            if class_ids is not None and isinstance(self.mask_head, MaskHead):
                return self.mask_head(pooled, training=training, class_ids=class_ids)
            masks = self.mask_head(pooled, training=training)
        if class_ids is None or masks.shape[-1] == 1:
            return masks
        return select_class_masks(masks, class_ids)

    @property
    def max_positive_rois(self) -> int:
        """Most positive RoIs DetectionTargetLayer samples per image (its leading slots)."""
        return max(1, int(self.config.TRAIN_ROIS_PER_IMAGE * self.config.ROI_POSITIVE_RATIO))

    def _inference_graph(self, inputs: dict[str, tf.Tensor], training: bool,
                         detected_class_masks: bool = False) -> dict[str, tf.Tensor]:
        images = inputs["input_image"]
        meta = inputs["input_image_meta"]
        feats = self._features(images, training)
        pyramid = self._roi_feature_maps(feats, meta)
        proposals = self.proposal_inference([feats["rpn_class"], feats["rpn_bbox"], feats["anchors"]])
        _, mrcnn_class, mrcnn_bbox = self.box_head(
            self.roi_align_classifier([proposals] + pyramid, training=training), training=training)[:3]
        detections = self.detection([proposals, mrcnn_class, mrcnn_bbox, meta])
        # Masks only for the final detections (the paper's inference: mask branch on the top boxes).
        detection_boxes = tf.stop_gradient(detections[..., :4])
        feats.update(proposals=proposals, mrcnn_class=mrcnn_class, mrcnn_bbox=mrcnn_bbox, detections=detections)
        if self.mask_head is not None or self.keypoint_head is not None:
            # The mask and keypoint heads run on the real detections alone (a trained model keeps a
            # few of the DETECTION_MAX_INSTANCES slots; the rest are zero padding), as one flat list
            # padded to a power of two so that the heads' convolutions see few distinct shapes.
            # BatchNorm recalibration (training: batch statistics) takes every slot, as it always has.
            index, count = _detection_slot_list(detections[..., 4], every_slot=bool(training))
            boxes = tf.gather_nd(detection_boxes, index)[None]  # [1, m, 4]
            image_ids = index[:, 0]
            if self.mask_head is not None:
                class_ids = (tf.cast(tf.gather_nd(detections[..., 4], index), tf.int32)[None]  # [1, m]
                             if detected_class_masks else None)
                masks = self._mask_branch(boxes, pyramid, training, box_image_ids=image_ids,
                                          class_ids=class_ids)  # [1, m, h, w, K or 1]
                feats["mrcnn_mask"] = _scatter_detection_slots(masks[0], index, count, detections)
            if self.keypoint_head is not None:
                # [B, D, K, 3] (x, y normalized, score), zeros in the empty slots.
                logits = self.keypoint_head(self.roi_align_keypoint([boxes] + pyramid, box_image_ids=image_ids,
                                                                    training=training), training=training)
                feats["mrcnn_keypoints"] = _scatter_detection_slots(
                    heatmaps_to_keypoints(logits, boxes)[0], index, count, detections)
        return feats

    # ------------------------------------------------------------------------------------------
    # Losses and the Keras training protocol
    def compute_losses(self, inputs: dict[str, tf.Tensor], outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The five Mask R-CNN losses (scalars, finite without GT or positives)."""
        active_class_ids = _active_class_ids(inputs["input_image_meta"], self.config.NUM_CLASSES)
        rpn_match = tf.cast(inputs["input_rpn_match"], tf.int32)
        losses = {
            "rpn_class_loss": loss_fns.rpn_class_loss(rpn_match, outputs["rpn_class_logits"]),
            "rpn_bbox_loss": loss_fns.rpn_bbox_loss(tf.cast(inputs["input_rpn_bbox"], tf.float32), rpn_match,
                                                    outputs["rpn_bbox"]),
            "mrcnn_class_loss": loss_fns.mrcnn_class_loss(
                outputs["target_class_ids"], outputs["mrcnn_class_logits"], active_class_ids,
                valid_rois=tf.reduce_any(tf.not_equal(outputs["rois"], 0.0), axis=-1)),  # padding rows are no RoIs
            "mrcnn_bbox_loss": loss_fns.mrcnn_bbox_loss(outputs["target_deltas"], outputs["target_class_ids"],
                                                        outputs["mrcnn_bbox"]),
        }
        if "mrcnn_mask" in outputs:
            mask_args = (outputs["target_masks"], outputs["mask_class_ids"], outputs["mrcnn_mask"])
            if self.config.MASK_LOSS == "softmax":  # the paper's multinomial ablation (Table 2b)
                losses["mrcnn_mask_loss"] = loss_fns.mrcnn_mask_softmax_loss(*mask_args)
            else:
                losses["mrcnn_mask_loss"] = loss_fns.mrcnn_mask_loss(
                    *mask_args, class_agnostic=self.config.MASK_CLASS_AGNOSTIC)
        if "mrcnn_keypoint_logits" in outputs:
            losses[KEYPOINT_LOSS_NAME] = loss_fns.mrcnn_keypoint_loss(
                outputs["target_keypoint_labels"], outputs["target_keypoint_weights"], outputs["mrcnn_keypoint_logits"])
        return losses

    def _total_loss(self, losses: dict[str, tf.Tensor]) -> tf.Tensor:
        total = tf.add_n([tf.cast(self.config.LOSS_WEIGHTS.get(name, 1.0), tf.float32) * tf.cast(value, tf.float32)
                          for name, value in losses.items()])
        if self.config.WEIGHT_DECAY:
            total += loss_fns.l2_weight_decay(self.trainable_weights, self.config.WEIGHT_DECAY)
        return total

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.loss_trackers.values())

    def _update_trackers(self, total: tf.Tensor, losses: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        self.loss_trackers["loss"].update_state(total)
        for name, value in losses.items():
            self.loss_trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.loss_trackers.items()}

    @staticmethod
    def _unpack(data: Any) -> dict[str, tf.Tensor]:
        # Keras hands the PyDataset's dict through as is; accept (x,) tuples too.
        while isinstance(data, (tuple, list)):
            data = data[0]
        return data

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        inputs = self._unpack(data)
        with tf.GradientTape() as tape:
            outputs = self(inputs, training=True)
            losses = self.compute_losses(inputs, outputs)
            total = self._total_loss(losses)
            # Under a multi-replica strategy each replica holds IMAGES_PER_GPU images and the
            # optimizer SUMS replica gradients: divide by the replica count (mrcnn.distribute).
            scaled = distribute.scale_loss_for_replicas(total)
            # mixed_float16: LossScaleOptimizer multiplies by its dynamic scale (and un-scales the
            # gradients in apply_gradients); identity for every other optimizer.
            scaled = self.optimizer.scale_loss(scaled)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        # Layers outside the path (e.g. the inference-only DetectionLayer) have no gradient.
        pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
        # Multi-replica: clip the all-reduced gradient, not each replica's share; identity otherwise.
        pairs = distribute.aggregate_gradients(pairs, self.optimizer)
        self.optimizer.apply_gradients(pairs)
        # Multi-replica with TRAIN_BN: keep the BatchNorm moving statistics equal on every replica.
        distribute.sync_batchnorm_statistics(self.all_layers())
        return self._update_trackers(total, losses)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        inputs = self._unpack(data)
        outputs = self(inputs, training=False)
        losses = self.compute_losses(inputs, outputs)
        return self._update_trackers(self._total_loss(losses), losses)

    def predict_step(self, data: Any) -> dict[str, tf.Tensor]:
        inputs = self._unpack(data)
        outputs = self(inputs, training=False)
        return {k: outputs[k] for k in ("detections", "mrcnn_mask", "mrcnn_keypoints") if k in outputs}

    def compile(self, optimizer: keras.optimizers.Optimizer | None = None, learning_rate: float | None = None,
                **kwargs: Any) -> None:
        """Compiles with the config's OPTIMIZER unless an optimizer is given.

        Default: SGD(LEARNING_RATE, momentum=LEARNING_MOMENTUM, global_clipnorm=GRADIENT_CLIP_NORM),
        as matterport (its Keras 2 clipnorm clipped the global norm). XLA stays off: the compiled RoIAlign op has no XLA kernel. Under
        MIXED_PRECISION="mixed_float16" the optimizer is wrapped in a LossScaleOptimizer.
        """
        if optimizer is None:
            optimizer = make_optimizer(self.config, learning_rate)
        if self.config.MIXED_PRECISION == "mixed_float16" and not isinstance(
                optimizer, keras.optimizers.LossScaleOptimizer):
            # float16 gradients underflow without loss scaling; bfloat16 has float32's range.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=optimizer, **kwargs)

    def fit(self, x: Any = None, *args: Any, validation_data: Any = None, **kwargs: Any) -> keras.callbacks.History:
        """Keras' fit (ValueError first when a MirroredStrategy's replica count is not GPU_COUNT);
        under a multi-replica strategy PyDatasets pass through `distribute.fit_safe`
        (Keras averages a first batch over replicas to build, which bool GT masks cannot take).
        An unbuilt model (no `train`, `set_trainable` or `load_weights` before) is built eagerly
        first, and the optimizer with its trainable variables: variables created inside the first
        traced step make tf.function trace it twice (the first `fit` of the tiny test config took
        17.1 s, now 7.9 s)."""
        self._check_replica_count()
        strategy = self.distribute_strategy
        with strategy.scope():  # mirrored variables under a multi-replica strategy
            self.ensure_built()
            if getattr(self, "optimizer", None) is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)
        return super().fit(distribute.fit_safe(x, strategy), *args,
                           validation_data=distribute.fit_safe(validation_data, strategy), **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {"mode": self.mode, "config": self.config.to_dict(), "model_dir": self.model_dir, "name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MaskRCNN:
        values = dict(config["config"])
        base = Config.from_dict(values)
        return cls(mode=config.get("mode", "inference"), config=base, model_dir=config.get("model_dir", "logs"),
                   name=config.get("name", "mask_rcnn"))

    # ------------------------------------------------------------------------------------------
    # Building, trainability, weights
    def ensure_built(self) -> None:
        """Creates every weight by running the inference graph once on a small zero image."""
        heads = [h for h in (self.box_head, self.mask_head, self.keypoint_head) if h is not None]
        if self.built and all(h.built for h in heads):
            return
        size = 64 * max(1, int(np.ceil(max(self.config.BACKBONE_STRIDES) / 64)))
        images, metas, _ = self.mold_inputs([np.zeros((size, size, self.config.IMAGE_CHANNEL_COUNT), np.uint8)],
                                            target_shape=(size, size))
        # Under the model's strategy: a model made in a strategy's scope and first built outside it
        # (load_weights after the `with` block) would get plain variables the optimizer refuses.
        with self.distribute_strategy.scope():
            self({"input_image": tf.constant(images), "input_image_meta": tf.constant(metas)}, training=False)

    def all_layers(self) -> list[keras.layers.Layer]:
        """Every layer of the model, nested ones included (the model itself excluded)."""
        return list(self._flatten_layers(include_self=False))

    def set_trainable(self, layer_regex: str, verbose: int = 0) -> list[str]:
        """Makes weight-bearing layers whose name fully matches `layer_regex` trainable, the rest frozen.

        Returns:
            The names of the trainable layers.
        """
        from mrcnn.weights import find_weight_layers

        self.ensure_built()
        pattern = re.compile(layer_regex)
        trainable = []
        for layer in find_weight_layers(self).values():
            layer.trainable = bool(pattern.fullmatch(layer.name))
            if layer.trainable:
                trainable.append(layer.name)
        if verbose:
            print(f"Training {len(trainable)} layers matching {layer_regex!r}")
        return trainable

    def load_weights(self, filepath: str | os.PathLike, by_name: bool = False,
                     exclude: Sequence[str] | None = None, skip_mismatch: bool = False) -> dict[str, Any] | None:
        """Loads weights.

        A Keras 3 `.weights.h5` file (`save_weights`, or a checkpoint of `train`, whose optimizer
        state `train` then restores) loads by structure. With `by_name=True`, `exclude` or
        `skip_mismatch` (and for any legacy Keras-2 `.h5`, e.g. matterport's `mask_rcnn_coco.h5`
        or an ImageNet ResNet from `get_imagenet_weights`, whose keras.applications layer names
        are mapped onto ours), weights load by layer name from either format, layers named in `exclude` are skipped and,
        with `skip_mismatch`, layers whose shapes differ too: heads for a different class count can
        be left out (fine-tuning one's own checkpoint on new classes as well as matterport's; the
        optimizer state is then not restored). Loading a checkpoint from a run's log dir also sets
        the epoch counter so that training continues at the next epoch.

        Returns:
            By name: `weights.load_weights_by_name`'s report ("loaded", "skipped",
            "missing_in_file", "unmatched_in_file" layer names); by structure: None.

        Raises:
            FileNotFoundError: naming the missing file.
            ValueError: for a wrong format or a shape mismatch of a layer that is not excluded.
        """
        from mrcnn import weights as weights_io

        path = Path(filepath)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        self.ensure_built()
        report = None
        self._resume_checkpoint = None  # a state loaded before this one no longer describes the model
        if by_name or exclude or skip_mismatch or not str(path).endswith(".weights.h5"):
            # keras.applications' ImageNet ResNets name their layers conv2_block1_1_conv...: mapped
            # onto ours, so that `load_weights(get_imagenet_weights(), by_name=True)` loads them too.
            report = weights_io.load_weights_by_name(self, str(path), exclude=exclude, skip_mismatch=skip_mismatch,
                                                     name_map=weights_io.keras_applications_name_map(path))
        else:
            # The optimizer state in a checkpoint is restored by name when `train` has built the
            # optimizer for its stage (Keras would match it by position, or skip it with a warning).
            optimizer = getattr(self, "optimizer", None)
            skip = [optimizer] if optimizer is not None else None
            super().load_weights(str(path), objects_to_skip=skip)
            self._resume_checkpoint = str(path)
        self.set_log_dir(str(path))
        self._frozen_infer.clear()  # optimize_for_inference: freeze the new weights on next use
        return report

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Keras' `set_weights`; also drops graphs frozen by `optimize_for_inference`."""
        super().set_weights(weights)
        self._frozen_infer.clear()

    # ------------------------------------------------------------------------------------------
    # Logs, checkpoints, training
    def _check_train_arguments(self, layers: str, regex: str, epochs: int) -> None:
        """Fails before any work when `layers` selects no layer or the strategy's replica count is not
        GPU_COUNT; warns about a stage with nothing to do and about a GPU_COUNT > 1 the model's
        strategy does not provide (the model must be built)."""
        from mrcnn.weights import find_weight_layers

        try:
            pattern = re.compile(regex)
        except re.error as error:
            raise ValueError(f"layers={layers!r} is neither one of {list(LAYER_REGEX)} nor a valid regular "
                             f"expression: {error}") from error
        if not any(pattern.fullmatch(name) for name in find_weight_layers(self)):
            raise ValueError(f"layers={layers!r} selects none of the model's layers: use one of {list(LAYER_REGEX)} "
                             "or a regular expression matching whole layer names, e.g. r'(mrcnn_.*)|(rpn_.*)'")
        if epochs <= self.epoch:
            warnings.warn(f"train(epochs={epochs}) has nothing to do: {self.epoch} epochs are done and `epochs` is "
                          "the epoch to train up to (as in Keras' fit), not a count of epochs to add", stacklevel=utils.user_stacklevel())
        self._check_replica_count()
        replicas = self.distribute_strategy.num_replicas_in_sync
        if self.config.GPU_COUNT > 1 and replicas == 1:
            warnings.warn(f"config.GPU_COUNT is {self.config.GPU_COUNT} but this model was built outside a "
                          f"multi-device strategy: it trains on one device with batches of BATCH_SIZE = "
                          f"{self.config.BATCH_SIZE} images. Build it under "
                          "mrcnn.distribute.make_strategy(config).scope() to train one replica per GPU",
                          stacklevel=utils.user_stacklevel())

    def _check_replica_count(self) -> None:
        """ValueError when a MirroredStrategy's replica count is not GPU_COUNT (`train` and `fit`)."""
        replicas = self.distribute_strategy.num_replicas_in_sync
        if (replicas > 1 and replicas != self.config.GPU_COUNT
                and not isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)):
            # fit splits each batch of BATCH_SIZE = IMAGES_PER_GPU x GPU_COUNT images over the
            # replicas: with another count a replica gets another number of images than
            # IMAGES_PER_GPU (or none: then TF fails deep in the step with a shape error).
            raise ValueError(f"this model's strategy has {replicas} replicas but config.GPU_COUNT is "
                             f"{self.config.GPU_COUNT}: each batch of BATCH_SIZE = IMAGES_PER_GPU x GPU_COUNT = "
                             f"{self.config.BATCH_SIZE} images is split over the replicas. Set GPU_COUNT = {replicas} "
                             "(mrcnn.distribute.make_strategy(config) makes a strategy of GPU_COUNT replicas)")

    def get_imagenet_weights(self, source: str | None = None, download: bool = True) -> str:
        """matterport's helper: the local path of ImageNet weights for this config's ResNet, to
        start training from with ``load_weights(path, by_name=True)`` (backbone layers only).

        Args:
            source: "fchollet" (matterport's file; ResNet-50 only, the default for "resnet50") or
                "keras" (keras.applications' ResNet50/ResNet101; the default for "resnet101").
            download: fetch the file into the cache (`mrcnn.weights.default_weights_dir`) when it
                is not there, as matterport did; False only looks in the cache.

        Returns:
            The h5 file's path.

        Raises:
            ValueError: for a backbone without published ImageNet weights (ResNeXt, a custom
                `Architecture`) or fchollet's file with ResNet-101.
            mrcnn.weights.WeightsNotAvailableError (a FileNotFoundError): not cached with
                `download=False`, or the download failed (offline); the message names the URL and
                where to put the file.
        """
        from mrcnn import weights as weights_io

        architecture = self.config.BACKBONE
        if not isinstance(architecture, str):
            raise ValueError(f"no published ImageNet weights for the custom backbone {architecture!r}: "
                             "ImageNet ResNets exist for BACKBONE 'resnet50' and 'resnet101'")
        if source is None:
            source = "fchollet" if architecture == "resnet50" else "keras"
        key = weights_io.imagenet_weights_key(architecture, source)
        return str(weights_io.weights_file_path(key, download=download))

    def set_log_dir(self, model_path: str | None = None) -> None:
        """Sets the log dir and epoch counter; from a checkpoint path of a run (ours,
        ``<run>/mask_rcnn_<name>_<NNNN>.weights.h5`` or ``..._interrupted.weights.h5``, or
        matterport's ``<run>/mask_rcnn_<name>_<NNNN>.h5``), continues that run: the epoch counter
        continues after epoch NNNN and new checkpoints go to the same folder."""
        self.epoch = 0
        self._new_run = True  # a new run's folder is claimed when `train` first writes to it
        now = datetime.datetime.now()
        name = _run_name(self.config)
        if model_path:
            # Any NAME without path separators (_run_name keeps dots and spaces).
            run = r"[/\\]([^/\\]+?)(\d{8}T\d{4,6})[/\\]mask_rcnn_[^/\\]+_"
            match = (re.search(run + r"(\d{4}|interrupted)\.weights\.h5$", str(model_path))
                     or re.search(run + r"(\d{4})\.h5$", str(model_path)))  # matterport's checkpoints
            if match:
                if match.group(3) == "interrupted":  # Ctrl-C state: its file records the epochs done
                    from mrcnn.callbacks import checkpoint_epoch

                    self.epoch = checkpoint_epoch(str(model_path)) or 0
                else:
                    self.epoch = int(match.group(3))  # continue at the next epoch (1-based names)
                self._set_run_dir(str(Path(model_path).parent))
                self._new_run = False
                return
        self._set_run_dir(os.path.join(self.model_dir, f"{name}{now:%Y%m%dT%H%M%S}"))

    def _set_run_dir(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.checkpoint_path = os.path.join(log_dir, f"mask_rcnn_{_run_name(self.config)}_{{epoch:04d}}.weights.h5")

    def find_last(self) -> str:
        """Path of the newest state of the newest run of this config's NAME in model_dir.

        That is the run's last epoch checkpoint (``mask_rcnn_<name>_<NNNN>.weights.h5``), or its
        Ctrl-C state (``..._interrupted.weights.h5``) when that is later: it records at least NNNN
        completed epochs (an interrupt during epoch NNNN + 1, or a run stopped during its first
        epoch); never a leftover temporary file. Runs without either are passed over. The recorded
        epochs decide, not file times, which copies and syncs do not keep.

        Raises:
            FileNotFoundError: when there is no run or no checkpoint.
        """
        name = _run_name(self.config)
        model_dir = Path(self.model_dir)
        runs = sorted(d for d in model_dir.glob(f"{name}*") if d.is_dir()) if model_dir.is_dir() else []
        numbered = re.compile(rf"mask_rcnn_{re.escape(name)}_\d{{4}}\.weights\.h5")
        for run in reversed(runs):
            checkpoints = sorted(p for p in run.glob(f"mask_rcnn_{name}_*.weights.h5") if numbered.fullmatch(p.name))
            interrupted = run / f"mask_rcnn_{name}_interrupted.weights.h5"
            if interrupted.is_file() and (not checkpoints or _interrupted_is_later(interrupted, checkpoints[-1])):
                return str(interrupted)
            if checkpoints:
                return str(checkpoints[-1])
        raise FileNotFoundError(f"no checkpoint of '{name}' found under {model_dir}")

    def train(self, train_dataset: Any, val_dataset: Any,
              learning_rate: float | keras.optimizers.schedules.LearningRateSchedule, epochs: int,
              layers: str = "heads", augmentation: Any = None, custom_callbacks: list | None = None,
              no_augmentation_sources: list[str] | None = None, verbose: int = 1,
              workers: int = 1, use_multiprocessing: bool = False) -> keras.callbacks.History:
        """matterport's training convenience over `fit`.

        Resumable: the optimizer state (iteration count, momentum/moments) carries over from the
        previous stage in this process, or from the checkpoint given to `load_weights`, by variable
        name, so a learning-rate schedule and momentum continue. The data order continues at
        epoch `self.epoch`. Under a MultiWorkerMirroredStrategy (TF_CONFIG) it trains with
        `mrcnn.distribute.fit_custom_loop` instead of `fit`. On Ctrl-C (KeyboardInterrupt) the
        state so far is written to ``mask_rcnn_<name>_interrupted.weights.h5`` in the log dir
        (the last epoch checkpoint stays the newest numbered one) and the interrupt is re-raised.
        Under a multi-worker strategy a config with SEED None reads data with seed
        `MULTI_WORKER_DEFAULT_SEED`: the workers must draw one order to read disjoint batches.
        During the call, `self.resumed_from` is the checkpoint path this stage resumed from (the
        one `load_weights` read), else None; a `TrainingBudget` reads its record through it.

        Args:
            train_dataset, val_dataset: prepared `Dataset`s.
            learning_rate: learning rate for this stage, or a Keras LearningRateSchedule (which
                reads the optimizer's iteration count, so it continues across stages and resumes).
            epochs: the epoch to train UP TO (stages continue the count: heads to 20, then all to 40).
            layers: "heads", "3+", "4+", "5+", "all", or a regex over layer names (`layer_regex`; in the
                C4 model "heads" includes res5, its box head).
            augmentation: an augmenter from mrcnn.data.augment applied to training images.
            custom_callbacks: extra Keras callbacks (e.g. `mrcnn.callbacks.MeanAveragePrecision`,
                `TrainingBudget`); they run before train's TensorBoard callback, which writes
                what they add to an epoch's logs.
            no_augmentation_sources: dataset sources never augmented.
        Returns:
            The Keras History of this stage.

        Raises:
            ValueError: for `layers` that select no layer, or datasets that do not fit the config.
            TrainingDivergedError: the loss became NaN or infinite; the model's weights and optimizer
                state are then those of the last good checkpoint (when one exists).
            FileNotFoundError, ValueError, ...: a batch's own loading error (a missing image file).
        """
        from mrcnn.callbacks import (
            AtomicCheckpoint,
            StopOnNaN,
            checkpoint_epoch_iterations,
            optimizer_state,
            restore_optimizer_state,
            training_callbacks,
            write_checkpoint,
        )
        from mrcnn.data.generator import DataGenerator

        regex = layer_regex(layers, self.config)
        self.ensure_built()  # under the model's strategy: weights of a multi-device one are mirrored
        self._check_train_arguments(layers, regex, epochs)
        if epochs <= self.epoch:
            # A stage already done (a rerun script after a resume): nothing is compiled, so the
            # optimizer state a checkpoint holds for all layers waits for the stage that trains.
            history = keras.callbacks.History()
            history.epoch = []
            return history
        seed = self.config.SEED
        if seed is None and isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Every worker must draw the same order to read disjoint shards of each global batch;
            # a seed of each process's own would make them overlap.
            seed = MULTI_WORKER_DEFAULT_SEED
        gen_kwargs = dict(workers=workers, use_multiprocessing=use_multiprocessing)
        train_gen = DataGenerator(train_dataset, self.config, shuffle=True, augmentation=augmentation, seed=seed,
                                  steps=self.config.STEPS_PER_EPOCH,
                                  no_augmentation_sources=no_augmentation_sources, **gen_kwargs)
        val_gen = None
        if val_dataset is not None and self.config.VALIDATION_STEPS:
            val_gen = DataGenerator(val_dataset, self.config, shuffle=False, seed=seed,
                                    steps=self.config.VALIDATION_STEPS, **gen_kwargs)
        # The run folder is made once the datasets passed the generators' checks, so that a
        # mismatch leaves no empty run behind for `find_last` and TensorBoard to list. Only the
        # chief writes files: another worker sharing the logs folder would claim a folder of its
        # own (a second later) holding nothing but config.json.
        if distribute.is_chief(self.distribute_strategy):
            self.make_log_dir()
            self.config.save(os.path.join(self.log_dir, "config.json"))
        elif self.log_dir is None:
            self.set_log_dir()
        # Optimizer state to carry into this stage: the previous stage's (same process) or the
        # checkpoint's that load_weights read. Restored by name once the new optimizer is built.
        carried = getattr(self, "_resume_checkpoint", None) or optimizer_state(getattr(self, "optimizer", None))
        strategy = self.distribute_strategy
        with strategy.scope():  # weights built lazily here and optimizer variables must be mirrored
            self.set_trainable(regex, verbose=verbose)
            self.compile(learning_rate=learning_rate)
            self.optimizer.build(self.trainable_variables)
            if carried:
                report = restore_optimizer_state(self.optimizer, carried)
                rewind = checkpoint_epoch_iterations(carried) if isinstance(carried, str) else None
                if rewind is not None:
                    # A Ctrl-C state: this run repeats its unfinished epoch from the first batch, so
                    # the schedule must count from where that epoch began.
                    self.optimizer.iterations.assign(rewind)
                if verbose:
                    print(f"Optimizer state: {len(report['restored'])} variables restored "
                          f"(iteration {int(self.optimizer.iterations.numpy())}), {len(report['missing'])} new")
        self._resume_checkpoint = None
        # Callbacks with state of their own (TrainingBudget) continue from the run's record of it.
        self.resumed_from = carried if isinstance(carried, str) else None
        # Every worker keeps the checkpoint bookkeeping (epochs done, the last good checkpoint):
        # only the chief writes the files, but after a NaN or an interrupt all must agree.
        callbacks = training_callbacks(self, self.log_dir, self.checkpoint_path, self.config.KEEP_CHECKPOINTS,
                                       write_checkpoints=distribute.is_chief(self.distribute_strategy),
                                       custom=list(custom_callbacks or []))
        checkpoint = next(cb for cb in callbacks if isinstance(cb, AtomicCheckpoint))
        self._start_checkpoint(checkpoint)
        start_epoch = self.epoch
        if verbose:
            print(f"\nStarting at epoch {self.epoch}. LR={describe_learning_rate(learning_rate, self.optimizer.iterations)}"
                  f"\nCheckpoint path: {self.checkpoint_path}")
        try:
            with _sigterm_as_keyboard_interrupt():
                history = self._fit_stage(strategy, train_dataset, val_dataset, train_gen, val_gen, augmentation,
                                          no_augmentation_sources, epochs, callbacks, verbose)
        except KeyboardInterrupt:
            self.epoch = checkpoint.completed_epochs or self.epoch
            for stray in Path(self.log_dir).glob("*.tmp.weights.h5"):  # a checkpoint write cut short
                stray.unlink()
            if distribute.is_chief(strategy):
                name = _run_name(self.config)
                path = write_checkpoint(self, os.path.join(self.log_dir, f"mask_rcnn_{name}_interrupted.weights.h5"),
                                        self.epoch, epoch_iterations=checkpoint.saved_iterations)
                # A next train() in this process resumes from that state as a new process would
                # (repeating the unfinished epoch with the iteration count of its start).
                self._resume_checkpoint = path
                print(f"\nInterrupted. Completed epochs: {self.epoch}; last epoch checkpoint: "
                      f"{checkpoint.last_saved or 'none yet'}; state at the interrupt: {path}")
            raise
        except Exception as error:
            # Finished epochs keep their checkpoints; the unfinished one is repeated by the next
            # train(), so the iteration count (a schedule's position) goes back to its start.
            self.epoch = checkpoint.completed_epochs or self.epoch
            if checkpoint.saved_iterations is not None:
                self.optimizer.iterations.assign(checkpoint.saved_iterations)
            failure = train_gen.failure or (val_gen.failure if val_gen is not None else None)
            if isinstance(error, tf.errors.OpError) and failure is not None:
                # A batch failed to load (a missing or corrupt image, a bad load_mask): its own
                # exception, not tf.data's wrapper of it.
                raise failure from None
            raise
        # Epochs that ended with a finite loss count as done (a NaN stop keeps the last good one).
        losses = history.history.get("loss", [])
        done = [e + 1 for e, loss in zip(history.epoch, losses) if np.isfinite(loss)]
        self.epoch = max([self.epoch] + done)
        stopped_at = next(cb for cb in callbacks if isinstance(cb, StopOnNaN)).stopped_at
        if stopped_at is not None:
            self._diverged(f"the loss became NaN or infinite at epoch {stopped_at[0]}, batch {stopped_at[1]}",
                           checkpoint, start_epoch)
        if checkpoint.nonfinite_weights_epoch is not None:
            self._diverged(f"the weights became NaN or infinite in the last step of epoch "
                           f"{checkpoint.nonfinite_weights_epoch}", checkpoint, start_epoch)
        return history

    def _start_checkpoint(self, checkpoint: Any) -> None:
        """Tells `checkpoint` where this call starts: the checkpoint the model's state came from
        (the file `load_weights` read, or this run's checkpoint of the epochs done) and the run's
        checkpoint before it, which training went on from with finite losses (see AtomicCheckpoint)."""
        def numbered(epoch: int) -> tuple[str, int] | None:
            path = self.checkpoint_path.format(epoch=epoch)
            return (path, epoch) if epoch > 0 and os.path.isfile(path) else None

        iterations = int(self.optimizer.iterations.numpy())  # this call starts at an epoch's end
        resumed = self.resumed_from
        own = numbered(self.epoch)
        if resumed is not None and (own is None or os.path.abspath(resumed) != os.path.abspath(own[0])):
            # A Ctrl-C state or a file from elsewhere: the run's checkpoint of its epochs, if any, came before.
            checkpoint.start_from(resumed, self.epoch, iterations, previous=own)
        elif own is not None:
            checkpoint.start_from(own[0], self.epoch, iterations, previous=numbered(self.epoch - 1))
        else:
            checkpoint.start_from(None, self.epoch, iterations)

    def make_log_dir(self) -> str:
        """Creates the log dir (setting a new run's first when there is none) and returns it.

        A new run's folder is claimed atomically: while another run started in the same second
        (a parallel job on the same model_dir) holds the name, its timestamp moves on by a second,
        so two runs never share a folder. `train` calls this; call it first to put files of your
        own in the run's folder.
        """
        if self.log_dir is None:
            self.set_log_dir()
        if not self._new_run:
            os.makedirs(self.log_dir, exist_ok=True)
            return self.log_dir
        stamp_format = "%Y%m%dT%H%M%S"
        parent, folder = os.path.split(self.log_dir)
        prefix, stamp = folder[:-15], datetime.datetime.strptime(folder[-15:], stamp_format)
        while True:
            try:
                os.makedirs(self.log_dir)
                break
            except FileExistsError:
                stamp += datetime.timedelta(seconds=1)
                self._set_run_dir(os.path.join(parent, f"{prefix}{stamp:{stamp_format}}"))
        self._new_run = False
        return self.log_dir

    def _fit_stage(self, strategy: tf.distribute.Strategy, train_dataset: Any, val_dataset: Any, train_gen: Any,
                   val_gen: Any, augmentation: Any, no_augmentation_sources: list[str] | None, epochs: int,
                   callbacks: list, verbose: int) -> keras.callbacks.History:
        """`fit` over the stage's generators, or the custom loop under a multi-worker strategy."""
        from mrcnn.callbacks import GeneratorEpochs
        from mrcnn.data.generator import DataGenerator

        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3's fit fails under this strategy (toolchain.md): same steps, explicit loop.
            # Each replica's generator covers the epoch's steps x replicas batches, wrapping into a
            # fresh order past the images' end as fit's does (not back to batches already read).
            replicas = strategy.num_replicas_in_sync
            return distribute.fit_custom_loop(
                self, lambda: DataGenerator(train_dataset, distribute.replica_config(self.config), shuffle=True,
                                            augmentation=augmentation, seed=train_gen.seed,
                                            steps=self.config.STEPS_PER_EPOCH * replicas,
                                            no_augmentation_sources=no_augmentation_sources),
                epochs=epochs, steps_per_epoch=self.config.STEPS_PER_EPOCH, initial_epoch=self.epoch,
                callbacks=callbacks, verbose=verbose,
                make_val_generator=None if val_gen is None else lambda: DataGenerator(
                    val_dataset, distribute.replica_config(self.config), shuffle=False, seed=val_gen.seed,
                    steps=self.config.VALIDATION_STEPS * replicas),
                validation_steps=self.config.VALIDATION_STEPS)
        # The generator orders and augments by (seed, epoch) itself: Keras must neither shuffle its
        # batches (with Python's global RNG) nor choose its epoch.
        return self.fit(train_gen, initial_epoch=self.epoch, epochs=epochs,
                        steps_per_epoch=self.config.STEPS_PER_EPOCH, validation_data=val_gen,
                        validation_steps=self.config.VALIDATION_STEPS if val_gen is not None else None,
                        callbacks=[GeneratorEpochs(train_gen, val_gen)] + callbacks, verbose=verbose, shuffle=False)

    def _diverged(self, what: str, checkpoint: Any, start_epoch: int) -> None:
        """After a NaN stop: puts the last good checkpoint's weights and optimizer state back (the
        model's own are not finite, and a next stage would carry them on), then raises.

        The good checkpoint is `checkpoint.last_good`; a checkpoint still pending (its own weights
        gave the first NaN) is used only when there is no good one, and the message says so.
        """
        from mrcnn.callbacks import TrainingDivergedError, checkpoint_epoch_iterations, restore_optimizer_state

        if checkpoint.last_good is not None:
            path, epochs = checkpoint.last_good
            state = f"the model is back at the last good checkpoint, {path} (epoch {epochs})"
            if checkpoint.pending and checkpoint.last_saved is not None:
                state += f"; the newer {checkpoint.last_saved} gave the non-finite loss itself"
        elif checkpoint.last_saved is not None:
            path, epochs = checkpoint.last_saved, checkpoint.completed_epochs or start_epoch
            state = (f"the model is back at {path} (epoch {epochs}), but the first batch after it was not finite "
                     "either: its weights, or that batch's data, are bad")
        else:
            path = None
            state = "no epoch was saved before it, so the model's weights are not finite"
        if path is not None and not os.path.isfile(path):
            # A worker other than the chief, whose log dir is not the chief's (not shared).
            raise TrainingDivergedError(f"{what}; this worker cannot read {path}, which the chief wrote (give all "
                                        "workers one shared log dir), so its weights are not finite. Lower the "
                                        "learning rate or check the data")
        if path is not None:
            keras.Model.load_weights(self, path, objects_to_skip=[self.optimizer])
            # Slots the file lacks (layers this stage made trainable) were updated with NaN: zero them.
            restore_optimizer_state(self.optimizer, path, reset_missing=True)
            rewind = checkpoint_epoch_iterations(path)
            if rewind is not None:  # a Ctrl-C state: its unfinished epoch is repeated from its start
                self.optimizer.iterations.assign(rewind)
            self.epoch = epochs
        else:
            self.epoch = start_epoch
        raise TrainingDivergedError(f"{what}; {state}. Lower the learning rate or check the data")

    # ------------------------------------------------------------------------------------------
    # Inference
    def mold_inputs(self, images: Sequence[np.ndarray], target_shape: tuple[int, int] | None = None,
                    scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Resizes and normalizes images as in training (`mrcnn.molding.mold_images`).

        `detect` molds through `mrcnn.molding` itself (each image on its own canvas), not through
        this method: a subclass that changes molding overrides `detect` too.

        Args:
            images: list of [H,W,C] arrays (uint8 or float in [0,255]; grayscale or RGBA accepted),
                all molding to one canvas.
            target_shape: force this molded (H, W) (used to build the model); default: the config's
                resize mode decides.
            scale: multiplies the config's resize scale (test-time augmentation, mrcnn.tta).
        Returns:
            molded [N,h,w,C] float32, metas [N,META] float32, windows [N,4] int32 pixel windows.
        """
        return molding.mold_images(images, self.config, target_shape=target_shape, scale=scale)

    def _per_canvas(self, function: Callable, images: tf.Tensor, metas: tf.Tensor) -> Any:
        """Runs `function(images, metas)` traced once per molded (H, W) (and batch-size relaxed).

        The anchors need a static image size, and one tf.function with reduce_retracing relaxes
        H and W to None at the second size it sees (detect(scale=...), test-time augmentation,
        "pad64" images of several sizes, BatchNorm recalibration on those).
        """
        key = (function.__name__, int(images.shape[1]), int(images.shape[2]))
        if key not in self._traced_functions:
            # Weights created inside the first trace make tf.function trace twice and wrap every
            # initializer in a graph of its own: building eagerly first halves the first call
            # (5.6 -> 2.9 s for a ResNet-50-FPN at 512 px). A no-op once built (load_weights builds).
            self.ensure_built()
            self._traced_functions[key] = tf.function(function, reduce_retracing=True)
        return self._traced_functions[key](images, metas)

    def _infer(self, images: tf.Tensor, metas: tf.Tensor) -> dict[str, tf.Tensor]:
        if not self._constant_weights:
            return self._per_canvas(self._infer_outputs, images, metas)
        key = (int(images.shape[1]), int(images.shape[2]))
        if key not in self._frozen_infer:
            self.ensure_built()
            signature = [tf.TensorSpec((None,) + tuple(images.shape[1:]), tf.float32),
                         tf.TensorSpec((None, metas.shape[1]), tf.float32)]
            folds = self.batchnorm_folds() if self._fold_batchnorm else []
            self._frozen_infer[key] = freeze(self._infer_outputs, signature, self.variables, folds)
            if len(self._frozen_infer) == FROZEN_CANVASES_WARNING + 1:  # once, when crossing
                warnings.warn(f"optimize_for_inference has frozen {len(self._frozen_infer)} canvas sizes, each "
                              "holding copies of the weights and costing a freeze: with images of varying "
                              "canvas size (IMAGE_RESIZE_MODE 'pad64'/'none', detect(scale=...), test-time "
                              "augmentation) call optimize_for_inference(False)", stacklevel=utils.user_stacklevel())
        return self._frozen_infer[key](images, metas)

    def batchnorm_folds(self) -> list[tuple[keras.Variable, np.ndarray]]:
        """The weight values that fold every foldable BatchNorm into the convolution before it.

        The pairs are those the layers declare (`conv_batchnorm_pairs`: the backbone's, and the
        heads' with HEAD_NORM "bn"), computed from the current weights by
        `mrcnn.freezing.batchnorm_fold`; `optimize_for_inference` freezes with them.
        """
        folds = []
        for layer in self.all_layers():
            for conv, batchnorm in getattr(layer, "conv_batchnorm_pairs", list)():
                folds += batchnorm_fold(conv, batchnorm)
        return folds

    def optimize_for_inference(self, enabled: bool = True, fold_batchnorm: bool = True) -> MaskRCNN:
        """Makes `detect` (and everything built on it) run graphs with the weights as constants.

        Frozen weights let oneDNN cache its reordered convolution filters and let Grappler fold
        the per-call float32->bfloat16 weight casts of MIXED_PRECISION (see `mrcnn.freezing`):
        on the README's 2-core AMX Xeon, with the BatchNorms folded, ResNet-50-FPN `detect` at
        1024 px took 2.72-2.85 instead of 3.05-3.11 s (float32) and 0.59-0.63 instead of
        0.93-0.95 s (bfloat16), the 128 px shapes demo model 21.6 instead of 35.5 ms (bfloat16).
        Outputs are the same up to float rounding. Each molded canvas size is frozen on its
        first call (8-15 s for ResNet-50-FPN on 2 cores) and holds its own copies of the weights
        (the graph's constants, the optimized graph, oneDNN's reordered filters: +1.5-2.8 GB RSS
        for ResNet-50-FPN against 0.05-0.17 GB for the plain graph): for images of one canvas
        size, not for many.

        The frozen graphs see the weights as they were when frozen. `load_weights`, `set_weights`
        and `recalibrate_batchnorm` on this model drop them (they are frozen again on the next
        call); after assigning to variables any other way, call this method again.

        With `fold_batchnorm` each inference-mode BatchNorm that reads a convolution's output
        alone (the backbone's; the heads' with HEAD_NORM "bn") is folded into that convolution's
        kernel and bias (`mrcnn.freezing.batchnorm_fold`), so the graph skips its pass over the
        feature map and the convolution fuses with its bias and ReLU.

        Args:
            enabled: False goes back to reading the variables on every call.
            fold_batchnorm: fold the BatchNorms into their convolutions in the frozen graphs.
        Returns:
            The model, for chaining (``MaskRCNN(...).optimize_for_inference()``).
        Raises:
            ValueError: for a training-mode model (its weights are meant to change).
        """
        if self.mode != "inference":
            raise ValueError("optimize_for_inference needs an inference-mode model, this one is "
                             f"mode={self.mode!r}")
        self._constant_weights = bool(enabled)
        self._fold_batchnorm = bool(fold_batchnorm)
        self._frozen_infer.clear()
        return self

    def _graph_outputs(self, images: tf.Tensor, metas: tf.Tensor) -> dict[str, tf.Tensor]:
        return self({"input_image": images, "input_image_meta": metas}, training=False)

    def _infer_outputs(self, images: tf.Tensor, metas: tf.Tensor) -> dict[str, tf.Tensor]:
        # Unmolding reads each detection's class channel only: the graph computes just that one.
        outputs = self({"input_image": images, "input_image_meta": metas}, training=False, detected_class_masks=True)
        return {k: outputs[k] for k in ("detections", "mrcnn_mask", "mrcnn_keypoints") if k in outputs}

    def detect(self, images: Sequence[np.ndarray], verbose: int = 0, tta: Any = None, scale: float = 1.0,
               soft_masks: bool = False) -> list[dict[str, np.ndarray]]:
        """Detects instances in any number of images of any size.

        Args:
            images: list of [H,W,3] RGB (or [H,W] grayscale / [H,W,4] RGBA) images with values on
                the 0..255 scale (uint8, or any dtype holding 0..255; a 16-bit image or a float
                one in [0, 1] warns: map it as your Dataset's load_image does).
            verbose: 1 shows a progress bar over batches.
            tta: test-time augmentation (paper Appendix B; `mrcnn.tta`): None (plain detection), an
                `mrcnn.tta.TTA` or a dict of its fields, e.g. ``{"scales": (0.75, 1, 1.25), "hflip": True}``.
            scale: detect at this multiple of the config's resize scale (1.0: as trained).
            soft_masks: masks as float32 [H,W,N] probabilities (pasted, not thresholded) instead of bool.
        Returns:
            One dict per image: rois [N,(y1,x1,y2,x2)] int32 pixels of the original image (y2/x2
            exclusive), class_ids [N] int32, scores [N] float32, masks [H,W,N] bool (not with
            MASK_HEAD = False); with KEYPOINT_HEAD also keypoints [N,NUM_KEYPOINTS,3] float32
            (x, y in continuous pixels of the original image, heatmap score in [0, 1]).
        """
        if tta is not None:
            if scale != 1.0:
                raise ValueError(f"detect: give the scales in tta, not scale={scale!r} as well")
            from mrcnn.tta import detect_tta

            return detect_tta(self, images, tta, verbose=verbose, soft_masks=soft_masks)
        return molding.detect_images(images, self.config, self._infer_numpy, verbose=verbose, scale=scale,
                                     soft_masks=soft_masks)

    def _infer_numpy(self, molded: np.ndarray, metas: np.ndarray) -> dict[str, np.ndarray]:
        """The inference graph on one batch of molded images, as numpy (`mrcnn.molding.detect_images`)."""
        return {k: v.numpy() for k, v in self._infer(tf.constant(molded), tf.constant(metas)).items()}

    def detect_molded(self, molded_images: np.ndarray, image_metas: np.ndarray, verbose: int = 0,
                      soft_masks: bool = False) -> list[dict[str, np.ndarray]]:
        """Detects on already molded images (as DataGenerator produces); results in original pixels
        (soft_masks: float32 probability masks, as `detect`).

        Args:
            molded_images: [N, H, W, C] float32 molded images (`mold_inputs`' first output).
            image_metas: [N, IMAGE_META_SIZE] float32.
            verbose: 1 shows a progress bar over batches.

        Returns:
            One dict per image, as `detect` returns.

        Raises:
            ValueError: naming the shapes when they are not batches of the same N.
        """
        molded_images, image_metas = np.asarray(molded_images), np.asarray(image_metas)
        if molded_images.ndim != 4 or image_metas.ndim != 2 or len(molded_images) != len(image_metas):
            raise ValueError(f"detect_molded takes batches: molded_images [N, H, W, C] and image_metas "
                             f"[N, {self.config.IMAGE_META_SIZE}], got {molded_images.shape} and {image_metas.shape}")
        results = []
        for k in utils.progress(range(0, len(molded_images), self.config.BATCH_SIZE), verbose, "detect", "batch"):
            out = self._infer(tf.constant(molded_images[k:k + self.config.BATCH_SIZE], tf.float32),
                              tf.constant(image_metas[k:k + self.config.BATCH_SIZE], tf.float32))
            parsed = utils.parse_image_meta(image_metas[k:k + self.config.BATCH_SIZE])
            out = {name: value.numpy() for name, value in out.items()}
            for j in range(out["detections"].shape[0]):
                results.append(self.unmold_detections(
                    out["detections"][j], out["mrcnn_mask"][j] if "mrcnn_mask" in out else None,
                    tuple(int(v) for v in parsed["original_image_shape"][j]), molded_images[k + j].shape,
                    parsed["window"][j].astype(np.int32),
                    keypoints=out["mrcnn_keypoints"][j] if "mrcnn_keypoints" in out else None, soft_masks=soft_masks))
        return results

    def unmold_detections(self, detections: np.ndarray, mrcnn_mask: np.ndarray | None,
                          original_image_shape: Sequence[int], image_shape: Sequence[int], window: np.ndarray,
                          keypoints: np.ndarray | None = None, soft_masks: bool = False) -> dict[str, np.ndarray]:
        """Maps one image's detections from the molded image back to the original
        (`mrcnn.molding.unmold_detections`: arguments and result described there; `detect` calls
        that function directly, `detect_molded` this method)."""
        return molding.unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape, window,
                                         keypoints=keypoints, soft_masks=soft_masks)

    def recalibrate_batchnorm(self, images: Sequence[np.ndarray], batch_size: int | None = None,
                              passes: int = 1, verbose: int = 0) -> int:
        """Re-estimates BatchNorm moving statistics on inference-time inputs ("PreciseBN").

        With TRAIN_BN the heads' BatchNorms learn their moving statistics from the sampled
        training RoIs (zero-padded slots included), while detection feeds them all proposals;
        after a short from-scratch run the backbone's averages also lag its weights. Both make
        inference-mode outputs wrong although batch-statistics outputs are right. This runs
        the inference graph over `images` with batch statistics, so every moving average is
        updated (at BN_MOMENTUM) from the inputs it will see. Weights are not changed.

        Args:
            images: training images ([H,W,3]); a few hundred are plenty. Images of several
                canvases ("pad64"/"none" modes) run in batches of one canvas, canvases in turn
                ("none" makes a canvas per image size: resize them to a few sizes for batches
                of at least 2).
            batch_size: images per forward pass (default BATCH_SIZE; at least 2 is best).
            passes: times to go over `images`.
            verbose: 1 shows a progress bar.
        Returns:
            The number of forward passes run.

        Raises:
            ValueError: for no images, a batch_size or passes that is not a positive int, or a
                config with TRAIN_BN False (its BatchNorms keep their statistics frozen).
        """
        if self.config.TRAIN_BN is False:
            raise ValueError("recalibrate_batchnorm: config.TRAIN_BN is False, which keeps every BatchNorm's moving "
                             "statistics frozen (matterport's setting; weights trained so expect them), so nothing "
                             "would change. Build the model with the TRAIN_BN the weights were trained with (True "
                             "or None) to re-estimate them")
        for name, value in (("batch_size", batch_size), ("passes", passes)):
            if value is not None and (not is_scalar_of(value, int) or value < 1):
                raise ValueError(f"recalibrate_batchnorm: {name} must be a positive int, got {value!r}")
        batch = int(batch_size or self.config.BATCH_SIZE)
        images = molding.image_list(images, "recalibrate_batchnorm")
        if not images:
            raise ValueError("recalibrate_batchnorm got no images")
        # Images of several canvases ("pad64"/"none") run as batches of one canvas each, taken in
        # turn from each canvas, so that the moving averages (an exponential average) do not lean
        # towards whichever canvas would come last.
        per_canvas = [[(group.molded[k:k + batch], group.metas[k:k + batch]) for k in range(0, len(group.indices), batch)]
                      for group in molding.mold_by_canvas(images, self.config, where="recalibrate_batchnorm")]
        in_turn = [b for turn in itertools.zip_longest(*per_canvas) for b in turn if b is not None]
        batches = in_turn * passes
        for molded, metas in utils.progress(batches, verbose, "recalibrate BN", "batch"):
            self._per_canvas(self._calibrate, tf.constant(molded), tf.constant(metas))
        self._frozen_infer.clear()  # the moving statistics changed
        return len(batches)

    def _calibrate(self, images: tf.Tensor, metas: tf.Tensor) -> tf.Tensor:
        outputs = self({"input_image": images, "input_image_meta": metas}, training=True)
        return outputs["detections"]

    def run_graph(self, images: Sequence[np.ndarray], outputs: Sequence[str] | dict[str, str]
                  ) -> dict[str, np.ndarray]:
        """Runs the inference graph and returns named intermediate tensors (for the notebooks).

        Args:
            images: list of BATCH_SIZE-or-fewer images.
            outputs: names from GRAPH_OUTPUTS, or a dict {your_name: graph_name}.
        Returns:
            dict of numpy arrays, batch first (bfloat16/float16 feature maps as float32).
        """
        mapping = dict(outputs) if isinstance(outputs, dict) else {name: name for name in outputs}
        unknown = sorted(set(mapping.values()) - set(GRAPH_OUTPUTS))
        if unknown:
            raise ValueError(f"unknown graph outputs {unknown}; known: {list(GRAPH_OUTPUTS)}")
        molded, metas, _ = molding.mold_images(images, self.config, where="run_graph")
        # Traced like detect's graph: run eagerly, bfloat16 rounds differently (unfused ops) and the
        # tensors shown would not be the ones detect computes.
        result = self._per_canvas(self._graph_outputs, tf.constant(molded), tf.constant(metas))
        absent = sorted(set(mapping.values()) - set(result))
        if absent:  # e.g. P2..P6 and C5 in the C4 model, mrcnn_mask without a mask head
            raise ValueError(f"graph outputs {absent} do not exist in this model "
                             f"(BACKBONE_TYPE={self.config.BACKBONE_TYPE!r}); available: {sorted(result)}")
        # Under MIXED_PRECISION the feature maps are bfloat16/float16: hand numpy users float32
        # (matplotlib and most numpy code cannot take ml_dtypes' bfloat16).
        return {mine: _as_numpy_float32(result[graph]) for mine, graph in mapping.items()}


def make_optimizer(config: Config, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    """The optimizer named by config.OPTIMIZER, clipping the gradient's global norm at GRADIENT_CLIP_NORM.

    Global, as matterport's Keras 2 ``clipnorm`` was (it scaled all gradients by their joint norm);
    Keras 3's ``clipnorm`` clips each variable's gradient on its own, a far looser bound over the
    model's hundreds of variables.
    """
    lr = learning_rate if learning_rate is not None else config.LEARNING_RATE
    clip = config.GRADIENT_CLIP_NORM or None
    if config.OPTIMIZER == "adam":
        return keras.optimizers.Adam(learning_rate=lr, global_clipnorm=clip)
    if config.OPTIMIZER == "adamw":
        # Decoupled decay off: WEIGHT_DECAY already enters the loss as an L2 term.
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=0.0, global_clipnorm=clip)
    return keras.optimizers.SGD(learning_rate=lr, momentum=config.LEARNING_MOMENTUM, global_clipnorm=clip)


def describe_learning_rate(learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
                           iteration: int | tf.Variable) -> str:
    """The learning rate for a log line: the number, or a schedule's fields and its value now.

    Args:
        learning_rate: a float or a Keras LearningRateSchedule.
        iteration: the optimizer's iteration count the schedule is read at.
    Returns:
        e.g. ``"0.001"`` or ``"StepSchedule(base_lr=0.02, ...): 0.00667 at iteration 0"``.
    """
    if not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return f"{float(learning_rate):g}"
    try:
        fields = ", ".join(f"{key}={value!r}" for key, value in learning_rate.get_config().items())
    except NotImplementedError:  # a schedule without get_config (the base class raises)
        fields = "..."
    step = int(keras.ops.convert_to_numpy(iteration))
    value = float(keras.ops.convert_to_numpy(learning_rate(step)))
    return f"{type(learning_rate).__name__}({fields}): {value:.3g} at iteration {step}"


def _positive_index(class_ids: tf.Tensor) -> tf.Tensor:
    """[B, P] int class ids (> 0 positive) -> [n, 2] int64 (image, slot) of the positives, row-major.

    With no positive in the whole batch, n = 1: slot (0, 0), so a head never runs on an empty
    batch (BatchNorm's mean of nothing is NaN); its class id 0 makes the losses ignore it.
    """
    positive = class_ids > 0
    first_slot = tf.scatter_nd(tf.constant([[0, 0]], tf.int32), [True], tf.shape(positive))
    return tf.where(positive | (first_slot & tf.logical_not(tf.reduce_any(positive))))


def _positive_roi_list(rois: tf.Tensor, class_ids: tf.Tensor, masks: tf.Tensor, index: tf.Tensor | None = None
                       ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The positive RoIs of a batch as one flat list (DetectionTargetLayer's leading slots).

    Args:
        rois: [B, P, 4] normalized; class_ids: [B, P] int (> 0 positive); masks: [B, P, h, w].
        index: `_positive_index(class_ids)` when the caller already has it (to gather more per-slot
            tensors in the same order).

    Returns:
        rois [1, n, 4], class_ids [1, n], masks [1, n, h, w] and image_ids [n] int32 (each RoI's
        image), in `_positive_index` order (n = 1, class id 0, without any positive).
    """
    if index is None:
        index = _positive_index(class_ids)
    return (tf.gather_nd(rois, index)[None], tf.gather_nd(class_ids, index)[None],
            tf.gather_nd(masks, index)[None], tf.cast(index[:, 0], tf.int32))


def _detection_slot_list(class_ids: tf.Tensor, every_slot: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """The slots of the real detections (class id > 0) as one flat list, padded to a bucket size.

    Args:
        class_ids: [B, D] the detections' class ids (0: an empty slot).
        every_slot: list all B * D slots, empty ones too (n = m = B * D).
    Returns:
        index [m, 2] int32 (image, slot): the n real detections of the batch first (row-major),
        then copies of slot (0, 0) up to m = the smallest power of two >= n, at most B * D (and at
        least 1, so that a head never runs on an empty batch); and n (int32 scalar).
    """
    listed = tf.ones_like(class_ids, tf.bool) if every_slot else class_ids > 0
    index = tf.cast(tf.where(listed), tf.int32)  # [n, 2]
    count = tf.shape(index)[0]
    # Next power of two of max(n, 1): smear the highest set bit of n - 1 to the right, add one.
    bits = tf.maximum(count, 1) - 1
    for shift in (1, 2, 4, 8, 16):
        bits = tf.bitwise.bitwise_or(bits, tf.bitwise.right_shift(bits, shift))
    size = tf.minimum(bits + 1, tf.size(class_ids))
    return tf.concat([index, tf.zeros([size - count, 2], tf.int32)], axis=0), count


def _scatter_detection_slots(values: tf.Tensor, index: tf.Tensor, count: tf.Tensor, detections: tf.Tensor
                             ) -> tf.Tensor:
    """[m, ...] per-slot results of `_detection_slot_list(...)` -> [B, D, ...], zeros in empty slots."""
    shape = tf.concat([tf.shape(detections)[:2], tf.shape(values)[1:]], axis=0)
    return tf.scatter_nd(index[:count], values[:count], shape)


@contextlib.contextmanager
def _dtype_policy(policy: str | None) -> Iterator[None]:
    """Makes `policy` Keras' global dtype policy inside the block (None: leave it), then restores it."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _as_numpy_float32(tensor: Any) -> np.ndarray:
    """A tensor as numpy, half-precision floats widened to float32 (other dtypes unchanged)."""
    if tensor.dtype in (tf.bfloat16, tf.float16):
        tensor = tf.cast(tensor, tf.float32)
    return np.asarray(tensor)


def _active_class_ids(meta: tf.Tensor, num_classes: int) -> tf.Tensor:
    """active_class_ids [B,K] from image metas [B,META] (the last K entries, see compose_image_meta)."""
    return meta[:, -num_classes:]


def _interrupted_is_later(interrupted: Path, numbered: Path) -> bool:
    """Whether a run's Ctrl-C state is later than its last epoch checkpoint: it records at least
    that checkpoint's epochs (file times only for a state without a record)."""
    from mrcnn.callbacks import checkpoint_epoch

    epochs = checkpoint_epoch(str(interrupted))
    if epochs is None:
        return interrupted.stat().st_mtime_ns > numbered.stat().st_mtime_ns
    return epochs >= int(numbered.name[-15:-11])  # mask_rcnn_<name>_NNNN.weights.h5


def _run_name(config: Config) -> str:
    """The config's NAME as run folders and checkpoint files spell it."""
    return (config.NAME or "mrcnn").lower()


@contextlib.contextmanager
def _sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """While training, SIGTERM (a scheduler's or `timeout`'s stop) is handled as Ctrl-C, so the
    state so far is written before the process ends. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


