"""Model summaries: per-layer output shapes, parameter counts and multiply-accumulates.

``summarize(model_or_name)`` gives what Keras's ``model.summary()`` prints, plus the
multiply-accumulates (MACs) per image, all without compiling anything: the variables come
from ``jax.eval_shape`` of ``init``, and one ``jax.make_jaxpr`` trace of ``apply`` yields both
the per-module output shapes (through ``flax.linen.intercept_methods``) and the jaxpr whose
``conv_general_dilated`` and ``dot_general`` equations are counted:

- a convolution costs (output elements) x (kernel area) x (input channels per group),
- a dot product costs (output elements) x (product of the contracted dimensions),

descending into nested jaxprs (``jit``, ``custom_jvp``/``custom_vjp`` calls, ``remat``;
``scan`` bodies count ``length`` times, ``cond`` its costliest branch, ``while`` bodies once).
Elementwise work (activations, normalisation, pooling, additions) is not counted, which is
the convention of torchvision's published "GFLOPS" figures (e.g. AlexNet 0.71, VGG-16 15.47,
ResNet-50 4.09, which are MACs). Each equation is attributed to the Flax module whose name
scope it was traced in, so every row carries the MACs of its module and submodules.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp

from jaxcnn.errors import JaxCNNError
from jaxcnn.models.conv import plain_lax_layers
from jaxcnn.models.registry import get_model_for, model_info


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One module call: ``path`` like ``"block3/expand/conv"`` ("" for the whole model).

    ``params``/``non_trainable`` count the module's own and its submodules' ``params`` and
    ``batch_stats``; ``macs`` are per image, the module and its submodules together.
    """

    path: str
    module: str
    output_shape: Any
    params: int
    non_trainable: int
    macs: int

    @property
    def depth(self) -> int:
        return 0 if not self.path else self.path.count("/") + 1


@dataclasses.dataclass(frozen=True)
class Summary:
    """What :func:`summarize` found; ``str(summary)`` is :func:`format_summary`'s table."""

    name: str
    input_shape: tuple[int, ...]
    output_shape: Any
    rows: tuple[LayerRow, ...]
    trainable_params: int
    non_trainable_params: int
    macs: int

    @property
    def total_params(self) -> int:
        return self.trainable_params + self.non_trainable_params

    def __str__(self) -> str:
        return format_summary(self)


def summarize(model_or_name: nn.Module | str, input_shape: tuple[int, ...] | None = None,
              num_classes: int | None = None) -> Summary:
    """Summarises a model (a registered name or a Flax module) on one ``input_shape`` image.

    Args:
      model_or_name: a registry name such as ``"vgg16"`` or a Flax module.
      input_shape: ``(H, W, C)`` of one image; defaults to the registered input shape.
      num_classes: the output size, for registry names (default: the registered count).
    """
    if isinstance(model_or_name, str):
        info = model_info(model_or_name)
        input_shape = tuple(input_shape or info.input_shape)
        model = get_model_for(model_or_name, input_shape, num_classes=num_classes)
        name = model_or_name
    else:
        model, name = model_or_name, type(model_or_name).__name__
        if num_classes is not None:
            model = model.clone(num_classes=num_classes)
        if input_shape is None:
            raise JaxCNNError(f"summarize({name}) needs input_shape=(H, W, C) for a module; "
                              "registered names know their own")
        input_shape = tuple(input_shape)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)

    def init(x):  # the keys are made inside the trace too, so nothing at all runs
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        return model.init(rngs, x, train=False)

    variables = jax.eval_shape(init, x)

    calls: list[list] = []  # [path, module type, output shape], in call (pre-)order
    running: list[nn.Module] = []  # the modules whose __call__ is in progress

    def record(next_fun, args, kwargs, context):
        # A module's call of its own base class's __call__ (super()) is part of its row.
        if context.method_name != "__call__" or any(m is context.module for m in running):
            return next_fun(*args, **kwargs)
        entry = ["/".join(context.module.path), type(context.module).__name__, None]
        calls.append(entry)
        running.append(context.module)
        try:
            out = next_fun(*args, **kwargs)
        finally:
            running.pop()
        entry[2] = jax.tree.map(lambda a: tuple(a.shape), out)
        return out

    def apply(variables, x):
        with nn.intercept_methods(record):
            return model.apply(variables, x, train=False)

    with plain_lax_layers():  # the network's own convolutions, not the CPU's routes
        closed = jax.make_jaxpr(apply)(variables, x)
    macs_by_scope: dict[str, int] = {}
    _count_macs(closed.jaxpr, "", 1, macs_by_scope)
    params = _sizes_by_path(variables.get("params", {}))
    stats = _sizes_by_path(variables.get("batch_stats", {}))

    def subtotal(table: dict[str, int], path: str) -> int:
        if not path:
            return sum(table.values())
        return sum(v for k, v in table.items() if k == path or k.startswith(path + "/"))

    rows = tuple(LayerRow(path, module, shape, subtotal(params, path), subtotal(stats, path),
                          subtotal(macs_by_scope, path)) for path, module, shape in calls)
    output_shape = jax.tree.map(lambda a: tuple(a.shape), closed.out_avals)
    output_shape = output_shape[0] if len(output_shape) == 1 else output_shape
    return Summary(name=name, input_shape=input_shape, output_shape=output_shape, rows=rows,
                   trainable_params=sum(params.values()),
                   non_trainable_params=sum(stats.values()),
                   macs=sum(macs_by_scope.values()))


def _sizes_by_path(tree: Any) -> dict[str, int]:
    """Leaf sizes of a variable tree keyed by their module path (``"a/b"``, leaf name dropped)."""
    sizes: dict[str, int] = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        path = "/".join(str(getattr(k, "key", k)) for k in keys[:-1])
        sizes[path] = sizes.get(path, 0) + math.prod(leaf.shape)
    return sizes


def equation_macs(eqn) -> int:
    """Multiply-accumulates of one convolution or dot-product equation (0 for the others)."""
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        out, rhs = eqn.outvars[0].aval, eqn.invars[1].aval
        out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
        # each output element reads the kernel of its output feature: prod(rhs) / features
        return math.prod(out.shape) * (math.prod(rhs.shape) // out_features)
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
        return math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)
    return 0


def _count_macs(jaxpr, scope: str, times: int, totals: dict[str, int]) -> None:
    """Adds the MACs of ``jaxpr`` (run ``times`` times) to ``totals`` by module path."""
    for eqn in jaxpr.eqns:
        stack = str(eqn.source_info.name_stack)
        here = "/".join(p for p in (scope, stack) if p)
        macs = equation_macs(eqn)
        if macs:
            path = here.split("/", 1)[1] if "/" in here else ""  # drop the root module's name
            totals[path] = totals.get(path, 0) + macs * times
        subs = [getattr(j, "jaxpr", j) for j in jex.core.jaxprs_in_params(eqn.params)]
        if not subs:
            continue
        if eqn.primitive.name == "cond":  # only one branch runs: count the costliest
            costs = []
            for sub in subs:
                branch: dict[str, int] = {}
                _count_macs(sub, here, times, branch)
                costs.append(branch)
            worst = max(costs, key=lambda c: sum(c.values()))
            for key, value in worst.items():
                totals[key] = totals.get(key, 0) + value
            continue
        repeat = times * int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" \
            else times
        for sub in subs:
            _count_macs(sub, here, repeat, totals)


def _shape_text(shape: Any) -> str:
    if isinstance(shape, tuple) and all(isinstance(n, int) for n in shape):
        return "(" + ", ".join(str(n) for n in shape) + ")"
    leaves = jax.tree.leaves(shape, is_leaf=lambda s: isinstance(s, tuple) and
                             all(isinstance(n, int) for n in s))
    return ", ".join(_shape_text(s) for s in leaves)


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def format_summary(summary: Summary, max_depth: int | None = None) -> str:
    """A Keras-like table of ``summary``: one row per module call, then the totals.

    Rows are indented by nesting depth; ``max_depth`` hides deeper modules (1: top level).
    Params are the module's trainable plus non-trainable counts, including submodules.
    """
    rows = [r for r in summary.rows if r.path and (max_depth is None or r.depth <= max_depth)]
    header = ("Layer (type)", "Output shape", "Params", "MACs")
    table = [header] + [("  " * (r.depth - 1) + f"{r.path.rsplit('/', 1)[-1]} ({r.module})",
                         _shape_text(r.output_shape), f"{r.params + r.non_trainable:,}",
                         f"{r.macs:,}") for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    width = sum(widths) + 3 * 3

    def line(cells) -> str:
        return "   ".join(c.ljust(w) if i < 2 else c.rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths)))

    shape = "x".join(str(n) for n in summary.input_shape)
    megabytes = summary.total_params * 4 / 2 ** 20
    out = [f'Model: "{summary.name}" (input {shape}, output {_shape_text(summary.output_shape)})',
           "=" * width, line(header), "-" * width]
    out += [line(cells) for cells in table[1:]]
    out += ["=" * width,
            f"Total params: {summary.total_params:,} ({megabytes:.2f} MB as float32)",
            f"Trainable params: {summary.trainable_params:,}",
            f"Non-trainable params: {summary.non_trainable_params:,}",
            f"Multiply-accumulates per image: {_si(summary.macs)} ({summary.macs:,})"]
    return "\n".join(out)
