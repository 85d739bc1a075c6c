"""The pure train and eval steps, the loss, and metrics as sums and counts.

Steps are functions of ``(state, batch)`` that know nothing of devices; ``jax.jit`` (or a
parallel wrapper) compiles them. Metrics are returned as sums over the batch (``loss_sum``,
``correct``, ``top5_correct``) and a ``count``, masked where a batch carries padding, so an
epoch's or a split's metric is exact: add the sums, divide once at the end.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxcnn.train.state import TrainState, variables_of

AUX_LOSS_WEIGHT = 0.3  # GoogLeNet's auxiliary classifiers (Szegedy et al. 2014, section 5)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy on integer labels, in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def metric_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> dict:
    """Sums of loss, correct top-1 (and top-5 where there are more than 5 classes), count."""
    if mask is None:
        mask = jnp.ones(labels.shape, jnp.float32)
    losses = cross_entropy(logits, labels)
    sums = {
        "loss_sum": jnp.sum(losses * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        "count": jnp.sum(mask),
    }
    if logits.shape[-1] > 5:
        top5 = jax.lax.top_k(logits, 5)[1]
        sums["top5_correct"] = jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask)
    return sums


def summarize(sums: dict) -> dict:
    """Turns summed metrics into means: loss, accuracy, top5_accuracy, num_examples."""
    count = float(sums["count"])
    out = {"loss": float(sums["loss_sum"]) / count,
           "accuracy": float(sums["correct"]) / count,
           "num_examples": int(round(count))}
    if "top5_correct" in sums:
        out["top5_accuracy"] = float(sums["top5_correct"]) / count
    return out


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        tree)


def _forward(state: TrainState, params, images, dropout_key, ghost_groups: int, dtype):
    """Train-mode logits (and auxiliary logits) and the updated batch statistics.

    ``ghost_groups`` > 1 splits the batch into that many groups whose BatchNorm statistics are
    computed separately (Hoffer et al. 2017's "ghost" batches: what per-device statistics give
    on that many devices), the running statistics averaged over the groups.
    """
    has_stats = bool(state.batch_stats)
    variables = {"params": _cast(params, dtype) if dtype else params}
    if has_stats:
        variables["batch_stats"] = state.batch_stats
    images = images.astype(dtype) if dtype else images

    def apply(x, key):
        out = state.apply_fn(variables, x, train=True, rngs={"dropout": key},
                             mutable=["batch_stats"] if has_stats else False)
        return out if has_stats else (out, {})

    if ghost_groups > 1:
        grouped = images.reshape((ghost_groups, -1, *images.shape[1:]))
        keys = jax.random.split(dropout_key, ghost_groups)
        outputs, new_vars = jax.vmap(apply)(grouped, keys)
        outputs = jax.tree.map(lambda y: y.reshape((-1, *y.shape[2:])), outputs)
        new_vars = jax.tree.map(lambda y: jnp.mean(y, axis=0), new_vars)
    else:
        outputs, new_vars = apply(images, dropout_key)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    outputs = tuple(o.astype(jnp.float32) for o in outputs)
    stats = new_vars.get("batch_stats", state.batch_stats)
    return outputs, _cast(stats, jnp.float32) if dtype else stats


def all_finite(tree) -> jax.Array:
    """Whether every element of every leaf of ``tree`` is finite (one boolean)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(state: TrainState, batch: dict, nonfinite: str = "stop",
               axis_name: str | None = None, ghost_groups: int = 0,
               dtype=None) -> tuple[TrainState, dict]:
    """One optimizer step on ``batch`` (``image`` NHWC float, ``label`` int); returns sums.

    ``nonfinite`` says what a step whose loss or gradient norm is not finite does:
    ``"stop"`` discards it and every later update (the state stays the last good one, and
    ``first_nonfinite_step`` tells the loop to stop), ``"skip"`` discards only that step, and
    ``"ignore"`` applies it. Such steps are counted in ``state.nonfinite_count`` either way.

    Under ``pmap``, ``axis_name`` names the mapped device axis: gradients and (per-device)
    batch statistics are averaged over it and metric sums added. ``ghost_groups`` computes
    BatchNorm statistics per group of the batch; ``dtype`` (e.g. ``jnp.bfloat16``) is the
    compute precision, parameters and optimizer state staying float32. Bind the options with
    ``functools.partial`` before compiling.

    With a ``state.loss_scale`` (float16 compute), the loss is scaled before differentiation
    and the gradients unscaled before the update (Micikevicius et al. 2018). A step whose loss
    is finite but whose gradients overflowed is the scale's business, not divergence: it is
    skipped under every ``nonfinite`` policy, the scale halved, and it is not counted as
    non-finite, unless the scale is already at its minimum.
    """
    dropout_key = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:  # each device draws its own dropout masks
        dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
    scaler = state.loss_scale

    def loss_fn(params):
        (logits, *aux), stats = _forward(state, params, batch["image"], dropout_key,
                                         ghost_groups, dtype)
        loss = jnp.mean(cross_entropy(logits, batch["label"]))
        for aux_logits in aux:
            loss += AUX_LOSS_WEIGHT * jnp.mean(cross_entropy(aux_logits, batch["label"]))
        scaled = loss if scaler is None else loss * scaler.scale
        return scaled, (loss, logits, stats)

    (_, (loss, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    if scaler is not None:
        grads = jax.tree.map(lambda g: g / scaler.scale, grads)
    if axis_name is not None:
        loss, grads, batch_stats = jax.lax.pmean((loss, grads, batch_stats), axis_name)
    if scaler is None:
        overflow = jnp.zeros((), bool)
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
    else:
        grads_ok = all_finite(grads)
        overflow = jnp.isfinite(loss) & ~grads_ok & (scaler.scale > scaler.minimum)
        finite = jnp.isfinite(loss) & (grads_ok | overflow)
    first_nonfinite = jnp.where((~finite) & (state.first_nonfinite_step < 0),
                                state.step, state.first_nonfinite_step)
    if nonfinite == "ignore":
        keep = ~overflow
    elif nonfinite == "skip":
        keep = finite & ~overflow
    else:
        keep = finite & ~overflow & (first_nonfinite < 0)
    if nonfinite == "ignore" and scaler is None:
        new_state = state.apply_gradients(grads, batch_stats)
    else:
        # A conditional rather than a select of old and new state: a select keeps the old
        # moments alive beside the new ones, so XLA copies them and recomputes the new ones
        # in the parameter update. Measured (profiles, batch 128): mnist_cnn's thunks outside
        # oneDNN 12.2 -> 7.4 ms a step; resnet50 at 64x64, update and copies 103 -> 59 ms.
        new_state = jax.lax.cond(keep, lambda s: s.apply_gradients(grads, batch_stats),
                                 lambda s: s.replace(step=s.step + 1), state)
    if scaler is not None:
        new_state = new_state.replace(loss_scale=scaler.update(jnp.isfinite(loss) & grads_ok))
    new_state = new_state.replace(
        nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
        first_nonfinite_step=first_nonfinite)
    if nonfinite == "ignore":
        sums = metric_sums(logits, batch["label"])
    else:
        mask = jnp.broadcast_to(finite, batch["label"].shape).astype(jnp.float32)
        sums = metric_sums(jnp.where(finite, logits, 0.0), batch["label"], mask)
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return new_state, sums


def eval_step(state: TrainState, batch: dict, axis_name: str | None = None, dtype=None) -> dict:
    """Metric sums of the model in eval mode on ``batch``, honouring its ``mask``."""
    variables = variables_of(state)
    images = batch["image"]
    if dtype:
        variables, images = _cast(variables, dtype), images.astype(dtype)
    logits = state.apply_fn(variables, images, train=False).astype(jnp.float32)
    sums = metric_sums(logits, batch["label"], batch.get("mask"))
    return jax.lax.psum(sums, axis_name) if axis_name is not None else sums
