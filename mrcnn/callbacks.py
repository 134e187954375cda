"""Keras callbacks used by `MaskRCNN.train`: no training progress is ever lost.

* `AtomicCheckpoint` writes the weights at the end of every epoch to a temporary file and renames
  it into place, so an interrupted write never leaves a truncated checkpoint; it refuses to write
  weights from an epoch whose loss is not finite, so the last good checkpoint survives a NaN.
* `StopOnNaN` stops training at the first non-finite batch loss with a message naming the epoch
  and batch; `MaskRCNN.train` then puts the last good checkpoint back and raises
  `TrainingDivergedError`.
* TensorBoard logs go to the run's log dir; it comes after `train`'s custom callbacks, so the
  values they add to an epoch's logs are written too.
* `TrainingBudget` (not one of train's defaults: pass it in `custom_callbacks`) trains for a
  wall-clock or CPU-time budget with the paper's step schedule scaled to it.
* `MeanAveragePrecision` (also passed in `custom_callbacks`) adds a validation set's mask and box
  mAP to the epoch's logs every few epochs.

A checkpoint is a Keras 3 ``.weights.h5`` file: the model's weights and, once the optimizer has
taken a step, its variables (Keras writes them by position under ``optimizer/vars``). We add two
file attributes so that a run can really resume: ``mrcnn_epoch`` (epochs completed) and
``mrcnn_optimizer_variables`` (a key per optimizer variable, in Keras' order:
`optimizer_state_keys`). The keys embed the model variable paths (``<var path>_momentum``), so
`restore_optimizer_state` puts the iteration count and every slot (momentum, Adam moments) back by
key, also after the set of trainable layers changed between stages, and across a switch to or from
mixed_float16's LossScaleOptimizer (whose own variables are keyed ``loss_scale/...``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf

EPOCH_ATTR = "mrcnn_epoch"
# Ctrl-C states only: the optimizer's iteration count when the last completed epoch ended.
EPOCH_ITERATIONS_ATTR = "mrcnn_epoch_iterations"
OPTIMIZER_NAMES_ATTR = "mrcnn_optimizer_variables"
# The learning rate is given anew by each training stage (or computed by a schedule from the
# iteration count): restoring the saved value would override the stage's own.
_NOT_RESTORED = ("learning_rate",)
# TrainingBudget's state per completed epoch, in the run's folder: a resumed run continues its budget.
BUDGET_RECORD = "training_budget.json"


def write_checkpoint(model: keras.Model, path: str, epoch: int, epoch_iterations: int | None = None) -> str:
    """Saves weights (+ optimizer variables when built) to `path` atomically, with resume attributes.

    Args:
        model: the model; its optimizer, when compiled and built, is saved too.
        path: target file ending in ``.weights.h5``.
        epoch: epochs completed at this point (stored as ``mrcnn_epoch``).
        epoch_iterations: for a state saved within an epoch (Ctrl-C), the optimizer's iteration
            count when epoch `epoch` ended (``mrcnn_epoch_iterations``): a run resumed from it
            repeats the unfinished epoch from that count, so its learning-rate schedule lines up.
    Returns:
        `path`.
    """
    if not path.endswith(".weights.h5"):
        raise ValueError(f"checkpoint path must end in '.weights.h5' (Keras 3), got {path!r}")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # Keras 3 insists on the .weights.h5 suffix, so the temporary file keeps it.
    tmp_path = path[: -len(".weights.h5")] + ".tmp.weights.h5"
    try:
        model.save_weights(tmp_path)
        optimizer = getattr(model, "optimizer", None)
        names = optimizer_state_keys(optimizer) if optimizer is not None and optimizer.built else []
        with h5py.File(tmp_path, "a") as f:
            f.attrs[EPOCH_ATTR] = int(epoch)
            f.attrs[OPTIMIZER_NAMES_ATTR] = json.dumps(names)
            if epoch_iterations is not None:
                f.attrs[EPOCH_ITERATIONS_ATTR] = int(epoch_iterations)
        os.replace(tmp_path, path)
    except BaseException:  # a second Ctrl-C or a full disk mid-write: no stray temporary file
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
    return path


def checkpoint_epoch(path: str) -> int | None:
    """Epochs completed recorded in a checkpoint (None for files written by other tools)."""
    with h5py.File(path, "r") as f:
        value = f.attrs.get(EPOCH_ATTR)
    return None if value is None else int(value)


def checkpoint_epoch_iterations(path: str) -> int | None:
    """The iteration count at the end of the last completed epoch, recorded in a Ctrl-C state
    (None for epoch checkpoints, which are written at that count, and for other files)."""
    with h5py.File(path, "r") as f:
        value = f.attrs.get(EPOCH_ITERATIONS_ATTR)
    return None if value is None else int(value)


def read_optimizer_state(path: str) -> dict[str, np.ndarray]:
    """The optimizer variables stored in checkpoint `path`, by name ({} when it has none).

    Raises:
        ValueError: when the file's optimizer data does not match its recorded names (naming the file).
    """
    with h5py.File(path, "r") as f:
        names = json.loads(f.attrs.get(OPTIMIZER_NAMES_ATTR, "[]"))
        group = f.get("optimizer/vars")
        if not names:
            return {}
        if group is None or len(group) != len(names):
            found = 0 if group is None else len(group)
            raise ValueError(f"{path}: records {len(names)} optimizer variable names but holds {found} "
                             "optimizer variables (file written by another tool?)")
        return {key: np.asarray(group[str(i)]) for i, key in enumerate(_variable_keys(names))}


LOSS_SCALE_PREFIX = "loss_scale/"


def _variable_keys(names: list[str]) -> list[str]:
    """Names made unique in order (a second ``x`` is ``x#1``); for a checkpoint's recorded names.

    Files written before `optimizer_state_keys` recorded a LossScaleOptimizer's variables by bare
    name: its own ``iteration``, ``learning_rate``, ``step_counter``, ``dynamic_scale`` came first
    and the inner optimizer's repeated the first two. Those are read as the keys of today's files.
    """
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        count = seen.get(name, 0)
        keys.append(name if count == 0 else f"{name}#{count}")
        seen[name] = count + 1
    if "dynamic_scale" in keys and "iteration#1" in keys:  # a legacy LossScaleOptimizer record
        wrapper = {"iteration", "learning_rate", "step_counter", "dynamic_scale"}
        keys = [LOSS_SCALE_PREFIX + k if k in wrapper else k.removesuffix("#1") if k.endswith("#1") else k
                for k in keys]
    return keys


def optimizer_state_keys(optimizer: keras.optimizers.Optimizer) -> list[str]:
    """A key per variable of `optimizer`, in its order, that means the same with and without loss scaling.

    The inner optimizer's variables (and a plain optimizer's) are keyed by name: ``iteration``,
    ``learning_rate``, ``<var path>_momentum``; a LossScaleOptimizer's own (its unused
    ``iteration``, ``step_counter``, ``dynamic_scale``) get a ``loss_scale/`` prefix. So a run
    resumed with or without MIXED_PRECISION="mixed_float16" keeps the iteration count and slots
    (and the loss scale, when both sides have one).
    """
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is None:
        return _variable_keys([v.name for v in optimizer.variables])
    inner_ids = {id(v) for v in inner.variables}
    inner_keys = iter(_variable_keys([v.name for v in inner.variables]))
    return [next(inner_keys) if id(v) in inner_ids else LOSS_SCALE_PREFIX + v.name for v in optimizer.variables]


def optimizer_state(optimizer: keras.optimizers.Optimizer) -> dict[str, np.ndarray]:
    """The optimizer's variables by `optimizer_state_keys` (empty before it is built)."""
    if optimizer is None or not optimizer.built:
        return {}
    variables = optimizer.variables
    return {key: np.asarray(v.numpy()) for key, v in zip(optimizer_state_keys(optimizer), variables)}


def restore_optimizer_state(optimizer: keras.optimizers.Optimizer, state: str | dict[str, np.ndarray],
                            reset_missing: bool = False) -> dict[str, list[str]]:
    """Assigns saved optimizer variables to `optimizer` by key: iteration count, momentum, moments.

    The optimizer must be built (``optimizer.build(model.trainable_variables)``), under the
    strategy scope when there is one. The learning rate is not restored (see `_NOT_RESTORED`).

    Args:
        optimizer: the built optimizer.
        state: a checkpoint path (`read_optimizer_state`) or a dict from `optimizer_state`.
        reset_missing: set the variables `state` lacks to zero, a fresh slot's value (for an
            optimizer that has been used: after a NaN its other slots hold NaN); False leaves them.
    Returns:
        {"restored": names, "missing": names of this optimizer that `state` lacks (they keep their
        values, fresh ones right after `build`, e.g. slots of layers newly made trainable),
        "unused": names in `state` only}.
    Raises:
        ValueError: when the optimizer is not built.
    """
    if not optimizer.built:
        raise ValueError("restore_optimizer_state needs a built optimizer: call "
                         "optimizer.build(model.trainable_variables) first")
    stored = read_optimizer_state(state) if isinstance(state, (str, os.PathLike)) else dict(state)
    restored, missing = [], []
    keys = optimizer_state_keys(optimizer)
    for key, variable in zip(keys, optimizer.variables):
        if variable.name in _NOT_RESTORED:
            continue
        value = stored.get(key)
        if value is None and key.startswith(LOSS_SCALE_PREFIX):
            continue  # from a run without loss scaling: the scale starts afresh, nothing is missing
        if value is None or tuple(value.shape) != tuple(variable.shape):
            missing.append(key)
            if reset_missing:
                variable.assign(np.zeros(variable.shape, variable.dtype))
            continue
        variable.assign(value)
        restored.append(key)
    current = set(keys)
    # A loss scale saved by a mixed_float16 run means nothing to an optimizer without one.
    unused = sorted(n for n in stored if n not in current and n.split("#")[0] not in _NOT_RESTORED
                    and not n.startswith(LOSS_SCALE_PREFIX))
    return {"restored": restored, "missing": missing, "unused": unused}


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves weights and optimizer state to `checkpoint_path.format(epoch=epoch + 1)` atomically,
    and tracks which checkpoint is known to be good.

    An epoch whose loss is not finite, or whose final weights are not (the last step of an epoch
    can blow them up after its loss was measured), is not saved; the latter also stops training.
    A saved checkpoint is *good* once a loss computed with its weights is finite: the first
    training batch after it (the loss is computed before that batch's update), its epoch's
    validation loss, or the next epoch's checkpoint (an epoch with a finite mean loss had a finite
    first batch). Until then it is pending: weights that are finite but huge (1e29 after a too
    large learning rate) save fine and give NaN on the next batch.

    Args:
        checkpoint_path: a path template with ``{epoch:04d}``, ending in ``.weights.h5``.
        verbose: 1 prints each saved path.
        keep: after each save, delete this template's checkpoints of epochs before the last
            `keep` (0: keep all), never the last good one. A checkpoint holds the optimizer state
            too (~3x the weights with Adam), so short epochs fill a disk fast. Nothing is deleted
            for an epoch not saved (NaN).
        write: False: track the checkpoints as if written, write and delete nothing (workers other
            than the chief under a multi-worker strategy: the chief writes them, all workers must
            agree on the epochs done and the last good checkpoint).

    Attributes:
        last_saved, completed_epochs, saved_iterations: the newest checkpoint (this callback's, or
            the start point `start_from` set), the epochs completed at it and the optimizer's
            iteration count there.
        last_good: (path, completed epochs) of the newest good checkpoint, or None.
        pending: whether `last_saved` is not yet known to be good.
        nonfinite_weights_epoch: the (1-based) epoch whose weights were not finite, or None.
    """

    def __init__(self, checkpoint_path: str, verbose: int = 0, keep: int = 0, write: bool = True) -> None:
        super().__init__()
        self.write = bool(write)
        if not checkpoint_path.endswith(".weights.h5"):
            raise ValueError(f"checkpoint_path must end in '.weights.h5' (Keras 3), got {checkpoint_path!r}")
        if int(keep) < 0:
            raise ValueError(f"keep must be >= 0 (0: keep every checkpoint), got {keep!r}")
        self.checkpoint_path = checkpoint_path
        self.verbose = verbose
        self.keep = int(keep)
        self.last_saved: str | None = None
        self.completed_epochs: int | None = None  # epochs completed at the last checkpoint
        self.saved_iterations: int | None = None  # the optimizer's iteration count at that checkpoint
        self.last_good: tuple[str, int] | None = None
        self.nonfinite_weights_epoch: int | None = None
        self.pending = False  # last_saved is not yet known to be good

    def start_from(self, path: str | None, completed_epochs: int, iterations: int | None,
                   previous: tuple[str, int] | None = None) -> None:
        """Sets the checkpoint training starts from (pending until its first batch).

        Args:
            path: the checkpoint the model's state came from, or None.
            completed_epochs: the epochs done at it.
            iterations: the optimizer's iteration count now.
            previous: (path, completed epochs) of the run's checkpoint before `path`, if it exists:
                training went on from it with finite losses up to `path`, so it is good.
        """
        self.last_saved, self.completed_epochs, self.saved_iterations = path, completed_epochs or None, iterations
        self.pending = path is not None
        self.last_good = previous

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.pending and _finite((logs or {}).get("loss")):
            self._confirm()
            self._prune()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            print(f"\nEpoch {epoch + 1}: loss is {loss}; not saving. Last good checkpoint: {self.good_path}")
            return
        if not weights_finite(self.model.weights):
            self.nonfinite_weights_epoch = epoch + 1
            self.model.stop_training = True
            print(f"\nEpoch {epoch + 1}: the weights are no longer finite after its last step; not saving. "
                  f"Last good checkpoint: {self.good_path}")
            return
        if self.pending and self.last_saved is not None:
            self._confirm()  # this epoch's finite loss began with the previous checkpoint's weights
        path = self.checkpoint_path.format(epoch=epoch + 1)
        if self.write:
            path = write_checkpoint(self.model, path, epoch + 1)
        self.last_saved = path
        self.completed_epochs = epoch + 1
        self.pending = True
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and optimizer.built:
            self.saved_iterations = int(optimizer.iterations.numpy())
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: saved {path}")
        if _finite(logs.get("val_loss")):
            self._confirm()  # validation ran on this epoch's final weights
        self._prune()

    @property
    def good_path(self) -> str | None:
        """The newest good checkpoint's path, or None."""
        return self.last_good[0] if self.last_good else None

    def _confirm(self) -> None:
        """`last_saved` is good."""
        self.pending = False
        self.last_good = (self.last_saved, self.completed_epochs or 0)

    def _prune(self) -> None:
        """Deletes checkpoints of epochs before the last `keep`, except the last good one."""
        if not self.keep or not self.completed_epochs or not self.write:
            return
        for old_epoch in range(1, self.completed_epochs + 1 - self.keep):
            old = self.checkpoint_path.format(epoch=old_epoch)
            if old != self.good_path:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(old)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def weights_finite(variables: Sequence[Any]) -> bool:
    """Whether every floating-point variable in `variables` holds only finite values."""
    checks = [tf.reduce_all(tf.math.is_finite(v)) for v in variables if tf.as_dtype(v.dtype).is_floating]
    return bool(tf.reduce_all(checks).numpy()) if checks else True


class GeneratorEpochs(keras.callbacks.Callback):
    """Pins `DataGenerator` epochs to training: the training data's to the epoch that starts, the
    validation data's to 0.

    A generator's order and random draws (augmentation, RPN anchor sampling) are functions of
    (seed, epoch, index). Its own `on_epoch_end` counter drifts from the training epoch: Keras
    3's `fit` also calls it once before the first epoch (`EpochIterator.reset`), and once per
    validation pass. With this callback epoch e of `fit` reads the training generator's epoch e,
    as `distribute.fit_custom_loop` does, a resumed run reads exactly the batches an
    uninterrupted one would, and every validation pass scores the same draws, so validation
    losses differ between epochs only because the weights do.

    Args:
        train: the training generator (anything with an ``epoch`` attribute).
        validation: the validation generator, or None.
    """

    def __init__(self, train: Any, validation: Any = None) -> None:
        super().__init__()
        self.train, self.validation = train, validation

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.train.epoch = int(epoch)

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self.validation is not None:
            self.validation.epoch = 0


class TrainingDivergedError(RuntimeError):
    """`MaskRCNN.train` stopped because the loss became NaN or infinite (see `StopOnNaN`)."""


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


class TrainingBudget(keras.callbacks.Callback):
    """Stops training once a wall-clock or CPU-time budget is spent, and (by default) drops the
    learning rate 10x at 75% of it: the paper's schedule (lr / 10 at 120k of 160k iterations)
    scaled to a time budget instead of an iteration count.

    CPU time is `time.process_time()`: all threads of this process (TF's, the data loader's), so
    on a shared machine a CPU budget measures the work done, not the other jobs' load. Both clocks
    start when the callback is made (make it just before training: graph tracing counts). The
    budget is spent when either clock passes its limit; training stops after that batch.

    A budget survives a resume. With `MaskRCNN.train`, the time spent and the step count are
    written at each epoch's start and end to ``training_budget.json`` in the run's folder
    (`BUDGET_RECORD`). When `train` resumes from a checkpoint of the run (`load_weights`, e.g.
    ``--weights last``), a new TrainingBudget continues from the record of the epoch it resumes at:
    the time already spent counts against the new budget (of the same size or another), and the
    rate drops at once if that is past `decay_at` of it, so the schedule does not start over. A
    budget the resumed run had already spent raises ValueError before any step. (A Ctrl-C state
    resumes at its unfinished epoch's start, as the iteration count does.) A later stage in the
    same process gets a fresh budget.

    Args:
        wall_seconds: wall-clock limit in seconds, or None / 0 for none.
        cpu_seconds: CPU-time limit in seconds, or None / 0 for none.
        decay_at: fraction of the budget after which the learning rate is multiplied by
            `decay_factor` once; None never changes it (needed with a LearningRateSchedule,
            which sets the rate itself: `on_train_begin` raises ValueError otherwise).
        decay_factor: the multiplier applied at `decay_at`.
        verbose: 1 prints a line when the learning rate drops and when the budget stops training.

    Attributes:
        steps: training batches completed since the callback was made.
        decayed: whether the learning rate has been dropped.
    """

    def __init__(self, wall_seconds: float | None = None, cpu_seconds: float | None = None,
                 decay_at: float | None = 0.75, decay_factor: float = 0.1, verbose: int = 0) -> None:
        super().__init__()
        if not wall_seconds and not cpu_seconds:
            raise ValueError("TrainingBudget needs wall_seconds or cpu_seconds (both are None or 0)")
        if decay_at is not None and not 0.0 < decay_at < 1.0:
            raise ValueError(f"decay_at must be in (0, 1) or None, got {decay_at!r}")
        self.wall_seconds = float(wall_seconds) if wall_seconds else None
        self.cpu_seconds = float(cpu_seconds) if cpu_seconds else None
        self.decay_at = decay_at
        self.decay_factor = float(decay_factor)
        self.verbose = verbose
        self.wall_start, self.cpu_start = time.monotonic(), time.process_time()
        self.decayed = False
        self.steps = 0

    def elapsed(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) since the callback was made, plus what a resumed run had spent."""
        return time.monotonic() - self.wall_start, time.process_time() - self.cpu_start

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        optimizer = getattr(self.model, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
        if self.decay_at is not None and isinstance(getattr(optimizer, "_learning_rate", None),
                                                    keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError("TrainingBudget(decay_at=...) drops a constant learning rate, but this training follows "
                             "a LearningRateSchedule: pass decay_at=None (the schedule sets the rate) or a constant "
                             "learning rate")
        epoch = int(getattr(self.model, "epoch", 0) or 0)
        resumed_from = getattr(self.model, "resumed_from", None)
        if resumed_from:
            saved = _read_budget_record(os.path.dirname(resumed_from)).get(str(epoch))
            if saved is not None:
                self._continue_from(saved)
        self._record(epoch)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._record(epoch + 1)

    def _continue_from(self, saved: dict[str, Any]) -> None:
        """Moves the clocks back by the time the resumed run had spent and makes the drop that
        this budget has passed (judged against this budget: it may be larger than the run's).

        Raises:
            ValueError: when that time already spends this budget (training would take one step
                and stop): give a larger budget to train further.
        """
        self.wall_start -= float(saved["wall_seconds"])
        self.cpu_start -= float(saved["cpu_seconds"])
        self.steps += int(saved["steps"])
        spent = self.spent()
        if spent >= 1.0:
            wall, cpu = self.elapsed()
            raise ValueError(f"TrainingBudget: the run this call resumes had already spent {spent:.0%} of this budget "
                             f"({wall:.0f} s wall, {cpu:.0f} s CPU against {self.wall_seconds or '-'} / "
                             f"{self.cpu_seconds or '-'} s): give a larger budget to train further")
        if self.decay_at is not None and not self.decayed and spent > self.decay_at:
            self._drop_learning_rate()
        if self.verbose:
            print(f"Training budget continued: {spent:.0%} spent in {self.steps} steps before the resume")

    def _drop_learning_rate(self) -> None:
        self.decayed = True
        rate = self.model.optimizer.learning_rate
        rate.assign(rate * self.decay_factor)
        if self.verbose:
            print(f"\nLearning rate dropped to {float(rate.numpy()):g} ({self.decay_at:.0%} of the budget spent)")

    def _record(self, completed_epochs: int) -> None:
        """Writes this budget's state after `completed_epochs` to the run's record (MaskRCNN only:
        a model with a `log_dir`; under several workers, the chief's)."""
        from mrcnn import distribute

        run_dir = getattr(self.model, "log_dir", None)
        if not isinstance(run_dir, str) or not os.path.isdir(run_dir):
            return
        if not distribute.is_chief(getattr(self.model, "distribute_strategy", None)):
            return
        wall, cpu = self.elapsed()
        record = _read_budget_record(run_dir)
        record[str(completed_epochs)] = {"wall_seconds": wall, "cpu_seconds": cpu, "steps": self.steps,
                                         "decayed": self.decayed, "budget_wall_seconds": self.wall_seconds,
                                         "budget_cpu_seconds": self.cpu_seconds}
        path = os.path.join(run_dir, BUDGET_RECORD)
        temporary = path + ".tmp"
        with open(temporary, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        os.replace(temporary, path)  # a cut-short write never leaves half a record

    def spent(self) -> float:
        """Fraction of the budget spent: the larger of the wall and CPU fractions."""
        wall, cpu = self.elapsed()
        return max(wall / self.wall_seconds if self.wall_seconds else 0.0,
                   cpu / self.cpu_seconds if self.cpu_seconds else 0.0)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.steps += 1
        spent = self.spent()
        if self.decay_at is not None and not self.decayed and spent > self.decay_at:
            self._drop_learning_rate()
        if spent >= 1.0:
            self.model.stop_training = True
            if self.verbose:
                print(f"\nTime budget reached after {self.steps} steps: stopping training.")


def _read_budget_record(run_dir: str) -> dict[str, dict[str, Any]]:
    """The TrainingBudget record of a run folder by completed epochs ({} when there is none)."""
    path = os.path.join(run_dir, BUDGET_RECORD)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def training_callbacks(model: keras.Model, log_dir: str, checkpoint_path: str, keep_checkpoints: int = 0,
                       custom: Sequence[keras.callbacks.Callback] = (), write_checkpoints: bool = True
                       ) -> list[keras.callbacks.Callback]:
    """The callbacks `MaskRCNN.train` runs: NaN guard, atomic checkpoints (the last
    `keep_checkpoints`, 0: all; `write_checkpoints` False keeps their bookkeeping without
    writing, for workers other than the chief), the `custom` ones, TensorBoard last (Keras hands
    one logs dict down the list: what a custom callback adds to it, e.g. `MeanAveragePrecision`,
    is written)."""
    return [
        StopOnNaN(),
        AtomicCheckpoint(checkpoint_path, verbose=0, keep=keep_checkpoints, write=write_checkpoints),
        *custom,
        keras.callbacks.TensorBoard(log_dir=log_dir, histogram_freq=0, write_graph=False),
    ]


class MeanAveragePrecision(keras.callbacks.Callback):
    """Mask and box mAP on a validation dataset every `every` epochs, added to the epoch's logs.

    The keys are ``val_mask_mAP50``, ``val_mask_mAP``, ``val_box_mAP50`` and ``val_box_mAP``
    (`mrcnn.evaluation.evaluate.evaluate_dataset`: VOC-style AP per image at IoU 0.5 and averaged
    over 0.5:0.95; box keys only for a model without mask head), in the logs of evaluated epochs
    only. Callbacks after this one see them: `MaskRCNN.train` runs its TensorBoard callback last,
    which writes them as the validation run's ``epoch_mask_mAP50`` etc., and `History` keeps them
    (one entry per evaluation: `history` pairs them with their epochs). A callback that reads them
    (EarlyStopping, ModelCheckpoint(monitor=...)) must come after this one; Keras' CSVLogger fixes
    its columns at the first epoch, so it records them only with ``every=1``. An epoch whose loss
    is not finite is not evaluated. Evaluation time counts against a `TrainingBudget`.
    The dataset's classes and the inference model's weights are checked when training begins.

    Detection uses the thresholds of the config it runs with: the training model's own config
    (DETECTION_MIN_CONFIDENCE 0.7 by default, while COCO-style mAP counts detections from 0.05)
    unless `inference_config` is given; then an inference-mode model of that config is built
    once and gets the training model's current weights before each evaluation (it holds a copy
    of the weights).

    Args:
        dataset: a prepared `Dataset` with ground truth (`load_mask`).
        inference_config: optional `Config` to detect with (e.g. the training config with
            IMAGES_PER_GPU 1 and DETECTION_MIN_CONFIDENCE 0.05); its classes must be the model's.
        every: evaluate after epochs every, 2 * every, ... (1-based epoch counts).
        image_ids: evaluate these images only (default all): a few hundred keep it quick.
        verbose: 1 shows `evaluate_dataset`'s progress bar.

    Attributes:
        history: [(epoch, {key: value})] of every evaluation (0-based Keras epoch indices).
    """

    KEYS = ("mask_mAP50", "mask_mAP", "box_mAP50", "box_mAP")

    def __init__(self, dataset: Any, inference_config: Any = None, every: int = 1,
                 image_ids: Sequence[int] | None = None, verbose: int = 0) -> None:
        super().__init__()
        if not isinstance(every, (int, np.integer)) or isinstance(every, bool) or every < 1:
            raise ValueError(f"MeanAveragePrecision: every must be an int >= 1, got {every!r}")
        if not len(dataset.image_ids if image_ids is None else image_ids):
            raise ValueError("MeanAveragePrecision needs a dataset with at least one image")
        self.dataset = dataset
        self.inference_config = inference_config
        self.every = int(every)
        self.image_ids = None if image_ids is None else list(image_ids)
        self.verbose = verbose
        self.history: list[tuple[int, dict[str, float]]] = []
        self._inference: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # A wrong dataset or inference_config fails here, not after `every` epochs of training.
        from mrcnn.data.dataset import check_num_classes

        if getattr(self.model.config, "NUM_CLASSES", None) is not None:  # stand-in models may not say
            check_num_classes(self.dataset, self.model.config)
        if self.inference_config is not None:
            expected = [tuple(w.shape) for w in self.model.weights]
            found = [tuple(w.shape) for w in self._inference_model().weights]
            if expected != found:
                raise ValueError("MeanAveragePrecision: inference_config builds a model whose weights differ from "
                                 f"the training model's ({len(found)} against {len(expected)} tensors or other "
                                 "shapes): give it the training config's architecture fields")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if (epoch + 1) % self.every:
            return
        if logs is not None and not math.isfinite(float(logs.get("loss", 0.0))):
            return  # a diverged epoch: StopOnNaN stops, train restores the last good checkpoint
        from mrcnn.evaluation.evaluate import evaluate_dataset

        metrics = evaluate_dataset(self._detector(), self.dataset, image_ids=self.image_ids, verbose=self.verbose)
        if not metrics["num_images"]:
            warnings.warn("MeanAveragePrecision: none of the images has ground truth, the mAP is NaN",
                          stacklevel=2)
        values = {f"val_{key}": float(metrics[key]) for key in self.KEYS if key in metrics}
        self.history.append((epoch, values))
        if logs is not None:
            logs.update(values)

    def _inference_model(self) -> Any:
        if self._inference is None:
            from mrcnn.model import MaskRCNN

            self._inference = MaskRCNN(mode="inference", config=self.inference_config)
            self._inference.ensure_built()
        return self._inference

    def _detector(self) -> Any:
        """The model `evaluate_dataset` runs: the training model, or the inference model with its weights."""
        if self.inference_config is None:
            return self.model
        inference = self._inference_model()
        inference.set_weights(self.model.get_weights())
        return inference
