"""Tests for mrcnn/distribute.py: MirroredStrategy through fit, the multi-worker custom loop.

Strategies need devices configured before TensorFlow starts (two logical CPU devices stand in
for two GPUs) and multi-worker runs need one process per worker, so each scenario runs in a
subprocess: this file run as a script (``python tests/test_distribute.py <scenario> <out_dir>``)
writes its measurements as JSON, and the tests check them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MIRRORED_STEPS = 3  # optimizer steps compared between one device and MirroredStrategy
SCENARIO_TIMEOUT = 240  # seconds; each scenario takes ~20-40 s on 2 busy cores


def _small_backbone():
    """Plain strided 3x3 convs giving C2..C5 at strides 4, 8, 16, 32: ResNet-50 would make tracing
    the replicated graphs (once per replica) take minutes; everything after it is the real model."""
    import keras

    class SmallBackbone(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(name="small_backbone", **kwargs)
            widths_strides = [(16, 2), (16, 1), (32, 2), (32, 1), (48, 2), (64, 2), (64, 2)]
            self.convs = [keras.layers.Conv2D(c, 3, strides=s, padding="same", activation="relu",
                                              name=f"small_conv{i}") for i, (c, s) in enumerate(widths_strides)]

        def call(self, images, training=None):
            outputs = []
            for i, conv in enumerate(self.convs):
                images = conv(images)
                if i >= 3:  # after strides 4, 8, 16, 32
                    outputs.append(images)
            return outputs

    return SmallBackbone()


def _small_backbone_shapes(image_shape):
    import math

    return np.array([[math.ceil(image_shape[0] / s), math.ceil(image_shape[1] / s)] for s in (4, 8, 16, 32, 64)])


def _tiny_config(**overrides):
    from mrcnn.config import Config

    class TinyConfig(Config):
        NAME = "tinydist"
        NUM_CLASSES = 4
        BACKBONE = staticmethod(_small_backbone)
        COMPUTE_BACKBONE_SHAPE = staticmethod(_small_backbone_shapes)
        IMAGES_PER_GPU = 1
        IMAGE_MIN_DIM = 64
        IMAGE_MAX_DIM = 64
        RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
        RPN_TRAIN_ANCHORS_PER_IMAGE = 32
        PRE_NMS_LIMIT = 200
        # Few proposals and ROI_POSITIVE_RATIO 1: DetectionTargetLayer keeps every positive and no
        # negative, so its random subsampling cannot make two runs differ (only RoI order does).
        POST_NMS_ROIS_TRAINING = 8
        TRAIN_ROIS_PER_IMAGE = 16
        ROI_POSITIVE_RATIO = 1.0
        POST_NMS_ROIS_INFERENCE = 16
        MAX_GT_INSTANCES = 4
        DETECTION_MAX_INSTANCES = 8
        MINI_MASK_SHAPE = (16, 16)
        TOP_DOWN_PYRAMID_SIZE = 32
        FPN_CLASSIF_FC_LAYERS_SIZE = 32
        STEPS_PER_EPOCH = 2
        VALIDATION_STEPS = 0
        LEARNING_RATE = 0.02
        # A clip that bites: the distributed path must clip the global gradient, as one device does.
        GRADIENT_CLIP_NORM = 0.5
        SEED = 5

    return TinyConfig().update(**overrides)


def _shapes(count: int, seed: int):
    from mrcnn.data.shapes import ShapesDataset

    dataset = ShapesDataset()
    dataset.load_shapes(count, 64, 64, seed=seed)
    dataset.prepare()
    return dataset


def _weights(model) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(v.numpy()) for v in model.weights}


# ------------------------------------------------------------------------------------------------
# Scenarios (run in subprocesses)


def _scenario_mirrored(out_dir: Path) -> None:
    """Single device (2 images) vs MirroredStrategy over 2 logical CPUs (1 image each), same start."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from mrcnn import distribute
    from mrcnn.data.generator import DataGenerator
    from mrcnn.model import MaskRCNN

    result = {}
    # One strategy for the process: a second MirroredStrategy created after the first has run
    # reuses collective keys and TF aborts with "Shape mismatch in the collective instance".
    strategy = distribute.make_strategy(2)
    for train_bn in (False, True):
        # TRAIN_BN gives per-replica batch statistics, which one device cannot reproduce: that
        # round only checks that the replicas stay identical (the single-device run is skipped).
        single_config = _tiny_config(IMAGES_PER_GPU=2, GPU_COUNT=1, TRAIN_BN=train_bn)
        mirrored_config = _tiny_config(IMAGES_PER_GPU=1, GPU_COUNT=2, TRAIN_BN=train_bn)
        # One image, so each batch holds it twice: the losses that average over a variable number
        # of elements (positive anchors / RoIs) pool equal counts per image, and one device's
        # pooled mean equals the replicas' mean of means exactly (with different images it does
        # not: see README "Multi-GPU training").
        # MIRRORED_STEPS epochs of one step each: History then holds every step's loss.
        batches = DataGenerator(_shapes(1, seed=1), single_config, shuffle=False, seed=0, steps=1)
        keras.utils.set_random_seed(0)
        single = MaskRCNN("training", single_config, model_dir=str(out_dir))
        single.ensure_built()
        single.set_trainable(".*")
        start = out_dir / f"start_{train_bn}.weights.h5"
        single.save_weights(str(start))
        start_w = _weights(single)
        single.compile()
        single_history = (single.fit(batches, epochs=MIRRORED_STEPS, verbose=0).history if not train_bn
                          else {"loss": [np.nan]})

        with strategy.scope():
            mirrored = MaskRCNN("training", mirrored_config, model_dir=str(out_dir))
            mirrored.load_weights(str(start))
            mirrored.set_trainable(".*")
            mirrored.compile()
        mirrored_batches = DataGenerator(_shapes(1, seed=1), mirrored_config, shuffle=False, seed=0, steps=1)
        assert mirrored_batches.batch_size == 2  # global batch = IMAGES_PER_GPU x replicas
        mirrored_history = mirrored.fit(mirrored_batches, epochs=MIRRORED_STEPS, verbose=0).history

        single_w, mirrored_w = _weights(single), _weights(mirrored)
        moved = [k for k in single_w if not np.array_equal(single_w[k], start_w[k])]
        # Difference relative to how far training moved the tensor. Tensors whose update is a sum
        # of nearly cancelling terms (fpn_p5's kernel here) magnify float32 summation-order noise:
        # a 1e-6 relative perturbation of the start weights moved their 1- and 2-step updates by
        # 1.2% / 0.5% on one device (1e-7: 0.03%). Hence also the difference relative to the largest
        # update of the model.
        # Differences within 4 float32 ulps of a weight are rounding of the weight itself (a BatchNorm
        # gamma near 1 with a 3e-5 update differs by its ulp, 1.2e-7, between two equal sums added
        # in another order): only the excess over that counts.
        excess = {k: np.maximum(np.abs(single_w[k] - mirrored_w[k]) - 4 * np.finfo(np.float32).eps
                                * np.maximum(np.abs(single_w[k]), np.abs(start_w[k])), 0.0) for k in moved}
        diffs = {k: float(np.max(excess[k]) / (np.max(np.abs(single_w[k] - start_w[k])) + 1e-7)) for k in moved}
        largest_update = max(float(np.max(np.abs(single_w[k] - start_w[k]))) for k in moved) if moved else 0.0
        largest_difference = max(float(np.max(excess[k])) for k in moved) if moved else 0.0
        result[f"train_bn_{train_bn}"] = {
            "replicas": strategy.num_replicas_in_sync,
            "strategy": type(strategy).__name__,
            "single_losses": [float(v) for v in single_history["loss"]],
            "mirrored_losses": [float(v) for v in mirrored_history["loss"]],
            "max_relative_weight_difference": max(diffs.values()) if diffs else None,
            "weight_difference_over_largest_update": largest_difference / largest_update if moved else None,
            "replicas_identical": distribute.replicas_identical(mirrored.weights),
            "bn_statistics_synced": len(distribute.batchnorm_statistics(mirrored.all_layers())),
            "weights_moved": len(moved),
        }
    # A strategy of 2 replicas with GPU_COUNT 1: batches of 1 image would give one replica none.
    with strategy.scope():
        mismatched = MaskRCNN("training", _tiny_config(IMAGES_PER_GPU=1, GPU_COUNT=1), model_dir=str(out_dir / "mm"))
    try:
        mismatched.train(_shapes(2, seed=1), None, learning_rate=0.01, epochs=1, layers="all", verbose=0)
        result["gpu_count_mismatch"] = None
    except ValueError as error:
        result["gpu_count_mismatch"] = str(error)
    result["mismatch_run_folders"] = sorted(p.name for p in (out_dir / "mm").glob("*")) if (out_dir / "mm").exists() else []
    with strategy.scope():
        mismatched.compile()
    try:  # plain Keras: the same check
        mismatched.fit(DataGenerator(_shapes(2, seed=1), mismatched.config, shuffle=False, seed=0, steps=1), epochs=1,
                       verbose=0)
        result["gpu_count_mismatch_fit"] = None
    except ValueError as error:
        result["gpu_count_mismatch_fit"] = str(error)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))


def _scenario_loss_scale(out_dir: Path) -> None:
    """MirroredStrategy over 2 logical CPUs: one replica's gradient overflows, the other's does not."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from mrcnn import distribute

    strategy = distribute.make_strategy(2)
    result = {}
    for clip in (None, 1e30):
        with strategy.scope():
            weight = tf.Variable([1.0])
            optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1e-40, global_clipnorm=clip))
            optimizer.build([weight])

        def step(x, weight=weight, optimizer=optimizer):  # MaskRCNN.train_step's gradient path
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(weight * x)
                scaled = optimizer.scale_loss(distribute.scale_loss_for_replicas(loss))
            grads = tape.gradient(scaled, [weight])
            optimizer.apply_gradients(distribute.aggregate_gradients(list(zip(grads, [weight])), optimizer))
            return loss

        data = tf.data.Dataset.from_tensor_slices(np.array([[1.0], [1e35]], np.float32)).batch(2)
        strategy.run(tf.function(step), args=(next(iter(strategy.experimental_distribute_dataset(data))),))
        result[str(clip)] = {"w": weight.numpy().tolist(), "scale": float(optimizer.dynamic_scale.numpy())}
    print(json.dumps(result))


def _scenario_worker(out_dir: Path) -> None:
    """One worker of a 2-worker MultiWorkerMirroredStrategy (TF_CONFIG set by the test)."""
    from mrcnn import distribute

    strategy = distribute.make_strategy(1)  # TF_CONFIG decides: before any other TF work
    import keras

    from mrcnn.data.generator import DataGenerator
    from mrcnn.model import MaskRCNN

    # SEED None (CocoConfig's default): the workers must still draw one data order. 3 steps on 2
    # replicas read 6 batches of 4 images: the replicas' generators must go on into a fresh order
    # (they wrapped back to batches already read).
    config = _tiny_config(IMAGES_PER_GPU=1, GPU_COUNT=1, STEPS_PER_EPOCH=3, SEED=None)
    data_seeds = []
    original_init = DataGenerator.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        data_seeds.append(self.seed)

    DataGenerator.__init__ = recording_init
    keras.utils.set_random_seed(0)  # same initial weights on every worker
    with strategy.scope():
        model = MaskRCNN("training", config, model_dir=str(out_dir / "logs"))
    history = model.train(_shapes(4, seed=1), None, learning_rate=config.LEARNING_RATE, epochs=1, layers="all",
                          verbose=0)
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    np.savez(out_dir / f"worker{task}.npz", **{k.replace("/", "|"): v for k, v in _weights(model).items()})
    (out_dir / f"worker{task}.json").write_text(json.dumps({
        "strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
        "loss": history.history["loss"], "epoch": model.epoch,
        "iterations": int(model.optimizer.iterations.numpy()),
        "chief": distribute.is_chief(strategy), "data_seeds": data_seeds,
        "checkpoints": sorted(p.name for p in (out_dir / "logs").rglob("*.weights.h5")),
    }))

    # A NaN in epoch 2 on both workers: every worker must go back to the same checkpoint (the
    # others used to drop the checkpoint bookkeeping with the writing, and kept NaN weights).
    from mrcnn.callbacks import TrainingDivergedError

    class Poison(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1:
                kernel = next(w for w in self.model.trainable_weights if "mrcnn_class_logits" in w.path)
                kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    try:
        model.train(_shapes(4, seed=1), None, learning_rate=config.LEARNING_RATE, epochs=2, layers="all", verbose=0,
                    custom_callbacks=[Poison()])
        diverged = ""
    except TrainingDivergedError as error:
        diverged = str(error)
    np.savez(out_dir / f"worker{task}_nan.npz", **{k.replace("/", "|"): v for k, v in _weights(model).items()})
    nan_state = {"diverged": diverged, "epoch": model.epoch, "iterations": int(model.optimizer.iterations.numpy())}

    # A stop only the chief decides (its own TrainingBudget clock): both workers must stop at the
    # same step (the other used to go on into a collective nobody joined, and hang or fail).
    class StopOnChief(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if distribute.is_chief(strategy):
                self.model.stop_training = True

    model.train(_shapes(4, seed=1), None, learning_rate=config.LEARNING_RATE, epochs=3, layers="all", verbose=0,
                custom_callbacks=[StopOnChief()])
    nan_state["after_stop"] = int(model.optimizer.iterations.numpy())
    (out_dir / f"worker{task}_nan.json").write_text(json.dumps(nan_state))


# ------------------------------------------------------------------------------------------------
# Tests


def _run(args: list[str], env: dict[str, str] | None = None, timeout: int = SCENARIO_TIMEOUT
         ) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, __file__] + args, env=full_env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))


def test_mirrored_fit_matches_single_device(tmp_path):
    proc = _run(["mirrored", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    frozen, trained_bn = result["train_bn_False"], result["train_bn_True"]
    assert frozen["strategy"] == "MirroredStrategy" and frozen["replicas"] == 2
    # Frozen BatchNorm (the default): two replicas of 1 image == one device with 2 images, step
    # after step (each loss is computed before its update, global-norm clipping active): measured
    # 2e-6 relative loss differences over 3 steps; weights within 2.1e-3 of each tensor's update
    # (the mask head's, whose tiny updates are sums of nearly cancelling terms) and within 1.0e-5
    # of the model's largest update. Replicas that each clip their own share instead of the
    # all-reduced gradient (aggregate_gradients skipped) measured 1.66 and 1.2 on these two.
    assert len(frozen["single_losses"]) == len(frozen["mirrored_losses"]) == MIRRORED_STEPS
    assert frozen["mirrored_losses"] == pytest.approx(frozen["single_losses"], rel=1e-4)
    assert frozen["single_losses"][-1] < frozen["single_losses"][0]  # the steps do train
    assert frozen["max_relative_weight_difference"] < 5e-3
    assert frozen["weight_difference_over_largest_update"] < 5e-5
    assert frozen["replicas_identical"]
    assert frozen["weights_moved"] > 20  # the comparison is about a real update
    assert frozen["bn_statistics_synced"] == 0
    # TRAIN_BN: per-replica batch statistics (so not equal to one device), but the replicas' moving
    # statistics are averaged every step and stay identical.
    assert trained_bn["bn_statistics_synced"] > 0
    assert trained_bn["replicas_identical"]
    # GPU_COUNT must be the replica count: named before any work (no run folder left behind).
    assert "strategy has 2 replicas but config.GPU_COUNT is 1" in (result["gpu_count_mismatch"] or "")
    assert result["mismatch_run_folders"] == []
    assert "strategy has 2 replicas but config.GPU_COUNT is 1" in (result["gpu_count_mismatch_fit"] or "")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_custom_loop_two_processes(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO),
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, __file__, "worker", str(tmp_path)], env=env, cwd=str(REPO),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=SCENARIO_TIMEOUT)[0])
    finally:
        for proc in procs:  # never leave a worker waiting for its peer
            if proc.poll() is None:
                proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    infos = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    for info in infos:
        # MultiWorkerMirroredStrategy instances are CollectiveAllReduceStrategy objects.
        assert info["strategy"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")
        assert info["replicas"] == 2
        assert info["iterations"] == 3 and info["epoch"] == 1
        assert all(np.isfinite(info["loss"]))
    assert [info["chief"] for info in infos] == [True, False]
    assert infos[0]["data_seeds"] == infos[1]["data_seeds"] != []  # one order, split between the workers
    assert infos[0]["loss"] == pytest.approx(infos[1]["loss"], rel=1e-5)  # losses are all-reduced
    # Only the chief writes the checkpoint (both workers share tmp_path/logs here). Listed once both
    # processes have exited: a worker that finishes first can catch the chief's temporary file.
    final = sorted(p.name for p in (tmp_path / "logs").rglob("*.weights.h5"))
    assert set(infos[0]["checkpoints"]) <= set(final)
    assert len([n for n in final if n.endswith("_0001.weights.h5")]) == 1
    assert len([n for n in final if n.endswith("_0002.weights.h5")]) == 1  # the stopped epoch of the last train()
    # One run folder: the other worker claims none of its own (it held only a config.json).
    assert len([p for p in (tmp_path / "logs").iterdir() if p.is_dir()]) == 1
    first, second = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    assert sorted(first.files) == sorted(second.files)
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    # After a NaN in epoch 2 both workers are back at epoch 1's checkpoint, with the same weights.
    after = [json.loads((tmp_path / f"worker{i}_nan.json").read_text()) for i in range(2)]
    for info in after:
        assert "at epoch 2, batch 1; the model is back at the last good checkpoint" in info["diverged"], info
        assert info["epoch"] == 1 and info["iterations"] == 3
        assert info["after_stop"] == 4  # the chief's stop after one step stopped both workers there
    first, second = (np.load(tmp_path / f"worker{i}_nan.npz") for i in range(2))
    for name in first.files:
        assert np.isfinite(first[name]).all(), name
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_custom_loop_on_one_device_trains_as_train_does(tmp_path, capsys):
    """fit_custom_loop is what multi-worker training runs; on one device it must match `train`
    (model.fit): the same batches in the same order each epoch, the same losses and weights."""
    import keras

    from mrcnn import distribute
    from mrcnn.data.generator import DataGenerator
    from mrcnn.model import MaskRCNN

    config = _tiny_config(IMAGES_PER_GPU=1, GPU_COUNT=1, STEPS_PER_EPOCH=2)
    dataset = _shapes(3, seed=1)  # 3 images, 2 steps: each epoch reads a different part of its order
    keras.utils.set_random_seed(0)
    reference = MaskRCNN("training", config, model_dir=str(tmp_path / "fit"))
    reference.ensure_built()
    start = str(tmp_path / "start.weights.h5")
    reference.save_weights(start)
    fitted = reference.train(dataset, None, learning_rate=0.01, epochs=2, layers="all", verbose=0).history
    looped_model = MaskRCNN("training", config, model_dir=str(tmp_path / "loop"))
    looped_model.load_weights(start)
    looped_model.set_trainable(".*")
    looped_model.compile(learning_rate=0.01)
    capsys.readouterr()
    looped = distribute.fit_custom_loop(
        looped_model, lambda: DataGenerator(dataset, config, shuffle=True, seed=config.SEED), epochs=2,
        steps_per_epoch=2, verbose=1).history
    printed = capsys.readouterr().out
    assert looped["loss"] == pytest.approx(fitted["loss"], rel=1e-4)
    expected, actual = _weights(reference), _weights(looped_model)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    assert "Epoch 1/2" in printed and "Epoch 2/2" in printed and "2/2" in printed  # fit's verbose=1 bar
    assert "rpn_class_loss:" in printed


def test_custom_loop_validation_calls_the_test_hooks_as_fit_does(tmp_path):
    # TensorBoard writes its evaluation_*_vs_iterations scalars in on_test_end: without the hooks
    # the multi-worker loop's validation logs lacked them.
    import keras
    import tensorflow as tf

    from mrcnn import distribute
    from mrcnn.data.generator import DataGenerator
    from mrcnn.model import MaskRCNN

    config = _tiny_config(IMAGES_PER_GPU=1, GPU_COUNT=1, STEPS_PER_EPOCH=1)
    dataset = _shapes(2, seed=1)
    model = MaskRCNN("training", config, model_dir=str(tmp_path))
    model.ensure_built()
    model.set_trainable(".*")
    model.compile(learning_rate=0.01)

    class Hooks(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.calls = []

        def on_test_begin(self, logs=None):
            self.calls.append("test_begin")

        def on_test_batch_end(self, batch, logs=None):
            self.calls.append(f"test_batch_end {sorted(logs)[:1]}")

        def on_test_end(self, logs=None):
            self.calls.append(f"test_end {'loss' in (logs or {})}")

    hooks = Hooks()
    board = keras.callbacks.TensorBoard(log_dir=str(tmp_path / "tb"), write_graph=False)
    make = lambda: DataGenerator(dataset, config, shuffle=False, seed=0)  # noqa: E731
    history = distribute.fit_custom_loop(model, make, epochs=1, steps_per_epoch=1, callbacks=[hooks, board],
                                         verbose=0, make_val_generator=make, validation_steps=1).history
    assert "val_loss" in history
    assert hooks.calls == ["test_begin", "test_batch_end ['loss']", "test_end True"]
    tags = {value.tag for path in (tmp_path / "tb" / "validation").glob("events*")
            for event in tf.compat.v1.train.summary_iterator(str(path)) for value in event.summary.value}
    assert "evaluation_loss_vs_iterations" in tags and "epoch_loss" in tags


def test_distributed_batches_follow_the_epoch_or_repeat_it():
    import tensorflow as tf

    from mrcnn import distribute

    class Recording:  # a DataGenerator's protocol: len, epoch, [index]
        def __init__(self) -> None:
            self.epoch, self.reads = 0, []

        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> dict[str, np.ndarray]:
            self.reads.append((self.epoch, index))
            return {"x": np.full((1, 2), index, np.float32)}

    strategy = tf.distribute.get_strategy()
    for same, expected in ((False, [(3, 0), (3, 1), (4, 0), (4, 1)]), (True, [(3, 0), (3, 1)] * 2)):
        generator = Recording()
        iterator = iter(distribute.distributed_batches(strategy, lambda g=generator: g, steps_per_epoch=2,
                                                       initial_epoch=3, same_every_epoch=same))
        generator.reads.clear()  # the signature sample
        for _ in range(4):  # two epochs of two steps
            next(iterator)
        assert generator.reads[:4] == expected, same
    # An epoch reading more batches than the generator holds would read some twice: refused.
    with pytest.raises(ValueError, match=r"the generator holds 2 batches, but an epoch of 3 steps on 1 replicas "
                                         r"reads 3: make it with steps=3"):
        iter(distribute.distributed_batches(strategy, Recording, steps_per_epoch=3))


def test_a_loss_scale_optimizer_gets_the_all_reduced_gradients():
    """Found in review: without clipping, each replica's LossScaleOptimizer judged its own gradients,
    so a step where one replica overflowed was applied by the other (weights NaN)."""
    proc = _run(["loss_scale", "/tmp"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for clip in ("None", "1e+30"):
        assert result[clip]["w"] == [1.0], clip  # the overflowing step skipped on both replicas
        assert result[clip]["scale"] == 16384.0, clip  # and the scale halved


def test_global_batch_size_counts_every_replica():
    import tensorflow as tf

    from mrcnn import distribute

    config = _tiny_config(IMAGES_PER_GPU=3, GPU_COUNT=1)
    assert distribute.global_batch_size(config) == 3  # the default strategy: one replica

    class TwoMachinesOfTwoGPUs:  # what a MultiWorkerMirroredStrategy reports over 2 x 2 devices
        num_replicas_in_sync = 4

    assert distribute.global_batch_size(config, TwoMachinesOfTwoGPUs()) == 12
    assert distribute.global_batch_size(config, tf.distribute.get_strategy()) == 3


def test_make_strategy_single_device_is_default():
    import tensorflow as tf

    from mrcnn import distribute

    assert distribute.make_strategy(1) is tf.distribute.get_strategy()
    assert distribute.num_replicas() == 1


def test_make_strategy_names_missing_devices():
    from mrcnn import distribute

    with pytest.raises(ValueError, match="GPU_COUNT=64"):
        distribute.make_strategy(64)


def test_tf_config_errors_are_clear(monkeypatch):
    from mrcnn import distribute

    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.read_tf_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {}}))
    with pytest.raises(ValueError, match="'cluster' and 'task'"):
        distribute.read_tf_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert distribute.is_multi_worker_config(distribute.read_tf_config())
    monkeypatch.delenv("TF_CONFIG")
    assert distribute.read_tf_config() is None


def test_single_replica_helpers_are_identity():
    import keras
    import tensorflow as tf

    from mrcnn import distribute

    optimizer = keras.optimizers.SGD(0.1, clipnorm=1.0)
    variable = tf.Variable([1.0, 2.0])
    grads = [(tf.constant([30.0, 40.0]), variable)]
    assert distribute.aggregate_gradients(grads, optimizer)[0][0] is grads[0][0]
    loss = tf.constant(3.0)
    assert distribute.scale_loss_for_replicas(loss) is loss


def test_replica_config_has_one_replica_batch():
    from mrcnn import distribute

    config = _tiny_config(IMAGES_PER_GPU=3, GPU_COUNT=2)
    per_replica = distribute.replica_config(config)
    assert (config.BATCH_SIZE, per_replica.BATCH_SIZE) == (6, 3)
    assert per_replica is not config and type(per_replica) is type(config)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    scenario, out = sys.argv[1], Path(sys.argv[2])
    {"mirrored": _scenario_mirrored, "worker": _scenario_worker, "loss_scale": _scenario_loss_scale}[scenario](out)
