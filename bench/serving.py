"""An exported SavedModel (`mrcnn.export`) against the Keras model it came from: speed and agreement.

Loads the shapes demo weights (`make demo` writes them), exports the inference model as a
SavedModel in float32 and bfloat16, plain and frozen (`frozen=True`: weights as constants,
BatchNorms folded), and times `detect` one image per call over held-out images four ways: the
Keras model, the same with `optimize_for_inference()`, and `ExportedMaskRCNN` over each export.
Also reports each export's size, the time to export and to load, and the mask mAP@0.5 of each on
the same images.

    python bench/serving.py                       # writes bench/results/serving.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "samples" / "shapes"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from report import write_report  # noqa: E402
from shapes import TEST_SEED, InferenceConfig, _dataset  # noqa: E402
from timing import repeat_times  # noqa: E402

from mrcnn.evaluation.evaluate import evaluate_dataset  # noqa: E402
from mrcnn.export import ExportedMaskRCNN, export_saved_model  # noqa: E402
from mrcnn.model import MaskRCNN  # noqa: E402


def _per_image_ms(detector: object, images: list, passes: int) -> float:
    """Median over passes of the mean ms per image, one image per `detect` call."""
    def one_pass() -> None:
        for image in images:
            detector.detect([image])

    return round(statistics.median(repeat_times(one_pass, passes, warmup=1)) / len(images) * 1000, 2)


def measure(precision: str | None, weights: str, images: int, passes: int, folder: Path) -> dict:
    config = InferenceConfig().update(MIXED_PRECISION=precision)
    model = MaskRCNN(mode="inference", config=config)
    model.load_weights(weights)
    dataset = _dataset(images, TEST_SEED, config.IMAGE_MAX_DIM)
    pixels = [dataset.load_image(i) for i in dataset.image_ids]
    row: dict = {"precision": precision or "float32"}
    detectors = {"keras": model}
    for kind, frozen in (("served", False), ("served_frozen", True)):
        tic = time.perf_counter()
        path = export_saved_model(model, folder / f"{precision or 'float32'}_{kind}", class_names=dataset.class_names,
                                  frozen=frozen)
        row[f"{kind}_export_s"] = round(time.perf_counter() - tic, 2)
        row[f"{kind}_export_mb"] = round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 1)
        tic = time.perf_counter()
        detectors[kind] = ExportedMaskRCNN(path)
        row[f"{kind}_load_s"] = round(time.perf_counter() - tic, 2)
    for name, detector in detectors.items():
        row[f"{name}_ms_per_image"] = _per_image_ms(detector, pixels, passes)
        row[f"{name}_mask_mAP50"] = round(float(evaluate_dataset(detector, dataset, verbose=0)["mask_mAP50"]), 4)
    model.optimize_for_inference()
    row["folded_ms_per_image"] = _per_image_ms(model, pixels, passes)
    row["load_1min"] = round(os.getloadavg()[0], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(ROOT / "runs" / "shapes" / "shapes.weights.h5"))
    parser.add_argument("--images", type=int, default=16, help="held-out shapes images")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the images")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serving.json"))
    args = parser.parse_args()
    if not Path(args.weights).is_file():
        raise SystemExit(f"{args.weights} not found: run `make demo` first (or pass --weights)")
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(p, args.weights, args.images, args.passes, Path(folder)) for p in (None, "mixed_bfloat16")]
    report = {"benchmark": "serving", "machine": machine.describe(), "images": args.images, "passes": args.passes,
              "rows": rows}
    write_report(args.out, report)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
