// CUDA instantiation of the RoIAlign launchers for the TensorFlow op (GOOGLE_CUDA builds):
// float, double and bfloat16 (stored as its bits, computed in float).
// The kernels themselves live in roi_align.h (TF-independent, also usable from nvcc/CuPy);
// roi_align_kernels.cc registers the DEVICE_GPU kernels that call these launchers on TF's stream.

#if GOOGLE_CUDA

#include <cuda_runtime.h>

#include "roi_align.h"

namespace mrcnn {
namespace roi_align {

template cudaError_t LaunchRoiAlignForward<float, float>(const Shape&, const Attrs&, const float*,
                                                         const float*, const int*, float*,
                                                         cudaStream_t);
template cudaError_t LaunchRoiAlignForward<double, double>(const Shape&, const Attrs&,
                                                           const double*, const double*,
                                                           const int*, double*, cudaStream_t);
template cudaError_t LaunchRoiAlignForward<bf16_bits_t, float>(const Shape&, const Attrs&,
                                                               const bf16_bits_t*, const float*,
                                                               const int*, bf16_bits_t*,
                                                               cudaStream_t);
template cudaError_t LaunchRoiAlignBackward<float, float>(const Shape&, const Attrs&, const float*,
                                                          const float*, const int*, float*,
                                                          float*, cudaStream_t);
template cudaError_t LaunchRoiAlignBackward<double, double>(const Shape&, const Attrs&,
                                                            const double*, const double*,
                                                            const int*, double*, double*,
                                                            cudaStream_t);
template cudaError_t LaunchRoiAlignBackward<bf16_bits_t, float>(const Shape&, const Attrs&,
                                                                const bf16_bits_t*, const float*,
                                                                const int*, bf16_bits_t*, float*,
                                                                cudaStream_t);

}  // namespace roi_align
}  // namespace mrcnn

#endif  // GOOGLE_CUDA
