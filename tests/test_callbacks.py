"""Tests for mrcnn/callbacks.py: atomic checkpoints and the NaN guard."""

import math

import keras
import numpy as np
import pytest

from mrcnn.callbacks import AtomicCheckpoint, StopOnNaN


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
