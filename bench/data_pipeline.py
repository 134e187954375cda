"""Data pipeline throughput: DataGenerator batches/s and images/s.

Scenarios:
  * ``shapes_128``: the generated shapes dataset at 128 px (ShapesConfig);
  * ``dsb2018_512_square``: DSB2018 nuclei (../shared/data/dsb2018/stage1_train, skipped when
    absent) at 512 px, "square" mode, matterport's nucleus settings, reading the PNGs every time
    (one PNG per nucleus: the dataset's decoding is most of the cost);
  * ``dsb2018_512_square_ram``: the same images with the dataset's output cached in RAM, i.e. the
    cost of the pipeline itself (resize, masks, RPN targets, batching).
Each is timed single-process (``__getitem__`` in a loop) and through Keras' PyDataset enqueuer
(as ``model.fit`` uses it) with 2 workers, as threads and as processes. The machine's load average
is recorded with each measurement: on a shared machine the numbers move with it; single-process
rows also give images per CPU-second, which moves much less.
Writes bench/results/data_pipeline.json.

    python bench/data_pipeline.py [--batches 30] [--out bench/results/data_pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mrcnn.config import Config
from mrcnn.data.dataset import Dataset, to_rgb_uint8
from mrcnn.data.generator import DataGenerator
from mrcnn.data.shapes import ShapesConfig, ShapesDataset

REPO = Path(__file__).resolve().parents[1]
DSB_ROOT = REPO / ".." / "shared" / "data" / "dsb2018" / "stage1_train"


class NucleiDataset(Dataset):
    """DSB2018 Kaggle layout: <id>/images/<id>.png (RGBA) and one binary PNG per nucleus in <id>/masks/."""

    def load_nuclei(self, root: Path, count: int | None = None) -> None:
        self.add_class("nucleus", 1, "nucleus")
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        for folder in folders[:count]:
            self.add_image("nucleus", image_id=folder.name, path=folder / "images" / f"{folder.name}.png",
                           mask_dir=folder / "masks")

    def load_image(self, image_id: int) -> np.ndarray:
        # PIL directly: a few times faster than skimage.io for these small PNGs.
        with Image.open(self.image_info[image_id]["path"]) as image:
            return to_rgb_uint8(np.asarray(image))

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        files = sorted(Path(self.image_info[image_id]["mask_dir"]).glob("*.png"))
        masks = []
        for path in files:
            with Image.open(path) as mask:
                masks.append(np.asarray(mask) > 0)
        return np.stack(masks, axis=-1), np.ones(len(files), dtype=np.int32)


class CachedNucleiDataset(NucleiDataset):
    """NucleiDataset whose images and masks are decoded once (`preload`) and then served from RAM."""

    def preload(self) -> None:
        self._cache = {i: (super(CachedNucleiDataset, self).load_image(i), super(CachedNucleiDataset, self).load_mask(i))
                       for i in self.image_ids}

    def load_image(self, image_id: int) -> np.ndarray:
        return self._cache[image_id][0]

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        return self._cache[image_id][1]


class NucleiConfig(Config):
    """matterport's nucleus sample settings at 512 px, square mode."""

    NAME = "nucleus"
    NUM_CLASSES = 2
    IMAGES_PER_GPU = 2
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 512
    IMAGE_MAX_DIM = 512
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    MAX_GT_INSTANCES = 200
    MINI_MASK_SHAPE = (56, 56)


def time_single(generator: DataGenerator, batches: int) -> tuple[float, float]:
    """Wall and CPU seconds for `batches` batches built in this process."""
    generator[0]  # warm up (imports, file cache)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(batches):
        generator[i % len(generator)]
    return time.perf_counter() - start, time.process_time() - cpu_start


def time_enqueued(generator: DataGenerator, batches: int) -> float:
    # Keras' own PyDataset adapter, as model.fit uses it (OrderedEnqueuer with the workers).
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(generator, shuffle=False)
    adapter.on_epoch_begin()
    iterator = adapter.get_numpy_iterator()
    next(iterator)  # pool start-up and first batch
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    adapter.on_epoch_end()
    return elapsed


def run_scenario(name: str, dataset: Dataset, config: Config, batches: int) -> list[dict]:
    rows = []
    for label, kwargs in [
        ("single_process", {"workers": 1, "use_multiprocessing": False}),
        ("workers2_threads", {"workers": 2, "use_multiprocessing": False}),
        ("workers2_processes", {"workers": 2, "use_multiprocessing": True}),
    ]:
        # steps > batches + 1 so the enqueuer never runs out within the timed loop.
        generator = DataGenerator(dataset, config, shuffle=True, seed=0, steps=batches + 2, max_queue_size=8, **kwargs)
        cpu = None
        if kwargs["workers"] == 1:
            elapsed, cpu = time_single(generator, batches)
        else:
            elapsed = time_enqueued(generator, batches)
        row = {
            "scenario": name,
            "mode": label,
            "batch_size": config.BATCH_SIZE,
            "image_shape": [int(v) for v in config.IMAGE_SHAPE],
            "batches": batches,
            "seconds": round(elapsed, 3),
            "batches_per_s": round(batches / elapsed, 2),
            "images_per_s": round(batches * config.BATCH_SIZE / elapsed, 2),
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
        if cpu is not None:
            # CPU time moves much less than wall time when other jobs share the machine.
            row["images_per_cpu_s"] = round(batches * config.BATCH_SIZE / cpu, 2)
        print(json.dumps(row))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30, help="timed batches per measurement")
    parser.add_argument("--dsb-images", type=int, default=64, help="DSB2018 images to cycle through")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "data_pipeline.json")
    args = parser.parse_args()

    results = []
    shapes_config = ShapesConfig()
    shapes = ShapesDataset()
    shapes.load_shapes(200, 128, 128, seed=0)
    shapes.prepare()
    results += run_scenario("shapes_128", shapes, shapes_config, args.batches)

    if DSB_ROOT.is_dir():
        nuclei = NucleiDataset()
        nuclei.load_nuclei(DSB_ROOT, args.dsb_images)
        nuclei.prepare()
        results += run_scenario("dsb2018_512_square", nuclei, NucleiConfig(), args.batches)
        cached = CachedNucleiDataset()
        cached.load_nuclei(DSB_ROOT, args.dsb_images)
        cached.prepare()
        cached.preload()
        results += run_scenario("dsb2018_512_square_ram", cached, NucleiConfig(), args.batches)
    else:
        print(f"DSB2018 not found at {DSB_ROOT}: skipped")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "data_pipeline",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
