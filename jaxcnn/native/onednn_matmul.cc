// jaxcnn's CPU matmul for dense layers: oneDNN's matmul (its brgemm kernels) called from XLA
// through the FFI, under the same lock as the convolutions (onednn_bridge.h).
//
// C = op(A) @ op(B) on row-major float32 matrices, where op transposes when asked: a dense
// layer's forward pass is x @ W, its input gradient g @ W^T and its kernel gradient x^T @ g,
// all three without copying a transpose. Leading dimensions in front of the two matrix
// dimensions come from jax.vmap ("expand_dims"); an operand whose leading size is 1 is shared
// by every slice. The Python side is jaxcnn/native/matmul.py.
#include <cstdint>
#include <cstdio>
#include <string>

#include "onednn_bridge.h"

namespace ffi = xla::ffi;

namespace {

using namespace jaxcnn_onednn;

// A row-major (m, n) matrix, or the transpose of a row-major (n, m) one.
memory::desc matrix(int64_t m, int64_t n, bool transposed) {
  return {{m, n}, memory::data_type::f32,
          transposed ? memory::format_tag::ba : memory::format_tag::ab};
}

Dims last2(Dims d) { return Dims(d.begin() + (d.size() - 2), 2); }

ffi::Error MatMul(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                  ffi::ResultBuffer<ffi::F32> c, Dims transpose) {
  if (transpose.size() != 2) return ffi::Error::InvalidArgument("transpose takes two flags");
  auto s = slices(a.dimensions(), b.dimensions(), c->dimensions(), 2);
  if (s.has_error()) return s.error();
  bool ta = transpose[0] != 0, tb = transpose[1] != 0;
  Dims ad = last2(a.dimensions()), bd = last2(b.dimensions()), cd = last2(c->dimensions());
  int64_t m = cd[0], n = cd[1], k = ta ? ad[0] : ad[1];
  if ((ta ? ad[1] : ad[0]) != m || (tb ? bd[1] : bd[0]) != k || (tb ? bd[0] : bd[1]) != n)
    return ffi::Error::InvalidArgument("matmul operands do not fit the result");
  memory::desc a_desc = matrix(m, k, ta), b_desc = matrix(k, n, tb), c_desc = matrix(m, n, false);
  const int64_t largest = std::max({a.element_count(), b.element_count(), c->element_count()});
  return locked("matmul", largest, [&] {
    char key[128];
    std::snprintf(key, sizeof key, "m %ld %ld %ld %d %d", long(m), long(k), long(n), ta, tb);
    const Prepared& p = prepared(key, [&] {
      dnnl::matmul::primitive_desc desc(cpu_engine(), a_desc, b_desc, c_desc, user_scratchpad());
      return prepare<dnnl::matmul>(desc, desc.weights_desc());
    });
    run_slices(p, s->count, [&](int64_t i) -> std::unordered_map<int, memory> {
      return {{DNNL_ARG_SRC, memory(a_desc, cpu_engine(), a.typed_data() + i * s->step[0])},
              {DNNL_ARG_WEIGHTS, memory(b_desc, cpu_engine(), b.typed_data() + i * s->step[1])},
              {DNNL_ARG_DST, memory(c_desc, cpu_engine(), c->typed_data() + i * s->step[2])}};
    });
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnMatMul, MatMul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("transpose"));
