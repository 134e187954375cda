"""samples/nucleus/nucleus.py: the CLI's options (its training budget is mrcnn.callbacks.TrainingBudget)."""

from __future__ import annotations

import numpy as np
import pytest

from samples.nucleus import nucleus


def test_train_options_parse():
    args = nucleus._parser().parse_args(["train", "--model", "unet", "--budget-cpu-minutes", "45", "--threads", "1"])
    assert args.budget_cpu_minutes == 45 and args.budget_minutes == 0 and args.threads == 1
    with pytest.raises(ValueError, match="--budget-minutes or --budget-cpu-minutes"):
        nucleus.train(nucleus._parser().parse_args(["train", "--model", "unet"]))


def test_train_without_a_budget_exits_2_with_one_line(capsys):
    """Found in review: it exited 1 with a bare message, not the scripts' 2 and `prog: error:` line."""
    assert nucleus.main(["train", "--model", "mrcnn"]) == 2
    assert "nucleus.py: error: train needs --budget-minutes or --budget-cpu-minutes" in capsys.readouterr().err


def test_a_unet_crop_the_poolings_cannot_halve_is_named(tmp_path, capsys):
    argv = ["train", "--model", "unet", "--crop", "100", "--budget-minutes", "1", "--logs", str(tmp_path),
            "--data", str(tmp_path / "no_data_needed_first")]
    assert nucleus.main(argv) == 2
    assert "--crop 100 must be a multiple of 16 for a U-Net of --unet-depth 4" in capsys.readouterr().err


def test_unet_weights_load_with_the_shape_they_were_trained_with(tmp_path, capsys):
    import json
    import types

    from samples.nucleus.unet import build_unet

    weights = tmp_path / "unet.weights.h5"
    build_unet(depth=2, base_filters=4).save_weights(str(weights))
    args = types.SimpleNamespace(model="unet", weights=str(weights), unet_depth=4, unet_filters=32, tile=0,
                                 overlap=64, logs=str(tmp_path))
    with pytest.raises(ValueError, match=r"do not fit a U-Net of depth 4 with 32 base filters: pass the "
                                         r"--unet-depth / --unet-filters it was trained with"):
        nucleus.load_detector(args)
    (tmp_path / "unet_train.json").write_text(json.dumps({"model": "unet", "unet_depth": 2, "unet_filters": 4}))
    detect = nucleus.load_detector(args)  # the training record wins over the flags, and says so
    assert "U-Net depth 2, 4 base filters, as trained" in capsys.readouterr().out
    result = detect([np.zeros((64, 64, 3), np.uint8)])[0]
    assert result["masks"].shape[:2] == (64, 64)


def test_detect_writes_a_16_bit_label_image(tmp_path, monkeypatch):
    import skimage.io

    image = np.zeros((40, 50, 3), np.uint8)
    skimage.io.imsave(str(tmp_path / "cells.png"), image, check_contrast=False)
    masks = np.zeros((40, 50, 2), bool)
    masks[2:10, 3:12, 0] = True
    masks[20:30, 25:40, 1] = True
    found = {"rois": np.array([[2, 3, 10, 12], [20, 25, 30, 40]], np.int32), "class_ids": np.ones(2, np.int32),
             "scores": np.array([0.9, 0.8], np.float32), "masks": masks}
    monkeypatch.setattr(nucleus, "load_detector", lambda args: lambda images: [found])
    labels_path = tmp_path / "labels.png"
    assert nucleus.main(["detect", "--model", "mrcnn", "--weights", "unused", "--image", str(tmp_path / "cells.png"),
                         "--out", str(tmp_path / "drawn.png"), "--labels", str(labels_path)]) == 0
    labels = skimage.io.imread(str(labels_path))
    assert labels.dtype == np.uint16 and labels.shape == (40, 50)
    np.testing.assert_array_equal(labels, masks[..., 0] * 1 + masks[..., 1] * 2)
    assert (tmp_path / "drawn.png").is_file()


def test_overlap_without_tile_is_refused(tmp_path, capsys):
    for command in (["evaluate"], ["detect", "--image", str(tmp_path / "unused.png")]):
        argv = command + ["--model", "mrcnn", "--weights", "unused", "--overlap", "32", "--logs", str(tmp_path)]
        assert nucleus.main(argv) == 2
        assert "nucleus.py: error: --overlap 32 needs --tile" in capsys.readouterr().err


def test_evaluate_records_the_weights_and_tiling(tmp_path, monkeypatch):
    import json

    seen = {}

    def fake_detector(args, output="masks"):
        seen["tiling"] = (args.tile, args.overlap)
        seen["output"] = output
        return lambda images: []

    monkeypatch.setattr(nucleus, "load_split", lambda args, split: "val set")
    monkeypatch.setattr(nucleus, "load_detector", fake_detector)
    monkeypatch.setattr(nucleus, "evaluate_nuclei", lambda detect, dataset, max_dets, verbose: {"mask_AP": 0.5})
    weights = str(tmp_path / "w.weights.h5")
    assert nucleus.main(["evaluate", "--model", "mrcnn", "--weights", weights, "--tile", "256",
                         "--logs", str(tmp_path)]) == 0
    assert seen["tiling"] == (256, nucleus.DEFAULT_TILE_OVERLAP) and seen["output"] == "masks"
    saved = json.loads((tmp_path / "mrcnn_metrics.json").read_text())
    assert saved == {"mask_AP": 0.5, "model": "mrcnn", "weights": weights, "tile": 256, "overlap": 64,
                     "output": "masks"}
    assert nucleus.main(["evaluate", "--model", "mrcnn", "--weights", weights, "--logs", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "mrcnn_metrics.json").read_text())
    assert saved["tile"] is None and saved["overlap"] is None
    # The U-Net's disjoint watershed instances are scored from one label image.
    assert nucleus.main(["evaluate", "--model", "unet", "--weights", weights, "--logs", str(tmp_path)]) == 0
    assert seen["output"] == "labels" and json.loads((tmp_path / "unet_metrics.json").read_text())["output"] == "labels"
