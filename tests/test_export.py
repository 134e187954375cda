"""Tests for mrcnn/export.py: SavedModel export, and detection with the exported model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import export as export_module
from mrcnn.config import C4Config, Config
from mrcnn.evaluation.evaluate import evaluate_dataset
from mrcnn.export import INFO_PATH, ExportedMaskRCNN, _base_config, export_canvas, export_saved_model
from mrcnn.freezing import graph_op_types
from mrcnn.model import MaskRCNN
from mrcnn.ops import roi_align
from mrcnn.tiling import detect_tiled
from tests.test_model import NarrowConfig, _assert_same_detections, _set_trained_like_batchnorms, _shapes
from tests.test_model_keypoints import TinyKeypointConfig
from tests.test_tta import _with_foreground_bias

REPO = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["BG", "square", "circle", "triangle"]


def _model(config) -> MaskRCNN:
    keras.utils.set_random_seed(0)
    model = MaskRCNN(mode="inference", config=config)
    model.ensure_built()
    return _with_foreground_bias(model)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [_shapes(1, seed=9).load_image(0), rng.integers(0, 255, (50, 90, 3), dtype=np.uint8),
            rng.integers(0, 255, (64, 64), dtype=np.uint8)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _model(NarrowConfig())
    path = export_saved_model(model, tmp_path_factory.mktemp("export") / "narrow" / "1", class_names=CLASS_NAMES)
    return model, path


def test_exported_model_detects_as_the_keras_model(exported):
    model, path = exported
    served = ExportedMaskRCNN(path)
    images = _images()
    expected = model.detect(images)
    assert sum(len(r["class_ids"]) for r in expected) > 0
    for ours, theirs in zip(served.detect(images), expected, strict=True):
        _assert_same_detections(ours, theirs)
    assert served.canvas == (64, 64) and served.class_names == CLASS_NAMES
    assert served.config.NUM_CLASSES == 4 and served.config.BATCH_SIZE == model.config.BATCH_SIZE


def test_exported_model_runs_tiled_inference_and_evaluation(exported):
    # detect_tiled and evaluate_dataset call .detect and read .config: an export serves them too.
    model, path = exported
    served = ExportedMaskRCNN(path)
    field = np.random.default_rng(4).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    ours, theirs = detect_tiled(served, field, 64, 16), detect_tiled(model, field, 64, 16)
    assert len(theirs["class_ids"]) > 0
    _assert_same_detections(ours, theirs)
    dataset = _shapes(2, seed=5)
    assert evaluate_dataset(served, dataset)["mask_mAP50"] == evaluate_dataset(model, dataset)["mask_mAP50"]


def test_serving_signature_takes_molded_images_of_any_batch_size(exported):
    model, path = exported
    served = ExportedMaskRCNN(path)
    molded, metas, _ = model.mold_inputs(_images()[:1] * 3)  # 3 images: more than BATCH_SIZE
    outputs = served.serving_function(input_image=tf.constant(molded), input_image_meta=tf.constant(metas))
    assert sorted(outputs) == ["detections", "mrcnn_mask"]
    expected = model._infer(tf.constant(molded), tf.constant(metas))
    np.testing.assert_allclose(outputs["detections"].numpy(), expected["detections"].numpy(), rtol=1e-5, atol=1e-6)
    assert outputs["mrcnn_mask"].shape == (3, model.config.DETECTION_MAX_INSTANCES, 28, 28, 1)


def test_export_stores_the_config_and_the_roi_align_it_was_traced_with(exported):
    model, path = exported
    info = json.loads((path / INFO_PATH).read_text())
    assert info["canvas"] == [64, 64] and info["config"]["NAME"] == model.config.NAME
    # The graph holds the compiled op when it is built (`make test` builds it): loading must register it.
    graph_has_op = b"RoiAlign" in (path / "saved_model.pb").read_bytes()
    assert info["roi_align_op"] is graph_has_op is (roi_align.active_implementation() == "op")
    # The weights are stored once (Keras' ExportArchive.track would store each twice).
    weights_bytes = sum(v.numpy().nbytes for v in model.variables)
    stored = sum(f.stat().st_size for f in (path / "variables").iterdir())
    assert weights_bytes <= stored < 1.2 * weights_bytes + 1e6


def test_exported_model_loads_and_detects_in_a_fresh_process(exported, tmp_path):
    # A process that imports only mrcnn.export: the RoIAlign op must be registered by the loader.
    model, path = exported
    images = _images()
    np.save(tmp_path / "image.npy", images[0])
    script = (
        "import sys, numpy as np\n"
        "from mrcnn.export import ExportedMaskRCNN\n"
        "r = ExportedMaskRCNN(sys.argv[1]).detect([np.load(sys.argv[2])])[0]\n"
        "np.savez(sys.argv[3], **r)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "image.npy"), str(tmp_path / "out.npz")],
                   check=True, env=env, timeout=300)
    with np.load(tmp_path / "out.npz") as result:
        _assert_same_detections(dict(result), model.detect(images[:1])[0])


def test_frozen_export_detects_as_the_keras_model_without_variables(exported, tmp_path):
    model = _model(NarrowConfig())
    # BatchNorms far from the identity, as trained ones: folding must change nothing but rounding.
    _set_trained_like_batchnorms(model, gamma=(0.5, 1.5), shift=0.2, variance=(0.5, 2.0))
    path = export_saved_model(model, tmp_path / "frozen", frozen=True)
    served = ExportedMaskRCNN(path)
    assert json.loads((path / INFO_PATH).read_text())["frozen"] is True
    assert not set(graph_op_types(served.serving_function)) & {"ReadVariableOp", "VarHandleOp"}
    assert "ReadVariableOp" in graph_op_types(ExportedMaskRCNN(exported[1]).serving_function)  # the check can fail
    images = _images()
    for ours, theirs in zip(served.detect(images), model.detect(images), strict=True):
        _assert_same_detections(ours, theirs)


def test_an_export_without_roi_align_does_not_need_the_op(tmp_path):
    path = export_saved_model(_model(NarrowConfig().update(POOLING_MODE="crop_and_resize")), tmp_path / "cr")
    assert json.loads((path / INFO_PATH).read_text())["roi_align_op"] is False
    assert b"RoiAlign" not in (path / "saved_model.pb").read_bytes()


def test_exported_keypoint_model_returns_keypoints(tmp_path):
    config = TinyKeypointConfig().update(DETECTION_MIN_CONFIDENCE=0.0)
    model = _model(config)
    served = ExportedMaskRCNN(export_saved_model(model, tmp_path / "kp"))
    # The config comes back whole (a base Config: the subclass's own backbone callable is left out).
    assert served.config.KEYPOINT_HEAD and served.config.NUM_KEYPOINTS == config.NUM_KEYPOINTS == 7
    assert served.config.DETECTION_MIN_CONFIDENCE == 0.0 and served.config.MASK_HEAD is False
    assert served.exported_config["NAME"] == "tiny_keypoints" and "SmallBackbone" in served.exported_config["BACKBONE"]
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    ours, theirs = served.detect([image])[0], model.detect([image])[0]
    assert "masks" not in ours and ours["keypoints"].shape == (len(ours["class_ids"]), config.NUM_KEYPOINTS, 3)
    assert len(ours["class_ids"]) > 0
    np.testing.assert_array_equal(ours["rois"], theirs["rois"])
    np.testing.assert_allclose(ours["keypoints"], theirs["keypoints"], rtol=1e-4, atol=1e-3)


def test_export_refuses_bad_models_canvases_and_class_names(tmp_path):
    with pytest.raises(ValueError, match="inference-mode model, this one is mode='training'"):
        export_saved_model(MaskRCNN(mode="training", config=NarrowConfig()), tmp_path / "t")
    model = _model(NarrowConfig())
    with pytest.raises(ValueError, match="class_names must be a list of NUM_CLASSES = 4 names"):
        export_saved_model(model, tmp_path / "c", class_names=["BG", "x"])
    with pytest.raises(ValueError, match="class_names must be a list"):
        export_saved_model(model, tmp_path / "c", class_names="BGab")  # 4 letters, not 4 names
    with pytest.raises(ValueError, match=r"molds every image to \(64, 64\), not \(128, 128\)"):
        export_saved_model(model, tmp_path / "c", canvas=(128, 128))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="afile is a file"):
        export_saved_model(model, tmp_path / "afile")
    pad64 = NarrowConfig().update(IMAGE_RESIZE_MODE="pad64", IMAGE_MAX_DIM=128)
    with pytest.raises(ValueError, match="pass the canvas to export"):
        export_canvas(pad64)
    # "pad64" molds to multiples of 64 of at least IMAGE_MIN_DIM (64 here), C4 or not.
    with pytest.raises(ValueError, match=r"no image molds to the canvas \(64, 100\)"):
        export_canvas(pad64, (64, 100))
    assert export_canvas(pad64, [128, 64]) == (128, 64)
    with pytest.raises(ValueError, match=r"at least IMAGE_MIN_DIM = 128: no image molds to the canvas \(64, 128\)"):
        export_canvas(pad64.update(IMAGE_MIN_DIM=128), (64, 128))
    with pytest.raises(ValueError, match="two positive ints"):
        export_canvas(pad64, (128.7, 128))
    c4 = type("SmallC4", (C4Config,), {"NUM_CLASSES": 4, "IMAGE_MIN_DIM": 80, "IMAGE_MAX_DIM": 80})()
    assert export_canvas(c4) == (80, 80)  # C4's square canvas: multiples of 16 (Config.validate)
    with pytest.raises(ValueError, match="no image molds to the canvas"):
        export_canvas(c4.update(IMAGE_RESIZE_MODE="pad64"), (80, 80))  # an 80 px image pads to 128
    assert export_canvas(NarrowConfig().update(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=128)) == (128, 128)
    # "none" keeps image sizes: detect takes a 100x64 image as it is, so may an export.
    assert export_canvas(pad64.update(IMAGE_RESIZE_MODE="none"), (100, 64)) == (100, 64)
    assert not (tmp_path / "t").exists() and not (tmp_path / "c").exists()


def test_exported_pad64_model_names_the_canvas_it_takes(tmp_path):
    config = NarrowConfig().update(IMAGE_RESIZE_MODE="pad64", IMAGE_MAX_DIM=128)
    model = _model(config)
    served = ExportedMaskRCNN(export_saved_model(model, tmp_path / "p", canvas=(128, 64)))
    tall = np.random.default_rng(2).integers(0, 255, (100, 64, 3), dtype=np.uint8)  # molds to 128x64
    _assert_same_detections(served.detect([tall])[0], model.detect([tall])[0])
    with pytest.raises(ValueError, match=r"image 1 molds to a \(64, 64\) canvas; this graph takes \(128, 64\)"):
        served.detect([tall, np.zeros((64, 64, 3), np.uint8)])
    with pytest.raises(TypeError, match="wrap a single image as"):
        served.detect(tall)


def test_export_refuses_a_non_empty_folder_unless_told_to_overwrite(exported, tmp_path, monkeypatch):
    model, _ = exported
    path = export_saved_model(model, tmp_path / "v1")
    with pytest.raises(FileExistsError, match="is not empty: pass overwrite=True"):
        export_saved_model(model, path)
    (path / "stale.txt").write_text("from the previous export")
    export_saved_model(model, path, overwrite=True, frozen=True)
    assert not (path / "stale.txt").exists() and json.loads((path / INFO_PATH).read_text())["frozen"] is True
    # overwrite replaces an export, never another folder.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "precious.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no SavedModel"):
        export_saved_model(model, tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "precious.txt").read_text() == "mine"
    # A failed export leaves the one before it, and no staging folder.
    monkeypatch.setattr(export_module, "_write_savedmodel", _fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(model, path, overwrite=True)
    assert json.loads((path / INFO_PATH).read_text())["frozen"] is True and ExportedMaskRCNN(path).canvas == (64, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "v1"]
    # ... also when moving the new one in fails, after the old one was moved aside.
    monkeypatch.undo()
    rename = Path.rename

    def failing_rename(self, target):
        if self.name == "export":
            raise OSError("rename failed")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        export_saved_model(model, path, overwrite=True)
    assert json.loads((path / INFO_PATH).read_text())["frozen"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "v1"]
    monkeypatch.undo()
    # "." (no name, no parent of its own) exports into the working folder.
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    export_saved_model(model, ".")
    assert (tmp_path / "here" / INFO_PATH).is_file()


def _fail(*args, **kwargs):
    raise RuntimeError("disk full")


def test_exported_config_comes_back_for_c4_and_custom_backbones():
    # The loader rebuilt an FPN config from a few fields: a C4 crop config (multiples of 16) failed
    # Config.validate. Now the whole stored config comes back, a callable backbone left out.
    c4 = type("CropC4", (C4Config,), {"NUM_CLASSES": 4, "IMAGE_RESIZE_MODE": "crop", "IMAGE_MIN_DIM": 80,
                                      "IMAGE_MAX_DIM": 128})()
    back = _base_config(json.loads(json.dumps(c4.to_dict())))
    assert back.BACKBONE_TYPE == "c4" and back.IMAGE_MIN_DIM == 80 and back.BACKBONE == c4.BACKBONE
    keypoints = _base_config(json.loads(json.dumps(TinyKeypointConfig().to_dict())))
    assert keypoints.KEYPOINT_HEAD and keypoints.BACKBONE == Config.BACKBONE and keypoints.IMAGE_MAX_DIM == 64


def test_loading_something_else_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a SavedModel written by mrcnn.export"):
        ExportedMaskRCNN(tmp_path)


def _node_dtypes(function) -> set[int]:
    """The "T" dtypes of the nodes in a concrete function's function library."""
    library = function.graph.as_graph_def().library.function
    return {node.attr["T"].type for f in library for node in f.node_def if "T" in node.attr}


def test_exported_bfloat16_model_computes_in_bfloat16_and_agrees_with_the_keras_model(tmp_path):
    # The loaded function is optimized again by Grappler, which may fuse and round differently:
    # in bfloat16 (8 mantissa bits) near-tied detections of random weights may swap or shift by a
    # pixel. Measured: its scores were 0.0008-0.0063 from float32's with the same weights, the
    # Keras model's 0.0009-0.0034. The bar is test_mixed_precision's bfloat16 vs float32 (0.02).
    model = _model(NarrowConfig().update(MIXED_PRECISION="mixed_bfloat16"))
    served = ExportedMaskRCNN(export_saved_model(model, tmp_path / "bf16"))
    assert tf.bfloat16.as_datatype_enum in _node_dtypes(served.serving_function)
    for image in _images():
        molded, metas, _ = model.mold_inputs([image])
        ours = served.serving_function(input_image=tf.constant(molded), input_image_meta=tf.constant(metas))
        theirs = model._infer(tf.constant(molded), tf.constant(metas))
        ours, theirs = ours["detections"].numpy()[0], theirs["detections"].numpy()[0]
        ours, theirs = ours[ours[:, 4] > 0], theirs[theirs[:, 4] > 0]
        # A near-tie may add or drop one detection; every other score has a partner within 0.02.
        assert len(theirs) > 0 and abs(len(ours) - len(theirs)) <= 1
        partnered = np.abs(ours[:, 5][:, None] - theirs[:, 5][None, :]).min(axis=1) <= 0.02
        assert partnered.sum() >= min(len(ours), len(theirs)), (ours[:, 5], theirs[:, 5])
