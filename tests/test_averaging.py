"""jaxcnn.train.ema_update: the moving average of the parameters, checked by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.train import ema_update


def test_one_step_moves_one_minus_decay_of_the_way():
    average = {"w": jnp.array([1.0, 3.0]), "b": jnp.array(-2.0)}
    params = {"w": jnp.array([3.0, -1.0]), "b": jnp.array(2.0)}
    out = ema_update(average, params, 0.75)
    # 1 + 0.25 * (3 - 1), 3 + 0.25 * (-1 - 3), -2 + 0.25 * (2 + 2)
    np.testing.assert_array_equal(out["w"], [1.5, 2.0])
    np.testing.assert_array_equal(out["b"], -1.0)
    np.testing.assert_array_equal(average["w"], [1.0, 3.0])  # inputs untouched


def test_decay_0_gives_the_parameters_and_repeated_steps_close_the_gap_geometrically():
    params = {"w": jnp.full((2, 3), 8.0)}
    np.testing.assert_array_equal(ema_update({"w": jnp.zeros((2, 3))}, params, 0.0)["w"],
                                  params["w"])
    average = {"w": jnp.zeros((2, 3))}
    step = jax.jit(lambda a, p: ema_update(a, p, 0.5))
    for _ in range(3):
        average = step(average, params)
    np.testing.assert_array_equal(average["w"], np.full((2, 3), 8.0 - 8.0 * 0.5 ** 3))


def test_a_traced_decay_and_the_average_dtype_are_kept():
    average = {"w": jnp.ones(4, jnp.bfloat16)}
    params = {"w": jnp.full(4, 3.0, jnp.float32)}
    out = jax.jit(ema_update)(average, params, jnp.float32(0.5))
    assert out["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(out["w"].astype(jnp.float32), np.full(4, 2.0))


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_a_decay_outside_0_to_1_is_refused(decay):
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        ema_update({"w": jnp.zeros(2)}, {"w": jnp.zeros(2)}, decay)


def test_mismatched_trees_and_shapes_are_refused():
    with pytest.raises(ValueError, match="different tree structures"):
        ema_update({"w": jnp.zeros(2)}, {"v": jnp.zeros(2)}, 0.9)
    with pytest.raises(ValueError, match=r"shape \(2,\) and the parameter \(3,\)"):
        ema_update({"w": jnp.zeros(2)}, {"w": jnp.zeros(3)}, 0.9)
