"""samples/nucleus/nucleus.py: the training budget (wall clock or CPU time) and the CLI's options."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from samples.nucleus import nucleus


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _burn_cpu(seconds: float) -> None:
    # Busy work that process_time() counts (sleeping would not).
    import time

    end = time.process_time() + seconds
    while time.process_time() < end:
        np.sqrt(np.arange(1000.0))


class _Work(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        _burn_cpu(0.02)


def test_cpu_budget_stops_training_and_drops_the_learning_rate():
    model = _tiny_model()
    budget = nucleus.Budget(cpu_seconds=0.5)
    x, y = np.zeros((8, 4), np.float32), np.zeros((8, 1), np.float32)
    model.fit(x, y, batch_size=1, epochs=1000, verbose=0, callbacks=[_Work(), budget])
    wall, cpu = budget.elapsed()
    assert cpu >= 0.5 and 0 < budget.steps < 8000  # stopped by the budget, not by the epochs
    assert budget.decayed and float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    assert budget.spent() >= 1.0 and wall > 0


def test_budget_is_the_larger_of_the_wall_and_cpu_fractions():
    budget = nucleus.Budget(wall_seconds=3600, cpu_seconds=0.2)
    _burn_cpu(0.1)
    assert 0.4 < budget.spent() < 1.0
    with pytest.raises(ValueError, match="wall_seconds or cpu_seconds"):
        nucleus.Budget()


def test_train_options_parse():
    args = nucleus._parser().parse_args(["train", "--model", "unet", "--budget-cpu-minutes", "45", "--threads", "1"])
    assert args.budget_cpu_minutes == 45 and args.budget_minutes == 0 and args.threads == 1
    with pytest.raises(SystemExit, match="--budget-minutes or --budget-cpu-minutes"):
        nucleus.train(nucleus._parser().parse_args(["train", "--model", "unet"]))
