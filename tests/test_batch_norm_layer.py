"""The zoo's BatchNorm (jaxcnn/models/batch_norm.py) and oneDNN's batch normalization under it
(jaxcnn/native/batch_norm.py): the closed-form statistics and gradients, Flax's values,
running averages and gradients, jax.vmap (ghost BatchNorm), and where Flax's code must run.
In CI (``CI=true``) the library must build: its absence is a failure there.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.models import batch_norm as bn_module
from jaxcnn.models.batch_norm import BatchNorm
from jaxcnn.models.conv import without_native_convolution
from jaxcnn.native import batch_norm as onednn

from conftest import require_native_bridge

require_native_bridge()

EPS = 1e-5


def test_forward_and_backward_on_a_hand_computed_example():
    # one channel holding 0, 1, 2, 5 (as a 2x2 map of one image), a second holding 4 x 3.0
    x = jnp.array([[[[0.0, 3.0], [1.0, 3.0]], [[2.0, 3.0], [5.0, 3.0]]]])  # (1, 2, 2, 2)
    scale, shift = jnp.array([2.0, 1.0]), jnp.array([0.5, -1.0])
    y, mean, variance = onednn.forward(x, scale, shift, EPS)
    # channel 0: mean 2, biased variance (4 + 1 + 0 + 9) / 4 = 3.5; channel 1: 3 and 0
    np.testing.assert_allclose(mean, [2.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(variance, [3.5, 0.0], atol=1e-6)
    xhat = np.array([0.0, 1.0, 2.0, 5.0]) - 2.0
    xhat = xhat / np.sqrt(3.5 + EPS)
    np.testing.assert_allclose(y[..., 0].ravel(), 2.0 * xhat + 0.5, rtol=1e-5)
    np.testing.assert_allclose(y[..., 1].ravel(), [-1.0] * 4, rtol=1e-6)  # constant -> shift
    # backward with dy = (1, 0, 0, 0) in channel 0: the closed form of Ioffe and Szegedy,
    # dx = scale / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat))
    dy = jnp.zeros_like(x).at[0, 0, 0, 0].set(1.0)
    dx, dscale, dshift = onednn.backward(x, dy, mean, variance, scale, EPS)
    g = np.array([1.0, 0.0, 0.0, 0.0])
    expected = 2.0 / np.sqrt(3.5 + EPS) * (g - g.mean() - xhat * (g * xhat).mean())
    np.testing.assert_allclose(dx[..., 0].ravel(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dscale, [xhat[0], 0.0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dshift, [1.0, 0.0], rtol=1e-6)


def _pair(x_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=x_shape) * 2.0 + 0.5, jnp.float32)
    kwargs = dict(use_running_average=False, momentum=0.9, epsilon=EPS)
    ours, theirs = BatchNorm(**kwargs), nn.BatchNorm(**kwargs)
    variables = theirs.init(jax.random.key(0), x)
    channels = x_shape[-1]
    variables = {"params": {"scale": jnp.asarray(rng.normal(size=channels), jnp.float32),
                            "bias": jnp.asarray(rng.normal(size=channels), jnp.float32)},
                 "batch_stats": variables["batch_stats"]}
    return x, ours, theirs, variables


def test_training_values_running_averages_and_gradients_match_flax():
    x, ours, theirs, variables = _pair((16, 12, 12, 32))  # 73,728 elements
    assert x.size >= bn_module.MIN_ONEDNN_ELEMENTS
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == \
        jax.tree.map(jnp.shape, theirs.init(jax.random.key(0), x))
    apply = lambda m: jax.jit(lambda v, x: m.apply(v, x, mutable=["batch_stats"]))  # noqa: E731
    assert "jaxcnn_batch_norm_forward" in apply(ours).lower(variables, x).compile().as_text()
    ours_v, theirs_v = variables, variables
    for step in range(2):  # the running averages move the same way, step after step
        (y1, s1), (y2, s2) = apply(ours)(ours_v, x + step), apply(theirs)(theirs_v, x + step)
        np.testing.assert_allclose(y1, y2, atol=2e-5, rtol=0)
        for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        ours_v, theirs_v = {**ours_v, **s1}, {**theirs_v, **s2}
    g = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)

    def loss(module):
        return lambda p, x: jnp.sum(module.apply({**variables, "params": p}, x,
                                                 mutable=["batch_stats"])[0] * g)

    for a, b in zip(jax.tree.leaves(jax.grad(loss(ours), (0, 1))(variables["params"], x)),
                    jax.tree.leaves(jax.grad(loss(theirs), (0, 1))(variables["params"], x))):
        np.testing.assert_allclose(a, b, atol=2e-5 * float(jnp.max(jnp.abs(b))), rtol=0)


def test_the_branch_for_other_platforms_matches_flax():
    # What a BatchNorm traced for the CPU runs if its program executes on another platform.
    x, _, theirs, variables = _pair((4, 6, 6, 8))
    params = variables["params"]
    y, mean, variance = bn_module.normalize_xla(x, params["scale"], params["bias"], EPS)
    expected, stats = theirs.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, expected, atol=2e-5, rtol=0)
    # Flax's running averages start at mean 0, variance 1 and move by 1 - momentum = 0.1
    np.testing.assert_allclose(0.1 * mean, stats["batch_stats"]["mean"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(0.9 + 0.1 * variance, stats["batch_stats"]["var"], rtol=1e-5)
    np.testing.assert_allclose(variance, np.var(np.asarray(x), axis=(0, 1, 2)), rtol=1e-4)
    g = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)
    ours = jax.grad(lambda p, x: jnp.sum(bn_module.normalize_xla(x, p["scale"], p["bias"],
                                                                 EPS)[0] * g), (0, 1))
    flax = jax.grad(lambda p, x: jnp.sum(theirs.apply({**variables, "params": p}, x,
                                                      mutable=["batch_stats"])[0] * g), (0, 1))
    for a, b in zip(jax.tree.leaves(ours(params, x)), jax.tree.leaves(flax(params, x))):
        np.testing.assert_allclose(a, b, atol=2e-5 * float(jnp.max(jnp.abs(b))), rtol=0)


def test_ghost_batch_norm_by_vmap_normalizes_each_group_alone(monkeypatch):
    monkeypatch.setattr(bn_module, "MIN_ONEDNN_ELEMENTS", 0)
    x, ours, _, variables = _pair((3, 8, 8, 8, 16))  # 3 groups of 8 images
    stack = jax.jit(jax.vmap(lambda x: ours.apply(variables, x, mutable=["batch_stats"])))
    assert "jaxcnn_batch_norm_forward" in stack.lower(x).compile().as_text()
    y, stats = stack(x)
    for i in range(3):
        alone, alone_stats = ours.apply(variables, x[i], mutable=["batch_stats"])
        np.testing.assert_allclose(y[i], alone, atol=1e-5, rtol=0)
        np.testing.assert_allclose(stats["batch_stats"]["mean"][i],
                                   alone_stats["batch_stats"]["mean"], atol=1e-6, rtol=0)


def test_flax_runs_where_onednn_must_not():
    x, ours, _, variables = _pair((16, 12, 12, 32))

    def hlo(module, x, **kwargs):
        fn = lambda v, x: module.apply(v, x, mutable=["batch_stats"], **kwargs)  # noqa: E731
        return jax.jit(fn).lower(variables, x).compile().as_text()

    assert "jaxcnn_batch_norm" in hlo(ours, x)
    assert "jaxcnn_batch_norm" not in hlo(ours.clone(use_running_average=True), x)  # evaluation
    assert "jaxcnn_batch_norm" not in hlo(ours, x.astype(jnp.bfloat16))
    assert "jaxcnn_batch_norm" not in hlo(ours, x[:2, :4, :4])  # 1,024 elements: too few
    assert "jaxcnn_batch_norm" not in hlo(ours, x.reshape(16 * 144, 32))  # not NHWC
    assert "jaxcnn_batch_norm" not in hlo(ours, x, mask=jnp.ones(x.shape, bool))
    with without_native_convolution():  # programs XLA partitions over devices
        assert "jaxcnn_batch_norm" not in hlo(ours, x)
    # synchronised statistics (pmap's axis) and initialization keep Flax's code
    synced = BatchNorm(use_running_average=False, axis_name="batch")
    assert not synced.bind(variables).uses_onednn(x, False, None)
    init = jax.jit(lambda x: ours.init(jax.random.key(0), x))
    assert "jaxcnn_batch_norm" not in init.lower(x).compile().as_text()


def test_a_resnet_train_step_uses_it_and_keeps_flax_variable_names():
    from jaxcnn.models import get_model
    model = get_model("resnet20")
    x = jnp.zeros((16, 32, 32, 3))
    variables = model.init(jax.random.key(0), x[:1])
    assert set(variables["batch_stats"]["bn1"]) == {"mean", "var"}
    assert set(variables["params"]["bn1"]) == {"scale", "bias"}

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
        return jnp.sum(out)

    text = jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()
    # every BatchNorm of resnet20 is followed by ReLU (after the shortcut's addition in
    # each block's second one): all run in jaxcnn's batch_norm_relu kernel
    for target in ("relu_forward", "relu_backward", "add_relu_forward", "add_relu_backward"):
        assert f"jaxcnn_batch_norm_{target}" in text


def test_forward_mode_inside_plain_lax_layers_agrees_with_the_onednn_gradient():
    from jaxcnn.models import get_model
    from jaxcnn.models.conv import plain_lax_layers
    model = get_model("resnet20")
    x = jnp.asarray(np.random.default_rng(3).normal(size=(8, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x[:1])

    def f(x):
        out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(out))

    tangent = jnp.asarray(np.random.default_rng(4).normal(size=x.shape), jnp.float32)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(f, (x,), (tangent,))  # the oneDNN layers differentiate in reverse mode only
    with plain_lax_layers():
        _, forward = jax.jvp(f, (x,), (tangent,))
    reverse = jnp.vdot(jax.grad(f)(x), tangent)
    np.testing.assert_allclose(forward, reverse, rtol=1e-4)
