"""The conv -> ReLU layer (jaxcnn/models/conv_relu.py) and the oneDNN forward pass with bias and
ReLU under it (jaxcnn/native/conv.py): a hand-computed example, XLA's values and gradients for
the paddings and strides the zoo uses, ReLU's gradient at 0, jax.vmap, the module's parameters,
the zoo models that use it, and where it must not run. In CI (``CI=true``) the library must
build: its absence is a failure there.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.models.conv import Conv, plain_lax_layers, without_native_convolution
from jaxcnn.models.conv_relu import ConvRelu
from jaxcnn.native import conv as native

from conftest import require_native_bridge, zoo_forward_text

require_native_bridge()

TARGET = "jaxcnn_conv_forward_bias_relu"


def hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def test_kernel_on_a_hand_computed_example():
    # A 1x1 convolution of a 2x2 map to two channels: y = relu(x * w + b) per channel.
    x = jnp.array([1.0, -2.0, 3.0, 0.5]).reshape(1, 2, 2, 1)
    w = jnp.array([[2.0, -1.0]]).reshape(1, 1, 1, 2)
    bias = jnp.array([0.5, 1.0])
    y = native.forward_bias_relu(x, w, bias, (1, 1), ((0, 0), (0, 0)))
    np.testing.assert_array_equal(y[0, :, :, 0], [[2.5, 0.0], [6.5, 1.5]])  # 2 * -2 + 0.5 < 0
    np.testing.assert_array_equal(y[0, :, :, 1], [[0.0, 3.0], [0.0, 0.5]])  # -1 * 3 + 1 < 0


class Reference(nn.Module):
    """The same layer from its parts: Conv, then ReLU."""
    features: int = 8
    kernel: int = 3
    strides: int = 1
    padding: object = 1

    @nn.compact
    def __call__(self, x):
        return nn.relu(Conv(self.features, (self.kernel,) * 2, self.strides,
                            padding=self.padding, name="conv")(x))


class Fused(Reference):
    use_bias: bool = True
    groups: int = 1

    @nn.compact
    def __call__(self, x):
        return ConvRelu(self.features, (self.kernel,) * 2, self.strides, padding=self.padding,
                        use_bias=self.use_bias, feature_group_count=self.groups,
                        name="conv")(x)


@pytest.mark.parametrize("kernel,strides,padding", [
    (3, 1, 1),                    # VGG's: an int padding
    (5, 1, "VALID"),              # the lecture CNN's
    (3, 2, "SAME"),               # strided, padded on one side
    (3, 1, ((0, 2), (1, 0))),     # uneven pairs
])
def test_layer_has_conv_parameters_values_and_gradients(kernel, strides, padding):
    # 64 x 32 x 32 x 3 inputs, 32 outputs: enough multiply-adds for oneDNN at stride 2 too
    x = jnp.asarray(np.random.default_rng(3).normal(size=(64, 32, 32, 3)), jnp.float32)
    reference, fused = (cls(features=32, kernel=kernel, strides=strides, padding=padding)
                        for cls in (Reference, Fused))
    ref = reference.init(jax.random.key(0), x)
    ours = fused.init(jax.random.key(0), x)
    assert list(ours["params"]["conv"]) == ["kernel", "bias"]
    jax.tree.map(np.testing.assert_array_equal, ref, ours)  # same initial values
    variables = jax.tree.map(lambda v: v + 0.05, ref)  # a non-zero bias
    assert TARGET in hlo(lambda v: fused.apply(v, x), variables)

    def loss(module):
        return jax.jit(jax.value_and_grad(lambda v: jnp.sum(module.apply(v, x) ** 2)))

    (ref_loss, ref_grads), (our_loss, our_grads) = loss(reference)(variables), \
        loss(fused)(variables)
    np.testing.assert_allclose(our_loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(fused.apply(variables, x), reference.apply(variables, x),
                               rtol=1e-5, atol=1e-6)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(our_grads["params"]["conv"][name],
                                   ref_grads["params"]["conv"][name], rtol=1e-4, atol=1e-4)


def test_relu_passes_no_gradient_at_zero_as_jax_nn_relu():
    # Half the inputs are 0 and the bias is 0, so half the outputs are exactly 0: there the
    # gradient is 0, as jax.nn.relu's is; elsewhere the upstream gradient passes.
    x = jnp.zeros((64, 16, 16, 4)).at[:, :8].set(1.0)
    fused = Fused(kernel=1, padding="VALID")
    variables = fused.init(jax.random.key(0), x)
    variables = {"params": {"conv": {"kernel": jnp.abs(variables["params"]["conv"]["kernel"]),
                                     "bias": jnp.zeros(8)}}}
    y, vjp = jax.vjp(lambda x: fused.apply(variables, x), x)
    assert (y[:, 8:] == 0).all() and (y[:, :8] > 0).all()
    (dx,) = vjp(jnp.ones_like(y))
    (expected,) = jax.vjp(lambda x: Reference(kernel=1, padding="VALID").apply(variables, x),
                          x)[1](jnp.ones_like(y))
    np.testing.assert_allclose(dx, expected, rtol=1e-6)
    assert (dx[:, 8:] == 0).all() and (dx[:, :8] > 0).all()


def test_vmap_maps_slices():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 16, 12, 12, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    pads = ((1, 1), (1, 1))
    out = jax.vmap(lambda x, b: native.forward_bias_relu(x, w, b, (1, 1), pads))(x, bias)
    for i in range(3):
        np.testing.assert_array_equal(out[i], native.forward_bias_relu(x[i], w, bias[i],
                                                                       (1, 1), pads))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="one bias per output channel"):
        native.forward_bias_relu(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 3, 8)),
                                 jnp.zeros(3), (1, 1), ((1, 1), (1, 1)))


@pytest.mark.parametrize("name,shape", [("mnist_cnn", (28, 28, 1)), ("vgg11", (32, 32, 3)),
                                        ("alexnet", (224, 224, 3))])
def test_zoo_models_use_it_at_batch_128(name, shape):
    assert TARGET in zoo_forward_text(name, shape)


def test_layer_stays_out_where_it_must():
    small = jnp.ones((4, 8, 8, 3))  # 55K multiply-adds: XLA's layers run it faster
    fused = Fused()
    variables = fused.init(jax.random.key(0), small)
    assert TARGET not in hlo(lambda v: fused.apply(v, small), variables)
    x = jnp.ones((64, 32, 32, 4))
    variables = fused.init(jax.random.key(0), x)
    assert TARGET in hlo(lambda v: fused.apply(v, x), variables)
    with plain_lax_layers():
        assert TARGET not in hlo(lambda v: fused.apply(v, x), variables)
    with without_native_convolution():
        assert TARGET not in hlo(lambda v: fused.apply(v, x), variables)
    half = jax.tree.map(lambda v: v.astype(jnp.bfloat16), variables)
    assert TARGET not in hlo(lambda v: fused.apply(v, x.astype(jnp.bfloat16)), half)
    grouped = Fused(groups=2)
    grouped_vars = grouped.init(jax.random.key(0), x)
    assert grouped_vars["params"]["conv"]["kernel"].shape == (3, 3, 2, 8)
    assert TARGET not in hlo(lambda v: grouped.apply(v, x), grouped_vars)
    # without a bias it is Conv then ReLU, with Conv's parameters
    no_bias = Fused(use_bias=False)
    no_bias_vars = no_bias.init(jax.random.key(0), x)
    assert list(no_bias_vars["params"]["conv"]) == ["kernel"]
    expected = nn.relu(Conv(8, (3, 3), padding=1, use_bias=False).apply(
        {"params": no_bias_vars["params"]["conv"]}, x))
    np.testing.assert_array_equal(no_bias.apply(no_bias_vars, x), expected)
