// jaxcnn's CPU batch normalization in training: oneDNN's (Ioffe and Szegedy 2015) forward
// pass, which returns the batch mean and biased variance with the normalized output, and its
// backward pass, the input gradient through the batch statistics and the gradients of scale
// and shift; called from XLA through the FFI under the bridge's lock (onednn_bridge.h).
//
// Activations are NHWC as XLA holds them, statistics per channel (the last axis). Leading
// dimensions in front of NHWC (and of the per-channel vectors) come from jax.vmap
// ("expand_dims"): each slice is normalized alone, and an operand whose leading size is 1 is
// shared by every slice. The Python side is jaxcnn/native/batch_norm.py.
#include <cstdint>
#include <cstdio>
#include <string>

#include "onednn_bridge.h"

namespace ffi = xla::ffi;

namespace {

using namespace jaxcnn_onednn;

using Vector = ffi::Buffer<ffi::F32>;
// Learned scale and shift, batch statistics computed (not given).
dnnl::normalization_flags flags() {
  return dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
}

memory::desc activation(Dims x) {
  Dims d(x.begin() + (x.size() - 4), 4);
  return {{d[0], d[3], d[1], d[2]}, memory::data_type::f32, memory::format_tag::nhwc};
}

std::string key(char kind, const memory::desc& x, float epsilon) {
  auto d = x.get_dims();
  char text[128];
  std::snprintf(text, sizeof text, "%c %ld %ld %ld %ld %a", kind, long(d[0]), long(d[1]),
                long(d[2]), long(d[3]), double(epsilon));
  return text;
}

dnnl::batch_normalization_forward::primitive_desc forward_desc(const memory::desc& x,
                                                               float epsilon) {
  return {cpu_engine(), dnnl::prop_kind::forward_training, x, x, epsilon, flags(),
          user_scratchpad()};
}

// The slice count of `out` (an activation) and the steps of `operands`, each of `ranks[i]`
// trailing dimensions (4 for activations, 1 for per-channel vectors).
template <size_t N>
ffi::ErrorOr<int64_t> steps(Dims out, const Dims (&operands)[N], const size_t (&ranks)[N],
                            int64_t (&step)[N]) {
  int64_t count = leading(out, 4);
  for (size_t i = 0; i < N; ++i)
    if (!slice_step(operands[i], ranks[i], count, &step[i]))
      return ffi::Error::InvalidArgument("mismatched vmapped operands");
  return count;
}

memory at(const memory::desc& desc, float* base, int64_t offset) {
  return memory(desc, cpu_engine(), base + offset);
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, Vector scale, Vector shift,
                   ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> mean,
                   ffi::ResultBuffer<ffi::F32> variance, float epsilon) {
  const Dims operands[] = {x.dimensions(), scale.dimensions(), shift.dimensions(),
                           y->dimensions(), mean->dimensions(), variance->dimensions()};
  int64_t step[6];
  auto count = steps(y->dimensions(), operands, {4, 1, 1, 4, 1, 1}, step);
  if (count.has_error()) return count.error();
  memory::desc act = activation(x.dimensions());
  return locked("batch normalization", x.element_count(), [&] {
    const Prepared& p = prepared(key('n', act, epsilon), [&] {
      auto desc = forward_desc(act, epsilon);
      return prepare<dnnl::batch_normalization_forward>(desc, desc.weights_desc());
    });
    const memory::desc& channels = p.kernel;
    run_slices(p, *count, [&](int64_t i) -> std::unordered_map<int, memory> {
      return {{DNNL_ARG_SRC, at(act, x.typed_data(), i * step[0])},
              {DNNL_ARG_SCALE, at(channels, scale.typed_data(), i * step[1])},
              {DNNL_ARG_SHIFT, at(channels, shift.typed_data(), i * step[2])},
              {DNNL_ARG_DST, at(act, y->typed_data(), i * step[3])},
              {DNNL_ARG_MEAN, at(channels, mean->typed_data(), i * step[4])},
              {DNNL_ARG_VARIANCE, at(channels, variance->typed_data(), i * step[5])}};
    });
  });
}

ffi::Error Backward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, Vector mean,
                    Vector variance, Vector scale, ffi::ResultBuffer<ffi::F32> dx,
                    ffi::ResultBuffer<ffi::F32> dscale, ffi::ResultBuffer<ffi::F32> dshift,
                    float epsilon) {
  const Dims operands[] = {x.dimensions(), dy.dimensions(), mean.dimensions(),
                           variance.dimensions(), scale.dimensions(), dx->dimensions(),
                           dscale->dimensions(), dshift->dimensions()};
  int64_t step[8];
  auto count = steps(dx->dimensions(), operands, {4, 4, 1, 1, 1, 4, 1, 1}, step);
  if (count.has_error()) return count.error();
  memory::desc act = activation(x.dimensions());
  return locked("batch normalization", x.element_count(), [&] {
    const Prepared& p = prepared(key('N', act, epsilon), [&] {
      dnnl::batch_normalization_backward::primitive_desc desc(
          cpu_engine(), dnnl::prop_kind::backward, act, act, act, epsilon, flags(),
          forward_desc(act, epsilon), user_scratchpad());
      return prepare<dnnl::batch_normalization_backward>(desc, desc.weights_desc());
    });
    const memory::desc& channels = p.kernel;
    run_slices(p, *count, [&](int64_t i) -> std::unordered_map<int, memory> {
      return {{DNNL_ARG_SRC, at(act, x.typed_data(), i * step[0])},
              {DNNL_ARG_DIFF_DST, at(act, dy.typed_data(), i * step[1])},
              {DNNL_ARG_MEAN, at(channels, mean.typed_data(), i * step[2])},
              {DNNL_ARG_VARIANCE, at(channels, variance.typed_data(), i * step[3])},
              {DNNL_ARG_SCALE, at(channels, scale.typed_data(), i * step[4])},
              {DNNL_ARG_DIFF_SRC, at(act, dx->typed_data(), i * step[5])},
              {DNNL_ARG_DIFF_SCALE, at(channels, dscale->typed_data(), i * step[6])},
              {DNNL_ARG_DIFF_SHIFT, at(channels, dshift->typed_data(), i * step[7])}};
    });
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBatchNormForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBatchNormBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon"));
