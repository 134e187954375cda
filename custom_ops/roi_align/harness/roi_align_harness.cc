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

// The entry points' bodies, for storage type S and compute (boxes) type T.
template <typename S, typename T>
int ForwardCpu(const long long* dims, int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio,
               int aligned, const S* features, const T* boxes, const int* box_indices, S* output) {
  const ra::Shape shape = MakeShape(dims, pooled_h, pooled_w);
  ra::ForwardBoxesCpu<S, T>(shape, MakeAttrs(spatial_scale, sampling_ratio, aligned), features, boxes,
                            box_indices, output, 0, shape.num_boxes);
  return 0;
}

// grad_features is zeroed here, as the op does; bfloat16 sums in a float32 buffer, rounded once.
template <typename S, typename T>
int BackwardCpu(const long long* dims, int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio,
                int aligned, const S* grad, const T* boxes, const int* box_indices, S* grad_features) {
  const ra::Shape shape = MakeShape(dims, pooled_h, pooled_w);
  const long long count = shape.batch * shape.height * shape.width * shape.channels;
  const bool narrow = !std::is_same<S, T>::value;
  std::vector<T> scratch(narrow ? static_cast<size_t>(count) : 0);
  T* sums = narrow ? scratch.data() : reinterpret_cast<T*>(grad_features);
  for (long long i = 0; i < count; ++i) sums[i] = static_cast<T>(0);
  ra::BackwardChannelsCpu<S, T>(shape, MakeAttrs(spatial_scale, sampling_ratio, aligned), grad, boxes,
                                box_indices, sums, 0, shape.channels);
  if (narrow) ra::NarrowCpu<S, T>(sums, grad_features, count);
  return 0;
}

#if defined(__CUDACC__)
template <typename S, typename T>
int ForwardCuda(const long long* dims, int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio,
                int aligned, const S* features, const T* boxes, const int* box_indices, S* output, void* stream) {
  return static_cast<int>(ra::LaunchRoiAlignForward<S, T>(
      MakeShape(dims, pooled_h, pooled_w), MakeAttrs(spatial_scale, sampling_ratio, aligned), features, boxes,
      box_indices, output, static_cast<cudaStream_t>(stream)));
}

// Zeroes the gradient first. bfloat16's float32 scratch is allocated and freed on the stream here
// (the TF op gets it from TensorFlow's allocator); float32 / float64 sum into the output itself.
template <typename S, typename T>
int BackwardCuda(const long long* dims, int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio,
                 int aligned, const S* grad, const T* boxes, const int* box_indices, S* grad_features,
                 void* stream) {
  const ra::Shape shape = MakeShape(dims, pooled_h, pooled_w);
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  T* scratch = nullptr;
  if (!std::is_same<S, T>::value) {
    const size_t bytes = sizeof(T) * static_cast<size_t>(shape.batch * shape.height * shape.width *
                                                         shape.channels);
    const cudaError_t allocated = cudaMallocAsync(reinterpret_cast<void**>(&scratch), bytes > 0 ? bytes : 1,
                                                  cuda_stream);
    if (allocated != cudaSuccess) return static_cast<int>(allocated);
  }
  const cudaError_t status = ra::LaunchRoiAlignBackward<S, T>(
      shape, MakeAttrs(spatial_scale, sampling_ratio, aligned), grad, boxes, box_indices, grad_features,
      scratch, cuda_stream);
  const cudaError_t freed = scratch != nullptr ? cudaFreeAsync(scratch, cuda_stream) : cudaSuccess;
  return static_cast<int>(status != cudaSuccess ? status : freed);
}
#endif

}  // namespace

// Entry points: (dims, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, values, boxes,
// box_indices, output[, stream]), values = features or gradient, output = pooled features or the
// features' gradient; S the values' type, T the boxes'.
#define MRCNN_HARNESS_CPU(SUFFIX, S, T)                                                            \
  extern "C" int mrcnn_roi_align_forward_cpu_##SUFFIX(                                             \
      const long long* dims, int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio,  \
      int aligned, const S* values, const T* boxes, const int* box_indices, S* output) {           \
    return ForwardCpu<S, T>(dims, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned,      \
                            values, boxes, box_indices, output);                                   \
  }                                                                                                \
  extern "C" int mrcnn_roi_align_backward_cpu_##SUFFIX(                                            \
      const long long* dims, int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio,  \
      int aligned, const S* values, const T* boxes, const int* box_indices, S* output) {           \
    return BackwardCpu<S, T>(dims, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned,     \
                             values, boxes, box_indices, output);                                  \
  }

MRCNN_HARNESS_CPU(f32, float, float)
MRCNN_HARNESS_CPU(f64, double, double)
MRCNN_HARNESS_CPU(bf16, ra::bf16_bits_t, float)  // raw bfloat16 bits (uint16), float32 boxes

#if defined(__CUDACC__)
#define MRCNN_HARNESS_CUDA(SUFFIX, S, T)                                                           \
  extern "C" int mrcnn_roi_align_forward_cuda_##SUFFIX(                                            \
      const long long* dims, int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio,  \
      int aligned, const S* values, const T* boxes, const int* box_indices, S* output,             \
      void* stream) {                                                                              \
    return ForwardCuda<S, T>(dims, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned,     \
                             values, boxes, box_indices, output, stream);                          \
  }                                                                                                \
  extern "C" int mrcnn_roi_align_backward_cuda_##SUFFIX(                                           \
      const long long* dims, int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio,  \
      int aligned, const S* values, const T* boxes, const int* box_indices, S* output,             \
      void* stream) {                                                                              \
    return BackwardCuda<S, T>(dims, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned,    \
                              values, boxes, box_indices, output, stream);                         \
  }

MRCNN_HARNESS_CUDA(f32, float, float)
MRCNN_HARNESS_CUDA(f64, double, double)
MRCNN_HARNESS_CUDA(bf16, ra::bf16_bits_t, float)

extern "C" int mrcnn_roi_align_harness_has_cuda() { return 1; }
#else
extern "C" int mrcnn_roi_align_harness_has_cuda() { return 0; }
#endif
