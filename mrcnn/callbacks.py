"""Keras callbacks used by `MaskRCNN.train`: no training progress is ever lost.

* `AtomicCheckpoint` writes the weights at the end of every epoch to a temporary file and renames
  it into place, so an interrupted write never leaves a truncated checkpoint; it refuses to write
  weights from an epoch whose loss is not finite, so the last good checkpoint survives a NaN.
* `StopOnNaN` stops training at the first non-finite batch loss with a message naming the epoch
  and batch.
* TensorBoard logs go to the run's log dir.
"""

from __future__ import annotations

import math
import os
from typing import Any

import keras


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves `model.save_weights` to `checkpoint_path.format(epoch=epoch + 1)` atomically.

    Args:
        checkpoint_path: a path template with ``{epoch:04d}``, ending in ``.weights.h5``.
        verbose: 1 prints each saved path.
    """

    def __init__(self, checkpoint_path: str, verbose: int = 0) -> None:
        super().__init__()
        if not checkpoint_path.endswith(".weights.h5"):
            raise ValueError(f"checkpoint_path must end in '.weights.h5' (Keras 3), got {checkpoint_path!r}")
        self.checkpoint_path = checkpoint_path
        self.verbose = verbose
        self.last_saved: str | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            print(f"\nEpoch {epoch + 1}: loss is {loss}; not saving. Last good checkpoint: {self.last_saved}")
            return
        path = self.checkpoint_path.format(epoch=epoch + 1)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # Keras 3 insists on the .weights.h5 suffix, so the temporary file keeps it.
        tmp_path = path[: -len(".weights.h5")] + ".tmp.weights.h5"
        self.model.save_weights(tmp_path)
        os.replace(tmp_path, path)
        self.last_saved = path
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: saved {path}")


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, saying where."""

    def __init__(self) -> None:
        super().__init__()
        self._epoch = 0
        self.stopped_at: tuple[int, int] | None = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.stopped_at = (self._epoch + 1, batch)
            print(f"\nStopping: loss became {loss} at epoch {self._epoch + 1}, batch {batch}. "
                  "The last good checkpoint is kept; lower the learning rate or check the data.")
            self.model.stop_training = True


def training_callbacks(model: keras.Model, log_dir: str, checkpoint_path: str) -> list[keras.callbacks.Callback]:
    """The callbacks `MaskRCNN.train` always uses: NaN guard, atomic checkpoints, TensorBoard."""
    return [
        StopOnNaN(),
        AtomicCheckpoint(checkpoint_path, verbose=0),
        keras.callbacks.TensorBoard(log_dir=log_dir, histogram_freq=0, write_graph=False),
    ]
