"""Tests for mrcnn/callbacks.py: atomic checkpoints, the NaN guard, optimizer state, Ctrl-C, resume and the time budget."""

import json
import math
import os
import signal
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from mrcnn.callbacks import AtomicCheckpoint, StopOnNaN, TrainingBudget


def _model() -> keras.Model:
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1, name="dense")(inputs))
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_checkpoint_written_per_epoch_without_temporary_files(tmp_path):
    model = _model()
    template = str(tmp_path / "run" / "ckpt_{epoch:04d}.weights.h5")
    x, y = np.ones((4, 3), np.float32), np.ones((4, 1), np.float32)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[AtomicCheckpoint(template)])
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["ckpt_0001.weights.h5", "ckpt_0002.weights.h5"]
    other = _model()
    other.load_weights(str(tmp_path / "run" / "ckpt_0002.weights.h5"))
    np.testing.assert_array_equal(other.get_layer("dense").kernel.numpy(), model.get_layer("dense").kernel.numpy())


def test_checkpoint_not_written_for_a_nan_epoch(tmp_path):
    callback = AtomicCheckpoint(str(tmp_path / "c_{epoch:04d}.weights.h5"))
    callback.set_model(_model())
    callback.on_epoch_end(0, {"loss": 1.0})
    callback.on_epoch_end(1, {"loss": float("nan")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_0001.weights.h5"]
    assert callback.last_saved.endswith("c_0001.weights.h5")


def test_checkpoint_path_must_be_keras3_weights_file():
    with pytest.raises(ValueError, match=".weights.h5"):
        AtomicCheckpoint("model_{epoch:04d}.h5")


def test_stop_on_nan_stops_training():
    model = _model()
    x = np.ones((8, 3), np.float32)
    y = np.full((8, 1), np.nan, np.float32)
    guard = StopOnNaN()
    history = model.fit(x, y, epochs=3, batch_size=2, verbose=0, callbacks=[guard])
    assert guard.stopped_at == (1, 0)
    assert len(history.history["loss"]) == 1
    assert math.isnan(history.history["loss"][0])


# ------------------------------------------------------------------------------------------------
# Optimizer state in checkpoints, Ctrl-C, resume


def _trained_sgd_model(steps: int = 3) -> keras.Model:
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    x, y = np.random.default_rng(0).random((8, 3)).astype(np.float32), np.ones((8, 1), np.float32)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, steps_per_epoch=steps)  # steps <= 4
    return model


def test_checkpoint_records_epoch_and_optimizer_state_by_name(tmp_path):
    from mrcnn.callbacks import checkpoint_epoch, optimizer_state, read_optimizer_state, write_checkpoint

    model = _trained_sgd_model()
    path = write_checkpoint(model, str(tmp_path / "c_0003.weights.h5"), epoch=3)
    assert checkpoint_epoch(path) == 3
    stored = read_optimizer_state(path)
    live = optimizer_state(model.optimizer)
    assert set(stored) == set(live) and "iteration" in stored
    assert int(stored["iteration"]) == int(model.optimizer.iterations.numpy()) > 0
    for name in live:
        np.testing.assert_array_equal(stored[name], live[name])
    assert not list(tmp_path.glob("*.tmp.weights.h5"))


def test_restore_optimizer_state_continues_iterations_and_momentum_not_lr(tmp_path):
    from mrcnn.callbacks import restore_optimizer_state, write_checkpoint

    model = _trained_sgd_model()
    path = write_checkpoint(model, str(tmp_path / "c_0001.weights.h5"), epoch=1)
    fresh = _model()
    fresh.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
    fresh.optimizer.build(fresh.trainable_variables)
    report = restore_optimizer_state(fresh.optimizer, path)
    assert int(fresh.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())
    momenta = [v for v in fresh.optimizer.variables if v.name.endswith("_momentum")]
    assert momenta and all(np.any(v.numpy() != 0) for v in momenta)
    for mine, theirs in zip(momenta, [v for v in model.optimizer.variables if v.name.endswith("_momentum")]):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert float(fresh.optimizer.learning_rate.numpy()) == pytest.approx(0.01)  # the new stage's LR
    assert report["missing"] == [] and report["unused"] == []


def _scaled_sgd(model):
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1, momentum=0.9))
    optimizer.build(model.trainable_variables)
    return optimizer


def test_loss_scaled_state_keys_name_the_inner_optimizers_count(tmp_path):
    """A LossScaleOptimizer (mixed_float16) has an `iteration` of its own before its inner one's:
    the inner one's is `iteration`, the wrapper's `loss_scale/iteration`."""
    from mrcnn.callbacks import optimizer_state, restore_optimizer_state, write_checkpoint

    model = _model()
    model.optimizer = _scaled_sgd(model)
    outer = [v for v in model.optimizer.variables if v.name == "iteration"][0]  # the wrapper's, listed first
    outer.assign(7)
    model.optimizer.inner_optimizer.iterations.assign(3)
    model.optimizer.dynamic_scale.assign(512.0)
    state = optimizer_state(model.optimizer)
    assert int(state["iteration"]) == 3 and int(state["loss_scale/iteration"]) == 7
    assert "loss_scale/dynamic_scale" in state
    path = write_checkpoint(model, str(tmp_path / "c_0001.weights.h5"), epoch=1)
    fresh = _scaled_sgd(model)
    report = restore_optimizer_state(fresh, path)
    assert report["unused"] == [] and report["missing"] == [] and "iteration" in report["restored"]
    assert int(fresh.inner_optimizer.iterations.numpy()) == 3
    assert float(fresh.dynamic_scale.numpy()) == 512.0  # mixed_float16 to mixed_float16 keeps its scale


def test_resume_across_a_switch_to_or_from_loss_scaling_keeps_the_count_and_slots(tmp_path):
    # mixed_float16 <-> float32 resumes: the count and momentum carry over both ways (the review
    # found iteration 0 after either switch, reported as a complete restore).
    from mrcnn.callbacks import restore_optimizer_state, write_checkpoint

    plain_model = _model()
    plain_model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    plain_model.optimizer.build(plain_model.trainable_variables)
    plain_model.optimizer.iterations.assign(5)
    momentum = [v for v in plain_model.optimizer.variables if v.name.endswith("_momentum")][0]
    momentum.assign(np.full(momentum.shape, 0.25, np.float32))
    plain = write_checkpoint(plain_model, str(tmp_path / "plain_0001.weights.h5"), epoch=1)
    scaled = _scaled_sgd(plain_model)
    report = restore_optimizer_state(scaled, plain)
    assert int(scaled.inner_optimizer.iterations.numpy()) == 5 and report["missing"] == []
    assert np.all([v.numpy() for v in scaled.variables if v.name.endswith("_momentum")][0] == 0.25)

    scaled_model = _model()
    scaled_model.optimizer = _scaled_sgd(scaled_model)
    scaled_model.optimizer.inner_optimizer.iterations.assign(2)
    back = write_checkpoint(scaled_model, str(tmp_path / "scaled_0001.weights.h5"), epoch=1)
    unscaled = keras.optimizers.SGD(0.1, momentum=0.9)
    unscaled.build(scaled_model.trainable_variables)
    report = restore_optimizer_state(unscaled, back)
    assert int(unscaled.iterations.numpy()) == 2 and report["unused"] == [] and report["missing"] == []


def test_legacy_loss_scale_records_read_as_todays_keys():
    from mrcnn.callbacks import _variable_keys

    legacy = ["iteration", "learning_rate", "step_counter", "dynamic_scale", "iteration", "learning_rate", "w_momentum"]
    assert _variable_keys(legacy) == ["loss_scale/iteration", "loss_scale/learning_rate", "loss_scale/step_counter",
                                      "loss_scale/dynamic_scale", "iteration", "learning_rate", "w_momentum"]


def test_restore_optimizer_state_needs_built_optimizer(tmp_path):
    from mrcnn.callbacks import restore_optimizer_state

    with pytest.raises(ValueError, match="built optimizer"):
        restore_optimizer_state(keras.optimizers.SGD(0.1), {})


def _tiny_run(steps_per_epoch: int, **overrides):
    """The tiny distributed-test config (1 image a step) and 2 shapes images: a few seconds a step."""
    from mrcnn.data.shapes import ShapesDataset
    from tests.test_distribute import _tiny_config

    config = _tiny_config(IMAGES_PER_GPU=1, STEPS_PER_EPOCH=steps_per_epoch, **overrides)
    dataset = ShapesDataset()
    dataset.load_shapes(2, 64, 64, seed=1)
    dataset.prepare()
    return config, dataset


class _InterruptAt(keras.callbacks.Callback):
    """Raises KeyboardInterrupt (as Ctrl-C does) at the start of batch `batch` of `epoch` (0-based)."""

    def __init__(self, epoch: int, batch: int = 0) -> None:
        super().__init__()
        self.epoch_to_stop, self.batch_to_stop = epoch, batch
        self.current = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch_to_stop and batch == self.batch_to_stop:
            raise KeyboardInterrupt


class _RecordStart(keras.callbacks.Callback):
    """Records the optimizer's iteration count and momentum norms when training starts."""

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        self.iterations = int(optimizer.iterations.numpy())
        self.momenta = {v.name: v.numpy().copy() for v in optimizer.variables if v.name.endswith("_momentum")}


def test_interrupt_in_epoch_two_then_resume_continues(tmp_path, capsys):
    from mrcnn.callbacks import checkpoint_epoch, checkpoint_epoch_iterations, read_optimizer_state
    from mrcnn.model import MaskRCNN

    config, dataset = _tiny_run(2, GRADIENT_CLIP_NORM=5.0)
    keras.utils.set_random_seed(0)
    model = MaskRCNN("training", config, model_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):  # after one of epoch 2's two steps
        model.train(dataset, None, learning_rate=0.01, epochs=3, layers="heads", verbose=0,
                    custom_callbacks=[_InterruptAt(epoch=1, batch=1)])
    run_dir = Path(model.log_dir)
    names = sorted(p.name for p in run_dir.glob("*.weights.h5"))
    assert names == ["mask_rcnn_tinydist_0001.weights.h5", "mask_rcnn_tinydist_interrupted.weights.h5"]
    assert model.epoch == 1
    interrupted = str(run_dir / "mask_rcnn_tinydist_interrupted.weights.h5")
    assert checkpoint_epoch(interrupted) == 1
    assert int(read_optimizer_state(str(run_dir / names[0]))["iteration"]) == 2
    state = read_optimizer_state(interrupted)
    assert int(state["iteration"]) == 3 and checkpoint_epoch_iterations(interrupted) == 2

    resumed = MaskRCNN("training", config, model_dir=str(tmp_path))
    assert resumed.find_last() == interrupted  # the newest state of the run: written after _0001
    resumed.load_weights(interrupted)
    assert resumed.epoch == 1 and resumed.log_dir == str(run_dir)
    start = _RecordStart()
    history = resumed.train(dataset, None, learning_rate=0.01, epochs=2, layers="heads", verbose=0,
                            custom_callbacks=[start])
    assert history.epoch == [1]  # epoch 2 again, from its first batch
    assert resumed.epoch == 2
    assert start.iterations == 2  # ... at the count where epoch 2 began: the schedule lines up
    assert start.momenta and all(np.array_equal(start.momenta[k], state[k]) for k in start.momenta)
    assert int(resumed.optimizer.iterations.numpy()) == 4
    assert (run_dir / "mask_rcnn_tinydist_0002.weights.h5").is_file()
    assert resumed.find_last().endswith("_0002.weights.h5")  # newer than the Ctrl-C state now

    # Ctrl-C before this call finished an epoch: the message names the checkpoint it resumed from.
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        resumed.train(dataset, None, learning_rate=0.01, epochs=3, layers="heads", verbose=1,
                      custom_callbacks=[_InterruptAt(epoch=2)])
    printed = capsys.readouterr().out
    assert f"last epoch checkpoint: {run_dir / 'mask_rcnn_tinydist_0002.weights.h5'};" in printed
    assert "LR=0.01\n" in printed


class _RecordLearningRate(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.at_start = float(self.model.optimizer.learning_rate.numpy())


def test_training_budget_continues_after_a_resume(tmp_path):
    from mrcnn.callbacks import BUDGET_RECORD
    from mrcnn.model import MaskRCNN

    config, dataset = _tiny_run(2)
    model = MaskRCNN("training", config, model_dir=str(tmp_path))
    budget = TrainingBudget(wall_seconds=3600, decay_at=0.5)
    budget.wall_start -= 2000  # 56% of the budget spent: the rate drops at the first step
    with pytest.raises(KeyboardInterrupt):  # in epoch 2, after its first step
        model.train(dataset, None, learning_rate=0.01, epochs=3, layers="heads", verbose=0,
                    custom_callbacks=[budget, _InterruptAt(epoch=1, batch=1)])
    assert budget.decayed and budget.steps == 3
    record = json.loads((Path(model.log_dir) / BUDGET_RECORD).read_text())
    assert sorted(record) == ["0", "1"] and record["1"]["decayed"] and record["1"]["steps"] == 2
    assert record["1"]["wall_seconds"] >= 2000

    # Resumed from the Ctrl-C state: the budget continues where epoch 2 began.
    resumed = MaskRCNN("training", config, model_dir=str(tmp_path))
    resumed.load_weights(resumed.find_last())
    again, rate = TrainingBudget(wall_seconds=3600, decay_at=0.5), _RecordLearningRate()
    resumed.train(dataset, None, learning_rate=0.01, epochs=2, layers="heads", verbose=0,
                  custom_callbacks=[again, rate])
    assert resumed.resumed_from.endswith("_interrupted.weights.h5")
    assert again.decayed and rate.at_start == pytest.approx(0.001)  # dropped before the first step
    assert again.steps == 4 and again.elapsed()[0] >= 2000
    record = json.loads((Path(resumed.log_dir) / BUDGET_RECORD).read_text())
    assert record["2"]["steps"] == 4 and record["2"]["decayed"]

    # A next stage in the same process is no resume: its budget starts afresh.
    fresh, rate = TrainingBudget(wall_seconds=3600, decay_at=0.5), _RecordLearningRate()
    resumed.train(dataset, None, learning_rate=0.01, epochs=3, layers="heads", verbose=0,
                  custom_callbacks=[fresh, rate])
    assert resumed.resumed_from is None and not fresh.decayed and rate.at_start == pytest.approx(0.01)
    assert fresh.steps == 2

    # The time spent is judged against the new budget: 10x larger, 2000 s are 6%, before the drop...
    epoch_one = str(Path(resumed.log_dir) / "mask_rcnn_tinydist_0001.weights.h5")
    larger, rate = TrainingBudget(wall_seconds=36000, decay_at=0.5), _RecordLearningRate()
    again_model = MaskRCNN("training", config, model_dir=str(tmp_path))
    again_model.load_weights(epoch_one)
    again_model.train(dataset, None, learning_rate=0.01, epochs=2, layers="heads", verbose=0,
                      custom_callbacks=[larger, rate])
    assert not larger.decayed and rate.at_start == pytest.approx(0.01) and larger.steps == 2 + 2
    # ...and a budget the run had already spent says so before any step.
    spent = MaskRCNN("training", config, model_dir=str(tmp_path))
    spent.load_weights(epoch_one)
    with pytest.raises(ValueError, match=r"had already spent \d+% of this budget .* give a larger budget"):
        spent.train(dataset, None, learning_rate=0.01, epochs=2, layers="heads", verbose=0,
                    custom_callbacks=[TrainingBudget(wall_seconds=1000)])


def test_checkpoint_keep_deletes_older_epochs_after_a_good_save(tmp_path):
    template = str(tmp_path / "c_{epoch:04d}.weights.h5")
    (tmp_path / "c_0001.weights.h5").write_bytes(b"from an earlier stage")  # also this template's
    callback = AtomicCheckpoint(template, keep=2)
    callback.set_model(_model())
    for epoch in range(1, 4):  # epochs 2, 3, 4
        callback.on_epoch_end(epoch, {"loss": 1.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_0003.weights.h5", "c_0004.weights.h5"]
    callback.on_epoch_end(4, {"loss": float("nan")})  # not saved: nothing is deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_0003.weights.h5", "c_0004.weights.h5"]
    with pytest.raises(ValueError, match="keep"):
        AtomicCheckpoint(template, keep=-1)


# ----------------------------------------------------------------------------------------------
# TrainingBudget
def _sgd_model(learning_rate: float = 0.1) -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model


def _burn_cpu(seconds: float) -> None:
    # Busy work that process_time() counts (sleeping would not).
    end = time.process_time() + seconds
    while time.process_time() < end:
        np.sqrt(np.arange(1000.0))


class _Work(keras.callbacks.Callback):
    def __init__(self, sleep: bool = False) -> None:
        super().__init__()
        self.sleep = sleep

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.02) if self.sleep else _burn_cpu(0.02)


def _fit_until_stopped(model: keras.Model, budget: TrainingBudget, sleep: bool = False) -> None:
    x, y = np.zeros((8, 4), np.float32), np.zeros((8, 1), np.float32)
    model.fit(x, y, batch_size=1, epochs=1000, verbose=0, callbacks=[_Work(sleep), budget])


def test_cpu_budget_stops_training_and_drops_the_learning_rate():
    model = _sgd_model()
    budget = TrainingBudget(cpu_seconds=0.5)
    _fit_until_stopped(model, budget)
    wall, cpu = budget.elapsed()
    assert cpu >= 0.5 and 0 < budget.steps < 8000  # stopped by the budget, not by the epochs
    assert budget.decayed and float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    assert budget.spent() >= 1.0 and wall > 0


def test_wall_budget_counts_time_the_cpu_does_not(capsys):
    # Sleeping costs wall time but no CPU time: only a wall budget ends this run.
    model = _sgd_model()
    budget = TrainingBudget(wall_seconds=0.4, decay_at=0.5, verbose=1)
    _fit_until_stopped(model, budget, sleep=True)
    wall, cpu = budget.elapsed()
    assert wall >= 0.4 and cpu < wall and 0 < budget.steps < 8000
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    printed = capsys.readouterr().out
    assert "Learning rate dropped to 0.01" in printed and "Time budget reached" in printed


def test_budget_without_decay_keeps_the_learning_rate():
    model = _sgd_model()
    budget = TrainingBudget(cpu_seconds=0.3, decay_at=None)
    _fit_until_stopped(model, budget)
    assert budget.spent() >= 1.0 and not budget.decayed
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.1)


def test_budget_is_the_larger_of_the_wall_and_cpu_fractions():
    budget = TrainingBudget(wall_seconds=3600, cpu_seconds=0.2)
    _burn_cpu(0.1)
    assert 0.4 < budget.spent() < 1.0
    with pytest.raises(ValueError, match="wall_seconds or cpu_seconds"):
        TrainingBudget()
    with pytest.raises(ValueError, match="decay_at must be in"):
        TrainingBudget(wall_seconds=1, decay_at=1.5)


# ----------------------------------------------------------------------------------------------
# GeneratorEpochs
class _EpochRecordingBatches(keras.utils.PyDataset):
    """Two batches; records the `epoch` attribute each read sees, and advances it at epoch end
    (as DataGenerator does)."""

    def __init__(self, workers: int = 1) -> None:
        super().__init__(workers=workers)
        self.epoch = 0
        self.reads: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        self.reads.append((self.epoch, index))
        return np.ones((2, 3), np.float32), np.ones((2, 1), np.float32)

    def on_epoch_end(self) -> None:
        self.epoch += 1


@pytest.mark.parametrize("workers", [1, 2])  # 2: Keras' threaded enqueuer (train --workers)
def test_generator_epochs_follow_training_and_validation_stays_at_zero(workers):
    from mrcnn.callbacks import GeneratorEpochs

    batches, validation = _EpochRecordingBatches(workers), _EpochRecordingBatches(workers)
    _model().fit(batches, validation_data=validation, initial_epoch=2, epochs=4, shuffle=False, verbose=0,
                 callbacks=[GeneratorEpochs(batches, validation)])
    trained = batches.reads[-4:]  # Keras also reads batches before training to learn their spec
    assert trained == [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert validation.reads[-4:] == [(0, 0), (0, 1), (0, 0), (0, 1)]  # both passes: the same draws
    unaligned, unpinned = _EpochRecordingBatches(), _EpochRecordingBatches()
    _model().fit(unaligned, validation_data=unpinned, initial_epoch=2, epochs=4, shuffle=False, verbose=0)
    assert unaligned.reads[-4:] != trained  # what the callback is for: fit alone starts elsewhere
    assert unpinned.reads[-4:] != validation.reads[-4:]


class _TermAt(_InterruptAt):
    """Sends this process SIGTERM (a scheduler's stop) at the start of batch `batch` of `epoch`."""

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch_to_stop and batch == self.batch_to_stop:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_training_writes_the_state_like_ctrl_c(tmp_path):
    from mrcnn.callbacks import checkpoint_epoch
    from mrcnn.model import MaskRCNN

    config, dataset = _tiny_run(1)
    model = MaskRCNN("training", config, model_dir=str(tmp_path))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        model.train(dataset, None, learning_rate=0.01, epochs=3, layers="heads", verbose=0,
                    custom_callbacks=[_TermAt(epoch=1)])
    assert signal.getsignal(signal.SIGTERM) is before  # the handler lives only while training
    interrupted = Path(model.log_dir) / "mask_rcnn_tinydist_interrupted.weights.h5"
    assert checkpoint_epoch(str(interrupted)) == 1 and model.epoch == 1
    assert not list(Path(model.log_dir).glob("*.tmp.weights.h5"))


def test_a_checkpoint_write_cut_short_leaves_no_temporary_file(tmp_path, monkeypatch):
    from mrcnn.callbacks import write_checkpoint

    model = _model()
    real_save = model.save_weights

    def save_then_interrupt(path):  # a second Ctrl-C arriving during the write
        real_save(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save_weights", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(model, str(tmp_path / "m_interrupted.weights.h5"), epoch=1)
    assert list(tmp_path.iterdir()) == []


def test_mean_average_precision_adds_val_map_every_n_epochs():
    from mrcnn.callbacks import MeanAveragePrecision
    from mrcnn.data.shapes import ShapesDataset
    from tests.evaluation.test_evaluate import OracleModel

    dataset = ShapesDataset()
    dataset.load_shapes(3, 64, 64, seed=11)
    dataset.prepare()
    callback = MeanAveragePrecision(dataset, every=2)
    callback.set_model(OracleModel(dataset))  # returns the ground truth: mAP 1
    logs = {"loss": 1.0}
    callback.on_epoch_end(0, logs)
    assert logs == {"loss": 1.0} and callback.history == []
    callback.on_epoch_end(1, logs)
    assert logs == {"loss": 1.0, "val_mask_mAP50": 1.0, "val_mask_mAP": 1.0, "val_box_mAP50": 1.0, "val_box_mAP": 1.0}
    callback.set_model(OracleModel(dataset, shift=6))  # masks moved 6 px: lower
    callback.on_epoch_end(3, logs)
    assert [epoch for epoch, _ in callback.history] == [1, 3]
    assert 0 < logs["val_mask_mAP"] < 1 and logs["val_mask_mAP"] == callback.history[-1][1]["val_mask_mAP"]
    # A diverged epoch is not evaluated; a model without masks gets box keys only.
    callback.on_epoch_end(5, nan_logs := {"loss": float("nan")})
    assert list(nan_logs) == ["loss"]
    boxes_only = OracleModel(dataset)
    detect = boxes_only.detect
    boxes_only.detect = lambda images, verbose=0: [{k: v for k, v in r.items() if k != "masks"}
                                                   for r in detect(images)]
    callback.set_model(boxes_only)
    box_logs = {}
    callback.on_epoch_end(7, box_logs)
    assert box_logs == {"val_box_mAP50": 1.0, "val_box_mAP": 1.0}
    with pytest.raises(ValueError, match="every must be an int >= 1, got 0"):
        MeanAveragePrecision(dataset, every=0)
    with pytest.raises(ValueError, match="at least one image"):
        MeanAveragePrecision(dataset, image_ids=[])
    # Checked when training begins, not after `every` epochs: the classes must be the model's.
    other = OracleModel(dataset)
    other.config.NUM_CLASSES = 7
    callback.set_model(other)
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        callback.on_train_begin()


def test_mean_average_precision_reaches_tensorboard_and_history_through_train(tmp_path):
    # train's TensorBoard runs after the custom callbacks: the values are written, as the
    # validation run's epoch_mask_mAP50 (Keras moves val_ keys there), and kept in History.
    import tensorflow as tf

    from mrcnn.callbacks import MeanAveragePrecision
    from mrcnn.model import MaskRCNN

    config, dataset = _tiny_run(1)
    keras.utils.set_random_seed(0)
    model = MaskRCNN("training", config, model_dir=str(tmp_path))
    inference_config, _ = _tiny_run(1, DETECTION_MIN_CONFIDENCE=0.0)
    evaluation = MeanAveragePrecision(dataset, inference_config=inference_config)
    history = model.train(dataset, None, learning_rate=0.01, epochs=1, layers="heads", verbose=0,
                          custom_callbacks=[evaluation])
    assert set(history.history) >= {"val_mask_mAP50", "val_mask_mAP", "val_box_mAP50", "val_box_mAP"}
    # The inference model evaluated the trained weights.
    for ours, theirs in zip(evaluation._inference.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    tags = set()
    for event_file in (Path(model.log_dir) / "validation").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(value.tag for value in event.summary.value)
    assert {"epoch_mask_mAP50", "epoch_box_mAP"} <= tags


# ----------------------------------------------------------------------------------------------
# Good checkpoints and what a stopped train() leaves (found in review)
def test_checkpoint_is_good_once_a_loss_from_its_weights_is_finite(tmp_path):
    template = str(tmp_path / "c_{epoch:04d}.weights.h5")
    first = template.format(epoch=1)
    callback = AtomicCheckpoint(template, keep=1)
    callback.set_model(_model())
    callback.on_epoch_end(0, {"loss": 1.0})
    assert callback.pending and callback.last_good is None
    callback.on_train_batch_end(0, {"loss": 2.0})  # computed with checkpoint 1's weights
    assert not callback.pending and callback.last_good == (first, 1)
    callback.on_epoch_end(1, {"loss": 1.0})
    callback.on_train_batch_end(0, {"loss": float("nan")})  # checkpoint 2's weights give NaN
    assert callback.pending and callback.good_path == first
    # keep=1 keeps the last good checkpoint besides the newest.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_0001.weights.h5", "c_0002.weights.h5"]

    validated = AtomicCheckpoint(str(tmp_path / "v_{epoch:04d}.weights.h5"))
    validated.set_model(_model())
    validated.on_epoch_end(0, {"loss": 1.0, "val_loss": 3.0})  # validation ran on the final weights
    assert not validated.pending
    chained = AtomicCheckpoint(str(tmp_path / "n_{epoch:04d}.weights.h5"), keep=1)
    chained.set_model(_model())
    chained.on_epoch_end(0, {"loss": 1.0})
    chained.on_epoch_end(1, {"loss": 1.0})  # a finite epoch began with checkpoint 1's weights
    assert chained.last_good == (str(tmp_path / "n_0001.weights.h5"), 1) and chained.pending
    chained.on_train_batch_end(0, {"loss": 1.0})
    assert chained.last_good[1] == 2 and not (tmp_path / "n_0001.weights.h5").exists()


def test_checkpoint_refuses_weights_that_are_not_finite(tmp_path):
    model = _model()
    callback = AtomicCheckpoint(str(tmp_path / "c_{epoch:04d}.weights.h5"))
    callback.set_model(model)
    model.get_layer("dense").kernel.assign(np.full((3, 1), np.inf, np.float32))
    callback.on_epoch_end(0, {"loss": 1.0})  # the loss was measured before the last update
    assert list(tmp_path.iterdir()) == [] and callback.nonfinite_weights_epoch == 1 and model.stop_training


class _SetClassLogits(keras.callbacks.Callback):
    """Sets the class logits kernel to `value` at the end of batch `batch` of `epoch` (0-based)."""

    def __init__(self, epoch: int, batch: int, value: float) -> None:
        super().__init__()
        self.at, self.value, self.current = (epoch, batch), value, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.current, batch) == self.at:
            kernel = next(w for w in self.model.trainable_weights if "mrcnn_class_logits" in w.path)
            kernel.assign(np.full(kernel.shape, self.value, kernel.dtype))


def test_a_checkpoint_whose_weights_give_nan_is_not_the_one_rolled_back_to(tmp_path):
    """Weights blown up (finite) in an epoch's last step save fine; the next batch is NaN: back to the one before."""
    from mrcnn.callbacks import TrainingDivergedError
    from mrcnn.model import MaskRCNN

    config, dataset = _tiny_run(2, KEEP_CHECKPOINTS=1)
    model = MaskRCNN("training", config, model_dir=str(tmp_path))
    huge = float(np.finfo(np.float32).max) / 2  # finite; any sum of two such products overflows
    with pytest.raises(TrainingDivergedError, match=r"at epoch 3, batch 0; the model is back at the last good "
                                                    r"checkpoint, .*_0001.weights.h5 \(epoch 1\); the newer .*_0002"):
        model.train(dataset, None, learning_rate=0.01, epochs=4, layers="heads", verbose=0,
                    custom_callbacks=[_SetClassLogits(1, 1, huge)])
    assert model.epoch == 1
    run = Path(model.log_dir)
    assert (run / "mask_rcnn_tinydist_0001.weights.h5").is_file()  # kept although KEEP_CHECKPOINTS = 1
    assert all(np.isfinite(w.numpy()).all() and np.abs(w.numpy()).max() < 1e30 for w in model.weights)


def test_weights_not_finite_after_an_epochs_last_step_stop_the_run(tmp_path):
    from mrcnn.callbacks import TrainingDivergedError
    from mrcnn.model import MaskRCNN

    config, dataset = _tiny_run(2)
    model = MaskRCNN("training", config, model_dir=str(tmp_path))
    with pytest.raises(TrainingDivergedError, match=r"the weights became NaN or infinite in the last step of epoch "
                                                    r"2; the model is back at the last good checkpoint, .*_0001"):
        model.train(dataset, None, learning_rate=0.01, epochs=4, layers="heads", verbose=0,
                    custom_callbacks=[_SetClassLogits(1, 1, float("nan"))])
    assert model.epoch == 1 and not (Path(model.log_dir) / "mask_rcnn_tinydist_0002.weights.h5").exists()
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)


def test_a_rollback_into_an_earlier_stage_zeroes_the_slots_its_checkpoint_lacks(tmp_path):
    """heads, then all layers diverging: the heads checkpoint has no slots for the backbone's, which held NaN."""
    from mrcnn.callbacks import TrainingDivergedError
    from mrcnn.model import MaskRCNN

    config, dataset = _tiny_run(2)
    model = MaskRCNN("training", config, model_dir=str(tmp_path))
    model.train(dataset, None, learning_rate=0.01, epochs=1, layers="heads", verbose=0)
    with pytest.raises(TrainingDivergedError, match=r"at epoch 2, batch 1; the model is back at .*_0001"):
        model.train(dataset, None, learning_rate=0.01, epochs=3, layers="all", verbose=0,
                    custom_callbacks=[_SetClassLogits(1, 0, float("nan"))])
    assert all(np.isfinite(np.asarray(v.numpy(), np.float64)).all() for v in model.optimizer.variables)
    history = model.train(dataset, None, learning_rate=0.001, epochs=2, layers="all", verbose=0)
    assert history.epoch == [1] and np.isfinite(history.history["loss"]).all()


def test_a_finished_stage_leaves_the_resumed_optimizer_state_to_the_next(tmp_path):
    """custom.py --weights last runs its finished heads stage first: it must not use up the checkpoint."""
    from mrcnn.callbacks import read_optimizer_state
    from mrcnn.model import MaskRCNN

    config, dataset = _tiny_run(1)
    first = MaskRCNN("training", config, model_dir=str(tmp_path))
    first.train(dataset, None, learning_rate=0.01, epochs=2, layers="all", verbose=0)
    last = first.find_last()
    state = read_optimizer_state(last)
    resumed = MaskRCNN("training", config, model_dir=str(tmp_path))
    resumed.load_weights(last)
    with pytest.warns(UserWarning, match="has nothing to do"):
        nothing = resumed.train(dataset, None, learning_rate=0.01, epochs=1, layers="heads", verbose=0)
    assert nothing.epoch == [] and nothing.history == {}
    start = _RecordStart()
    resumed.train(dataset, None, learning_rate=0.01, epochs=3, layers="all", verbose=0, custom_callbacks=[start])
    assert resumed.resumed_from == last and start.iterations == 2
    assert len(start.momenta) > 20 and all(np.array_equal(start.momenta[k], state[k]) for k in start.momenta)


class _FailAt(_InterruptAt):
    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch_to_stop and batch == self.batch_to_stop:
            raise RuntimeError("a callback of the user's failed")


def test_an_exception_mid_epoch_leaves_the_epoch_count_and_schedule_at_the_last_checkpoint(tmp_path):
    from mrcnn.model import MaskRCNN

    config, dataset = _tiny_run(2)
    model = MaskRCNN("training", config, model_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="a callback of the user's failed"):
        model.train(dataset, None, learning_rate=0.01, epochs=3, layers="heads", verbose=0,
                    custom_callbacks=[_FailAt(epoch=1, batch=1)])
    assert model.epoch == 1 and int(model.optimizer.iterations.numpy()) == 2
    history = model.train(dataset, None, learning_rate=0.01, epochs=2, layers="heads", verbose=0)
    assert history.epoch == [1] and int(model.optimizer.iterations.numpy()) == 4


def test_after_ctrl_c_a_nan_goes_back_to_the_state_it_resumed_from(tmp_path):
    from mrcnn.callbacks import TrainingDivergedError, checkpoint_epoch_iterations
    from mrcnn.model import MaskRCNN

    config, dataset = _tiny_run(2)
    model = MaskRCNN("training", config, model_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):  # in epoch 1: no epoch checkpoint yet
        model.train(dataset, None, learning_rate=0.01, epochs=2, layers="heads", verbose=0,
                    custom_callbacks=[_InterruptAt(epoch=0, batch=1)])
    interrupted = model.find_last()
    assert interrupted.endswith("_interrupted.weights.h5") and checkpoint_epoch_iterations(interrupted) == 0
    # The same process continues as a new one would: from the Ctrl-C state, the epoch from its start.
    start = _RecordStart()
    with pytest.raises(TrainingDivergedError, match=r"at epoch 1, batch 1; the model is back at the last good "
                                                    r"checkpoint, .*_interrupted.weights.h5 \(epoch 0\)"):
        model.train(dataset, None, learning_rate=0.01, epochs=2, layers="heads", verbose=0,
                    custom_callbacks=[start, _SetClassLogits(0, 0, float("nan"))])
    assert start.iterations == 0 and model.epoch == 0 and int(model.optimizer.iterations.numpy()) == 0
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)


def test_find_last_trusts_recorded_epochs_over_file_times(tmp_path):
    from mrcnn.callbacks import write_checkpoint
    from mrcnn.model import MaskRCNN

    config, _ = _tiny_run(1)
    finder = MaskRCNN("training", config, model_dir=str(tmp_path))
    run = tmp_path / "tinydist20260101T000000"
    run.mkdir()
    source = _trained_sgd_model()
    write_checkpoint(source, str(run / "mask_rcnn_tinydist_0001.weights.h5"), epoch=1)
    write_checkpoint(source, str(run / "mask_rcnn_tinydist_0002.weights.h5"), epoch=2)
    stale = write_checkpoint(source, str(run / "mask_rcnn_tinydist_interrupted.weights.h5"), epoch=1,
                             epoch_iterations=3)  # written last, as a copy that sorts it last would
    os.utime(stale, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert finder.find_last() == str(run / "mask_rcnn_tinydist_0002.weights.h5")
    write_checkpoint(source, stale, epoch=2, epoch_iterations=5)  # Ctrl-C during epoch 3
    os.utime(run / "mask_rcnn_tinydist_0002.weights.h5", ns=(time.time_ns() + 10**10,) * 2)
    assert finder.find_last() == stale


def test_a_schedule_with_a_budget_that_drops_the_rate_is_refused_before_any_step():
    model = _sgd_model()
    model.compile(optimizer=keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)),
                  loss="mse")
    x, y = np.ones((4, 4), np.float32), np.ones((4, 1), np.float32)
    with pytest.raises(ValueError, match="LearningRateSchedule: pass decay_at=None"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[TrainingBudget(wall_seconds=100)])
    assert int(model.optimizer.iterations.numpy()) == 0
    model.fit(x, y, epochs=1, verbose=0, callbacks=[TrainingBudget(wall_seconds=100, decay_at=None)])
