"""Tests for mrcnn/model.py: a tiny config trained for a few steps, detect, save/load."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.config import Config
from mrcnn.data.generator import DataGenerator
from mrcnn.data.shapes import ShapesDataset
from mrcnn.model import MaskRCNN, layer_regex
from mrcnn.modeling.architecture import Architecture
from mrcnn.weights import MATTERPORT_HEAD_LAYERS, find_weight_layers, own_weights


class TinySettings:
    """The tiny sizes of the model tests (64 px, 16 RoIs, narrow heads): a mixin over a Config class."""

    NUM_CLASSES = 4
    IMAGES_PER_GPU = 2
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 32
    PRE_NMS_LIMIT = 200
    POST_NMS_ROIS_TRAINING = 48
    POST_NMS_ROIS_INFERENCE = 32
    TRAIN_ROIS_PER_IMAGE = 16
    MAX_GT_INSTANCES = 4
    DETECTION_MAX_INSTANCES = 8
    DETECTION_MIN_CONFIDENCE = 0.0
    MINI_MASK_SHAPE = (16, 16)
    TOP_DOWN_PYRAMID_SIZE = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 64
    STEPS_PER_EPOCH = 2
    VALIDATION_STEPS = 1
    SEED = 3


class TinyConfig(TinySettings, Config):
    NAME = "tiny"
    BACKBONE = "resnet50"


def _shapes(count: int, seed: int) -> ShapesDataset:
    dataset = ShapesDataset()
    dataset.load_shapes(count, 64, 64, seed=seed)
    dataset.prepare()
    return dataset


class _EmptyDataset(ShapesDataset):
    """Shapes images whose masks are all dropped: images without instances."""

    def load_mask(self, image_id):
        masks, _ = super().load_mask(image_id)
        return np.zeros(masks.shape[:2] + (0,), bool), np.zeros((0,), np.int32)


@pytest.fixture(scope="module")
def config() -> TinyConfig:
    return TinyConfig()


@pytest.fixture(scope="module")
def trained(config, tmp_path_factory):
    """A tiny model after a few SGD steps, with its loss history and weights before/after."""
    keras.utils.set_random_seed(0)
    model = MaskRCNN(mode="training", config=config, model_dir=str(tmp_path_factory.mktemp("logs")))
    model.ensure_built()
    model.set_trainable(".*")
    model.compile(learning_rate=0.01)
    batch = DataGenerator(_shapes(4, seed=1), config, shuffle=False, seed=0)[0]
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    first = model.test_on_batch(batch, return_dict=True)["loss"]
    for _ in range(3):
        model.train_on_batch(batch, return_dict=True)
    last = model.test_on_batch(batch, return_dict=True)["loss"]
    after = {v.path: v.numpy() for v in model.trainable_variables}
    return model, first, last, before, after


def test_three_fit_steps_lower_the_loss(trained):
    _, first, last, _, _ = trained
    assert math.isfinite(first) and math.isfinite(last)
    assert last < first


@pytest.mark.parametrize("head", ["rpn_", "fpn_", "mrcnn_class_", "mrcnn_bbox_fc", "mrcnn_mask", "res2a_branch2a"])
def test_every_head_moves(trained, head):
    _, _, _, before, after = trained
    moved = [p for p in before if head in p and not np.allclose(before[p], after[p])]
    assert moved, f"no weight of {head!r} changed in 3 steps"


def test_losses_are_reported_as_metrics(trained):
    model = trained[0]
    names = {m.name for m in model.metrics}
    assert {"loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
            "mrcnn_mask_loss"} <= names


def test_no_nan_without_instances(config):
    model = MaskRCNN(mode="training", config=config, model_dir="unused")
    model.compile(learning_rate=0.01)
    dataset = _EmptyDataset()
    dataset.load_shapes(2, 64, 64, seed=5)
    dataset.prepare()
    batch = DataGenerator(dataset, config, shuffle=False, seed=0)[0]
    assert batch["input_gt_class_ids"].sum() == 0
    logs = model.train_on_batch(batch, return_dict=True)
    for name, value in logs.items():
        assert math.isfinite(value), f"{name} is {value} with zero GT"
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


def test_fit_with_data_generator(config, tmp_path):
    model = MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    history = model.train(_shapes(4, seed=2), _shapes(2, seed=3), learning_rate=0.01, epochs=1,
                          layers="heads", verbose=0)
    assert set(history.history) >= {"loss", "mrcnn_mask_loss", "val_loss"}
    checkpoint = model.find_last()
    assert checkpoint.endswith("_0001.weights.h5")
    assert (tmp_path / model.log_dir.split("/")[-1] / "config.json").is_file()
    # Resuming from the checkpoint continues at the next epoch.
    resumed = MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    resumed.load_weights(checkpoint)
    assert resumed.epoch == 1
    resumed.train(_shapes(4, seed=2), None, learning_rate=0.01, epochs=2, layers="heads", verbose=0)
    assert resumed.find_last().endswith("_0002.weights.h5")


def test_train_with_a_mismatched_dataset_leaves_no_run_folder(config, tmp_path):
    wrong = ShapesDataset()
    wrong.load_shapes(2, 64, 64, seed=2)
    wrong.add_class("shapes", 4, "star")  # 5 classes with the background, the config has 4
    wrong.prepare()
    model = MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="NUM_CLASSES is 4"):
        model.train(wrong, None, learning_rate=0.01, epochs=1, layers="heads", verbose=0)
    assert list(tmp_path.iterdir()) == []  # nothing for find_last or TensorBoard to list
    with pytest.raises(FileNotFoundError):
        model.find_last()


@pytest.mark.parametrize("layers, message", [("head", "selects none of the model's layers"),
                                             ("bogus", "selects none"), ("res(5", "nor a valid regular expression")])
def test_train_rejects_layers_that_select_nothing_before_any_work(config, tmp_path, layers, message):
    model = MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    with pytest.raises(ValueError, match=rf"layers='{re.escape(layers)}' .*{message}") as error:
        model.train(_shapes(2, seed=2), None, learning_rate=0.01, epochs=1, layers=layers, verbose=0)
    assert "['heads', '3+', '4+', '5+', 'all']" in str(error.value)  # the choices
    assert list(tmp_path.iterdir()) == []


def test_train_warns_about_a_stage_with_nothing_to_do_and_an_unused_gpu_count(config):
    model = MaskRCNN(mode="training", config=config)
    model.ensure_built()
    model.epoch = 2
    with pytest.warns(UserWarning, match=r"train\(epochs=2\) has nothing to do: 2 epochs are done"):
        model._check_train_arguments("heads", layer_regex("heads", config), epochs=2)
    two_gpus = MaskRCNN(mode="training", config=type(config)().update(GPU_COUNT=2))
    two_gpus.ensure_built()
    with pytest.warns(UserWarning, match="GPU_COUNT is 2 but this model was built outside a multi-device strategy"):
        two_gpus._check_train_arguments("heads", layer_regex("heads", config), epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model._check_train_arguments("all", layer_regex("all", config), epochs=3)


class _LosesAFile(ShapesDataset):
    """Shapes whose `fail_at`-th image read raises as a missing file would (not in the first batch)."""

    fail_at = 0
    reads = 0

    def load_image(self, image_id):
        self.reads += 1
        if self.reads == self.fail_at:
            raise FileNotFoundError(f"image file not found: lost/{image_id}.png")
        return super().load_image(image_id)


def test_a_batch_that_fails_to_load_mid_training_raises_its_own_error(config, tmp_path):
    dataset = _LosesAFile()
    dataset.load_shapes(4, 64, 64, seed=2)
    dataset.prepare()
    dataset.fail_at = 2 * config.BATCH_SIZE + 1  # after the batch Keras reads first
    model = MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"^image file not found: lost/\d\.png$"):
        model.train(dataset, None, learning_rate=0.01, epochs=3, layers="heads", verbose=0)
    assert dataset.reads == dataset.fail_at


class _PoisonAtEpoch(keras.callbacks.Callback):
    """Makes the loss NaN from batch `batch` of epoch `epoch` (0-based) on: a stand-in for a
    diverging run. (At batch 0 the checkpoint before it gives the first NaN itself: see
    AtomicCheckpoint's "good" checkpoints.)"""

    def __init__(self, epoch: int, batch: int = 1):
        super().__init__()
        self.epoch, self.batch = epoch, batch
        self.current = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            kernel = next(w for w in self.model.trainable_weights if "mrcnn_class_logits" in w.path)
            kernel.assign(np.full(kernel.shape, np.nan, kernel.dtype))


def test_a_nan_stop_restores_the_last_good_checkpoint_and_raises(config, tmp_path):
    from mrcnn.callbacks import TrainingDivergedError

    model = MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    dataset = _shapes(4, seed=2)
    with pytest.raises(TrainingDivergedError, match=r"at epoch 2, batch 1; the model is back at the last good "
                                                    r"checkpoint, .*mask_rcnn_tiny_0001.weights.h5 \(epoch 1\)"):
        model.train(dataset, None, learning_rate=0.01, epochs=3, layers="heads", verbose=0,
                    custom_callbacks=[_PoisonAtEpoch(1)])
    assert model.epoch == 1
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)
    assert all(np.isfinite(np.asarray(v.numpy(), np.float64)).all() for v in model.optimizer.variables)
    saved = MaskRCNN(mode="training", config=config)
    saved.load_weights(model.find_last())
    for mine, theirs in zip(model.weights, saved.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
    # A NaN before any saved epoch: nothing to go back to, and the message says so.
    fresh = MaskRCNN(mode="training", config=config, model_dir=str(tmp_path / "fresh"))
    with pytest.raises(TrainingDivergedError, match="no epoch was saved before it"):
        fresh.train(dataset, None, learning_rate=0.01, epochs=2, layers="heads", verbose=0,
                    custom_callbacks=[_PoisonAtEpoch(0, batch=0)])


def test_runs_started_in_the_same_second_get_their_own_folders(config, tmp_path):
    first = MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    second = MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    first.set_log_dir()
    second.set_log_dir()
    second.log_dir = first.log_dir  # as if started in the same second
    assert first.make_log_dir() == first.log_dir
    claimed = second.make_log_dir()
    assert claimed != first.log_dir and Path(claimed).is_dir() and second.checkpoint_path.startswith(claimed)
    assert claimed[-15:] > first.log_dir[-15:] and claimed[:-15] == first.log_dir[:-15]  # a later timestamp
    assert second.make_log_dir() == claimed  # claimed once: later stages write to the same run


def test_a_matterport_checkpoint_continues_its_run(config, tmp_path):
    """Found in review: matterport's ``<run>/mask_rcnn_<name>_0010.h5`` started a new run at epoch 0."""
    model = MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    run = tmp_path / "shapes20180101T1200"
    model.set_log_dir(str(run / "mask_rcnn_shapes_0010.h5"))
    assert model.epoch == 10 and model.log_dir == str(run)
    assert model.checkpoint_path == str(run / f"mask_rcnn_{config.NAME.lower()}_{{epoch:04d}}.weights.h5")
    model.set_log_dir(str(run / "mask_rcnn_shapes_interrupted.h5"))  # matterport never wrote these
    assert model.epoch == 0 and model.log_dir != str(run)
    model.set_log_dir(str(run / "mask_rcnn_shapes_0007.weights.h5"))  # ours, as before
    assert model.epoch == 7 and model.log_dir == str(run)


def test_a_name_with_dots_or_spaces_continues_its_run(tmp_path):
    """Found in review: NAME "my.run" wrote checkpoints that load_weights then took for another run's."""
    for name in ("my.run", "my run"):
        model = MaskRCNN(mode="training", config=TinyConfig().update(NAME=name), model_dir=str(tmp_path))
        run = tmp_path / f"{name}20260101T120000"
        model.set_log_dir(str(run / f"mask_rcnn_{name}_0004.weights.h5"))
        assert model.epoch == 4 and model.log_dir == str(run)


def test_a_later_load_drops_the_optimizer_state_an_earlier_load_left(config, tmp_path):
    """Found in review: load_weights(by_name=True) after a by-structure load kept the first file's state."""
    model = _built_random_model(config, 5)
    path = str(tmp_path / "own.weights.h5")
    model.save_weights(path)
    model.load_weights(path)
    assert model._resume_checkpoint == path
    model.load_weights(path, by_name=True)
    assert model._resume_checkpoint is None


def test_describe_learning_rate_names_a_schedule_and_its_value_now():
    from mrcnn.model import describe_learning_rate

    assert describe_learning_rate(0.02, 0) == "0.02"
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([10], [0.02, 0.002])
    text = describe_learning_rate(schedule, tf.Variable(12, dtype=tf.int64))
    assert text.startswith("PiecewiseConstantDecay(boundaries=[10], values=[0.02, 0.002]")
    assert text.endswith(": 0.002 at iteration 12")

    class Halving(keras.optimizers.schedules.LearningRateSchedule):  # no get_config
        def __call__(self, step):
            return 0.1 * 0.5 ** keras.ops.cast(step, "float32")

    assert describe_learning_rate(Halving(), 1) == "Halving(...): 0.05 at iteration 1"


def test_heads_stage_freezes_the_backbone(config):
    model = MaskRCNN(mode="training", config=config)
    names = model.set_trainable(r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)")
    assert "res2a_branch2a" not in names and "conv1" not in names
    assert {"rpn_conv_shared", "fpn_c5p5", "mrcnn_mask", "mrcnn_class_logits"} <= set(names)


def test_rpn_conv_channels_sets_the_rpn_width(config):
    model = MaskRCNN(mode="inference", config=type(config)().update(RPN_CONV_CHANNELS=48))
    model.ensure_built()
    assert tuple(model.rpn.conv_shared.kernel.shape) == (3, 3, config.TOP_DOWN_PYRAMID_SIZE, 48)
    anchors_per_location = len(config.RPN_ANCHOR_RATIOS)
    assert tuple(model.rpn.class_raw.kernel.shape) == (1, 1, 48, 2 * anchors_per_location)


def _check_detections(results, images, config):
    assert len(results) == len(images)
    for result, image in zip(results, images):
        n = len(result["class_ids"])
        assert result["rois"].dtype == np.int32 and result["rois"].shape == (n, 4)
        assert result["class_ids"].dtype == np.int32
        assert result["scores"].dtype == np.float32 and result["scores"].shape == (n,)
        assert result["masks"].dtype == bool and result["masks"].shape == image.shape[:2] + (n,)
        if n:
            rois = result["rois"]
            assert (rois[:, 0] >= 0).all() and (rois[:, 1] >= 0).all()
            assert (rois[:, 2] <= image.shape[0]).all() and (rois[:, 3] <= image.shape[1]).all()
            assert ((result["class_ids"] >= 1) & (result["class_ids"] < config.NUM_CLASSES)).all()
            for k in range(n):
                ys, xs = np.nonzero(result["masks"][..., k])
                y1, x1, y2, x2 = rois[k]
                assert ys.size == 0 or (ys.min() >= y1 and ys.max() < y2 and xs.min() >= x1 and xs.max() < x2)


def test_detect_any_number_and_size_of_images(trained, config):
    model = trained[0]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (50, 90, 3), dtype=np.uint8),
              rng.integers(0, 255, (64, 64), dtype=np.uint8),          # grayscale
              rng.integers(0, 255, (70, 40, 4), dtype=np.uint8),       # RGBA
              rng.integers(0, 255, (1, 300, 3), dtype=np.uint8)]       # 1 px high: rounds to 0 rows unless clamped
    results = model.detect(images)
    _check_detections(results, images, config)
    assert sum(len(r["class_ids"]) for r in results) > 0, "min confidence 0 must give detections"


def test_detect_takes_images_of_several_canvases_in_one_call(trained, config):
    # "pad64" keeps sizes apart: 64x64 and 100x64 mold to 64x64 and 128x64 canvases. detect
    # molded them all at once and raised "different canvases" before grouping them.
    pad64 = MaskRCNN(mode="inference", config=type(config)().update(IMAGE_RESIZE_MODE="pad64", IMAGE_MAX_DIM=128))
    pad64.ensure_built()
    pad64.set_weights(trained[0].get_weights())
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in ((64, 64, 3), (100, 64, 3), (64, 64, 3))]
    together = pad64.detect(images)
    _check_detections(together, images, config)
    for image, result in zip(images, together, strict=True):
        _assert_same_detections(result, pad64.detect([image])[0])


def test_detect_molded_equals_detect_and_shows_progress(trained, config, capfd):
    model = trained[0]
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (50, 90, 3), dtype=np.uint8) for _ in range(3)]
    molded, metas, _ = model.mold_inputs(images)
    capfd.readouterr()
    results = model.detect_molded(molded, metas, verbose=1)
    bar = capfd.readouterr().err
    batches = -(-len(images) // config.BATCH_SIZE)
    assert "detect: 100%" in bar and f"{batches}/{batches}" in bar
    for ours, theirs in zip(results, model.detect(images), strict=True):
        _assert_same_detections(ours, theirs)


def test_first_detect_of_an_unbuilt_model_traces_the_graph_once(config):
    # Weights created inside the trace would make tf.function trace the graph twice (and wrap each
    # initializer in a graph): detect builds the model eagerly first.
    model = MaskRCNN(mode="inference", config=config)
    traces = []
    graph = model._infer_outputs

    def _infer_outputs(images, metas):  # same __name__: the same tf.function cache key
        traces.append(images.shape)
        return graph(images, metas)

    model._infer_outputs = _infer_outputs
    model.detect([np.zeros((64, 64, 3), np.uint8)])
    assert len(traces) == 1
    model.detect([np.zeros((64, 64, 3), np.uint8)])
    assert len(traces) == 1


def test_plain_fit_of_an_unbuilt_model_traces_the_train_step_once(config):
    model = MaskRCNN(mode="training", config=config)
    model.compile(learning_rate=0.01)
    traces = []
    step = model.train_step

    def train_step(data):
        traces.append(1)
        return step(data)

    model.train_step = train_step
    history = model.fit(DataGenerator(_shapes(2, seed=4), config, shuffle=False), steps_per_epoch=1, epochs=1,
                        verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert len(traces) == 1


def test_an_images_detections_do_not_depend_on_the_batch_it_runs_in(trained, config):
    # evaluate_dataset and the throughput benchmarks detect in batches of BATCH_SIZE (2 here): an
    # image must come out the same alone, first or second in a batch, and in a last, short batch.
    model = trained[0]
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    batched = model.detect(images)
    alone = [model.detect([image])[0] for image in images]
    for together, single in zip(batched, alone):
        assert len(together["scores"]) == len(single["scores"]) > 0
        np.testing.assert_allclose(together["scores"], single["scores"], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(together["class_ids"], single["class_ids"])
        np.testing.assert_allclose(together["rois"], single["rois"], atol=1)
        assert (together["masks"] != single["masks"]).mean() < 1e-3


def test_mold_inputs_warns_about_images_off_the_8_bit_scale(config):
    import warnings

    model = MaskRCNN(mode="inference", config=config)
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match="uint16 image with values above 255"):
        model.mold_inputs([rng.integers(0, 4096, (40, 50), dtype=np.uint16)])
    with pytest.warns(UserWarning, match=r"values in \[0, 1\]; .* multiply it by 255"):
        model.mold_inputs([rng.random((40, 50, 3), dtype=np.float32)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the 0..255 scale in any dtype, and blank images, pass quietly
        model.mold_inputs([rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),
                           rng.integers(0, 256, (40, 50), dtype=np.uint16),
                           rng.random((40, 50, 3)) * 255, np.zeros((40, 50, 3), np.float32)])


def test_mold_inputs_names_the_bad_image(config):
    model = MaskRCNN(mode="inference", config=config)
    good = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(TypeError, match=r"image 1 is 'photo.png', not pixels: .*read_image_rgb"):
        model.mold_inputs([good, "photo.png"])
    with pytest.raises(ValueError, match=r"image 1 is empty: shape \(0, 10, 3\)"):
        model.mold_inputs([good, np.zeros((0, 10, 3), np.uint8)])
    with pytest.raises(ValueError, match="image 2 has NaN or infinite values"):
        model.mold_inputs([good, good, np.full((20, 20, 3), np.nan, np.float32)])
    with pytest.raises(ValueError, match=r"image 0 must be \[H,W\] or \[H,W,C\]"):
        model.mold_inputs([np.zeros((1, 2, 3, 4), np.uint8)])
    with pytest.raises(ValueError, match=r"scale must be a number > 0, got '2'"):
        model.mold_inputs([good], scale="2")
    pad64 = MaskRCNN(mode="inference", config=type(config)().update(IMAGE_RESIZE_MODE="pad64"))
    with pytest.raises(ValueError, match=r"mold to different canvases \[\(64, 64, 3\), \(\d+, 64, 3\)\]"):
        pad64.mold_inputs([good, np.zeros((100, 20, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"detect_molded takes batches: .* got \(64, 64, 3\) and"):
        model.detect_molded(np.zeros((64, 64, 3), np.float32), np.zeros((config.IMAGE_META_SIZE,), np.float32))


def test_detect_rejects_a_bare_image(trained):
    with pytest.raises(TypeError, match="list of images"):
        trained[0].detect(np.zeros((64, 64, 3), np.uint8))


def test_save_load_gives_identical_detections(trained, config, tmp_path):
    model = trained[0]
    images = [_shapes(1, seed=9).load_image(0)]
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)
    other = MaskRCNN(mode="inference", config=config)
    other.load_weights(path)
    a, b = model.detect(images)[0], other.detect(images)[0]
    for key in ("rois", "class_ids", "masks"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-6)


def _assert_same_detections(ours: dict, theirs: dict) -> None:
    for key in ("rois", "class_ids"):
        np.testing.assert_array_equal(ours[key], theirs[key])
    np.testing.assert_allclose(ours["scores"], theirs["scores"], rtol=1e-5, atol=1e-6)
    # Float rounding may flip a pixel whose mask probability sits at 0.5.
    assert np.count_nonzero(ours["masks"] != theirs["masks"]) <= 1e-3 * ours["masks"].size


class NarrowConfig(TinyConfig):
    """TinyConfig on a narrow ResNet: freezing copies every weight into the graph, so the
    optimize_for_inference tests freeze 0.1 M weights, not ResNet-50's 24 M."""

    BACKBONE = Architecture((1, 1, 1, 1), width=8, out_width=32)


def _detecting_model(config: Config, seed: int) -> MaskRCNN:
    """Random weights whose box head calls every RoI class 1 (untrained heads call all background)."""
    keras.utils.set_random_seed(seed)
    model = MaskRCNN(mode="inference", config=config)
    model.ensure_built()
    kernel, _ = model.box_head.class_logits.get_weights()
    model.box_head.class_logits.set_weights([np.zeros_like(kernel), np.array([0.0, 4.0, 0.0, 0.0], np.float32)])
    return model


def test_optimize_for_inference_detects_the_same_and_follows_new_weights(tmp_path):
    config = NarrowConfig()
    images = [_shapes(2, seed=9).load_image(i) for i in range(2)]
    first, second = _detecting_model(config, 1), _detecting_model(config, 2)
    expected_first, expected_second = first.detect(images), second.detect(images)
    assert all(len(r["class_ids"]) for r in expected_first + expected_second)
    # A frozen graph that kept the first weights would fail the second comparison.
    assert any(not np.array_equal(a["rois"], b["rois"]) for a, b in zip(expected_first, expected_second))
    path = str(tmp_path / "first.weights.h5")
    first.save_weights(path)

    model = MaskRCNN(mode="inference", config=config).optimize_for_inference()
    model.load_weights(path)
    for ours, theirs in zip(model.detect(images), expected_first):
        _assert_same_detections(ours, theirs)
    assert not model._frozen_infer[(64, 64)].reads_variables()
    model.set_weights(second.get_weights())
    for ours, theirs in zip(model.detect(images), expected_second):
        _assert_same_detections(ours, theirs)
    model.load_weights(path)
    for ours, theirs in zip(model.detect(images), expected_first):
        _assert_same_detections(ours, theirs)
    model.optimize_for_inference(False)  # back to the variables
    assert not model._frozen_infer
    for ours, theirs in zip(model.detect(images), expected_first):
        _assert_same_detections(ours, theirs)


def _batchnorm_op_count(model: MaskRCNN) -> int:
    """BatchNorm ops in the model's frozen graph(s), nested functions included."""
    return sum("BatchNorm" in op for frozen in model._frozen_infer.values() for op in frozen.op_types())


def _set_trained_like_batchnorms(model: MaskRCNN, gamma: tuple[float, float], shift: float,
                                 variance: tuple[float, float]) -> list[keras.layers.BatchNormalization]:
    """Gives every BatchNorm of the model seeded parameters far from the identity, as trained ones:
    gamma and variance uniform in the given ranges, beta and mean normal with std `shift`.
    Returns the BatchNorms."""
    batchnorms = [layer for layer in model.all_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    rng = np.random.default_rng(0)
    for layer in batchnorms:
        channels = layer.gamma.shape
        layer.set_weights([rng.uniform(*gamma, channels), rng.normal(0, shift, channels),
                           rng.normal(0, shift, channels), rng.uniform(*variance, channels)])
    return batchnorms


def test_optimize_for_inference_folds_every_batchnorm_into_its_convolution():
    config = NarrowConfig().update(HEAD_NORM="bn")
    images = [_shapes(2, seed=5).load_image(i) for i in range(2)]
    model = _detecting_model(config, 1)
    batchnorms = _set_trained_like_batchnorms(model, gamma=(0.8, 1.2), shift=0.1, variance=(0.5, 1.5))
    expected = model.detect(images)
    assert all(len(r["class_ids"]) for r in expected)
    # Backbone and both heads: each BatchNorm and its convolution get new values (6 variables).
    assert len(model.batchnorm_folds()) == 6 * len(batchnorms)
    assert {layer.path.split("/")[-1] for layer in batchnorms} >= {"bn_conv1", "mrcnn_class_bn2", "mrcnn_mask_bn4"}

    model.optimize_for_inference()
    for ours, theirs in zip(model.detect(images), expected):
        _assert_same_detections(ours, theirs)
    assert _batchnorm_op_count(model) == 0
    model.optimize_for_inference(fold_batchnorm=False)
    for ours, theirs in zip(model.detect(images), expected):
        _assert_same_detections(ours, theirs)
    assert _batchnorm_op_count(model) == len(batchnorms)


def test_optimize_for_inference_refreezes_after_batchnorm_recalibration():
    config = NarrowConfig().update(TRAIN_BN=True)
    images = [_shapes(4, seed=6).load_image(i) for i in range(4)]
    model = _detecting_model(config, 1).optimize_for_inference()
    stale = model.detect(images[:1])[0]
    model.recalibrate_batchnorm(images, batch_size=2)
    reference = MaskRCNN(mode="inference", config=config)
    reference.ensure_built()
    reference.set_weights(model.get_weights())  # the recalibrated statistics are weights too
    fresh, expected = model.detect(images[:1])[0], reference.detect(images[:1])[0]
    _assert_same_detections(fresh, expected)
    assert len(expected["rois"]) and (stale["rois"].shape != expected["rois"].shape
                                       or not np.array_equal(stale["rois"], expected["rois"])
                                       or not np.allclose(stale["scores"], expected["scores"]))


def test_optimize_for_inference_warns_when_canvas_sizes_pile_up(monkeypatch):
    import warnings

    from mrcnn import model as model_module

    monkeypatch.setattr(model_module, "FROZEN_CANVASES_WARNING", 1)
    config = NarrowConfig().update(IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=128)
    model = MaskRCNN(mode="inference", config=config).optimize_for_inference()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.detect([np.zeros((64, 64, 3), np.uint8)])
        model.detect([np.full((64, 64, 3), 100, np.uint8)])  # the same 64x64 canvas: no new freeze
    with pytest.warns(UserWarning, match="frozen 2 canvas sizes"):
        model.detect([np.zeros((100, 64, 3), np.uint8)])  # a 128x64 canvas


def test_optimize_for_inference_needs_an_inference_model(config):
    with pytest.raises(ValueError, match="inference-mode model, this one is mode='training'"):
        MaskRCNN(mode="training", config=config).optimize_for_inference()


def _legacy_h5_from_model(model: MaskRCNN, path: str, shape_override: dict | None = None) -> dict:
    """Writes a Keras-2-style h5 (layer_names / weight_names attributes) from the model's layers."""
    written = {}
    with h5py.File(path, "w") as f:
        names = []
        for layer in find_weight_layers(model).values():
            group = f.create_group(layer.name)
            weight_names = []
            for w in layer.weights:
                value = np.random.default_rng(len(names)).normal(size=w.shape).astype(np.float32)
                if shape_override and layer.name in shape_override:
                    value = np.zeros(shape_override[layer.name], np.float32)
                    shape_override = None
                wname = f"{layer.name}/{w.name}:0"
                group.create_dataset(wname, data=value)
                weight_names.append(wname.encode())
                written[(layer.name, w.name)] = value
            group.attrs["weight_names"] = weight_names
            names.append(layer.name.encode())
        f.attrs["layer_names"] = names
    return written


def test_by_name_h5_loading_with_exclude(config, tmp_path):
    model = MaskRCNN(mode="inference", config=config)
    model.ensure_built()
    path = str(tmp_path / "legacy.h5")
    written = _legacy_h5_from_model(model, path)
    keep = {layer.name: [w.numpy().copy() for w in layer.weights] for layer in model.all_layers()
            if layer.name == "mrcnn_mask"}
    model.load_weights(path, by_name=True, exclude=["mrcnn_mask"])
    layers = {layer.name: layer for layer in model.all_layers()}
    for (layer_name, weight_name), value in written.items():
        weight = next(w for w in layers[layer_name].weights if w.name == weight_name)
        if layer_name == "mrcnn_mask":
            np.testing.assert_array_equal(weight.numpy(), keep["mrcnn_mask"][[w.name for w in layers[layer_name].weights].index(weight_name)])
        else:
            np.testing.assert_array_equal(weight.numpy(), value, err_msg=f"{layer_name}/{weight_name}")


def test_by_name_shape_mismatch_names_layer_and_shapes(config, tmp_path):
    model = MaskRCNN(mode="inference", config=config)
    model.ensure_built()
    path = str(tmp_path / "bad.h5")
    _legacy_h5_from_model(model, path, shape_override={"mrcnn_class_logits": (64, 81)})
    with pytest.raises(ValueError, match=r"mrcnn_class_logits.*81"):
        model.load_weights(path, by_name=True)
    # Excluding the mismatched layer (the fine-tuning idiom) loads the rest.
    model.load_weights(path, by_name=True, exclude=["mrcnn_class_logits"])


def _built_random_model(config: Config, seed: int) -> MaskRCNN:
    model = MaskRCNN(mode="inference", config=config)
    model.ensure_built()
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def test_keras3_weights_load_by_name_like_by_structure(config, tmp_path):
    """A Keras 3 .weights.h5 (save_weights or a train checkpoint) also loads by name, with exclude."""
    source = _built_random_model(config, 1)
    path = str(tmp_path / "own.weights.h5")
    source.save_weights(path)
    target = _built_random_model(config, 2)
    kept = {w.path: w.numpy().copy() for layer in target.all_layers() if layer.name == "mrcnn_mask" for w in layer.weights}
    report = target.load_weights(path, by_name=True, exclude=["mrcnn_mask"])
    assert "mrcnn_mask" in report["skipped"] and report["missing_in_file"] == [] and report["unmatched_in_file"] == []
    for mine, theirs in zip(target.weights, source.weights):
        expected = kept[mine.path] if mine.path in kept else theirs.numpy()
        np.testing.assert_array_equal(mine.numpy(), expected, err_msg=mine.path)


def test_own_checkpoint_fine_tunes_on_another_class_count(config, tmp_path):
    """matterport's idiom on one's own checkpoint: a new NUM_CLASSES leaves the class-sized heads out."""
    source = _built_random_model(config, 3)
    path = str(tmp_path / "mask_rcnn_own_0001.weights.h5")
    source.save_weights(path)
    target = _built_random_model(type(config)().update(NUM_CLASSES=config.NUM_CLASSES + 2), 4)
    with pytest.raises(ValueError, match=r"layer 'mrcnn_(bbox_fc|class_logits|mask)'.*has shape.*skip_mismatch"):
        target.load_weights(path, by_name=True)
    report = target.load_weights(path, skip_mismatch=True)
    assert sorted(report["skipped"]) == ["mrcnn_bbox_fc", "mrcnn_class_logits", "mrcnn_mask"]
    source_layers = find_weight_layers(source)
    target_layers = find_weight_layers(target)
    assert sorted(report["loaded"]) == sorted(set(target_layers) - set(report["skipped"]))
    for name in report["loaded"]:
        for mine, theirs in zip(own_weights(target_layers[name]), own_weights(source_layers[name]), strict=True):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=f"{name}/{mine.name}")
    report = target.load_weights(path, by_name=True, exclude=MATTERPORT_HEAD_LAYERS)
    assert set(report["skipped"]) >= {"mrcnn_bbox_fc", "mrcnn_class_logits", "mrcnn_mask"}


def test_load_weights_missing_file(config):
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        MaskRCNN(mode="inference", config=config).load_weights("nowhere.h5", by_name=True)


def test_run_graph_returns_named_intermediates(trained, config):
    out = trained[0].run_graph([np.zeros((64, 64, 3), np.uint8)], ["anchors", "proposals", "detections", "P2"])
    assert out["proposals"].shape == (1, config.POST_NMS_ROIS_INFERENCE, 4)
    assert out["detections"].shape == (1, config.DETECTION_MAX_INSTANCES, 6)
    assert out["P2"].shape[1:3] == (16, 16)
    with pytest.raises(ValueError, match="unknown graph outputs"):
        trained[0].run_graph([np.zeros((64, 64, 3), np.uint8)], ["nonsense"])


def test_run_graph_shows_the_tensors_detect_computes_in_bfloat16(trained, config, tmp_path):
    """Eager bfloat16 rounds after every op; detect's traced graph fuses them: run_graph traces too."""
    path = str(tmp_path / "trained.weights.h5")
    trained[0].save_weights(path)
    model = MaskRCNN(mode="inference", config=type(config)().update(MIXED_PRECISION="mixed_bfloat16"))
    model.load_weights(path)
    image = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    shown = model.run_graph([image], ["detections"])["detections"]
    molded, metas, _ = model.mold_inputs([image])
    computed = model._infer(tf.constant(molded), tf.constant(metas))["detections"].numpy()
    assert np.count_nonzero(computed[..., 5]) > 0
    np.testing.assert_array_equal(shown, computed)


def test_config_type_is_checked():
    with pytest.raises(TypeError, match="Config"):
        MaskRCNN(mode="training", config={"NUM_CLASSES": 2})
    with pytest.raises(ValueError, match="mode"):
        MaskRCNN(mode="train", config=TinyConfig())


def test_training_graph_is_used_only_with_gt(trained, config):
    model = trained[0]
    images, metas, _ = model.mold_inputs([np.zeros((64, 64, 3), np.uint8)])
    out = model({"input_image": tf.constant(images), "input_image_meta": tf.constant(metas)})
    assert "detections" in out and "target_class_ids" not in out


def _losses_and_grads(model, batch):
    tf.random.set_seed(7)  # DetectionTargetLayer samples RoIs at random: same draws on both paths
    with tf.GradientTape() as tape:
        outputs = model(batch, training=True)
        losses = model.compute_losses(batch, outputs)
        total = tf.add_n(list(losses.values()))
    grads = tape.gradient(total, model.trainable_variables)
    return {k: float(v) for k, v in losses.items()}, [None if g is None else tf.convert_to_tensor(g).numpy()
                                                      for g in grads]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_the_optimizers_clip_the_global_gradient_norm(config, name):
    # Two gradients of norm 4: a global clip at 5 scales both by 5 / sqrt(32) (matterport's Keras 2
    # clipnorm); Keras 3's per-variable clipnorm would leave both as they are.
    from mrcnn.model import make_optimizer

    optimizer = make_optimizer(type(config)().update(GRADIENT_CLIP_NORM=5.0, OPTIMIZER=name), learning_rate=1.0)
    assert optimizer.global_clipnorm == 5.0 and optimizer.clipnorm is None
    if name == "sgd":
        optimizer = make_optimizer(type(config)().update(GRADIENT_CLIP_NORM=5.0, LEARNING_MOMENTUM=0.0), 1.0)
        variables = [keras.Variable(np.zeros(2, np.float32)), keras.Variable(np.zeros(2, np.float32))]
        optimizer.apply_gradients([(tf.constant([4.0, 0.0]), variables[0]), (tf.constant([0.0, 4.0]), variables[1])])
        update = np.concatenate([v.numpy() for v in variables])
        np.testing.assert_allclose(np.linalg.norm(update), 5.0, rtol=1e-6)


def test_roi_sampling_reaches_the_target_layer(config):
    assert not MaskRCNN("training", config).detection_target.fill_negatives  # matterport's, the default
    assert MaskRCNN("training", type(config)().update(ROI_SAMPLING="paper")).detection_target.fill_negatives


def test_class_loss_leaves_the_padding_rois_out(trained, config):
    from mrcnn.modeling import losses as loss_fns

    model = trained[0]
    batch = {k: tf.constant(v) for k, v in DataGenerator(_shapes(2, seed=4), config, shuffle=False, seed=0)[0].items()}
    outputs = model(batch, training=True)
    real = np.any(outputs["rois"].numpy() != 0, axis=-1)  # [B, T]
    assert 0 < real.sum() < real.size, "the fixture's images must have padding rows"
    logits, targets = outputs["mrcnn_class_logits"].numpy(), outputs["target_class_ids"].numpy()
    shifted = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    cross_entropy = shifted - np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    loss = model.compute_losses(batch, outputs)["mrcnn_class_loss"].numpy()
    np.testing.assert_allclose(loss, cross_entropy[real].mean(), rtol=1e-5)  # all classes active here
    assert abs(loss - cross_entropy.mean()) > 1e-4  # what counting the padding rows gave
    assert loss_fns.mrcnn_class_loss(outputs["target_class_ids"], outputs["mrcnn_class_logits"],
                                     np.ones((2, config.NUM_CLASSES), np.float32)).numpy() == pytest.approx(
        cross_entropy.mean(), rel=1e-5)


def test_op_and_fallback_train_and_detect_the_same(trained, config, monkeypatch):
    from mrcnn.ops.roi_align import load_op_library

    if load_op_library() is None:
        pytest.skip("compiled RoIAlign op not built")
    model = trained[0]
    batch = {k: tf.constant(v) for k, v in DataGenerator(_shapes(2, seed=4), config, shuffle=False, seed=0)[0].items()}
    images, metas, _ = model.mold_inputs([_shapes(1, seed=9).load_image(0)])
    results = {}
    for path in ("op", "tf"):
        monkeypatch.setenv("MRCNN_ROI_ALIGN", path)
        detections = model({"input_image": tf.constant(images), "input_image_meta": tf.constant(metas)})
        results[path] = (detections["detections"].numpy(), detections["mrcnn_mask"].numpy(),
                         *_losses_and_grads(model, batch))
    op, fallback = results["op"], results["tf"]
    np.testing.assert_allclose(op[0], fallback[0], atol=1e-4)
    np.testing.assert_allclose(op[1], fallback[1], atol=1e-4)
    for name in op[2]:
        assert op[2][name] == pytest.approx(fallback[2][name], rel=1e-4, abs=1e-5), name
    for g_op, g_tf in zip(op[3], fallback[3]):
        if g_op is not None:
            np.testing.assert_allclose(g_op, g_tf, rtol=1e-3, atol=1e-4)


def test_bn_momentum_reaches_every_batchnorm():
    model = MaskRCNN(mode="training", config=TinyConfig().update(BN_MOMENTUM=0.9))
    norms = [layer for layer in model.all_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) > 50  # backbone + both heads
    assert {layer.momentum for layer in norms} == {0.9}


def test_recalibrate_batchnorm_updates_statistics_not_weights():
    model = MaskRCNN(mode="inference", config=TinyConfig().update(TRAIN_BN=True))
    model.ensure_built()
    norms = [layer for layer in model.all_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    stats_before = [layer.moving_mean.numpy().copy() for layer in norms]
    weights_before = [v.numpy().copy() for v in model.trainable_variables]
    images = [_shapes(4, seed=6).load_image(i) for i in range(4)]
    assert model.recalibrate_batchnorm(images, batch_size=2) == 2
    assert all(not np.allclose(a, layer.moving_mean.numpy()) for a, layer in zip(stats_before, norms))
    for before, variable in zip(weights_before, model.trainable_variables):
        np.testing.assert_array_equal(before, variable.numpy())


def test_recalibrate_batchnorm_refuses_what_it_cannot_do():
    """Found in review: with TRAIN_BN False (the default) it ran its passes and changed nothing; a
    negative batch_size ran none."""
    images = [np.zeros((64, 64, 3), np.uint8)] * 2
    frozen = MaskRCNN(mode="inference", config=TinyConfig())
    assert frozen.config.TRAIN_BN is False
    with pytest.raises(ValueError, match=r"config.TRAIN_BN is False.*\(True or None\)"):
        frozen.recalibrate_batchnorm(images)
    model = MaskRCNN(mode="inference", config=TinyConfig().update(TRAIN_BN=None))
    for name, bad in (("batch_size", -1), ("batch_size", 0), ("passes", 0), ("batch_size", 2.0)):
        with pytest.raises(ValueError, match=rf"{name} must be a positive int, got {bad!r}"):
            model.recalibrate_batchnorm(images, **{name: bad})


def test_recalibrate_batchnorm_takes_images_of_several_canvas_sizes():
    # "pad64": each call's images share a canvas, calls differ (64 and 128 px, then 64 again).
    # The anchors need a static canvas size, so each size must get its own traced graph.
    config = TinyConfig().update(TRAIN_BN=True, IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=128)
    model = MaskRCNN(mode="inference", config=config)
    model.ensure_built()
    norm = next(layer for layer in model.all_layers() if isinstance(layer, keras.layers.BatchNormalization))
    for size in (64, 128, 64):
        before = norm.moving_mean.numpy().copy()
        images = [np.random.default_rng(size + i).integers(0, 255, (size, size, 3), dtype=np.uint8) for i in range(3)]
        assert model.recalibrate_batchnorm(images, batch_size=2) == 2
        assert not np.allclose(before, norm.moving_mean.numpy()), size
        assert np.isfinite(norm.moving_mean.numpy()).all()


def test_recalibrate_batchnorm_takes_images_of_several_canvases_in_one_call(monkeypatch):
    # "pad64": 64x64 and 100x64 images mold to 64x64 and 128x64 canvases. The call molded them all
    # at once and raised "different canvases"; now each canvas runs in its own batches, in turn.
    config = NarrowConfig().update(TRAIN_BN=True, IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=128)
    model = MaskRCNN(mode="inference", config=config)
    model.ensure_built()
    with pytest.raises(ValueError, match="recalibrate_batchnorm got no images"):
        model.recalibrate_batchnorm([])
    with pytest.raises(TypeError, match=r"recalibrate_batchnorm\(\) takes a list of images"):
        model.recalibrate_batchnorm(np.zeros((64, 64, 3), np.uint8))  # one image: its rows are no images
    seen = []
    per_canvas = model._per_canvas
    monkeypatch.setattr(model, "_per_canvas", lambda function, images, metas: seen.append(tuple(images.shape)) or
                        per_canvas(function, images, metas))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in [(64, 64, 3)] * 3 + [(100, 64, 3)] * 2]
    assert model.recalibrate_batchnorm(images, batch_size=2) == 3
    assert seen == [(2, 64, 64, 3), (2, 128, 64, 3), (1, 64, 64, 3)]  # the canvases in turn


def test_run_graph_names_itself_when_images_mold_to_several_canvases():
    config = TinyConfig().update(IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=128)
    model = MaskRCNN(mode="inference", config=config)
    with pytest.raises(ValueError, match=r"run_graph: these images mold to different canvases .*one canvas at a time$"):
        model.run_graph([np.zeros((64, 64, 3), np.uint8), np.zeros((100, 64, 3), np.uint8)], ["detections"])


def test_positive_roi_list_gathers_positives_and_never_returns_empty():
    from mrcnn.model import _positive_roi_list

    rois = tf.reshape(tf.range(2 * 3 * 4, dtype=tf.float32), [2, 3, 4])
    masks = tf.reshape(tf.range(2 * 3 * 2 * 2, dtype=tf.float32), [2, 3, 2, 2])
    class_ids = tf.constant([[2, 1, 0], [3, 0, 0]])
    out_rois, out_ids, out_masks, image_ids = (t.numpy() for t in _positive_roi_list(rois, class_ids, masks))
    np.testing.assert_array_equal(out_ids, [[2, 1, 3]])
    np.testing.assert_array_equal(image_ids, [0, 0, 1])
    np.testing.assert_array_equal(out_rois[0], rois.numpy()[[0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(out_masks[0], masks.numpy()[[0, 0, 1], [0, 1, 0]])
    # No positive anywhere: one loss-free slot (class 0), so the mask head never sees an empty batch.
    _, out_ids, out_masks, image_ids = (t.numpy() for t in _positive_roi_list(rois, tf.zeros([2, 3], tf.int32), masks))
    np.testing.assert_array_equal(out_ids, [[0]])
    np.testing.assert_array_equal(image_ids, [0])
    assert out_masks.shape == (1, 1, 2, 2)


def test_detection_slot_list_pads_to_a_power_of_two():
    from mrcnn.model import _detection_slot_list, _scatter_detection_slots

    class_ids = tf.constant([[3.0, 0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0, 0.0]])
    index, count = _detection_slot_list(class_ids)
    assert int(count) == 3
    np.testing.assert_array_equal(index.numpy(), [[0, 0], [0, 2], [1, 1], [0, 0]])  # 3 real + 1 pad
    values = tf.constant([[10.0], [20.0], [30.0], [99.0]])
    scattered = _scatter_detection_slots(values, index, count, tf.zeros([2, 5, 6])).numpy()
    np.testing.assert_array_equal(scattered[..., 0], [[10, 0, 20, 0, 0], [0, 30, 0, 0, 0]])  # pad dropped
    # No detection at all: one padding slot, so the heads never see an empty batch.
    index, count = _detection_slot_list(tf.zeros([2, 5]))
    assert int(count) == 0 and index.numpy().tolist() == [[0, 0]]
    # every_slot (BatchNorm recalibration): all B * D slots, row-major, empty ones included.
    index, count = _detection_slot_list(class_ids, every_slot=True)
    assert int(count) == 10 and index.numpy().tolist() == [[b, d] for b in range(2) for d in range(5)]
    # Sizes: the next power of two, capped at B * D.
    for real, expected in [(1, 1), (2, 2), (5, 8), (8, 8), (9, 10), (10, 10)]:
        ids = np.zeros(10, np.float32)
        ids[:real] = 1.0
        index, count = _detection_slot_list(tf.constant(ids.reshape(2, 5)))
        assert (int(count), index.shape[0]) == (real, expected)


@pytest.mark.parametrize("settings", [{}, {"MASK_LOSS": "softmax"}, {"MASK_HEAD_TYPE": "mlp"},
                                      {"MASK_CLASS_AGNOSTIC": True}, "c4"])
def test_detected_class_masks_are_each_detections_own_channel(settings):
    """detect's graph (detected_class_masks) returns each detection's class channel of the K masks:
    computed alone by the FCN sigmoid head, selected from all K by the others."""
    if settings == "c4":
        from tests.test_model_backbones import TinyC4Config

        config = TinyC4Config()
    else:
        config = TinyConfig().update(**settings)
    keras.utils.set_random_seed(5)
    model = MaskRCNN(mode="inference", config=config)
    model.ensure_built()
    rng = np.random.default_rng(6)
    molded, metas, _ = model.mold_inputs([rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)])
    inputs = {"input_image": tf.constant(molded), "input_image_meta": tf.constant(metas)}
    every = model(inputs, training=False)
    own = model(inputs, training=False, detected_class_masks=True)
    np.testing.assert_array_equal(own["detections"].numpy(), every["detections"].numpy())
    class_ids = every["detections"][..., 4].numpy().astype(np.int64)
    real = class_ids > 0
    assert real.any()  # (several classes per call: tests/modeling/test_heads.py)
    full, masks = every["mrcnn_mask"].numpy(), own["mrcnn_mask"].numpy()
    assert masks.shape == full.shape[:-1] + (1,)
    channel = class_ids if full.shape[-1] > 1 else np.zeros_like(class_ids)
    expected = np.take_along_axis(full, channel[..., None, None, None], axis=-1)
    np.testing.assert_allclose(masks[real], expected[real], rtol=1e-5, atol=1e-6)
    assert np.all(masks[~real] == 0.0)


def test_masks_run_on_real_detections_only_and_match_all_slots(trained, config, tmp_path):
    """The mask head runs on the real detections alone; their masks equal those of the head run on
    every slot (the per-RoI head is independent of the other RoIs), and empty slots hold zeros."""
    path = str(tmp_path / "tiny.weights.h5")
    trained[0].save_weights(path)
    rng = np.random.default_rng(4)
    images = [_shapes(1, seed=11).load_image(0), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)]
    probe = MaskRCNN(mode="inference", config=config)
    probe.load_weights(path)
    scores = probe.run_graph(images, ["detections"])["detections"][..., 5]
    # A threshold that empties some slots but not all.
    threshold = float(np.median(scores[scores > 0]))
    model = MaskRCNN(mode="inference", config=TinyConfig().update(DETECTION_MIN_CONFIDENCE=threshold))
    model.load_weights(path)
    molded, metas, _ = model.mold_inputs(images)
    x, meta = tf.constant(molded), tf.constant(metas)
    out = model({"input_image": x, "input_image_meta": meta}, training=False)
    real = out["detections"][..., 4].numpy() > 0
    assert 0 < real.sum() < real.size
    pyramid = model._roi_feature_maps(model._features(x, False), meta)
    every_slot = model._mask_branch(out["detections"][..., :4], pyramid, False).numpy()
    masks = out["mrcnn_mask"].numpy()
    assert masks.shape == every_slot.shape
    np.testing.assert_allclose(masks[real], every_slot[real], rtol=1e-4, atol=1e-5)
    assert np.all(masks[~real] == 0.0)
