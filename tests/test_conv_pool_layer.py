"""The conv -> ReLU -> max-pool layer (jaxcnn/models/conv_pool.py) and the native bias + ReLU +
max-pool kernel under it (jaxcnn/native/pool.py): a hand-computed example with ties, XLA's
values and gradients on both of the kernel's paths (few and many channels) and on windows with
a remainder, NaN, jax.vmap, the module's parameters, and where the kernel must not run. In CI
(``CI=true``) the library must build: its absence is a failure there.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.models.conv import Conv, plain_lax_layers, without_native_convolution
from jaxcnn.models.conv_pool import ConvReluMaxPool, bias_relu_max_pool, bias_relu_max_pool_xla
from jaxcnn.models.layers import max_pool
from jaxcnn.native import pool as native

from conftest import require_native_bridge, zoo_forward_text

require_native_bridge()

TARGET = "jaxcnn_bias_relu_max_pool"


def hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def value_and_grads(fn, z, bias, dy):
    y, vjp = jax.vjp(fn, z, bias)
    return (y, *vjp(dy))


def test_kernel_on_a_hand_computed_example_with_ties():
    # One 4x5 map (the fifth column is a remainder a 2x2 pool drops), two channels:
    # channel 0's tiles hold maxima 4 (once), 3 (tied twice), 1 (everywhere) and -2;
    # channel 1 is channel 0 plus 10 with bias -12, so tiles whose maximum is below 12 give 0.
    ch0 = jnp.array([[4.0, 1.0, 3.0, 3.0, 9.0],
                     [0.0, 2.0, 0.0, -1.0, 9.0],
                     [1.0, 1.0, -2.0, -5.0, 9.0],
                     [1.0, 1.0, -3.0, -2.0, 9.0]])
    z = jnp.stack([ch0, ch0 + 10.0], axis=-1)[None]  # (1, 4, 5, 2)
    bias = jnp.array([0.5, -12.0])
    y = native.forward(z, bias, 2)
    np.testing.assert_array_equal(y[0, :, :, 0], [[4.5, 3.5], [1.5, 0.0]])  # relu(-2 + 0.5) = 0
    np.testing.assert_array_equal(y[0, :, :, 1], [[2.0, 1.0], [0.0, 0.0]])
    dy = jnp.stack([jnp.array([[1.0, 2.0], [4.0, 8.0]])] * 2, axis=-1)[None]
    dz, dbias = native.backward(z, bias, dy, 2)
    expected0 = np.zeros((4, 5))
    expected0[0, 0] = 1.0                      # the single maximum takes all
    expected0[0, 2] = expected0[0, 3] = 1.0    # two tied maxima share 2
    expected0[2:4, 0:2] = 1.0                  # four tied maxima share 4
    # the last tile's maximum plus bias is -1.5: ReLU passes no gradient; the remainder none
    np.testing.assert_array_equal(dz[0, :, :, 0], expected0)
    expected1 = np.zeros((4, 5))
    expected1[0, 0] = 1.0
    expected1[0, 2] = expected1[0, 3] = 1.0    # 13 - 12 = 1 > 0; the lower tiles are cut
    np.testing.assert_array_equal(dz[0, :, :, 1], expected1)
    np.testing.assert_array_equal(dbias, [1.0 + 2.0 + 4.0, 1.0 + 2.0])
    # and XLA's expression agrees on all of it
    xla = value_and_grads(lambda z, b: bias_relu_max_pool_xla(z, b, 2), z, bias, dy)
    for ours, theirs in zip((y, dz, dbias), xla):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("shape,window", [
    ((16, 28, 28, 6), 2),    # LeNet-5's C1: few channels, 6 rows of tiles per gradient block
    ((16, 10, 10, 16), 2),   # its C3
    ((2, 9, 203, 8), 2),     # rows of tiles split into two gradient blocks, remainders
    ((4, 24, 24, 64), 2),    # VGG-like: the gradient tile by tile
    ((3, 11, 7, 5), 3),      # a remainder in both directions, 3x3 windows
    ((2, 8, 12, 3), 4),      # 4x4 windows, several rows of tiles per gradient block
    ((2, 9, 9, 33), 4),      # many channels, uneven
    ((5, 6, 6, 3), 1),       # a window of 1: bias and ReLU alone
])
def test_kernel_matches_xla(shape, window):
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=shape), jnp.float32)
    z = z.at[:, 1, 0].set(z[:, 0, 0])  # exact ties inside tiles
    bias = jnp.asarray(rng.normal(size=shape[-1]) * 0.3, jnp.float32)
    dy = jnp.asarray(rng.normal(size=(shape[0], shape[1] // window, shape[2] // window,
                                      shape[3])), jnp.float32)
    ours = jax.jit(lambda z, b: value_and_grads(
        lambda z, b: bias_relu_max_pool(z, b, window), z, b, dy))(z, bias)
    theirs = jax.jit(lambda z, b: value_and_grads(
        lambda z, b: bias_relu_max_pool_xla(z, b, window), z, b, dy))(z, bias)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])
    # the bias gradient is a sum in another order
    np.testing.assert_allclose(ours[2], theirs[2], rtol=1e-5, atol=1e-5)
    assert TARGET in hlo(lambda z, b: bias_relu_max_pool(z, b, window), z, bias)


@pytest.mark.parametrize("channels", [2, 16, 32])  # the kernel's paths
def test_ties_are_decided_after_adding_the_bias_as_in_xla(channels):
    # 1 and 1 + 2^-23 differ, but plus a bias of 1 both round to 2: XLA compares relu(z + b),
    # so the two share the gradient
    tile = jnp.array([[1.0, 1.0 + 2.0 ** -23], [0.0, 0.0]])
    z = jnp.broadcast_to(tile[None, :, :, None], (1, 2, 2, channels))
    bias = jnp.ones(channels)
    dy = jnp.ones((1, 1, 1, channels))
    dz, dbias = native.backward(z, bias, dy, 2)
    np.testing.assert_array_equal(dz[0, :, :, 0], [[0.5, 0.5], [0.0, 0.0]])
    np.testing.assert_array_equal(dbias, np.ones(channels))
    xla = value_and_grads(lambda z, b: bias_relu_max_pool_xla(z, b, 2), z, bias, dy)
    np.testing.assert_array_equal(dz, xla[1])


@pytest.mark.parametrize("channels", [2, 32])  # blocks of rows, tile by tile
def test_nan_propagates_as_in_xla(channels):
    z = jnp.zeros((1, 4, 4, channels)).at[0, 1, 1, 0].set(jnp.nan)
    bias = jnp.ones(channels)
    y = native.forward(z, bias, 2)
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 0, 1])
    np.testing.assert_array_equal(y, bias_relu_max_pool_xla(z, bias, 2))
    dy = jnp.ones_like(y)
    dz, dbias = native.backward(z, bias, dy, 2)
    xla = value_and_grads(lambda z, b: bias_relu_max_pool_xla(z, b, 2), z, bias, dy)
    np.testing.assert_array_equal(dz, xla[1])  # a NaN tile passes no gradient in either
    np.testing.assert_array_equal(dbias, xla[2])


def test_per_example_gradients_under_vmap():
    rng = np.random.default_rng(4)
    z = jnp.asarray(rng.normal(size=(3, 2, 8, 8, 4)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=4) * 0.1, jnp.float32)

    def loss(fn):
        return jax.grad(lambda z, b: jnp.sum(fn(z, b, 2) ** 2), argnums=(0, 1))

    ours = jax.jit(jax.vmap(loss(bias_relu_max_pool), in_axes=(0, None)))(z, bias)
    theirs = jax.vmap(loss(bias_relu_max_pool_xla), in_axes=(0, None))(z, bias)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-5, atol=1e-6)


def test_vmap_maps_slices_forward_and_backward():
    rng = np.random.default_rng(2)
    z = jnp.asarray(rng.normal(size=(3, 2, 8, 8, 4)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(3, 2, 4, 4, 4)), jnp.float32)
    out = jax.vmap(lambda z, b: native.forward(z, b, 2))(z, bias)
    dz, dbias = jax.vmap(lambda z, b, g: native.backward(z, b, g, 2))(z, bias, dy)
    for i in range(3):
        np.testing.assert_array_equal(out[i], native.forward(z[i], bias[i], 2))
        expected = native.backward(z[i], bias[i], dy[i], 2)
        np.testing.assert_array_equal(dz[i], expected[0])
        np.testing.assert_array_equal(dbias[i], expected[1])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="window no larger than the map"):
        native.forward(jnp.zeros((1, 2, 2, 3)), jnp.zeros(3), 3)
    with pytest.raises(ValueError, match="one bias per channel"):
        native.forward(jnp.zeros((1, 4, 4, 3)), jnp.zeros(4), 2)
    with pytest.raises(ValueError, match="has no output on a 2x2 input"):
        bias_relu_max_pool(jnp.zeros((1, 2, 2, 3)), jnp.zeros(3), 3)


class Reference(nn.Module):
    """The same layer from its parts: Conv, ReLU, max_pool."""

    @nn.compact
    def __call__(self, x):
        return max_pool(nn.relu(Conv(8, (3, 3), padding=1, name="conv")(x)), 2)


class Fused(nn.Module):
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        return ConvReluMaxPool(8, (3, 3), padding=1, window=2, use_bias=self.use_bias,
                               name="conv")(x)


def test_layer_has_conv_parameters_values_and_gradients():
    # 64 x 32 x 32 x 8 outputs of 27 taps: 14M multiply-adds, enough for the native kernel
    x = jnp.asarray(np.random.default_rng(3).normal(size=(64, 32, 32, 3)), jnp.float32)
    ref = Reference().init(jax.random.key(0), x)
    fused = Fused().init(jax.random.key(0), x)
    assert jax.tree.structure(ref) == jax.tree.structure(fused)
    assert list(fused["params"]["conv"]) == ["kernel", "bias"]
    jax.tree.map(np.testing.assert_array_equal, ref, fused)
    variables = jax.tree.map(lambda v: v + 0.05, ref)  # a non-zero bias

    def loss(module):
        return jax.jit(jax.value_and_grad(lambda v: jnp.sum(module.apply(v, x) ** 2)))

    (ref_loss, ref_grads), (our_loss, our_grads) = loss(Reference())(variables), \
        loss(Fused())(variables)
    assert ref_loss == our_loss
    np.testing.assert_array_equal(our_grads["params"]["conv"]["kernel"],
                                  ref_grads["params"]["conv"]["kernel"])
    np.testing.assert_allclose(our_grads["params"]["conv"]["bias"],
                               ref_grads["params"]["conv"]["bias"], rtol=1e-5)
    assert TARGET in hlo(lambda v: Fused().apply(v, x), variables)
    no_bias = Fused(use_bias=False).init(jax.random.key(0), x)
    assert list(no_bias["params"]["conv"]) == ["kernel"]
    expected = max_pool(nn.relu(Conv(8, (3, 3), padding=1, use_bias=False).apply(
        {"params": no_bias["params"]["conv"]}, x)), 2)
    np.testing.assert_array_equal(Fused(use_bias=False).apply(no_bias, x), expected)


@pytest.mark.parametrize("name,shape", [("lenet5", (28, 28, 1)), ("keras_cnn", (28, 28, 1)),
                                        ("vgg11", (32, 32, 3))])
def test_zoo_models_use_it_at_batch_128(name, shape):
    assert "jaxcnn_bias_relu_max_pool_forward" in zoo_forward_text(name, shape)


def test_kernel_stays_out_where_it_must():
    small = jnp.ones((4, 8, 8, 3))  # 55K multiply-adds: XLA's layers run it faster
    variables = Fused().init(jax.random.key(0), small)
    assert TARGET not in hlo(lambda v: Fused().apply(v, small), variables)
    x = jnp.ones((64, 32, 32, 3))
    assert TARGET in hlo(lambda v: Fused().apply(v, x), variables)
    with plain_lax_layers():
        assert TARGET not in hlo(lambda v: Fused().apply(v, x), variables)
    with without_native_convolution():
        assert TARGET not in hlo(lambda v: Fused().apply(v, x), variables)
    half = jax.tree.map(lambda v: v.astype(jnp.bfloat16), variables)
    text = hlo(lambda v: Fused().apply(v, x.astype(jnp.bfloat16)), half)
    assert TARGET not in text
