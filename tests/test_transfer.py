"""Transfer learning: new heads, frozen parameters, per-group learning rates, loading weights
from a run or from torchvision, and the errors for bad paths and patterns."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.configs.default import get_config
from jaxcnn.errors import ConfigError
from jaxcnn.models import get_model
from jaxcnn.train import loop, transfer
from jaxcnn.train.optim import make_optimizer
from jaxcnn.train.state import create_train_state
from jaxcnn.train.steps import cross_entropy, train_step

SHAPE = (28, 28, 1)


def lenet_state(**overrides):
    config = get_config()
    config.num_classes = 10
    for key, value in overrides.items():
        config[key] = value
    return create_train_state(get_model("lenet5", num_classes=10), SHAPE,
                              make_optimizer(config, 100), seed=0), config


def random_batches(count: int, size: int = 16):
    rng = np.random.default_rng(0)
    return [{"image": jnp.asarray(rng.random((size, *SHAPE), np.float32)),
             "label": jnp.asarray(rng.integers(0, 10, size), jnp.int32)} for _ in range(count)]


def train(state, steps: int = 3):
    step = jax.jit(train_step)
    for batch in random_batches(steps):
        state, _ = step(state, batch)
    return state


def flat(params):
    return {k: np.asarray(v) for k, v in transfer.paths(params).items()}


def test_paths_and_patterns_label_modules_and_globs():
    state, _ = lenet_state()
    labels = transfer.paths(transfer.partition_by_path(
        state.params, [("frozen", ["conv*"]), ("fast", ["head"])]))
    assert labels["conv1/kernel"] == labels["conv2/bias"] == "frozen"
    assert labels["head/kernel"] == labels["head/bias"] == "fast"
    assert labels["fc1/kernel"] == "default"
    labels = transfer.paths(transfer.partition_by_path(state.params, [("x", ["backbone"])]))
    assert labels["head/kernel"] == "default" and labels["fc2/kernel"] == "x"


@pytest.mark.parametrize("overrides", [{"freeze": "backbone"}, {"trainable": "head"},
                                       {"freeze": "conv1,conv2/kernel"}])
def test_frozen_parameters_stay_bitwise_unchanged(overrides):
    state, config = lenet_state(**overrides)
    before = flat(state.params)
    after = flat(train(state).params)
    labels = transfer.paths(transfer.optimizer_groups(config)[0](state.params))
    frozen = [p for p, label in labels.items() if label == transfer.FROZEN]
    assert frozen and len(frozen) < len(labels)
    for path in before:
        if path in frozen:
            assert after[path].tobytes() == before[path].tobytes(), path
        else:
            assert not np.array_equal(after[path], before[path]), path


def test_freeze_wraps_any_optax_optimizer():
    import optax

    tx = transfer.freeze(optax.sgd(0.1, momentum=0.9), ["conv*", "fc1/kernel"])
    state = create_train_state(get_model("lenet5", num_classes=10), SHAPE, tx, seed=0)
    before, after = flat(state.params), flat(train(state, steps=2).params)
    for path in before:
        fixed = path.startswith("conv") or path == "fc1/kernel"
        assert (after[path].tobytes() == before[path].tobytes()) == fixed, path


def test_frozen_parameters_have_no_optimizer_state():
    free, _ = lenet_state()
    frozen, _ = lenet_state(trainable="head")
    size = lambda s: sum(np.size(x) for x in jax.tree.leaves(s.opt_state))  # noqa: E731
    head = sum(np.size(x) for x in jax.tree.leaves(free.params["head"]))
    assert size(frozen) < size(free) and size(frozen) <= 2 * head + 4


def test_per_group_learning_rates_are_applied():
    # Plain SGD (no momentum, constant rate): the update of each parameter is -lr * gradient.
    state, config = lenet_state(optimizer="sgd", momentum=0.0, schedule="constant", lr=0.5,
                                lr_groups="head=0.1,conv1=0.001")
    batch = random_batches(1)[0]

    def loss(params):
        return jnp.mean(cross_entropy(state.apply_fn({"params": params}, batch["image"],
                                                     train=True), batch["label"]))

    grads = flat(jax.grad(loss)(state.params))
    before, after = flat(state.params), flat(train_step(state, batch)[0].params)
    for path, lr in (("head/kernel", 0.1), ("conv1/kernel", 0.001), ("fc1/kernel", 0.5)):
        np.testing.assert_allclose(after[path] - before[path], -lr * grads[path],
                                   rtol=1e-3, atol=1e-7)


def test_replace_head_gives_the_new_class_count_and_keeps_the_rest():
    state, _ = lenet_state()
    new = transfer.replace_head(state.params, 3, jax.random.PRNGKey(1))
    assert new["head"]["kernel"].shape == (84, 3) and new["head"]["bias"].shape == (3,)
    assert not np.any(np.asarray(new["head"]["bias"]))
    old, now = flat(state.params), flat(new)
    assert all(np.array_equal(old[p], now[p]) for p in old if not p.startswith("head/"))
    logits = get_model("lenet5", num_classes=3).apply({"params": new}, jnp.zeros((2, *SHAPE)))
    assert logits.shape == (2, 3)


def test_transplant_copies_the_backbone_and_keeps_the_new_head():
    source, _ = lenet_state()
    target = create_train_state(get_model("lenet5", num_classes=4), SHAPE,
                                make_optimizer(get_config()), seed=7)
    out = transfer.transplant({"params": target.params}, {"params": source.params})
    got, src, tgt = flat(out["params"]), flat(source.params), flat(target.params)
    assert got["head/kernel"].shape == (84, 4)
    assert np.array_equal(got["head/kernel"], tgt["head/kernel"])
    assert all(np.array_equal(got[p], src[p]) for p in got if not p.startswith("head/"))


def test_transplant_names_a_mismatched_layer():
    source = create_train_state(get_model("mnist_cnn"), SHAPE, make_optimizer(get_config()), 0)
    target, _ = lenet_state()
    with pytest.raises(ConfigError, match="backbone has no params 'conv1/bias'|shape"):
        transfer.transplant({"params": target.params}, {"params": source.params})


@pytest.mark.parametrize("overrides, message", [
    ({"freeze": "conv9"}, "pattern 'conv9' matches no parameter.*conv1, conv2, fc1, fc2, head"),
    ({"lr_groups": "head:1e-3"}, "not PATTERN=LR"),
    ({"lr_groups": "head=-1"}, "not PATTERN=LR"),
    ({"freeze": "conv1", "trainable": "head"}, "not both"),
    ({"head": "classifier", "freeze": "backbone"}, "head 'classifier' names no module"),
])
def test_bad_patterns_are_named_with_the_fix(overrides, message):
    state, _ = lenet_state()
    config = get_config()
    for key, value in overrides.items():
        config[key] = value
    with pytest.raises(ConfigError, match=message):
        transfer.check(config, state.params)


def test_a_bad_init_from_path_is_refused_before_training(tmp_path, tfds_dir):
    config = get_config()
    config.data_dir, config.epochs = tfds_dir, 1
    config.init_from = str(tmp_path / "no_such_run")
    with pytest.raises(ConfigError, match="neither a run directory nor a file"):
        loop.prepare(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="neither a run directory"):
        transfer.load_backbone(tmp_path / "weights.bin")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, tfds_dir):
    """A one-epoch LeNet-5 run on the offline digits."""
    config = get_config()
    config.data_dir, config.epochs, config.batch_size = tfds_dir, 1, 64
    workdir = tmp_path_factory.mktemp("source") / "run"
    loop.fit(loop.prepare(config, str(workdir)), log=lambda *a: None)
    return workdir


def test_load_backbone_reads_a_runs_checkpoint(digits_run):
    from jaxcnn.train.inference import load

    backbone = transfer.load_backbone(digits_run)
    _, variables, _ = load(digits_run, best=False)
    assert backbone.model == "lenet5" and backbone.num_classes == 10
    got, want = flat(backbone.variables["params"]), flat(variables["params"])
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[p], want[p]) for p in got)


def test_feature_extraction_from_a_run_keeps_the_backbone_bitwise(digits_run, tmp_path, tfds_dir):
    config = get_config()
    config.data_dir, config.epochs, config.batch_size = tfds_dir, 1, 64
    config.num_classes = 10
    config.init_from, config.trainable = str(digits_run), "head"
    messages = []
    loop.fit(loop.prepare(config, str(tmp_path / "fe")), log=messages.append)
    assert any("initialised from" in m for m in messages)
    before = flat(transfer.load_backbone(digits_run).variables["params"])
    after = flat(transfer.load_backbone(tmp_path / "fe").variables["params"])
    for path in before:
        same = after[path].tobytes() == before[path].tobytes()
        assert same != path.startswith("head/"), path


def test_torchvision_weights_from_an_npz_file(torch_reference, tmp_path):
    state_dict = torch_reference("resnet18", (1, 3, 32, 32))["state_dict"]
    path = tmp_path / "resnet18.npz"
    np.savez(path, **state_dict)
    backbone = transfer.load_backbone(path, "resnet18")
    model = get_model("resnet18", num_classes=5)
    fresh = jax.jit(functools.partial(model.init, train=False))(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    out = transfer.transplant(fresh, backbone.variables)
    assert out["params"]["fc"]["kernel"].shape == (512, 5)
    np.testing.assert_array_equal(out["params"]["conv1"]["kernel"],
                                  state_dict["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(out["batch_stats"]["bn1"]["mean"],
                                  state_dict["bn1.running_mean"])
    with pytest.raises(ConfigError, match="need the model"):
        transfer.load_backbone(path)
