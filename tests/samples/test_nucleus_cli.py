"""samples/nucleus/nucleus.py: the CLI's options (its training budget is mrcnn.callbacks.TrainingBudget)."""

from __future__ import annotations

import pytest

from samples.nucleus import nucleus


def test_train_options_parse():
    args = nucleus._parser().parse_args(["train", "--model", "unet", "--budget-cpu-minutes", "45", "--threads", "1"])
    assert args.budget_cpu_minutes == 45 and args.budget_minutes == 0 and args.threads == 1
    with pytest.raises(SystemExit, match="--budget-minutes or --budget-cpu-minutes"):
        nucleus.train(nucleus._parser().parse_args(["train", "--model", "unet"]))
