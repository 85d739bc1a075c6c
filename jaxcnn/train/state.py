"""The train state: everything a run needs to continue, as one pytree."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

PyTree = Any


class TrainState(struct.PyTreeNode):
    """Step, parameters, batch statistics, optimizer state and RNG of a run.

    ``apply_fn`` and ``tx`` are static (part of the tree's structure, not its leaves), so
    the state passes through ``jax.jit`` as an ordinary argument. ``rng`` is a raw uint32
    key; the dropout key of step ``t`` is ``fold_in(rng, t)``, so a resumed run draws the
    same dropout masks as an uninterrupted one.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    rng: jax.Array
    nonfinite_count: jax.Array       # steps whose loss or gradient norm was not finite
    first_nonfinite_step: jax.Array  # the first such step, -1 while there is none
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def apply_gradients(self, grads: PyTree, batch_stats: PyTree) -> "TrainState":
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)

    def checkpoint_tree(self) -> dict:
        """The leaves that a checkpoint holds (everything but the static functions)."""
        return {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
                "opt_state": self.opt_state, "rng": self.rng,
                "nonfinite_count": self.nonfinite_count,
                "first_nonfinite_step": self.first_nonfinite_step}

    def from_checkpoint_tree(self, tree: dict) -> "TrainState":
        return self.replace(**tree)


def create_train_state(model: nn.Module, input_shape: tuple[int, ...],
                       tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Initialises ``model`` on a batch of one ``input_shape`` image and ``tx`` on its params."""
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    # JAX 0.12's default "partitionable" threefry makes XLA:CPU compile every initialiser's
    # random bits slowly (resnet20's init: 31 s against 3 s here); the classic threefry
    # stream is just as good for initial weights and compiles fast.
    with jax.threefry_partitionable(False):
        variables = jax.jit(model.init)(init_key, jnp.zeros((1, *input_shape), jnp.float32))
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=dropout_key,
        nonfinite_count=jnp.zeros((), jnp.int32),
        first_nonfinite_step=jnp.full((), -1, jnp.int32),
        apply_fn=model.apply,
        tx=tx,
    )


def variables_of(state: TrainState) -> dict:
    """The Flax variables ``{"params", "batch_stats"?}`` for ``model.apply``."""
    if state.batch_stats:
        return {"params": state.params, "batch_stats": state.batch_stats}
    return {"params": state.params}
