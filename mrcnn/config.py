"""Model and training configuration.

`Config` keeps matterport/Mask_RCNN's UPPERCASE field names and defaults so that existing
`Config` subclasses move over unchanged: subclass it, override class attributes, instantiate.

    class ShapesConfig(Config):
        NAME = "shapes"
        NUM_CLASSES = 1 + 3
        IMAGE_MIN_DIM = 128
        IMAGE_MAX_DIM = 128

    config = ShapesConfig()      # derived values are computed and the config is validated here
    config.display()

Derived values (BATCH_SIZE, IMAGE_SHAPE, IMAGE_META_SIZE) are computed on construction. A config
round-trips through JSON with `to_dict()` / `from_dict()` so it can be saved beside its weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import warnings
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from mrcnn.modeling.architecture import ARCHITECTURES, Architecture

RESIZE_MODES = ("none", "square", "pad64", "crop")
POOLING_MODES = ("roi_align", "roi_align_max", "roi_pool", "roi_warp", "crop_and_resize")
BACKBONES = tuple(ARCHITECTURES)  # resnet50, resnet101, resnext101_32x4d, resnext101_64x4d
BACKBONE_TYPES = ("fpn", "c4")
HEAD_NORMS = ("bn", "gn", "none")
GROUP_NORM_GROUPS = 32  # Wu & He, "Group Normalization": 32 groups in detection heads.
# HEAD_NORM="gn" also normalizes the box head's fc outputs: fewer channels per group than this and
# the normalized values carry almost nothing (2 per group become +-1; measured: the classifier
# never left ln(2) at FPN_CLASSIF_FC_LAYERS_SIZE 64, learnt at 256).
MIN_CHANNELS_PER_GROUP = 8
MIXED_PRECISION_POLICIES = (None, "mixed_bfloat16", "mixed_float16")
MASK_LOSSES = ("sigmoid", "softmax")
MASK_HEAD_TYPES = ("fcn", "mlp")
DERIVED_FIELDS = ("BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE")


class Config:
    """Base configuration; subclass and override attributes.

    Every UPPERCASE class attribute is a field. The defaults are matterport's (COCO-sized); see
    README "Configuration" for what each one does. As in matterport, ``IMAGE_MIN_DIM`` may exceed
    ``IMAGE_MAX_DIM`` in "square" mode (the cap wins: images are resized to IMAGE_MAX_DIM).
    Fields added by this package beyond matterport's:

    * ``POOLING_MODE``: how RoI features are pooled: ``"roi_align"`` (the paper's, average of
      bilinear samples; default), ``"roi_align_max"``, ``"roi_pool"``, ``"roi_warp"`` or
      ``"crop_and_resize"`` (matterport's approximation, to reproduce its weights exactly).
    * ``ROI_ALIGN_SAMPLING_RATIO``: bilinear samples per bin and axis (paper: 2); <= 0 adaptive.
    * ``ROI_ALIGN_ALIGNED``: half-pixel shift of the box (detectron2 "ROIAlignV2"); default True.
    * ``ROI_LEVEL_MODE``: FPN level assignment, ``"matterport"`` (round, relative to image area)
      or ``"paper"`` (floor(4 + log2(sqrt(wh)/224)), detectron2/torchvision).
    * ``ADD_GT_TO_PROPOSALS``: append GT boxes to the RPN proposals when sampling training RoIs
      (Detectron/torchvision; default True). matterport did not (set False to reproduce it).
    * ``ROI_SAMPLING``: how many negative RoIs an image gets: ``"matterport"`` (default: they keep
      the 1 : (1/ROI_POSITIVE_RATIO - 1) ratio to the positives drawn, so an image with 8 positives
      trains on floor(8 / ROI_POSITIVE_RATIO) RoIs, 24 at 0.33, not TRAIN_ROIS_PER_IMAGE) or ``"paper"`` (negatives fill the
      TRAIN_ROIS_PER_IMAGE left after the positives: Fast R-CNN's and Detectron's sampling).
    * ``OPTIMIZER``: ``"sgd"`` (momentum LEARNING_MOMENTUM; the paper's and matterport's), ``"adam"``
      or ``"adamw"`` (Keras' own; weight decay stays the L2 term of the loss). All clip the global
      gradient norm at GRADIENT_CLIP_NORM (Keras' ``global_clipnorm``: matterport's Keras 2
      ``clipnorm`` did that; Keras 3's ``clipnorm`` clips each variable on its own).
    * ``RPN_CONV_CHANNELS``: width of the RPN's shared 3x3 conv on the FPN levels: 512 (matterport's,
      so its weights load; default) or e.g. TOP_DOWN_PYRAMID_SIZE (torchvision/Detectron). On P2 this
      conv is the model's largest; small from-scratch configs narrow it. C4 ignores it (1024, Detectron).
    * ``KEEP_CHECKPOINTS``: how many of a run's latest per-epoch checkpoints `train` keeps (0: all,
      matterport's behaviour). Each holds the weights and the optimizer state (~3x the weights with
      Adam): 100 MB for the shapes demo's model, so its 25-step epochs keep 2.
    * ``BN_MOMENTUM``: momentum of the BatchNorm moving statistics when TRAIN_BN lets them learn
      (Keras/matterport 0.99). Short from-scratch runs want ~0.9: with 0.99 the statistics used
      at inference are still mostly their initial values after a few hundred steps.
    * ``SEED``: seed for data shuffling/augmentation; None for nondeterministic.
    * ``HEAD_NORM``: normalization in the box and mask heads: ``"bn"`` (matterport's BatchNorm, so its
      weights load; default), ``"gn"`` (GroupNorm, 32 groups: per-RoI statistics, the same in training
      and inference; best for training from scratch) or ``"none"`` (the paper's heads).
    * ``MIXED_PRECISION``: None (float32), ``"mixed_bfloat16"`` or ``"mixed_float16"``: the Keras
      dtype policy of the model's layers (variables stay float32; heads' outputs and losses are
      float32; float16 training uses loss scaling). bfloat16 needs no loss scaling and runs fast on
      CPUs with AVX512-BF16/AMX.
    * ``BACKBONE`` (matterport's field: a name, or a callable returning a Keras layer image ->
      [C2..C5], with COMPUTE_BACKBONE_SHAPE) also takes an ``Architecture``
      (`mrcnn.modeling.architecture`): a custom bottleneck ResNet, e.g. fewer blocks and narrower
      stages for small from-scratch problems (the shapes demo's), built like the named ones; and
      ``"resnext101_32x4d"`` / ``"resnext101_64x4d"``:
      ResNeXt-101 with 32 or 64 groups of 4 channels in its 3x3 convolutions (the paper's X-101;
      no ImageNet weights are bundled for it).
    * ``BACKBONE_TYPE``: ``"fpn"`` (default; the paper's best, matterport's only) or ``"c4"`` (the
      paper's ResNet-C4, Fig. 4 left): no FPN; the RPN runs on C4 (stride 16) with all of
      RPN_ANCHOR_SCALES at every position (len(scales) x len(ratios) anchors per position);
      RoIAlign pools POOL_SIZE x POOL_SIZE crops of C4; ResNet's stage 5 runs per RoI as the box
      head (to POOL_SIZE / 2), then global average pooling, class logits and box deltas; the mask
      head (2x2 deconv + 1x1 conv) reads that res5 output, so MASK_POOL_SIZE must be POOL_SIZE // 2
      and MASK_SHAPE twice that. Requires BACKBONE_STRIDES = [16] and a named BACKBONE; no
      keypoint head, no MLP mask head; TOP_DOWN_PYRAMID_SIZE, FPN_CLASSIF_FC_LAYERS_SIZE and
      HEAD_NORM are unused. ``C4Config`` (or ``config.update(**c4_defaults())``) gives the paper's
      C4 values: POOL_SIZE 14, MASK_POOL_SIZE 7, MASK_SHAPE 14 x 14, TRAIN_ROIS_PER_IMAGE 64,
      POST_NMS_ROIS_INFERENCE 300, anchors 32-512 px x 3 ratios (15 per position).

    The paper's mask-branch ablations (Table 2; defaults are the paper's choice, README "Mask
    branch ablations"):

    * ``MASK_LOSS``: ``"sigmoid"`` (default): per-pixel binary cross-entropy on the ground-truth
      class's channel only (no competition between classes). ``"softmax"``: the multinomial loss
      of FCNs: each pixel of a positive RoI with ground-truth class k is a K-way softmax over the
      mask channels (channel 0 = background), with target k where the mask target is 1 and 0
      elsewhere: ``-(t log p_k + (1 - t) log p_0)`` averaged over the pixels of positive RoIs.
      The head then outputs the softmax over channels; a detection's mask is the probability of
      its class. Needs class-specific masks.
    * ``MASK_CLASS_AGNOSTIC``: False (default): K mask channels, one per class; True: one channel
      shared by all classes (the loss and inference read channel 0).
    * ``MASK_HEAD_TYPE``: ``"fcn"`` (default; the paper's FCN, matterport's layer names) or
      ``"mlp"``: flatten the RoI features -> fc 1024 -> fc 1024 -> fc K x 28 x 28 (the paper's MLP
      row), reshaped to the same [B, N, 28, 28, K] output.
    """

    NAME: str | None = None
    GPU_COUNT: int = 1
    IMAGES_PER_GPU: int = 2
    STEPS_PER_EPOCH: int = 1000
    VALIDATION_STEPS: int = 50

    BACKBONE: str | Architecture | Callable = "resnet101"
    COMPUTE_BACKBONE_SHAPE: Callable | None = None
    BACKBONE_STRIDES: list[int] = [4, 8, 16, 32, 64]
    FPN_CLASSIF_FC_LAYERS_SIZE: int = 1024
    TOP_DOWN_PYRAMID_SIZE: int = 256
    RPN_CONV_CHANNELS: int = 512
    BACKBONE_TYPE: str = "fpn"  # "fpn" or "c4" (see the class docstring and C4Config)

    NUM_CLASSES: int = 1

    RPN_ANCHOR_SCALES: tuple[int, ...] = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS: list[float] = [0.5, 1, 2]
    RPN_ANCHOR_STRIDE: int = 1
    RPN_NMS_THRESHOLD: float = 0.7
    RPN_TRAIN_ANCHORS_PER_IMAGE: int = 256
    PRE_NMS_LIMIT: int = 6000
    POST_NMS_ROIS_TRAINING: int = 2000
    POST_NMS_ROIS_INFERENCE: int = 1000

    USE_MINI_MASK: bool = True
    MINI_MASK_SHAPE: tuple[int, int] = (56, 56)

    IMAGE_RESIZE_MODE: str = "square"
    IMAGE_MIN_DIM: int = 800
    IMAGE_MAX_DIM: int = 1024
    IMAGE_MIN_SCALE: float = 0
    IMAGE_CHANNEL_COUNT: int = 3
    MEAN_PIXEL: np.ndarray = np.array([123.7, 116.8, 103.9])

    TRAIN_ROIS_PER_IMAGE: int = 200
    ROI_POSITIVE_RATIO: float = 0.33
    POOL_SIZE: int = 7
    MASK_POOL_SIZE: int = 14
    MASK_SHAPE: list[int] = [28, 28]
    MAX_GT_INSTANCES: int = 100

    RPN_BBOX_STD_DEV: np.ndarray = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV: np.ndarray = np.array([0.1, 0.1, 0.2, 0.2])

    DETECTION_MAX_INSTANCES: int = 100
    DETECTION_MIN_CONFIDENCE: float = 0.7
    DETECTION_NMS_THRESHOLD: float = 0.3

    LEARNING_RATE: float = 0.001
    LEARNING_MOMENTUM: float = 0.9
    WEIGHT_DECAY: float = 0.0001
    LOSS_WEIGHTS: dict[str, float] = {
        "rpn_class_loss": 1.0,
        "rpn_bbox_loss": 1.0,
        "mrcnn_class_loss": 1.0,
        "mrcnn_bbox_loss": 1.0,
        "mrcnn_mask_loss": 1.0,
        "mrcnn_keypoint_loss": 1.0,  # used only with KEYPOINT_HEAD
    }
    USE_RPN_ROIS: bool = True
    TRAIN_BN: bool | None = False
    GRADIENT_CLIP_NORM: float = 5.0
    KEEP_CHECKPOINTS: int = 0

    # Fields beyond matterport's (see class docstring).
    POOLING_MODE: str = "roi_align"
    ROI_ALIGN_SAMPLING_RATIO: int = 2
    ROI_ALIGN_ALIGNED: bool = True
    ROI_LEVEL_MODE: str = "matterport"
    ADD_GT_TO_PROPOSALS: bool = True
    ROI_SAMPLING: str = "matterport"
    OPTIMIZER: str = "sgd"
    BN_MOMENTUM: float = 0.99
    SEED: int | None = None
    HEAD_NORM: str = "bn"
    MIXED_PRECISION: str | None = None

    # --- Keypoint R-CNN (issue #6, keypoint head; README "Keypoints") ----------------------------
    # KEYPOINT_HEAD adds the keypoint branch: RoIAlign at KEYPOINT_POOL_SIZE -> KEYPOINT_HEAD_NUM_CONVS
    # x (3x3 conv, KEYPOINT_HEAD_CONV_CHANNELS, ReLU) -> 4x4 stride-2 deconv -> 2x bilinear upsampling
    # to KEYPOINT_MASK_SHAPE = 4 * KEYPOINT_POOL_SIZE (paper: 14 -> 56), one channel per keypoint,
    # trained with a softmax cross-entropy over the heatmap positions per labelled keypoint.
    # The dataset must implement load_keypoints. KEYPOINT_NAMES (optional) label the keypoints;
    # KEYPOINT_FLIP_MAP gives each keypoint's mirror partner for flip augmentation (default: from
    # "left_"/"right_" names, else none); KEYPOINT_SKELETON lists the limbs drawn by visualize.
    # MASK_HEAD = False removes the mask branch (keypoint-only model; with KEYPOINT_HEAD = False too,
    # boxes only).
    KEYPOINT_HEAD: bool = False
    NUM_KEYPOINTS: int = 17
    KEYPOINT_NAMES: tuple[str, ...] | None = None
    KEYPOINT_FLIP_MAP: tuple[int, ...] | None = None
    KEYPOINT_SKELETON: tuple[tuple[int, int], ...] | None = None
    KEYPOINT_POOL_SIZE: int = 14
    KEYPOINT_MASK_SHAPE: tuple[int, int] = (56, 56)
    KEYPOINT_HEAD_CONV_CHANNELS: int = 512
    KEYPOINT_HEAD_NUM_CONVS: int = 8
    MASK_HEAD: bool = True

    # --- Mask branch ablations (paper Table 2; see the class docstring) ------------------------
    MASK_LOSS: str = "sigmoid"
    MASK_CLASS_AGNOSTIC: bool = False
    MASK_HEAD_TYPE: str = "fcn"

    def __init__(self) -> None:
        # Copy mutable class-level defaults so instances never share (and mutate) them.
        for name in self.field_names():
            value = getattr(self, name)
            if isinstance(value, (list, dict, np.ndarray)):
                setattr(self, name, _copy_value(value))
        self.validate()  # computes the derived values first

    # ----------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        """All UPPERCASE fields of this config class (inherited ones included), sorted."""
        names = set()
        for klass in cls.__mro__:
            # Methods are lowercase, so every UPPERCASE attribute is a field (a callable
            # BACKBONE included); derived values are instance attributes set on construction.
            names.update(n for n in vars(klass) if n.isupper() and n not in DERIVED_FIELDS)
        return sorted(names)

    def _compute_derived(self) -> None:
        self.BATCH_SIZE = self.IMAGES_PER_GPU * self.GPU_COUNT
        channels = self.IMAGE_CHANNEL_COUNT
        if self.IMAGE_RESIZE_MODE == "crop":
            self.IMAGE_SHAPE = np.array([self.IMAGE_MIN_DIM, self.IMAGE_MIN_DIM, channels])
        else:
            self.IMAGE_SHAPE = np.array([self.IMAGE_MAX_DIM, self.IMAGE_MAX_DIM, channels])
        # image_id(1) + original_image_shape(3) + image_shape(3) + window(4) + scale(1) + active_class_ids
        self.IMAGE_META_SIZE = 1 + 3 + 3 + 4 + 1 + self.NUM_CLASSES

    def validate(self) -> None:
        """Recomputes the derived values, then checks field values and their consistency.

        Derived values (BATCH_SIZE, IMAGE_SHAPE, IMAGE_META_SIZE) follow the fields here, so a field
        set on an instance (``config.IMAGES_PER_GPU = 4``) takes effect at the latest when `MaskRCNN`
        validates its config; `update()` does it at once.

        Raises:
            ValueError: naming the offending field and its value.
        """
        self._check_scalar_types()  # before the derived values: they compute with these fields
        self._compute_derived()
        # Fields annotated int are ints here (_check_scalar_types): only their ranges are left to check.
        if self.NUM_CLASSES < 2:
            raise ValueError(
                f"NUM_CLASSES must be an int >= 2 (background + at least one class), got {self.NUM_CLASSES!r}"
            )
        for name in ("GPU_COUNT", "IMAGES_PER_GPU", "STEPS_PER_EPOCH", "IMAGE_CHANNEL_COUNT",
                     "TRAIN_ROIS_PER_IMAGE", "MAX_GT_INSTANCES", "DETECTION_MAX_INSTANCES",
                     "RPN_TRAIN_ANCHORS_PER_IMAGE", "POST_NMS_ROIS_TRAINING", "POST_NMS_ROIS_INFERENCE",
                     "PRE_NMS_LIMIT", "POOL_SIZE", "MASK_POOL_SIZE", "RPN_ANCHOR_STRIDE", "RPN_CONV_CHANNELS"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.KEEP_CHECKPOINTS < 0:
            raise ValueError(f"KEEP_CHECKPOINTS must be an int >= 0 (0: keep all), got {self.KEEP_CHECKPOINTS!r}")
        self._validate_backbone_type()
        if self.IMAGE_RESIZE_MODE not in RESIZE_MODES:
            raise ValueError(f"IMAGE_RESIZE_MODE must be one of {RESIZE_MODES}, got {self.IMAGE_RESIZE_MODE!r}")
        if self.IMAGE_RESIZE_MODE in ("square", "pad64", "crop"):
            dim_name = "IMAGE_MIN_DIM" if self.IMAGE_RESIZE_MODE == "crop" else "IMAGE_MAX_DIM"
            dim = getattr(self, dim_name)
            # Five FPN levels with stride up to 64 (C4: one of stride 16): every level must divide
            # the input evenly.
            if self.BACKBONE_TYPE == "c4":
                multiple, why = 16, "C4 has stride 16"
            else:
                multiple, why = 64, "the FPN downsamples by up to 64"
            if self.IMAGE_RESIZE_MODE != "pad64" and dim % multiple != 0:
                raise ValueError(
                    f"{dim_name}={dim} must be divisible by {multiple} in '{self.IMAGE_RESIZE_MODE}' mode "
                    f"({why}); use e.g. {max(multiple, int(round(dim / multiple)) * multiple)}"
                )
        # "square" (matterport's rule): the longest side is capped at IMAGE_MAX_DIM after scaling up
        # to IMAGE_MIN_DIM, so a larger IMAGE_MIN_DIM simply loses (a config that sets only
        # IMAGE_MAX_DIM = 512 over the default 800 resizes to 512); "none" uses neither.
        if self.IMAGE_MIN_DIM > self.IMAGE_MAX_DIM and self.IMAGE_RESIZE_MODE == "pad64":
            raise ValueError(f"IMAGE_MIN_DIM ({self.IMAGE_MIN_DIM}) must not exceed IMAGE_MAX_DIM ({self.IMAGE_MAX_DIM}) "
                             "in 'pad64' mode: images are scaled up to IMAGE_MIN_DIM and not capped")
        if self.BACKBONE_TYPE == "fpn" and len(self.RPN_ANCHOR_SCALES) != len(self.BACKBONE_STRIDES):
            raise ValueError(
                f"RPN_ANCHOR_SCALES has {len(self.RPN_ANCHOR_SCALES)} scales but BACKBONE_STRIDES has "
                f"{len(self.BACKBONE_STRIDES)} strides: one anchor scale per pyramid level is required"
            )
        if len(self.RPN_ANCHOR_RATIOS) < 1 or any(r <= 0 for r in self.RPN_ANCHOR_RATIOS):
            raise ValueError(f"RPN_ANCHOR_RATIOS must be positive numbers, got {self.RPN_ANCHOR_RATIOS!r}")
        if not (self.BACKBONE in BACKBONES or isinstance(self.BACKBONE, Architecture) or callable(self.BACKBONE)):
            raise ValueError(f"BACKBONE must be one of {BACKBONES}, an Architecture or a callable, "
                             f"got {self.BACKBONE!r}")
        if callable(self.BACKBONE) and self.COMPUTE_BACKBONE_SHAPE is None:
            raise ValueError("a callable BACKBONE needs COMPUTE_BACKBONE_SHAPE to give the feature map shapes")
        if not 0.0 < self.ROI_POSITIVE_RATIO <= 1.0:
            raise ValueError(f"ROI_POSITIVE_RATIO must be in (0, 1], got {self.ROI_POSITIVE_RATIO!r}")
        if len(self.MEAN_PIXEL) != self.IMAGE_CHANNEL_COUNT:
            raise ValueError(
                f"MEAN_PIXEL has {len(self.MEAN_PIXEL)} values but IMAGE_CHANNEL_COUNT is {self.IMAGE_CHANNEL_COUNT}"
            )
        if len(self.MASK_SHAPE) != 2 or self.MASK_SHAPE[0] != 2 * self.MASK_POOL_SIZE or self.MASK_SHAPE[1] != 2 * self.MASK_POOL_SIZE:
            raise ValueError(
                f"MASK_SHAPE {list(self.MASK_SHAPE)} must be twice MASK_POOL_SIZE ({self.MASK_POOL_SIZE}): "
                "the mask head upsamples its pooled features once by 2"
            )
        if self.POOLING_MODE not in POOLING_MODES:
            raise ValueError(f"POOLING_MODE must be one of {POOLING_MODES}, got {self.POOLING_MODE!r}")
        if not 0.0 <= self.BN_MOMENTUM < 1.0:
            raise ValueError(f"BN_MOMENTUM must be in [0, 1), got {self.BN_MOMENTUM!r}")
        if self.HEAD_NORM not in HEAD_NORMS:
            raise ValueError(f"HEAD_NORM must be one of {HEAD_NORMS}, got {self.HEAD_NORM!r}")
        if self.HEAD_NORM == "gn" and self.FPN_CLASSIF_FC_LAYERS_SIZE < GROUP_NORM_GROUPS * MIN_CHANNELS_PER_GROUP:
            raise ValueError(
                f"HEAD_NORM='gn' needs FPN_CLASSIF_FC_LAYERS_SIZE >= {GROUP_NORM_GROUPS * MIN_CHANNELS_PER_GROUP} "
                f"({GROUP_NORM_GROUPS} groups of >= {MIN_CHANNELS_PER_GROUP} channels), got "
                f"{self.FPN_CLASSIF_FC_LAYERS_SIZE}; use a wider fc or HEAD_NORM='none'")
        if self.MIXED_PRECISION not in MIXED_PRECISION_POLICIES:
            raise ValueError(f"MIXED_PRECISION must be one of {MIXED_PRECISION_POLICIES}, "
                             f"got {self.MIXED_PRECISION!r}")
        self._validate_mask_ablation_fields()
        if self.OPTIMIZER not in ("sgd", "adam", "adamw"):
            raise ValueError(f"OPTIMIZER must be 'sgd', 'adam' or 'adamw', got {self.OPTIMIZER!r}")
        if not self.USE_RPN_ROIS:
            # matterport's False fed the heads RoIs made by its data generator instead of the
            # RPN's proposals; nothing here makes such RoIs, so the setting would be ignored.
            raise ValueError("USE_RPN_ROIS = False (heads trained on RoIs from the data generator, a matterport "
                             "option) is not supported: the heads always train on the RPN's proposals")
        for name in ("ROI_LEVEL_MODE", "ROI_SAMPLING"):
            if getattr(self, name) not in ("matterport", "paper"):
                raise ValueError(f"{name} must be 'matterport' or 'paper', got {getattr(self, name)!r}")
        unknown = set(self.LOSS_WEIGHTS) - set(Config.LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"LOSS_WEIGHTS has unknown losses {sorted(unknown)}; known: {sorted(Config.LOSS_WEIGHTS)}")
        for name in ("RPN_NMS_THRESHOLD", "DETECTION_NMS_THRESHOLD", "DETECTION_MIN_CONFIDENCE"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        self._validate_keypoint_fields()

    def _validate_mask_ablation_fields(self) -> None:
        """Checks MASK_LOSS, MASK_CLASS_AGNOSTIC and MASK_HEAD_TYPE (and that they fit together)."""
        if self.MASK_LOSS not in MASK_LOSSES:
            raise ValueError(f"MASK_LOSS must be one of {MASK_LOSSES}, got {self.MASK_LOSS!r}")
        if not isinstance(self.MASK_CLASS_AGNOSTIC, (bool, np.bool_)):
            raise ValueError(f"MASK_CLASS_AGNOSTIC must be True or False, got {self.MASK_CLASS_AGNOSTIC!r}")
        if self.MASK_HEAD_TYPE not in MASK_HEAD_TYPES:
            raise ValueError(f"MASK_HEAD_TYPE must be one of {MASK_HEAD_TYPES}, got {self.MASK_HEAD_TYPE!r}")
        if self.MASK_LOSS == "softmax" and self.MASK_CLASS_AGNOSTIC:
            # A softmax over a single shared channel is identically 1: nothing to learn.
            raise ValueError("MASK_LOSS='softmax' needs class-specific masks (a softmax over the K class "
                             "channels); it cannot be combined with MASK_CLASS_AGNOSTIC=True")

    def _validate_backbone_type(self) -> None:
        """Checks BACKBONE_TYPE and, for "c4", the fields the C4 graph depends on."""
        if self.BACKBONE_TYPE not in BACKBONE_TYPES:
            raise ValueError(f"BACKBONE_TYPE must be one of {BACKBONE_TYPES}, got {self.BACKBONE_TYPE!r}")
        if self.BACKBONE_TYPE != "c4":
            return
        hint = "(C4Config / c4_defaults() hold the paper's C4 values)"
        if callable(self.BACKBONE):
            raise ValueError("BACKBONE_TYPE='c4' needs a named BACKBONE (its stage 5 becomes the box head), "
                             f"got the callable {self.BACKBONE!r}")
        if list(self.BACKBONE_STRIDES) != [16]:
            raise ValueError(f"BACKBONE_TYPE='c4' runs the RPN on C4 alone: BACKBONE_STRIDES must be [16], "
                             f"got {list(self.BACKBONE_STRIDES)} {hint}")
        if len(self.RPN_ANCHOR_SCALES) < 1:
            raise ValueError(f"RPN_ANCHOR_SCALES must have at least one scale, got {self.RPN_ANCHOR_SCALES!r}")
        if self.POOL_SIZE % 2 or self.MASK_POOL_SIZE != self.POOL_SIZE // 2:
            raise ValueError(
                f"BACKBONE_TYPE='c4': the mask head reads the box head's res5 output (stride 2 on the "
                f"POOL_SIZE crops), so POOL_SIZE must be even and MASK_POOL_SIZE = POOL_SIZE // 2; got "
                f"POOL_SIZE={self.POOL_SIZE}, MASK_POOL_SIZE={self.MASK_POOL_SIZE} {hint}")
        if self.KEYPOINT_HEAD:
            raise ValueError("KEYPOINT_HEAD needs BACKBONE_TYPE='fpn' (the keypoint head pools from the pyramid)")
        if getattr(self, "MASK_HEAD_TYPE", "fcn") != "fcn":
            raise ValueError(f"BACKBONE_TYPE='c4' has its own mask head (deconv on res5): MASK_HEAD_TYPE must be "
                             f"'fcn', got {self.MASK_HEAD_TYPE!r}")

    def _validate_keypoint_fields(self) -> None:
        """Checks the Keypoint R-CNN block (names, flip map and skeleton must fit NUM_KEYPOINTS)."""
        from mrcnn.data.keypoints import check_flip_map, flip_map_from_names

        for name in ("NUM_KEYPOINTS", "KEYPOINT_POOL_SIZE", "KEYPOINT_HEAD_CONV_CHANNELS", "KEYPOINT_HEAD_NUM_CONVS"):
            value = getattr(self, name)
            if value < 1:  # an int already (_check_scalar_types)
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        k = int(self.NUM_KEYPOINTS)
        shape = [int(v) for v in self.KEYPOINT_MASK_SHAPE]
        if shape != [4 * self.KEYPOINT_POOL_SIZE] * 2:
            raise ValueError(
                f"KEYPOINT_MASK_SHAPE {list(self.KEYPOINT_MASK_SHAPE)} must be 4 * KEYPOINT_POOL_SIZE "
                f"({self.KEYPOINT_POOL_SIZE}) square: the keypoint head upsamples by 2 (deconv) and 2 (bilinear)"
            )
        if self.KEYPOINT_NAMES is not None:
            if len(self.KEYPOINT_NAMES) != k:
                raise ValueError(f"KEYPOINT_NAMES has {len(self.KEYPOINT_NAMES)} names but NUM_KEYPOINTS is {k}")
            if self.KEYPOINT_FLIP_MAP is None:
                flip_map_from_names(self.KEYPOINT_NAMES)  # raises for a left_ name without right_ partner
        if self.KEYPOINT_FLIP_MAP is not None:
            check_flip_map(self.KEYPOINT_FLIP_MAP, k, "KEYPOINT_FLIP_MAP")
        for pair in self.KEYPOINT_SKELETON or ():
            if len(pair) != 2 or any(not 0 <= int(i) < k for i in pair):
                raise ValueError(f"KEYPOINT_SKELETON entries must be pairs of keypoint indices in [0, {k}), got {pair!r}")

    def update(self, **fields: Any) -> Config:
        """Sets fields on this instance, recomputes derived values and validates; returns self.

        Raises:
            ValueError: for an unknown field, a derived field, or an invalid value.
        """
        known = set(self.field_names())
        bad = sorted(name for name in fields if name not in known)
        if bad:
            raise ValueError(f"cannot update {bad}: not settable fields of {type(self).__name__} "
                             f"(derived fields {list(DERIVED_FIELDS)} are computed)")
        for name, value in fields.items():
            setattr(self, name, value)
        self.validate()
        return self

    def _check_scalar_types(self) -> None:
        """Raises ValueError for a field annotated int, float, bool or str holding another type.

        A value of the wrong kind (e.g. ``--set IMAGE_MIN_DIM=abc`` arriving as a string) would
        otherwise fail later inside an arithmetic or comparison, with a TypeError naming no field.
        """
        for name, (kind, optional) in SCALAR_FIELDS.items():
            value = getattr(self, name)
            if value is None and optional:
                continue
            if not is_scalar_of(value, kind):
                expected = _SCALAR_NAMES[kind] + (" or None" if optional else "")
                raise ValueError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")

    # ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields, derived ones included (numpy arrays become lists).

        A callable BACKBONE is stored by its qualified name, for information only; an Architecture
        as the dict of its fields (from_dict turns it back into one).
        """
        out: dict[str, Any] = {}
        for name in self.field_names() + list(DERIVED_FIELDS):
            out[name] = _to_jsonable(getattr(self, name))
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Builds a config of this class with `values` overriding its defaults.

        Derived fields in `values` are ignored and recomputed.

        Raises:
            ValueError: for a key that is not a field of this config class.
        """
        known = set(cls.field_names())
        unknown = [k for k in values if k not in known and k not in DERIVED_FIELDS]
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)} for {cls.__name__}")
        config = cls.__new__(cls)
        for name in cls.field_names():
            setattr(config, name, _copy_value(getattr(cls, name)))
        for name, value in values.items():
            if name in DERIVED_FIELDS:
                continue
            default = getattr(cls, name)
            if isinstance(default, np.ndarray):
                value = np.array(value, dtype=default.dtype)
            elif isinstance(default, tuple) and isinstance(value, list):
                value = tuple(value)
            elif (name in ("BACKBONE", "COMPUTE_BACKBONE_SHAPE")) and callable(default) and isinstance(value, str):
                value = default  # a callable cannot come back from JSON; keep the class's own
            elif name == "BACKBONE" and isinstance(value, dict):
                value = Architecture(**value)
            elif isinstance(default, PurePath) and isinstance(value, str):
                value = type(default)(value)
            elif isinstance(value, str) and not _json_holds(default):
                # Stored by repr (`_to_jsonable`): the class's own value, said when it differs.
                if value != repr(default):
                    from mrcnn import utils

                    warnings.warn(f"config field {name} was saved as {value!r:.120}, which JSON cannot hold; "
                                  f"{cls.__name__}'s own value {default!r:.120} is used instead",
                                  stacklevel=utils.user_stacklevel())
                value = _copy_value(default)
            setattr(config, name, value)
        config.validate()
        return config

    def save(self, path: str | Path) -> None:
        """Writes `to_dict()` as JSON to `path`."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Reads a config written by `save()`.

        Raises:
            FileNotFoundError: naming `path` when it does not exist.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        return cls.from_dict(json.loads(path.read_text()))

    def display(self) -> None:
        """Prints every field, one per line, as matterport's `display()` does."""
        print("\nConfigurations:")
        for name in self.field_names() + list(DERIVED_FIELDS):
            print(f"{name:30} {getattr(self, name)}")
        print("\n")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} NAME={self.NAME!r} NUM_CLASSES={self.NUM_CLASSES}>"


class C4Config(Config):
    """The paper's ResNet-C4 Mask R-CNN (Fig. 4 left; Detectron's R-50-C4 settings); subclass it like Config.

        class MyC4Config(C4Config):
            NAME = "shapes_c4"
            NUM_CLASSES = 1 + 3

    To switch an existing config instead: ``config.update(**c4_defaults())`` (then override what
    you like). The values that differ from Config's FPN defaults:

    * BACKBONE_TYPE "c4", BACKBONE_STRIDES [16]: the RPN and the RoIs read C4 only.
    * RPN_ANCHOR_SCALES (32, 64, 128, 256, 512) and RPN_ANCHOR_RATIOS [0.5, 1, 2] (Config's values,
      restated): all 15 anchors at every C4 position (Detectron's C4: 5 sizes x 3 aspect ratios
      at stride 16) instead of one scale per pyramid level.
    * POOL_SIZE 14: RoIAlign crops of C4, 14 x 14 x 1024, into res5 (stride 2) -> 7 x 7 x 2048.
    * MASK_POOL_SIZE 7, MASK_SHAPE [14, 14]: the mask head upsamples res5's 7 x 7 once (the
      paper's 14 x 14 C4 masks).
    * TRAIN_ROIS_PER_IMAGE 64: sampled RoIs per image in training (the paper's C4 value; 512 for FPN).
    * POST_NMS_ROIS_INFERENCE 300: test-time proposals (the paper's C4 value; 1000 for FPN).
    """

    BACKBONE_TYPE = "c4"
    BACKBONE_STRIDES = [16]
    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]
    POOL_SIZE = 14
    MASK_POOL_SIZE = 7
    MASK_SHAPE = [14, 14]
    TRAIN_ROIS_PER_IMAGE = 64
    POST_NMS_ROIS_INFERENCE = 300


def c4_defaults() -> dict[str, Any]:
    """The fields `C4Config` sets, as a fresh dict (for ``config.update(**c4_defaults())``)."""
    return {name: _copy_value(value) for name, value in vars(C4Config).items() if name.isupper()}


_SCALAR_NAMES = {int: "an int", float: "a number", bool: "True or False", str: "a string"}


def _scalar_fields(config_class: type) -> dict[str, tuple[type, bool]]:
    """Fields annotated ``int``, ``float``, ``bool`` or ``str`` (``| None`` allowed) -> (type, None allowed)."""
    fields = {}
    for name, hint in typing.get_type_hints(config_class).items():
        members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds = [member for member in members if member is not type(None)]
        if name.isupper() and len(kinds) == 1 and kinds[0] in _SCALAR_NAMES:
            fields[name] = (kinds[0], len(kinds) < len(members))
    return fields


def is_scalar_of(value: Any, kind: type) -> bool:
    """Whether `value` is a `kind` (numpy scalars included; an int is a number; a bool only a bool)."""
    is_bool = isinstance(value, (bool, np.bool_))
    if kind is bool or is_bool:
        return kind is bool and is_bool
    if kind is int:
        return isinstance(value, (int, np.integer))
    if kind is float:
        return isinstance(value, (int, float, np.integer, np.floating))
    return isinstance(value, str)


SCALAR_FIELDS = _scalar_fields(Config)


def _copy_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def _json_holds(value: Any) -> bool:
    """Whether `_to_jsonable` stores `value` as something `from_dict` can turn back into it."""
    return value is None or isinstance(value, (str, int, float, bool, list, tuple, dict, np.ndarray, np.generic,
                                               Architecture, PurePath)) or callable(value)


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Architecture):
        return _to_jsonable(dataclasses.asdict(value))
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.bool_):  # not an np.integer
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, PurePath):
        return str(value)  # from_dict turns it back into a Path where the default is one
    if value is not None and not isinstance(value, (str, int, float, bool)):
        return repr(value)  # an extra field of a subclass json cannot hold: recorded for information
    return value
