"""samples/coco/coco.py: argparse/config wiring, the paper's schedule, a 1-step run on a COCO-format export."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from samples.coco import coco

# A 64 px model with narrow heads on 4 shapes classes: seconds per step on 2 CPU cores.
TINY = ["NUM_CLASSES=4", "BACKBONE='resnet50'", "IMAGE_MIN_DIM=64", "IMAGE_MAX_DIM=64", "IMAGES_PER_GPU=1",
        "TOP_DOWN_PYRAMID_SIZE=32", "FPN_CLASSIF_FC_LAYERS_SIZE=32", "TRAIN_ROIS_PER_IMAGE=8", "PRE_NMS_LIMIT=200",
        "POST_NMS_ROIS_TRAINING=32", "POST_NMS_ROIS_INFERENCE=16", "RPN_TRAIN_ANCHORS_PER_IMAGE=32",
        "MAX_GT_INSTANCES=4", "DETECTION_MAX_INSTANCES=4", "MINI_MASK_SHAPE=(16,16)",
        "RPN_ANCHOR_SCALES=(8,16,32,64,128)", "SCALE_JITTER=(48,64)", "SCHEDULE_WARMUP_ITERATIONS=0"]


def _set(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _args(argv: list[str]):
    return coco.build_parser().parse_args(argv)


def test_gpus_set_the_replica_count_and_global_batch():
    args = _args(["train", "--dataset", "d", "--gpus", "4", "--steps", "7"])
    config = coco.make_config(args)
    assert (config.GPU_COUNT, config.IMAGES_PER_GPU, config.BATCH_SIZE) == (4, 2, 8)
    assert config.STEPS_PER_EPOCH == 7
    assert args.model == "imagenet" and args.year == "2017" and args.logs == "logs"
    evaluate_args = _args(["evaluate", "--dataset", "d"])
    assert evaluate_args.model == "last"
    assert coco.make_config(evaluate_args, inference=True).IMAGE_MIN_DIM == 800  # the paper's test scale


def test_paper_schedule_scales_with_the_global_batch():
    config = coco.make_config(_args(["train", "--dataset", "d", "--gpus", "8"]))  # 16 images: the paper's
    assert coco.PaperSchedule.iterations(config) == (160000, [120000], 500)
    assert coco.PaperSchedule.base_learning_rate(config) == pytest.approx(0.02)
    small = coco.make_config(_args(["train", "--dataset", "d"]))  # one GPU, 2 images: 8x the steps
    total, boundaries, warmup = coco.PaperSchedule.iterations(small)
    assert (total, boundaries, warmup) == (1280000, [960000], 4000)
    schedule = coco.make_schedule(small)
    base = 0.02 * 2 / 16
    assert float(schedule(0)) == pytest.approx(base / 3)
    assert float(schedule(warmup)) == pytest.approx(base)
    assert float(schedule(boundaries[0] - 1)) == pytest.approx(base)
    assert float(schedule(boundaries[0])) == pytest.approx(base / 10)


def test_paper_schedule_scales_to_every_workers_replicas():
    # Two machines of one replica each (TF_CONFIG): GPU_COUNT is 1 on each, the step takes 2 images.
    config = coco.make_config(_args(["train", "--dataset", "d", "--set", "IMAGES_PER_GPU=1"]))
    assert config.BATCH_SIZE == 1
    assert coco.PaperSchedule.iterations(config, global_batch=2) == (1280000, [960000], 4000)
    assert coco.PaperSchedule.base_learning_rate(config, global_batch=2) == pytest.approx(0.02 * 2 / 16)
    assert float(coco.make_schedule(config, global_batch=2)(4000)) == pytest.approx(0.02 * 2 / 16)
    assert coco.train_stages(config, global_batch=2) == coco.train_stages(coco.make_config(
        _args(["train", "--dataset", "d", "--set", "IMAGES_PER_GPU=2"])))


def test_stages_keep_matterports_proportions():
    config = coco.make_config(_args(["train", "--dataset", "d", "--gpus", "8"]))
    assert coco.train_stages(config) == [("heads", 40), ("4+", 120), ("all", 160)]
    tiny = coco.make_config(_args(["train", "--dataset", "d", "--steps", "1", "--set", "SCHEDULE_ITERATIONS=2",
                                   "--set", "SCHEDULE_BATCH=2", "--set", "SCHEDULE_DECAY_AT=(1,)"]))
    stages = coco.train_stages(tiny)
    assert [layers for layers, _ in stages] == ["heads", "4+", "all"]
    ends = [end for _, end in stages]
    assert ends == sorted(set(ends))  # every stage trains at least one epoch


def _coco_layout(root: Path, count: int = 4) -> Path:
    """Shapes exported as COCO JSON, arranged as annotations/instances_{train,val}2017.json + images."""
    from mrcnn.data.shapes import ShapesDataset

    dataset = ShapesDataset()
    dataset.load_shapes(count, 64, 64, seed=7)
    dataset.prepare()
    json_path = dataset.export_coco(root / "export")
    (root / "annotations").mkdir(parents=True)
    for subset in ("train2017", "val2017"):
        shutil.copy(json_path, root / "annotations" / f"instances_{subset}.json")
        shutil.copytree(root / "export" / "images", root / subset)
    return root


@pytest.mark.filterwarnings("ignore:training from scratch with TRAIN_BN False")  # one step of wiring, not learning
def test_one_step_train_then_evaluate_on_a_coco_export(tmp_path):
    dataset_dir = _coco_layout(tmp_path / "coco")
    logs = tmp_path / "logs"
    common = ["--dataset", str(dataset_dir), "--logs", str(logs), "--limit", "2", "--verbose", "0"]
    assert coco.main(["train", *common, "--model", "none", "--steps", "1", "--epochs", "1"] + _set(TINY)) == 0
    runs = [d for d in logs.iterdir() if d.is_dir()]
    assert len(runs) == 1
    names = sorted(p.name for p in runs[0].glob("*.weights.h5"))
    assert names == ["mask_rcnn_coco_0001.weights.h5"]
    saved = json.loads((runs[0] / "config.json").read_text())
    assert saved["IMAGE_MAX_DIM"] == 64 and saved["NUM_CLASSES"] == 4 and saved["STEPS_PER_EPOCH"] == 1

    stats = coco.evaluate(_args(["evaluate", *common, "--model", "last"] + _set(TINY)))
    assert set(stats) >= {"bbox", "segm"}
    assert len(stats["segm"]) == 12 and all(np.isfinite(v) for v in stats["segm"].values())
    assert (logs / "detections_val2017.json").is_file()


PERSON_KEYPOINTS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco_person_kpts"
TINY_KEYPOINTS = [item for item in TINY if not item.startswith("NUM_CLASSES")] + [
    "KEYPOINT_HEAD_CONV_CHANNELS=16", "KEYPOINT_HEAD_NUM_CONVS=2", "KEYPOINT_POOL_SIZE=7", "KEYPOINT_MASK_SHAPE=(28,28)"]


@pytest.mark.filterwarnings("ignore:training from scratch with TRAIN_BN False")  # one step of wiring, not learning
def test_keypoints_train_then_evaluate_on_real_coco_persons(tmp_path):
    # The 4 real COCO val images with 14 persons, laid out as person_keypoints_{train,val}2017.json.
    if not (PERSON_KEYPOINTS / "test_coco.json").is_file():
        pytest.skip(f"shared data not available: {PERSON_KEYPOINTS}")
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for subset in ("train2017", "val2017"):
        shutil.copy(PERSON_KEYPOINTS / "test_coco.json", root / "annotations" / f"person_keypoints_{subset}.json")
        (root / subset).mkdir()
        for image in PERSON_KEYPOINTS.glob("*.jpg"):
            shutil.copy(image, root / subset / image.name)
    logs = tmp_path / "logs"
    common = ["--dataset", str(root), "--logs", str(logs), "--limit", "2", "--verbose", "0", "--keypoints"]
    config = coco.make_config(_args(["train", *common]))
    assert (config.NUM_CLASSES, config.KEYPOINT_HEAD, config.NUM_KEYPOINTS) == (2, True, 17)
    assert config.KEYPOINT_FLIP_MAP[1:3] == (2, 1)  # left_eye <-> right_eye: flips swap them
    assert coco.main(["train", *common, "--model", "none", "--steps", "1", "--epochs", "1"] + _set(TINY_KEYPOINTS)) == 0
    (run,) = [d for d in logs.iterdir() if d.is_dir()]
    assert run.name.startswith("coco_keypoints") and (run / "mask_rcnn_coco_keypoints_0001.weights.h5").is_file()

    stats = coco.evaluate(_args(["evaluate", *common, "--model", "last"] + _set(TINY_KEYPOINTS)))
    assert set(stats) >= {"bbox", "segm", "keypoints"} and stats["keypoint_max_dets"] == 20
    assert len(stats["keypoints"]) == 10 and all(np.isfinite(v) for v in stats["keypoints"].values())
    results = json.loads((logs / "detections_val2017.json").read_text())
    assert all(len(r["keypoints"]) == 3 * 17 for r in results)


def test_missing_dataset_names_the_path(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert coco.main(["train", "--dataset", str(missing), "--model", "none", "--verbose", "0"] + _set(TINY)) == 2
    err = capsys.readouterr().err
    assert err.startswith("coco.py: error: ") and str(missing / "annotations" / "instances_train2017.json") in err
    assert "Traceback" not in err


def test_a_set_value_of_the_wrong_type_names_the_field(tmp_path, capsys):
    assert coco.main(["evaluate", "--dataset", str(tmp_path), "--set", "IMAGE_MIN_DIM=abc"]) == 2
    assert "IMAGE_MIN_DIM must be an int, got 'abc'" in capsys.readouterr().err


def test_training_from_scratch_with_frozen_batchnorm_warns():
    frozen = SimpleNamespace(mode="training", config=SimpleNamespace(TRAIN_BN=False))
    with pytest.warns(UserWarning, match="TRAIN_BN=True"):
        assert coco.load_initial_weights(frozen, "none", download=False) is None
    learning = SimpleNamespace(mode="training", config=SimpleNamespace(TRAIN_BN=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert coco.load_initial_weights(learning, "none", download=False) is None


def test_resuming_a_multi_worker_run_without_the_chiefs_checkpoints_says_how(monkeypatch, tmp_path):
    from mrcnn.model import MaskRCNN

    model = SimpleNamespace(mode="training", find_last=lambda: MaskRCNN.find_last(
        SimpleNamespace(config=SimpleNamespace(NAME="coco"), model_dir=str(tmp_path))))
    with pytest.raises(FileNotFoundError, match="no checkpoint of 'coco'") as single:
        coco.load_initial_weights(model, "last", download=False)
    assert "TF_CONFIG" not in str(single.value)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    with pytest.raises(FileNotFoundError, match="shared --logs folder"):
        coco.load_initial_weights(model, "last", download=False)
