// RoIAlign forward/backward math, independent of TensorFlow.
//
// This header holds everything that computes numbers: the RoI geometry, the per-axis bilinear
// taps, the CPU loops (over a range of boxes / channels, so a caller can thread them) and the
// CUDA kernels plus their launchers (under __CUDACC__). The TensorFlow op
// (roi_align_kernels.cc / .cu.cc) only validates inputs, allocates and shards. Because nothing
// here includes TF, the same kernels can be driven from a plain nvcc program or CuPy
// (RawModule with -D MRCNN_ROI_ALIGN_NO_LAUNCHERS) on a machine without TensorFlow.
//
// Storage and compute types: features, output and gradients are stored as S, boxes and all
// arithmetic use T. S = T = float or double, or S = bfloat16 with T = float: bfloat16 is stored as
// its raw 16 bits (std::uint16_t, the layout of Eigen::bfloat16), widened exactly to float on load
// and rounded to nearest-even on store (as TensorFlow's Cast), with float sums in between (the
// gradient accumulates in a float scratch buffer), so results equal the float32 computation on
// the widened inputs, rounded once.
//
// Layout and coordinates:
//   features      [N, H, W, C]  NHWC, row-major
//   boxes         [K, 4]        (y1, x1, y2, x2) in input-image pixels
//   box_indices   [K]           int32 image of each box
//   output        [K, PH, PW, C]
// Semantics (detectron2 / torchvision RoIAlign; see mrcnn/ops/roi_align.py for the prose):
//   offset = aligned ? 0.5 : 0;  start = y1 * scale - offset;  roi = y2 * scale - offset - start
//   aligned == false: roi = max(roi, 1)
//   bin = roi / PH;  grid = sampling_ratio > 0 ? sampling_ratio : ceil(roi / PH)
//   sample y = start + p * bin + (iy + 0.5) * bin / grid
//   a sample with y < -1 or y > H (x alike) contributes 0; otherwise clamp to [0, H - 1],
//   interpolate between floor(y) and floor(y) + 1; output = sum / max(grid_h * grid_w, 1).
// Bilinear weights and the validity rule are separable, so a sample's weight at (row, col) is
// wy(row) * wx(col); the 1 / count factor is folded into the row weights. The operation order
// matches the pure-TF fallback, so float32 forward results agree with it bit for bit when the
// fallback runs op by op (no FMA contraction on the default x86-64 target); inside a graph
// Grappler may reorder its arithmetic (differences of a few float32 ulps).

#ifndef MRCNN_CUSTOM_OPS_ROI_ALIGN_KERNELS_ROI_ALIGN_H_
#define MRCNN_CUSTOM_OPS_ROI_ALIGN_KERNELS_ROI_ALIGN_H_

#if !defined(__CUDACC_RTC__)
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#endif

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MRCNN_HD __host__ __device__ __forceinline__
#else
#define MRCNN_HD inline
#endif

namespace mrcnn {
namespace roi_align {

#if defined(__CUDACC_RTC__)
typedef long long index_t;
typedef unsigned short bf16_bits_t;
typedef unsigned int u32_t;
#else
typedef std::int64_t index_t;
typedef std::uint16_t bf16_bits_t;  // bfloat16 storage: the top 16 bits of a float32
typedef std::uint32_t u32_t;
#endif

// Storage -> compute. float and double are used as they are; bfloat16 widens exactly.
template <typename T>
MRCNN_HD T Widen(T value) {
  return value;
}
MRCNN_HD float Widen(bf16_bits_t bits) {
  const u32_t word = static_cast<u32_t>(bits) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(word);
#else
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
#endif
}

// Compute -> storage. float -> bfloat16 rounds to nearest, ties to even, and turns NaN into the
// quiet NaN 0x7FC0 / 0xFFC0: exactly Eigen's (TensorFlow's Cast) rounding.
template <typename T>
MRCNN_HD void Narrow(T value, T* out) {
  *out = value;
}
MRCNN_HD void Narrow(float value, bf16_bits_t* out) {
#if defined(__CUDA_ARCH__)
  const u32_t word = __float_as_uint(value);
#else
  u32_t word;
  std::memcpy(&word, &value, sizeof(word));
#endif
  // A select rather than an early return (GCC 12 vectorizes the channel loops over it).
  const u32_t rounded = (word + 0x7FFFu + ((word >> 16) & 1u)) >> 16;
  const u32_t quiet_nan = ((word >> 16) & 0x8000u) | 0x7FC0u;
  const bool is_nan = (word & 0x7FFFFFFFu) > 0x7F800000u;
  *out = static_cast<bf16_bits_t>(is_nan ? quiet_nan : rounded);
}

// Sizes of one call. All counts are >= 0; pooled sizes >= 1.
struct Shape {
  index_t batch;      // N
  index_t height;     // H
  index_t width;      // W
  index_t channels;   // C
  index_t num_boxes;  // K
  int pooled_h;       // PH
  int pooled_w;       // PW
};

struct Attrs {
  float spatial_scale;  // feature size / input size
  int sampling_ratio;   // samples per bin per axis; <= 0: adaptive
  bool aligned;         // half-pixel shift
};

// Geometry of one RoI in feature coordinates.
template <typename T>
struct Roi {
  T start_y, start_x;  // first feature coordinate (after the aligned shift)
  T bin_h, bin_w;      // bin size in feature pixels
  int grid_h, grid_w;  // samples per bin and axis (may be <= 0 for degenerate adaptive boxes)
  T inv_count;         // 1 / max(grid_h * grid_w, 1)
};

// ceil() for the adaptive grid without <cmath> (usable in NVRTC). NaN and huge values give an
// implementation-defined int; a non-positive grid simply means "no samples" (output 0).
template <typename T>
MRCNN_HD int CeilToInt(T value) {
  int truncated = static_cast<int>(value);
  return (static_cast<T>(truncated) < value) ? truncated + 1 : truncated;
}

template <typename T>
MRCNN_HD Roi<T> MakeRoi(const T* box, const Attrs& attrs, int pooled_h, int pooled_w) {
  const T scale = static_cast<T>(attrs.spatial_scale);
  const T offset = attrs.aligned ? static_cast<T>(0.5) : static_cast<T>(0);
  Roi<T> roi;
  roi.start_y = box[0] * scale - offset;
  roi.start_x = box[1] * scale - offset;
  T roi_h = (box[2] * scale - offset) - roi.start_y;
  T roi_w = (box[3] * scale - offset) - roi.start_x;
  if (!attrs.aligned) {  // legacy op: every RoI is at least one feature pixel
    roi_h = roi_h > static_cast<T>(1) ? roi_h : static_cast<T>(1);
    roi_w = roi_w > static_cast<T>(1) ? roi_w : static_cast<T>(1);
  }
  roi.bin_h = roi_h / static_cast<T>(pooled_h);
  roi.bin_w = roi_w / static_cast<T>(pooled_w);
  roi.grid_h = attrs.sampling_ratio > 0 ? attrs.sampling_ratio
                                        : CeilToInt(roi_h / static_cast<T>(pooled_h));
  roi.grid_w = attrs.sampling_ratio > 0 ? attrs.sampling_ratio
                                        : CeilToInt(roi_w / static_cast<T>(pooled_w));
  const long long count = static_cast<long long>(roi.grid_h) * roi.grid_w;
  roi.inv_count = static_cast<T>(1) / static_cast<T>(count > 1 ? count : 1);
  return roi;
}

// Coordinate of sample `step` (of `grid`) in bin `bin_index`; same operation order as the TF code.
template <typename T>
MRCNN_HD T SamplePos(T start, T bin, int bin_index, int step, int grid) {
  return (start + static_cast<T>(bin_index) * bin) +
         (static_cast<T>(step) + static_cast<T>(0.5)) * bin / static_cast<T>(grid);
}

// Interpolation taps of one coordinate along an axis of length `size`.
// Returns false (both weights 0) when the sample is outside [-1, size] (or NaN): it contributes 0.
template <typename T>
MRCNN_HD bool AxisTaps(T pos, index_t size, index_t* low, index_t* high, T* w_low, T* w_high) {
  if (!(pos >= static_cast<T>(-1) && pos <= static_cast<T>(size)) || size <= 0) {
    *low = 0;
    *high = 0;
    *w_low = static_cast<T>(0);
    *w_high = static_cast<T>(0);
    return false;
  }
  if (pos <= static_cast<T>(0)) pos = static_cast<T>(0);
  index_t lo = static_cast<index_t>(pos);  // pos in [0, size]: truncation is floor, no overflow
  index_t hi;
  if (lo >= size - 1) {  // at (or past) the last pixel: use it alone
    lo = size - 1;
    hi = lo;
    pos = static_cast<T>(lo);
  } else {
    hi = lo + 1;
  }
  const T frac = pos - static_cast<T>(lo);
  *low = lo;
  *high = hi;
  *w_low = static_cast<T>(1) - frac;
  *w_high = frac;
  return true;
}

#if !defined(__CUDACC_RTC__)
// The CPU loops below are compiled twice on x86-64 with GCC or Clang, for AVX2+FMA and for the
// baseline, and the loader picks the one the CPU runs (function multi-versioning): the channel
// loops vectorize 8 floats wide without building for one machine.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define MRCNN_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MRCNN_CPU_CLONES
#endif

// ---------------------------------------------------------------------------------------------
// CPU channel blocks. The forward sums kChannelBlock<T> channels of one bin over all its taps in
// registers: SumChannelBlock. Host builds with GCC or Clang use vector extensions (32-byte
// vectors: one AVX2 register, two SSE ones in the baseline clone; unaligned loads; bfloat16
// widened exactly, as Widen). Left to itself, GCC unrolled the tap loop by two and summed the
// channels one scalar at a time through memory, 2.7x slower than the per-tap loop it replaced.
// nvcc (the harness's CPU entry points) and other compilers sum every channel tap by tap, as the
// block's remainder is (also with -DMRCNN_ROI_ALIGN_PLAIN_LOOPS, to check both give the same bits).
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && !defined(MRCNN_ROI_ALIGN_PLAIN_LOOPS)
#define MRCNN_CPU_CHANNEL_BLOCKS 1
template <typename T>
constexpr int kChannelBlock = static_cast<int>(128 / sizeof(T));  // 32 floats, 16 doubles

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // the helpers below are always inlined: no call ABI
#endif
typedef float CpuF32x8 __attribute__((vector_size(32)));
typedef double CpuF64x4 __attribute__((vector_size(32)));
typedef u32_t CpuU32x8 __attribute__((vector_size(32)));

__attribute__((always_inline)) inline CpuF32x8 LoadWidened(const float* in) {
  CpuF32x8 v;
  std::memcpy(&v, in, sizeof(v));
  return v;
}
__attribute__((always_inline)) inline CpuF64x4 LoadWidened(const double* in) {
  CpuF64x4 v;
  std::memcpy(&v, in, sizeof(v));
  return v;
}
__attribute__((always_inline)) inline CpuF32x8 LoadWidened(const bf16_bits_t* in) {
  CpuU32x8 word;
  for (int i = 0; i < 8; ++i) word[i] = static_cast<u32_t>(in[i]) << 16;  // vpmovzxwd + vpslld
  CpuF32x8 v;
  std::memcpy(&v, &word, sizeof(v));
  return v;
}

// acc[c] = sum over taps t (in order) of weights[t] * in_t[c], c < kChannelBlock<T>, with
// in_t = image + offsets[t]: one multiply and one add per term, as the scalar loops.
template <typename S, typename T>
__attribute__((always_inline)) inline void SumChannelBlock(const S* image, const index_t* offsets,
                                                           const T* weights, int taps, T* acc) {
  typedef decltype(LoadWidened(image)) Vec;
  constexpr int kLanes = static_cast<int>(sizeof(Vec) / sizeof(T));
  static_assert(4 * kLanes == kChannelBlock<T>, "four vectors per block");
  Vec acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
  for (int t = 0; t < taps; ++t) {
    const Vec w = Vec{} + weights[t];  // broadcast
    const S* in = image + offsets[t];
    acc0 += w * LoadWidened(in);
    acc1 += w * LoadWidened(in + kLanes);
    acc2 += w * LoadWidened(in + 2 * kLanes);
    acc3 += w * LoadWidened(in + 3 * kLanes);
  }
  for (int l = 0; l < kLanes; ++l) {
    acc[l] = acc0[l];
    acc[kLanes + l] = acc1[l];
    acc[2 * kLanes + l] = acc2[l];
    acc[3 * kLanes + l] = acc3[l];
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // MRCNN_CPU_CHANNEL_BLOCKS

// ---------------------------------------------------------------------------------------------
// CPU. Taps of one box along one axis: [pooled][grid][2] (index, weight), weight 0 = skip.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct AxisTapTable {
  std::vector<index_t> index;
  std::vector<T> weight;
  int grid = 0;

  // scale multiplies every weight (used to fold 1 / count into the rows).
  void Build(T start, T bin, int grid_size, int pooled, index_t size, T scale) {
    grid = grid_size > 0 ? grid_size : 0;
    const size_t n = static_cast<size_t>(pooled) * grid * 2;
    index.assign(n, 0);
    weight.assign(n, static_cast<T>(0));
    for (int p = 0; p < pooled; ++p) {
      for (int i = 0; i < grid; ++i) {
        const size_t at = (static_cast<size_t>(p) * grid + i) * 2;
        T w_low, w_high;
        AxisTaps(SamplePos(start, bin, p, i, grid), size, &index[at], &index[at + 1], &w_low,
                 &w_high);
        weight[at] = w_low * scale;
        weight[at + 1] = w_high * scale;
      }
    }
  }
  // Number of taps (2 per sample) of one bin.
  int taps() const { return 2 * grid; }
};

// Forward for boxes [box_begin, box_end). Boxes must have valid image indices (checked by the
// caller). Writes every output element of those boxes. S: storage type, T: compute type.
//
// Each bin first lists its non-zero taps (pixel offset, weight wy * wx) in the (row, column)
// order of the other implementations; then channels are summed kBlock at a time over all taps in
// four vector registers and stored once. (Adding every tap into the output row in memory, one
// tap after another, spent most of its time loading and storing that row.) Each channel's sum
// still runs over the taps in the same order, with the same products and separate multiply and
// add (no FMA contraction in ISO C++ mode), so results do not change by a bit.
template <typename S, typename T = S>
MRCNN_CPU_CLONES void ForwardBoxesCpu(const Shape& shape, const Attrs& attrs, const S* features, const T* boxes,
                     const std::int32_t* box_indices, S* output, index_t box_begin,
                     index_t box_end) {
  const index_t C = shape.channels;
  const int PH = shape.pooled_h, PW = shape.pooled_w;
  AxisTapTable<T> rows, cols;
  std::vector<index_t> tap_offset;
  std::vector<T> tap_weight;
  std::vector<T> sums(static_cast<size_t>(C));  // channels summed tap by tap
  for (index_t k = box_begin; k < box_end; ++k) {
    const Roi<T> roi = MakeRoi(boxes + 4 * k, attrs, PH, PW);
    rows.Build(roi.start_y, roi.bin_h, roi.grid_h, PH, shape.height, roi.inv_count);
    cols.Build(roi.start_x, roi.bin_w, roi.grid_w, PW, shape.width, static_cast<T>(1));
    const S* image = features + static_cast<index_t>(box_indices[k]) * shape.height * shape.width * C;
    const int ta = rows.taps(), tb = cols.taps();
    tap_offset.resize(static_cast<size_t>(ta) * tb);
    tap_weight.resize(static_cast<size_t>(ta) * tb);
    for (int p = 0; p < PH; ++p) {
      for (int q = 0; q < PW; ++q) {
        int taps = 0;
        for (int a = 0; a < ta; ++a) {
          const T wy = rows.weight[static_cast<size_t>(p) * ta + a];
          if (wy == static_cast<T>(0)) continue;
          const index_t row = rows.index[static_cast<size_t>(p) * ta + a] * shape.width;
          for (int b = 0; b < tb; ++b) {
            const T wx = cols.weight[static_cast<size_t>(q) * tb + b];
            if (wx == static_cast<T>(0)) continue;
            tap_weight[taps] = wy * wx;
            tap_offset[taps] = (row + cols.index[static_cast<size_t>(q) * tb + b]) * C;
            ++taps;
          }
        }
        S* const bin_out = output + ((k * PH + p) * PW + q) * C;
        const index_t* const offsets = tap_offset.data();
        const T* const weights = tap_weight.data();
        index_t c0 = 0;
#if defined(MRCNN_CPU_CHANNEL_BLOCKS)
        constexpr int kBlock = kChannelBlock<T>;
        for (; c0 + kBlock <= C; c0 += kBlock) {
          T acc[kBlock];
          SumChannelBlock(image + c0, offsets, weights, taps, acc);
          for (int c = 0; c < kBlock; ++c) Narrow(acc[c], bin_out + c0 + c);
        }
#endif
        if (c0 < C) {  // the channels after the last block (all of them without blocks)
          T* __restrict__ out = sums.data();
          for (index_t c = c0; c < C; ++c) out[c] = static_cast<T>(0);
          for (int t = 0; t < taps; ++t) {
            const T w = weights[t];
            const S* __restrict__ in = image + offsets[t];
            for (index_t c = c0; c < C; ++c) out[c] += w * Widen(in[c]);
          }
          for (index_t c = c0; c < C; ++c) Narrow(out[c], bin_out + c);
        }
      }
    }
  }
}

// Backward for channels [c_begin, c_end) of all boxes: grad_features[.., c] += w * grad[.., c].
// Threads own disjoint channel ranges, so there are no races and the result is deterministic.
// grad_features (compute type T: for bfloat16 storage a float scratch buffer, rounded afterwards
// by NarrowCpu) must be zeroed by the caller.
template <typename S, typename T = S>
MRCNN_CPU_CLONES void BackwardChannelsCpu(const Shape& shape, const Attrs& attrs, const S* grad, const T* boxes,
                         const std::int32_t* box_indices, T* grad_features, index_t c_begin,
                         index_t c_end) {
  constexpr bool kWiden = !std::is_same<S, T>::value;
  const index_t C = shape.channels;
  const int PH = shape.pooled_h, PW = shape.pooled_w;
  AxisTapTable<T> rows, cols;
  // bfloat16: each bin's gradient widened once (not once per tap), channels [c_begin, c_end).
  std::vector<T> widened(kWiden ? static_cast<size_t>(c_end - c_begin) : 0);
  for (index_t k = 0; k < shape.num_boxes; ++k) {
    const Roi<T> roi = MakeRoi(boxes + 4 * k, attrs, PH, PW);
    rows.Build(roi.start_y, roi.bin_h, roi.grid_h, PH, shape.height, roi.inv_count);
    cols.Build(roi.start_x, roi.bin_w, roi.grid_w, PW, shape.width, static_cast<T>(1));
    T* image = grad_features + static_cast<index_t>(box_indices[k]) * shape.height * shape.width * C;
    const int ta = rows.taps(), tb = cols.taps();
    for (int p = 0; p < PH; ++p) {
      for (int q = 0; q < PW; ++q) {
        const S* bin_grad = grad + ((k * PH + p) * PW + q) * C;
        // g[c - offset] is the bin's gradient at channel c, in the compute type.
        const T* __restrict__ g = reinterpret_cast<const T*>(bin_grad);
        index_t offset = 0;
        if (kWiden) {
          for (index_t c = c_begin; c < c_end; ++c) widened[c - c_begin] = Widen(bin_grad[c]);
          g = widened.data();
          offset = c_begin;
        }
        for (int a = 0; a < ta; ++a) {
          const T wy = rows.weight[static_cast<size_t>(p) * ta + a];
          if (wy == static_cast<T>(0)) continue;
          const index_t row = rows.index[static_cast<size_t>(p) * ta + a] * shape.width;
          for (int b = 0; b < tb; ++b) {
            const T wx = cols.weight[static_cast<size_t>(q) * tb + b];
            if (wx == static_cast<T>(0)) continue;
            const T w = wy * wx;
            T* __restrict__ dst = image + (row + cols.index[static_cast<size_t>(q) * tb + b]) * C;
            for (index_t c = c_begin; c < c_end; ++c) dst[c] += w * g[c - offset];
          }
        }
      }
    }
  }
}

// Rounds `count` accumulated values to storage type S (the CPU twin of NarrowKernel).
template <typename S, typename T>
MRCNN_CPU_CLONES void NarrowCpu(const T* __restrict__ from, S* __restrict__ to, index_t count) {
  for (index_t i = 0; i < count; ++i) Narrow(from[i], to + i);
}
#endif  // !__CUDACC_RTC__

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// ---------------------------------------------------------------------------------------------
// CUDA: one thread per output element (k, p, q, c); consecutive threads take consecutive
// channels, so feature reads are coalesced in NHWC. Grid-stride loops.
// ---------------------------------------------------------------------------------------------

// Visits the taps of output bin (k, p, q) in the CPU / fallback order and calls
// fn(pixel_offset_in_image, weight) for each non-zero one.
template <typename T, typename Fn>
__device__ __forceinline__ void ForEachTap(const Shape& shape, const Roi<T>& roi, int p, int q,
                                           Fn fn) {
  for (int iy = 0; iy < roi.grid_h; ++iy) {
    index_t y_idx[2];
    T y_w[2];
    AxisTaps(SamplePos(roi.start_y, roi.bin_h, p, iy, roi.grid_h), shape.height, &y_idx[0],
             &y_idx[1], &y_w[0], &y_w[1]);
    for (int cy = 0; cy < 2; ++cy) {
      const T wy = y_w[cy] * roi.inv_count;
      if (wy == static_cast<T>(0)) continue;
      for (int ix = 0; ix < roi.grid_w; ++ix) {
        index_t x_idx[2];
        T x_w[2];
        AxisTaps(SamplePos(roi.start_x, roi.bin_w, q, ix, roi.grid_w), shape.width, &x_idx[0],
                 &x_idx[1], &x_w[0], &x_w[1]);
        for (int cx = 0; cx < 2; ++cx) {
          if (x_w[cx] == static_cast<T>(0)) continue;
          fn(y_idx[cy] * shape.width + x_idx[cx], wy * x_w[cx]);
        }
      }
    }
  }
}

// S: storage type of features / output, T: compute type (see the top of this file).
template <typename S, typename T = S>
__global__ void RoiAlignForwardKernel(Shape shape, Attrs attrs, const S* __restrict__ features,
                                      const T* __restrict__ boxes,
                                      const int* __restrict__ box_indices, S* __restrict__ output) {
  const index_t C = shape.channels;
  const index_t total = shape.num_boxes * shape.pooled_h * shape.pooled_w * C;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    const index_t c = i % C;
    const int q = static_cast<int>((i / C) % shape.pooled_w);
    const int p = static_cast<int>((i / C / shape.pooled_w) % shape.pooled_h);
    const index_t k = i / C / shape.pooled_w / shape.pooled_h;
    const int b = box_indices[k];
    T sum = static_cast<T>(0);
    if (b >= 0 && b < shape.batch) {  // out-of-range indices are rejected on the CPU; here: 0
      const Roi<T> roi = MakeRoi(boxes + 4 * k, attrs, shape.pooled_h, shape.pooled_w);
      const S* image = features + static_cast<index_t>(b) * shape.height * shape.width * C + c;
      ForEachTap(shape, roi, p, q, [&](index_t pixel, T w) { sum += w * Widen(image[pixel * C]); });
    }
    Narrow(sum, output + i);
  }
}

// grad_features has the compute type T (for bfloat16 storage: a float scratch buffer that
// NarrowKernel then rounds).
template <typename S, typename T = S>
__global__ void RoiAlignBackwardKernel(Shape shape, Attrs attrs, const S* __restrict__ grad,
                                       const T* __restrict__ boxes,
                                       const int* __restrict__ box_indices,
                                       T* __restrict__ grad_features) {
  const index_t C = shape.channels;
  const index_t total = shape.num_boxes * shape.pooled_h * shape.pooled_w * C;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    const index_t c = i % C;
    const int q = static_cast<int>((i / C) % shape.pooled_w);
    const int p = static_cast<int>((i / C / shape.pooled_w) % shape.pooled_h);
    const index_t k = i / C / shape.pooled_w / shape.pooled_h;
    const int b = box_indices[k];
    if (b < 0 || b >= shape.batch) continue;
    const T g = Widen(grad[i]);
    if (g == static_cast<T>(0)) continue;
    const Roi<T> roi = MakeRoi(boxes + 4 * k, attrs, shape.pooled_h, shape.pooled_w);
    T* image = grad_features + static_cast<index_t>(b) * shape.height * shape.width * C + c;
    // Many bins touch the same pixel: atomics (float and double are native on sm_60+).
    ForEachTap(shape, roi, p, q, [&](index_t pixel, T w) { atomicAdd(image + pixel * C, w * g); });
  }
}

template <typename S, typename T>
__global__ void NarrowKernel(index_t count, const T* __restrict__ from, S* __restrict__ to) {
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    Narrow(from[i], to + i);
  }
}

#if !defined(__CUDACC_RTC__) && !defined(MRCNN_ROI_ALIGN_NO_LAUNCHERS)
// Host launchers (plain CUDA runtime). Return the launch error, cudaSuccess when fine.
inline int RoiAlignBlocks(index_t total, int threads) {
  index_t blocks = (total + threads - 1) / threads;
  const index_t max_blocks = 65535LL * 8;  // grid-stride loops cover the rest
  if (blocks > max_blocks) blocks = max_blocks;
  return static_cast<int>(blocks < 1 ? 1 : blocks);
}

template <typename S, typename T = S>
cudaError_t LaunchRoiAlignForward(const Shape& shape, const Attrs& attrs, const S* features,
                                  const T* boxes, const int* box_indices, S* output,
                                  cudaStream_t stream) {
  const index_t total = shape.num_boxes * shape.pooled_h * shape.pooled_w * shape.channels;
  if (total == 0) return cudaSuccess;
  const int threads = 256;
  RoiAlignForwardKernel<S, T><<<RoiAlignBlocks(total, threads), threads, 0, stream>>>(
      shape, attrs, features, boxes, box_indices, output);
  return cudaGetLastError();
}

// Writes grad_features ([N, H, W, C]): zeroes the accumulator and adds into it. With S == T the
// accumulator is grad_features itself (scratch may be null); otherwise scratch, [N, H, W, C] of
// T, is accumulated into and then rounded into grad_features.
template <typename S, typename T = S>
cudaError_t LaunchRoiAlignBackward(const Shape& shape, const Attrs& attrs, const S* grad,
                                   const T* boxes, const int* box_indices, S* grad_features,
                                   T* scratch, cudaStream_t stream) {
  T* sums = std::is_same<S, T>::value ? reinterpret_cast<T*>(grad_features) : scratch;
  const index_t feature_count = shape.batch * shape.height * shape.width * shape.channels;
  if (feature_count > 0) {
    cudaError_t status = cudaMemsetAsync(sums, 0, sizeof(T) * feature_count, stream);
    if (status != cudaSuccess) return status;
  }
  const index_t total = shape.num_boxes * shape.pooled_h * shape.pooled_w * shape.channels;
  const int threads = 256;
  if (total > 0) {
    RoiAlignBackwardKernel<S, T><<<RoiAlignBlocks(total, threads), threads, 0, stream>>>(
        shape, attrs, grad, boxes, box_indices, sums);
  }
  if (!std::is_same<S, T>::value && feature_count > 0) {
    NarrowKernel<S, T><<<RoiAlignBlocks(feature_count, threads), threads, 0, stream>>>(
        feature_count, sums, grad_features);
  }
  return cudaGetLastError();
}
#endif  // launchers
#endif  // __CUDACC__

}  // namespace roi_align
}  // namespace mrcnn

#endif  // MRCNN_CUSTOM_OPS_ROI_ALIGN_KERNELS_ROI_ALIGN_H_
