// A convolution's epilogue in one pass each way: y = max_pool(relu(z + bias)) over
// non-overlapping k x k tiles (stride k, a trailing remainder dropped), and its gradient with
// respect to z and bias. Not oneDNN: plain loops that the compiler vectorizes (one clone per
// instruction set, chosen when the library loads), under the bridge's lock and OpenMP threads
// (onednn_bridge.h) like the oneDNN calls it sits between.
//
// Why: XLA:CPU computes this epilogue as five loop fusions and a reduction (LeNet-5's first
// stage at batch 128: about 1.2 ms of a 6-8 ms train step), reading the 2.4 MB feature map
// nine times; here the forward pass reads it once and the backward pass once or twice.
//
// Semantics, the XLA expression's: relu is monotonic, so the tile maximum of relu(z + b) is
// relu(max(z) + b), bit for bit (adding b rounds monotonically). The gradient of a tile goes
// to the elements whose z + b (rounded, as XLA compares relu(z + b)) equals the tile's
// maximum plus b, shared equally among ties (jaxcnn.models.layers.max_pool), and to none when
// that is not above 0 (relu's gradient at 0 is 0). NaN propagates as jnp.maximum does; only
// an infinite bias meeting an opposite infinity in z gives inf here where XLA gives NaN. The
// bias gradient is the sum of z's gradient per channel: in float within a row of tiles, in
// double across them, the threads' sums in thread order.
//
// Operands are NHWC float32 with one bias per channel; leading dimensions from jax.vmap are
// not supported (the Python side, jaxcnn/native/pool.py, maps such calls sequentially).
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <exception>
#include <optional>
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

// Below this many channels a tile's channels fill less than one vector register: the
// forward pass runs over a whole row of tiles at once through index tables (gathers); at or
// above it, over the channels of one tile.
constexpr int64_t kWideChannels = 16;
// From this many channels on, the gradient runs over the channels of one tile (few passes,
// in cache); below it, over blocks of rows of tiles (more passes, all of them vectorized,
// no gathers). Alone (benchmarks/conv_pool.py shapes), blocks took LeNet-5's C1 (6 channels)
// 0.78 -> 0.46-0.56 ms and C3 (16) 0.20 -> 0.15-0.18 ms; VGG's 16 x 56 x 56 x 256 map
// 15-16 ms against 9 tile by tile, and 32 channels (the Keras CNN's) about even.
constexpr int64_t kTileGradientChannels = 32;

// The gradient by blocks takes about this many elements of one input row at a time: several
// rows of tiles side by side where a row's tiles are fewer (LeNet-5's C1: 168 elements a
// row), so that the loops are long enough to vectorize well, or a part of a row's tiles
// where they are more (224 x 224 x 8 maps: 1,792), so that the working rows stay in cache.
constexpr int64_t kBlockElements = 1024;

struct Block {
  int64_t rows, width;  // rows of tiles, elements of one input row of each
};

Block gradient_block(const Geometry& g) {
  const int64_t tile = g.k * g.c;
  if (g.tiles_in() > kBlockElements)
    return {1, std::max<int64_t>(1, kBlockElements / tile) * tile};
  // several rows only where they are evenly spaced (no rows past an image's last tile)
  if (g.h % g.k != 0) return {1, g.tiles_in()};
  const int64_t rows = std::min(g.n * g.oh, kBlockElements / g.tiles_in());
  return {std::max<int64_t>(1, rows), g.tiles_in()};
}

// For rows of tiles: first[q] is the offset, in a tile row's first input row, of output
// element q's tile's first element; bias[q] is the bias of its channel. For a block of the
// gradient (the rows side by side): in_bias[e] is element e's bias, owner[e] the output
// element (of those rows) it belongs to and tap[e] its column within its tile.
struct TileIndex {
  std::vector<int32_t> first, owner, tap;
  std::vector<float> bias, in_bias;
  TileIndex(const Geometry& g, const float* channel_bias, Block block = {0, 0})
      : first(g.tiles_out()), owner(block.rows * block.width), tap(block.rows * block.width),
        bias(g.tiles_out()), in_bias(block.width) {
    for (int64_t q = 0; q < g.tiles_out(); ++q) {
      first[q] = int32_t((q / g.c) * g.k * g.c + q % g.c);
      bias[q] = channel_bias[q % g.c];
    }
    for (int64_t e = 0; e < block.width; ++e) in_bias[e] = channel_bias[e % g.c];
    for (int64_t r = 0, p = 0; r < block.rows; ++r)
      for (int64_t e = 0; e < block.width; ++e, ++p) {
        owner[p] = int32_t(r * g.tiles_out() + (e / (g.k * g.c)) * g.c + e % g.c);
        tap[p] = int32_t((e / g.c) % g.k);
      }
  }
};

// One thread's working rows for the gradient by blocks, each as long as one input row of a
// block (`span`: the rows of tiles side by side) except `shifted` (all k input rows) and two
// rows read at shifts of up to pad = (k - 1) * c, padded by that much: `column` at the end
// (read forward from each tile's first column) and `lead` at the front (read backward from
// the tile's other columns); and the running sums of z's gradient per position of a block,
// which Backward adds up per channel in double.
struct Scratch {
  int64_t pad;
  std::vector<float> shifted, column, lead, spread, count, share, row_sum;
  std::vector<double> sum;
  Scratch(const Geometry& g, Block b)
      : pad((g.k - 1) * g.c), shifted(g.k * b.rows * b.width), column(b.rows * b.width + pad),
        lead(b.rows * b.width + pad), spread(b.rows * b.width), count(b.rows * b.width),
        share(b.rows * b.width), row_sum(b.rows * b.width), sum(b.rows * b.width, 0.0) {}
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

// to[e] = from[e - tap[e] * c]: each element of a tile row gets the value at its tile's first
// column (`from` readable from -(k - 1) * c). Shifted contiguous loads and selects, no gathers.
__attribute__((always_inline)) inline void from_first_column(const Geometry& g, int64_t span,
                                                             const int32_t* __restrict tap,
                                                             const float* __restrict from,
                                                             float* __restrict to) {
  const int64_t c = g.c;
  for (int64_t e = 0; e < span; ++e) to[e] = from[e];
  for (int64_t j = 1; j < g.k; ++j)
    for (int64_t e = 0; e < span; ++e) to[e] = tap[e] == j ? from[e - j * c] : to[e];
}

// The gradient of a block: `rows` rows of tiles, `width` elements of each of their input
// rows (whole tiles), from `in` and into `din` (their first rows), `grad` the gradient of
// their outputs. Adds the block's bias gradient. Every loop runs over the whole block with
// contiguous loads (the tile's columns are reached by loads shifted by multiples of c), so
// that few channels (LeNet-5's 6) vectorize as well as many; only the output gradient is
// spread to the elements through the `owner` table.
__attribute__((target_clones("avx512f", "avx2", "default")))
void route_gradient(const Geometry& g, const TileIndex& t, const float* __restrict in,
                    const float* __restrict grad, float* __restrict din, Scratch& s,
                    int64_t rows, int64_t width) {
  // `span`: the elements of one input row of each row of tiles, side by side
  const int64_t span = rows * width, row = g.row(), k = g.k, c = g.c;
  const float* __restrict in_bias = t.in_bias.data();
  const int32_t* __restrict owner = t.owner.data();
  const int32_t* __restrict tap = t.tap.data();
  float* __restrict shifted = s.shifted.data();  // the k input rows plus bias
  float* __restrict column = s.column.data();    // their maximum per position
  float* __restrict lead = s.lead.data() + s.pad;  // at a tile's first column: its maximum
  float* __restrict spread = s.spread.data();    // each element's tile maximum (plus bias)
  float* __restrict count = s.count.data();  // each element's tile's count of maxima
  float* __restrict share = s.share.data();
  float* __restrict row_sum = s.row_sum.data();
  for (int64_t i = 0; i < k; ++i)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t e = 0; e < width; ++e)
        shifted[i * span + r * width + e] = in[(r * k + i) * row + e] + in_bias[e];
  for (int64_t e = 0; e < span; ++e) column[e] = shifted[e];
  for (int64_t i = 1; i < k; ++i)
    for (int64_t e = 0; e < span; ++e) column[e] = nan_max(column[e], shifted[i * span + e]);
  for (int64_t e = span; e < span + s.pad; ++e) column[e] = 0.f;  // read, never used
  for (int64_t e = 0; e < span; ++e) lead[e] = column[e];
  for (int64_t j = 1; j < k; ++j)
    for (int64_t e = 0; e < span; ++e) lead[e] = nan_max(lead[e], column[e + j * c]);
  from_first_column(g, span, tap, lead, spread);
  // count: how many of the tile's elements equal its maximum (they share the gradient),
  // per column of the tile into `column`, per tile into `lead` at each tile's first column
  for (int64_t e = 0; e < span; ++e) column[e] = shifted[e] == spread[e];
  for (int64_t i = 1; i < k; ++i)
    for (int64_t e = 0; e < span; ++e) column[e] += shifted[i * span + e] == spread[e];
  for (int64_t e = 0; e < span; ++e) lead[e] = column[e];
  for (int64_t j = 1; j < k; ++j)
    for (int64_t e = 0; e < span; ++e) lead[e] += column[e + j * c];
  from_first_column(g, span, tap, lead, count);
  for (int64_t e = 0; e < span; ++e) {  // divided unconditionally, so that it vectorizes
    const float part = grad[owner[e]] / count[e];
    share[e] = spread[e] > 0.f ? part : 0.f;
  }
  for (int64_t e = 0; e < span; ++e) row_sum[e] = 0.f;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      const float* __restrict z = shifted + i * span + r * width;
      const float* __restrict top = spread + r * width;
      const float* __restrict part = share + r * width;
      float* __restrict out = din + (r * k + i) * row;
      float* __restrict total = row_sum + r * width;
      for (int64_t e = 0; e < width; ++e) {
        const float v = z[e] == top[e] ? part[e] : 0.f;
        out[e] = v;
        total[e] += v;
      }
    }
  double* __restrict sum = s.sum.data();
  for (int64_t e = 0; e < span; ++e) sum[e] += row_sum[e];
}

// The per-tile gradient's working rows: one output row's tile maxima (before bias) and
// gradient shares, one tile's maxima plus bias, and the sums of z's gradient per channel.
struct TileScratch {
  std::vector<float> column, peak, share, top, row_sum;
  std::vector<double> sum;
  explicit TileScratch(const Geometry& g)
      : column(g.tiles_in()), peak(g.tiles_out()), share(g.tiles_out()), top(g.c),
        row_sum(g.c), sum(g.c, 0.0) {}
};

// The gradient of one row of tiles, tile by tile over their channels (many channels):
// `in` and `din` its k input rows, `grad` its output row's gradient.
__attribute__((target_clones("avx512f", "avx2", "default")))
void route_gradient_per_tile(const Geometry& g, const TileIndex& t, const float* __restrict in,
                             const float* __restrict grad, float* __restrict din,
                             TileScratch& s) {
  const int64_t row = g.row(), k = g.k, c = g.c;
  tile_maxima(g, t, in, s.column.data(), s.peak.data());
  const float* __restrict peak = s.peak.data();
  float* __restrict top = s.top.data();  // the tile's maxima plus bias
  float* __restrict row_sum = s.row_sum.data();
  for (int64_t ch = 0; ch < c; ++ch) row_sum[ch] = 0.f;
  for (int64_t o = 0; o < g.ow; ++o) {
    const float* tile = in + o * k * c;
    float* dtile = din + o * k * c;
    const float* b = t.bias.data() + o * c;
    for (int64_t ch = 0; ch < c; ++ch) top[ch] = peak[o * c + ch] + b[ch];
    float* __restrict sh = s.share.data() + o * c;
    for (int64_t ch = 0; ch < c; ++ch) sh[ch] = 0.f;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j)
        for (int64_t ch = 0; ch < c; ++ch) sh[ch] += tile[i * row + j * c + ch] + b[ch] == top[ch];
    for (int64_t ch = 0; ch < c; ++ch) sh[ch] = top[ch] > 0.f ? grad[o * c + ch] / sh[ch] : 0.f;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j)
        for (int64_t ch = 0; ch < c; ++ch) {
          const float v = tile[i * row + j * c + ch] + b[ch] == top[ch] ? sh[ch] : 0.f;
          dtile[i * row + j * c + ch] = v;
          row_sum[ch] += v;
        }
  }
  for (int64_t ch = 0; ch < c; ++ch) s.sum[ch] += row_sum[ch];
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
  return jaxcnn_onednn::locked("bias_relu_max_pool (jaxcnn's kernel)", z.element_count(), [&] {
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
  return jaxcnn_onednn::locked("bias_relu_max_pool gradient (jaxcnn's kernel)",
                                z.element_count(), [&] {
    const bool per_tile = g.c >= kTileGradientChannels;
    const Block block = per_tile ? Block{0, 0} : gradient_block(g);
    const int64_t tile_rows = g.n * g.oh, rows = std::max<int64_t>(block.rows, 1);
    const int64_t parts = per_tile ? 1 : (g.tiles_in() + block.width - 1) / block.width;
    const int64_t blocks = (tile_rows + rows - 1) / rows * parts;  // parts of rows of tiles
    const TileIndex t(g, bias.typed_data(), block);
    const float* in = z.typed_data();
    float* din = dz->typed_data();
    const int64_t rest_rows = g.h - g.oh * g.k, rest_cols = g.row() - g.tiles_in();
    std::vector<std::vector<double>> sums(omp_get_max_threads());
    jaxcnn_onednn::Failure failure;
#pragma omp parallel
    failure.guard([&] {
      // each thread's own working rows, allocated by it (no false sharing)
      std::optional<TileScratch> tiles;
      std::optional<Scratch> lines;
      if (per_tile)
        tiles.emplace(g);
      else
        lines.emplace(g, block);
#pragma omp for schedule(static) nowait
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t first = b / parts * rows, count = std::min(rows, tile_rows - first);
        const int64_t start = b % parts * block.width;  // in the row, at a tile's start
        const int64_t offset = ((first / g.oh) * g.h + (first % g.oh) * g.k) * g.row();
        const float* grad = dy.typed_data() + first * g.tiles_out() + start / g.k;
        if (per_tile) {
          route_gradient_per_tile(g, t, in + offset, grad, din + offset, *tiles);
        } else {
          const int64_t width = std::min(block.width, g.tiles_in() - start);
          route_gradient(g, t, in + offset + start, grad, din + offset + start, *lines, count,
                         width);
        }
        for (int64_t i = 0; rest_cols > 0 && b % parts == parts - 1 && i < count * g.k; ++i)
          std::memset(din + offset + i * g.row() + g.tiles_in(), 0, sizeof(float) * rest_cols);
      }
      if (rest_rows > 0) {  // rows past the last tile
#pragma omp for schedule(static) nowait
        for (int64_t r = 0; r < g.n * rest_rows; ++r)
          std::memset(din + ((r / rest_rows) * g.h + g.oh * g.k + r % rest_rows) * g.row(), 0,
                      sizeof(float) * g.row());
      }
      sums[omp_get_thread_num()] = std::move(per_tile ? tiles->sum : lines->sum);
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
