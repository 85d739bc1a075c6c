// jaxcnn's CPU convolution: oneDNN's direct convolution (forward, input gradient and kernel
// gradient) called from XLA through the FFI.
//
// Activations are NHWC and kernels HWIO, as XLA holds them; oneDNN picks its own blocked
// kernel layout and the kernel is reordered into it (and the kernel gradient out of it) on
// each call, which is small next to the convolution. Primitives are created once per shape
// and cached. Leading dimensions in front of NHWC/HWIO come from jax.vmap (method
// "expand_dims"): an operand whose leading size is 1 is shared by every slice.
//
// Built with onednn_matmul.cc into one library by jaxcnn/native/build.py (what the two share
// is in onednn_bridge.h); the Python side is jaxcnn/native/conv.py.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "onednn_bridge.h"

namespace ffi = xla::ffi;

namespace {

using namespace jaxcnn_onednn;

// One convolution's sizes, read from the trailing four dimensions of its operands.
struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr;

  std::string key(char kind) const {
    char text[192];
    std::snprintf(text, sizeof text, "%c %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld",
                  kind, long(n), long(h), long(w), long(c), long(kh), long(kw), long(o),
                  long(sh), long(sw), long(pt), long(pb), long(pl), long(pr));
    return text;
  }
  memory::desc image() const { return {{n, c, h, w}, memory::data_type::f32, memory::format_tag::nhwc}; }
  memory::desc output() const { return {{n, o, oh, ow}, memory::data_type::f32, memory::format_tag::nhwc}; }
  memory::desc kernel(memory::format_tag tag) const {
    return {{o, c, kh, kw}, memory::data_type::f32, tag};
  }
  memory::desc bias() const { return {{o}, memory::data_type::f32, memory::format_tag::a}; }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_before() const { return {pt, pl}; }
  memory::dims pad_after() const { return {pb, pr}; }
};

Dims last4(Dims d) { return Dims(d.begin() + (d.size() - 4), 4); }

Geometry geometry(Dims x, Dims w, Dims y, Dims strides, Dims pads) {
  x = last4(x), w = last4(w), y = last4(y);
  return Geometry{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
                  strides[0], strides[1], pads[0], pads[1], pads[2], pads[3]};
}

// oneDNN's own forward descriptor (its first choice of kernel): also the hint of the
// gradients' descriptors.
dnnl::convolution_forward::primitive_desc forward_hint(const Geometry& g) {
  return {cpu_engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
          g.image(), g.kernel(memory::format_tag::any), g.output(), g.strides(),
          g.pad_before(), g.pad_after(), user_scratchpad()};
}

// The forward pass with a bias and a ReLU applied to each output as it is written
// (relu(conv(x, w) + bias), one rounding for the addition as in XLA's z + bias), instead of
// XLA:CPU reading and writing the whole feature map once more for them.
dnnl::convolution_forward::primitive_desc forward_bias_relu_hint(const Geometry& g) {
  dnnl::post_ops relu;
  relu.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  dnnl::primitive_attr attr = user_scratchpad();
  attr.set_post_ops(relu);
  return {cpu_engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
          g.image(), g.kernel(memory::format_tag::any), g.bias(), g.output(), g.strides(),
          g.pad_before(), g.pad_after(), attr};
}

// The input-gradient or kernel-gradient descriptor (Desc), hinted by the forward pass
// `hint`, which must outlive any next_impl() on the result (oneDNN keeps a pointer to it).
template <typename Desc>
Desc backward_desc(const Geometry& g,
                   const dnnl::convolution_forward::primitive_desc& hint) {
  return {cpu_engine(), dnnl::algorithm::convolution_direct, g.image(),
          g.kernel(memory::format_tag::any), g.output(), g.strides(), g.pad_before(),
          g.pad_after(), hint, user_scratchpad()};
}

template <typename Desc>
Desc backward_desc(const Geometry& g) {
  return backward_desc<Desc>(g, forward_hint(g));
}

// $JAXCNN_ONEDNN_FIRST_CHOICE=1 keeps oneDNN's first choice everywhere (for
// benchmarks/input_gradient_kernels.py, which measures what the choices below are worth).
bool first_choice_only() {
  const char* first_choice = std::getenv("JAXCNN_ONEDNN_FIRST_CHOICE");
  return first_choice != nullptr && std::string(first_choice) == "1";
}

// Layers whose input gradient oneDNN's direct JIT kernel computes faster than its first
// choice, the brgemm-based ones: every strided layer (oneDNN 3's "brgconv_strided" took 1.4-5x
// as long: resnet20's 16 -> 32 3x3 stride-2 layer at batch 128, 3.8 against 1.7 ms) and
// layers of at most kDirectInputGradientChannels input channels (0.79-0.98x the time: 16
// channels, 3.7 against 3.1 ms; LeNet-style 20 -> 40 5x5, 3.1 against 2.4 ms). From 48
// channels on, stride 1, the brgemm kernels are as fast or faster, so they stay.
constexpr int64_t kDirectInputGradientChannels = 32;

bool direct_input_gradient_is_faster(const Geometry& g) {
  return g.sh > 1 || g.sw > 1 || g.c <= kDirectInputGradientChannels;
}

// Layers whose forward pass the direct JIT kernel computes faster than oneDNN's first choice
// ("brgconv") on AVX-512: output channels that do not fill whole 16-float vectors (batch 128,
// C++ sweeps: the lecture CNN's 20 -> 40 5x5, 13.2-16.7 against 11.5-12.1 ms; 16 -> 40
// 0.88x, 64 -> 40 3x3 0.84x, 32 -> 24 0.94x). With multiples of 16 brgconv is mostly as fast
// or faster (resnet20's 16 -> 16 3x3, 3.3 against 3.9 ms), so it stays.
bool direct_forward_is_faster(const Geometry& g) { return g.o % 16 != 0; }

std::string isa_of(const std::string& implementation) {
  return implementation.substr(implementation.rfind(':') + 1);
}

// The descriptor `make()` returns, oneDNN's first choice, or where `prefer_direct` and
// $JAXCNN_ONEDNN_FIRST_CHOICE is not 1, its first direct JIT kernel ("jit:" or "jit_1x1:")
// for the same instruction set as that first choice, if it has one (`avx512_only`: only
// when that instruction set is an AVX-512 one, where the rule was measured).
template <typename Desc, typename Make>
Desc direct_jit_if(bool prefer_direct, bool avx512_only, Make make) {
  Desc desc = make();
  const std::string first = desc.impl_info_str();
  if (!prefer_direct || first_choice_only() || first.rfind("jit", 0) == 0) return desc;
  if (avx512_only && isa_of(first).rfind("avx512", 0) != 0) return desc;
  while (desc.next_impl()) {
    const std::string name = desc.impl_info_str();
    if (name.rfind("jit", 0) == 0 && isa_of(name) == isa_of(first)) return desc;
  }
  return make();  // (the handle above has moved past the first choice)
}

dnnl::convolution_forward::primitive_desc forward_desc(const Geometry& g) {
  return direct_jit_if<dnnl::convolution_forward::primitive_desc>(
      direct_forward_is_faster(g), true, [&] { return forward_hint(g); });
}

dnnl::convolution_forward::primitive_desc forward_bias_relu_desc(const Geometry& g) {
  return direct_jit_if<dnnl::convolution_forward::primitive_desc>(
      direct_forward_is_faster(g), true, [&] { return forward_bias_relu_hint(g); });
}

// The input-gradient descriptor. Its hint (oneDNN's own forward choice) must outlive the
// walk through the implementations: oneDNN keeps a pointer to it.
dnnl::convolution_backward_data::primitive_desc input_gradient_desc(const Geometry& g) {
  using Desc = dnnl::convolution_backward_data::primitive_desc;
  const auto hint = forward_hint(g);
  return direct_jit_if<Desc>(direct_input_gradient_is_faster(g), false,
                             [&] { return backward_desc<Desc>(g, hint); });
}

memory in_layout(dnnl::stream& stream, const memory::desc& plain_desc,
                 const memory::desc& wanted, float* data) {
  memory plain(plain_desc, cpu_engine(), data);
  if (wanted == plain_desc) return plain;
  memory blocked(wanted, cpu_engine());
  dnnl::reorder(plain, blocked).execute(stream, plain, blocked);
  return blocked;
}

// Runs `p` on each vmapped slice, for the primitives that read one activation (`in`) and the
// kernel and write another (`out`): the forward pass and the input gradient. `shared` adds
// arguments that every slice reads as they are (the bias of the fused forward pass).
void run_with_kernel(const Prepared& p, const Slices& s, const Geometry& g,
                     int in_arg, const memory::desc& in_desc, float* in, float* kernel,
                     int out_arg, const memory::desc& out_desc, float* out,
                     const std::unordered_map<int, memory>& shared = {}) {
  for (int64_t i = 0; i < s.count; ++i) {
    dnnl::stream stream(cpu_engine());
    std::unordered_map<int, memory> args = shared;
    args[DNNL_ARG_WEIGHTS] = in_layout(stream, g.kernel(memory::format_tag::hwio), p.kernel,
                                       kernel + i * s.step[1]);
    args[in_arg] = memory(in_desc, cpu_engine(), in + i * s.step[0]);
    args[out_arg] = memory(out_desc, cpu_engine(), out + i * s.step[2]);
    args[DNNL_ARG_SCRATCHPAD] = scratch(p);
    p.primitive.execute(stream, args);
    stream.wait();
  }
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, Dims strides, Dims pads) {
  auto s = slices(x.dimensions(), w.dimensions(), y->dimensions(), 4);
  if (s.has_error()) return s.error();
  Geometry g = geometry(x.dimensions(), w.dimensions(), y->dimensions(), strides, pads);
  return locked("convolution", std::max(x.element_count(), y->element_count()), [&] {
    const Prepared& p = prepared(g.key('f'), [&] {
      auto desc = forward_desc(g);
      return prepare<dnnl::convolution_forward>(desc, desc.weights_desc());
    });
    run_with_kernel(p, *s, g, DNNL_ARG_SRC, g.image(), x.typed_data(), w.typed_data(),
                    DNNL_ARG_DST, g.output(), y->typed_data());
  });
}

// relu(conv(x, w) + bias) for one slice (jaxcnn/native/conv.py maps vmapped calls one
// slice at a time).
ffi::Error ForwardBiasRelu(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                           ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                           Dims strides, Dims pads) {
  if (x.dimensions().size() != 4 || w.dimensions().size() != 4 ||
      bias.dimensions().size() != 1 || bias.dimensions()[0] != w.dimensions()[3])
    return ffi::Error::InvalidArgument("conv_bias_relu takes NHWC x, HWIO w, one bias per O");
  Geometry g = geometry(x.dimensions(), w.dimensions(), y->dimensions(), strides, pads);
  return locked("convolution", std::max(x.element_count(), y->element_count()), [&] {
    const Prepared& p = prepared(g.key('r'), [&] {
      auto desc = forward_bias_relu_desc(g);
      return prepare<dnnl::convolution_forward>(desc, desc.weights_desc());
    });
    run_with_kernel(p, Slices{1, {0, 0, 0}}, g, DNNL_ARG_SRC, g.image(), x.typed_data(),
                    w.typed_data(), DNNL_ARG_DST, g.output(), y->typed_data(),
                    {{DNNL_ARG_BIAS, memory(g.bias(), cpu_engine(), bias.typed_data())}});
  });
}

ffi::Error InputGradient(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx, Dims strides, Dims pads) {
  auto s = slices(dy.dimensions(), w.dimensions(), dx->dimensions(), 4);
  if (s.has_error()) return s.error();
  Geometry g = geometry(dx->dimensions(), w.dimensions(), dy.dimensions(), strides, pads);
  return locked("convolution", std::max(dx->element_count(), dy.element_count()), [&] {
    const Prepared& p = prepared(g.key('x'), [&] {
      auto desc = input_gradient_desc(g);
      return prepare<dnnl::convolution_backward_data>(desc, desc.weights_desc());
    });
    run_with_kernel(p, *s, g, DNNL_ARG_DIFF_DST, g.output(), dy.typed_data(), w.typed_data(),
                    DNNL_ARG_DIFF_SRC, g.image(), dx->typed_data());
  });
}

ffi::Error KernelGradient(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, Dims strides, Dims pads) {
  auto s = slices(x.dimensions(), dy.dimensions(), dw->dimensions(), 4);
  if (s.has_error()) return s.error();
  Geometry g = geometry(x.dimensions(), dw->dimensions(), dy.dimensions(), strides, pads);
  return locked("convolution", std::max(x.element_count(), dy.element_count()), [&] {
    const Prepared& p = prepared(g.key('w'), [&] {
      auto desc = backward_desc<dnnl::convolution_backward_weights::primitive_desc>(g);
      return prepare<dnnl::convolution_backward_weights>(desc, desc.diff_weights_desc());
    });
    memory::desc plain_desc = g.kernel(memory::format_tag::hwio);
    for (int64_t i = 0; i < s->count; ++i) {
      dnnl::stream stream(cpu_engine());
      memory plain(plain_desc, cpu_engine(), dw->typed_data() + i * s->step[2]);
      memory out = p.kernel == plain_desc ? plain : memory(p.kernel, cpu_engine());
      memory src(g.image(), cpu_engine(), x.typed_data() + i * s->step[0]);
      memory diff_dst(g.output(), cpu_engine(), dy.typed_data() + i * s->step[1]);
      p.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                                   {DNNL_ARG_DIFF_WEIGHTS, out},
                                   {DNNL_ARG_SCRATCHPAD, scratch(p)}});
      if (!(p.kernel == plain_desc)) dnnl::reorder(out, plain).execute(stream, out, plain);
      stream.wait();
    }
  });
}

}  // namespace

// The name of the oneDNN implementation (its impl_info_str) that runs the convolution pass
// `kind` ('f' forward, 'x' input gradient, 'w' kernel gradient) of the geometry `sizes` (n,
// h, w, c, kh, kw, o, oh, ow, stride h, stride w, pad top, bottom, left, right), written to
// `name` (`capacity` bytes, NUL-terminated); 0 on success, else -1 with oneDNN's message
// there. For jaxcnn/native/conv.py's implementation(); it creates no primitive.
extern "C" int jaxcnn_conv_implementation(char kind, const int64_t* sizes, char* name,
                                          int capacity) {
  const int64_t* z = sizes;
  Geometry g{z[0], z[1], z[2], z[3], z[4], z[5], z[6], z[7], z[8],
             z[9], z[10], z[11], z[12], z[13], z[14]};
  std::string text;
  int status = 0;
  try {
    if (kind == 'f') text = forward_desc(g).impl_info_str();
    else if (kind == 'x') text = input_gradient_desc(g).impl_info_str();
    else if (kind == 'w')
      text = backward_desc<dnnl::convolution_backward_weights::primitive_desc>(g).impl_info_str();
    else text = std::string("unknown pass '") + kind + "'", status = -1;
  } catch (const std::exception& err) {
    text = err.what(), status = -1;
  }
  std::snprintf(name, size_t(capacity), "%s", text.c_str());
  return status;
}

#define JAXCNN_CONV_BINDING                              \
  ffi::Ffi::Bind()                                       \
      .Arg<ffi::Buffer<ffi::F32>>()                      \
      .Arg<ffi::Buffer<ffi::F32>>()                      \
      .Ret<ffi::Buffer<ffi::F32>>()                      \
      .Attr<ffi::Span<const int64_t>>("strides")         \
      .Attr<ffi::Span<const int64_t>>("padding")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnConvForward, Forward, JAXCNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnConvForwardBiasRelu, ForwardBiasRelu,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnConvInputGradient, InputGradient, JAXCNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnConvKernelGradient, KernelGradient, JAXCNN_CONV_BINDING);
