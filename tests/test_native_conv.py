"""jaxcnn/native: oneDNN's convolution through XLA's FFI, built on first use.

Its values against XLA's (jaxcnn/tests/test_conv_layer.py runs the zoo's cases through it too),
a hand-computed example, jax.vmap, the routes that use it and the ones that must not, and the
build's errors. In CI (``CI=true``) the library must build: its absence is a failure there.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn.models import conv as conv_module
from jaxcnn.models.conv import NHWC, conv_general_dilated, without_native_convolution
from jaxcnn.native import build
from jaxcnn.native import conv as onednn

from conftest import require_native_bridge

require_native_bridge()

SAME_1 = ((1, 1), (1, 1))


def hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def test_forward_and_both_gradients_on_a_hand_computed_example():
    # 1 channel, 3x3 image 0..8, 2x2 kernel [[1, 0], [0, -1]], no padding: y = x[h,w] - x[h+1,w+1]
    x = jnp.arange(9, dtype=jnp.float32).reshape(1, 3, 3, 1)
    w = jnp.array([[1.0, 0.0], [0.0, -1.0]]).reshape(2, 2, 1, 1)
    valid = ((0, 0), (0, 0))
    np.testing.assert_array_equal(onednn.forward(x, w, (1, 1), valid)[0, :, :, 0],
                                  [[-4.0, -4.0], [-4.0, -4.0]])
    g = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    # dx[a, b] = g[a, b] * w[0, 0] + g[a-1, b-1] * w[1, 1]
    dx = onednn.input_gradient(g, w, x.shape, (1, 1), valid)[0, :, :, 0]
    np.testing.assert_array_equal(dx, [[1, 2, 0], [3, 3, -2], [0, -3, -4]])
    dx = onednn.few_channel_input_gradient(g, w, x.shape, valid)[0, :, :, 0]  # jaxcnn's kernel
    np.testing.assert_array_equal(dx, [[1, 2, 0], [3, 3, -2], [0, -3, -4]])
    # dw[i, j] = sum_{h,w} x[h+i, w+j] g[h, w]
    dw = onednn.kernel_gradient(x, g, w.shape, (1, 1), valid)[:, :, 0, 0]
    image = np.arange(9).reshape(3, 3)
    expected = [[(image[i:i + 2, j:j + 2] * np.array([[1, 2], [3, 4]])).sum() for j in range(2)]
                for i in range(2)]
    np.testing.assert_array_equal(dw, np.array(expected, np.float32))


@pytest.mark.parametrize("x_shape,w_shape,strides,padding", [
    ((8, 32, 32, 16), (3, 3, 16, 16), (1, 1), SAME_1),          # resnet20's first stage
    ((4, 26, 26, 32), (3, 3, 32, 64), (1, 1), ((0, 0), (0, 0))),  # the lecture CNN's second
    ((2, 64, 64, 3), (7, 7, 3, 64), (2, 2), ((3, 3), (3, 3))),  # ResNet's stem
    ((4, 32, 32, 16), (3, 3, 16, 32), (2, 2), ((0, 1), (0, 1))),  # resnet20's 16 -> 32
    ((2, 16, 16, 64), (1, 1, 64, 128), (2, 2), ((0, 0), (0, 0))),  # a 1x1 projection
    ((3, 7, 9, 5), (2, 4, 5, 3), (2, 3), ((0, 1), (2, 0))),     # uneven everything
])
def test_larger_layers_match_xla_to_float32_rounding(x_shape, w_shape, strides, padding):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape) * 0.1, jnp.float32)
    y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    _, pullback = jax.vjp(lambda a, b: lax.conv_general_dilated(
        a, b, strides, padding, dimension_numbers=NHWC), x, w)
    dx, dw = pullback(g)
    for ours, xla in [(onednn.forward(x, w, strides, padding), y),
                      (onednn.input_gradient(g, w, x.shape, strides, padding), dx),
                      (onednn.kernel_gradient(x, g, w.shape, strides, padding), dw)]:
        assert ours.shape == xla.shape
        scale = float(jnp.max(jnp.abs(xla)))
        np.testing.assert_allclose(ours, xla, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("x_shape,w_shape,padding", [
    # field vectors of 16 floats; output rows in groups of 4 positions, then single ones
    ((4, 14, 14, 6), (5, 5, 6, 16), ((0, 0), (0, 0))),   # LeNet-5's C3: 10 vectors, 10 = 4+4+1+1
    ((2, 11, 9, 4), (5, 5, 4, 3), ((2, 1), (0, 3))),     # 7 vectors, 8 = 4+4, uneven padding
    ((2, 6, 7, 8), (4, 3, 8, 20), ((1, 2), (1, 0))),     # 6 vectors, 6 = 4+1+1
    ((3, 8, 8, 1), (5, 5, 1, 6), ((2, 2), (2, 2))),      # 2 vectors, 8 = 4+4
    ((2, 7, 3, 2), (5, 3, 2, 4), ((1, 1), (0, 0))),      # 2 vectors, 1 position a row
])
def test_few_channel_input_gradient_matches_xla(x_shape, w_shape, padding):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    conv = lambda a: lax.conv_general_dilated(a, w, (1, 1), padding,  # noqa: E731
                                              dimension_numbers=NHWC)
    y, pullback = jax.vjp(conv, x)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    (dx,) = pullback(g)
    ours = jax.jit(lambda g: onednn.few_channel_input_gradient(g, w, x_shape, padding))(g)
    np.testing.assert_allclose(ours, dx, atol=1e-5 * float(jnp.max(jnp.abs(dx))), rtol=0)
    # under vmap (sequential calls): two output gradients at once
    both = jax.vmap(lambda g: onednn.few_channel_input_gradient(g, w, x_shape, padding))(
        jnp.stack([g, 2 * g]))
    np.testing.assert_allclose(both[1], 2 * ours, rtol=1e-6, atol=1e-6)


def test_vmap_over_groups_with_a_shared_kernel_is_each_group_alone(monkeypatch):
    # ghost BatchNorm's path (jaxcnn.train.steps): the model vmapped over batch groups
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 2, 6, 6, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)

    def loss(x, w):
        return jnp.sum(jnp.tanh(conv_general_dilated(x, w, (1, 1), SAME_1,
                                                     dimension_numbers=NHWC)))

    monkeypatch.setattr(conv_module, "MIN_ONEDNN_MACS", 0)
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(jax.vmap(loss, (0, None))(x, w)), (0, 1)))
    assert "jaxcnn_conv_kernel_gradient" in grad.lower(x, w).compile().as_text()
    dx, dw = grad(x, w)
    alone = [jax.grad(loss, (0, 1))(x[i], w) for i in range(3)]
    np.testing.assert_allclose(dx, jnp.stack([a[0] for a in alone]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, sum(a[1] for a in alone), rtol=1e-5, atol=1e-5)


def test_cpu_convolutions_with_enough_work_call_onednn_unless_told_not_to(monkeypatch):
    loss = lambda x, w: jnp.sum(conv_general_dilated(  # noqa: E731
        x, w, (1, 1), SAME_1, dimension_numbers=NHWC) ** 2)
    # resnet20's first stage at batch 16: 16*32*32*9*16*16 = 37.7M multiply-adds
    x, w = jnp.ones((16, 32, 32, 16)), jnp.ones((3, 3, 16, 16))
    text = hlo(jax.grad(loss, (0, 1)), x, w)
    # (the forward pass with bias and ReLU belongs to jaxcnn.models.conv_relu)
    for target in (name for name in build.TARGETS
                   if name.startswith("jaxcnn_conv") and not name.endswith("bias_relu")):
        assert f'custom_call_target="{target}"' in text
    with without_native_convolution():
        assert "jaxcnn_conv" not in hlo(jax.grad(loss, (0, 1)), x, w)
    # below MIN_ONEDNN_MACS (LeNet-5's C3 at batch 24: 5.8M), XLA's routes
    assert conv_module.MIN_ONEDNN_MACS > 24 * 10 * 10 * 5 * 5 * 6 * 16
    assert "jaxcnn_conv" not in hlo(loss, jnp.ones((24, 14, 14, 6)), jnp.ones((5, 5, 6, 16)))
    # ... except its input gradient, jaxcnn's few-channel kernel at any batch
    text = hlo(jax.grad(loss, (0, 1)), jnp.ones((24, 14, 14, 6)), jnp.ones((5, 5, 6, 16)))
    assert "jaxcnn_few_channel_input_gradient" in text and "jaxcnn_conv" not in text
    # at batch 128 its input gradient is jaxcnn's few-channel kernel; resnet20's stays oneDNN's
    text = hlo(jax.grad(loss, (0, 1)), jnp.ones((128, 14, 14, 6)), jnp.ones((5, 5, 6, 16)))
    assert "jaxcnn_few_channel_input_gradient" in text
    assert "jaxcnn_conv_input_gradient" not in text and "jaxcnn_conv_kernel_gradient" in text
    assert "jaxcnn_few_channel" not in hlo(jax.grad(loss, (0, 1)), x, w)
    monkeypatch.setattr(conv_module, "MIN_ONEDNN_MACS", 0)
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))
    # bfloat16, grouped and dilated convolutions stay XLA's
    bf16 = lambda x, w: conv_general_dilated(x, w, (1, 1), SAME_1,  # noqa: E731
                                             dimension_numbers=NHWC)
    assert "jaxcnn_conv" not in hlo(bf16, x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    grouped = lambda x, w: conv_general_dilated(  # noqa: E731
        x, w, (1, 1), SAME_1, dimension_numbers=NHWC, feature_group_count=2)
    assert "jaxcnn_conv" not in hlo(grouped, x, jnp.ones((3, 3, 2, 6)))
    dilated = lambda x, w: conv_general_dilated(  # noqa: E731
        x, w, (1, 1), SAME_1, rhs_dilation=(2, 2), dimension_numbers=NHWC)
    assert "jaxcnn_conv" not in hlo(dilated, x, w)


def test_a_missing_compiler_is_named_and_leaves_no_partial_library(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(build.BuildError, match="no C\\+\\+ compiler 'no-such-compiler-xyz'"):
        build.build_library()
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    with pytest.raises(build.BuildError, match="compiling onednn_conv.cc, onednn_matmul.cc, "
                       "onednn_batch_norm.cc, bias_relu_max_pool.cc, batch_norm_relu.cc, "
                       "few_channel_input_gradient.cc, few_tap_kernel_gradient.cc failed"):
        build.build_library()
    assert [p for p in pathlib.Path(tmp_path).rglob("*") if p.is_file()] == []


def test_missing_onednn_names_the_packages_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(build.ENV_ROOT, str(tmp_path))
    monkeypatch.setattr(build.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(build.sys, "base_prefix", str(tmp_path))
    with pytest.raises(build.BuildError, match="pip install onednn-cpu-gomp"):
        build.find_onednn()


def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv(build.ENV_SWITCH, "0")
    build.native_status.cache_clear()
    try:
        status = build.native_status()
        assert not status.available and build.ENV_SWITCH in status.reason
    finally:
        monkeypatch.delenv(build.ENV_SWITCH)
        build.native_status.cache_clear()
        assert build.native_status().available  # loads the cached library again


@pytest.mark.parametrize("x_shape,w_shape,strides,padding", [
    ((128, 32, 32, 16), (3, 3, 16, 32), (2, 2), ((0, 1), (0, 1))),  # strided
    ((128, 16, 16, 256), (1, 1, 256, 128), (2, 2), ((0, 0), (0, 0))),  # strided 1x1
    ((128, 32, 32, 16), (3, 3, 16, 16), (1, 1), SAME_1),  # <= 32 channels
])
def test_input_gradients_of_strided_and_narrow_layers_take_the_direct_jit_kernel(
        x_shape, w_shape, strides, padding):
    # onednn_conv.cc passes over oneDNN's brgemm-based first choices there (slower here).
    name = onednn.implementation("input_gradient", x_shape, w_shape, strides, padding)
    assert name.startswith("jit"), name


def test_forward_passes_whose_outputs_do_not_fill_vectors_take_the_direct_jit_kernel(
        monkeypatch):
    # The lecture CNN's 20 -> 40 5x5 layer: oneDNN's first choice on AVX-512 is brgconv,
    # slower here; onednn_conv.cc takes its direct JIT kernel. 16 -> 16 keeps the first choice.
    lecture = ((128, 24, 24, 20), (5, 5, 20, 40), (1, 1), ((0, 0), (0, 0)))
    resnet = ((128, 32, 32, 16), (3, 3, 16, 16), (1, 1), SAME_1)
    ours = [onednn.implementation("forward", *layer) for layer in (lecture, resnet)]
    monkeypatch.setenv("JAXCNN_ONEDNN_FIRST_CHOICE", "1")
    first = [onednn.implementation("forward", *layer) for layer in (lecture, resnet)]
    if not first[0].endswith("avx512_core"):
        pytest.skip(f"the rule is for AVX-512 machines; oneDNN's first choice here: {first[0]}")
    assert first[0].startswith("brgconv") and ours[0] == "jit:avx512_core", (first, ours)
    assert ours[1] == first[1], (first, ours)


def test_implementation_names_bad_requests():
    with pytest.raises(ValueError, match="pass_name must be one of"):
        onednn.implementation("backward", (1, 8, 8, 3), (3, 3, 3, 4), (1, 1), SAME_1)
    with pytest.raises(ValueError, match="oneDNN has no input_gradient for x"):
        onednn.implementation("input_gradient", (1, 4, 4, 3), (9, 9, 3, 3), (1, 1),
                              ((0, 0), (0, 0)))


ONE_TEAM = """
import json, os, jax, jax.numpy as jnp
from jaxcnn.native import conv, native_status
assert native_status().available, native_status().reason

def threads():
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{tid}/comm").read().strip())
        except FileNotFoundError:
            pass
    return sorted(names)

@jax.jit
def independent_convolutions(x, w):  # calls XLA is free to run on several of its threads
    return [conv.forward(x * k, w, (1, 1), ((1, 1), (1, 1))) for k in range(8)]

w = jnp.ones((3, 3, 16, 16))
jax.block_until_ready(jnp.ones(4) * 2)  # XLA's own threads
before = threads()
for _ in range(10):  # 2x16x16x16: 8,192 elements, below the native thread's threshold
    jax.block_until_ready(independent_convolutions(jnp.ones((2, 16, 16, 16)), w))
small = threads()
for _ in range(10):  # 64x16x16x16: 262,144 elements
    jax.block_until_ready(independent_convolutions(jnp.ones((64, 16, 16, 16)), w))
print(json.dumps([before, small, threads()]))
"""


def test_every_large_native_call_runs_on_one_thread_so_the_process_has_one_openmp_team():
    # libgomp gives every thread that starts a parallel region its own team, and with more
    # workers than CPUs it lets idle ones spin only briefly before they sleep, so XLA calling
    # from several threads cost a kernel wake-up per region. The bridge's one native thread
    # ("jaxcnn-native", which its OpenMP workers are named after) starts them all; small
    # calls run on XLA's calling thread alone, with no team.
    done = subprocess.run([sys.executable, "-c", ONE_TEAM], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert done.returncode == 0, done.stderr[-2000:]
    before, small, large = json.loads(done.stdout.strip().splitlines()[-1])
    assert small == before  # no team, no native thread
    # the native thread and its one worker for a team of OMP_NUM_THREADS=2, and nothing else
    # (before, each calling XLA thread's team added a worker named after that thread)
    assert sorted(large) == sorted(before + ["jaxcnn-native"] * 2), (before, large)
