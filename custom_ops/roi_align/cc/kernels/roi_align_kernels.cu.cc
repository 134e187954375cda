// CUDA instantiation of the RoIAlign launchers for the TensorFlow op (GOOGLE_CUDA builds).
// The kernels themselves live in roi_align.h (TF-independent, also usable from nvcc/CuPy);
// roi_align_kernels.cc registers the DEVICE_GPU kernels that call these launchers on TF's stream.

#if GOOGLE_CUDA

#include <cuda_runtime.h>

#include "roi_align.h"

namespace mrcnn {
namespace roi_align {

template cudaError_t LaunchRoiAlignForward<float>(const Shape&, const Attrs&, const float*,
                                                  const float*, const int*, float*, cudaStream_t);
template cudaError_t LaunchRoiAlignForward<double>(const Shape&, const Attrs&, const double*,
                                                   const double*, const int*, double*,
                                                   cudaStream_t);
template cudaError_t LaunchRoiAlignBackward<float>(const Shape&, const Attrs&, const float*,
                                                   const float*, const int*, float*,
                                                   cudaStream_t);
template cudaError_t LaunchRoiAlignBackward<double>(const Shape&, const Attrs&, const double*,
                                                    const double*, const int*, double*,
                                                    cudaStream_t);

}  // namespace roi_align
}  // namespace mrcnn

#endif  // GOOGLE_CUDA
