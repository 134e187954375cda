"""Data pipeline throughput: DataGenerator batches/s and images/s.

Scenarios:
  * ``shapes_128``: the generated shapes dataset at 128 px (ShapesConfig);
  * DSB2018 nuclei (../shared/data/dsb2018/stage1_train, skipped when absent) at 512 px, "square"
    mode, matterport's nucleus settings, through samples/nucleus's NucleusDataset (one label
    image per image; `load_image_gt` builds boxes and mini masks from it):
      - ``dsb2018_512_square_nocache``: no cache, every read decodes the PNGs (one per nucleus);
      - ``dsb2018_512_square_cold``: an empty on-disk cache: the first epoch, which decodes the
        PNGs and writes one cache file per image;
      - ``dsb2018_512_square_warm``: the cache filled: later epochs, one file read per image;
      - ``dsb2018_512_square_ram``: images and label images held in RAM: the cost of the
        pipeline itself (resize, boxes and mini masks, RPN targets, batching).
Each is timed single-process (``__getitem__`` in a loop) and through Keras' PyDataset enqueuer
(as ``model.fit`` uses it) with 2 workers, as threads and as processes. The timed batches visit
each image at most once (64 images, 30 batches of 2), so "cold" rows never hit the cache. The
machine's load average is recorded with each measurement: on a shared machine the numbers move
with it; single-process rows also give images per CPU-second, which moves much less.
Writes bench/results/data_pipeline.json.

    python bench/data_pipeline.py [--batches 30] [--out bench/results/data_pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # samples.nucleus is imported from the checkout
    sys.path.insert(0, str(REPO))

from mrcnn.config import Config  # noqa: E402
from mrcnn.data.dataset import Dataset  # noqa: E402
from mrcnn.data.generator import DataGenerator  # noqa: E402
from mrcnn.data.shapes import ShapesConfig, ShapesDataset  # noqa: E402
from samples.nucleus.dataset import NucleusDataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from report import write_report  # noqa: E402

DSB_ROOT = REPO / ".." / "shared" / "data" / "dsb2018" / "stage1_train"


class InMemoryNucleusDataset(NucleusDataset):
    """NucleusDataset whose images and label images are decoded once (`preload`), then served from RAM."""

    def preload(self) -> None:
        self._memory = {int(i): self._read(int(i)) for i in self.image_ids}

    def _read(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        memory = getattr(self, "_memory", None)
        if memory is not None:
            return memory[image_id]
        return super()._read(image_id)


class NucleiConfig(Config):
    """matterport's nucleus sample settings at 512 px, square mode (the issue's benchmark setting)."""

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


def time_single(generator: DataGenerator, batches: int, warm_up: bool = True) -> tuple[float, float]:
    """Wall and CPU seconds for `batches` batches built in this process."""
    if warm_up:
        generator[0]  # imports, file cache (left out for "cold" rows: it would read batch 0 early)
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


def run_scenario(name: str, make_dataset: Callable[[], Dataset], config: Config, batches: int,
                 cold: bool = False) -> list[dict]:
    """Times one dataset in the three modes; `make_dataset` gives a fresh dataset per mode (so a
    "cold" cache is cold in each)."""
    rows = []
    for label, kwargs in [
        ("single_process", {"workers": 1, "use_multiprocessing": False}),
        ("workers2_threads", {"workers": 2, "use_multiprocessing": False}),
        ("workers2_processes", {"workers": 2, "use_multiprocessing": True}),
    ]:
        dataset = make_dataset()
        # steps > batches + 1 so the enqueuer never runs out within the timed loop.
        generator = DataGenerator(dataset, config, shuffle=True, seed=0, steps=batches + 2, max_queue_size=8, **kwargs)
        cpu = None
        if kwargs["workers"] == 1:
            elapsed, cpu = time_single(generator, batches, warm_up=not cold)
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
    parser.add_argument("--only", choices=("all", "shapes", "dsb"), default="all", help="scenarios to run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "data_pipeline.json")
    args = parser.parse_args()

    results = []
    if args.only in ("all", "shapes"):
        def shapes() -> ShapesDataset:
            dataset = ShapesDataset()
            dataset.load_shapes(200, 128, 128, seed=0)
            dataset.prepare()
            return dataset

        results += run_scenario("shapes_128", shapes, ShapesConfig(), args.batches)

    if args.only in ("all", "dsb") and DSB_ROOT.is_dir():
        with tempfile.TemporaryDirectory(prefix="nucleus_cache_") as scratch:
            def nuclei(cache_dir: Path | None = None, cls: type = NucleusDataset) -> NucleusDataset:
                dataset = cls(cache_dir=cache_dir)
                dataset.load_kaggle(DSB_ROOT, limit=args.dsb_images)
                dataset.prepare()
                return dataset

            results += run_scenario("dsb2018_512_square_nocache", nuclei, NucleiConfig(), args.batches, cold=True)
            fresh = iter(range(100))
            results += run_scenario(
                "dsb2018_512_square_cold", lambda: nuclei(Path(scratch) / f"cold{next(fresh)}"), NucleiConfig(),
                args.batches, cold=True)
            warm_dir = Path(scratch) / "warm"
            filler = nuclei(warm_dir)
            for image_id in filler.image_ids:  # fill the cache: every later read is a warm one
                filler.load_labels(int(image_id))
            results += run_scenario("dsb2018_512_square_warm", lambda: nuclei(warm_dir), NucleiConfig(), args.batches)

            def in_memory() -> InMemoryNucleusDataset:
                dataset = nuclei(warm_dir, InMemoryNucleusDataset)
                dataset.preload()
                return dataset

            results += run_scenario("dsb2018_512_square_ram", in_memory, NucleiConfig(), args.batches)
    elif args.only in ("all", "dsb"):
        print(f"DSB2018 not found at {DSB_ROOT}: skipped")

    report = {
        "benchmark": "data_pipeline",
        "machine": machine.describe(),
        "host": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                 "load_average_at_end": os.getloadavg()},
        "results": results,
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
