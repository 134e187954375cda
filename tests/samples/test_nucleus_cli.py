"""samples/nucleus/nucleus.py: the CLI's options (its training budget is mrcnn.callbacks.TrainingBudget)."""

from __future__ import annotations

import numpy as np
import pytest

from samples.nucleus import nucleus


def test_train_options_parse():
    args = nucleus._parser().parse_args(["train", "--model", "unet", "--budget-cpu-minutes", "45", "--threads", "1"])
    assert args.budget_cpu_minutes == 45 and args.budget_minutes == 0 and args.threads == 1
    with pytest.raises(SystemExit, match="--budget-minutes or --budget-cpu-minutes"):
        nucleus.train(nucleus._parser().parse_args(["train", "--model", "unet"]))


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
