"""Tests for bench/roi_align_cuda.py: the TF-free harness over roi_align.h, built with g++ (CPU entry points).

The CUDA entry points only run on a GPU machine (the script's --device cuda); what CI can check is
that the header still compiles on its own, that the harness's ABI matches the script's ctypes
bindings, and that its CPU kernels give the NumPy reference's numbers through it.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.reference.roi_align_ref import roi_align_grad_ref, roi_align_ref

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the harness")


def _script():
    spec = importlib.util.spec_from_file_location("roi_align_cuda", REPO / "bench" / "roi_align_cuda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _script()


@pytest.fixture(scope="module")
def harness(script, tmp_path_factory):
    return script.Harness(script.build("cpu", tmp_path_factory.mktemp("harness")))


def test_cpu_build_has_no_cuda_entry_points(harness):
    assert not harness.has_cuda
    assert not hasattr(harness.library, "mrcnn_roi_align_forward_cuda_f32")


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_forward_through_the_harness_matches_the_reference(script, harness, dtype, tolerance):
    result = script.check_reference(harness.forward_cpu, dtype, tolerance)
    assert result["cases"] == 8
    assert result["passed"], result


def test_forward_output_is_the_reference_on_a_hand_case(harness):
    # One 2x2 map, one image; the whole-map box pooled to 1x1 with one sample at its centre
    # (aligned: pixel centres at integers) is the mean of the four pixels.
    features = np.arange(4.0).reshape(1, 2, 2, 1)
    boxes = np.array([[0.0, 0.0, 2.0, 2.0]])
    out = harness.forward_cpu(features, boxes, np.zeros(1, np.int32), (1, 1), 1.0, sampling_ratio=1)
    np.testing.assert_allclose(out, roi_align_ref(features, boxes, [0], (1, 1), 1.0, 1, True))
    assert out[0, 0, 0, 0] == pytest.approx(1.5)


@pytest.mark.parametrize("aligned, sampling_ratio", [(True, 2), (False, 0)])
def test_backward_through_the_harness_matches_the_reference(harness, aligned, sampling_ratio):
    rng = np.random.default_rng(3)
    shape = (2, 5, 6, 3)
    boxes = np.array([[1.0, 2.0, 15.0, 20.0], [-4.0, 0.0, 8.0, 9.0], [6.0, 6.0, 30.0, 30.0]])
    indices = np.array([1, 0, 1], np.int32)
    grad = rng.standard_normal((3, 2, 3, 3))
    ours = harness.backward_cpu(grad, shape, boxes, indices, 0.5, sampling_ratio, aligned)
    expected = roi_align_grad_ref(grad, shape, boxes, indices, (2, 3), 0.5, sampling_ratio, aligned)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)
    assert np.abs(expected).max() > 0.1


def test_other_dtypes_are_refused(harness):
    with pytest.raises(TypeError, match="float32 or float64"):
        harness.forward_cpu(np.zeros((1, 2, 2, 1), np.float16), np.zeros((1, 4)), np.zeros(1, np.int32), (1, 1), 1.0)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit) on PATH")
def test_nvcc_builds_the_cuda_entry_points(script, tmp_path):
    # No GPU needed to compile: this keeps roi_align.h's CUDA kernels and launchers compiling
    # (they run only on a GPU machine, through this script's --device cuda).
    cuda = script.Harness(script.build("cuda", tmp_path))
    assert cuda.has_cuda
    for name in ("forward_cuda_f32", "forward_cuda_f64", "backward_cuda_f32", "backward_cuda_f64"):
        assert hasattr(cuda.library, f"mrcnn_roi_align_{name}")
    # The CPU entry points of the nvcc build are the same loops.
    assert script.check_reference(cuda.forward_cpu, np.float64, 1e-12)["passed"]


def test_bfloat16_bits_round_as_tensorflow(script):
    import tensorflow as tf

    values = np.random.default_rng(3).normal(size=1000).astype(np.float32) * 100
    ties = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), np.nan, -np.nan, np.inf, 0.0], np.float32)
    values = np.concatenate([values, ties])
    expected = tf.bitcast(tf.cast(values, tf.bfloat16), tf.uint16).numpy()
    np.testing.assert_array_equal(script.to_bfloat16_bits(values), expected)
    finite = np.isfinite(values)
    np.testing.assert_array_equal(script.from_bfloat16_bits(expected)[finite],
                                  tf.cast(tf.cast(values, tf.bfloat16), tf.float32).numpy()[finite])


def test_bfloat16_kernels_round_the_float32_result_once(script, harness):
    """The harness's bfloat16 entry points: float32 sums of the widened inputs, rounded once."""
    rng = np.random.default_rng(5)
    case = script.reference_cases(rng)[3]
    features = script.from_bfloat16_bits(script.to_bfloat16_bits(case["features"].astype(np.float32)))
    args = (case["boxes"].astype(np.float32), case["indices"])
    got = harness.forward_cpu_bf16(features, *args, case["pooled"], case["scale"], case["ratio"], case["aligned"])
    want = harness.forward_cpu(features, *args, case["pooled"], case["scale"], case["ratio"], case["aligned"])
    np.testing.assert_array_equal(script.to_bfloat16_bits(got), script.to_bfloat16_bits(want))
    grad = script.from_bfloat16_bits(script.to_bfloat16_bits(rng.normal(size=want.shape).astype(np.float32)))
    got = harness.backward_cpu_bf16(grad, features.shape, *args, case["scale"], case["ratio"], case["aligned"])
    want = harness.backward_cpu(grad, features.shape, *args, case["scale"], case["ratio"], case["aligned"])
    assert np.abs(want).max() > 0.1
    np.testing.assert_array_equal(script.to_bfloat16_bits(got), script.to_bfloat16_bits(want))


def test_bfloat16_reference_check_passes(script, harness):
    result = script.check_reference(harness.forward_cpu_bf16, "bfloat16", 2.0**-7)
    assert result["passed"], result
