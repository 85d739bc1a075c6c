"""The zoo's convolution: oneDNN's on the CPU, else XLA's routed around XLA:CPU's slow cases.

On the CPU (2 x86 cores, JAX 0.12, batch 128; ``benchmarks/throughput.py`` times whole train
steps), float32 NHWC convolutions without groups or dilation run oneDNN's direct convolution
(forward, input gradient and kernel gradient; :mod:`jaxcnn.native`), called from XLA through
its FFI: 190-250 GFLOP/s on the layers of resnet20 and the lecture CNN, against 90-200 for
XLA:CPU's forward pass and 10-170 for forward and backward together; convolutions of fewer
than :data:`MIN_ONEDNN_MACS` multiply-adds keep XLA's routes, faster there; the input
gradient of stride-1 layers with few input channels and a large enough receptive field is
jaxcnn's own col2im kernel (:data:`MAX_FEW_CHANNELS`; LeNet-5's C3, whole LeNet-5 steps
1.10x faster, paired, alternating in two processes), and the kernel gradient of small
stride-1 first layers with few outputs is jaxcnn's own too (:data:`MAX_FEW_TAP_OUTPUTS`;
LeNet-5's C1 below oneDNN's threshold, whole steps at batch 24 1.09x). It needs the oneDNN
wheels and a C++ compiler (:func:`jaxcnn.native.native_status` says whether it is in use, and
why not); programs XLA partitions over several devices do without it
(:func:`without_native_convolution`).

Without oneDNN, XLA's convolution is used, with these routes around XLA:CPU's slow cases:

- The kernel (weight) gradient, which XLA computes as one more convolution whose "filter"
  is the output gradient, is computed as a matmul of patches (im2col, Chellapilla, Puri and
  Simard 2006): patches @ output gradient per image, summed by a ``lax.scan`` over the batch
  (:func:`kernel_gradient`). Alone it is much faster for 1x1 convolutions (ResNet-50's
  16x16x64 -> 256 expansion: 77 -> 16 ms) and slower for 3x3 layers with many channels
  (16x16x64 -> 64: 32 against 16 ms), yet resnet20's whole train step is faster with it
  (289-299 against 224-246 images/s): in the whole step XLA's own kernel gradient of its
  padded 3x3 stack adds transpose copies (315 of 690 ms of thunk time). XLA's own gradient
  stays where whole steps measured it faster (:func:`xla_kernel_gradient_is_faster`): the
  shift-and-add first layers and unpadded convolutions larger than 1x1 (lenet5: 11,981 ->
  14,289 images/s; mnist_cnn about +6%; resnet20 unchanged).
- The input gradient of a stride-1 layer with at most :data:`MAX_MATMUL_GRADIENT_CHANNELS`
  input channels, which XLA computes as a convolution writing those few channels (no faster
  for 6 than for 16), is one matmul of the output gradient with the kernel followed by
  col2im, the taps padded into place and summed in one loop
  (:func:`input_gradient_by_matmul`): LeNet-5's C3 at batch 24 0.78 -> 0.41 ms, its whole
  train step 1.01, 1.16 and 1.24x (medians of three runs alternating old and new in one
  process; without oneDNN at batch 128, 1.04x).
- First layers with at most 32 kernel taps (kh*kw*C_in: LeNet-5's 5x5x1, a CIFAR stem's
  3x3x3) run the forward pass as a fused sum of shifted slices (:func:`shift_and_add`:
  LeNet-5's C1 4.7 -> 0.4 ms), fenced by an optimization barrier so that XLA:CPU does not
  fuse it with the activation and pooling (LeNet-5's forward pass 3x faster).
- A kernel larger than its input (ResNet-50's 3x3 convolutions on the 2x2 maps of a 64x64
  image) takes XLA:CPU about a second per batch, forward and input gradient, at 2 GFLOP/s;
  here it is one matmul of the patch matrix (:func:`im2col_conv`, 12 ms), differentiated by
  JAX. ResNet-50 at 64x64 trains 2x faster for this alone (15 -> 31 images/s).

Other platforms, and grouped, dilated or non-float32 convolutions, run
``lax.conv_general_dilated`` unchanged.

:data:`Conv` is ``flax.linen.Conv`` with this function plugged in: same parameters, names
and shapes, so checkpoints and converted torchvision weights are unaffected. The results
equal XLA's up to float32 summation order (relative differences of about 1e-6).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.native import native_status
from jaxcnn.native import conv as onednn

NHWC = ("NHWC", "HWIO", "NHWC")
# The largest patch matrix of one image (elements) that still gains from im2col; above it
# (e.g. 224x224 feature maps) XLA's own convolution is kept.
MAX_PATCH_ELEMENTS = 2 ** 21
# The largest patch matrix of a whole batch for :func:`im2col_conv`, and the largest
# intermediate of :func:`input_gradient_by_matmul` (64 MB in float32).
MAX_BATCH_PATCH_ELEMENTS = 2 ** 24
# Multiply-adds of a convolution's forward pass below which XLA's routes beat a oneDNN call
# in whole steps: LeNet-5 at batch 24 (its layers 2.8M and 5.8M) reached 99% on MNIST in
# 12.3-13.7 s with XLA's routes against 14.9-17.7 s with oneDNN; at batch 128 (15M and
# 31M) oneDNN trains it 1.3x faster.
MIN_ONEDNN_MACS = 2 ** 23
# Up to this many kernel taps (kh*kw*C_in), the CPU forward pass is :func:`shift_and_add`.
MAX_SHIFTED_TERMS = 32
# Up to this many input channels, a stride-1 layer's input gradient is
# :func:`input_gradient_by_matmul` (XLA:CPU's convolution that writes so few channels runs at
# about the same speed as one that writes 16).
MAX_MATMUL_GRADIENT_CHANNELS = 12
# Where the native library is in use, the input gradient of a stride-1 layer with at most
# this many input channels and a receptive field (kh*kw*C_in) of at least this many values
# is jaxcnn's col2im kernel (``few_channel_input_gradient.cc``), not oneDNN's: at batch 128,
# 14x14 -> 10x10 maps, 5x5 kernels to 16 channels, 1.5 -> 0.85-1.2 ms with 6 input channels
# (LeNet-5's C3), 1.5 -> 1.0 with 4, 1.6 -> 1.3 with 8, even with 12; 3x3 layers with 8 or
# 12 were slower (3.7 -> 5.5 and 3.8 -> 6.8 ms on 32x32 maps). Below oneDNN's threshold too,
# in place of :func:`input_gradient_by_matmul`: LeNet-5 at batch 24, whole steps alternating
# in one process, 1.35 and 1.18x (medians; paired 1.29 and 1.20).
MAX_FEW_CHANNELS = 8
MIN_FEW_CHANNEL_FIELD = 96
# Where the native library is in use, the kernel gradient of a stride-1 shift-and-add layer
# (:data:`MAX_SHIFTED_TERMS`) below oneDNN's threshold with at most this many output channels
# is jaxcnn's own kernel (``few_tap_kernel_gradient.cc``, whose header has the timings), not
# XLA's: faster with 6 to 12 outputs, slower with 16.
MAX_FEW_TAP_OUTPUTS = 8


_XLA_ONLY = contextvars.ContextVar("jaxcnn_plain_lax_layers", default=False)
_NATIVE_ALLOWED = contextvars.ContextVar("jaxcnn_native_conv_allowed", default=True)


@contextlib.contextmanager
def plain_lax_layers() -> Iterator[None]:
    """Within it, models trace one ``lax.conv_general_dilated`` per convolution (no CPU/GPU
    switch) and ``reduce_window`` per max pool (``jaxcnn.models.layers.max_pool``): for tools
    that read a model's jaxpr (``jaxcnn.ops.receptive_field``), or to compare speeds."""
    token = _XLA_ONLY.set(True)
    try:
        yield
    finally:
        _XLA_ONLY.reset(token)


@contextlib.contextmanager
def without_native_convolution() -> Iterator[None]:
    """Within it, convolutions and dense layers traced on the CPU use XLA's own (routed as
    without oneDNN), never a oneDNN FFI call. For programs XLA partitions over several
    devices (``jit`` with shardings): XLA cannot split a custom call, so it would gather the
    whole batch onto every device and compute it there. ``jaxcnn.train.DataParallel`` enters
    it for you; ``pmap`` and ``shard_map`` bodies, which run per device, do not need it."""
    token = _NATIVE_ALLOWED.set(False)
    try:
        yield
    finally:
        _NATIVE_ALLOWED.reset(token)


def plain_lax_active() -> bool:
    return _XLA_ONLY.get()


def _plain(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def shift_and_add(x, w, strides, padding):
    """The convolution as a sum of kh*kw*C shifted input slices, each scaled by a kernel row:
    one fused elementwise loop, several times faster than XLA:CPU's convolution for first
    layers with few input channels (LeNet-5's 5x5x1, a CIFAR ResNet's 3x3x3)."""
    kh, kw, c, _ = w.shape
    (sh, sw) = strides
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    terms = [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, k:k + 1] * w[i, j, k]
             for i in range(kh) for j in range(kw) for k in range(c)]
    return functools.reduce(jnp.add, terms)


def _is_shifted(kernel_shape) -> bool:
    """Whether the CPU forward pass is :func:`shift_and_add` (few kernel taps)."""
    kh, kw, c, _ = kernel_shape
    return kh * kw * c <= MAX_SHIFTED_TERMS


def _cpu_forward(x, w, strides, padding):
    if _is_shifted(w.shape):
        # The barrier keeps XLA:CPU from fusing the sum with the activation and pooling that
        # follow into one YNNPACK fusion, which made LeNet-5's forward pass 3x slower (10,000
        # test images: 0.89 against 0.29 s) and its train step 8% slower.
        return lax.optimization_barrier(shift_and_add(x, w, strides, padding))
    return _plain(x, w, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_im2col_grad(x, w, strides, padding):
    return _cpu_forward(x, w, strides, padding)


def _forward(x, w, strides, padding):
    return _cpu_forward(x, w, strides, padding), (x, w)


def patches(x, kernel_hw, strides, padding):
    """Each output position's receptive field as one row: ``(N, OH, OW, kh*kw*C)`` from an
    NHWC ``x``, ordered as an HWIO kernel reshaped to ``(kh*kw*C, O)``."""
    (kh, kw), (sh, sw) = kernel_hw, strides
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    return jnp.concatenate([x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                            for i in range(kh) for j in range(kw)], axis=-1)


def im2col_conv(x, w, strides, padding):
    """The convolution as one matmul, patches @ kernel: for tiny maps, where XLA:CPU's
    convolution is pathologically slow."""
    kh, kw, c, o = w.shape
    return patches(x, (kh, kw), strides, padding) @ w.reshape(kh * kw * c, o)


def kernel_gradient(x, g, kernel_shape, strides, padding):
    """d(loss)/d(kernel) of an NHWC/HWIO convolution from its input ``x`` and output gradient
    ``g``: the sum over images of patches(image) @ g(image), a ``lax.scan`` over the batch so
    that one image's patch matrix (kh*kw*C rows, channel-major) stays in cache.

    One image at a time measured as fast as chunks of images and faster than the whole batch
    at once (resnet20: 137-150 against 108-122 images/s, in one process on a loaded machine);
    and chunks would split a batch sharded over devices, whose scan XLA's partitioner then
    runs with all-reduces over subgroups of the devices, which deadlocked XLA:CPU."""
    kh, kw, c, o = kernel_shape
    (sh, sw), (oh, ow) = strides, g.shape[1:3]
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))

    def add_image(total, pair):
        image, grad = pair
        channels_first = jnp.transpose(image, (2, 0, 1))
        rows, columns = sh * (oh - 1) + 1, sw * (ow - 1) + 1
        cols = jnp.stack([channels_first[:, i:i + rows:sh, j:j + columns:sw]
                          for i in range(kh) for j in range(kw)])
        return total + cols.reshape(kh * kw * c, oh * ow) @ grad.reshape(oh * ow, o), None

    total = jnp.zeros((kh * kw * c, o), jnp.result_type(x, g))
    total, _ = lax.scan(add_image, total, (x, g))
    return total.reshape(kernel_shape)


def input_gradient_by_matmul(g, w, x_shape, padding):
    """d(loss)/d(input) of a stride-1 NHWC/HWIO convolution as col2im(g @ W^T): one matmul
    gives every output position's gradient with respect to its receptive field, ``(N, OH,
    OW, kh, kw, C)``, and the kh*kw taps are zero-padded into place and summed in one fused
    loop (the transpose of :func:`patches`).

    XLA:CPU computes this gradient as a convolution that writes C_in channels, and takes
    about as long for 4 to 16 of them: LeNet-5's C3 (14x14x6 -> 16, 5x5) at batch 24 0.78
    against 0.41 ms this way; at 16 channels and more this way is slower (resnet20's 3x3
    layers 1.1 against 2.9 ms)."""
    kh, kw, c, o = w.shape
    n, oh, ow, _ = g.shape
    rows = (g.reshape(-1, o) @ w.reshape(kh * kw * c, o).T).reshape(n, oh, ow, kh, kw, c)
    (top, bottom), (left, right) = padding
    height, width = x_shape[1] + top + bottom, x_shape[2] + left + right
    taps = [jnp.pad(rows[:, :, :, i, j], ((0, 0), (i, height - oh - i), (j, width - ow - j),
                                          (0, 0)))
            for i in range(kh) for j in range(kw)]
    return functools.reduce(jnp.add, taps)[:, top:height - bottom, left:width - right]


def xla_kernel_gradient_is_faster(kernel_shape, padding) -> bool:
    """Whether XLA's own kernel gradient beats :func:`kernel_gradient` inside a whole train
    step (measured, not modelled): for the shift-and-add first layers and for unpadded
    convolutions larger than 1x1 (LeNet-5's C3, the lecture CNN's second layer), XLA:CPU
    lays these out without the transpose copies it adds for padded 3x3 stacks."""
    kh, kw, _, _ = kernel_shape
    unpadded = not any(p for pair in padding for p in pair)
    return _is_shifted(kernel_shape) or (unpadded and kh * kw > 1)


def _matmul_input_gradient(g_shape, w_shape, strides) -> bool:
    """Whether the input gradient is :func:`input_gradient_by_matmul`: stride 1, few input
    channels, and its ``(N, OH, OW, kh, kw, C)`` intermediate within
    :data:`MAX_BATCH_PATCH_ELEMENTS`."""
    kh, kw, c, _ = w_shape
    n, oh, ow, _ = g_shape
    return (strides == (1, 1) and c <= MAX_MATMUL_GRADIENT_CHANNELS
            and n * oh * ow * kh * kw * c <= MAX_BATCH_PATCH_ELEMENTS)


def _few_channel_kernel(w_shape, strides) -> bool:
    """Whether the input gradient is jaxcnn's native few-channel kernel (where the library
    is in use; see :data:`MAX_FEW_CHANNELS`)."""
    kh, kw, c, _ = w_shape
    return strides == (1, 1) and c <= MAX_FEW_CHANNELS and kh * kw * c >= MIN_FEW_CHANNEL_FIELD


def _few_tap_kernel(w_shape, strides) -> bool:
    """Whether the kernel gradient is jaxcnn's few-tap kernel (:data:`MAX_FEW_TAP_OUTPUTS`)."""
    return strides == (1, 1) and _is_shifted(w_shape) and w_shape[3] <= MAX_FEW_TAP_OUTPUTS


def _backward(strides, padding, residuals, g):
    x, w = residuals
    if _few_channel_kernel(w.shape, strides) and onednn_allowed():
        dx = onednn.few_channel_input_gradient(g, w, x.shape, padding)
    elif _matmul_input_gradient(g.shape, w.shape, strides):
        dx = input_gradient_by_matmul(g, w, x.shape, padding)
    else:
        (dx,) = jax.linear_transpose(lambda v: _plain(v, w, strides, padding), x)(g)
    if _few_tap_kernel(w.shape, strides) and onednn_allowed():
        return dx, onednn.few_tap_kernel_gradient(x, g, w.shape, padding)
    if xla_kernel_gradient_is_faster(w.shape, padding):
        (dw,) = jax.linear_transpose(lambda v: _plain(x, v, strides, padding), w)(g)
        return dx, dw
    return dx, kernel_gradient(x, g, w.shape, strides, padding).astype(w.dtype)


_conv_im2col_grad.defvjp(_forward, _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_onednn(x, w, strides, padding):
    return onednn.forward(x, w, strides, padding)


def _onednn_fwd(x, w, strides, padding):
    return onednn.forward(x, w, strides, padding), (x, w)


def onednn_gradients(x, w, g, strides, padding):
    """``(dx, dw)`` of a oneDNN-routed NHWC/HWIO convolution from its output gradient ``g``
    (``padding`` as pairs): oneDNN's input and kernel gradients, or jaxcnn's few-channel input
    gradient where that is faster."""
    if _few_channel_kernel(w.shape, strides):
        dx = onednn.few_channel_input_gradient(g, w, x.shape, padding)
    else:
        dx = onednn.input_gradient(g, w, x.shape, strides, padding)
    return dx, onednn.kernel_gradient(x, g, w.shape, strides, padding)


def _onednn_bwd(strides, padding, residuals, g):
    return onednn_gradients(*residuals, g, strides, padding)


_conv_onednn.defvjp(_onednn_fwd, _onednn_bwd)


@functools.cache
def _one_cpu_device() -> bool:
    """Whether the CPU is JAX's default backend, with one device. On a GPU or TPU host the
    CPU branch is never run, so the library is not built there. Several CPU devices
    (``--xla_force_host_platform_device_count``, for testing multi-device code on one
    machine) share its cores: each device's oneDNN call would start its own OpenMP team, and
    8 devices' collectives measured stuck until XLA aborted; XLA's convolutions serve them."""
    return jax.default_backend() == "cpu" and len(jax.local_devices(backend="cpu")) == 1


def onednn_allowed() -> bool:
    """Whether a layer traced now may call the oneDNN bridge (:mod:`jaxcnn.native`): not
    within :func:`plain_lax_layers` or :func:`without_native_convolution`, on a one-device
    CPU backend, with the library built and loaded."""
    return (not _XLA_ONLY.get() and _NATIVE_ALLOWED.get() and _one_cpu_device()
            and native_status().available)


def _pads(padding, x_shape, w_shape, strides):
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding))
    return tuple(tuple(int(p) for p in pair) for pair in padding)


def _cpu_route(lhs, rhs, dims, strides, pads, dilations, groups, extra) -> str:
    """``"onednn"`` (oneDNN available, and enough work per call), ``"im2col"`` (kernel larger
    than the input), ``"custom"`` (the im2col kernel gradient) or ``"lax"`` (not float32
    NHWC, grouped, dilated, or patches too large)."""
    if lhs.ndim != 4 or groups != 1 or any(extra) or lhs.dtype != jnp.float32:
        return "lax"
    if rhs.dtype != jnp.float32 or any(d not in (None, (1, 1)) for d in dilations):
        return "lax"
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dims) != \
            lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC):
        return "lax"
    if any(p < 0 for pair in pads for p in pair):
        return "lax"
    kh, kw, c, o = rhs.shape
    out_h = (lhs.shape[1] + sum(pads[0]) - kh) // strides[0] + 1
    out_w = (lhs.shape[2] + sum(pads[1]) - kw) // strides[1] + 1
    per_image = kh * kw * c * out_h * out_w
    if per_image * o * lhs.shape[0] >= MIN_ONEDNN_MACS and onednn_allowed():
        return "onednn"
    if kh > lhs.shape[1] or kw > lhs.shape[2]:
        return "im2col" if per_image * lhs.shape[0] <= MAX_BATCH_PATCH_ELEMENTS else "lax"
    if per_image <= MAX_PATCH_ELEMENTS:
        return "custom"
    return "lax"


def routes_to_onednn(x, w, strides, padding) -> bool:
    """Whether :func:`conv_general_dilated` runs this plain NHWC/HWIO convolution (no groups
    or dilation; ``padding`` a string or pairs) through oneDNN when traced now."""
    pads = _pads(padding, x.shape, w.shape, strides)
    return _cpu_route(x, w, NHWC, strides, pads, (None, None), 1, (False,) * 3) == "onednn"


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated``, routed on the CPU as the module's docstring says."""
    strides = tuple(int(s) for s in window_strides)
    pads = _pads(padding, lhs.shape, rhs.shape, strides)
    dilations = tuple(None if d is None else tuple(d) for d in (lhs_dilation, rhs_dilation))
    extra = (batch_group_count != 1, precision is not None, preferred_element_type is not None)
    route = "lax" if _XLA_ONLY.get() else _cpu_route(
        lhs, rhs, dimension_numbers, strides, pads, dilations, feature_group_count, extra)
    if route == "lax":
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    cpu = {"im2col": im2col_conv, "onednn": _conv_onednn}.get(route, _conv_im2col_grad)
    return lax.platform_dependent(
        lhs, rhs,
        cpu=lambda x, w: cpu(x, w, strides, pads),
        default=lambda x, w: _plain(x, w, strides, pads))


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
"""``flax.linen.Conv`` with :func:`conv_general_dilated` (XLA:CPU's slow cases routed around)."""
