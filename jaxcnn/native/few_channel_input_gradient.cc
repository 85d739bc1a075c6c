// The input gradient of a stride-1 convolution with few input channels (LeNet-5's C3: 6),
// as col2im(g @ W^T): for each output position, the gradient with respect to its whole
// receptive field (kh * kw * C values) is the output gradient's O values times the kernel,
// and each row of the field is added into the input gradient where it lies (contiguous:
// kw * C floats of one input row). Not oneDNN: plain loops under the bridge's lock and OpenMP
// threads (onednn_bridge.h), one image per thread at a time.
//
// Why: oneDNN computes this gradient as a convolution over the zero-padded output gradient
// that writes C channels, a poor fit for vectors of 16 floats, and multiplies the padding's
// zeros too: LeNet-5's C3 at batch 128 took it 1.5 ms for 31M useful multiply-adds, 0.85-1.2
// ms here (jaxcnn/models/conv.py says where each is used). Here each multiply-add is a
// vector FMA of 16 field values (the kernel's row for one output channel) by one broadcast
// output-gradient value, several vectors of four output positions at once in registers.
//
// Operands: g N x OH x OW x O, w KH x KW x C x O, the result N x H x W x C, float32, with
// the forward pass's top and left padding (bottom and right follow from the shapes); no
// leading vmap dimensions (the Python side, jaxcnn/native/conv.py, maps such calls
// sequentially). Sums run in float, over output channels in order, then over the field
// rows that overlap an input position in order of the output position.
#include <algorithm>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "onednn_bridge.h"

namespace ffi = xla::ffi;

namespace {

using jaxcnn_onednn::Dims;

// GCC's vector extension: one AVX-512 register, two AVX2 ones.
typedef float Vec __attribute__((vector_size(64), aligned(4), may_alias));
constexpr int64_t kWidth = 16;
// At most this many vectors of fields are computed together, in registers across the
// output channels (independent chains of multiply-adds that overlap): kGroup / kPositions
// vectors of each of kPositions neighbouring output positions of a row, so that each kernel
// vector loaded serves kPositions multiply-adds. LeNet-5's C3 alone (minimum of 15 x 200
// calls, variants alternating in separate processes): one position and 8 vectors 240-367
// us at batch 24, 827-1,056 us at batch 128; 4 positions and 2 vectors 216-295 and 657-679
// us; 2 x 4, 2 x 8, 4 x 4, 8 x 1 and 8 x 2 no better.
constexpr int64_t kGroup = 8;
constexpr int64_t kPositions = 4;

struct Geometry : jaxcnn_onednn::Stride1Conv {
  int64_t field() const { return kh * kw * c; }
  int64_t vectors() const { return (field() + kWidth - 1) / kWidth; }
  int64_t padded() const { return vectors() * kWidth; }
};

// field[p][e] for P output positions and the G vectors from lane b on: the sum over output
// channels q of grad[p][q] * kernel[q][e]. Each kernel vector loaded serves all P positions.
template <int64_t P, int64_t G>
__attribute__((always_inline)) inline void field_vectors(const Geometry& g, int64_t b,
                                                         const float* __restrict grad,
                                                         const float* __restrict kernel,
                                                         float* __restrict field) {
  Vec acc[P][G] = {};
  for (int64_t q = 0; q < g.o; ++q) {
    const float* row = kernel + q * g.padded() + b;
    float s[P];
    for (int64_t p = 0; p < P; ++p) s[p] = grad[p * g.o + q];
    for (int64_t v = 0; v < G; ++v) {
      const Vec k = *reinterpret_cast<const Vec*>(row + v * kWidth);
      for (int64_t p = 0; p < P; ++p) acc[p][v] += s[p] * k;
    }
  }
  for (int64_t p = 0; p < P; ++p)
    for (int64_t v = 0; v < G; ++v)
      *reinterpret_cast<Vec*>(field + p * g.padded() + b + v * kWidth) = acc[p][v];
}

// field[p][e] = sum over output channels q of grad[p][q] * kernel[q][e], e < padded(), for
// P consecutive output positions: groups of kGroup / P, 4, 2 and 1 vectors.
template <int64_t P>
__attribute__((target_clones("avx512f", "avx2", "default")))
void field_gradient(const Geometry& g, const float* __restrict grad,
                    const float* __restrict kernel, float* __restrict field) {
  constexpr int64_t kWide = kGroup / P;
  int64_t b = 0;
  const int64_t padded = g.padded();
  for (; b + kWide * kWidth <= padded; b += kWide * kWidth)
    field_vectors<P, kWide>(g, b, grad, kernel, field);
  if (kWide > 4 && b + 4 * kWidth <= padded)
    field_vectors<P, 4>(g, b, grad, kernel, field), b += 4 * kWidth;
  if (kWide > 2 && b + 2 * kWidth <= padded)
    field_vectors<P, 2>(g, b, grad, kernel, field), b += 2 * kWidth;
  for (; b < padded; b += kWidth) field_vectors<P, 1>(g, b, grad, kernel, field);
}

// Adds an output position's field gradient into the image's input gradient.
__attribute__((target_clones("avx512f", "avx2", "default")))
void add_field(const Geometry& g, int64_t y, int64_t x, const float* __restrict field,
               float* __restrict image) {
  const int64_t first = std::max<int64_t>(0, g.left - x);          // kernel columns
  const int64_t last = std::min<int64_t>(g.kw, g.w + g.left - x);  // inside the image
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t row = y + i - g.top;
    if (row < 0 || row >= g.h || first >= last) continue;
    float* __restrict out = image + (row * g.w + x + first - g.left) * g.c;
    const float* __restrict in = field + (i * g.kw + first) * g.c;
    for (int64_t e = 0; e < (last - first) * g.c; ++e) out[e] += in[e];
  }
}

ffi::Error InputGradient(ffi::Buffer<ffi::F32> grad, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx, int64_t top, int64_t left) {
  auto geo = jaxcnn_onednn::stride1_conv<Geometry>(
      dx->dimensions(), w.dimensions(), grad.dimensions(), top, left,
      "few_channel_input_gradient takes an NHWC output gradient, an HWIO kernel and the NHWC "
      "input's shape");
  if (geo.has_error()) return geo.error();
  const Geometry g = *geo;
  return jaxcnn_onednn::locked("few_channel_input_gradient (jaxcnn's kernel)",
                                std::max(grad.element_count(), dx->element_count()), [&] {
    // kernel[q][e]: output channel q's weights over the field (HWI order), zeros past it
    const int64_t padded = g.padded();
    std::vector<float> kernel(g.o * padded, 0.f);
    for (int64_t e = 0; e < g.field(); ++e)
      for (int64_t q = 0; q < g.o; ++q) kernel[q * padded + e] = w.typed_data()[e * g.o + q];
    jaxcnn_onednn::Failure failure;
#pragma omp parallel
    failure.guard([&] {
      std::vector<float> field(kPositions * padded);
#pragma omp for schedule(static) nowait
      for (int64_t n = 0; n < g.n; ++n) {
        float* image = dx->typed_data() + n * g.h * g.w * g.c;
        std::fill(image, image + g.h * g.w * g.c, 0.f);
        for (int64_t y = 0; y < g.oh; ++y) {
          const float* row = grad.typed_data() + (n * g.oh + y) * g.ow * g.o;
          int64_t x = 0;
          for (; x + kPositions <= g.ow; x += kPositions) {
            field_gradient<kPositions>(g, row + x * g.o, kernel.data(), field.data());
            for (int64_t p = 0; p < kPositions; ++p)
              add_field(g, y, x + p, field.data() + p * padded, image);
          }
          for (; x < g.ow; ++x) {
            field_gradient<1>(g, row + x * g.o, kernel.data(), field.data());
            add_field(g, y, x, field.data(), image);
          }
        }
      }
    });
    failure.rethrow();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnFewChannelInputGradient, InputGradient,
                              jaxcnn_onednn::stride1_binding());
