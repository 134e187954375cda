"""Training on several devices (MirroredStrategy) and several machines (MultiWorkerMirroredStrategy).

One device:   nothing to do.
Several GPUs: create the model under `make_strategy(config).scope()` (GPU_COUNT > 1 gives a
              `tf.distribute.MirroredStrategy`); `MaskRCNN.train` then runs `model.fit` over it.
Machines:     set TF_CONFIG on every worker (README "Multi-machine training"); `make_strategy` returns a
              `tf.distribute.MultiWorkerMirroredStrategy` and `MaskRCNN.train` runs `fit_custom_loop`,
              because Keras 3.15's `model.fit` fails under that strategy (toolchain.md).

What makes a multi-replica step equal to one device at the same global batch (see `MaskRCNN.train_step`):

* Loss scaling. Every replica computes the losses of its IMAGES_PER_GPU images (means over its own
  images) and Keras' TF optimizer all-reduces replica gradients with SUM. `scale_loss_for_replicas`
  divides the loss by the replica count, so the summed gradient is the gradient of the mean over
  the global batch. The loss *reported* (trackers) stays unscaled.
* Gradient clipping. Keras clips inside `apply_gradients` BEFORE its all-reduce, i.e. each replica's
  share separately, which is not what GRADIENT_CLIP_NORM means on one device. `aggregate_gradients`
  all-reduces first, clips the global gradient as the optimizer would, and hands the optimizer the
  clipped gradient divided by the replica count: the optimizer's own clip is then a no-op and its SUM
  gives back exactly the clipped global gradient (at the price of a second all-reduce).
* BatchNorm. With TRAIN_BN each replica normalizes with the statistics of its own images (matterport's
  multi-GPU behaviour; not synchronized BN). Keras 3 creates the moving mean/variance with
  aggregation NONE, so each replica would keep its own moving averages and the copies drift apart;
  `sync_batchnorm_statistics` replaces them by their mean over replicas after every step (the moving
  average is linear, so this is the moving average of the replica-averaged batch statistics).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

# ------------------------------------------------------------------------------------------------
# Strategies


def read_tf_config() -> dict[str, Any] | None:
    """The parsed TF_CONFIG environment variable, or None when it is unset or empty.

    Raises:
        ValueError: when TF_CONFIG is not JSON or lacks ``cluster`` / ``task``.
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {raw[:200]!r}") from error
    if not isinstance(tf_config, dict) or "cluster" not in tf_config or "task" not in tf_config:
        raise ValueError("TF_CONFIG must be a JSON object with 'cluster' and 'task' entries, e.g. "
                         '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                         '"task": {"type": "worker", "index": 0}}; got ' + repr(raw[:200]))
    return tf_config


def is_multi_worker_config(tf_config: dict[str, Any] | None) -> bool:
    """True when TF_CONFIG describes a cluster of more than one task."""
    if not tf_config:
        return False
    cluster = tf_config.get("cluster", {})
    return sum(len(tasks) for tasks in cluster.values()) > 1


def make_strategy(gpu_count: int | Any = 1, *, communication: str = "auto") -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for a run.

    * TF_CONFIG names more than one task: `MultiWorkerMirroredStrategy` (every worker's local GPUs,
      or its CPU) with `communication` "auto", "ring" or "nccl".
    * `gpu_count` > 1: `MirroredStrategy` over the first `gpu_count` GPUs; on a machine without
      enough GPUs, over logical CPU devices when the process configured that many
      (`tf.config.set_logical_device_configuration`, used by the tests).
    * otherwise: the default (single-device) strategy.

    Must run before any other TF operation when it creates a MultiWorkerMirroredStrategy.

    Args:
        gpu_count: replica count, or a `Config` (its GPU_COUNT).
        communication: collective implementation for the multi-worker strategy.
    Returns:
        The strategy; create the model under its `scope()`.
    Raises:
        ValueError: when fewer devices than `gpu_count` exist (naming both), or for a bad TF_CONFIG.
    """
    count = int(getattr(gpu_count, "GPU_COUNT", gpu_count))
    if count < 1:
        raise ValueError(f"gpu_count must be >= 1, got {count}")
    if is_multi_worker_config(read_tf_config()):
        options = {"auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
                   "ring": tf.distribute.experimental.CommunicationImplementation.RING,
                   "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL}
        if communication not in options:
            raise ValueError(f"communication must be one of {sorted(options)}, got {communication!r}")
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=options[communication]))
    if count == 1:
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) >= count:
        return tf.distribute.MirroredStrategy([d.name for d in gpus[:count]])
    cpus = tf.config.list_logical_devices("CPU")
    if not gpus and len(cpus) >= count:
        return tf.distribute.MirroredStrategy([d.name for d in cpus[:count]])
    raise ValueError(f"GPU_COUNT={count} but this process sees {len(gpus)} GPU(s) and {len(cpus)} logical CPU "
                     "device(s); lower GPU_COUNT / --gpus, or split the CPU with "
                     "tf.config.set_logical_device_configuration before TF starts (for tests)")


def num_replicas() -> int:
    """Replicas in sync of the current strategy (1 outside any strategy)."""
    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def global_batch_size(config: Any, strategy: tf.distribute.Strategy | None = None) -> int:
    """Images one training step takes over all replicas of `strategy`, every worker's included.

    `config.BATCH_SIZE` (IMAGES_PER_GPU x GPU_COUNT) counts one machine's replicas; under a
    MultiWorkerMirroredStrategy each of its `num_replicas_in_sync` replicas, on every worker, takes
    IMAGES_PER_GPU images, so a learning rate or schedule scaled to the batch must use this.

    Args:
        config: a `Config` (its IMAGES_PER_GPU).
        strategy: the training strategy (default: the current one).
    Returns:
        IMAGES_PER_GPU x replicas in sync.
    """
    strategy = strategy or tf.distribute.get_strategy()
    return int(config.IMAGES_PER_GPU) * int(strategy.num_replicas_in_sync)


def _multi_replica_context() -> Any | None:
    """The replica context when running one replica of several, else None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


# ------------------------------------------------------------------------------------------------
# Pieces of a multi-replica training step (identity on one replica)


def scale_loss_for_replicas(loss: tf.Tensor) -> tf.Tensor:
    """loss / replicas inside a multi-replica step (the optimizer SUMs replica gradients); else loss."""
    context = _multi_replica_context()
    if context is None:
        return loss
    return loss * tf.cast(1.0 / context.num_replicas_in_sync, loss.dtype)


def aggregate_gradients(grads_and_vars: Sequence[tuple[Any, Any]], optimizer: keras.optimizers.Optimizer
                        ) -> list[tuple[Any, Any]]:
    """All-reduces replica gradients and clips the global gradient as `optimizer` is configured to.

    Inside a multi-replica step, `grads_and_vars` hold this replica's gradients of the loss divided
    by the replica count (`scale_loss_for_replicas`). Returns (clipped global gradient / replicas,
    variable) pairs: the optimizer's own clipping (which runs per replica before its SUM all-reduce)
    leaves them unchanged, since their norm is at most clip / replicas, and its SUM restores the
    clipped global gradient. A `LossScaleOptimizer`'s scale is divided out before clipping and put
    back after; it gets the all-reduced gradients also without clipping, so every replica sees
    the same overflow and all skip the same steps. Outside a multi-replica step, or when the
    optimizer neither clips nor scales the loss, the pairs are returned unchanged.
    """
    pairs = list(grads_and_vars)
    context = _multi_replica_context()
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer wraps the clipping one
    clips = bool(inner.clipnorm or inner.global_clipnorm or inner.clipvalue)
    # A LossScaleOptimizer decides "all finite: apply, else skip and lower the scale" from the
    # gradients it is given, on each replica for itself: they must be the all-reduced ones, or a
    # step where one replica overflowed is applied by the others (and its NaN summed in).
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    if context is None or not (clips or scaled) or not pairs:
        return pairs
    replicas = context.num_replicas_in_sync
    grads = context.all_reduce(tf.distribute.ReduceOp.SUM, [g for g, _ in pairs])
    if clips:
        loss_scale = tf.convert_to_tensor(optimizer.dynamic_scale) if scaled else None
        if loss_scale is not None:
            grads = [g / tf.cast(loss_scale, g.dtype) for g in grads]
        grads = _clip_like(inner, grads)
        if loss_scale is not None:
            grads = [g * tf.cast(loss_scale, g.dtype) for g in grads]
    grads = [g * tf.cast(1.0 / replicas, g.dtype) for g in grads]
    return [(g, v) for g, (_, v) in zip(grads, pairs)]


def _clip_like(optimizer: keras.optimizers.Optimizer, grads: list[tf.Tensor]) -> list[tf.Tensor]:
    """Keras' `_clip_gradients` rules: per-tensor clipnorm, else global clipnorm, else clipvalue."""
    if optimizer.clipnorm:
        return [tf.clip_by_norm(g, tf.cast(optimizer.clipnorm, g.dtype)) for g in grads]
    if optimizer.global_clipnorm:
        return list(tf.clip_by_global_norm(grads, optimizer.global_clipnorm)[0])
    value = optimizer.clipvalue
    return [tf.clip_by_value(g, -tf.cast(value, g.dtype), tf.cast(value, g.dtype)) for g in grads]


def batchnorm_statistics(layers: Sequence[keras.layers.Layer]) -> list[keras.Variable]:
    """Moving mean/variance of the BatchNorm layers that update them in training.

    A layer updates them when it is trainable and not frozen by ``train_bn=False``
    (mrcnn.modeling.backbone.BatchNorm); plain Keras BatchNormalization layers count when trainable.
    """
    variables = []
    for layer in layers:
        if (isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                and getattr(layer, "train_bn", None) is not False and layer.built):
            variables += [layer.moving_mean, layer.moving_variance]
    return variables


def sync_batchnorm_statistics(layers: Sequence[keras.layers.Layer]) -> None:
    """Sets every replica's BatchNorm moving statistics to their mean over replicas (see module doc)."""
    context = _multi_replica_context()
    if context is None:
        return
    variables = [v.value if isinstance(v, keras.Variable) else v for v in batchnorm_statistics(layers)]
    if not variables:
        return

    def average(strategy: tf.distribute.Strategy, values: list[Any]) -> None:
        # Cross-replica context: one reduction per variable into the variable's own devices,
        # then every replica's copy is set to it.
        means = strategy.extended.batch_reduce_to(tf.distribute.ReduceOp.MEAN, list(zip(values, variables)))
        for variable, mean in zip(variables, means):
            strategy.extended.update(variable, lambda var, value: var.assign(value), args=(mean,), group=False)

    context.merge_call(average, args=([tf.identity(v) for v in variables],))


# ------------------------------------------------------------------------------------------------
# Custom training loop (multi-worker)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """True on the worker that writes checkpoints and logs (task 0 / the chief; any single process)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None) or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def replica_config(config: Any) -> Any:
    """A copy of `config` whose BATCH_SIZE is one replica's (IMAGES_PER_GPU): GPU_COUNT set to 1."""
    return copy.copy(config).update(GPU_COUNT=1)


def distributed_batches(strategy: tf.distribute.Strategy, make_generator: Any, steps_per_epoch: int,
                        initial_epoch: int = 0, same_every_epoch: bool = False) -> tf.distribute.DistributedDataset:
    """Per-replica batches for `strategy.run`, each replica reading different images.

    Every worker builds the same deterministic `DataGenerator` (one replica's batch size) from
    `make_generator()`; in global step s, replica r (over all workers) reads batch s*R + r of the
    generator's epoch, R the replica count, so the workers' data never overlap and no data moves
    between machines. The generator's epoch follows the training epoch (new order each epoch).

    Args:
        strategy: the strategy the model was built under.
        make_generator: () -> DataGenerator with BATCH_SIZE = IMAGES_PER_GPU and at least
            steps_per_epoch x R batches (``steps=``; past the images' end it continues into a fresh
            order, as `fit`'s generator does), else ValueError.
        steps_per_epoch: global steps per epoch.
        initial_epoch: the first epoch (resume).
        same_every_epoch: read the generator's `initial_epoch` every epoch (validation: the same
            draws each pass, as `callbacks.GeneratorEpochs` gives `fit`).
    """
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        generator = make_generator()
        if len(generator) < steps_per_epoch * replicas:
            # Wrapping around would read batches of this epoch again (same images, same draws).
            raise ValueError(f"the generator holds {len(generator)} batches, but an epoch of {steps_per_epoch} steps "
                             f"on {replicas} replicas reads {steps_per_epoch * replicas}: make it with steps="
                             f"{steps_per_epoch * replicas} (DataGenerator continues into a fresh order)")
        sample = generator[0]
        signature = {k: tf.TensorSpec(v.shape, tf.as_dtype(v.dtype), name=k) for k, v in sample.items()}
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def batches():
            epoch = initial_epoch
            while True:
                generator.epoch = epoch
                for step in range(steps_per_epoch):
                    for replica in range(first, first + local):
                        yield generator[step * replicas + replica]
                epoch += 0 if same_every_epoch else 1

        return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)

    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(dataset_fn, options)


def fit_custom_loop(model: keras.Model, make_generator: Any, epochs: int, steps_per_epoch: int,
                    initial_epoch: int = 0, callbacks: Sequence[keras.callbacks.Callback] | None = None,
                    make_val_generator: Any = None, validation_steps: int | None = None,
                    verbose: int = 1) -> keras.callbacks.History:
    """`model.fit` for any strategy (MultiWorkerMirroredStrategy included) as an explicit loop.

    Runs `model.train_step` through `strategy.run` in a `tf.function` (so the losses, gradient
    aggregation and BatchNorm handling are the model's own), drives Keras callbacks like fit does
    (epoch/batch hooks, `stop_training`, History), and validates with `model.test_step`. Under
    several workers a `stop_training` set on any of them stops all of them at the same step.
    Only the chief keeps callbacks that write files (checkpoints, TensorBoard): every worker holds
    the same weights.

    Args:
        model: compiled, built under the strategy's scope.
        make_generator: () -> DataGenerator for ONE replica (see `distributed_batches`).
        epochs: train up to this epoch (exclusive of `initial_epoch`, as fit).
        steps_per_epoch: global steps per epoch.
        initial_epoch: first epoch (resume).
        callbacks: Keras callbacks.
        make_val_generator, validation_steps: optional validation data (one replica's batch).
        verbose: as fit's: 1 a progress bar per epoch (its values the running means, then the
            validation losses), 2 one line per epoch, 0 nothing.
    Returns:
        The History callback, as fit returns.
    """
    strategy = model.distribute_strategy
    chief = is_chief(strategy)
    callbacks = [cb for cb in (callbacks or []) if chief or not _writes_files(cb)]
    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(callbacks + [history], model=model, epochs=epochs,
                                                 steps=steps_per_epoch, verbose=0)
    with strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)

    @tf.function
    def train_one(iterator: Any) -> dict[str, tf.Tensor]:
        logs = strategy.run(model.train_step, args=(next(iterator),))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

    @tf.function
    def test_one(iterator: Any) -> dict[str, tf.Tensor]:
        logs = strategy.run(model.test_step, args=(next(iterator),))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

    several_workers = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)

    @tf.function
    def replicas_flagged(flag: tf.Tensor) -> tf.Tensor:  # ReduceOp has SUM and MEAN, no MAX
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(flag)), axis=None)

    def stop_agreed() -> bool:
        """`model.stop_training`, made the same on every worker: a stop one worker decides alone
        (its own TrainingBudget clock, a callback of its own) would leave its peers waiting in the
        next step's collectives. One tiny all-reduce per step."""
        if several_workers:
            model.stop_training = bool(replicas_flagged(tf.constant(float(bool(model.stop_training)))).numpy() > 0)
        return bool(model.stop_training)

    iterator = iter(distributed_batches(strategy, make_generator, steps_per_epoch, initial_epoch))
    val_iterator = None
    if make_val_generator is not None and validation_steps:
        val_iterator = iter(distributed_batches(strategy, make_val_generator, validation_steps, 0,
                                                same_every_epoch=True))
    model.stop_training = False
    callback_list.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(initial_epoch, epochs):
        for metric in model.metrics:
            metric.reset_state()
        callback_list.on_epoch_begin(epoch)
        tic = time.monotonic()
        progress = None
        if verbose == 1:
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)
            # No value averaged by the bar: the logged losses are already running means.
            progress = keras.utils.Progbar(steps_per_epoch, stateless_metrics=())
        steps_done = 0
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            logs = {k: float(v) for k, v in train_one(iterator).items()}
            callback_list.on_train_batch_end(step, logs)
            steps_done = step + 1
            if progress is not None:
                progress.update(steps_done, list(logs.items()), finalize=False)
            if stop_agreed():
                break
        epoch_logs = dict(logs)
        if val_iterator is not None and not model.stop_training:
            for metric in model.metrics:
                metric.reset_state()
            val_logs: dict[str, float] = {}
            # The test hooks as fit's validation calls them: TensorBoard writes its
            # evaluation_*_vs_iterations scalars in on_test_end.
            callback_list.on_test_begin()
            for step in range(validation_steps):
                callback_list.on_test_batch_begin(step)
                val_logs = {k: float(v) for k, v in test_one(val_iterator).items()}
                callback_list.on_test_batch_end(step, val_logs)
            callback_list.on_test_end(val_logs)
            epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        if progress is not None:
            progress.update(steps_done, list(epoch_logs.items()), finalize=True)
        elif verbose:
            values = " - ".join(f"{k}: {v:.4f}" for k, v in epoch_logs.items())
            print(f"Epoch {epoch + 1}/{epochs} - {time.monotonic() - tic:.1f}s - {values}", flush=True)
        if stop_agreed() or (logs and not math.isfinite(logs.get("loss", 0.0))):
            break
    callback_list.on_train_end(logs)
    return history


def _writes_files(callback: keras.callbacks.Callback) -> bool:
    from mrcnn.callbacks import AtomicCheckpoint

    if isinstance(callback, AtomicCheckpoint):
        return callback.write  # one made with write=False keeps the workers' bookkeeping
    return isinstance(callback, (keras.callbacks.TensorBoard, keras.callbacks.ModelCheckpoint,
                                 keras.callbacks.BackupAndRestore, keras.callbacks.CSVLogger))


def replicas_identical(variables: Sequence[Any], atol: float = 0.0) -> bool:
    """True when every mirrored variable holds the same values on all its local replicas."""
    for variable in variables:
        value = getattr(variable, "value", variable)
        local = getattr(value, "values", None)
        if not local:
            continue
        first = np.asarray(local[0])
        if any(not np.allclose(np.asarray(v), first, rtol=0.0, atol=atol) for v in local[1:]):
            return False
    return True


class CastBoolBatches(keras.utils.PyDataset):
    """A PyDataset whose boolean arrays come out as uint8; everything else passes through.

    Under a MirroredStrategy Keras 3's fit averages the first batch over replicas to build the
    model symbolically (`_maybe_symbolic_build`), and TF cannot add bool tensors
    (``input_gt_masks``). The model casts the masks to float32 anyway, so uint8 changes nothing.

    Args:
        batches: the wrapped PyDataset (e.g. a `DataGenerator`); its workers settings are kept.
    """

    def __init__(self, batches: keras.utils.PyDataset) -> None:
        super().__init__(workers=batches.workers, use_multiprocessing=batches.use_multiprocessing,
                         max_queue_size=batches.max_queue_size)
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def num_batches(self) -> int | None:
        return self.batches.num_batches

    def on_epoch_end(self) -> None:
        self.batches.on_epoch_end()

    def __getitem__(self, index: int) -> Any:
        batch = self.batches[index]
        return {k: v.astype(np.uint8) if isinstance(v, np.ndarray) and v.dtype == np.bool_ else v
                for k, v in batch.items()}


def fit_safe(data: Any, strategy: tf.distribute.Strategy) -> Any:
    """`data` wrapped in `CastBoolBatches` when fit runs under a multi-replica `strategy`, else as is."""
    if (isinstance(data, keras.utils.PyDataset) and not isinstance(data, CastBoolBatches)
            and strategy.num_replicas_in_sync > 1):
        return CastBoolBatches(data)
    return data
