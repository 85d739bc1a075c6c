"""The model zoo, first half: simple.py, lenet5_1998, AlexNet, VGG, MobileNetV2, DenseNet-121.

Parameter counts and output shapes come from ``jax.eval_shape`` (nothing is compiled); the
torchvision-backed models are checked against torchvision itself with converted random
weights on small inputs; train/eval behaviour runs on small inputs.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import InputShapeError, JaxCNNError
from jaxcnn.models import get_model, list_models, model_info
from jaxcnn.models.torch_convert import from_torch

# Exact trainable parameter counts (Flax "params"), for the registered class counts.
PARAMS = {
    "mlp": 418_060,
    "mnist_cnn": 1_621_670,
    "keras_cnn": 600_810,
    "lenet5_1998": 60_850,  # 60,000 up to F6 + dense 84 -> 10 output (850)
    "alexnet": 61_100_840,
    "alexnet_2012": 60_965_224,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "mobilenet_v2": 3_504_872,
    "densenet121": 7_978_856,
}
SMALL = ("mlp", "mnist_cnn", "keras_cnn", "lenet5_1998")
TOP1 = {"alexnet": 56.522, "vgg11": 69.02, "vgg13": 69.928, "vgg16": 71.592, "vgg19": 72.376,
        "vgg11_bn": 70.37, "vgg13_bn": 71.586, "vgg16_bn": 73.36, "vgg19_bn": 74.218,
        "mobilenet_v2": 71.878, "densenet121": 74.434}
# The smallest input each architecture takes (checked against torchvision where it exists:
# torchvision's alexnet fails at 62, vgg at 31, densenet121 at 28; mobilenet_v2 takes 1x1).
MIN_SIZE = {"mlp": 1, "mnist_cnn": 9, "keras_cnn": 6, "lenet5_1998": 28, "alexnet": 63,
            "alexnet_2012": 67, "vgg11": 32, "vgg13": 32, "vgg16": 32, "vgg19": 32,
            "vgg11_bn": 32, "vgg13_bn": 32, "vgg16_bn": 32, "vgg19_bn": 32,
            "mobilenet_v2": 1, "densenet121": 29}
# Models whose architecture has no fixed size: other input sizes to check (output shape).
OTHER_SIZES = {"alexnet": 64, "alexnet_2012": 99, "vgg11": 64, "vgg16_bn": 48,
               "mobilenet_v2": 64, "densenet121": 64, "lenet5_1998": 28, "mnist_cnn": 32,
               "keras_cnn": 32, "mlp": 32}


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def abstract_init(model, shape, batch: int = 2):
    """(variables, logits) shapes of ``model`` on a ``(batch, *shape)`` input, no compile."""
    x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[::-1], x)


def random_variables(model, shape, seed: int = 0):
    """Variables of the right shapes drawn with NumPy (cheap for the 100M-parameter nets)."""
    variables, _ = abstract_init(model, shape, batch=1)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32))
        # A random block repeated over big leaves: cheap, and random enough for these tests.
        block = rng.standard_normal(min(int(np.prod(leaf.shape)), 1 << 20), dtype=np.float32)
        block *= np.float32(1.0 / np.sqrt(max(1, np.prod(leaf.shape[:-1]))))
        values = np.empty(int(np.prod(leaf.shape)), np.float32)
        whole = values.size // block.size * block.size
        values[:whole].reshape(-1, block.size)[:] = block
        values[whole:] = block[:values.size - whole]
        return jax.device_put(values.reshape(leaf.shape))

    return jax.tree_util.tree_map_with_path(draw, variables)


def test_all_registered():
    assert set(PARAMS) <= set(list_models())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_and_output_shape(name):
    info = model_info(name)
    assert info.num_params == PARAMS[name]
    assert info.num_classes == (10 if name in SMALL else 1000)
    model = get_model(name)
    variables, logits = abstract_init(model, info.input_shape)
    assert count(variables["params"]) == PARAMS[name]
    assert logits.shape == (2, info.num_classes)
    # Another class count changes only the head.
    _, logits = abstract_init(get_model(name, num_classes=7), info.input_shape)
    assert logits.shape == (2, 7)


@pytest.mark.parametrize("name", sorted(OTHER_SIZES))
def test_other_input_sizes(name):
    channels = model_info(name).input_shape[-1]
    for size in (MIN_SIZE[name], OTHER_SIZES[name]):
        _, logits = abstract_init(get_model(name, num_classes=10), (size, size, channels))
        assert logits.shape == (2, 10)


def test_metadata():
    for name, top1 in TOP1.items():
        assert model_info(name).top1 == top1
        assert model_info(name).input_shape == (224, 224, 3)
        assert "torchvision" in model_info(name).reference
    assert model_info("alexnet_2012").input_shape == (227, 227, 3)
    assert model_info("lenet5_1998").input_shape == (32, 32, 1)
    for name in ("mlp", "mnist_cnn", "keras_cnn"):
        assert model_info(name).input_shape == (28, 28, 1)


def test_lenet5_1998_layers():
    variables, _ = abstract_init(get_model("lenet5_1998"), (32, 32, 1))
    per_layer = {name: count(tree) for name, tree in variables["params"].items()}
    assert per_layer == {"C1": 156, "S2": 12, "C3": 1516, "S4": 32, "C5": 48_120,
                         "F6": 10_164, "head": 850}
    assert sum(v for k, v in per_layer.items() if k != "head") == 60_000


def test_lenet5_1998_c3_is_table_one():
    """C3 equals a full 6->16 convolution whose kernel is zero off Table I's connections."""
    from jaxcnn.models.conv import plain_lax_layers
    from jaxcnn.models.lenet import C3_TABLE, PartialConv
    from jaxcnn.models.summary import summarize

    layer = PartialConv()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 14, 14, 6), dtype=np.float32))
    variables = layer.init(jax.random.key(0), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    full = np.zeros((5, 5, 6, 16), np.float32)
    column = 0
    for out_map, row in enumerate(C3_TABLE):
        for in_map in row:
            full[:, :, in_map, out_map] = kernel[:, :, 0, column]
            column += 1
    expected = jax.lax.conv_general_dilated(x, full, (1, 1), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-5, atol=1e-5)
    with plain_lax_layers():  # the connections-only form (grouped convolution)
        np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-5, atol=1e-5)
    # MACs of the connections present (by hand: C1 28*28*6*25, C3 10*10*60*25, C5 120*400,
    # F6 84*120, head 10*84), not of the zero-padded full kernel training uses.
    rows = {r.path: r.macs for r in summarize("lenet5_1998").rows}
    assert (rows["C1"], rows["C3"], rows["C5"], rows["F6"], rows["head"]) == \
        (117_600, 150_000, 48_000, 10_080, 840)
    assert [len(row) for row in C3_TABLE] == [3] * 6 + [4] * 9 + [6]
    # The paper's init: uniform within +-2.4 / fan-in, fan-in = 25 x (connected maps).
    assert float(jnp.abs(kernel[..., :3]).max()) <= 2.4 / 75
    assert float(jnp.abs(kernel[..., -6:]).max()) <= 2.4 / 150


def test_alexnet_2012_structure():
    from jaxcnn.models.summary import summarize

    summary = summarize("alexnet_2012")
    rows = {row.path: row for row in summary.rows}
    assert rows["conv1"].output_shape == (1, 55, 55, 96)  # 11x11/4 on 227x227
    assert rows["conv5"].output_shape == (1, 13, 13, 256)
    variables, _ = abstract_init(get_model("alexnet_2012"), (227, 227, 3))
    kernels = {k: v["kernel"].shape for k, v in variables["params"].items()}
    assert kernels["conv2"] == (5, 5, 48, 256)  # two groups: each half sees 48 maps
    assert kernels["conv3"] == (3, 3, 256, 384)  # conv3 sees both halves
    assert kernels["conv4"] == (3, 3, 192, 384) and kernels["conv5"] == (3, 3, 192, 256)
    assert kernels["fc1"] == (6 * 6 * 256, 4096)


def test_local_response_norm_formula():
    from jaxcnn.models.layers import local_response_norm

    a = np.random.default_rng(0).standard_normal((1, 2, 3, 8)).astype(np.float32) * 10
    expected = np.empty_like(a)
    for i in range(8):  # b_i = a_i / (k + alpha * sum_{|j-i|<=2} a_j^2) ** beta
        window = a[..., max(0, i - 2):min(8, i + 3)]
        expected[..., i] = a[..., i] / (2.0 + 1e-4 * (window ** 2).sum(-1)) ** 0.75
    np.testing.assert_allclose(local_response_norm(jnp.asarray(a)), expected, rtol=1e-5)


# --- Equality with torchvision (converted random weights, eval mode) -------------------------

TORCH_CASES = {
    "alexnet": (1, 3, 63, 63),  # the minimum: conv5's 1x1 maps are upsampled to 6x6
    "vgg11": (1, 3, 64, 64),  # 2x2 maps upsampled to 7x7 by the adaptive pool
    "vgg11_bn": (1, 3, 64, 64),
    "mobilenet_v2": (1, 3, 64, 64),
    "densenet121": (1, 3, 32, 32),
}


@functools.lru_cache(maxsize=None)
def jitted_apply(name: str, **kwargs):
    return jax.jit(get_model(name, **kwargs).apply, static_argnames=("train", "mutable"))


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_matches_torchvision(name, torch_reference):
    ref = torch_reference(name, TORCH_CASES[name])
    variables = from_torch(name, ref["state_dict"])
    x = ref["x"].transpose(0, 2, 3, 1)
    # The converted tree has exactly the structure and shapes that init makes.
    expected, _ = abstract_init(get_model(name), x.shape[1:], batch=1)
    assert jax.tree.map(np.shape, expected) == jax.tree.map(np.shape, variables)
    ours = np.asarray(jitted_apply(name)(variables, jnp.asarray(x)))
    y = ref["y"]
    assert ours.shape == y.shape
    np.testing.assert_allclose(ours, y, rtol=1e-4, atol=1e-4 * np.abs(y).max())


def test_converter_rejects_unused_weights(torch_reference):
    state_dict = dict(torch_reference("alexnet", TORCH_CASES["alexnet"])["state_dict"])
    state_dict["features.99.weight"] = np.zeros(3, np.float32)
    with pytest.raises(JaxCNNError, match="not converted"):
        from_torch("alexnet", state_dict)


# --- Train and eval behaviour -------------------------------------------------------------

# name: (input size, has dropout, has BatchNorm, init for real (else NumPy weights)).
# Eager or jitted init costs a compile per parameter shape (seconds on 2 cores), so only one
# model runs its init for real here; the others' init is traced by the shape tests.
BEHAVIOUR = {
    "mlp": (28, False, False, True),
    "mnist_cnn": (28, False, False, False),
    "keras_cnn": (28, True, False, False),
    "lenet5_1998": (32, False, False, False),
    "alexnet": (63, True, False, False),
    "alexnet_2012": (67, True, False, False),
    "vgg11_bn": (32, True, True, False),
    "mobilenet_v2": (32, True, True, False),
}


@pytest.mark.parametrize("name", sorted(BEHAVIOUR))
def test_train_and_eval_modes(name):
    size, has_dropout, has_bn, real_init = BEHAVIOUR[name]
    channels = model_info(name).input_shape[-1]
    model = get_model(name, num_classes=10)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, size, size, channels),
                                                             dtype=np.float32))
    if real_init:
        variables = model.init({"params": jax.random.key(0)}, x)
    else:
        variables = random_variables(model, (size, size, channels))
    assert ("batch_stats" in variables) == has_bn
    apply = jitted_apply(name, num_classes=10)

    first = apply(variables, x)
    again = apply(variables, x, rngs={"dropout": jax.random.key(9)})
    assert first.shape == (4, 10) and bool(jnp.all(jnp.isfinite(first)))
    np.testing.assert_array_equal(first, again)  # eval: deterministic, no dropout

    mutable = ("batch_stats",) if has_bn else False

    def train(seed):
        return apply(variables, x, train=True, rngs={"dropout": jax.random.key(seed)},
                     mutable=mutable)

    out_a, out_b, out_a2 = train(1), train(2), train(1)
    if has_bn:
        (out_a, updates), (out_b, _), (out_a2, _) = out_a, out_b, out_a2
        changed = jax.tree.map(lambda old, new: bool(jnp.any(old != new)),
                               variables["batch_stats"], updates["batch_stats"])
        assert all(jax.tree.leaves(changed)), "train mode must update every running statistic"
    np.testing.assert_array_equal(out_a, out_a2)  # same rng, same dropout mask
    if has_dropout:
        assert not np.allclose(out_a, out_b), "dropout should depend on the 'dropout' rng"
    elif not has_bn:
        np.testing.assert_allclose(out_a, first, rtol=1e-6, atol=1e-6)


# --- Input shape errors ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_input_shape_errors(name):
    height, width, channels = model_info(name).input_shape
    model = get_model(name)
    minimum = MIN_SIZE[name]
    if hasattr(model, "min_size"):  # computed from the model's own configuration table
        assert model.min_size() == minimum
    if minimum > 1:
        with pytest.raises(InputShapeError, match=f"{name} needs images of at least "
                                                  f"{minimum}x{minimum}"):
            abstract_init(model, (minimum - 1, minimum - 1, channels))
        with pytest.raises(InputShapeError, match=f"{name} needs .* {minimum}x{minimum}"):
            abstract_init(model, (height, minimum - 1, channels))
    with pytest.raises(InputShapeError, match=f"{name} was built for {channels}-channel"):
        abstract_init(model, (height, width, channels + 1))
    with pytest.raises(InputShapeError, match=name):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((height, width, channels)))
