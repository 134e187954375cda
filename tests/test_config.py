"""Tests for mrcnn/config.py."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from mrcnn.config import C4Config, Config, c4_defaults
from mrcnn.modeling.architecture import Architecture


class TinyConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 4
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    IMAGES_PER_GPU = 3
    GPU_COUNT = 2


def test_derived_values_are_computed_on_construction():
    config = TinyConfig()
    assert config.BATCH_SIZE == 6
    assert config.IMAGE_SHAPE.tolist() == [128, 128, 3]
    assert config.IMAGE_META_SIZE == 1 + 3 + 3 + 4 + 1 + 4


def test_min_dim_above_max_dim_follows_matterport_in_square_mode():
    """Found in review: a matterport config setting only IMAGE_MAX_DIM = 512 (IMAGE_MIN_DIM stays 800)
    was refused; in "square" mode the cap wins, as in matterport."""
    from mrcnn import utils

    class OnlyMaxDim(Config):
        NAME = "only_max"
        NUM_CLASSES = 2
        IMAGE_MAX_DIM = 512

    config = OnlyMaxDim()
    assert config.IMAGE_MIN_DIM == 800 and config.IMAGE_SHAPE.tolist() == [512, 512, 3]
    image = np.zeros((300, 400, 3), np.uint8)
    resized, window, scale, _, _ = utils.resize_image(image, min_dim=config.IMAGE_MIN_DIM,
                                                      max_dim=config.IMAGE_MAX_DIM, mode="square")
    assert resized.shape == (512, 512, 3) and window == (64, 0, 448, 512) and scale == pytest.approx(1.28)
    OnlyMaxDim().update(IMAGE_RESIZE_MODE="none")
    with pytest.raises(ValueError, match=r"IMAGE_MIN_DIM \(800\) must not exceed IMAGE_MAX_DIM \(512\) in 'pad64'"):
        OnlyMaxDim().update(IMAGE_RESIZE_MODE="pad64")


def test_crop_mode_image_shape_uses_min_dim():
    class Crop(TinyConfig):
        IMAGE_RESIZE_MODE = "crop"
        IMAGE_MIN_DIM = 64

    assert Crop().IMAGE_SHAPE.tolist() == [64, 64, 3]


def test_matterport_defaults():
    assert Config.RPN_ANCHOR_SCALES == (32, 64, 128, 256, 512)
    assert Config.DETECTION_MIN_CONFIDENCE == 0.7
    assert Config.MASK_SHAPE == [28, 28]
    assert Config.RPN_CONV_CHANNELS == 512  # rpn_conv_shared (3, 3, 256, 512) in mask_rcnn_coco.h5
    assert Config.MEAN_PIXEL.tolist() == [123.7, 116.8, 103.9]


def test_instances_do_not_share_mutable_defaults():
    a, b = TinyConfig(), TinyConfig()
    a.LOSS_WEIGHTS["rpn_class_loss"] = 5.0
    a.MEAN_PIXEL[0] = 0.0
    assert b.LOSS_WEIGHTS["rpn_class_loss"] == 1.0
    assert TinyConfig.MEAN_PIXEL[0] == pytest.approx(123.7)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"NUM_CLASSES": 1}, "NUM_CLASSES"),
        ({"IMAGE_MAX_DIM": 100, "IMAGE_MIN_DIM": 100}, "divisible by 64"),
        ({"RPN_ANCHOR_SCALES": (32, 64)}, "RPN_ANCHOR_SCALES"),
        ({"IMAGE_RESIZE_MODE": "stretch"}, "IMAGE_RESIZE_MODE"),
        ({"BACKBONE": "vgg16"}, "BACKBONE"),
        ({"MASK_SHAPE": [14, 14]}, "MASK_SHAPE"),
        ({"POOLING_MODE": "avg"}, "POOLING_MODE"),
        ({"IMAGES_PER_GPU": 0}, "IMAGES_PER_GPU"),
        ({"RPN_CONV_CHANNELS": 0}, "RPN_CONV_CHANNELS"),
        ({"KEEP_CHECKPOINTS": -1}, "KEEP_CHECKPOINTS"),
        ({"LOSS_WEIGHTS": {"mask": 1.0}}, "LOSS_WEIGHTS"),
        ({"MEAN_PIXEL": np.array([1.0, 2.0])}, "MEAN_PIXEL"),
        ({"HEAD_NORM": "batch"}, "HEAD_NORM"),
        ({"HEAD_NORM": "gn", "FPN_CLASSIF_FC_LAYERS_SIZE": 64}, "FPN_CLASSIF_FC_LAYERS_SIZE >= 256"),
        ({"MIXED_PRECISION": "float16"}, "MIXED_PRECISION"),
        ({"BACKBONE_TYPE": "c5"}, "BACKBONE_TYPE"),
        ({"BACKBONE_TYPE": "c4"}, r"BACKBONE_STRIDES must be \[16\]"),
        ({**c4_defaults(), "POOL_SIZE": 7}, "POOL_SIZE must be even"),
        ({**c4_defaults(), "MASK_POOL_SIZE": 14}, r"MASK_POOL_SIZE = POOL_SIZE // 2"),
        ({**c4_defaults(), "MASK_SHAPE": [28, 28]}, "MASK_SHAPE"),
        ({**c4_defaults(), "KEYPOINT_HEAD": True}, "KEYPOINT_HEAD"),
        ({**c4_defaults(), "MASK_HEAD_TYPE": "mlp"}, "MASK_HEAD_TYPE"),
        ({**c4_defaults(), "IMAGE_MAX_DIM": 120, "IMAGE_MIN_DIM": 120}, "divisible by 16"),
        ({**c4_defaults(), "BACKBONE": staticmethod(lambda: None),
          "COMPUTE_BACKBONE_SHAPE": staticmethod(lambda shape: None)}, "named BACKBONE"),
        ({"MASK_LOSS": "multinomial"}, "MASK_LOSS"),
        ({"ROI_SAMPLING": "detectron"}, "ROI_SAMPLING must be 'matterport' or 'paper'"),
        ({"ROI_LEVEL_MODE": "floor"}, "ROI_LEVEL_MODE must be 'matterport' or 'paper'"),
        ({"USE_RPN_ROIS": False}, "USE_RPN_ROIS = False .* is not supported"),
        ({"MASK_CLASS_AGNOSTIC": "yes"}, "MASK_CLASS_AGNOSTIC"),
        ({"MASK_HEAD_TYPE": "conv"}, "MASK_HEAD_TYPE"),
        ({"MASK_LOSS": "softmax", "MASK_CLASS_AGNOSTIC": True}, "class-specific masks"),
    ],
)
def test_validate_names_the_bad_field(overrides, message):
    bad = type("Bad", (TinyConfig,), overrides)
    with pytest.raises(ValueError, match=message):
        bad()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("IMAGE_MIN_DIM", "abc", r"IMAGE_MIN_DIM must be an int, got 'abc' \(str\)"),  # --set IMAGE_MIN_DIM=abc
        ("NUM_CLASSES", "3", "NUM_CLASSES must be an int, got '3'"),
        ("GPU_COUNT", 2.0, r"GPU_COUNT must be an int, got 2.0 \(float\)"),
        ("STEPS_PER_EPOCH", True, "STEPS_PER_EPOCH must be an int, got True"),
        ("LEARNING_RATE", "1e-3", "LEARNING_RATE must be a number, got '1e-3'"),
        ("USE_MINI_MASK", 1, r"USE_MINI_MASK must be True or False, got 1 \(int\)"),
        ("TRAIN_BN", "no", "TRAIN_BN must be True or False or None"),
        ("NAME", 3, "NAME must be a string or None"),
        ("IMAGE_RESIZE_MODE", None, "IMAGE_RESIZE_MODE must be a string, got None"),
    ],
)
def test_scalar_fields_of_the_wrong_type_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        type("Bad", (TinyConfig,), {field: value})()
    with pytest.raises(ValueError, match=message):  # update() checks before computing derived values
        TinyConfig().update(**{field: value})


def test_scalar_fields_take_numpy_scalars_ints_for_numbers_and_none_where_optional():
    config = TinyConfig().update(IMAGE_MIN_DIM=np.int64(128), LEARNING_RATE=1, DETECTION_MIN_CONFIDENCE=np.float32(0.5),
                                 USE_MINI_MASK=np.bool_(False), TRAIN_BN=None, SEED=None, NAME=None)
    assert config.IMAGE_MIN_DIM == 128 and config.LEARNING_RATE == 1 and config.TRAIN_BN is None


def test_mask_ablation_defaults_are_the_papers():
    # Table 2: sigmoid per-class masks (b), class-specific (K channels), FCN head (e).
    assert (Config.MASK_LOSS, Config.MASK_CLASS_AGNOSTIC, Config.MASK_HEAD_TYPE) == ("sigmoid", False, "fcn")
    config = TinyConfig().update(MASK_LOSS="softmax", MASK_HEAD_TYPE="mlp")
    assert TinyConfig.from_dict(config.to_dict()).MASK_LOSS == "softmax"


def test_backbone_fields():
    assert Config.BACKBONE_TYPE == "fpn"  # the paper's best and matterport's only
    for name in ("resnet50", "resnet101", "resnext101_32x4d", "resnext101_64x4d"):
        assert TinyConfig().update(BACKBONE=name).BACKBONE == name
    # The paper's C4 values (Fig. 4 left; 64 RoIs per image, 300 test proposals, 14x14 masks).
    assert c4_defaults() == {"BACKBONE_TYPE": "c4", "BACKBONE_STRIDES": [16],
                             "RPN_ANCHOR_SCALES": (32, 64, 128, 256, 512), "RPN_ANCHOR_RATIOS": [0.5, 1, 2],
                             "POOL_SIZE": 14, "MASK_POOL_SIZE": 7, "MASK_SHAPE": [14, 14],
                             "TRAIN_ROIS_PER_IMAGE": 64, "POST_NMS_ROIS_INFERENCE": 300}
    c4_defaults()["MASK_SHAPE"].append(1)  # fresh copies: C4Config is untouched
    assert C4Config.MASK_SHAPE == [14, 14]

    class SmallC4(C4Config):
        NUM_CLASSES = 3
        IMAGE_MIN_DIM = 80  # C4 only needs multiples of 16
        IMAGE_MAX_DIM = 80

    config = SmallC4()
    assert SmallC4.from_dict(config.to_dict()).to_dict() == config.to_dict()
    switched = TinyConfig().update(**c4_defaults())
    assert switched.BACKBONE_TYPE == "c4" and switched.TRAIN_ROIS_PER_IMAGE == 64 and switched.NUM_CLASSES == 4


def test_json_round_trip(tmp_path):
    config = TinyConfig()
    config.DETECTION_MIN_CONFIDENCE = 0.5
    path = tmp_path / "config.json"
    config.save(path)
    json.loads(path.read_text())  # plain JSON
    loaded = TinyConfig.load(path)
    assert loaded.to_dict() == config.to_dict()
    assert isinstance(loaded.MEAN_PIXEL, np.ndarray)
    assert isinstance(loaded.RPN_ANCHOR_SCALES, tuple)
    # A base Config can reload a subclass's file too (all fields are stored).
    assert Config.from_dict(config.to_dict()).NUM_CLASSES == 4


def test_json_holds_numpy_bools_paths_and_other_extra_fields(tmp_path):
    # np.bool_ passes validation but is no np.integer: json.dumps raised on it. A subclass's extra
    # fields may hold anything: a Path round-trips, other objects are recorded by repr.
    class WithExtras(TinyConfig):
        DATA_DIR = Path("/data/cells")
        CALLBACK_ARGS = frozenset({1})

    config = WithExtras().update(USE_MINI_MASK=np.bool_(True), DATA_DIR=Path("/data/other"))
    config.save(tmp_path / "config.json")
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["USE_MINI_MASK"] is True and stored["DATA_DIR"] == "/data/other"
    assert stored["CALLBACK_ARGS"] == "frozenset({1})"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stored repr is the class's value: nothing to say
        loaded = WithExtras.load(tmp_path / "config.json")
    assert loaded.DATA_DIR == Path("/data/other") and loaded.USE_MINI_MASK is True
    assert loaded.CALLBACK_ARGS == frozenset({1})  # the class's own value, not the repr string
    # A changed value JSON cannot hold comes back as the class's: said, not silent.
    WithExtras().update(CALLBACK_ARGS=frozenset({2})).save(tmp_path / "changed.json")
    with pytest.warns(UserWarning, match=r"config field CALLBACK_ARGS was saved as 'frozenset\(\{2\}\)'.*"
                                         r"WithExtras's own value frozenset\(\{1\}\) is used"):
        assert WithExtras.load(tmp_path / "changed.json").CALLBACK_ARGS == frozenset({1})


def test_architecture_backbone_validates_and_round_trips(tmp_path):
    narrow = Architecture((2, 2, 2, 2), width=32, out_width=128)
    config = TinyConfig().update(BACKBONE=narrow)
    assert config.to_dict()["BACKBONE"] == {"blocks": [2, 2, 2, 2], "cardinality": 1, "width": 32,
                                            "stride_in_1x1": True, "out_width": 128}
    config.save(tmp_path / "config.json")
    loaded = TinyConfig.load(tmp_path / "config.json")
    assert loaded.BACKBONE == narrow and isinstance(loaded.BACKBONE, Architecture)

    class Narrow(TinyConfig):
        BACKBONE = narrow

    assert Narrow.from_dict(Narrow().to_dict()).BACKBONE == narrow
    with pytest.raises(ValueError, match="an Architecture or a callable"):
        TinyConfig().update(BACKBONE={"blocks": [1, 1, 1, 1]})


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="NOT_A_FIELD"):
        TinyConfig.from_dict({"NOT_A_FIELD": 1})


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        TinyConfig.load(tmp_path / "nope.json")


def test_display_prints_every_field(capsys):
    TinyConfig().display()
    out = capsys.readouterr().out
    for name in ("NUM_CLASSES", "BATCH_SIZE", "IMAGE_META_SIZE", "POOLING_MODE"):
        assert name in out


def test_update_recomputes_derived_values_and_validates():
    config = TinyConfig().update(IMAGES_PER_GPU=5, OPTIMIZER="adam")
    assert config.BATCH_SIZE == 10 and config.OPTIMIZER == "adam"
    with pytest.raises(ValueError, match="BATCH_SIZE"):
        config.update(BATCH_SIZE=3)
    with pytest.raises(ValueError, match="OPTIMIZER"):
        config.update(OPTIMIZER="rmsprop")


def test_validate_recomputes_derived_values_of_fields_set_on_the_instance():
    config = TinyConfig()
    config.IMAGES_PER_GPU = 1  # matterport notebooks set fields on an inference config like this
    config.IMAGE_MIN_DIM = config.IMAGE_MAX_DIM = 256
    config.validate()  # MaskRCNN(config=...) runs it
    assert config.BATCH_SIZE == 2 and config.IMAGE_SHAPE.tolist() == [256, 256, 3]
    config.IMAGE_MAX_DIM = 100
    with pytest.raises(ValueError, match="IMAGE_MAX_DIM=100 must be divisible by 64"):
        config.validate()


# Keypoint R-CNN fields (their own block in config.py)
class _KeypointConfig(Config):
    NUM_CLASSES = 2
    KEYPOINT_HEAD = True
    NUM_KEYPOINTS = 3
    KEYPOINT_NAMES = ("nose", "left_eye", "right_eye")


def test_keypoint_defaults_are_the_papers():
    assert (Config.KEYPOINT_HEAD, Config.NUM_KEYPOINTS, Config.KEYPOINT_POOL_SIZE) == (False, 17, 14)
    assert tuple(Config.KEYPOINT_MASK_SHAPE) == (56, 56) and Config.MASK_HEAD is True
    assert (Config.KEYPOINT_HEAD_NUM_CONVS, Config.KEYPOINT_HEAD_CONV_CHANNELS) == (8, 512)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"KEYPOINT_MASK_SHAPE": (28, 28)}, "KEYPOINT_MASK_SHAPE"),
        ({"NUM_KEYPOINTS": 4}, "KEYPOINT_NAMES"),
        ({"KEYPOINT_NAMES": ("nose", "left_eye", "eye")}, "left_eye"),
        ({"KEYPOINT_FLIP_MAP": (1, 1, 2)}, "KEYPOINT_FLIP_MAP"),
        ({"KEYPOINT_SKELETON": ((0, 3),)}, "KEYPOINT_SKELETON"),
        ({"KEYPOINT_HEAD_NUM_CONVS": 0}, "KEYPOINT_HEAD_NUM_CONVS"),
    ],
)
def test_keypoint_fields_are_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        _KeypointConfig().update(**overrides)


def test_keypoint_config_round_trips_through_json(tmp_path):
    config = _KeypointConfig().update(KEYPOINT_SKELETON=((0, 1), (0, 2)), KEYPOINT_FLIP_MAP=(0, 2, 1))
    config.save(tmp_path / "c.json")
    loaded = _KeypointConfig.load(tmp_path / "c.json")
    assert [list(p) for p in loaded.KEYPOINT_SKELETON] == [[0, 1], [0, 2]]
    assert list(loaded.KEYPOINT_FLIP_MAP) == [0, 2, 1] and tuple(loaded.KEYPOINT_MASK_SHAPE) == (56, 56)
