"""samples/custom/custom.py: weights resolution (never downloads unasked) and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.io

from mrcnn.weights import KNOWN_WEIGHTS
from samples.custom import custom

FIXTURE = Path(__file__).resolve().parents[2] / "samples" / "custom" / "fixture"
# A 64 px model with narrow heads: seconds per step on 2 CPU cores.
TINY = ["IMAGE_MIN_DIM=64", "IMAGE_MAX_DIM=64", "IMAGES_PER_GPU=1", "TOP_DOWN_PYRAMID_SIZE=32",
        "FPN_CLASSIF_FC_LAYERS_SIZE=32", "TRAIN_ROIS_PER_IMAGE=8", "PRE_NMS_LIMIT=200",
        "POST_NMS_ROIS_TRAINING=32", "POST_NMS_ROIS_INFERENCE=16", "RPN_TRAIN_ANCHORS_PER_IMAGE=32",
        "MAX_GT_INSTANCES=4", "DETECTION_MAX_INSTANCES=4", "MINI_MASK_SHAPE=[16,16]", "STEPS_PER_EPOCH=1",
        "VALIDATION_STEPS=1", "DETECTION_MIN_CONFIDENCE=0.0", "RPN_ANCHOR_SCALES=[8,16,32,64,128]"]


def _set(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.mark.parametrize("weights, key, extra", [
    ("imagenet", "imagenet_keras_resnet50", []),
    ("coco", "coco", ["--set", "BACKBONE=resnet101"]),
])
def test_offline_start_weights_fail_clearly(weights, key, extra, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MRCNN_WEIGHTS_DIR", str(tmp_path / "cache"))
    code = custom.main(["train", "--dataset", str(FIXTURE), "--weights", weights, "--logs", str(tmp_path),
                        "--verbose", "0"] + extra)
    message = capsys.readouterr().err
    assert code == 2
    assert KNOWN_WEIGHTS[key].url in message and str(tmp_path / "cache") in message and "--download" in message
    assert not (tmp_path / "cache").exists()  # nothing downloaded


def test_coco_needs_resnet101(tmp_path: Path, capsys) -> None:
    assert custom.main(["train", "--dataset", str(FIXTURE), "--weights", "coco", "--logs", str(tmp_path)]) == 2
    assert "ResNet-101" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:training from scratch with TRAIN_BN False")  # one step of wiring
def test_train_then_detect_and_splash(tmp_path: Path, capsys) -> None:
    """One heads step (the all-layers stage is the same call with another regex), then inference
    commands that find the run's checkpoint, config.json and class_names.json through --weights last."""
    logs = str(tmp_path / "logs")
    assert custom.main(["train", "--dataset", str(FIXTURE), "--weights", "none", "--logs", logs,
                        "--epochs-heads", "1", "--epochs-all", "1", "--verbose", "0"] + _set(TINY)) == 0
    (run,) = [d for d in Path(logs).iterdir() if d.is_dir()]
    assert json.loads((run / "class_names.json").read_text()) == ["balloon", "box"]
    assert [p.name for p in run.glob("*.weights.h5")] == ["mask_rcnn_custom_0001.weights.h5"]
    assert json.loads((run / "config.json").read_text())["IMAGE_MAX_DIM"] == 64
    # Continuing the run keeps its settings (config.json), with --set on top.
    assert custom.main(["train", "--dataset", str(FIXTURE), "--weights", "last", "--logs", logs,
                        "--epochs-heads", "2", "--epochs-all", "2", "--verbose", "0", "--set", "VALIDATION_STEPS=2"]) == 0
    assert sorted(p.name for p in run.glob("*.weights.h5")) == ["mask_rcnn_custom_0001.weights.h5",
                                                                "mask_rcnn_custom_0002.weights.h5"]
    saved = json.loads((run / "config.json").read_text())
    assert saved["IMAGE_MAX_DIM"] == 64 and saved["TRAIN_ROIS_PER_IMAGE"] == 8 and saved["VALIDATION_STEPS"] == 2

    image = str(FIXTURE / "val" / "c.png")
    out = str(tmp_path / "splash.png")
    assert custom.main(["splash", "--logs", logs, "--image", image, "--out", out, "--min-score", "0",
                        "--verbose", "0"]) == 0
    splashed, original = skimage.io.imread(out), skimage.io.imread(image)
    assert splashed.shape == original.shape
    # Outside every detection the splash is grey; inside, the original colours.
    grey = (splashed[..., 0] == splashed[..., 1]) & (splashed[..., 1] == splashed[..., 2])
    assert grey.any()
    assert np.array_equal(splashed[~grey], original[~grey])
    out = str(tmp_path / "detections.png")
    assert custom.main(["detect", "--logs", logs, "--image", image, "--out", out, "--verbose", "0"]) == 0
    assert skimage.io.imread(out).ndim == 3

    # The exported SavedModel detects what the run's checkpoint detects (after one step that may
    # be nothing: tests/test_export.py compares real detections), and names the classes.
    from mrcnn.export import ExportedMaskRCNN

    exported = tmp_path / "export" / "1"
    assert custom.main(["export", "--logs", logs, "--out", str(exported), "--min-score", "0", "--frozen",
                        "--verbose", "0"]) == 0
    assert json.loads((exported / "assets.extra" / "mrcnn.json").read_text())["frozen"] is True
    served = ExportedMaskRCNN(exported)
    assert served.class_names == ["BG", "balloon", "box"]
    args = custom.build_parser().parse_args(["detect", "--logs", logs, "--image", image, "--min-score", "0"])
    model, _ = custom.inference_model(args)
    pixels = skimage.io.imread(image)
    ours, theirs = served.detect([pixels])[0], model.detect([pixels])[0]
    for key in ("rois", "class_ids", "masks"):
        np.testing.assert_array_equal(ours[key], theirs[key])
    # A square-mode run molds to its own canvas: --canvas may only repeat it.
    capsys.readouterr()
    assert custom.main(["export", "--logs", logs, "--out", str(tmp_path / "e2"), "--canvas", "128,128",
                        "--verbose", "0"]) == 2
    assert "molds every image to (64, 64), not (128, 128)" in capsys.readouterr().err
