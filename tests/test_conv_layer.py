"""The zoo's convolution (jaxcnn/models/conv.py): XLA's values, by oneDNN on the CPU, and by the
XLA routes (an im2col kernel gradient, shift-and-add, patch matmuls) used without oneDNN."""
from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn.models.conv import (NHWC, Conv, conv_general_dilated, kernel_gradient,
                                without_native_convolution, xla_kernel_gradient_is_faster)
from jaxcnn.models import conv as conv_module
from jaxcnn.native import native_status

CASES = [  # input, kernel, strides, padding
    ((4, 9, 9, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),
    ((3, 11, 13, 2), (7, 7, 2, 4), (2, 2), ((3, 3), (3, 3))),  # a ResNet stem
    ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), ((0, 0), (0, 0))),    # a projection shortcut
    ((2, 10, 10, 3), (3, 3, 3, 2), (1, 1), "SAME"),
    ((2, 10, 10, 3), (3, 3, 3, 2), (2, 1), ((0, 1), (2, 0))),  # uneven strides and padding
    ((3, 12, 12, 1), (5, 5, 1, 6), (1, 1), ((2, 2), (2, 2))),  # LeNet-5's C1: shift and add
    ((2, 12, 12, 8), (3, 3, 8, 4), (1, 1), ((1, 1), (1, 1))),  # 72 taps: XLA's forward
    ((2, 14, 14, 6), (5, 5, 6, 16), (1, 1), ((0, 0), (0, 0))),  # LeNet-5's C3
    ((2, 9, 7, 3), (3, 2, 3, 4), (1, 1), ((0, 1), (2, 0))),    # uneven padding, stride 1
    ((2, 8, 8, 16), (3, 3, 16, 4), (1, 1), ((1, 1), (1, 1))),  # 16 channels: XLA's dx
    ((3, 2, 2, 6), (3, 3, 6, 5), (1, 1), ((1, 1), (1, 1))),    # kernel > input: im2col_conv
    ((2, 3, 2, 4), (3, 3, 4, 2), (2, 1), ((1, 1), (1, 1))),    # the same, strided, not square
]


def loss_of(conv):
    return lambda x, w, strides, padding: jnp.sum(jnp.sin(
        conv(x, w, strides, padding, dimension_numbers=NHWC)))


@pytest.mark.parametrize("native", [True, False], ids=["onednn", "xla-routes"])
@pytest.mark.parametrize("x_shape,w_shape,strides,padding", CASES)
def test_values_and_both_gradients_match_xla(x_shape, w_shape, strides, padding, native,
                                             monkeypatch):
    if native and not native_status().available:
        pytest.skip(f"no oneDNN convolution: {native_status().reason}")
    monkeypatch.setattr(conv_module, "MIN_ONEDNN_MACS", 0)  # these small layers too
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    with contextlib.nullcontext() if native else without_native_convolution():
        ours = jax.jit(jax.value_and_grad(loss_of(conv_general_dilated), (0, 1)),
                       static_argnums=(2, 3))(x, w, strides, padding)
    xla = jax.jit(jax.value_and_grad(loss_of(lax.conv_general_dilated), (0, 1)),
                  static_argnums=(2, 3))(x, w, strides, padding)
    np.testing.assert_allclose(float(ours[0]), float(xla[0]), rtol=1e-5)
    for mine, theirs in zip(ours[1], xla[1]):  # input and kernel gradients
        # float32 sums in another order: errors grow with the gradient's scale
        scale = max(1.0, float(np.abs(theirs).max()))
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5 * scale)


def test_the_kernel_gradient_is_the_hand_computed_sum_over_images_and_positions():
    # 1 channel in and out, a 2x2 kernel on 3x3 images: dW[i, j] = sum_{n,h,w} x[n,h+i,w+j] g[n,h,w]
    x = jnp.arange(18, dtype=jnp.float32).reshape(2, 3, 3, 1)
    g = jnp.ones((2, 2, 2, 1), jnp.float32)
    dw = kernel_gradient(x, g, (2, 2, 1, 1), (1, 1), ((0, 0), (0, 0)))
    image = np.arange(18).reshape(2, 3, 3)
    expected = [[image[:, i:i + 2, j:j + 2].sum() for j in range(2)] for i in range(2)]
    np.testing.assert_array_equal(dw[..., 0, 0], np.array(expected, np.float32))


@without_native_convolution()
def test_without_onednn_each_convolution_takes_its_route_and_elsewhere_xla_decides():
    from jaxcnn.models.conv import _cpu_route

    def route(x_shape, w_shape, groups=1, dtype=jnp.float32):
        x, w = jnp.ones(x_shape, dtype), jnp.ones(w_shape, dtype)
        return _cpu_route(x, w, NHWC, (1, 1), ((1, 1), (1, 1)), (None, None), groups,
                          (False, False, False))

    assert route((2, 2, 2, 512), (3, 3, 512, 8)) == "im2col"  # ResNet-50's last stage at 64x64
    assert route((2, 16, 16, 64), (1, 1, 64, 256)) == "custom"
    assert route((2, 28, 28, 1), (5, 5, 1, 6)) == "custom"
    assert route((2, 224, 224, 64), (3, 3, 64, 64)) == "lax"  # patches too large for im2col
    assert route((2, 8, 8, 6), (3, 3, 2, 6), groups=3) == "lax"
    assert route((2, 8, 8, 3), (3, 3, 3, 4), dtype=jnp.bfloat16) == "lax"
    grad = jax.jit(jax.grad(loss_of(conv_general_dilated), 1), static_argnums=(2, 3))
    text = grad.lower(jnp.ones((2, 6, 6, 8)), jnp.ones((3, 3, 8, 4)), (1, 1), "SAME").as_text()
    assert "stablehlo.case" in text  # the CPU/other-platform switch
    assert "stablehlo.while" in text  # the im2col kernel gradient's scan over the batch
    # first layers and unpadded layers keep XLA's kernel gradient (faster in whole steps)
    for x_shape, w_shape, padding in [((2, 6, 6, 3), (3, 3, 3, 4), "SAME"),
                                      ((2, 14, 14, 6), (5, 5, 6, 16), "VALID")]:
        text = grad.lower(jnp.ones(x_shape), jnp.ones(w_shape), (1, 1), padding).as_text()
        assert "stablehlo.case" in text and "stablehlo.while" not in text
    assert xla_kernel_gradient_is_faster((5, 5, 1, 6), ((2, 2), (2, 2)))  # LeNet-5's C1
    assert not xla_kernel_gradient_is_faster((1, 1, 64, 256), ((0, 0), (0, 0)))  # 1x1
    assert not xla_kernel_gradient_is_faster((3, 3, 16, 16), ((1, 1), (1, 1)))  # resnet20
    # grouped (depthwise) convolutions are left to XLA
    depthwise = lambda x, w: conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=3)
    x = jnp.ones((2, 6, 6, 3))
    text = jax.jit(jax.grad(lambda w: jnp.sum(depthwise(x, w)))).lower(
        jnp.ones((3, 3, 1, 3))).as_text()
    assert "stablehlo.case" not in text


def test_the_input_gradient_by_matmul_is_the_hand_computed_transposed_convolution():
    from jaxcnn.models.conv import input_gradient_by_matmul

    # 1 channel in and out, a 2x2 kernel on a 3x4 image padded by 1 on top and 2 on the right:
    # y[h, w] = sum_{i,j} xpad[h+i, w+j] k[i, j], so dx[a, b] = sum of g[h, w] k[a+1-h, b-w]
    k = jnp.array([[1.0, 2.0], [3.0, 5.0]]).reshape(2, 2, 1, 1)
    g = jnp.arange(1.0, 16.0).reshape(1, 3, 5, 1)  # output 3x5 = (3+1-2+1) x (4+2-2+1)
    dx = input_gradient_by_matmul(g, k, (1, 3, 4, 1), ((1, 0), (0, 2)))[0, :, :, 0]
    expected = [[sum(float(g[0, h, w, 0]) * float(k[a + 1 - h, b - w, 0, 0])
                     for h in range(3) for w in range(5)
                     if 0 <= a + 1 - h < 2 and 0 <= b - w < 2) for b in range(4)]
                for a in range(3)]
    np.testing.assert_array_equal(dx, np.array(expected, np.float32))


@without_native_convolution()
def test_few_input_channels_take_the_matmul_input_gradient_and_sixteen_keep_xlas():
    grad = jax.jit(jax.grad(loss_of(conv_general_dilated), 0), static_argnums=(2, 3))

    def convolutions(channels, batch=2, size=14):  # in the compiled input gradient
        x, w = jnp.ones((batch, size, size, channels)), jnp.ones((5, 5, channels, 16))
        return grad.lower(x, w, (1, 1), "VALID").compile().as_text().count(" convolution(")

    assert convolutions(6) == 1  # LeNet-5's C3: only the forward pass is a convolution
    assert convolutions(16) == 2
    # (64 x 60 x 60) positions x 25 taps x 4 channels: over 2^24, too large an intermediate
    assert convolutions(4, batch=64, size=64) == 2


def test_a_kernel_larger_than_its_input_is_one_patch_matmul_on_a_hand_computed_example():
    from jaxcnn.models.conv import im2col_conv

    # 2x2 image, 3x3 kernel, padding 1: output[h, w] = sum of x[a, b] * k[a - h + 1, b - w + 1]
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    k = jnp.arange(9, dtype=jnp.float32).reshape(3, 3, 1, 1)
    out = im2col_conv(x, k, (1, 1), ((1, 1), (1, 1)))[0, :, :, 0]
    expected = [[sum(float(x[0, a, b, 0]) * float(k[a - h + 1, b - w + 1, 0, 0])
                     for a in range(2) for b in range(2)) for w in range(2)] for h in range(2)]
    np.testing.assert_array_equal(out, np.array(expected, np.float32))


def test_shift_and_add_is_the_convolution_on_a_hand_computed_example():
    from jaxcnn.models.conv import shift_and_add

    x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
    w = jnp.array([[1.0, 0.0], [0.0, -1.0]]).reshape(2, 2, 1, 1)  # x[h, w] - x[h+1, w+1]
    out = shift_and_add(x, w, (2, 2), ((0, 0), (0, 0)))
    np.testing.assert_array_equal(out[0, :, :, 0], [[-5.0, -5.0], [-5.0, -5.0]])


def test_conv_is_flax_conv_with_the_same_parameters():
    x = jnp.ones((1, 8, 8, 3))
    ours = Conv(4, (3, 3)).init(jax.random.PRNGKey(0), x)
    flax = nn.Conv(4, (3, 3)).init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, flax)
    np.testing.assert_array_equal(ours["params"]["kernel"], flax["params"]["kernel"])


def test_max_pool_by_slices_is_flax_max_pool_in_values_and_in_gradients_without_ties():
    from jaxcnn.models.layers import max_pool

    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 7, 3)), jnp.float32)
    np.testing.assert_array_equal(max_pool(x, 2), nn.max_pool(x, (2, 2), strides=(2, 2)))
    weights = jnp.arange(2 * 4 * 3 * 3, dtype=jnp.float32).reshape(2, 4, 3, 3)
    ours = jax.grad(lambda x: jnp.sum(max_pool(x, 2) * weights))(x)
    flax = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), strides=(2, 2)) * weights))(x)
    np.testing.assert_array_equal(ours, flax)
    # tied maxima share the gradient: a constant 2x2 tile gives each element a quarter
    np.testing.assert_array_equal(jax.grad(lambda t: max_pool(t, 2).sum())(jnp.ones((1, 2, 2, 1))),
                                  jnp.full((1, 2, 2, 1), 0.25))
    # two tied maxima of four take half each; the rest of the tile none
    tile = jnp.array([[2.0, 2.0], [1.0, 0.0]]).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(jax.jit(jax.grad(lambda t: 3 * max_pool(t, 2).sum()))(tile),
                                  jnp.array([[1.5, 1.5], [0.0, 0.0]]).reshape(1, 2, 2, 1))
    # 3x3 windows with a dropped remainder, and under vmap
    y = jnp.asarray(np.random.default_rng(2).normal(size=(3, 1, 8, 7, 2)), jnp.float32)
    flax3 = lambda v: nn.max_pool(v, (3, 3), strides=(3, 3))  # noqa: E731
    np.testing.assert_array_equal(jax.vmap(lambda v: max_pool(v, 3))(y), jax.vmap(flax3)(y))
    ours3 = lambda v: max_pool(v, 3)  # noqa: E731
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(jax.vmap(ours3)(v) ** 2))(y),
                                  jax.grad(lambda v: jnp.sum(jax.vmap(flax3)(v) ** 2))(y))


def test_within_plain_lax_layers_a_model_traces_plain_lax_convolutions():
    from jaxcnn.models import get_model
    from jaxcnn.models.conv import plain_lax_layers

    model, x = get_model("lenet5"), jnp.ones((1, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    with plain_lax_layers():
        plain = str(jax.make_jaxpr(model.apply)(variables, x))
    assert "cond" not in plain and plain.count("conv_general_dilated") == 2
    assert "cond" in str(jax.make_jaxpr(model.apply)(variables, x))  # the CPU/GPU switch
