"""The pure train/eval steps and exact, masked metrics."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.models import get_model
from jaxcnn.train import create_train_state, eval_step, metric_sums, summarize, train_step
from jaxcnn.data import eval_batches
from jaxcnn.train.loop import evaluate


def test_metric_sums_match_hand_computed_example():
    # softmax([0, ln 3]) = [1/4, 3/4]; softmax([0, 0]) = [1/2, 1/2].
    logits = jnp.array([[0.0, math.log(3)], [math.log(3), 0.0], [0.0, 0.0]])
    labels = jnp.array([1, 1, 0])
    sums = metric_sums(logits, labels)
    assert float(sums["loss_sum"]) == pytest.approx(-math.log(0.75) - math.log(0.25) - math.log(0.5))
    assert float(sums["correct"]) == 2  # row 1 is wrong; the tie in row 2 goes to class 0
    assert float(sums["count"]) == 3
    assert "top5_correct" not in sums  # two classes: top-5 means nothing

    masked = metric_sums(logits, labels, jnp.array([1.0, 1.0, 0.0]))
    assert float(masked["loss_sum"]) == pytest.approx(math.log(16 / 3))
    assert float(masked["correct"]) == 1
    assert summarize(masked) == pytest.approx(
        {"loss": math.log(16 / 3) / 2, "accuracy": 0.5, "num_examples": 2})


def test_top5_counts_labels_among_the_five_largest_logits():
    logits = jnp.array([[6.0, 5, 4, 3, 2, 1, 0], [6.0, 5, 4, 3, 2, 1, 0]])
    sums = metric_sums(logits, jnp.array([4, 5]))  # rank 5 is in the top 5, rank 6 is not
    assert float(sums["top5_correct"]) == 1
    assert float(sums["correct"]) == 0


class Linear(nn.Module):
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


def test_eval_counts_a_final_uneven_batch_exactly():
    state = create_train_state(Linear(), (2, 2, 1), optax.adam(1e-3), seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 2, 2, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, 10).astype(np.int32)
    metrics = evaluate(state, eval_batches(images, labels, 4))  # batches of 4, 4 and 2 (+2 padding)
    full = summarize(eval_step(state, {"image": images.astype(np.float32) / 255, "label": labels}))
    assert metrics["num_examples"] == 10
    assert metrics["loss"] == pytest.approx(full["loss"], rel=1e-6)
    assert metrics["accuracy"] == full["accuracy"]


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    model = get_model("lenet5", num_classes=10)
    state = create_train_state(model, (28, 28, 1), optax.adam(3e-3), seed=0)
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((32, 28, 28, 1), dtype=np.float32),
             "label": rng.integers(0, 10, 32).astype(np.int32)}
    step = jax.jit(train_step)
    losses = []
    for _ in range(50):
        state, sums = step(state, batch)
        losses.append(float(sums["loss_sum"]) / 32)
    assert int(state.step) == 50
    assert losses[-1] < 0.2 * losses[0], losses  # 32 random images get memorised


def test_train_step_is_deterministic():
    model = get_model("lenet5")
    batch = {"image": np.ones((4, 28, 28, 1), np.float32), "label": np.arange(4, dtype=np.int32)}
    results = []
    for _ in range(2):
        state = create_train_state(model, (28, 28, 1), optax.adam(1e-3), seed=3)
        state, _ = jax.jit(train_step)(state, batch)
        results.append(jax.tree.leaves(state.params))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_the_initial_state_is_model_init_on_the_split_seed_with_zero_adam_moments():
    model = get_model("resnet20")  # BatchNorm statistics too
    state = create_train_state(model, (32, 32, 3), optax.adam(1e-3), seed=7)
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(7))
    with jax.threefry_partitionable(False):
        expected = model.init(init_key, jnp.zeros((1, 32, 32, 3)))
    for mine, theirs in zip(jax.tree.leaves((state.params, state.batch_stats)),
                            jax.tree.leaves((expected["params"], expected["batch_stats"]))):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(state.rng, dropout_key)
    adam = state.opt_state[0]
    assert int(adam.count) == 0 and int(state.step) == 0 and int(state.first_nonfinite_step) == -1
    assert all(not np.any(m) for m in jax.tree.leaves((adam.mu, adam.nu)))


# --- float16 with dynamic loss scaling (Micikevicius et al. 2018) ----------------------------

def float16_state(scale, period=2000):
    from jaxcnn.train.state import LossScale

    model = get_model("lenet5", num_classes=10)
    return create_train_state(model, (28, 28, 1), optax.adam(1e-3), seed=0,
                              loss_scale=LossScale.create(scale=scale, period=period))


def random_batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.random((n, 28, 28, 1), dtype=np.float32),
            "label": rng.integers(0, 10, n).astype(np.int32)}


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def float16_step(state, batch, **kwargs):
    return jax.jit(lambda s, b: train_step(s, b, dtype=jnp.float16, **kwargs))(state, batch)


def test_a_loss_scale_overflow_skips_the_step_and_halves_the_scale():
    # 2**40 times d(loss)/d(logits) (about 1/32) overflows float16's 65504 in the backward pass.
    state = float16_state(2.0 ** 40)
    new, sums = float16_step(state, random_batch())
    assert float(new.loss_scale.scale) == 2.0 ** 39 and int(new.loss_scale.good_steps) == 0
    assert same((state.params, state.opt_state), (new.params, new.opt_state))  # discarded
    assert int(new.step) == 1  # the batch was consumed
    # Not divergence: not counted, and the step's (finite) loss is in the metrics.
    assert int(new.nonfinite_count) == 0 and int(new.first_nonfinite_step) == -1
    assert float(sums["count"]) == 32 and np.isfinite(float(sums["loss_sum"]))
    # Under the "ignore" policy too, an overflow is never applied.
    ignored, _ = float16_step(state, random_batch(), nonfinite="ignore")
    assert same(ignored.params, state.params)


def test_the_loss_scale_doubles_after_a_period_of_finite_steps():
    state = float16_state(8.0, period=3)
    scales = []
    for i in range(4):
        previous = state
        state, _ = float16_step(state, random_batch(seed=i))
        scales.append((float(state.loss_scale.scale), int(state.loss_scale.good_steps)))
        assert not same(previous.params, state.params)  # finite steps update
    assert scales == [(8.0, 1), (8.0, 2), (16.0, 0), (16.0, 1)]
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}  # params f32


def test_a_nan_loss_under_loss_scaling_is_still_divergence():
    state = float16_state(2.0 ** 10)
    batch = {**random_batch(), "image": np.full((32, 28, 28, 1), np.nan, np.float32)}
    new, _ = float16_step(state, batch)
    assert int(new.nonfinite_count) == 1 and int(new.first_nonfinite_step) == 0
    assert same(new.params, state.params)


def test_loss_scaled_float16_gradients_are_unscaled():
    # One SGD step with lr 1 moves the parameters by minus the gradient the update used.
    from jaxcnn.train.state import LossScale

    model = get_model("lenet5", num_classes=10)
    batch = random_batch()
    grads = {}
    for scale, dtype in ((None, None), (1.0, jnp.float16), (2.0 ** 12, jnp.float16)):
        state = create_train_state(model, (28, 28, 1), optax.sgd(1.0), seed=0,
                                   loss_scale=LossScale.create(scale) if scale else None)
        new, _ = jax.jit(lambda s, b, d=dtype: train_step(s, b, dtype=d))(state, batch)
        grads[scale] = np.concatenate([np.ravel(a - b) for a, b in zip(
            jax.tree.leaves(state.params), jax.tree.leaves(new.params))])
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)  # noqa: E731
    # Scaled by 4096 then unscaled: the gradient of scale 1 up to float16 rounding (1.3e-4
    # measured), not 4096 times it.
    assert rel(grads[2.0 ** 12], grads[1.0]) < 1e-3
    # And float32's gradient within float16 compute's error (5.4e-2 measured; bfloat16: 9e-2).
    assert rel(grads[2.0 ** 12], grads[None]) < 0.1
