"""samples/nucleus/nucleus.py: the CLI's options (its training budget is mrcnn.callbacks.TrainingBudget)."""

from __future__ import annotations

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
