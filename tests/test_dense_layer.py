"""The zoo's dense layer (jaxcnn/models/dense.py) and oneDNN's matmul under it
(jaxcnn/native/matmul.py): hand-computed products with either operand transposed, values and
gradients against flax's own Dense, jax.vmap (per-example gradients), and the routes that must
and must not call oneDNN. In CI (``CI=true``) the library must build: its absence is a failure.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.models import dense as dense_module
from jaxcnn.models.conv import plain_lax_layers, without_native_convolution
from jaxcnn.models.dense import Dense
from jaxcnn.native.matmul import matmul

from conftest import require_native_bridge

require_native_bridge()

def hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def test_matmul_with_either_operand_transposed_on_a_hand_computed_example():
    a = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])   # 2 x 3
    b = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])  # 3 x 2
    expected = [[4.0, -1.0], [10.0, -1.0]]               # rows of a: (1+3, 2-3), (4+6, 5-6)
    np.testing.assert_array_equal(matmul(a, b), expected)
    np.testing.assert_array_equal(matmul(a.T, b, transpose_a=True), expected)
    np.testing.assert_array_equal(matmul(a, b.T, transpose_b=True), expected)
    np.testing.assert_array_equal(matmul(a.T, b.T, True, True), expected)
    # a^T @ a: the Gram matrix of a's columns
    np.testing.assert_array_equal(matmul(a, a, transpose_a=True),
                                  [[17, 22, 27], [22, 29, 36], [27, 36, 45]])


def test_mismatched_operands_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) @ \(2, 3\)"):
        matmul(jnp.ones((2, 3)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="two matrices"):
        matmul(jnp.ones((4, 2, 3)), jnp.ones((3, 2)))


@pytest.mark.parametrize("x_shape,features", [
    ((128, 16000), 100),   # the lecture CNN's first dense layer at batch 128 (205M MACs)
    ((96, 400), 120),      # LeNet-5's F5 at batch 96 (4.6M)
    ((4, 6, 7, 300), 50),  # more than one leading axis, as flax.linen.Dense allows
])
def test_values_and_gradients_match_flax_dense(x_shape, features):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    ours, theirs = Dense(features), nn.Dense(features)
    params = theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == \
        jax.tree.map(jnp.shape, params)

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

    assert "jaxcnn_matmul" in hlo(jax.grad(loss(ours), (0, 1)), params, x)
    for got, want in [(ours.apply(params, x), theirs.apply(params, x)),
                      *zip(jax.tree.leaves(jax.grad(loss(ours), (0, 1))(params, x)),
                           jax.tree.leaves(jax.grad(loss(theirs), (0, 1))(params, x)))]:
        assert got.shape == want.shape
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=0)


def test_per_example_gradients_by_vmap_are_each_example_alone(monkeypatch):
    monkeypatch.setattr(dense_module, "MIN_ONEDNN_MACS", 0)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(5, 3, 8)), jnp.float32)  # 5 examples of 3 rows
    layer = Dense(4)
    params = layer.init(jax.random.key(1), x[0])

    def loss(p, example):
        return jnp.sum(jnp.tanh(layer.apply(p, example)) ** 2)

    per_example = jax.jit(jax.vmap(jax.grad(loss), (None, 0)))
    assert "jaxcnn_matmul" in per_example.lower(params, x).compile().as_text()
    got = per_example(params, x)
    for i in range(5):
        alone = jax.grad(loss)(params, x[i])
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(alone)):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)


def test_only_float32_layers_with_enough_work_call_onednn_unless_told_not_to():
    loss = lambda x, w: jnp.sum(dense_module.dot_general(  # noqa: E731
        x, w, (((1,), (0,)), ((), ()))) ** 2)
    x, w = jnp.ones((128, 400)), jnp.ones((400, 120))  # LeNet-5's F5 at batch 128: 6.1M MACs
    assert 128 * 400 * 120 >= dense_module.MIN_ONEDNN_MACS
    text = hlo(jax.grad(loss, (0, 1)), x, w)
    assert text.count('custom_call_target="jaxcnn_matmul"') == 3  # forward and two gradients
    with without_native_convolution():
        assert "jaxcnn_matmul" not in hlo(jax.grad(loss, (0, 1)), x, w)
    with plain_lax_layers():
        assert "jaxcnn_matmul" not in hlo(loss, x, w)
    assert "jaxcnn_matmul" not in hlo(loss, x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    # LeNet-5's F5 at batch 24 (1.15M) and a CIFAR ResNet's head at batch 128 (82K) stay XLA's
    assert 24 * 400 * 120 < dense_module.MIN_ONEDNN_MACS
    assert "jaxcnn_matmul" not in hlo(loss, jnp.ones((24, 400)), w)
    assert "jaxcnn_matmul" not in hlo(loss, jnp.ones((128, 64)), jnp.ones((64, 10)))
    # a precision request or a contraction other than a dense layer's is XLA's
    precise = lambda x, w: jax.lax.dot_general(x, w, (((1,), (0,)), ((), ())))  # noqa: E731
    assert "jaxcnn_matmul" not in hlo(lambda x, w: dense_module.dot_general(
        x, w, (((1,), (0,)), ((), ())), precision=jax.lax.Precision.HIGHEST), x, w)
    assert "jaxcnn_matmul" not in hlo(lambda x, w: dense_module.dot_general(
        x, w, (((0,), (0,)), ((), ()))), x.T, w)
    np.testing.assert_allclose(jax.jit(loss)(x, w), jnp.sum(precise(x, w) ** 2), rtol=1e-6)


def test_a_zoo_model_keeps_flax_dense_parameter_names():
    from jaxcnn.models import get_model
    params = get_model("mnist_cnn").init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    dense = {name: jax.tree.map(jnp.shape, params["params"][name]) for name in ("fc1", "head")}
    assert dense == {"fc1": {"kernel": (16000, 100), "bias": (100,)},
                     "head": {"kernel": (100, 10), "bias": (10,)}}
