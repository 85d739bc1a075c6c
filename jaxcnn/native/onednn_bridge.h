// What jaxcnn's oneDNN calls from XLA share: the engine, the primitive cache, one scratch
// buffer, one lock, the one thread that runs the larger calls (NativeThread), the denormal
// mode of oneDNN's threads, and the slices jax.vmap stacks in front of the operands.
// onednn_conv.cc (convolutions), onednn_matmul.cc (dense layers), onednn_batch_norm.cc and
// jaxcnn's own kernels are compiled into one library, so these inline functions and their
// statics exist once.
#ifndef JAXCNN_ONEDNN_BRIDGE_H_
#define JAXCNN_ONEDNN_BRIDGE_H_

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <unordered_map>

#include <pthread.h>

#include <omp.h>
#include <pmmintrin.h>
#include <xmmintrin.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace jaxcnn_onednn {

namespace ffi = xla::ffi;
using dnnl::memory;
using Dims = ffi::Span<const int64_t>;

inline dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The sizes of a stride-1 convolution: input n x h x w x c (NHWC), a kh x kw kernel, o
// output channels on oh x ow, top and left padding (bottom and right follow from the rest).
struct Stride1Conv {
  int64_t n, h, w, c, kh, kw, o, oh, ow, top, left;
};

// The sizes from NHWC x, HWIO w and NHWC g (the output, or its gradient), as a Geometry
// (Stride1Conv or a struct derived from it), or an error that says `takes` (what the kernel
// takes) and what these shapes must be.
template <typename Geometry = Stride1Conv>
ffi::ErrorOr<Geometry> stride1_conv(Dims x, Dims w, Dims g, int64_t top, int64_t left,
                                    const std::string& takes) {
  if (x.size() != 4 || w.size() != 4 || g.size() != 4 || g[0] != x[0] || w[2] != x[3] ||
      w[3] != g[3] || top < 0 || left < 0 || g[1] + w[0] - 1 < top + x[1] ||
      g[2] + w[1] - 1 < left + x[2])
    return ffi::Error::InvalidArgument(takes +
                                       " of a stride-1 convolution with non-negative padding");
  return Geometry{Stride1Conv{x[0], x[1], x[2], x[3], w[0], w[1], w[3], g[1], g[2], top, left}};
}

// The FFI signature of jaxcnn's stride-1 kernels: two float32 operands, one float32 result,
// and the top and left padding.
inline auto stride1_binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("top")
      .Attr<int64_t>("left");
}

// The product of the dimensions in front of the trailing `rank` ones (the vmapped slices).
inline int64_t leading(Dims d, size_t rank) {
  int64_t count = 1;
  for (size_t i = 0; i + rank < d.size(); ++i) count *= d[i];
  return count;
}

// The number of elements in the trailing `rank` dimensions (one slice).
inline int64_t trailing_size(Dims d, size_t rank) {
  int64_t count = 1;
  for (size_t i = d.size() - rank; i < d.size(); ++i) count *= d[i];
  return count;
}

// Primitives take their scratch memory from us (scratch()), not from oneDNN's own shared
// scratchpad, which is tied to the thread that created the primitive; XLA calls us from any
// of its threads.
inline dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A primitive, the weights layout it was created for and the scratch memory it needs.
struct Prepared {
  dnnl::primitive primitive;
  memory::desc kernel;
  memory::desc scratchpad;
};

template <typename Primitive, typename Desc>
Prepared prepare(const Desc& desc, const memory::desc& kernel) {
  return Prepared{Primitive(desc), kernel, desc.scratchpad_desc()};
}

// One scratch buffer for all primitives, grown to the largest need (callers hold
// onednn_mutex, so only one primitive uses it at a time).
inline memory scratch(const Prepared& p) {
  static std::unique_ptr<void, void (*)(void*)> buffer(nullptr, std::free);
  static size_t capacity = 0;
  size_t needed = p.scratchpad.get_size();
  if (needed > capacity) {
    size_t rounded = (needed + 4095) / 4096 * 4096;
    buffer.reset(std::aligned_alloc(4096, rounded));
    if (!buffer) throw std::bad_alloc();
    capacity = rounded;
  }
  return memory(p.scratchpad, cpu_engine(), buffer.get());
}

// One oneDNN call at a time. XLA runs independent thunks on different threads at once; two
// calls together would each start a team of OpenMP threads on the same cores, whose
// spinning barriers then compete (before this lock and the user scratchpad above, with
// oneDNN's shared scratchpad used from several threads, an OpenMP thread of a ResNet-50 run
// spun in a oneDNN barrier for minutes). Each call uses every core anyway.
inline std::mutex& onednn_mutex() {
  static std::mutex mutex;
  return mutex;
}

// The cached primitive for `key` (made by `make` the first time); callers hold onednn_mutex.
template <typename Make>
const Prepared& prepared(const std::string& key, Make make) {
  static std::unordered_map<std::string, std::unique_ptr<Prepared>> cache;
  auto& slot = cache[key];
  if (!slot) slot = std::make_unique<Prepared>(make());
  return *slot;
}

// The slices that jax.vmap stacked in front of operands of `rank` dimensions: how many, and
// each operand's step between them (0 for an operand shared by all).
struct Slices {
  int64_t count;
  int64_t step[3];
};

// The step between slices of an operand of `rank` trailing dimensions when there are
// `count` slices: its slice size, or 0 when one slice is shared by all; false when its
// leading size is neither 1 nor `count`.
inline bool slice_step(Dims d, size_t rank, int64_t count, int64_t* step) {
  int64_t n = leading(d, rank);
  *step = n == 1 ? 0 : trailing_size(d, rank);
  return n == 1 || n == count;
}

inline ffi::ErrorOr<Slices> slices(Dims a, Dims b, Dims out, size_t rank) {
  int64_t count = leading(out, rank);
  Slices s{count, {0, 0, trailing_size(out, rank)}};
  if (!slice_step(a, rank, count, &s.step[0]) || !slice_step(b, rank, count, &s.step[1]))
    return ffi::Error::InvalidArgument("mismatched vmapped operands");
  return s;
}

// Runs `p` once per vmapped slice, slice i with the arguments `args(i)` and the shared scratch.
template <typename Args>
void run_slices(const Prepared& p, int64_t count, Args args) {
  for (int64_t i = 0; i < count; ++i) {
    dnnl::stream stream(cpu_engine());
    std::unordered_map<int, memory> slice_args = args(i);
    slice_args[DNNL_ARG_SCRATCHPAD] = scratch(p);
    p.primitive.execute(stream, slice_args);
    stream.wait();
  }
}

// Sets flush-to-zero and denormals-are-zero on the OpenMP threads oneDNN will use, as XLA:CPU
// sets them on its own threads (the one that calls us included), so that oneDNN's workers
// treat denormals as the rest of the program does and never take the slow path for them.
// Each calling thread keeps its own pool of OpenMP workers for the process's life, so once
// per calling thread is enough, and a call costs no parallel region beyond oneDNN's own.
inline void flush_denormals() {
  thread_local bool flushed = false;
  if (flushed) return;
#pragma omp parallel
  {
    _MM_SET_FLUSH_ZERO_MODE(_MM_FLUSH_ZERO_ON);
    _MM_SET_DENORMALS_ZERO_MODE(_MM_DENORMALS_ZERO_ON);
  }
  flushed = true;
}

// Runs `task`, returning what it threw (nothing may leave a thread's entry function or an FFI
// handler).
inline std::exception_ptr run_capturing(const std::function<void()>& task) {
  try {
    task();
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

// The one thread that runs the larger native calls (kNativeThreadElements below), so that the
// process has one OpenMP team.
// libgomp gives each thread that starts a parallel region a team of its own, and once it
// manages more threads than there are CPUs it lets idle workers spin only about 100 times
// before they sleep in the kernel ("throttled" waiting). XLA calls us from up to four of its
// threads: four teams on two cores, so every parallel region woke a sleeping worker (resnet20
// at batch 128: about 370 voluntary context switches a step, the CPUs idle 18-20% of the
// step, and each wake-up slow on a virtual machine whose host is busy). With one team its
// worker spins between regions as PyTorch's do.
class NativeThread {
 public:
  // Runs `task` on the native thread and waits for it; returns what it threw.
  std::exception_ptr run(const std::function<void()>& task) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!started_) {
      try {
        std::thread(&NativeThread::serve, this).detach();
      } catch (...) {  // no thread to be had: the call fails with the system's reason
        return std::current_exception();
      }
      started_ = true;
    }
    task_ = &task;
    done_ = false;
    wake_.notify_one();
    finished_.wait(lock, [this] { return done_; });
    return error_;
  }

 private:
  void serve() {
    pthread_setname_np(pthread_self(), "jaxcnn-native");  // its OpenMP workers inherit it
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return task_ != nullptr; });
      const std::function<void()>* task = task_;
      task_ = nullptr;
      lock.unlock();
      std::exception_ptr error = run_capturing(*task);
      lock.lock();
      error_ = error;
      done_ = true;
      finished_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, finished_;
  const std::function<void()>* task_ = nullptr;
  std::exception_ptr error_;
  bool done_ = false, started_ = false;
};

// The process's native thread (callers hold onednn_mutex). It is never destroyed, since it
// may still be waiting when the process exits; a child made by fork() has no such thread and
// makes its own.
inline NativeThread& native_thread() {
  static NativeThread* current = nullptr;
  static std::once_flag at_fork;
  std::call_once(at_fork, [] { pthread_atfork(nullptr, nullptr, [] { current = nullptr; }); });
  if (current == nullptr) current = new NativeThread();
  return *current;
}

// Calls whose largest operand has fewer elements than this run on the calling thread alone,
// with no OpenMP team: handing them to the native thread, whose worker then spins beside
// XLA's own threads, made LeNet-5 steps at batch 24 (where C3's input gradient, 24x10x10x16,
// is the only native call and XLA's fusions are most of the step) 0.69x as fast; one
// thread alone costs them 5%. At batch 128 every native call of the benchmarked models
// (mnist_cnn, lenet5, resnet20, resnet50) but LeNet-5's 400 -> 120 dense layer is larger.
// The choice follows from the shapes, so each cached primitive is always created and run
// with the same number of threads, as oneDNN requires.
constexpr int64_t kNativeThreadElements = int64_t{1} << 16;

inline std::exception_ptr on_this_thread_alone(const std::function<void()>& task) {
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  std::exception_ptr error = run_capturing(task);
  omp_set_num_threads(threads);
  return error;
}

// Runs `body` holding onednn_mutex, on the native thread (or, below kNativeThreadElements
// elements in its largest operand, on the calling thread alone), turning its exceptions into
// FFI errors that name `what` failed.
template <typename Body>
ffi::Error locked(const char* what, int64_t elements, Body body) {
  std::lock_guard<std::mutex> lock(onednn_mutex());
  const std::function<void()> task = [&] {
    flush_denormals();
    body();
  };
  std::exception_ptr error = elements < kNativeThreadElements ? on_this_thread_alone(task)
                                                              : native_thread().run(task);
  if (!error) return ffi::Error::Success();
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& err) {
    return ffi::Error::Internal(std::string("oneDNN ") + what + ": " + err.what());
  } catch (...) {
    return ffi::Error::Internal(std::string("oneDNN ") + what + ": unknown exception");
  }
}

// The first exception thrown in an OpenMP region's threads, rethrown after it (an exception
// leaving a thread of the region would end the process). The loops in a guarded region are
// `nowait`, so a thread that fails before its share cannot leave the others at a barrier.
class Failure {
 public:
  template <typename Body>
  void guard(Body body) {
    try {
      body();
    } catch (...) {
#pragma omp critical(jaxcnn_native_failure)
      if (!first_) first_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::exception_ptr first_;
};

}  // namespace jaxcnn_onednn

#endif  // JAXCNN_ONEDNN_BRIDGE_H_
