"""jaxcnn's native kernel gradient of stride-1 convolutions with few kernel taps
(``few_tap_kernel_gradient.cc``): equal to XLA's up to float32 summation order, under vmap
too, and the route LeNet-5's C1 takes below oneDNN's threshold."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn.models import conv as conv_module
from jaxcnn.models.conv import NHWC, conv_general_dilated, without_native_convolution
from jaxcnn.native import conv as onednn

from conftest import require_native_bridge

require_native_bridge()


@pytest.mark.parametrize("x_shape,w_shape,padding", [
    # output-gradient rows of OW * O floats in vectors of 16; kernel rows in taps of up to 5
    ((4, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2))),   # LeNet-5's C1: 168 = 10.5 vectors
    ((2, 32, 32, 1), (5, 5, 1, 6), ((0, 0), (0, 0))),   # LeNet-5 (1998) C1, no padding
    ((3, 11, 9, 2), (3, 7, 2, 5), ((0, 2), (3, 1))),    # 7 taps a row (5 + 2), uneven padding
    ((2, 10, 12, 3), (3, 3, 3, 8), ((1, 1), (1, 1))),   # a CIFAR stem with 8 outputs
    ((3, 8, 8, 1), (1, 1, 1, 4), ((0, 0), (0, 0))),     # one tap
    ((2, 5, 4, 1), (5, 4, 1, 3), ((4, 0), (3, 0))),     # one output column, padding ahead only
    ((2, 6, 7, 1), (3, 3, 1, 20), ((1, 1), (1, 1))),    # 20 outputs: two vectors a value
])
def test_few_tap_kernel_gradient_matches_xla(x_shape, w_shape, padding):
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    conv = lambda v: lax.conv_general_dilated(x, v, (1, 1), padding,  # noqa: E731
                                              dimension_numbers=NHWC)
    y, pullback = jax.vjp(conv, jnp.zeros(w_shape, jnp.float32))
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    (dw,) = pullback(g)
    ours = jax.jit(lambda x, g: onednn.few_tap_kernel_gradient(x, g, w_shape, padding))(x, g)
    assert ours.shape == w_shape
    np.testing.assert_allclose(ours, dw, atol=2e-6 * float(jnp.max(jnp.abs(dw))), rtol=0)
    # under vmap (sequential calls): two output gradients at once (-2x scales exactly)
    both = jax.vmap(lambda g: onednn.few_tap_kernel_gradient(x, g, w_shape, padding))(
        jnp.stack([g, -2 * g]))
    np.testing.assert_array_equal(both[0], ours)
    np.testing.assert_array_equal(both[1], -2 * ours)


def test_with_a_gradient_of_ones_each_tap_is_the_sum_of_its_input_window():
    # a 3x3 kernel over a 6x6 image without padding: 4x4 outputs, rows of 4 x 2 floats
    x = jnp.zeros((1, 6, 6, 1)).at[0, :, :, 0].set(jnp.arange(36.0).reshape(6, 6))
    g = jnp.ones((1, 4, 4, 2))
    dw = onednn.few_tap_kernel_gradient(x, g, (3, 3, 1, 2), ((0, 0), (0, 0)))
    # with a gradient of ones, dW[i, j] is the sum of x's 4x4 window at (i, j), exact in
    # float32 (integers below 2^24)
    window = np.arange(36.0).reshape(6, 6)
    expected = np.array([[window[i:i + 4, j:j + 4].sum() for j in range(3)] for i in range(3)])
    np.testing.assert_array_equal(dw[:, :, 0, 0], expected)
    np.testing.assert_array_equal(dw[:, :, 0, 1], expected)


def test_lenet5_first_layer_takes_it_below_onednn_and_not_with_many_outputs():
    loss = lambda x, w, pad: jnp.sum(conv_general_dilated(  # noqa: E731
        x, w, (1, 1), pad, dimension_numbers=NHWC) ** 2)

    def text(x_shape, w_shape, pad):
        grad = jax.grad(lambda x, w: loss(x, w, pad), (0, 1))
        return jax.jit(grad).lower(jnp.ones(x_shape), jnp.ones(w_shape)).compile().as_text()

    lenet_c1 = ((24, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2)))
    assert 24 * 28 * 28 * 25 * 6 < conv_module.MIN_ONEDNN_MACS  # 2.8M: XLA's routes
    assert "jaxcnn_few_tap_kernel_gradient" in text(*lenet_c1)
    with without_native_convolution():
        assert "jaxcnn_few_tap" not in text(*lenet_c1)
    # 16 outputs (measured slower than XLA's), a strided stem and oneDNN's sizes keep theirs
    assert "jaxcnn_few_tap" not in text((24, 28, 28, 1), (5, 5, 1, 16), ((2, 2), (2, 2)))
    strided = jax.grad(lambda x, w: jnp.sum(conv_general_dilated(
        x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC) ** 2), (0, 1))
    assert "jaxcnn_few_tap" not in jax.jit(strided).lower(
        jnp.ones((8, 16, 16, 3)), jnp.ones((3, 3, 3, 8))).compile().as_text()
    assert "jaxcnn_few_tap" not in text((128, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2)))


def test_shapes_that_are_no_stride_1_convolution_are_refused_by_name():
    x, g = jnp.ones((1, 6, 6, 1)), jnp.ones((1, 4, 4, 2))
    with pytest.raises(Exception, match="few_tap_kernel_gradient takes an NHWC input, an NHWC "
                       "output gradient and the HWIO kernel's shape of a stride-1 convolution"):
        onednn.few_tap_kernel_gradient(x, g, (3, 3, 2, 2), ((0, 0), (0, 0))).block_until_ready()
    # a 2x2 kernel over a 6x6 image gives 5x5 outputs without padding, not 4x4
    with pytest.raises(Exception, match="with non-negative padding"):
        onednn.few_tap_kernel_gradient(x, g, (2, 2, 1, 2), ((0, 0), (0, 0))).block_until_ready()
