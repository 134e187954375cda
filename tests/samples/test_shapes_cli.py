"""samples/shapes/shapes.py: the export command (the demo's training runs in `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from mrcnn.export import INFO_PATH, ExportedMaskRCNN
from mrcnn.model import MaskRCNN
from samples.shapes import shapes


def test_export_writes_a_savedmodel_of_the_demo_weights(tmp_path: Path, capsys) -> None:
    keras.utils.set_random_seed(0)
    model = MaskRCNN(mode="inference", config=shapes.InferenceConfig())
    model.ensure_built()
    weights = tmp_path / "shapes.weights.h5"
    model.save_weights(str(weights))
    out = tmp_path / "export" / "1"
    assert shapes.main(["export", "--weights", str(weights), "--out", str(out), "--frozen", "--verbose", "0"]) == 0
    assert str(out) in capsys.readouterr().out
    info = json.loads((out / INFO_PATH).read_text())
    assert info["frozen"] is True and info["canvas"] == [128, 128]
    served = ExportedMaskRCNN(out)
    assert served.class_names == ["BG", "square", "circle", "triangle"]
    image = shapes._dataset(1, shapes.TEST_SEED, 128).load_image(0)
    ours, theirs = served.detect([image])[0], model.detect([image])[0]
    np.testing.assert_array_equal(ours["rois"], theirs["rois"])
    # An existing export is not replaced without --overwrite (exit status 2, one error line).
    assert shapes.main(["export", "--weights", str(weights), "--out", str(out), "--verbose", "0"]) == 2
    assert "overwrite" in capsys.readouterr().err
