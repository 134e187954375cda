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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mrcnn import molding
from mrcnn.config import Config
from mrcnn.freezing import freeze
from mrcnn.ops import roi_align

INFO_PATH = Path("assets.extra") / "mrcnn.json"
FORMAT_VERSION = 1
# The config fields molding and unmolding read (`mrcnn.molding`); the whole config is stored too.
MOLDING_FIELDS = ("NAME", "NUM_CLASSES", "IMAGE_RESIZE_MODE", "IMAGE_MIN_DIM", "IMAGE_MAX_DIM", "IMAGE_MIN_SCALE",
                  "IMAGE_CHANNEL_COUNT", "MEAN_PIXEL", "IMAGES_PER_GPU", "GPU_COUNT")


def export_canvas(config: Config, canvas: Sequence[int] | None = None) -> tuple[int, int]:
    """The molded (H, W) an export serves: `canvas`, or the config's square canvas.

    Raises:
        ValueError: without `canvas` for IMAGE_RESIZE_MODE "pad64" / "none" (one canvas per image
            size), or for a canvas whose sides are not positive multiples of 64 (the FPN's P6).
    """
    if canvas is None:
        if config.IMAGE_RESIZE_MODE not in ("square", "crop"):
            raise ValueError(f"IMAGE_RESIZE_MODE {config.IMAGE_RESIZE_MODE!r} molds each image size to its own "
                             "canvas: pass the canvas to export, canvas=(H, W) (multiples of 64); the export "
                             "detects images of that canvas only")
        side = config.IMAGE_MAX_DIM if config.IMAGE_RESIZE_MODE == "square" else max(config.IMAGE_MAX_DIM,
                                                                                    config.IMAGE_MIN_DIM)
        canvas = (side, side)
    canvas = tuple(int(v) for v in canvas)
    if len(canvas) != 2 or min(canvas) < 64 or any(v % 64 for v in canvas):
        raise ValueError(f"canvas must be (H, W), multiples of 64 (the FPN's P6 is 1/64 of it), got {canvas}")
    return canvas  # type: ignore[return-value]


def export_saved_model(model: Any, path: str | Path, canvas: Sequence[int] | None = None,
                       class_names: Sequence[str] | None = None, frozen: bool = False) -> Path:
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

    Returns:
        `path` as a Path.

    Raises:
        ValueError: for a training-mode model, a bad canvas (`export_canvas`), or class_names that
            are not NUM_CLASSES long.
    """
    config = model.config
    if model.mode != "inference":
        raise ValueError(f"export_saved_model needs an inference-mode model, this one is mode={model.mode!r}: "
                         "build MaskRCNN(mode='inference', config=...) and load the trained weights into it")
    height, width = export_canvas(config, canvas)
    if class_names is not None and len(class_names) != config.NUM_CLASSES:
        raise ValueError(f"class_names has {len(class_names)} names, NUM_CLASSES is {config.NUM_CLASSES} "
                         "(the background is class 0)")
    model.ensure_built()
    signature = [tf.TensorSpec([None, height, width, config.IMAGE_CHANNEL_COUNT], tf.float32, name="input_image"),
                 tf.TensorSpec([None, config.IMAGE_META_SIZE], tf.float32, name="input_image_meta")]
    path = Path(path)
    # The graph `detect` runs: each detection's own class channel only (mrcnn_mask [B, D, h, w, 1]).
    if frozen:
        graph = freeze(model._infer_outputs, signature, model.variables, model.batchnorm_folds())
        module = tf.Module()
        module.serve = tf.function(graph.concrete, input_signature=signature)
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    else:
        # No archive.track(model): the endpoint's variables are saved anyway, and tracking the model
        # saved each weight a second time (Keras 3.15: the SavedModel was 2x the weights' size).
        archive = keras.export.ExportArchive()
        archive.add_endpoint("serve", model._infer_outputs, input_signature=signature)
        archive.write_out(str(path), verbose=False)
    info = {
        "format_version": FORMAT_VERSION,
        "canvas": [height, width],
        "class_names": None if class_names is None else [str(name) for name in class_names],
        "roi_align": roi_align.active_implementation(),
        "frozen": bool(frozen),
        "config": config.to_dict(),
    }
    (path / INFO_PATH).parent.mkdir(parents=True, exist_ok=True)
    (path / INFO_PATH).write_text(json.dumps(info, indent=2))
    return path


class ExportedMaskRCNN:
    """A SavedModel written by `export_saved_model`, with `detect` as on `MaskRCNN`.

    Attributes:
        config: a `Config` with the exported model's molding fields (`MOLDING_FIELDS`).
        canvas: (H, W) of the molded images the graph takes.
        class_names: the names given to the export, or None.
        serving_function: the "serving_default" signature (keyword inputs input_image and
            input_image_meta, a dict of outputs), for callers that mold themselves.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        info_file = path / INFO_PATH
        if not info_file.is_file():
            raise FileNotFoundError(f"{info_file} not found: {path} is not a SavedModel written by "
                                    "mrcnn.export.export_saved_model")
        info = json.loads(info_file.read_text())
        if info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{info_file}: format_version {info.get('format_version')!r}, this mrcnn reads "
                             f"{FORMAT_VERSION}")
        if info.get("roi_align") == "op" and roi_align.load_op_library() is None:
            raise RuntimeError(f"{path} was exported with the compiled RoIAlign op, which cannot be loaded here: "
                               f"{roi_align.op_load_error()}")
        self.config = Config.from_dict({name: info["config"][name] for name in MOLDING_FIELDS})
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
            ValueError: naming the canvas when an image molds to another one ("pad64" / "none").
        """
        return molding.detect_images(images, self.config, self._run, verbose=verbose, soft_masks=soft_masks)

    def _run(self, molded: np.ndarray, metas: np.ndarray) -> dict[str, np.ndarray]:
        if tuple(molded.shape[1:3]) != self.canvas:
            raise ValueError(f"these images mold to a {tuple(molded.shape[1:3])} canvas; the export takes "
                             f"{self.canvas} (export_saved_model(canvas=...) exports another)")
        outputs = self.serving_function(input_image=tf.constant(molded), input_image_meta=tf.constant(metas))
        return {name: value.numpy() for name, value in outputs.items()}
