// A C ABI over the RoIAlign kernels of roi_align.h, without TensorFlow.
//
// The TensorFlow op (cc/kernels) is the library's entry point; this file exists so that the same
// kernels can run where TensorFlow cannot: the GPU machines lent for tests have CUDA, PyTorch and
// torchvision but no TensorFlow. bench/roi_align_cuda.py builds it and drives it through ctypes:
//   nvcc -x cu ... -shared   CPU and CUDA entry points (the CUDA ones take a cudaStream_t as void*)
//   g++ ... -shared          CPU entry points only (to check the harness itself on any machine)
// Arrays use the op's layouts (roi_align.h): features [N, H, W, C], boxes [K, 4] (y1, x1, y2, x2)
// in input pixels, box_indices [K] int32, output [K, PH, PW, C]. dims = {N, H, W, C, K}.
// Every entry returns 0 on success; CUDA ones return the cudaError_t of the launch otherwise.
// Suffixes: _f32, _f64 (everything in that type) and _bf16 (bfloat16 bits, float32 boxes).
// Box indices are not checked here (the op checks them): callers pass valid ones.

#include "../cc/kernels/roi_align.h"

namespace {

namespace ra = ::mrcnn::roi_align;

ra::Shape MakeShape(const long long* dims, int pooled_h, int pooled_w) {
  ra::Shape shape;
  shape.batch = dims[0];
  shape.height = dims[1];
  shape.width = dims[2];
  shape.channels = dims[3];
  shape.num_boxes = dims[4];
  shape.pooled_h = pooled_h;
  shape.pooled_w = pooled_w;
  return shape;
}

ra::Attrs MakeAttrs(float spatial_scale, int sampling_ratio, int aligned) {
  ra::Attrs attrs;
  attrs.spatial_scale = spatial_scale;
  attrs.sampling_ratio = sampling_ratio;
  attrs.aligned = aligned != 0;
  return attrs;
}

}  // namespace

#define MRCNN_HARNESS_CPU(SUFFIX, T)                                                              \
  extern "C" int mrcnn_roi_align_forward_cpu_##SUFFIX(                                            \
      const long long* dims, int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio, \
      int aligned, const T* features, const T* boxes, const int* box_indices, T* output) {        \
    const ra::Shape shape = MakeShape(dims, pooled_h, pooled_w);                                  \
    ra::ForwardBoxesCpu<T>(shape, MakeAttrs(spatial_scale, sampling_ratio, aligned), features,    \
                           boxes, box_indices, output, 0, shape.num_boxes);                       \
    return 0;                                                                                     \
  }                                                                                               \
  /* grad_features is zeroed here, as the op does. */                                             \
  extern "C" int mrcnn_roi_align_backward_cpu_##SUFFIX(                                           \
      const long long* dims, int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio, \
      int aligned, const T* grad, const T* boxes, const int* box_indices, T* grad_features) {     \
    const ra::Shape shape = MakeShape(dims, pooled_h, pooled_w);                                  \
    const long long count = shape.batch * shape.height * shape.width * shape.channels;            \
    for (long long i = 0; i < count; ++i) grad_features[i] = static_cast<T>(0);                   \
    ra::BackwardChannelsCpu<T>(shape, MakeAttrs(spatial_scale, sampling_ratio, aligned), grad,    \
                               boxes, box_indices, grad_features, 0, shape.channels);             \
    return 0;                                                                                     \
  }

MRCNN_HARNESS_CPU(f32, float)
MRCNN_HARNESS_CPU(f64, double)

// bfloat16 (_bf16): features, output and gradients are raw bfloat16 bits (uint16), boxes float32;
// the sums are float32 (the backward's in a scratch buffer), rounded once, as the TF op.
extern "C" int mrcnn_roi_align_forward_cpu_bf16(const long long* dims, int pooled_h, int pooled_w,
                                                float spatial_scale, int sampling_ratio, int aligned,
                                                const ra::bf16_bits_t* features, const float* boxes,
                                                const int* box_indices, ra::bf16_bits_t* output) {
  const ra::Shape shape = MakeShape(dims, pooled_h, pooled_w);
  ra::ForwardBoxesCpu<ra::bf16_bits_t, float>(shape, MakeAttrs(spatial_scale, sampling_ratio, aligned),
                                              features, boxes, box_indices, output, 0, shape.num_boxes);
  return 0;
}

extern "C" int mrcnn_roi_align_backward_cpu_bf16(const long long* dims, int pooled_h, int pooled_w,
                                                 float spatial_scale, int sampling_ratio, int aligned,
                                                 const ra::bf16_bits_t* grad, const float* boxes,
                                                 const int* box_indices, ra::bf16_bits_t* grad_features) {
  const ra::Shape shape = MakeShape(dims, pooled_h, pooled_w);
  const long long pixels = shape.batch * shape.height * shape.width;
  std::vector<float> sums(static_cast<size_t>(pixels * shape.channels), 0.0f);
  ra::BackwardChannelsCpu<ra::bf16_bits_t, float>(shape, MakeAttrs(spatial_scale, sampling_ratio, aligned),
                                                  grad, boxes, box_indices, sums.data(), 0, shape.channels);
  ra::NarrowChannelsCpu<ra::bf16_bits_t, float>(sums.data(), grad_features, pixels, shape.channels, 0,
                                                shape.channels);
  return 0;
}

#if defined(__CUDACC__)
// forward(features -> pooled) and backward(gradient -> features' gradient, zeroed first) on
// `stream` (float32 / float64: the accumulator is the output itself, no scratch buffer).
#define MRCNN_HARNESS_CUDA(SUFFIX, T)                                                             \
  extern "C" int mrcnn_roi_align_forward_cuda_##SUFFIX(                                           \
      const long long* dims, int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio, \
      int aligned, const T* values, const T* boxes, const int* box_indices, T* output,            \
      void* stream) {                                                                             \
    return static_cast<int>(ra::LaunchRoiAlignForward<T>(                                         \
        MakeShape(dims, pooled_h, pooled_w), MakeAttrs(spatial_scale, sampling_ratio, aligned),   \
        values, boxes, box_indices, output, static_cast<cudaStream_t>(stream)));                  \
  }                                                                                               \
  extern "C" int mrcnn_roi_align_backward_cuda_##SUFFIX(                                          \
      const long long* dims, int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio, \
      int aligned, const T* values, const T* boxes, const int* box_indices, T* output,            \
      void* stream) {                                                                             \
    return static_cast<int>(ra::LaunchRoiAlignBackward<T>(                                        \
        MakeShape(dims, pooled_h, pooled_w), MakeAttrs(spatial_scale, sampling_ratio, aligned),   \
        values, boxes, box_indices, output, static_cast<T*>(nullptr),                             \
        static_cast<cudaStream_t>(stream)));                                                      \
  }

MRCNN_HARNESS_CUDA(f32, float)
MRCNN_HARNESS_CUDA(f64, double)

extern "C" int mrcnn_roi_align_forward_cuda_bf16(const long long* dims, int pooled_h, int pooled_w,
                                                 float spatial_scale, int sampling_ratio, int aligned,
                                                 const ra::bf16_bits_t* features, const float* boxes,
                                                 const int* box_indices, ra::bf16_bits_t* output,
                                                 void* stream) {
  return static_cast<int>(ra::LaunchRoiAlignForward<ra::bf16_bits_t, float>(
      MakeShape(dims, pooled_h, pooled_w), MakeAttrs(spatial_scale, sampling_ratio, aligned), features,
      boxes, box_indices, output, static_cast<cudaStream_t>(stream)));
}

// The float32 scratch the sums need is allocated and freed on the stream here (the TF op gets it
// from TensorFlow's allocator).
extern "C" int mrcnn_roi_align_backward_cuda_bf16(const long long* dims, int pooled_h, int pooled_w,
                                                  float spatial_scale, int sampling_ratio, int aligned,
                                                  const ra::bf16_bits_t* grad, const float* boxes,
                                                  const int* box_indices, ra::bf16_bits_t* grad_features,
                                                  void* stream) {
  const ra::Shape shape = MakeShape(dims, pooled_h, pooled_w);
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  const size_t bytes = sizeof(float) * static_cast<size_t>(shape.batch * shape.height * shape.width *
                                                           shape.channels);
  float* scratch = nullptr;
  cudaError_t status = cudaMallocAsync(reinterpret_cast<void**>(&scratch), bytes > 0 ? bytes : 1,
                                       cuda_stream);
  if (status != cudaSuccess) return static_cast<int>(status);
  status = ra::LaunchRoiAlignBackward<ra::bf16_bits_t, float>(
      shape, MakeAttrs(spatial_scale, sampling_ratio, aligned), grad, boxes, box_indices,
      grad_features, scratch, cuda_stream);
  const cudaError_t freed = cudaFreeAsync(scratch, cuda_stream);
  return static_cast<int>(status != cudaSuccess ? status : freed);
}

extern "C" int mrcnn_roi_align_harness_has_cuda() { return 1; }
#else
extern "C" int mrcnn_roi_align_harness_has_cuda() { return 0; }
#endif
