"""RoIAlign's CUDA kernels without TensorFlow: build, check against references, time against torchvision.

TensorFlow cannot run on the GPU machines lent for tests here (CUDA 13 with PyTorch and
torchvision; TF's GPU wheel needs CUDA 12), so the op's GPU kernels are driven there through
`custom_ops/roi_align/harness/roi_align_harness.cc`, a C ABI over the same `roi_align.h` that the
TensorFlow op compiles. This script:

1. builds that harness: nvcc for `--device cuda` (CPU and CUDA entry points), g++ for
   `--device cpu` (CPU entry points only: checks the harness and this script on any machine);
2. checks the kernels (exit status 1 when one fails):
   - forward against the NumPy reference (`tests/reference/roi_align_ref.py`, loops from the
     definition) on small cases: both `aligned` modes, fixed and adaptive sampling, rectangular
     bins, boxes partly or wholly outside the map, a zero-size box, several images;
   - the same forward in bfloat16 (bfloat16 features, float32 boxes and sums: the TF op's
     mixed-precision path) within bfloat16's precision;
   - on CUDA, forward and backward against the harness's CPU kernels in float64, float32 and
     bfloat16 (the same numbers up to the order in which atomics sum the gradient; bfloat16 to
     one rounding step) on the timing sizes;
   - forward and backward against `torchvision.ops.roi_align` where torchvision is installed;
3. times forward and forward + backward, ours against torchvision on the same device (CUDA
   events; on the CPU, wall time), on the README's RoIAlign rows: 1000 RoIs -> 7x7 and 200 RoIs
   -> 14x14 from 2 images of [256, 256, 256] (P2 of a 1024 px input, spatial scale 1/4).

Writes JSON to `--out`. On a GPU machine (the device tool; results come back from $OUT):

    python3 bench/roi_align_cuda.py --device cuda --out "$OUT/roi_align_cuda.json"

Layouts: ours is NHWC with (y1, x1, y2, x2) boxes, torchvision NCHW with (x1, y1, x2, y2) and the
image index as a fifth column; each side is timed in its own layout, conversions outside the timing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "custom_ops" / "roi_align" / "harness" / "roi_align_harness.cc"
RESULTS = ROOT / "bench" / "results" / "roi_align_cuda.json"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

from tests.reference.roi_align_ref import roi_align_ref  # noqa: E402

# (name, boxes, pooled size, channels): the README's RoIAlign rows.
TIMING_CASES = (("1000 RoIs -> 7x7", 1000, 7, 256), ("200 RoIs -> 14x14", 200, 14, 256))
TIMING_MAP = (2, 256, 256)  # images, height, width: P2 of a 1024 px input
TIMING_SCALE = 0.25
# (name, dtype, largest relative error against the NumPy reference) of the reference checks.
# bfloat16 (8 significant bits; the reference reads the unrounded float64 features): 2**-7.
REFERENCE_TOLERANCES = (("float64", np.float64, 1e-12), ("float32", np.float32, 1e-5),
                        ("bfloat16", "bfloat16", 2.0**-7))
SUFFIXES = {"float32": "f32", "float64": "f64", "bfloat16": "bf16"}


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16): round to nearest, ties to even; NaN -> quiet NaN (as tf.cast)."""
    values = np.ascontiguousarray(values, np.float32)
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    quiet_nan = np.where(np.signbit(values), 0xFFC0, 0x7FC0).astype(np.uint16)
    return np.where(np.isnan(values), quiet_nan, rounded)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly."""
    return (np.ascontiguousarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


# ----------------------------------------------------------------------------------------------
# Building and loading the harness
# ----------------------------------------------------------------------------------------------
def build(device: str, out_dir: Path, cuda_arch: str | None = None) -> Path:
    """Compiles the harness into `out_dir` and returns the library's path.

    Args:
        device: "cuda" (nvcc, CPU + CUDA entry points) or "cpu" (g++, CPU entry points only).
        out_dir: folder for the library.
        cuda_arch: nvcc's -arch (default "native": the GPU of this machine).
    """
    library = out_dir / f"libroi_align_harness_{device}.so"
    if device == "cuda":
        nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
        if not nvcc:
            raise SystemExit("roi_align_cuda: nvcc not found (set NVCC or put it on PATH)")
        command = [nvcc, "-x", "cu", "-std=c++17", "-O3", f"-arch={cuda_arch or 'native'}", "-shared",
                   "-Xcompiler", "-fPIC", str(SOURCE), "-o", str(library)]
    else:
        command = [os.environ.get("CXX", "g++"), "-std=c++17", "-O3", "-shared", "-fPIC", str(SOURCE),
                   "-o", str(library)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 and device == "cuda" and cuda_arch is None:
        # -arch=native needs the GPU visible to nvcc; nvcc's default target (PTX JIT-compiled by the
        # driver) runs on any newer GPU.
        command = [part for part in command if not part.startswith("-arch=")]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"roi_align_cuda: building the harness failed:\n{' '.join(command)}\n{result.stderr}")
    return library


class Harness:
    """ctypes bindings of the harness library; arrays are passed as raw pointers.

    Every entry takes dims = (N, H, W, C, K), the pooled size, spatial scale, sampling ratio and
    aligned flag, then features (or gradient), boxes, box indices and the output pointer; the CUDA
    ones also a stream (0: the default stream).
    """

    def __init__(self, path: Path) -> None:
        self.library = ctypes.CDLL(str(path))
        self.has_cuda = bool(self.library.mrcnn_roi_align_harness_has_cuda())
        directions = ("forward", "backward")
        devices = ("cpu", "cuda") if self.has_cuda else ("cpu",)
        for direction in directions:
            for device in devices:
                for suffix in SUFFIXES.values():
                    function = getattr(self.library, f"mrcnn_roi_align_{direction}_{device}_{suffix}")
                    arguments = [ctypes.POINTER(ctypes.c_longlong), ctypes.c_int, ctypes.c_int, ctypes.c_float,
                                 ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 4
                    function.argtypes = arguments + ([ctypes.c_void_p] if device == "cuda" else [])
                    function.restype = ctypes.c_int

    def call(self, direction: str, device: str, dtype: np.dtype | str, dims: tuple[int, ...],
             pooled: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool,
             pointers: tuple[int, int, int, int], stream: int = 0) -> None:
        """Runs one entry point; raises RuntimeError on a non-zero status (a CUDA error code).

        `dtype`: float32, float64 or "bfloat16" (values as bfloat16 bits, boxes float32).
        """
        suffix = SUFFIXES[dtype if isinstance(dtype, str) else np.dtype(dtype).name]
        function = getattr(self.library, f"mrcnn_roi_align_{direction}_{device}_{suffix}")
        dims_array = (ctypes.c_longlong * 5)(*dims)
        arguments = [dims_array, pooled[0], pooled[1], spatial_scale, sampling_ratio, int(aligned), *pointers]
        status = function(*arguments, *([ctypes.c_void_p(stream)] if device == "cuda" else []))
        if status != 0:
            raise RuntimeError(f"mrcnn_roi_align_{direction}_{device}_{suffix} returned status {status}")

    # NumPy front end (CPU kernels): the arrays must be C-contiguous and of one float dtype.
    def forward_cpu(self, features: np.ndarray, boxes: np.ndarray, box_indices: np.ndarray, pooled: tuple[int, int],
                    spatial_scale: float, sampling_ratio: int = 2, aligned: bool = True) -> np.ndarray:
        """[N, H, W, C] features, [K, 4] boxes, [K] indices -> [K, PH, PW, C], the features' dtype."""
        features, boxes, box_indices = _contiguous(features, boxes, box_indices)
        output = np.zeros((len(boxes), *pooled, features.shape[3]), features.dtype)
        self.call("forward", "cpu", features.dtype, (*features.shape, len(boxes)), pooled, spatial_scale,
                  sampling_ratio, aligned, _pointers(features, boxes, box_indices, output))
        return output

    def backward_cpu(self, grad: np.ndarray, features_shape: tuple[int, ...], boxes: np.ndarray,
                     box_indices: np.ndarray, spatial_scale: float, sampling_ratio: int = 2,
                     aligned: bool = True) -> np.ndarray:
        """[K, PH, PW, C] gradient -> [N, H, W, C] gradient of the features."""
        grad, boxes, box_indices = _contiguous(grad, boxes, box_indices)
        grad_features = np.empty(features_shape, grad.dtype)
        self.call("backward", "cpu", grad.dtype, (*features_shape, len(boxes)), grad.shape[1:3], spatial_scale,
                  sampling_ratio, aligned, _pointers(grad, boxes, box_indices, grad_features))
        return grad_features

    def forward_cpu_bf16(self, features: np.ndarray, boxes: np.ndarray, box_indices: np.ndarray,
                         pooled: tuple[int, int], spatial_scale: float, sampling_ratio: int = 2,
                         aligned: bool = True) -> np.ndarray:
        """`forward_cpu` through the bfloat16 kernels: features rounded to bfloat16, result widened to float32."""
        bits = to_bfloat16_bits(features)
        boxes, box_indices = np.ascontiguousarray(boxes, np.float32), np.ascontiguousarray(box_indices, np.int32)
        output = np.zeros((len(boxes), *pooled, features.shape[3]), np.uint16)
        self.call("forward", "cpu", "bfloat16", (*features.shape, len(boxes)), pooled, spatial_scale,
                  sampling_ratio, aligned, _pointers(bits, boxes, box_indices, output))
        return from_bfloat16_bits(output)

    def backward_cpu_bf16(self, grad: np.ndarray, features_shape: tuple[int, ...], boxes: np.ndarray,
                          box_indices: np.ndarray, spatial_scale: float, sampling_ratio: int = 2,
                          aligned: bool = True) -> np.ndarray:
        """`backward_cpu` through the bfloat16 kernels (grad rounded to bfloat16, result widened)."""
        bits = to_bfloat16_bits(grad)
        boxes, box_indices = np.ascontiguousarray(boxes, np.float32), np.ascontiguousarray(box_indices, np.int32)
        grad_features = np.empty(features_shape, np.uint16)
        self.call("backward", "cpu", "bfloat16", (*features_shape, len(boxes)), grad.shape[1:3], spatial_scale,
                  sampling_ratio, aligned, _pointers(bits, boxes, box_indices, grad_features))
        return from_bfloat16_bits(grad_features)


def _contiguous(values: np.ndarray, boxes: np.ndarray, box_indices: np.ndarray) -> tuple[np.ndarray, ...]:
    dtype = np.dtype(values.dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"roi_align harness: float32 or float64 only, got {dtype}")
    return (np.ascontiguousarray(values), np.ascontiguousarray(boxes, dtype),
            np.ascontiguousarray(box_indices, np.int32))


def _pointers(*arrays: np.ndarray) -> tuple[int, ...]:
    return tuple(array.ctypes.data for array in arrays)


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------
def reference_cases(rng: np.random.Generator) -> list[dict]:
    """Small cases for the NumPy reference: (features [N, H, W, C], boxes, indices, pooled, scale, ratio, aligned)."""
    features = rng.standard_normal((2, 9, 11, 3))
    boxes = np.array([[0.0, 0.0, 36.0, 44.0],      # the whole map
                      [5.5, 7.25, 20.0, 30.5],     # inside, fractional
                      [-12.0, -8.0, 10.0, 6.0],    # partly outside (top left)
                      [30.0, 40.0, 70.0, 90.0],    # partly outside (bottom right)
                      [60.0, 60.0, 90.0, 99.0],    # wholly outside: zeros
                      [12.0, 12.0, 12.0, 12.0],    # zero size
                      [3.0, 2.0, 5.0, 41.0]])      # thin and wide
    indices = np.array([0, 1, 0, 1, 0, 1, 1], np.int32)
    cases = []
    for pooled in ((2, 2), (3, 5)):
        for ratio in (2, 0):
            for aligned in (True, False):
                cases.append({"features": features, "boxes": boxes, "indices": indices, "pooled": pooled,
                              "scale": 0.25, "ratio": ratio, "aligned": aligned})
    return cases


def random_boxes(rng: np.random.Generator, count: int, images: int, height_px: float, width_px: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of 16 px to half the image, mostly inside it, in input pixels; their image indices."""
    size_y = rng.uniform(16.0, height_px / 2, count)
    size_x = rng.uniform(16.0, width_px / 2, count)
    y1 = rng.uniform(-8.0, height_px - size_y + 8.0)
    x1 = rng.uniform(-8.0, width_px - size_x + 8.0)
    boxes = np.stack([y1, x1, y1 + size_y, x1 + size_x], axis=1)
    return boxes, rng.integers(0, images, count).astype(np.int32)


def max_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference relative to the largest magnitude of `expected` (0 for two empty arrays)."""
    if expected.size == 0:
        return 0.0
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-30))


# ----------------------------------------------------------------------------------------------
# Checks and timings
# ----------------------------------------------------------------------------------------------
def check_reference(run_forward: Callable[..., np.ndarray], dtype: type, tolerance: float) -> dict:
    """Forward of every reference case against the NumPy loops; worst relative error."""
    worst = 0.0
    cases = reference_cases(np.random.default_rng(0))
    for case in cases:
        expected = roi_align_ref(case["features"], case["boxes"], case["indices"], case["pooled"], case["scale"],
                                 case["ratio"], case["aligned"])
        values = case["features"].astype(np.float32 if dtype == "bfloat16" else dtype)
        actual = run_forward(values, case["boxes"], case["indices"], case["pooled"], case["scale"], case["ratio"],
                             case["aligned"])
        worst = max(worst, max_error(actual.astype(np.float64), expected))
    return {"cases": len(cases), "max_relative_error": worst, "tolerance": tolerance,
            "passed": worst <= tolerance}


def _median_ms(step: Callable[[], object], synchronize: Callable[[], None], repeats: int) -> float:
    for _ in range(3):
        step()
    synchronize()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        step()
        synchronize()
        times.append((time.perf_counter() - tic) * 1000)
    return round(statistics.median(times), 3)


def torch_section(harness: Harness, device: str, repeats: int) -> dict:
    """CUDA-vs-CPU checks and the timings against torchvision (needs torch; torchvision optional)."""
    import torch

    try:
        from torchvision.ops import roi_align as tv_roi_align
    except ImportError:  # torch without torchvision: our kernels only
        tv_roi_align = None
    rng = np.random.default_rng(1)
    images, height, width = TIMING_MAP
    section: dict = {"torchvision": tv_roi_align is not None, "checks": [], "timings": []}
    for name, count, size, channels in TIMING_CASES:
        boxes, indices = random_boxes(rng, count, images, height / TIMING_SCALE, width / TIMING_SCALE)
        row: dict = {"case": name, "features": [images, height, width, channels]}
        for dtype in (torch.float64, torch.float32, torch.bfloat16):
            case = _TorchCase(harness, device, tv_roi_align, rng, boxes, indices, (size, size), channels, dtype)
            section["checks"].append({"case": name, **case.check()})
            if dtype == torch.float32:
                row.update(case.time(repeats))
        section["timings"].append(row)
    return section


class _TorchCase:
    """One timing case in one dtype: inputs on the device, our kernels and torchvision's on them."""

    def __init__(self, harness: Harness, device: str, tv_roi_align: Callable | None, rng: np.random.Generator,
                 boxes: np.ndarray, indices: np.ndarray, pooled: tuple[int, int], channels: int, dtype: object) -> None:
        import torch

        self.torch, self.harness, self.device, self.tv_roi_align = torch, harness, device, tv_roi_align
        self.pooled, self.dtype = pooled, dtype
        self.dtype_name = str(dtype).replace("torch.", "")  # "float32": NumPy's name for it too
        # bfloat16: boxes stay float32 (the kernels' compute type); torchvision is not compared.
        self.bfloat16 = dtype == torch.bfloat16
        box_dtype = torch.float32 if self.bfloat16 else dtype
        images, height, width = TIMING_MAP
        self.dims = (images, height, width, channels, len(boxes))
        self.host = {"features": torch.from_numpy(rng.standard_normal((images, height, width, channels))).to(dtype),
                     "grad": torch.from_numpy(rng.standard_normal((len(boxes), *pooled, channels))).to(dtype),
                     "boxes": boxes, "indices": indices}
        on = torch.device(device)
        self.features = self.host["features"].to(on)
        self.grad = self.host["grad"].to(on)
        self.boxes = torch.from_numpy(boxes).to(box_dtype).to(on)
        self.indices = torch.from_numpy(indices).to(on)
        self.output = torch.empty((len(boxes), *pooled, channels), dtype=dtype, device=on)
        self.grad_features = torch.empty_like(self.features)
        # torchvision's layout: NCHW maps, (image, x1, y1, x2, y2) boxes.
        self.nchw = self.features.permute(0, 3, 1, 2).contiguous()
        self.nchw_grad = self.grad.permute(0, 3, 1, 2).contiguous()
        self.tv_boxes = torch.cat([self.indices.to(dtype)[:, None], self.boxes[:, [1, 0, 3, 2]]], dim=1)

    def synchronize(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def _ours(self, direction: str) -> None:
        values, out = (self.features, self.output) if direction == "forward" else (self.grad, self.grad_features)
        stream = self.torch.cuda.current_stream().cuda_stream if self.device == "cuda" else 0
        self.harness.call(direction, self.device, self.dtype_name, self.dims, self.pooled, TIMING_SCALE, 2, True,
                          (values.data_ptr(), self.boxes.data_ptr(), self.indices.data_ptr(), out.data_ptr()), stream)

    def ours_forward(self) -> None:
        self._ours("forward")

    def ours_forward_backward(self) -> None:
        self._ours("forward")
        self._ours("backward")

    def tv_forward(self) -> object:
        with self.torch.no_grad():
            return self.tv_roi_align(self.nchw, self.tv_boxes, self.pooled, TIMING_SCALE, 2, True)

    def tv_forward_backward(self) -> object:
        leaf = self.nchw.detach().requires_grad_(True)
        self.tv_roi_align(leaf, self.tv_boxes, self.pooled, TIMING_SCALE, 2, True).backward(self.nchw_grad)
        return leaf.grad

    def check(self) -> dict:
        """Relative errors against the CPU kernels (on CUDA) and torchvision; passed if all within tolerance."""
        self.ours_forward_backward()
        self.synchronize()
        widen = (lambda t: t.float()) if self.bfloat16 else (lambda t: t)  # NumPy has no bfloat16
        output, grad_features = (widen(t).cpu().numpy() for t in (self.output, self.grad_features))
        errors = {}
        if self.device == "cuda":  # the same kernels' CPU loops: equal up to the atomics' summation order
            host = self.host
            forward = self.harness.forward_cpu_bf16 if self.bfloat16 else self.harness.forward_cpu
            backward = self.harness.backward_cpu_bf16 if self.bfloat16 else self.harness.backward_cpu
            errors["forward_vs_cpu"] = max_error(output, forward(
                widen(host["features"]).numpy(), host["boxes"], host["indices"], self.pooled, TIMING_SCALE))
            errors["backward_vs_cpu"] = max_error(grad_features, backward(
                widen(host["grad"]).numpy(), tuple(host["features"].shape), host["boxes"], host["indices"],
                TIMING_SCALE))
        if self.tv_roi_align is not None and not self.bfloat16:
            errors["forward_vs_torchvision"] = max_error(output, self.tv_forward().permute(0, 2, 3, 1).cpu().numpy())
            errors["backward_vs_torchvision"] = max_error(
                grad_features, self.tv_forward_backward().permute(0, 2, 3, 1).cpu().numpy())
        # bfloat16: float32 sums in another order (FMA, atomics) may round to the neighbouring value.
        tolerance = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 2.0**-7}[self.dtype_name]
        return {"dtype": self.dtype_name, **errors, "tolerance": tolerance,
                "passed": all(error <= tolerance for error in errors.values())}

    def time(self, repeats: int) -> dict:
        """Median milliseconds of forward and forward + backward, ours and (if installed) torchvision's."""
        times = {"ours_forward_ms": _median_ms(self.ours_forward, self.synchronize, repeats),
                 "ours_forward_backward_ms": _median_ms(self.ours_forward_backward, self.synchronize, repeats)}
        if self.tv_roi_align is not None:
            times["torchvision_forward_ms"] = _median_ms(self.tv_forward, self.synchronize, repeats)
            times["torchvision_forward_backward_ms"] = _median_ms(self.tv_forward_backward, self.synchronize, repeats)
        return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--cuda-arch", default=None, help="nvcc -arch (default: native)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per row (median)")
    parser.add_argument("--no-torch", action="store_true", help="reference checks only (no torch needed)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    report: dict = {"benchmark": "RoIAlign kernels of roi_align.h through the harness, without TensorFlow",
                    "device": args.device, "machine": machine.describe(),
                    "note": "ours on the CPU is the harness's single-threaded loop (the TF op shards it)"}
    with tempfile.TemporaryDirectory() as folder:
        harness = Harness(build(args.device, Path(folder), args.cuda_arch))
        if args.device == "cuda" and not harness.has_cuda:
            raise SystemExit("roi_align_cuda: the harness was built without CUDA")
        report["reference_cpu"] = {
            name: check_reference(harness.forward_cpu_bf16 if dtype == "bfloat16" else harness.forward_cpu, dtype,
                                  tolerance)
            for name, dtype, tolerance in REFERENCE_TOLERANCES}
        passed = all(check["passed"] for check in report["reference_cpu"].values())
        if not args.no_torch:
            import torch

            if args.device == "cuda":
                report["gpu"] = torch.cuda.get_device_name(0)
                report["reference_cuda"] = {
                    name: check_reference(_torch_forward(harness, torch, dtype), dtype, tolerance)
                    for name, dtype, tolerance in REFERENCE_TOLERANCES}
                passed &= all(check["passed"] for check in report["reference_cuda"].values())
            report["torch"] = torch.__version__
            report.update(torch_section(harness, args.device, args.repeats))
            passed &= all(check["passed"] for check in report["checks"])
    report["passed"] = passed
    print(json.dumps(report, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if passed else 1


def _torch_forward(harness: Harness, torch: object, dtype: type) -> Callable[..., np.ndarray]:
    """A forward with `forward_cpu`'s signature that runs the CUDA kernel on copies of the arrays."""
    bfloat16 = dtype == "bfloat16"

    def forward(features, boxes, box_indices, pooled, spatial_scale, sampling_ratio=2, aligned=True):
        if bfloat16:  # bfloat16 bits (as int16: torch's uint16 lacks CUDA kernels) in, float32 boxes
            arrays = (to_bfloat16_bits(features).view(np.int16), np.asarray(boxes, np.float32))
        else:
            arrays = (features.astype(dtype), np.asarray(boxes, dtype))
        on = [torch.from_numpy(np.ascontiguousarray(array)).cuda() for array in
              (*arrays, np.asarray(box_indices, np.int32))]
        output = torch.zeros((len(boxes), *pooled, features.shape[3]), dtype=on[0].dtype, device="cuda")
        harness.call("forward", "cuda", dtype, (*features.shape, len(boxes)),
                     pooled, spatial_scale, sampling_ratio, aligned, tuple(t.data_ptr() for t in (*on, output)),
                     torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        output = output.cpu().numpy()
        return from_bfloat16_bits(output.view(np.uint16)) if bfloat16 else output
    return forward


if __name__ == "__main__":
    sys.exit(main())
