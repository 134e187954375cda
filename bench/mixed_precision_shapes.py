"""Benchmark: float32 vs bfloat16 inference of the same trained shapes model, mAP and speed.

Loads the weights `make demo` writes (runs/shapes/shapes.weights.h5, BatchNorm recalibrated),
builds the shapes inference model twice (Config.MIXED_PRECISION None and "mixed_bfloat16"),
evaluates both on the same held-out images (samples/shapes TEST_SEED) and times single-image
`detect` calls. Writes bench/results/mixed_precision_shapes.json.

`--size` sets the size the model processes the images at (Config IMAGE_MIN_DIM = IMAGE_MAX_DIM):
the held-out images stay the 128 px ones the demo trains on and `detect` upscales them, so larger
sizes measure bfloat16 where the convolutions, not the fixed per-call costs, take the time, on the
same images and trained weights (the model was trained at 128 px, so its mAP falls at other scales).

    python bench/mixed_precision_shapes.py [--weights runs/shapes/shapes.weights.h5] [--eval-images 50]
    python bench/mixed_precision_shapes.py --size 512 --out bench/results/mixed_precision_shapes_512.json

`--batch-sizes 1,4,8` also times throughput: `detect` over the held-out images (the largest count
that every batch size divides) in batches of each size, milliseconds per image, best of `--passes`
passes. The model is built with IMAGES_PER_GPU = the largest batch size, so the evaluation runs
batched too; a single image per call (the latency above) is then a batch of one.

`--optimize-for-inference` evaluates and times each model again right after, with
`MaskRCNN.optimize_for_inference()` (weights frozen into the graph as constants), under the row's
"optimize_for_inference" key, and adds the frozen speed-up; `--also-unfolded` then again with
`optimize_for_inference(fold_batchnorm=False)`, under "optimize_for_inference_unfolded".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
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
from mrcnn.model import MaskRCNN  # noqa: E402


def measure(precision: str | None, weights: str, eval_images: int, repeats: int, size: int,
            optimize: bool = False, unfolded: bool = False, batch_sizes: tuple[int, ...] = (),
            passes: int = 3) -> dict:
    config = InferenceConfig().update(MIXED_PRECISION=precision, IMAGE_MIN_DIM=size, IMAGE_MAX_DIM=size,
                                      IMAGES_PER_GPU=max(batch_sizes, default=1))
    model = MaskRCNN(mode="inference", config=config, model_dir="/tmp/mrcnn_bench_logs")
    model.load_weights(weights)
    dataset = _dataset(eval_images, TEST_SEED, InferenceConfig.IMAGE_MAX_DIM)  # the demo's 128 px held-out images

    def score_and_time(model: MaskRCNN) -> dict:
        return {**_score_and_time(model, dataset, repeats), **_throughput(model, dataset, batch_sizes, passes)}

    row = {"precision": precision or "float32", "size": size, **score_and_time(model)}
    if optimize:  # the same model right after, frozen: an A/B free of the host's drift
        row["optimize_for_inference"] = score_and_time(model.optimize_for_inference())
        if unfolded:  # frozen without folding the BatchNorms into their convolutions
            row["optimize_for_inference_unfolded"] = score_and_time(model.optimize_for_inference(fold_batchnorm=False))
    return row


def _score_and_time(model: MaskRCNN, dataset: object, repeats: int) -> dict:
    metrics = evaluate_dataset(model, dataset, verbose=0)
    image = dataset.load_image(dataset.image_ids[0])
    times = repeat_times(lambda: model.detect([image]), repeats, warmup=1)  # the warm-up call traces
    return {"mask_mAP50": round(float(metrics["mask_mAP50"]), 4), "mask_mAP": round(float(metrics["mask_mAP"]), 4),
            "box_mAP50": round(float(metrics["box_mAP50"]), 4), "detect_median_s": round(statistics.median(times), 4),
            "load_1min": round(os.getloadavg()[0], 2)}


def _throughput(model: MaskRCNN, dataset: object, batch_sizes: tuple[int, ...], passes: int) -> dict:
    """Milliseconds per image of `detect` over the held-out images, in batches of each size.

    Every batch size sees the same images (the first ``n``, n the largest multiple of all the batch
    sizes), so the per-image work (detections, masks) is the same and only the batching differs.
    """
    if not batch_sizes:
        return {}
    count = len(dataset.image_ids) - len(dataset.image_ids) % math.lcm(*batch_sizes)
    if count == 0:
        raise SystemExit(f"--eval-images {len(dataset.image_ids)} is fewer than lcm{batch_sizes}")
    images = [dataset.load_image(i) for i in dataset.image_ids[:count]]
    per_image = {}
    for batch in batch_sizes:
        def one_pass(batch: int = batch) -> None:
            for start in range(0, count, batch):
                model.detect(images[start:start + batch])

        model.detect(images[:batch])  # traces this batch size
        best = min(repeat_times(one_pass, passes, warmup=0))
        per_image[str(batch)] = round(best / count * 1000, 2)
    return {"throughput_images": count, "throughput_ms_per_image": per_image}


def _bfloat16_against(float32: dict, bfloat16: dict) -> dict:
    """bfloat16's mask mAP@0.5 minus float32's, and float32's detect time over bfloat16's.

    With throughput figures, also float32's milliseconds per image over bfloat16's, per batch size.
    """
    against = {"mask_mAP50_difference": round(bfloat16["mask_mAP50"] - float32["mask_mAP50"], 4),
               "speedup": round(float32["detect_median_s"] / bfloat16["detect_median_s"], 3)}
    if "throughput_ms_per_image" in float32:
        against["throughput_speedup"] = {
            batch: round(ms / bfloat16["throughput_ms_per_image"][batch], 3)
            for batch, ms in float32["throughput_ms_per_image"].items()}
    return against


def _batch_sizes(text: str) -> tuple[int, ...]:
    """Parses --batch-sizes ("1,4,8") into positive ints."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SystemExit(f"--batch-sizes must be comma-separated integers, got {text!r}") from None
    if any(size < 1 for size in sizes):
        raise SystemExit(f"--batch-sizes must be >= 1, got {text!r}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(ROOT / "runs" / "shapes" / "shapes.weights.h5"))
    parser.add_argument("--eval-images", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", type=int, default=InferenceConfig.IMAGE_MAX_DIM,
                        help="px the model processes the images at (a multiple of 64; default the demo's 128)")
    parser.add_argument("--optimize-for-inference", action="store_true",
                        help="detect from graphs with the weights frozen as constants")
    parser.add_argument("--also-unfolded", action="store_true",
                        help="with --optimize-for-inference, also time the frozen graph without BatchNorm folding")
    parser.add_argument("--batch-sizes", default="",
                        help="comma-separated images per detect call to time throughput at, e.g. 1,4,8")
    parser.add_argument("--passes", type=int, default=3, help="throughput passes over the images (best is kept)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "mixed_precision_shapes.json"))
    args = parser.parse_args()
    if not Path(args.weights).exists():
        raise SystemExit(f"no weights at {args.weights}: run `make demo` first (or pass --weights)")
    batch_sizes = _batch_sizes(args.batch_sizes)
    rows = [measure(p, args.weights, args.eval_images, args.repeats, args.size, args.optimize_for_inference,
                    args.also_unfolded, batch_sizes, args.passes) for p in (None, "mixed_bfloat16")]
    for row in rows:
        print(json.dumps(row))
    calls = "1 image per call" + (f"; throughput at {', '.join(map(str, batch_sizes))}" if batch_sizes else "")
    report = {"benchmark": f"shapes demo model, float32 vs mixed_bfloat16 inference ({args.size} px, {calls})",
              "machine": machine.describe(), "weights": args.weights, "eval_images": args.eval_images, "results": rows,
              **_bfloat16_against(rows[0], rows[1])}
    if args.optimize_for_inference:
        frozen = [row["optimize_for_inference"] for row in rows]
        report["optimize_for_inference"] = {
            **_bfloat16_against(frozen[0], frozen[1]),
            "speedup_over_float32_variables": round(rows[0]["detect_median_s"] / frozen[1]["detect_median_s"], 3)}
    if args.optimize_for_inference and args.also_unfolded:
        unfolded = [row["optimize_for_inference_unfolded"] for row in rows]
        report["optimize_for_inference_unfolded"] = _bfloat16_against(unfolded[0], unfolded[1])
    write_report(args.out, report)


if __name__ == "__main__":
    main()
