// The kernel (weight) gradient of a stride-1 convolution with few kernel taps (kh * kw * C at
// most 32: LeNet-5's C1, 5x5x1 -> 6, and CIFAR stems, 3x3x3), below the size where jaxcnn
// calls oneDNN (jaxcnn/models/conv.py): dW[i, j, c, o] = sum over n, y, x of
// x_padded[n, y + i, x + j, c] * g[n, y, x, o].
//
// Why: XLA:CPU computes it as a convolution of the padded input with the output gradient as
// its "kernel" (28x28 for C1), in one YNNPACK call on one thread: LeNet-5's C1 at batch 24,
// 2.8M multiply-adds, took 290 us of a 1.9 ms step (19 GFLOP/s). Alone, at batch 24 (minimum
// of 9 x 100 calls, here against XLA's): 28x28 maps, 5x5x1 to 6 channels (C1) 217 against
// 429 us, to 8 223 against 394, to 12 292 against 645, to 16 490 against 398; 32x32 maps,
// 3x3x3 to 8 515 against 602 us, to 16 (batch 16) 427 against 361. So jaxcnn/models/conv.py
// uses it up to 8 outputs. Whole LeNet-5 steps at batch 24, both routes alternating in one
// process: 1.09 and 1.10x (paired medians of 12 rounds).
//
// How: an output-gradient row of one image, OW x O floats, is contiguous; so is the input
// row "expanded" so that each value repeats O times (e[x * O + o] = x_padded[x]). The
// product of the two, the expanded row shifted by j * O floats, summed over rows and images,
// gives every (x, o) lane's share of the taps (i, j, c); the lanes of one o are summed at
// the end. Vectors of 16 floats; up to 5 taps of one kernel row and 2 vectors are
// accumulated in registers at a time, so each output-gradient vector loaded serves 5
// multiply-adds. One thread (the calling one: at LeNet-5's sizes a team costs more than it
// gives, onednn_bridge.h).
//
// Operands: x N x H x W x C, g N x OH x OW x O, the result KH x KW x C x O, float32, with
// the forward pass's top and left padding (bottom and right follow from the shapes). Sums
// run in float: per lane over rows in order and images in order, then over the lanes of
// each output channel in order of x.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "onednn_bridge.h"

namespace ffi = xla::ffi;

namespace {

using jaxcnn_onednn::Dims;

typedef float Vec __attribute__((vector_size(64), aligned(4), may_alias));
constexpr int64_t kWidth = 16;
constexpr int64_t kMaxTaps = 5;  // taps of one kernel row accumulated together

struct Geometry : jaxcnn_onednn::Stride1Conv {
  int64_t lanes() const { return (ow * o + kWidth - 1) / kWidth * kWidth; }  // one g row
  int64_t rows() const { return oh + kh - 1; }  // padded input rows that the taps read
  // one expanded input row: read up to (kw - 1) * o + lanes() floats
  int64_t expanded() const { return ((kw - 1) * o + lanes() + kWidth - 1) / kWidth * kWidth; }
};

// sums[(i * kw + j0 + j) * C + c][lane] += the taps (i, j0 + j, c), j < KW, over one image's
// rows, for the B vectors from lane v on.
template <int64_t KW, int64_t B>
__attribute__((always_inline)) inline void row_taps(const Geometry& g, int64_t i, int64_t c,
                                                    int64_t j0, int64_t v,
                                                    const float* __restrict grad,
                                                    const float* __restrict expanded,
                                                    float* __restrict sums) {
  Vec acc[KW][B] = {};
  const int64_t lanes = g.lanes(), length = g.expanded();
  for (int64_t y = 0; y < g.oh; ++y) {
    const float* gr = grad + y * lanes + v;
    const float* er = expanded + ((y + i) * g.c + c) * length + j0 * g.o + v;
    Vec gv[B];
    for (int64_t b = 0; b < B; ++b) gv[b] = *reinterpret_cast<const Vec*>(gr + b * kWidth);
    for (int64_t j = 0; j < KW; ++j)
      for (int64_t b = 0; b < B; ++b)
        acc[j][b] += *reinterpret_cast<const Vec*>(er + j * g.o + b * kWidth) * gv[b];
  }
  for (int64_t j = 0; j < KW; ++j)
    for (int64_t b = 0; b < B; ++b)
      *reinterpret_cast<Vec*>(sums + ((i * g.kw + j0 + j) * g.c + c) * lanes + v + b * kWidth) +=
          acc[j][b];
}

template <int64_t KW>
__attribute__((always_inline)) inline void kernel_row(const Geometry& g, int64_t i, int64_t c,
                                                      int64_t j0, const float* grad,
                                                      const float* expanded, float* sums) {
  int64_t v = 0;
  for (; v + 2 * kWidth <= g.lanes(); v += 2 * kWidth)
    row_taps<KW, 2>(g, i, c, j0, v, grad, expanded, sums);
  if (v < g.lanes()) row_taps<KW, 1>(g, i, c, j0, v, grad, expanded, sums);
}

// Adds one image's taps into sums (kh * kw * C rows of lanes() floats).
__attribute__((target_clones("avx512f", "avx2", "default")))
void add_image(const Geometry& g, const float* grad, const float* expanded, float* sums) {
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t c = 0; c < g.c; ++c)
      for (int64_t j0 = 0; j0 < g.kw; j0 += kMaxTaps) {
        switch (std::min(kMaxTaps, g.kw - j0)) {
          case 1: kernel_row<1>(g, i, c, j0, grad, expanded, sums); break;
          case 2: kernel_row<2>(g, i, c, j0, grad, expanded, sums); break;
          case 3: kernel_row<3>(g, i, c, j0, grad, expanded, sums); break;
          case 4: kernel_row<4>(g, i, c, j0, grad, expanded, sums); break;
          default: kernel_row<5>(g, i, c, j0, grad, expanded, sums); break;
        }
      }
}

// The image's output gradient with each row padded to lanes() floats (zeros), and its padded
// input rows 0 .. rows() - 1, channel by channel, each value repeated o times (zeros in the
// padding and past the row). Each value is written as whole vectors from where its copies
// start, rows and columns in increasing order, so the next value's vectors overwrite what
// spilled past its copies; `expanded` has room for one value's vectors past its last row.
__attribute__((target_clones("avx512f", "avx2", "default")))
void prepare_image(const Geometry& g, const float* x, const float* grad, float* padded_grad,
                   float* expanded) {
  const int64_t lanes = g.lanes(), length = g.expanded();
  for (int64_t y = 0; y < g.oh; ++y) {
    std::memcpy(padded_grad + y * lanes, grad + y * g.ow * g.o, g.ow * g.o * sizeof(float));
    std::fill(padded_grad + y * lanes + g.ow * g.o, padded_grad + (y + 1) * lanes, 0.f);
  }
  const int64_t columns = std::max<int64_t>(0, std::min(g.w, (length - 1) / g.o - g.left + 1));
  for (int64_t r = 0; r < g.rows(); ++r)
    for (int64_t c = 0; c < g.c; ++c) {
      float* out = expanded + (r * g.c + c) * length;
      const int64_t row = r - g.top;
      if (row < 0 || row >= g.h) {
        std::fill(out, out + length, 0.f);
        continue;
      }
      std::fill(out, out + std::min(length, g.left * g.o), 0.f);
      for (int64_t col = 0; col < columns; ++col) {
        const Vec value = Vec{} + x[(row * g.w + col) * g.c + c];
        float* at = out + (col + g.left) * g.o;
        for (int64_t k = 0; k < g.o; k += kWidth) *reinterpret_cast<Vec*>(at + k) = value;
      }
      std::fill(out + std::min(length, (columns + g.left) * g.o), out + length, 0.f);
    }
}

ffi::Error KernelGradient(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> grad,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t top, int64_t left) {
  auto geo = jaxcnn_onednn::stride1_conv<Geometry>(
      x.dimensions(), dw->dimensions(), grad.dimensions(), top, left,
      "few_tap_kernel_gradient takes an NHWC input, an NHWC output gradient and the HWIO "
      "kernel's shape");
  if (geo.has_error()) return geo.error();
  const Geometry g = *geo;
  // a single-threaded kernel: on the calling thread, whatever the operands' size
  return jaxcnn_onednn::locked("few_tap_kernel_gradient (jaxcnn's kernel)", 0, [&] {
    const int64_t lanes = g.lanes(), taps = g.kh * g.kw * g.c;
    std::vector<float> sums(taps * lanes, 0.f), padded_grad(g.oh * lanes),
        expanded(g.rows() * g.c * g.expanded() + (g.o + kWidth - 1) / kWidth * kWidth);
    for (int64_t n = 0; n < g.n; ++n) {
      prepare_image(g, x.typed_data() + n * g.h * g.w * g.c,
                    grad.typed_data() + n * g.oh * g.ow * g.o, padded_grad.data(),
                    expanded.data());
      add_image(g, padded_grad.data(), expanded.data(), sums.data());
    }
    float* out = dw->typed_data();  // HWIO: tap-major, then o
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t o = 0; o < g.o; ++o) {
        float total = 0.f;
        for (int64_t col = 0; col < g.ow; ++col) total += sums[t * lanes + col * g.o + o];
        out[t * g.o + o] = total;
      }
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnFewTapKernelGradient, KernelGradient,
                              jaxcnn_onednn::stride1_binding());
