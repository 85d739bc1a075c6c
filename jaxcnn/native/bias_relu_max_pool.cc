// A convolution's epilogue in one pass each way: y = max_pool(relu(z + bias)) over
// non-overlapping k x k tiles (stride k, a trailing remainder dropped), and its gradient with
// respect to z and bias. Not oneDNN: plain loops that the compiler vectorizes (one clone per
// instruction set, chosen when the library loads), under the bridge's lock and OpenMP threads
// (onednn_bridge.h) like the oneDNN calls it sits between.
//
// Why: XLA:CPU computes this epilogue as five loop fusions and a reduction (LeNet-5's first
// stage at batch 128: about 1.2 ms of a 6-8 ms train step), reading the 2.4 MB feature map
// nine times; here the forward pass reads it once and the backward pass twice.
//
// Semantics, the XLA expression's: relu is monotonic, so the tile maximum of relu(z + b) is
// relu(max(z) + b), bit for bit (adding b rounds monotonically). The gradient of a tile goes
// to the elements whose z + b (rounded, as XLA compares relu(z + b)) equals the tile's
// maximum plus b, shared equally among ties (jaxcnn.models.layers.max_pool), and to none when
// that is not above 0 (relu's gradient at 0 is 0). NaN propagates as jnp.maximum does; only
// an infinite bias meeting an opposite infinity in z gives inf here where XLA gives NaN. The
// bias gradient is the sum of z's gradient per channel: per tile row in float, the rows in
// double, the threads' sums in thread order.
//
// Operands are NHWC float32 with one bias per channel; leading dimensions from jax.vmap are
// not supported (the Python side, jaxcnn/native/pool.py, maps such calls sequentially).
#include <cstdint>
#include <cstring>
#include <exception>
#include <vector>

#include <omp.h>

#include "onednn_bridge.h"

namespace ffi = xla::ffi;

namespace {

using jaxcnn_onednn::Dims;

inline float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }

// The sizes of one call: input N x H x W x C, output N x OH x OW x C, window k.
struct Geometry {
  int64_t n, h, w, c, oh, ow, k;
  int64_t row() const { return w * c; }            // elements of one input row
  int64_t tiles_in() const { return ow * k * c; }  // of one input row, inside whole tiles
  int64_t tiles_out() const { return ow * c; }     // of one output row
};

// Below this many channels a tile's channels fill less than one vector register, so the
// loops run over a whole row of tiles at once through index tables (gathers); at or above
// it they run over the channels of one tile.
constexpr int64_t kWideChannels = 16;

// For rows of tiles: first[q] is the offset, in a tile row's first input row, of output
// element q's tile's first element; owner[e] is the output element that input element e of
// a tile row belongs to; bias[q] and in_bias[e] are the biases of their channels.
struct TileIndex {
  std::vector<int32_t> first, owner;
  std::vector<float> bias, in_bias;
  TileIndex(const Geometry& g, const float* channel_bias)
      : first(g.tiles_out()), owner(g.tiles_in()), bias(g.tiles_out()), in_bias(g.tiles_in()) {
    for (int64_t q = 0; q < g.tiles_out(); ++q) {
      first[q] = int32_t((q / g.c) * g.k * g.c + q % g.c);
      bias[q] = channel_bias[q % g.c];
    }
    for (int64_t e = 0; e < g.tiles_in(); ++e) {
      owner[e] = int32_t((e / (g.k * g.c)) * g.c + e % g.c);
      in_bias[e] = channel_bias[e % g.c];
    }
  }
};

// Per-thread rows: the maxima of one output row, working rows of the input's length, and
// the running sums of z's gradient per position of a tile row (few channels) or per
// channel, which Backward adds up per channel in double.
struct Scratch {
  std::vector<float> column, peak, spread, count, share, row_sum, shifted;
  std::vector<double> sum;
  explicit Scratch(const Geometry& g)
      : column(g.tiles_in()), peak(g.tiles_out()), spread(g.tiles_in()), count(g.tiles_in()),
        share(g.tiles_out()), row_sum(g.tiles_in()), shifted(g.k * g.tiles_in()),
        sum(g.c >= kWideChannels ? g.c : g.tiles_in(), 0.0) {}
};

// peak = the tile maxima of the k input rows starting at `in` (an output row's tiles).
__attribute__((target_clones("avx512f", "avx2", "default")))
void tile_maxima(const Geometry& g, const TileIndex& t, const float* __restrict in,
                 float* __restrict column, float* __restrict peak) {
  const int64_t span = g.tiles_in(), out = g.tiles_out(), row = g.row(), k = g.k, c = g.c;
  if (c >= kWideChannels) {
    for (int64_t o = 0; o < g.ow; ++o) {
      float* p = peak + o * c;
      const float* tile = in + o * k * c;
      for (int64_t ch = 0; ch < c; ++ch) p[ch] = tile[ch];
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j)
          for (int64_t ch = 0; ch < c; ++ch) p[ch] = nan_max(p[ch], tile[i * row + j * c + ch]);
    }
    return;
  }
  for (int64_t e = 0; e < span; ++e) column[e] = in[e];
  for (int64_t i = 1; i < k; ++i)
    for (int64_t e = 0; e < span; ++e) column[e] = nan_max(column[e], in[i * row + e]);
  const int32_t* first = t.first.data();
  for (int64_t q = 0; q < out; ++q) peak[q] = column[first[q]];
  for (int64_t j = 1; j < k; ++j)
    for (int64_t q = 0; q < out; ++q) peak[q] = nan_max(peak[q], column[first[q] + j * c]);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void add_bias_relu(const Geometry& g, const TileIndex& t, float* __restrict peak) {
  const float* __restrict bias = t.bias.data();
  for (int64_t q = 0; q < g.tiles_out(); ++q) peak[q] = nan_max(peak[q] + bias[q], 0.f);
}

// The gradient of one row of tiles: `in` and `din` the k input rows, `grad` the output
// row's gradient, `peak` its tile maxima (before bias). Adds the row's bias gradient.
__attribute__((target_clones("avx512f", "avx2", "default")))
void route_gradient(const Geometry& g, const TileIndex& t, const float* __restrict in,
                    const float* __restrict grad, float* __restrict din, Scratch& s) {
  const int64_t span = g.tiles_in(), out = g.tiles_out(), row = g.row(), k = g.k, c = g.c;
  const float* __restrict peak = s.peak.data();
  float* __restrict share = s.share.data();
  float* __restrict spread = s.spread.data();
  const float* __restrict bias = t.bias.data();
  if (c >= kWideChannels) {
    float* __restrict row_sum = s.row_sum.data();
    for (int64_t ch = 0; ch < c; ++ch) row_sum[ch] = 0.f;
    for (int64_t o = 0; o < g.ow; ++o) {
      const float* tile = in + o * k * c;
      float* dtile = din + o * k * c;
      const float* b = bias + o * c;
      float* top = spread;  // the tile maxima plus bias
      for (int64_t ch = 0; ch < c; ++ch) top[ch] = peak[o * c + ch] + b[ch];
      float* sh = share + o * c;
      for (int64_t ch = 0; ch < c; ++ch) sh[ch] = 0.f;
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j)
          for (int64_t ch = 0; ch < c; ++ch)
            sh[ch] += tile[i * row + j * c + ch] + b[ch] == top[ch];
      for (int64_t ch = 0; ch < c; ++ch)
        sh[ch] = top[ch] > 0.f ? grad[o * c + ch] / sh[ch] : 0.f;
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j)
          for (int64_t ch = 0; ch < c; ++ch) {
            float v = tile[i * row + j * c + ch] + b[ch] == top[ch] ? sh[ch] : 0.f;
            dtile[i * row + j * c + ch] = v;
            row_sum[ch] += v;
          }
    }
    for (int64_t ch = 0; ch < c; ++ch) s.sum[ch] += row_sum[ch];
    return;
  }
  const int32_t* first = t.first.data();
  const int32_t* owner = t.owner.data();
  const float* __restrict in_bias = t.in_bias.data();
  float* __restrict count = s.count.data();
  float* __restrict shifted = s.shifted.data();  // the k input rows plus bias
  for (int64_t i = 0; i < k; ++i)
    for (int64_t e = 0; e < span; ++e) shifted[i * span + e] = in[i * row + e] + in_bias[e];
  // spread: each input element's tile maximum plus bias
  for (int64_t e = 0; e < span; ++e) spread[e] = peak[owner[e]] + in_bias[e];
  for (int64_t e = 0; e < span; ++e) count[e] = shifted[e] == spread[e];
  for (int64_t i = 1; i < k; ++i)
    for (int64_t e = 0; e < span; ++e) count[e] += shifted[i * span + e] == spread[e];
  for (int64_t q = 0; q < out; ++q) share[q] = count[first[q]];
  for (int64_t j = 1; j < k; ++j)
    for (int64_t q = 0; q < out; ++q) share[q] += count[first[q] + j * c];
  for (int64_t q = 0; q < out; ++q) share[q] = peak[q] + bias[q] > 0.f ? grad[q] / share[q] : 0.f;
  for (int64_t e = 0; e < span; ++e) count[e] = share[owner[e]];  // now each element's share
  float* __restrict row_sum = s.row_sum.data();
  for (int64_t e = 0; e < span; ++e) row_sum[e] = 0.f;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t e = 0; e < span; ++e) {
      float v = shifted[i * span + e] == spread[e] ? count[e] : 0.f;
      din[i * row + e] = v;
      row_sum[e] += v;
    }
  double* __restrict sum = s.sum.data();
  for (int64_t e = 0; e < span; ++e) sum[e] += row_sum[e];
}

ffi::ErrorOr<Geometry> geometry(Dims in, Dims out, int64_t k, Dims bias) {
  if (in.size() != 4 || out.size() != 4 || bias.size() != 1 || bias[0] != in[3] || k < 1 ||
      out[0] != in[0] || out[3] != in[3] || out[1] != in[1] / k || out[2] != in[2] / k ||
      out[1] < 1 || out[2] < 1)
    return ffi::Error::InvalidArgument(
        "bias_relu_max_pool takes NHWC z, one bias per channel and a window that fits");
  return Geometry{in[0], in[1], in[2], in[3], out[1], out[2], k};
}

ffi::Error Forward(ffi::Buffer<ffi::F32> z, ffi::Buffer<ffi::F32> bias,
                   ffi::ResultBuffer<ffi::F32> y, int64_t window) {
  auto geo = geometry(z.dimensions(), y->dimensions(), window, bias.dimensions());
  if (geo.has_error()) return geo.error();
  const Geometry g = *geo;
  return jaxcnn_onednn::locked("bias_relu_max_pool (jaxcnn's kernel)", [&] {
    const TileIndex t(g, bias.typed_data());
    const float* in = z.typed_data();
    float* out = y->typed_data();
    jaxcnn_onednn::Failure failure;
#pragma omp parallel
    failure.guard([&] {
      std::vector<float> column(g.tiles_in());
#pragma omp for schedule(static) nowait
      for (int64_t r = 0; r < g.n * g.oh; ++r) {
        float* peak = out + r * g.tiles_out();
        tile_maxima(g, t, in + ((r / g.oh) * g.h + (r % g.oh) * g.k) * g.row(), column.data(),
                    peak);
        add_bias_relu(g, t, peak);
      }
    });
    failure.rethrow();
  });
}

ffi::Error Backward(ffi::Buffer<ffi::F32> z, ffi::Buffer<ffi::F32> bias,
                    ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dz,
                    ffi::ResultBuffer<ffi::F32> dbias, int64_t window) {
  auto geo = geometry(z.dimensions(), dy.dimensions(), window, bias.dimensions());
  if (geo.has_error()) return geo.error();
  const Geometry g = *geo;
  return jaxcnn_onednn::locked("bias_relu_max_pool gradient (jaxcnn's kernel)", [&] {
    const TileIndex t(g, bias.typed_data());
    const float* in = z.typed_data();
    float* din = dz->typed_data();
    const int64_t rest_rows = g.h - g.oh * g.k, rest_cols = g.row() - g.tiles_in();
    std::vector<std::vector<double>> sums(omp_get_max_threads());
    jaxcnn_onednn::Failure failure;
#pragma omp parallel
    failure.guard([&] {
      Scratch s(g);  // each thread's own, allocated by it (no false sharing)
#pragma omp for schedule(static) nowait
      for (int64_t r = 0; r < g.n * g.oh; ++r) {
        const int64_t offset = ((r / g.oh) * g.h + (r % g.oh) * g.k) * g.row();
        tile_maxima(g, t, in + offset, s.column.data(), s.peak.data());
        route_gradient(g, t, in + offset, dy.typed_data() + r * g.tiles_out(), din + offset, s);
        for (int64_t i = 0; rest_cols > 0 && i < g.k; ++i)  // columns past the last tile
          std::memset(din + offset + i * g.row() + g.tiles_in(), 0, sizeof(float) * rest_cols);
      }
      if (rest_rows > 0) {  // rows past the last tile
#pragma omp for schedule(static) nowait
        for (int64_t r = 0; r < g.n * rest_rows; ++r)
          std::memset(din + ((r / rest_rows) * g.h + g.oh * g.k + r % rest_rows) * g.row(), 0,
                      sizeof(float) * g.row());
      }
      sums[omp_get_thread_num()] = std::move(s.sum);
    });
    failure.rethrow();
    // The bias gradient: the threads' sums added in thread order (the same result each run).
    std::vector<double> total(g.c, 0.0);
    for (const std::vector<double>& sum : sums)
      for (size_t e = 0; e < sum.size(); ++e) total[e % g.c] += sum[e];
    for (int64_t ch = 0; ch < g.c; ++ch) dbias->typed_data()[ch] = float(total[ch]);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBiasReluMaxPoolForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("window"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBiasReluMaxPoolBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("window"));
