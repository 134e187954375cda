// TensorFlow kernels for RoiAlign / RoiAlignGrad: input validation, allocation, threading.
// The numbers come from roi_align.h (TF-independent). CPU kernels run on TF's intra-op thread
// pool (Shard); the CUDA kernels are registered here under GOOGLE_CUDA and launched from
// roi_align_kernels.cu.cc.

#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "roi_align.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/work_sharder.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace mrcnn {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
using ::tensorflow::errors::InvalidArgument;
using CPUDevice = Eigen::ThreadPoolDevice;

namespace ra = ::mrcnn::roi_align;

#if GOOGLE_CUDA
using ::tensorflow::DEVICE_GPU;
using GPUDevice = Eigen::GpuDevice;
namespace roi_align {
// Defined in roi_align.h and explicitly instantiated in roi_align_kernels.cu.cc for (S, T) =
// (float, float), (double, double) and (bfloat16 bits, float).
template <typename S, typename T>
cudaError_t LaunchRoiAlignForward(const Shape& shape, const Attrs& attrs, const S* features,
                                  const T* boxes, const int* box_indices, S* output,
                                  cudaStream_t stream);
template <typename S, typename T>
cudaError_t LaunchRoiAlignBackward(const Shape& shape, const Attrs& attrs, const S* grad,
                                   const T* boxes, const int* box_indices, S* grad_features,
                                   T* scratch, cudaStream_t stream);
}  // namespace roi_align
#endif

// The TF dtype T of the features -> the kernels' storage type S and compute (boxes) type C.
template <typename T>
struct KernelTypes {
  using Storage = T;
  using Compute = T;
};
template <>
struct KernelTypes<Eigen::bfloat16> {
  static_assert(sizeof(Eigen::bfloat16) == sizeof(ra::bf16_bits_t), "bfloat16 is 16 bits");
  using Storage = ra::bf16_bits_t;  // Eigen::bfloat16 holds exactly these bits
  using Compute = float;
};
template <typename T>
constexpr bool NeedsScratch() {
  return !std::is_same<typename KernelTypes<T>::Storage, typename KernelTypes<T>::Compute>::value;
}

template <typename T>
const typename KernelTypes<T>::Storage* StorageData(const Tensor& tensor) {
  return reinterpret_cast<const typename KernelTypes<T>::Storage*>(tensor.flat<T>().data());
}
template <typename T>
typename KernelTypes<T>::Storage* StorageData(Tensor* tensor) {
  return reinterpret_cast<typename KernelTypes<T>::Storage*>(tensor->flat<T>().data());
}

namespace {

// Attributes shared by both ops, read and checked once at construction.
struct OpAttrs {
  int pooled_h = 0;
  int pooled_w = 0;
  ra::Attrs attrs{};

  explicit OpAttrs(OpKernelConstruction* ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pooled_height", &pooled_h));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pooled_width", &pooled_w));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("spatial_scale", &attrs.spatial_scale));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("sampling_ratio", &attrs.sampling_ratio));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("aligned", &attrs.aligned));
    OP_REQUIRES(ctx, pooled_h >= 1 && pooled_w >= 1,
                InvalidArgument("RoiAlign: pooled_height and pooled_width must be >= 1, got ",
                                pooled_h, " and ", pooled_w));
    OP_REQUIRES(ctx,
                attrs.spatial_scale > 0.0f &&
                    attrs.spatial_scale < std::numeric_limits<float>::infinity(),
                InvalidArgument("RoiAlign: spatial_scale must be finite and > 0, got ",
                                attrs.spatial_scale));
  }
};

// Checks boxes [K, 4] and box_indices [K]; returns K.
bool CheckBoxes(OpKernelContext* ctx, const Tensor& boxes, const Tensor& box_indices,
                int64_t* num_boxes) {
  if (!(boxes.dims() == 2 && boxes.dim_size(1) == 4)) {
    ctx->CtxFailure(InvalidArgument("RoiAlign: boxes must be [K, 4] (y1, x1, y2, x2), got shape ",
                                    boxes.shape().DebugString()));
    return false;
  }
  if (!TensorShapeUtils::IsVector(box_indices.shape()) ||
      box_indices.dim_size(0) != boxes.dim_size(0)) {
    ctx->CtxFailure(InvalidArgument("RoiAlign: box_indices must be [K] with K = ",
                                    boxes.dim_size(0), " (rows of boxes), got shape ",
                                    box_indices.shape().DebugString()));
    return false;
  }
  *num_boxes = boxes.dim_size(0);
  return true;
}

// CPU only: every box index must address an image of the batch.
bool CheckBoxIndicesHost(OpKernelContext* ctx, const Tensor& box_indices, int64_t batch) {
  const auto indices = box_indices.flat<int32_t>();
  for (int64_t k = 0; k < indices.size(); ++k) {
    if (indices(k) < 0 || indices(k) >= batch) {
      ctx->CtxFailure(InvalidArgument("RoiAlign: box_indices[", k, "] = ", indices(k),
                                      " is not in [0, ", batch, ") (batch size of features)"));
      return false;
    }
  }
  return true;
}

ra::Shape MakeShape(const TensorShape& features, int64_t num_boxes, const OpAttrs& op) {
  ra::Shape shape;
  shape.batch = features.dim_size(0);
  shape.height = features.dim_size(1);
  shape.width = features.dim_size(2);
  shape.channels = features.dim_size(3);
  shape.num_boxes = num_boxes;
  shape.pooled_h = op.pooled_h;
  shape.pooled_w = op.pooled_w;
  return shape;
}

// Rough cost of one bin-channel (4 taps per sample) for Shard's splitting decision.
int64_t TapsPerBin(const ra::Attrs& attrs) {
  const int64_t grid = attrs.sampling_ratio > 0 ? attrs.sampling_ratio : 2;
  return 4 * grid * grid;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Device-specific launch
// ------------------------------------------------------------------------------------------------
template <typename Device, typename T>
struct RoiAlignLauncher;

template <typename T>
struct RoiAlignLauncher<CPUDevice, T> {
  using S = typename KernelTypes<T>::Storage;
  using C = typename KernelTypes<T>::Compute;

  static void Forward(OpKernelContext* ctx, const ra::Shape& shape, const ra::Attrs& attrs,
                      const Tensor& features, const Tensor& boxes, const Tensor& box_indices,
                      Tensor* output) {
    if (!CheckBoxIndicesHost(ctx, box_indices, shape.batch)) return;
    const S* f = StorageData<T>(features);
    const C* b = boxes.flat<C>().data();
    const int32_t* idx = box_indices.flat<int32_t>().data();
    S* out = StorageData<T>(output);
    const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t cost = static_cast<int64_t>(shape.pooled_h) * shape.pooled_w *
                         TapsPerBin(attrs) * std::max<int64_t>(shape.channels, 1) * 2;
    // One work unit per box; boxes write disjoint outputs.
    tensorflow::Shard(workers.num_threads, workers.workers, shape.num_boxes, cost,
                      [&](int64_t begin, int64_t end) {
                        ra::ForwardBoxesCpu<S, C>(shape, attrs, f, b, idx, out, begin, end);
                      });
  }

  static void Backward(OpKernelContext* ctx, const ra::Shape& shape, const ra::Attrs& attrs,
                       const Tensor& grads, const Tensor& boxes, const Tensor& box_indices,
                       Tensor* grad_features) {
    if (!CheckBoxIndicesHost(ctx, box_indices, shape.batch)) return;
    // The sums: grad_features itself, or (bfloat16) a float32 scratch tensor rounded at the end.
    Tensor scratch;
    Tensor* sums = grad_features;
    if (NeedsScratch<T>()) {
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DataTypeToEnum<C>::value,
                                             grad_features->shape(), &scratch));
      sums = &scratch;
    }
    sums->flat<C>().device(ctx->eigen_device<CPUDevice>()) = sums->flat<C>().constant(C(0));
    if (shape.channels == 0) return;
    const S* g = StorageData<T>(grads);
    const C* b = boxes.flat<C>().data();
    const int32_t* idx = box_indices.flat<int32_t>().data();
    C* acc = sums->flat<C>().data();
    const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
    // Threads own disjoint channel blocks: no atomics, deterministic sums. One block per thread
    // (every block has the same work): each block walks all taps, so smaller blocks would repeat
    // the per-tap overhead; at least 16 channels per block.
    const int64_t threads = std::max(workers.num_threads, 1);
    const int64_t block = std::max<int64_t>(16, (shape.channels + threads - 1) / threads);
    const int64_t num_blocks = (shape.channels + block - 1) / block;
    const int64_t cost = shape.num_boxes * shape.pooled_h * shape.pooled_w * TapsPerBin(attrs) *
                         block * 2;
    if (shape.num_boxes > 0) {
      tensorflow::Shard(workers.num_threads, workers.workers, num_blocks, cost,
                        [&](int64_t begin, int64_t end) {
                          const int64_t c0 = begin * block;
                          const int64_t c1 = std::min(end * block, shape.channels);
                          ra::BackwardChannelsCpu<S, C>(shape, attrs, g, b, idx, acc, c0, c1);
                        });
    }
    if (NeedsScratch<T>()) {
      // Rounded to bfloat16 in contiguous pixel ranges, one per work unit.
      S* out = StorageData<T>(grad_features);
      const int64_t pixels = shape.batch * shape.height * shape.width;
      tensorflow::Shard(workers.num_threads, workers.workers, pixels, shape.channels * 2,
                        [&](int64_t begin, int64_t end) {
                          ra::NarrowCpu<S, C>(acc + begin * shape.channels,
                                              out + begin * shape.channels,
                                              (end - begin) * shape.channels);
                        });
    }
  }
};

#if GOOGLE_CUDA
template <typename T>
struct RoiAlignLauncher<GPUDevice, T> {
  using S = typename KernelTypes<T>::Storage;
  using C = typename KernelTypes<T>::Compute;

  // Box indices live in device memory: they are not checked on the host (that would need a
  // synchronous copy); the CUDA kernels give 0 (and no gradient) for an out-of-range index.
  static void Forward(OpKernelContext* ctx, const ra::Shape& shape, const ra::Attrs& attrs,
                      const Tensor& features, const Tensor& boxes, const Tensor& box_indices,
                      Tensor* output) {
    const cudaError_t status = ra::LaunchRoiAlignForward<S, C>(
        shape, attrs, StorageData<T>(features), boxes.flat<C>().data(),
        box_indices.flat<int32_t>().data(), StorageData<T>(output),
        ctx->eigen_device<GPUDevice>().stream());
    OP_REQUIRES(ctx, status == cudaSuccess,
                ::tensorflow::errors::Internal("RoiAlign CUDA launch failed: ",
                                               cudaGetErrorString(status)));
  }

  static void Backward(OpKernelContext* ctx, const ra::Shape& shape, const ra::Attrs& attrs,
                       const Tensor& grads, const Tensor& boxes, const Tensor& box_indices,
                       Tensor* grad_features) {
    Tensor scratch;  // bfloat16: float32 sums (atomics), rounded into grad_features at the end
    C* sums = nullptr;
    if (NeedsScratch<T>()) {
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DataTypeToEnum<C>::value,
                                             grad_features->shape(), &scratch));
      sums = scratch.flat<C>().data();
    }
    const cudaError_t status = ra::LaunchRoiAlignBackward<S, C>(
        shape, attrs, StorageData<T>(grads), boxes.flat<C>().data(),
        box_indices.flat<int32_t>().data(), StorageData<T>(grad_features), sums,
        ctx->eigen_device<GPUDevice>().stream());
    OP_REQUIRES(ctx, status == cudaSuccess,
                ::tensorflow::errors::Internal("RoiAlignGrad CUDA launch failed: ",
                                               cudaGetErrorString(status)));
  }
};
#endif  // GOOGLE_CUDA

// ------------------------------------------------------------------------------------------------
// Op kernels
// ------------------------------------------------------------------------------------------------
template <typename Device, typename T>
class RoiAlignOp : public OpKernel {
 public:
  explicit RoiAlignOp(OpKernelConstruction* ctx) : OpKernel(ctx), op_(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& boxes = ctx->input(1);
    const Tensor& box_indices = ctx->input(2);
    OP_REQUIRES(ctx, features.dims() == 4,
                InvalidArgument("RoiAlign: features must be [N, H, W, C] (NHWC), got shape ",
                                features.shape().DebugString()));
    int64_t num_boxes = 0;
    if (!CheckBoxes(ctx, boxes, box_indices, &num_boxes)) return;
    const ra::Shape shape = MakeShape(features.shape(), num_boxes, op_);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({num_boxes, op_.pooled_h, op_.pooled_w, shape.channels}),
                            &output));
    if (output->NumElements() == 0) return;  // no boxes or no channels
    RoiAlignLauncher<Device, T>::Forward(ctx, shape, op_.attrs, features, boxes, box_indices,
                                         output);
  }

 private:
  OpAttrs op_;
};

template <typename Device, typename T>
class RoiAlignGradOp : public OpKernel {
 public:
  explicit RoiAlignGradOp(OpKernelConstruction* ctx) : OpKernel(ctx), op_(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grads = ctx->input(0);
    const Tensor& boxes = ctx->input(1);
    const Tensor& box_indices = ctx->input(2);
    const Tensor& features_shape = ctx->input(3);
    int64_t num_boxes = 0;
    if (!CheckBoxes(ctx, boxes, box_indices, &num_boxes)) return;
    OP_REQUIRES(ctx,
                TensorShapeUtils::IsVector(features_shape.shape()) &&
                    features_shape.NumElements() == 4,
                InvalidArgument("RoiAlignGrad: features_shape must be a vector of 4, got shape ",
                                features_shape.shape().DebugString()));
    const auto dims = features_shape.vec<int32_t>();
    TensorShape feature_shape;
    for (int i = 0; i < 4; ++i) {
      OP_REQUIRES(ctx, dims(i) >= 0,
                  InvalidArgument("RoiAlignGrad: features_shape[", i, "] = ", dims(i), " < 0"));
      OP_REQUIRES_OK(ctx, feature_shape.AddDimWithStatus(dims(i)));
    }
    OP_REQUIRES(ctx,
                grads.dims() == 4 && grads.dim_size(0) == num_boxes &&
                    grads.dim_size(1) == op_.pooled_h && grads.dim_size(2) == op_.pooled_w &&
                    grads.dim_size(3) == feature_shape.dim_size(3),
                InvalidArgument("RoiAlignGrad: grads must be [K, pooled_height, pooled_width, C] = [",
                                num_boxes, ", ", op_.pooled_h, ", ", op_.pooled_w, ", ",
                                feature_shape.dim_size(3), "], got ",
                                grads.shape().DebugString()));
    Tensor* grad_features = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, feature_shape, &grad_features));
    const ra::Shape shape = MakeShape(feature_shape, num_boxes, op_);
    RoiAlignLauncher<Device, T>::Backward(ctx, shape, op_.attrs, grads, boxes, box_indices,
                                          grad_features);
  }

 private:
  OpAttrs op_;
};

// features_shape is read on the host to allocate the output (on the CPU all memory is host memory).
#define MRCNN_REGISTER(DEVICE, DEVICE_TYPE, T, TB)                                         \
  REGISTER_KERNEL_BUILDER(Name("RoiAlign")                                                 \
                              .Device(DEVICE)                                              \
                              .TypeConstraint<T>("T")                                      \
                              .TypeConstraint<TB>("Tboxes"),                               \
                          RoiAlignOp<DEVICE_TYPE, T>);                                     \
  REGISTER_KERNEL_BUILDER(Name("RoiAlignGrad")                                             \
                              .Device(DEVICE)                                              \
                              .TypeConstraint<T>("T")                                      \
                              .TypeConstraint<TB>("Tboxes")                                \
                              .HostMemory("features_shape"),                               \
                          RoiAlignGradOp<DEVICE_TYPE, T>);
MRCNN_REGISTER(DEVICE_CPU, CPUDevice, float, float)
MRCNN_REGISTER(DEVICE_CPU, CPUDevice, double, double)
MRCNN_REGISTER(DEVICE_CPU, CPUDevice, Eigen::bfloat16, float)
#if GOOGLE_CUDA
MRCNN_REGISTER(DEVICE_GPU, GPUDevice, float, float)
MRCNN_REGISTER(DEVICE_GPU, GPUDevice, double, double)
MRCNN_REGISTER(DEVICE_GPU, GPUDevice, Eigen::bfloat16, float)
#endif  // GOOGLE_CUDA
#undef MRCNN_REGISTER

}  // namespace mrcnn
