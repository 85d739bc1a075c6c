"""BatchNorm followed by (residual +) ReLU in one kernel each way (jaxcnn/native/
batch_norm_relu.cc, ``BatchNorm(...)(x, residual=r, relu=True)``): a hand-computed example,
Flax's values, running averages and gradients, where the kernel runs and where it must not,
NaN, jax.vmap and reproducibility. In CI (``CI=true``) the library must build.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.models import batch_norm as bn_module
from jaxcnn.models.batch_norm import BatchNorm
from jaxcnn.models.conv import plain_lax_layers
from jaxcnn.native import batch_norm as native

from conftest import require_native_bridge

require_native_bridge()

EPS = 1e-5
SHAPE = (16, 12, 12, 32)  # 73,728 elements, above MIN_ONEDNN_ELEMENTS


def test_forward_and_backward_on_a_hand_computed_example():
    # one channel holding 0, 1, 2, 5 (a 2x2 map of one image): mean 2, biased variance 3.5
    x = jnp.array([0.0, 1.0, 2.0, 5.0]).reshape(1, 2, 2, 1)
    scale, shift = jnp.array([2.0]), jnp.array([0.5])
    residual = jnp.array([0.0, 0.0, -3.0, 1.0]).reshape(x.shape)
    xhat = (np.array([0.0, 1.0, 2.0, 5.0]) - 2.0) / np.sqrt(3.5 + EPS)
    z = 2.0 * xhat + 0.5 + np.array([0.0, 0.0, -3.0, 1.0])  # -1.64, -0.57, -2.5, 4.71
    y, mean, variance = native.relu_forward(x, scale, shift, EPS, residual)
    np.testing.assert_allclose(mean, [2.0], rtol=1e-6)
    np.testing.assert_allclose(variance, [3.5], rtol=1e-6)
    np.testing.assert_allclose(y.ravel(), np.maximum(z, 0.0), rtol=1e-5, atol=1e-6)
    dy = jnp.ones_like(x)
    dx, dscale, dshift, dres = native.relu_backward(x, y, dy, mean, variance, scale, shift,
                                                    EPS, True)
    g = (z > 0).astype(np.float64)  # only the last element passes ReLU
    np.testing.assert_allclose(dres.ravel(), g)
    np.testing.assert_allclose(dshift, [g.sum()], rtol=1e-6)
    np.testing.assert_allclose(dscale, [(g * xhat).sum()], rtol=1e-5)
    expected = 2.0 / np.sqrt(3.5 + EPS) * (g - g.mean() - xhat * (g * xhat).mean())
    np.testing.assert_allclose(dx.ravel(), expected, rtol=1e-5, atol=1e-7)
    # no residual: relu(bn(x)) keeps the last two elements, 2 * xhat + 0.5 > 0
    y, _, _ = native.relu_forward(x, scale, shift, EPS)
    np.testing.assert_allclose(y.ravel(), np.maximum(2.0 * xhat + 0.5, 0.0), rtol=1e-5)
    assert len(native.relu_backward(x, y, dy, mean, variance, scale, shift, EPS, False)) == 3


def _compare_with_float64(shape, with_residual: bool, seed: int = 0):
    """The kernel's forward and backward passes against NumPy in float64 (ReLU's gradient
    taken where the kernel's own output is positive)."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 2.0 + 0.5).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
    shift = rng.normal(size=shape[-1]).astype(np.float32)
    r = rng.normal(size=shape).astype(np.float32) if with_residual else None
    dy = rng.normal(size=shape).astype(np.float32)
    y, mean, variance = native.relu_forward(x, scale, shift, EPS, r)
    grads = native.relu_backward(x, y, dy, mean, variance, scale, shift, EPS,
                                with_residual)
    x64 = x.astype(np.float64)
    mu, var = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
    xhat = (x64 - mu) / np.sqrt(var + EPS)
    z = xhat * scale + shift + (0.0 if r is None else r)
    np.testing.assert_allclose(mean, mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance, var, rtol=1e-5)
    np.testing.assert_allclose(y, np.maximum(z, 0.0), atol=2e-5, rtol=0)
    g = np.where(np.asarray(y) > 0, dy, 0.0)
    m = x.size // shape[-1]
    dshift, dscale = g.sum(axis=(0, 1, 2)), (g * xhat).sum(axis=(0, 1, 2))
    dx = scale / np.sqrt(var + EPS) * (g - dshift / m - xhat * dscale / m)
    np.testing.assert_allclose(grads[0], dx, atol=2e-5 * np.abs(dx).max(), rtol=0)
    np.testing.assert_allclose(grads[1], dscale, atol=2e-5 * np.abs(dscale).max(), rtol=0)
    np.testing.assert_allclose(grads[2], dshift, atol=2e-5 * np.abs(dshift).max(), rtol=0)
    if with_residual:
        np.testing.assert_array_equal(grads[3], g.astype(np.float32))


# channel counts that do not divide the 64-element lanes, more than 64, a partial last chunk
@pytest.mark.parametrize("shape", [(3, 5, 7, 3), (2, 9, 11, 48), (1, 17, 19, 100),
                                   (7, 37, 3, 65), (1, 3, 1, 130)])
@pytest.mark.parametrize("with_residual", [True, False])
def test_the_kernel_matches_float64_for_any_channel_count(shape, with_residual):
    _compare_with_float64(shape, with_residual)


def test_without_a_residual_the_recomputed_mask_is_the_forward_outputs_bit_for_bit():
    # The plain backward pass recomputes where y > 0 from x; the residual one reads y. With a
    # zero residual both forward passes give the same y, so the gradients must agree in every
    # bit, here with many outputs at or next to 0 (x on a coarse grid; shift -> bn(x) = 0).
    rng = np.random.default_rng(5)
    shape = (6, 11, 13, 40)
    x = (rng.integers(-4, 5, size=shape) * 0.25).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
    mean0 = x.mean(axis=(0, 1, 2))
    shift = (-(0.25 - mean0) * scale / np.sqrt(x.var(axis=(0, 1, 2)) + EPS)).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    zero = np.zeros(shape, np.float32)
    y, mean, variance = native.relu_forward(x, scale, shift, EPS)
    y_r, _, _ = native.relu_forward(x, scale, shift, EPS, zero)
    np.testing.assert_array_equal(y, y_r)
    edge = np.asarray(y)[x == 0.25]  # bn(x) within rounding of 0: about half pass ReLU
    assert (edge > 0).sum() > 100 and (edge == 0).sum() > 100
    plain = native.relu_backward(x, y, dy, mean, variance, scale, shift, EPS, False)
    with_residual = native.relu_backward(x, y, dy, mean, variance, scale, shift, EPS, True)
    for ours, theirs in zip(plain, with_residual[:3]):
        np.testing.assert_array_equal(ours, theirs)


def test_three_openmp_threads_split_the_rows_as_well():
    # CI has 2 cores; an odd team splits the rows (and the lanes' blocks) unevenly
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_batch_norm_relu as t; "
            "[t._compare_with_float64(s, r) for s in [(7, 37, 3, 65), (5, 13, 13, 16)] "
            "for r in (True, False)]")
    done = subprocess.run([sys.executable, "-c", code, str(pathlib.Path(__file__).parent)],
                          env={**os.environ, "OMP_NUM_THREADS": "3"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_bad_operands_are_refused():
    x = jnp.ones((2, 4, 4, 8))
    with pytest.raises(ValueError, match="float32 of the activations' shape"):
        native.relu_forward(x, jnp.ones(8), jnp.zeros(8), EPS, x.astype(jnp.bfloat16))
    # no channels: every output is empty (XLA skips the call; the kernel would refuse it)
    y, mean, _ = native.relu_forward(jnp.ones((2, 4, 4, 0)), jnp.ones(0), jnp.zeros(0), EPS)
    assert y.shape == (2, 4, 4, 0) and mean.shape == (0,)


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=SHAPE) * 2.0 + 0.5, jnp.float32)
    residual = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    variables = {"params": {"scale": jnp.asarray(rng.normal(size=SHAPE[-1]), jnp.float32),
                            "bias": jnp.asarray(rng.normal(size=SHAPE[-1]), jnp.float32)},
                 "batch_stats": {"mean": jnp.zeros(SHAPE[-1]), "var": jnp.ones(SHAPE[-1])}}
    dy = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    return x, residual, variables, dy


def _ours(use_running_average=False):
    return BatchNorm(use_running_average=use_running_average, momentum=0.9, epsilon=EPS)


def _flax_tail(variables, x, residual, mask=None):
    """relu(Flax's BatchNorm(x) + residual); with ``mask``, ReLU's gradient taken from it
    (the kernel's own output decides, so that a value within rounding of 0 cannot flip)."""
    theirs = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=EPS)
    y, stats = theirs.apply(variables, x, mutable=["batch_stats"])
    z = y if residual is None else y + residual
    return (nn.relu(z) if mask is None else jnp.where(mask, z, 0.0)), stats


@pytest.mark.parametrize("with_residual", [True, False])
def test_values_running_averages_and_gradients_match_flax(with_residual):
    x, residual, variables, dy = _setup()
    residual = residual if with_residual else None
    ours = _ours()
    fn = jax.jit(lambda v, x, r: ours.apply(v, x, residual=r, relu=True,
                                            mutable=["batch_stats"]))
    target = "jaxcnn_batch_norm_add_relu" if with_residual else "jaxcnn_batch_norm_relu"
    assert f"{target}_forward" in fn.lower(variables, x, residual).compile().as_text()
    y, stats = fn(variables, x, residual)
    expected, expected_stats = _flax_tail(variables, x, residual)
    np.testing.assert_allclose(y, expected, atol=2e-5, rtol=0)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(expected_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert 0.3 < float(jnp.mean(y > 0)) < 0.7  # ReLU cuts a real share of values

    def loss(p, x, r):
        out = ours.apply({**variables, "params": p}, x, residual=r, relu=True,
                         mutable=["batch_stats"])[0]
        return jnp.sum(out * dy)

    def reference(p, x, r):
        out = _flax_tail({**variables, "params": p}, x, r, mask=y > 0)[0]
        return jnp.sum(out * dy)

    argnums = (0, 1, 2) if with_residual else (0, 1)
    grads = jax.jit(jax.grad(loss, argnums))(variables["params"], x, residual)
    hlo = jax.jit(jax.grad(loss, argnums)).lower(variables["params"], x, residual)
    assert f"{target}_backward" in hlo.compile().as_text()
    for a, b in zip(jax.tree.leaves(grads),
                    jax.tree.leaves(jax.grad(reference, argnums)(variables["params"], x,
                                                                 residual))):
        np.testing.assert_allclose(a, b, atol=2e-5 * float(jnp.max(jnp.abs(b))), rtol=0)
    if with_residual:  # the residual's gradient is dy where the output is positive
        np.testing.assert_array_equal(grads[2], jnp.where(y > 0, dy, 0.0))


def test_where_the_kernel_must_not_run_the_same_tail_is_computed():
    x, residual, variables, _ = _setup(1)
    ours = _ours()

    def run(module, x, r, **kwargs):
        fn = jax.jit(lambda v, x, r: module.apply(v, x, residual=r, mutable=["batch_stats"],
                                                  **kwargs)[0])
        return fn(variables, x, r), fn.lower(variables, x, r).compile().as_text()

    expected = _flax_tail(variables, x, residual)[0]
    with plain_lax_layers():
        y, text = run(ours, x, residual, relu=True)
    assert "jaxcnn_batch_norm" not in text
    np.testing.assert_allclose(y, expected, atol=2e-5, rtol=0)
    # relu=False: oneDNN's normalization, the residual added after it, no ReLU
    y, text = run(ours, x, residual)
    assert "jaxcnn_batch_norm_forward" in text and "relu" not in text.split("ENTRY")[1]
    np.testing.assert_allclose(y, _flax_tail(variables, x, residual, mask=True)[0],
                               atol=2e-5, rtol=0)
    # evaluation with the running averages: Flax's normalization, then the same tail
    y, text = run(_ours(use_running_average=True), x, residual, relu=True)
    assert "jaxcnn_batch_norm" not in text
    theirs = nn.BatchNorm(use_running_average=True, epsilon=EPS)
    np.testing.assert_allclose(y, nn.relu(theirs.apply(variables, x) + residual), atol=1e-5)
    # the branch a program traced for the CPU runs on other platforms
    p = variables["params"]
    y, mean, variance = bn_module._normalize_relu_xla(x, p["scale"], p["bias"], residual,
                                                      epsilon=EPS)
    np.testing.assert_allclose(y, expected, atol=2e-5, rtol=0)


def test_a_residual_of_another_shape_is_refused():
    x, residual, variables, _ = _setup()
    with pytest.raises(ValueError, match=r"residual must have the input's shape"):
        _ours().apply(variables, x, residual=residual[:, :6], relu=True,
                      mutable=["batch_stats"])


def test_nan_reaches_the_output_as_in_flax_and_runs_are_bitwise_repeatable():
    x, residual, variables, _ = _setup(2)
    x = x.at[3, 4, 5, 7].set(jnp.nan)  # channel 7's statistics become NaN
    fn = jax.jit(lambda x: _ours().apply(variables, x, residual=residual, relu=True,
                                         mutable=["batch_stats"])[0])
    y = fn(x)
    expected = _flax_tail(variables, x, residual)[0]
    np.testing.assert_array_equal(jnp.isnan(y), jnp.isnan(expected))
    assert bool(jnp.all(jnp.isnan(y[..., 7]))) and not bool(jnp.any(jnp.isnan(y[..., :7])))
    clean = _setup(2)[0]
    np.testing.assert_array_equal(fn(clean), fn(clean))  # same threads: the same bits
    # backward: NaN in dy where the output is 0 goes nowhere; where it is positive, it
    # reaches its channel's sums, so that channel's dx
    x, _, _, dy = _setup(4)
    p = variables["params"]
    y, mean, variance = native.relu_forward(x, p["scale"], p["bias"], EPS)
    off, on = np.argwhere(np.asarray(y) == 0)[0], np.argwhere(np.asarray(y) > 0)[0]
    dx = native.relu_backward(x, y, dy.at[tuple(off)].set(jnp.nan), mean, variance,
                              p["scale"], p["bias"], EPS, False)[0]
    assert not bool(jnp.any(jnp.isnan(dx)))
    dx = native.relu_backward(x, y, dy.at[tuple(on)].set(jnp.nan), mean, variance,
                              p["scale"], p["bias"], EPS, False)[0]
    assert bool(jnp.all(jnp.isnan(dx[..., on[3]])))


def test_vmap_normalizes_each_slice_alone():
    x, residual, variables, _ = _setup(3)
    x, residual = x.reshape(2, 8, *SHAPE[1:]), residual.reshape(2, 8, *SHAPE[1:])
    apply = lambda x, r: _ours().apply(variables, x, residual=r, relu=True,  # noqa: E731
                                       mutable=["batch_stats"])[0]
    stacked = jax.jit(jax.vmap(apply))
    assert "jaxcnn_batch_norm_add_relu_forward" in stacked.lower(x, residual).compile().as_text()
    out = stacked(x, residual)
    grad = jax.jit(jax.vmap(jax.grad(lambda x, r: jnp.sum(jnp.sin(apply(x, r))), (0, 1))))
    gx, gr = grad(x, residual)
    for i in range(2):
        np.testing.assert_allclose(out[i], apply(x[i], residual[i]), atol=1e-6, rtol=0)
        alone = jax.grad(lambda x, r: jnp.sum(jnp.sin(apply(x, r))), (0, 1))(x[i], residual[i])
        np.testing.assert_allclose(gx[i], alone[0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(gr[i], alone[1], atol=1e-6, rtol=0)


def test_two_pass_variance_and_other_dtypes_keep_flax_code_with_the_same_tail():
    x, residual, variables, _ = _setup(5)
    two_pass = BatchNorm(use_running_average=False, epsilon=EPS, use_fast_variance=False)
    fn = jax.jit(lambda x, r: two_pass.apply(variables, x, residual=r, relu=True,
                                             mutable=["batch_stats"])[0])
    assert "jaxcnn_batch_norm" not in fn.lower(x, residual).compile().as_text()
    # a bfloat16 residual: oneDNN's normalization, then XLA's add and ReLU
    r16 = residual.astype(jnp.bfloat16)
    fn = jax.jit(lambda x, r: _ours().apply(variables, x, residual=r, relu=True,
                                            mutable=["batch_stats"])[0])
    text = fn.lower(x, r16).compile().as_text()
    assert "jaxcnn_batch_norm_forward" in text and "relu_forward" not in text
    np.testing.assert_allclose(fn(x, r16), _flax_tail(variables, x, r16)[0], atol=2e-5)


def test_a_projection_shortcut_keeps_onednn_batch_norm_and_fuses_the_block_tail():
    from jaxcnn.models.resnet import BasicBlock
    block = BasicBlock(32, stride=2, shortcut="projection")
    x = jnp.asarray(np.random.default_rng(6).normal(size=(16, 16, 16, 16)), jnp.float32)
    variables = block.init(jax.random.key(0), x)
    assert set(variables["params"]) == {"conv1", "bn1", "conv2", "bn2", "downsample_conv",
                                        "downsample_bn"}

    def loss(params):
        out, _ = block.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
        return jnp.sum(out)

    text = jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()
    for target in ("batch_norm_forward", "batch_norm_backward",  # downsample_bn, no ReLU
                   "batch_norm_relu_forward", "batch_norm_add_relu_backward"):
        assert f"jaxcnn_{target}" in text
