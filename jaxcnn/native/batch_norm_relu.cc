// Batch normalization in training followed by ReLU, optionally after adding a residual, in
// one kernel each way: y = relu(bn(x) [+ r]), where bn normalizes each channel of NHWC x by
// the batch's mean and biased variance and applies scale and shift (Ioffe and Szegedy 2015),
// and the gradients of x, scale, shift [and r] from y's. This is the tail of every residual
// block of He et al. 2016 (bn2 + shortcut -> relu) and of most conv -> BN -> ReLU stages.
//
// Why: with oneDNN's batch normalization, XLA:CPU adds the residual and applies ReLU in
// separate loop fusions forward and masks the gradient in others backward (resnet20 at batch
// 128: about 21 ms of its step, as long as all its oneDNN batch normalization calls); here
// the forward pass reads x twice (statistics, then output) and the backward pass reads x, dy
// and (after a residual) y twice (sums, then gradients), with nothing in between.
//
// Numerics: the statistics are the sums of x and of x^2 (one pass; the variance is
// E[x^2] - E[x]^2, clipped at 0, as Flax computes it), in float over blocks of kBlockRows
// rows, the blocks in double, the threads' sums added in thread order, so runs with the same
// number of OpenMP threads give the same bits; the output is
// (x - mean) * (scale / sqrt(var + eps)) + shift [+ r], then relu, which propagates NaN as
// jnp.maximum does. The gradient flows where y > 0 (relu's gradient at 0 is 0, and at NaN
// nothing flows, as jax.nn.relu's); without a residual, where bn(x) > 0, recomputed with the
// forward pass's very operations (one input stream less: resnet20's first-stage layer alone,
// 1.34-1.60 -> 0.97-1.23 ms; whole resnet20 steps paired 1.014x). Plain loops, vectorized by
// the compiler (one clone per instruction set), under the bridge's lock with OpenMP threads
// (onednn_bridge.h).
//
// Operands are NHWC float32 with one scale and shift per channel; jax.vmap maps calls one
// slice at a time (the Python side, jaxcnn/native/batch_norm.py).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "onednn_bridge.h"

namespace ffi = xla::ffi;

namespace {

using jaxcnn_onednn::Dims;
using Buffer = ffi::Buffer<ffi::F32>;
using Result = ffi::ResultBuffer<ffi::F32>;

inline float relu(float z) { return (z > 0.0f || z != z) ? z : 0.0f; }

// The loops below run over whole rows of `c` channels at once, `width` = a multiple of c of
// at least kMinWidth elements, with per-channel vectors repeated to that width: with c alone
// as the inner loop (16 in resnet20's first stage, one AVX-512 register) the loop overhead
// per row doubled the backward pass's time.
constexpr int64_t kMinWidth = 64;

int64_t lane_width(int64_t c) { return c * ((kMinWidth + c - 1) / c); }

std::vector<float> repeated(const float* per_channel, int64_t c) {
  std::vector<float> out(lane_width(c));
  for (size_t j = 0; j < out.size(); ++j) out[j] = per_channel[j % c];
  return out;
}

// Rows per block whose sums are kept in float before they join the double totals.
constexpr int64_t kBlockRows = 256;

// Per-channel sums of a(e) and b(e) over `n` elements (whole rows of `c`): in float per lane
// over blocks of kBlockRows rows, the blocks' lanes folded into the channels' double sums.
// (Always inlined, so that it and `terms` compile for the calling clone's instruction set.)
template <typename Terms>
__attribute__((always_inline)) inline void add_lane_sums(int64_t n, int64_t c,
                                                         double* __restrict sum,
                                                         double* __restrict other,
                                                         Terms terms) {
  const int64_t width = lane_width(c), block = kBlockRows * c;
  std::vector<float> lanes_a(width), lanes_b(width);
  float* __restrict la = lanes_a.data();
  float* __restrict lb = lanes_b.data();
  for (int64_t first = 0; first < n; first += block) {
    std::fill(la, la + width, 0.0f);
    std::fill(lb, lb + width, 0.0f);
    const int64_t end = std::min(n, first + block);
    for (int64_t e = first; e < end; e += width)
      terms(e, std::min(width, end - e), la, lb);
    for (int64_t k = 0; k < width; k += c)
      for (int64_t ch = 0; ch < c; ++ch) sum[ch] += la[k + ch], other[ch] += lb[k + ch];
  }
}

// Sums of x and x^2 per channel.
__attribute__((target_clones("avx512f", "avx2", "default")))
void add_moments(const float* __restrict x, int64_t n, int64_t c, double* sum,
                 double* square) {
  add_lane_sums(n, c, sum, square, [&](int64_t e, int64_t len, float* __restrict a,
                                       float* __restrict b) {
    for (int64_t j = 0; j < len; ++j) {
      const float v = x[e + j];
      a[j] += v;
      b[j] += v * v;
    }
  });
}

// scale / sqrt(variance + epsilon), the same float in both passes (from the float variance
// the forward pass returns), so that the backward pass can recompute bn(x) bit for bit.
float normalizing_factor(float scale, float variance, float epsilon) {
  return float(double(scale) / std::sqrt(double(variance) + double(epsilon)));
}

// bn(x) for one element, written once for both passes: the library is built with
// -std=c++17, which leaves a * b + c uncontracted, so the two compute the same bits.
inline float normalized(float x, float mean, float factor, float shift) {
  return (x - mean) * factor + shift;
}

// y = relu(bn(x) [+ res]), the residual where `res` is not null; the per-channel vectors
// repeated to lane_width(c).
__attribute__((target_clones("avx512f", "avx2", "default")))
void normalize_relu(const float* __restrict x, const float* __restrict res, int64_t n,
                    int64_t c, const float* __restrict mean, const float* __restrict factor,
                    const float* __restrict shift, float* __restrict y) {
  const int64_t width = lane_width(c);
  for (int64_t e = 0; e < n; e += width) {
    const int64_t len = std::min(width, n - e);
    if (res == nullptr) {
      for (int64_t j = 0; j < len; ++j)
        y[e + j] = relu(normalized(x[e + j], mean[j], factor[j], shift[j]));
    } else {
      for (int64_t j = 0; j < len; ++j)
        y[e + j] = relu(normalized(x[e + j], mean[j], factor[j], shift[j]) + res[e + j]);
    }
  }
}

// Where ReLU let the gradient through (y > 0; never at NaN): read from the output y (after a
// residual), or, without one, recomputed from x as bn(x) > 0, which spares the backward
// pass one of its three input streams (x, y, dy; resnet20's first stage: 8 MB a pass).
struct PositiveOutput {
  const float* __restrict y;
  bool operator()(int64_t e, int64_t, float) const { return y[e] > 0.0f; }
};
struct PositiveNormalized {
  const float* __restrict mean;
  const float* __restrict factor;
  const float* __restrict shift;
  bool operator()(int64_t, int64_t j, float x) const {
    return normalized(x, mean[j], factor[j], shift[j]) > 0.0f;
  }
};

// Sums of relu's gradient g (dy where `positive`) and of g * (x - mean) per channel; `mean`
// repeated to lane_width(c).
template <typename Positive>
__attribute__((always_inline)) inline void gradient_moments(
    const float* __restrict x, Positive positive, const float* __restrict dy, int64_t n,
    int64_t c, const float* __restrict mean, double* sum, double* cross) {
  add_lane_sums(n, c, sum, cross, [&](int64_t e, int64_t len, float* __restrict a,
                                      float* __restrict b) {
    for (int64_t j = 0; j < len; ++j) {
      const float v = x[e + j], g = positive(e + j, j, v) ? dy[e + j] : 0.0f;
      a[j] += g;
      b[j] += g * (v - mean[j]);
    }
  });
}

// dx = factor * (g - k1 - (x - mean) * k2), and dr = g where `dr` is not null (the
// residual's gradient); the per-channel vectors repeated to lane_width(c).
template <typename Positive>
__attribute__((always_inline)) inline void gradients(
    const float* __restrict x, Positive positive, const float* __restrict dy, int64_t n,
    int64_t c, const float* __restrict mean, const float* __restrict factor,
    const float* __restrict k1, const float* __restrict k2, float* __restrict dx,
    float* __restrict dr) {
  const int64_t width = lane_width(c);
  for (int64_t e = 0; e < n; e += width) {
    const int64_t len = std::min(width, n - e);
    for (int64_t j = 0; j < len; ++j) {
      const float v = x[e + j], g = positive(e + j, j, v) ? dy[e + j] : 0.0f;
      dx[e + j] = factor[j] * (g - k1[j] - (v - mean[j]) * k2[j]);
      if (dr != nullptr) dr[e + j] = g;
    }
  }
}

// The two passes for each source of ReLU's mask, one clone per instruction set each.
__attribute__((target_clones("avx512f", "avx2", "default")))
void add_gradient_moments(const float* x, const float* y, const float* dy, int64_t n,
                          int64_t c, const float* mean, double* sum, double* cross) {
  gradient_moments(x, PositiveOutput{y}, dy, n, c, mean, sum, cross);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void add_gradient_moments(const float* x, PositiveNormalized bn, const float* dy, int64_t n,
                          int64_t c, const float* mean, double* sum, double* cross) {
  gradient_moments(x, bn, dy, n, c, mean, sum, cross);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void input_gradient(const float* x, const float* y, const float* dy, int64_t n, int64_t c,
                    const float* mean, const float* factor, const float* k1, const float* k2,
                    float* dx, float* dr) {
  gradients(x, PositiveOutput{y}, dy, n, c, mean, factor, k1, k2, dx, dr);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void input_gradient(const float* x, PositiveNormalized bn, const float* dy, int64_t n,
                    int64_t c, const float* mean, const float* factor, const float* k1,
                    const float* k2, float* dx, float* dr) {
  gradients(x, bn, dy, n, c, mean, factor, k1, k2, dx, dr);
}

// Rows of `c` channels, one block of consecutive rows per OpenMP thread: `body(first, count,
// thread)`; each thread's result is its own, so callers add them in thread order.
template <typename Body>
void for_thread_rows(int64_t rows, Body body) {
  jaxcnn_onednn::Failure failure;
#pragma omp parallel
  failure.guard([&] {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t first = rows * t / threads, last = rows * (t + 1) / threads;
    body(first, last - first, t);
  });
  failure.rethrow();
}

// Per-channel sums of two quantities over all rows, `add(first, count, sum, other)` adding
// one thread's rows into its own vectors; the threads' vectors added in thread order.
template <typename Add>
void channel_sums(int64_t rows, int64_t c, std::vector<double>& sum,
                  std::vector<double>& other, Add add) {
  std::vector<std::vector<double>> parts(omp_get_max_threads());
  for_thread_rows(rows, [&](int64_t first, int64_t count, int64_t t) {
    std::vector<double> mine(2 * c, 0.0);  // allocated by its thread (no false sharing)
    add(first, count, mine.data(), mine.data() + c);
    parts[t] = std::move(mine);
  });
  sum.assign(c, 0.0);
  other.assign(c, 0.0);
  for (const std::vector<double>& part : parts)
    for (int64_t ch = 0; ch < c && !part.empty(); ++ch)
      sum[ch] += part[ch], other[ch] += part[c + ch];
}

ffi::Error check(Dims x, std::initializer_list<Dims> same, std::initializer_list<Dims> channel) {
  bool ok = x.size() == 4;
  for (Dims d : same) ok = ok && d.size() == 4 && std::equal(d.begin(), d.end(), x.begin());
  for (Dims d : channel) ok = ok && d.size() == 1 && d[0] == x[3];
  if (ok && x[0] * x[1] * x[2] > 0 && x[3] > 0) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(
      "batch_norm_relu takes non-empty NHWC x (and a residual and gradients of its shape) "
      "and one value per channel");
}

// The forward pass, with the residual `res` (x's shape) or none (null).
ffi::Error Forward(Buffer x, Buffer scale, Buffer shift, const float* res, Result y,
                   Result mean, Result variance, float epsilon) {
  const int64_t rows = x.dimensions()[0] * x.dimensions()[1] * x.dimensions()[2];
  const int64_t c = x.dimensions()[3];
  return jaxcnn_onednn::locked("batch_norm_relu (jaxcnn's kernel)", x.element_count(), [&] {
    const float* in = x.typed_data();
    std::vector<double> sum, square;
    channel_sums(rows, c, sum, square, [&](int64_t first, int64_t count, double* s, double* q) {
      add_moments(in + first * c, count * c, c, s, q);
    });
    std::vector<float> factor(c);
    for (int64_t ch = 0; ch < c; ++ch) {
      const double m = sum[ch] / rows, v = std::max(square[ch] / rows - m * m, 0.0);
      mean->typed_data()[ch] = float(m);
      variance->typed_data()[ch] = float(v);
      factor[ch] = normalizing_factor(scale.typed_data()[ch], float(v), epsilon);
    }
    const std::vector<float> mu = repeated(mean->typed_data(), c),
                             times = repeated(factor.data(), c),
                             plus = repeated(shift.typed_data(), c);
    for_thread_rows(rows, [&](int64_t first, int64_t count, int64_t) {
      normalize_relu(in + first * c, res ? res + first * c : nullptr, count * c, c, mu.data(),
                     times.data(), plus.data(), y->typed_data() + first * c);
    });
  });
}

ffi::Error PlainForward(Buffer x, Buffer scale, Buffer shift, Result y, Result mean,
                        Result variance, float epsilon) {
  ffi::Error bad = check(x.dimensions(), {y->dimensions()},
                         {scale.dimensions(), shift.dimensions()});
  if (bad.failure()) return bad;
  return Forward(x, scale, shift, nullptr, y, mean, variance, epsilon);
}

ffi::Error ResidualForward(Buffer x, Buffer scale, Buffer shift, Buffer residual, Result y,
                           Result mean, Result variance, float epsilon) {
  ffi::Error bad = check(x.dimensions(), {y->dimensions(), residual.dimensions()},
                         {scale.dimensions(), shift.dimensions()});
  if (bad.failure()) return bad;
  return Forward(x, scale, shift, residual.typed_data(), y, mean, variance, epsilon);
}

// The backward pass from the forward output `y` (after a residual, whose gradient goes to
// `dr`) or, without a residual, from `shift` (y null, dr null): ReLU's mask recomputed.
ffi::Error Backward(Buffer x, const float* y, const float* shift, Buffer dy, Buffer mean,
                    Buffer variance, Buffer scale, Result dx, Result dscale, Result dshift,
                    float* dr, float epsilon) {
  const int64_t rows = x.dimensions()[0] * x.dimensions()[1] * x.dimensions()[2];
  const int64_t c = x.dimensions()[3];
  return jaxcnn_onednn::locked("batch_norm_relu gradient (jaxcnn's kernel)", x.element_count(),
                                [&] {
    const float *in = x.typed_data(), *grad = dy.typed_data();
    std::vector<float> factor(c);
    for (int64_t ch = 0; ch < c; ++ch)
      factor[ch] = normalizing_factor(scale.typed_data()[ch], variance.typed_data()[ch],
                                      epsilon);
    const std::vector<float> mu = repeated(mean.typed_data(), c),
                             times = repeated(factor.data(), c),
                             plus = y ? std::vector<float>() : repeated(shift, c);
    const PositiveNormalized bn{mu.data(), times.data(), plus.data()};
    std::vector<double> sum, cross;
    channel_sums(rows, c, sum, cross, [&](int64_t first, int64_t count, double* s, double* q) {
      const int64_t at = first * c;
      if (y) add_gradient_moments(in + at, y + at, grad + at, count * c, c, mu.data(), s, q);
      else add_gradient_moments(in + at, bn, grad + at, count * c, c, mu.data(), s, q);
    });
    std::vector<float> k1(c), k2(c);
    for (int64_t ch = 0; ch < c; ++ch) {
      const double inv_std = 1.0 / std::sqrt(double(variance.typed_data()[ch]) + epsilon);
      const double d_scale = cross[ch] * inv_std;
      dshift->typed_data()[ch] = float(sum[ch]);
      dscale->typed_data()[ch] = float(d_scale);
      k1[ch] = float(sum[ch] / rows);
      k2[ch] = float(d_scale * inv_std / rows);
    }
    const std::vector<float> minus = repeated(k1.data(), c), slope = repeated(k2.data(), c);
    for_thread_rows(rows, [&](int64_t first, int64_t count, int64_t) {
      const int64_t at = first * c;
      float* out = dx->typed_data() + at;
      if (y)
        input_gradient(in + at, y + at, grad + at, count * c, c, mu.data(), times.data(),
                       minus.data(), slope.data(), out, dr ? dr + at : nullptr);
      else
        input_gradient(in + at, bn, grad + at, count * c, c, mu.data(), times.data(),
                       minus.data(), slope.data(), out, nullptr);
    });
  });
}

ffi::Error PlainBackward(Buffer x, Buffer dy, Buffer mean, Buffer variance, Buffer scale,
                         Buffer shift, Result dx, Result dscale, Result dshift, float epsilon) {
  ffi::Error bad = check(x.dimensions(), {dy.dimensions(), dx->dimensions()},
                         {mean.dimensions(), variance.dimensions(), scale.dimensions(),
                          shift.dimensions()});
  if (bad.failure()) return bad;
  return Backward(x, nullptr, shift.typed_data(), dy, mean, variance, scale, dx, dscale,
                  dshift, nullptr, epsilon);
}

ffi::Error ResidualBackward(Buffer x, Buffer y, Buffer dy, Buffer mean, Buffer variance,
                            Buffer scale, Result dx, Result dscale, Result dshift,
                            Result dresidual, float epsilon) {
  ffi::Error bad = check(x.dimensions(), {y.dimensions(), dy.dimensions(), dx->dimensions(),
                                          dresidual->dimensions()},
                         {mean.dimensions(), variance.dimensions(), scale.dimensions()});
  if (bad.failure()) return bad;
  return Backward(x, y.typed_data(), nullptr, dy, mean, variance, scale, dx, dscale, dshift,
                  dresidual->typed_data(), epsilon);
}

}  // namespace

#define JAXCNN_F32_ARG .Arg<ffi::Buffer<ffi::F32>>()
#define JAXCNN_F32_RET .Ret<ffi::Buffer<ffi::F32>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBatchNormReluForward, PlainForward,
                              ffi::Ffi::Bind() JAXCNN_F32_ARG JAXCNN_F32_ARG JAXCNN_F32_ARG
                                  JAXCNN_F32_RET JAXCNN_F32_RET JAXCNN_F32_RET
                                  .Attr<float>("epsilon"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBatchNormAddReluForward, ResidualForward,
                              ffi::Ffi::Bind() JAXCNN_F32_ARG JAXCNN_F32_ARG JAXCNN_F32_ARG
                                  JAXCNN_F32_ARG JAXCNN_F32_RET JAXCNN_F32_RET JAXCNN_F32_RET
                                  .Attr<float>("epsilon"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBatchNormReluBackward, PlainBackward,
                              ffi::Ffi::Bind() JAXCNN_F32_ARG JAXCNN_F32_ARG JAXCNN_F32_ARG
                                  JAXCNN_F32_ARG JAXCNN_F32_ARG JAXCNN_F32_ARG
                                  JAXCNN_F32_RET JAXCNN_F32_RET JAXCNN_F32_RET
                                  .Attr<float>("epsilon"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBatchNormAddReluBackward, ResidualBackward,
                              ffi::Ffi::Bind() JAXCNN_F32_ARG JAXCNN_F32_ARG JAXCNN_F32_ARG
                                  JAXCNN_F32_ARG JAXCNN_F32_ARG JAXCNN_F32_ARG
                                  JAXCNN_F32_RET JAXCNN_F32_RET JAXCNN_F32_RET
                                  JAXCNN_F32_RET .Attr<float>("epsilon"));
