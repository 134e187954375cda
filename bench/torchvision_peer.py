"""Benchmark: torchvision's Mask R-CNN on this machine, the peer issue 5's speed targets are halves of.

The targets (a 512 px training step, `detect` at 800 and 1024 px, each at most half of torchvision's
time "on the same machine") were set from figures measured on one host of this machine type. Hosts
differ (an AMD EPYC, an Intel Xeon with AMX), so this script measures the peer where our own
benchmarks run, with the settings they use:

* inference: `maskrcnn_resnet50_fpn`, random weights, one `size` x `size` image processed at that size
  (`min_size = max_size = size`, no resize), `box_score_thresh = 0` so all 100 detection slots are
  filled, as `bench/inference.py` does with `DETECTION_MIN_CONFIDENCE = 0`;
* training: a 512 px step, ResNet-50-FPN, 81 classes, 2 images, 512 sampled RoIs per image (25%
  positive), 256 RPN anchors per image, all layers trained, SGD with momentum, as
  `bench/train_step.py` does. Two backbone variants: frozen BatchNorm (`FrozenBatchNorm2d`, what
  our model does with `TRAIN_BN = False`) and torchvision's default for random weights (training
  BatchNorm2d, the variant the original 2.9 s figure most likely came from).
* precision: float32, and bfloat16 through `torch.autocast("cpu")` where `--precisions` asks for it.

PyTorch is not a dependency of mrcnn: run this script with an interpreter that has torch and
torchvision (here: `pip install torch==2.14.1 torchvision==0.29.1` into a separate venv; see the
environment notes). Uses all cores (`torch.set_num_threads(os.cpu_count())`).

    /path/to/torch-venv/bin/python bench/torchvision_peer.py            # ~5 minutes on 2 cores
    /path/to/torch-venv/bin/python bench/torchvision_peer.py --quick    # 1 repeat, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from report import write_report  # noqa: E402
from timing import repeat_times, summarize  # noqa: E402

try:
    import torch
    import torchvision
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d
    _TORCH_MISSING: ImportError | None = None
except ImportError as error:  # not a dependency of the package: said after --help had its say
    _TORCH_MISSING = error

RESULTS = Path(__file__).resolve().parent / "results" / "torchvision_peer.json"
NUM_CLASSES = 81  # 80 COCO classes + background, as bench/train_step.py's config


def _autocast(precision: str) -> torch.autocast:
    """A context that runs the enclosed ops in `precision` ("fp32" or "bf16") on the CPU."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def bench_inference(size: int, precision: str, repeats: int) -> dict:
    """Latency of one `size` px image through torchvision's eval-mode Mask R-CNN (all 100 slots filled)."""
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                  min_size=size, max_size=size, box_score_thresh=0.0).eval()
    image = torch.rand(3, size, size)
    detections: list[int] = []

    def step() -> None:
        with torch.inference_mode(), _autocast(precision):
            output = model([image])[0]
        detections.append(len(output["scores"]))

    times = repeat_times(step, repeats, warmup=1)
    return {"size": size, "precision": precision, **summarize(times), "detections": detections[-1]}


def _targets(size: int, count: int, generator: torch.Generator) -> dict:
    """`count` random rectangles in a `size` px image: boxes [count, 4] (x1, y1, x2, y2), labels, masks."""
    corner = torch.randint(0, size // 2, (count, 2), generator=generator)
    extent = torch.randint(size // 16, size // 2, (count, 2), generator=generator)
    boxes = torch.cat([corner, corner + extent], dim=1).float()
    masks = torch.zeros(count, size, size, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    labels = torch.randint(1, NUM_CLASSES, (count,), generator=generator)
    return {"boxes": boxes, "labels": labels, "masks": masks}


def make_training_model(size: int, frozen_bn: bool) -> torch.nn.Module:
    """ResNet-50-FPN Mask R-CNN for training at `size` px with all layers trainable.

    With `frozen_bn` the ResNet's BatchNorm layers are `FrozenBatchNorm2d` (fixed statistics and
    affine, as our `TRAIN_BN = False`); otherwise torchvision's default for random weights
    (`BatchNorm2d` in training mode).
    """
    if frozen_bn:
        resnet = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
        backbone = _resnet_fpn_extractor(resnet, trainable_layers=5)
        model = MaskRCNN(backbone, num_classes=NUM_CLASSES, min_size=size, max_size=size)
    else:
        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                      min_size=size, max_size=size)
    # The paper's sampling, and bench/train_step.py's config: 512 RoIs per image, 25% positive.
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 512
    model.roi_heads.fg_bg_sampler.positive_fraction = 0.25
    return model.train()


def bench_training(size: int, precision: str, frozen_bn: bool, warmup: int, repeats: int) -> dict:
    """Seconds per SGD step on 2 images of `size` px (forward, backward, update)."""
    torch.manual_seed(0)
    model = make_training_model(size, frozen_bn)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9,
                                weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=generator) for _ in range(2)]
    targets = [_targets(size, 4, generator) for _ in range(2)]
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(precision):
            loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    times = repeat_times(step, repeats, warmup=warmup)
    return {"size": size, "precision": precision, "batch_norm": "frozen" if frozen_bn else "training (default)",
            **summarize(times), "images_per_second": round(2 / statistics.median(times), 3),
            "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}


def _run(label: str, fn: Callable[[], dict]) -> dict:
    """Runs one measurement; an op torchvision lacks in bfloat16 on the CPU becomes an error row."""
    try:
        row = fn()
    except RuntimeError as error:
        row = {"error": str(error).splitlines()[0]}
    row = {"what": label, **row}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inference-sizes", type=int, nargs="*", default=[800, 1024])
    parser.add_argument("--train-sizes", type=int, nargs="*", default=[512])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1 warm-up: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    args = parser.parse_args()
    if _TORCH_MISSING is not None:  # not a dependency of the package: say what to install
        raise SystemExit(f"bench/torchvision_peer.py needs torch and torchvision ({_TORCH_MISSING}); "
                         "run it with an interpreter that has them")
    repeats, warmup = (1, 1) if args.quick else (args.repeats, args.warmup)
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for precision in args.precisions:
        for size in args.inference_sizes:
            rows.append(_run("inference", lambda s=size, p=precision: bench_inference(s, p, repeats)))
        for size in args.train_sizes:
            for frozen in (True, False):
                rows.append(_run("training_step", lambda s=size, p=precision, f=frozen:
                                 bench_training(s, p, f, warmup, repeats)))
    report = {"benchmark": "torchvision maskrcnn_resnet50_fpn, random weights: the peer of issue 5's targets",
              "machine": machine.describe(), "torch": torch.__version__, "torchvision": torchvision.__version__,
              "threads": torch.get_num_threads(), "quick": args.quick, "results": rows}
    write_report(args.out, report)


if __name__ == "__main__":
    main()
