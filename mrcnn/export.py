"""Export a Mask R-CNN to a TensorFlow SavedModel, and detect with one.

    from mrcnn.export import ExportedMaskRCNN, export_saved_model
    export_saved_model(model, "export/shapes/1", class_names=dataset.class_names)
    served = ExportedMaskRCNN("export/shapes/1")   # in another process: no config class, no weights file
    results = served.detect([image])                # the same dicts as MaskRCNN.detect

The SavedModel holds the inference graph with its weights (Keras' `ExportArchive`). Its
"serving_default" signature (also the `serve` function of `tf.saved_model.load`'s object) takes
what `MaskRCNN.mold_inputs` returns, for any number of images of the exported canvas:

    input_image       [B, H, W, C] float32  molded images (resized, padded, MEAN_PIXEL subtracted)
    input_image_meta  [B, META] float32     `utils.compose_image_meta` of each image

and returns

    detections        [B, D, 6] float32  (y1, x1, y2, x2) normalized to the canvas, class id,
                                         score; rows of zeros pad to D = DETECTION_MAX_INSTANCES
    mrcnn_mask        [B, D, h, w, 1]    each detection's own-class mask probabilities
                                         (h, w = MASK_SHAPE; with a mask head)
    mrcnn_keypoints   [B, D, K, 3]       (x, y normalized, score) (with KEYPOINT_HEAD)

`assets.extra/mrcnn.json` (a folder TF Serving leaves alone) records what a client needs to mold
and unmold: the config, the canvas, the class names. `ExportedMaskRCNN` reads it and molds and
unmolds with the same code as `MaskRCNN.detect` (`mrcnn.molding`).

The graph uses the compiled RoIAlign op (`mrcnn.ops.roi_align`) when it was built: whatever loads
the SavedModel must register the op first (`ExportedMaskRCNN` does; TF Serving needs the op library
linked in). An export made with MRCNN_ROI_ALIGN=tf uses standard TensorFlow ops only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from mrcnn import molding
from mrcnn.config import BACKBONES, Config, is_scalar_of
from mrcnn.freezing import freeze, graph_op_types
from mrcnn.ops import roi_align

if TYPE_CHECKING:  # mrcnn.model imports the whole graph; loading an export does not need it
    from mrcnn.model import MaskRCNN

INFO_PATH = Path("assets.extra") / "mrcnn.json"
ROI_ALIGN_OP = "RoiAlign"  # the compiled op's type name
FORMAT_VERSION = 1


def export_canvas(config: Config, canvas: Sequence[int] | None = None) -> tuple[int, int]:
    """The molded (H, W) an export serves: `canvas`, or the config's square canvas.

    Raises:
        ValueError: with a `canvas` other than the config's in "square" / "crop" mode (every image
            molds to the config's); without `canvas` in "pad64" / "none" mode (one canvas per
            image size); for a "pad64" canvas whose sides are not multiples of 64 of at least
            IMAGE_MIN_DIM (what "pad64" molds images to); for sides that are not positive ints.
    """
    mode = config.IMAGE_RESIZE_MODE
    if mode in ("square", "crop"):
        side = config.IMAGE_MAX_DIM if mode == "square" else max(config.IMAGE_MAX_DIM, config.IMAGE_MIN_DIM)
        if canvas is not None and tuple(canvas) != (side, side):
            raise ValueError(f"IMAGE_RESIZE_MODE {mode!r} molds every image to ({side}, {side}), not "
                             f"{tuple(canvas)}: leave canvas out, or export a config with IMAGE_MAX_DIM = the side "
                             "you want")
        return side, side
    if canvas is None:
        raise ValueError(f"IMAGE_RESIZE_MODE {mode!r} molds each image size to its own canvas: pass the canvas to "
                         "export, canvas=(H, W); the export detects images of that canvas only")
    sides = tuple(canvas)
    if len(sides) != 2 or not all(is_scalar_of(v, int) and v > 0 for v in sides):
        raise ValueError(f"canvas must be (H, W), two positive ints, got {canvas!r}")
    if mode == "pad64" and (any(v % 64 for v in sides) or min(sides) < config.IMAGE_MIN_DIM):
        raise ValueError(f"IMAGE_RESIZE_MODE 'pad64' molds images to multiples of 64 of at least IMAGE_MIN_DIM = "
                         f"{config.IMAGE_MIN_DIM}: no image molds to the canvas {sides}")
    return int(sides[0]), int(sides[1])


def export_saved_model(model: MaskRCNN, path: str | Path, canvas: Sequence[int] | None = None,
                       class_names: Sequence[str] | None = None, frozen: bool = False,
                       overwrite: bool = False) -> Path:
    """Writes `model`'s inference graph and weights as a SavedModel at `path`.

    With `frozen` the graph holds the weights as constants and the BatchNorms folded into their
    convolutions, as `MaskRCNN.optimize_for_inference()` runs it in process (`mrcnn.freezing`):
    faster to serve on CPU (oneDNN keeps its reordered filters, the bfloat16 weight casts fold
    away), the weights then live in saved_model.pb (protobuf's 2 GB limit) instead of variables/.

    Args:
        model: an inference-mode `MaskRCNN` with its weights loaded.
        path: the SavedModel folder (created; for TF Serving a version folder, ``.../name/1``).
        canvas: molded (H, W) the signature takes; default: the config's square canvas.
        class_names: optional names of the class ids (``dataset.class_names``), stored for clients.
        frozen: export the frozen, BatchNorm-folded graph instead of the graph over variables.
        overwrite: replace the export a non-empty `path` holds (refused otherwise). The new export
            is written next to it and moved in at the end: a failed export leaves the old one.

    Returns:
        `path` as a Path.

    Raises:
        ValueError: for a training-mode model, a bad canvas (`export_canvas`), or class_names that
            are not a list of NUM_CLASSES names.
        FileExistsError: `path` is a file, a non-empty folder without `overwrite`, or a non-empty
            folder that holds no SavedModel (overwrite replaces an export only).
    """
    config = model.config
    if model.mode != "inference":
        raise ValueError(f"export_saved_model needs an inference-mode model, this one is mode={model.mode!r}: "
                         "build MaskRCNN(mode='inference', config=...) and load the trained weights into it")
    height, width = export_canvas(config, canvas)
    if isinstance(class_names, str) or (class_names is not None and len(class_names) != config.NUM_CLASSES):
        raise ValueError(f"class_names must be a list of NUM_CLASSES = {config.NUM_CLASSES} names (the background "
                         f"is class 0), got {class_names!r}")
    path = Path(path).expanduser().resolve()  # "." has no name and no parent of its own to stage in
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file; export_saved_model writes a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{path} is not empty: pass overwrite=True to replace the export there (for TF "
                                  "Serving, a new version folder, e.g. .../2, serves the new one)")
        if not (path / "saved_model.pb").is_file():
            raise FileExistsError(f"{path} is not empty and holds no SavedModel: overwrite replaces an export only")
    info = {
        "format_version": FORMAT_VERSION,
        "canvas": [height, width],
        "class_names": None if class_names is None else [str(name) for name in class_names],
        "frozen": bool(frozen),
        "config": config.to_dict(),
    }
    json.dumps(info)  # fails before any file is written
    model.ensure_built()
    signature = [tf.TensorSpec([None, height, width, config.IMAGE_CHANNEL_COUNT], tf.float32, name="input_image"),
                 tf.TensorSpec([None, config.IMAGE_META_SIZE], tf.float32, name="input_image_meta")]
    # Written next to `path` and moved into place at the end: a failed export leaves the old one.
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        info["roi_align_op"] = _write_savedmodel(model, staging / "export", signature, frozen)
        (staging / "export" / INFO_PATH).parent.mkdir(parents=True, exist_ok=True)
        (staging / "export" / INFO_PATH).write_text(json.dumps(info, indent=2))
        previous = staging / "previous"
        if path.is_dir():
            path.rename(previous)  # removed with the staging folder once the new export is in place
        try:
            (staging / "export").rename(path)
        except OSError:
            if previous.is_dir():
                previous.rename(path)  # the old export back
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _write_savedmodel(model: MaskRCNN, path: Path, signature: list[tf.TensorSpec], frozen: bool) -> bool:
    """Writes the SavedModel of `model._infer_outputs` at `path`; whether its graph holds the compiled
    RoIAlign op (only with POOLING_MODE "roi_align" and the op in use, not MRCNN_ROI_ALIGN=tf)."""
    # The graph `detect` runs: each detection's own class channel only (mrcnn_mask [B, D, h, w, 1]).
    if frozen:
        graph = freeze(model._infer_outputs, signature, model.variables, model.batchnorm_folds())
        module = tf.Module()
        module.serve = tf.function(graph.concrete, input_signature=signature)
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
        concrete = graph.concrete
    else:
        # No archive.track(model): the endpoint's variables are saved anyway, and tracking the model
        # saved each weight a second time (Keras 3.15: the SavedModel was 2x the weights' size).
        archive = keras.export.ExportArchive()
        endpoint = archive.add_endpoint("serve", model._infer_outputs, input_signature=signature)
        archive.write_out(str(path), verbose=False)
        concrete = endpoint.get_concrete_function(*signature)
    return ROI_ALIGN_OP in graph_op_types(concrete)


class ExportedMaskRCNN:
    """A SavedModel written by `export_saved_model`, with `detect` as on `MaskRCNN`.

    Attributes:
        config: the exported model's `Config`, as a base `Config` (a subclass's own fields and a
            callable BACKBONE are left out: they are in `exported_config`).
        exported_config: the exported config as stored (`Config.to_dict()`), every field.
        canvas: (H, W) of the molded images the graph takes.
        class_names: the names given to the export, or None.
        serving_function: the "serving_default" signature (keyword inputs input_image and
            input_image_meta, a dict of outputs), for callers that mold themselves.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path).expanduser()
        info_file = path / INFO_PATH
        if not info_file.is_file():
            raise FileNotFoundError(f"{info_file} not found: {path} is not a SavedModel written by "
                                    "mrcnn.export.export_saved_model")
        info = json.loads(info_file.read_text())
        if info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{info_file}: format_version {info.get('format_version')!r}, this mrcnn reads "
                             f"{FORMAT_VERSION}")
        # Exports from before roi_align_op recorded the implementation in use ("op" / "tf").
        needs_op = info.get("roi_align_op", info.get("roi_align") == "op")
        if needs_op and roi_align.load_op_library() is None:
            raise RuntimeError(f"{path} was exported with the compiled RoIAlign op, which cannot be loaded here: "
                               f"{roi_align.op_load_error()}")
        self.exported_config: dict[str, Any] = info["config"]
        self.config = _base_config(self.exported_config)
        self.canvas = tuple(info["canvas"])
        self.class_names = info.get("class_names")
        self._saved = tf.saved_model.load(str(path))
        self.serving_function = self._saved.signatures["serving_default"]

    def detect(self, images: Sequence[np.ndarray], verbose: int = 0, soft_masks: bool = False
               ) -> list[dict[str, np.ndarray]]:
        """Detects instances in images that mold to the exported canvas (`MaskRCNN.detect`).

        Args:
            images: list of [H,W,3] (or grayscale / RGBA) images on the 0..255 scale.
            verbose: 1 shows a progress bar over batches.
            soft_masks: masks as float32 [H,W,N] probabilities instead of bool.

        Returns:
            One dict per image: rois [N,4] int32 (y1, x1, y2, x2) original pixels, class_ids [N]
            int32, scores [N] float32, masks [H,W,N], and keypoints [N,K,3] for a keypoint model.

        Raises:
            TypeError: for a bare image array instead of a list.
            ValueError: naming the image and both canvases when an image molds to another
                canvas than the export's ("pad64" / "none"), before any image is detected.
        """
        return molding.detect_images(images, self.config, self._run, verbose=verbose, soft_masks=soft_masks,
                                     canvas=self.canvas)

    def _run(self, molded: np.ndarray, metas: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.serving_function(input_image=tf.constant(molded), input_image_meta=tf.constant(metas))
        return {name: value.numpy() for name, value in outputs.items()}


def _base_config(stored: dict[str, Any]) -> Config:
    """A base `Config` from a stored `Config.to_dict()`: its fields that `Config` has, except a
    callable BACKBONE (stored by name only) and COMPUTE_BACKBONE_SHAPE, which cannot come back."""
    fields = {name: value for name, value in stored.items() if name in Config.field_names()}
    if not (isinstance(fields.get("BACKBONE"), dict) or fields.get("BACKBONE") in BACKBONES):
        fields.pop("BACKBONE", None)  # a callable's name (C4 takes named backbones only)
    fields.pop("COMPUTE_BACKBONE_SHAPE", None)
    return Config.from_dict(fields)
