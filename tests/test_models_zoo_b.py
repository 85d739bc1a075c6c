"""ResNets (ImageNet and CIFAR, residual and plain), GoogLeNet and Inception v1.

Parameter counts and shapes use ``jax.eval_shape`` (nothing is compiled); the torchvision
checks convert random torchvision weights and compare logits on small inputs.
"""
from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import InputShapeError
from jaxcnn.models import get_model, model_info
from jaxcnn.models.inception import GoogLeNetOutputs, InceptionAux
from jaxcnn.models.layers import adaptive_avg_pool, torch_max_pool, torch_pool_output_size
from jaxcnn.models.resnet import shortcut
from jaxcnn.models.torch_convert import from_torch

KEY = jax.random.key(0)
IMAGENET = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34",
            "googlenet", "inception_v1")
CIFAR_DEPTHS = (20, 32, 44, 56, 110)
CIFAR = tuple(f"{kind}{d}" for kind in ("resnet", "plain") for d in CIFAR_DEPTHS)
TOP1 = {"resnet18": 69.758, "resnet34": 73.314, "resnet50": 76.13, "resnet101": 77.374,
        "resnet152": 78.312, "googlenet": 69.778}


def shapes(name, size=None, **kwargs):
    """eval_shape of init and of apply: (variables, logits) as ShapeDtypeStructs."""
    model = get_model(name, **kwargs)
    height, width, chans = model_info(name).input_shape
    x = jnp.zeros((2, size or height, size or width, chans))
    variables = jax.eval_shape(model.init, KEY, x)
    return variables, jax.eval_shape(model.apply, variables, x)


def numpy_variables(model, x, seed=0):
    """Random variables drawn with NumPy: compiling ``model.init`` is avoided because XLA:CPU
    takes tens of seconds to compile JAX 0.12's default (partitionable threefry) RNG."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        kind = path[-1].key
        if kind in ("scale", "var"):
            return np.ones(leaf.shape, np.float32)
        if kind in ("bias", "mean"):
            return np.zeros(leaf.shape, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(model.init, KEY, x))


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", IMAGENET + CIFAR)
def test_parameter_count_and_output_shape(name):
    info = model_info(name)
    variables, logits = shapes(name)
    assert count(variables["params"]) == info.num_params
    assert logits.shape == (2, info.num_classes)
    assert info.num_classes == (10 if name in CIFAR else 1000)
    assert info.top1 == TOP1.get(name)


def test_googlenet_with_aux_heads():
    variables, logits = shapes("googlenet", aux_logits=True)
    assert count(variables["params"]) == 13_004_888
    assert logits.shape == (2, 1000)  # eval mode: the logits only
    model = get_model("googlenet", aux_logits=True, num_classes=7)
    x = jnp.zeros((2, 64, 64, 3))
    variables = jax.eval_shape(model.init, KEY, x)
    out, _ = jax.eval_shape(
        lambda v: model.apply(v, x, train=True, mutable=["batch_stats"],
                              rngs={"dropout": KEY}), variables)
    assert isinstance(out, GoogLeNetOutputs)
    assert [o.shape for o in out] == [(2, 7)] * 3


def test_plain_imagenet_counts_are_the_residual_ones_minus_the_projections():
    for depth, expected in ((18, 11_515_688), (34, 21_623_848)):
        residual, _ = shapes(f"resnet{depth}")
        projections = {k: v for k, v in flax.traverse_util.flatten_dict(residual["params"]).items()
                       if k[1].startswith("downsample")}
        assert len(projections) == 3 * 3  # 3 shortcuts of a conv kernel + BN scale and bias
        plain, _ = shapes(f"plain{depth}")
        assert count(plain["params"]) == count(residual["params"]) - count(projections) == expected


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_nets_take_64x64(name):
    _, logits = shapes(name, size=64)
    assert logits.shape == (2, 1000)


def test_cifar_option_a_shortcuts_have_no_parameters():
    for depth in (20, 56):  # the counts of all are checked above
        residual, _ = shapes(f"resnet{depth}")
        plain, _ = shapes(f"plain{depth}")
        assert jax.tree.map(lambda a: a.shape, residual) == jax.tree.map(lambda a: a.shape, plain)
    assert set(residual["params"]["layer2_0"]) == {"conv1", "bn1", "conv2", "bn2"}
    x = jnp.arange(2 * 6 * 6 * 16, dtype=jnp.float32).reshape(2, 6, 6, 16)
    y = shortcut(x, 32, 2, "zero_pad", train=False, kernel_init=None)
    np.testing.assert_array_equal(y[..., :16], x[:, ::2, ::2])
    np.testing.assert_array_equal(y[..., 16:], 0)
    assert shortcut(x, 16, 1, "none", train=False, kernel_init=None) is None


def test_cifar_resnet_eval_is_deterministic_and_train_updates_batch_stats():
    model = get_model("resnet20")
    x = jax.random.normal(KEY, (4, 32, 32, 3))
    variables = numpy_variables(model, x)
    apply = jax.jit(model.apply)
    np.testing.assert_array_equal(apply(variables, x), apply(variables, x))
    train_apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    logits, updates = train_apply(variables, x)
    assert logits.shape == (4, 10)
    old, new = variables["batch_stats"]["bn1"], updates["batch_stats"]["bn1"]
    assert not np.allclose(old["mean"], new["mean"])
    assert not np.allclose(old["var"], new["var"])


def test_dropout_needs_the_dropout_rng_in_train_mode_only():
    model = get_model("googlenet", num_classes=3)
    x = jnp.zeros((1, 15, 15, 3))
    variables = jax.eval_shape(model.init, KEY, x)
    jax.eval_shape(model.apply, variables, x)  # eval: no rng
    with pytest.raises(flax.errors.InvalidRngError):
        jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]),
                       variables)


@pytest.mark.parametrize("name, minimum, kwargs", [
    ("googlenet", 15, {}), ("inception_v1", 31, {}), ("inception_v1", 79, {"aux_logits": True}),
])
def test_too_small_input_names_the_model_and_the_minimum(name, minimum, kwargs):
    model = get_model(name, **kwargs)
    assert model.min_input_size() == minimum
    jax.eval_shape(model.init, KEY, jnp.zeros((1, minimum, minimum, 3)))
    with pytest.raises(InputShapeError, match=fr"{name} needs .* at least {minimum}x{minimum}"):
        jax.eval_shape(model.init, KEY, jnp.zeros((1, minimum - 1, minimum + 5, 3)))


def test_resnets_check_the_input_rank():
    with pytest.raises(InputShapeError, match="resnet56 takes NHWC"):
        get_model("resnet56").init(KEY, jnp.zeros((32, 32, 3)))
    with pytest.raises(InputShapeError, match="plain34 takes NHWC"):
        get_model("plain34").init(KEY, jnp.zeros((32, 32, 3)))


def test_inception_v1_matches_the_papers_table():
    model = get_model("inception_v1")
    x = jnp.zeros((1, 224, 224, 3))
    variables = jax.eval_shape(model.init, KEY, x)
    _, state = jax.eval_shape(
        lambda v: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables)
    table = {"inception3a": (28, 256), "inception3b": (28, 480), "inception4a": (14, 512),
             "inception4b": (14, 512), "inception4c": (14, 512), "inception4d": (14, 528),
             "inception4e": (14, 832), "inception5a": (7, 832), "inception5b": (7, 1024)}
    for block, (size, chans) in table.items():
        assert state["intermediates"][block]["__call__"][0].shape == (1, size, size, chans)
    params = variables["params"]
    assert params["inception3a"]["branch3_1"]["conv"]["kernel"].shape == (5, 5, 16, 32)
    googlenet = jax.eval_shape(get_model("googlenet").init, KEY, x)["params"]
    assert googlenet["inception3a"]["branch3_1"]["conv"]["kernel"].shape == (3, 3, 16, 32)


def test_torch_pooling_arithmetic():
    # (size, window, stride, padding, ceil_mode) -> PyTorch's output length
    cases = {(15, 3, 2, 0, True): 7, (14, 3, 2, 0, False): 6, (2, 3, 2, 0, True): 1,
             (1, 3, 2, 0, True): 0, (5, 3, 3, 1, True): 2, (6, 2, 2, 1, True): 4,
             (7, 3, 2, 1, False): 4}
    for args, out in cases.items():
        assert torch_pool_output_size(*args) == out, args
    x = jnp.arange(25.0).reshape(1, 5, 5, 1)
    # ceil mode: windows [0:3] and [2:5] along each axis; the last one hangs over nothing.
    np.testing.assert_array_equal(torch_max_pool(x, 3, 2, ceil_mode=True)[0, ..., 0],
                                  [[12, 14], [22, 24]])
    np.testing.assert_array_equal(torch_max_pool(x, 2, 2, ceil_mode=True)[0, ..., 0],
                                  [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    pooled = adaptive_avg_pool(jnp.arange(14.0).reshape(1, 14, 1, 1) * jnp.ones((1, 1, 3, 1)), 4)
    # windows of 14 -> 4: [0:4], [3:7], [7:11], [10:14]
    np.testing.assert_allclose(pooled[0, :, 0, 0], [1.5, 4.5, 8.5, 11.5])


def assert_matches_torch(name, ref, **model_kwargs):
    variables = from_torch(name, ref["state_dict"], **model_kwargs)
    model = get_model(name, **model_kwargs)
    x = ref["x"].transpose(0, 2, 3, 1)
    expected = jax.eval_shape(model.init, KEY, x)
    assert jax.tree.map(lambda a: a.shape, expected) == jax.tree.map(np.shape, variables)
    ours = np.asarray(jax.jit(model.apply)(variables, x))
    y = ref["y"]
    np.testing.assert_allclose(ours, y, rtol=1e-4, atol=1e-4 * np.abs(y).max())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_matches_torchvision(torch_reference, name):
    assert_matches_torch(name, torch_reference(name, (1, 3, 64, 64)))


def test_googlenet_matches_torchvision_at_its_smallest_size(torch_reference):
    # 15x15 is torchvision's minimum; every ceil-mode pool then hangs over the edge. The
    # state dict has aux heads, which the converter drops for aux_logits=False.
    ref = torch_reference("googlenet", (1, 3, 15, 15), aux_logits=True, init_weights=True)
    assert_matches_torch("googlenet", ref)


def test_googlenet_matches_torchvision_on_odd_sizes(torch_reference):
    ref = torch_reference("googlenet", (2, 3, 35, 47), aux_logits=False, init_weights=True)
    assert_matches_torch("googlenet", ref)


def test_googlenet_aux_head_conversion(torch_reference):
    ref = torch_reference("googlenet", (1, 3, 15, 15), aux_logits=True, init_weights=True)
    sd = ref["state_dict"]
    variables = from_torch("googlenet", sd, aux_logits=True)
    feature = np.random.default_rng(0).normal(size=(2, 512, 14, 14)).astype(np.float32)
    head = InceptionAux(1000)
    ours = head.apply({"params": variables["params"]["aux1"],
                       "batch_stats": variables["batch_stats"]["aux1"]},
                      feature.transpose(0, 2, 3, 1))
    # torchvision's InceptionAux, in NCHW numpy: adaptive pool to 4x4, 1x1 conv, BN, ReLU,
    # flatten in (c, h, w) order, fc1, ReLU, fc2.
    bounds = [(i * 14 // 4, -(-(i + 1) * 14 // 4)) for i in range(4)]
    pooled = np.stack([np.stack([feature[:, :, a:b, c:d].mean(axis=(2, 3)) for c, d in bounds],
                                -1) for a, b in bounds], -2)
    x = np.einsum("nchw,oc->nohw", pooled, sd["aux1.conv.conv.weight"][:, :, 0, 0])
    bn = {k: sd[f"aux1.conv.bn.{k}"][None, :, None, None]
          for k in ("weight", "bias", "running_mean", "running_var")}
    x = (x - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
    x = np.maximum(x, 0).reshape(2, -1)
    x = np.maximum(x @ sd["aux1.fc1.weight"].T + sd["aux1.fc1.bias"], 0)
    y = x @ sd["aux1.fc2.weight"].T + sd["aux1.fc2.bias"]
    np.testing.assert_allclose(ours, y, rtol=1e-4, atol=1e-4 * np.abs(y).max())
