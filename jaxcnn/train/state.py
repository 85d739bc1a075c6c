"""The train state: everything a run needs to continue, as one pytree."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

PyTree = Any

# Dynamic loss scaling for float16 (Micikevicius et al. 2018, "Mixed Precision Training",
# section 3.2): start high, halve on an overflow, double after this many finite steps.
LOSS_SCALE_INITIAL = 2.0 ** 15
LOSS_SCALE_PERIOD = 2000


class LossScale(struct.PyTreeNode):
    """The dynamic loss scale of float16 training (Micikevicius et al. 2018).

    The loss is multiplied by ``scale`` before differentiation, so that small gradients of
    float16 activations do not underflow to zero, and the gradients divided by it before the
    update. A step whose scaled gradients overflow (inf/NaN) is skipped and the scale halved
    (never below ``minimum``); after ``period`` consecutive finite steps the scale doubles
    (never above ``maximum``). ``good_steps`` counts the finite steps since the last change.
    """

    scale: jax.Array       # float32 scalar
    good_steps: jax.Array  # int32 scalar
    period: int = struct.field(pytree_node=False, default=LOSS_SCALE_PERIOD)
    factor: float = struct.field(pytree_node=False, default=2.0)
    minimum: float = struct.field(pytree_node=False, default=1.0)
    maximum: float = struct.field(pytree_node=False, default=2.0 ** 32)

    @classmethod
    def create(cls, scale: float | None = None, period: int | None = None) -> "LossScale":
        """A fresh scale; the defaults are read from the module constants at call time."""
        return cls(scale=jnp.asarray(LOSS_SCALE_INITIAL if scale is None else scale, jnp.float32),
                   good_steps=jnp.zeros((), jnp.int32),
                   period=LOSS_SCALE_PERIOD if period is None else period)

    def update(self, finite: jax.Array) -> "LossScale":
        """The scale after a step whose (unscaled) gradients were ``finite`` or not."""
        grow = finite & (self.good_steps + 1 >= self.period)
        grown = jnp.minimum(self.scale * self.factor, self.maximum)
        shrunk = jnp.maximum(self.scale / self.factor, self.minimum)
        scale = jnp.where(finite, jnp.where(grow, grown, self.scale), shrunk)
        good = jnp.where(finite & ~grow, self.good_steps + 1, 0)
        return self.replace(scale=scale.astype(jnp.float32), good_steps=good.astype(jnp.int32))


def loss_scale_for(dtype: str) -> LossScale | None:
    """A dynamic loss scale for ``dtype="float16"`` compute; ``None`` for float32/bfloat16
    (bfloat16 has float32's exponent range and needs none)."""
    return LossScale.create() if dtype == "float16" else None


class TrainState(struct.PyTreeNode):
    """Step, parameters, batch statistics, optimizer state and RNG of a run.

    ``apply_fn`` and ``tx`` are static (part of the tree's structure, not its leaves), so
    the state passes through ``jax.jit`` as an ordinary argument. ``rng`` is a raw uint32
    key; the dropout key of step ``t`` is ``fold_in(rng, t)``, so a resumed run draws the
    same dropout masks as an uninterrupted one. ``loss_scale`` is a :class:`LossScale` in
    float16 runs and ``None`` otherwise.
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
    loss_scale: LossScale | None = None

    def apply_gradients(self, grads: PyTree, batch_stats: PyTree) -> "TrainState":
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)

    def checkpoint_tree(self) -> dict:
        """The leaves that a checkpoint holds (everything but the static functions)."""
        tree = {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
                "opt_state": self.opt_state, "rng": self.rng,
                "nonfinite_count": self.nonfinite_count,
                "first_nonfinite_step": self.first_nonfinite_step}
        if self.loss_scale is not None:
            tree["loss_scale"] = {"scale": self.loss_scale.scale,
                                  "good_steps": self.loss_scale.good_steps}
        return tree

    def from_checkpoint_tree(self, tree: dict) -> "TrainState":
        tree = dict(tree)
        scale = tree.pop("loss_scale", None)
        state = self.replace(**tree)
        if scale is not None:
            state = state.replace(loss_scale=self.loss_scale.replace(**scale))
        return state


def create_train_state(model: nn.Module, input_shape: tuple[int, ...],
                       tx: optax.GradientTransformation, seed: int,
                       loss_scale: LossScale | None = None) -> TrainState:
    """Initialises ``model`` on a batch of one ``input_shape`` image and ``tx`` on its params.

    Pass a :class:`LossScale` (:func:`loss_scale_for`) to train with float16 compute.
    """
    def initial_arrays(seed):  # one compiled program, not one per eager op (0.4 s for LeNet-5)
        with jax.threefry_partitionable(True):  # the keys of earlier releases, bit for bit
            init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
        variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32))
        return dict(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(variables["params"]), rng=dropout_key,
                    nonfinite_count=jnp.zeros((), jnp.int32),
                    first_nonfinite_step=jnp.full((), -1, jnp.int32))

    # JAX 0.12's default "partitionable" threefry makes XLA:CPU compile every initialiser's
    # random bits slowly (resnet20's init: 31 s against 3 s here); the classic threefry
    # stream is just as good for initial weights and compiles fast.
    with jax.threefry_partitionable(False):
        arrays = jax.jit(initial_arrays, static_argnums=0)(seed)
    return TrainState(**arrays, apply_fn=model.apply, tx=tx, loss_scale=loss_scale)


def variables_of(state: TrainState) -> dict:
    """The Flax variables ``{"params", "batch_stats"?}`` for ``model.apply``."""
    if state.batch_stats:
        return {"params": state.params, "batch_stats": state.batch_stats}
    return {"params": state.params}
