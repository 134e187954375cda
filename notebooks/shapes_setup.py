"""What the notebooks share: the shapes configs (full and QUICK), datasets, and where runs go.

The notebooks read two environment variables in their first cell:

* ``MRCNN_NOTEBOOK_QUICK=1``: tiny sizes (64 px images, narrow heads, 1-2 training steps) so that
  the test suite runs every notebook in well under a minute. Unset (the default), the notebooks
  use the small CPU-friendly shapes config of ``samples/shapes/shapes.py`` (128 px).
* ``MRCNN_NOTEBOOK_RUNS``: where weights are written and read (default ``<repo>/runs/notebooks``);
  ``train_shapes.ipynb`` writes ``shapes.weights.h5`` there and the other notebooks load it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `samples.shapes` lives in the repository, not in the package
    sys.path.insert(0, str(REPO))

from mrcnn.config import Config  # noqa: E402
from mrcnn.data.shapes import ShapesDataset  # noqa: E402
from samples.shapes.shapes import DemoConfig  # noqa: E402

TRAIN_SEED, VAL_SEED, TEST_SEED = 1, 2, 3


def is_quick() -> bool:
    """True when MRCNN_NOTEBOOK_QUICK is set to 1 (the test suite's setting)."""
    return os.environ.get("MRCNN_NOTEBOOK_QUICK", "0") == "1"


def runs_dir() -> Path:
    """Where the notebooks keep weights: $MRCNN_NOTEBOOK_RUNS or <repo>/runs/notebooks (created)."""
    path = Path(os.environ.get("MRCNN_NOTEBOOK_RUNS", REPO / "runs" / "notebooks"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def weights_path(quick: bool) -> Path:
    """The shapes weights train_shapes.ipynb writes (a separate file for the QUICK config)."""
    return runs_dir() / ("shapes_quick.weights.h5" if quick else "shapes.weights.h5")


class NotebookConfig(DemoConfig):
    """`make demo`'s settings (128 px, BatchNorm trained from scratch, GN heads, Adam 3e-4) on the
    full-width ResNet-50-FPN (the demo itself uses a narrow ResNet): the notebooks show the
    standard model, and their saved outputs come from it."""

    NAME = "shapes_notebook"
    BACKBONE = "resnet50"
    # Config's own (matterport's) widths, undoing DemoConfig's narrow ones.
    TOP_DOWN_PYRAMID_SIZE = Config.TOP_DOWN_PYRAMID_SIZE
    RPN_CONV_CHANNELS = Config.RPN_CONV_CHANNELS
    FPN_CLASSIF_FC_LAYERS_SIZE = Config.FPN_CLASSIF_FC_LAYERS_SIZE
    STEPS_PER_EPOCH = 25  # heads 1 epoch + all layers 2 epochs: 75 steps, a few CPU minutes
    VALIDATION_STEPS = 2


class QuickConfig(NotebookConfig):
    """Tiny sizes for the test suite: the same code paths in seconds."""

    NAME = "shapes_quick"
    IMAGES_PER_GPU = 2
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    RPN_TRAIN_ANCHORS_PER_IMAGE = 32
    PRE_NMS_LIMIT = 200
    POST_NMS_ROIS_TRAINING = 48
    POST_NMS_ROIS_INFERENCE = 32
    TRAIN_ROIS_PER_IMAGE = 16
    MAX_GT_INSTANCES = 4
    DETECTION_MAX_INSTANCES = 8
    MINI_MASK_SHAPE = (16, 16)
    TOP_DOWN_PYRAMID_SIZE = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 256  # the smallest GroupNorm head width (32 groups of 8) DemoConfig's "gn" allows
    STEPS_PER_EPOCH = 1
    VALIDATION_STEPS = 1


def shapes_config(quick: bool, inference: bool = False) -> NotebookConfig:
    """The notebook config; `inference` gives one image per batch and keeps low-score detections.

    Detections down to 0.05 are kept (as COCO evaluation does) so that mAP sees the whole
    precision/recall curve; pictures filter by score themselves.
    """
    config = QuickConfig() if quick else NotebookConfig()
    if inference:
        config.update(IMAGES_PER_GPU=1, DETECTION_MIN_CONFIDENCE=0.05)
    return config


def shapes_dataset(config: NotebookConfig, count: int, seed: int) -> ShapesDataset:
    """A prepared ShapesDataset of `count` images at the config's size."""
    dataset = ShapesDataset()
    dataset.load_shapes(count, config.IMAGE_MAX_DIM, config.IMAGE_MAX_DIM, seed=seed)
    dataset.prepare()
    return dataset
