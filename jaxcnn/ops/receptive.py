"""Size arithmetic of convolutional networks: output sizes and receptive fields.

A unit of a feature map sees only a window of the input image, its *receptive field*. Going
through a layer with kernel ``k`` (dilated to ``d * (k - 1) + 1``) and stride ``s``::

    r_out = r_in + (k - 1) * j_in      (the window grows by k - 1 steps of the input grid)
    j_out = j_in * s                   (the jump: input pixels between neighbouring units)
    start_out = start_in + ((k - 1) / 2 - p) * j_in   (input coordinate of unit 0's centre)

starting from ``r = 1, j = 1, start = 0`` at the image (Goodfellow et al., *Deep Learning*,
ch. 9.2; Araujo, Norris and Sim, "Computing receptive fields of convolutional neural
networks", Distill 2019). Where branches merge (Inception's concatenation, ResNet's addition)
the larger field is kept.

:func:`receptive_field` reads the layers from the model itself: it traces ``model.apply``
with :func:`jax.make_jaxpr` (no weights are computed; the variables come from
:func:`jax.eval_shape`) and walks the jaxpr for the convolutions (``conv_general_dilated``)
and poolings (``reduce_window*``), following the image's spatial axes through every other
operation and into nested jaxprs (``jit``, ``remat``, custom derivatives).
"""
from __future__ import annotations

import dataclasses
import inspect
from numbers import Integral
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from jaxcnn.errors import ConfigError, InputShapeError, JaxCNNError


def conv_output_size(size: int, kernel: int, padding: int = 0, stride: int = 1,
                     dilation: int = 1) -> int:
    """Number of outputs along one axis: ``(size + 2p - d(k - 1) - 1) // s + 1``.

    With ``dilation=1`` this is the familiar ``(size - k + 2p) // s + 1``: the padded axis
    holds ``size + 2p - k + 1`` window positions and a stride ``s`` keeps every ``s``-th. The
    division is floored (PyTorch's rule): windows that would hang over the end are dropped.
    Examples: ``(32, 5) -> 28`` (LeNet C1), ``(227, 11, 0, 4) -> 55`` (AlexNet conv1),
    ``(224, 7, 3, 2) -> 112`` (ResNet stem).

    Raises:
      ConfigError: a non-integer argument, ``size``/``kernel``/``stride``/``dilation`` below
        1 or a negative padding.
      InputShapeError: when no whole window fits (the result would be below 1).
    """
    args = {"size": size, "kernel": kernel, "padding": padding, "stride": stride,
            "dilation": dilation}
    for what, value in args.items():
        if not isinstance(value, Integral) or isinstance(value, bool):
            raise ConfigError(f"conv_output_size: {what} must be an int, got {value!r}")
        if value < (0 if what == "padding" else 1):
            raise ConfigError(f"conv_output_size: {what} must be at least "
                              f"{0 if what == 'padding' else 1}, got {value}")
    effective = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - effective) // stride + 1
    if out < 1:
        raise InputShapeError(
            f"a {kernel}-wide kernel (dilation {dilation}, so {effective} wide) does not fit "
            f"an axis of {size} padded by {padding} on each side ({size + 2 * padding}); "
            "use a smaller kernel, more padding or a bigger input"
        )
    return out


@dataclasses.dataclass(frozen=True)
class LayerField:
    """One convolution or pooling of a network, with its receptive field (pairs are (H, W)).

    Attributes:
      name: ``conv1``, ``pool1``, ... numbered in the order the layers run.
      kind: ``"conv"``, ``"max_pool"``, ``"avg_pool"`` (a window sum, as Flax's ``avg_pool``
        computes before dividing), ``"min_pool"`` or ``"pool"``.
      path: the Flax module path the layer was traced in, e.g. ``"LeNet5/conv1"``.
      kernel, stride, dilation: the window, its step and its dilation.
      padding: ``((top, bottom), (left, right))``.
      output_size: the layer's output height and width.
      receptive_field: input pixels one output unit sees, per axis.
      jump: input pixels between neighbouring output units (the effective stride).
      start: input coordinate of the centre of output unit ``(0, 0)``'s field (pixel centres
        at integers; negative means the field reaches into the padding).
    """

    name: str
    kind: str
    path: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]
    output_size: tuple[int, int]
    receptive_field: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class _Field:
    """What is tracked per traced value: where H and W are, their sizes, and the field."""

    axes: tuple[int, int]
    size: tuple[int, int]
    ndim: int
    rf: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]


_POOLS = {"reduce_window_max": "max_pool", "reduce_window_sum": "avg_pool",
          "reduce_window_min": "min_pool", "reduce_window": "pool"}


_CONTROL_FLOW = ("scan", "while", "cond")


class _Walker:
    def __init__(self):
        self.rows: list[LayerField] = []
        self.counts = {"conv": 0, "pool": 0}

    def layer(self, eqn, field: _Field, kind: str, path: str, kernel, stride, padding,
              dilation, out_axes) -> _Field:
        out_shape = eqn.outvars[0].aval.shape
        k_eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
        rf = tuple(r + (k - 1) * j for r, k, j in zip(field.rf, k_eff, field.jump))
        jump = tuple(j * s for j, s in zip(field.jump, stride))
        start = tuple(st + ((k - 1) / 2 - p[0]) * j
                      for st, k, p, j in zip(field.start, k_eff, padding, field.jump))
        size = tuple(out_shape[a] for a in out_axes)
        group = "conv" if kind == "conv" else "pool"
        self.counts[group] += 1
        self.rows.append(LayerField(
            name=f"{group}{self.counts[group]}", kind=kind, path=path, kernel=tuple(kernel),
            stride=tuple(stride), padding=tuple(tuple(p) for p in padding),
            dilation=tuple(dilation), output_size=size, receptive_field=rf, jump=jump,
            start=start))
        return _Field(tuple(out_axes), size, len(out_shape), rf, jump, start)

    def walk(self, jaxpr, fields: Sequence[_Field | None], prefix: str) -> list[_Field | None]:
        env: dict[Any, _Field] = {v: f for v, f in zip(jaxpr.invars, fields) if f is not None}
        for eqn in jaxpr.eqns:
            ins = [None if isinstance(v, jcore.Literal) else env.get(v) for v in eqn.invars]
            stack = str(getattr(eqn.source_info, "name_stack", ""))
            path = "/".join(p for p in (prefix, stack) if p)
            outs = self.equation(eqn, ins, path)
            for var, field in zip(eqn.outvars, outs):
                if field is not None:
                    env[var] = field
        return [None if isinstance(v, jcore.Literal) else env.get(v) for v in jaxpr.outvars]

    def equation(self, eqn, ins, path) -> list[_Field | None]:
        name, params = eqn.primitive.name, eqn.params
        if name == "conv_general_dilated" and ins[0] is not None:
            field, numbers = ins[0], params["dimension_numbers"]
            lhs, rhs, out = numbers.lhs_spec[2:], numbers.rhs_spec[2:], numbers.out_spec[2:]
            if sorted(lhs) == sorted(field.axes):
                if any(d != 1 for d in params["lhs_dilation"]):
                    raise JaxCNNError(f"receptive_field: {path or 'a layer'} is a transposed "
                                      "convolution (input dilation), which is not supported")
                order = [lhs.index(a) for a in field.axes]
                kernel_shape = eqn.invars[1].aval.shape
                pick = lambda seq: [seq[i] for i in order]  # noqa: E731
                return [self.layer(eqn, field, "conv", path,
                                   pick([kernel_shape[a] for a in rhs]),
                                   pick(params["window_strides"]), pick(params["padding"]),
                                   pick(params["rhs_dilation"]), pick(out))]
        if name in _POOLS:
            tracked = [f for f in ins if f is not None]
            if tracked:
                field = tracked[0]
                pick = lambda key: [params[key][a] for a in field.axes]  # noqa: E731
                kernel, stride, padding = pick("window_dimensions"), pick("window_strides"), \
                    pick("padding")
                if any(pick("base_dilation")[i] != 1 for i in range(2)):
                    raise JaxCNNError(f"receptive_field: {path or 'a pooling'} dilates its input, "
                                      "which is not supported")
                if kernel != [1, 1] or stride != [1, 1] or any(map(any, padding)):
                    return [self.layer(eqn, field, _POOLS[name], path, kernel, stride, padding,
                                       pick("window_dilation"), field.axes)]
        if name in _CONTROL_FLOW and any(f is not None for f in ins):
            raise JaxCNNError(
                f"receptive_field: the image passes through {name} at {path or 'the top'}; "
                "loops and conditionals (nn.scan, lax.cond) are not followed")
        subs = list(jcore.jaxprs_in_params(params))
        if (len(subs) == 1 and len(subs[0].invars) == len(eqn.invars)
                and len(subs[0].outvars) == len(eqn.outvars)):
            return self.walk(subs[0], ins, path)
        return [self.propagate(eqn, ins, out) for out in eqn.outvars]

    @staticmethod
    def propagate(eqn, ins, out) -> _Field | None:
        """Carries the largest incoming field through an op that keeps the spatial axes."""
        tracked = [f for f in ins if f is not None]
        if not tracked:
            return None
        field = max(tracked, key=lambda f: f.rf[0] * f.rf[1])
        shape, name = out.aval.shape, eqn.primitive.name
        if name == "transpose":
            perm = eqn.params["permutation"]
            axes = tuple(perm.index(a) for a in field.axes)
            return dataclasses.replace(field, axes=axes, ndim=len(shape))
        if name in ("pad", "slice") and len(shape) == field.ndim:
            if name == "pad":
                config = [eqn.params["padding_config"][a] for a in field.axes]
                if any(interior for _, _, interior in config):
                    return None
                offset, step = [lo for lo, _, _ in config], [1, 1]
                offset = [-o for o in offset]
            else:
                offset = [eqn.params["start_indices"][a] for a in field.axes]
                strides = eqn.params["strides"] or (1,) * len(shape)
                step = [strides[a] for a in field.axes]
            return dataclasses.replace(
                field, size=tuple(shape[a] for a in field.axes),
                jump=tuple(j * s for j, s in zip(field.jump, step)),
                start=tuple(st + o * j for st, o, j in zip(field.start, offset, field.jump)))
        if len(shape) == field.ndim and tuple(shape[a] for a in field.axes) == field.size:
            return field
        return None


def _model_and_shape(name_or_model, input_shape):
    if isinstance(name_or_model, str):
        from jaxcnn.models import get_model, model_info  # ops must not import models eagerly

        model = get_model(name_or_model)
        input_shape = input_shape or model_info(name_or_model).input_shape
    elif isinstance(name_or_model, nn.Module):
        model = name_or_model
        if input_shape is None:
            raise ConfigError("receptive_field: give input_shape=(H, W, C) with a module; "
                              "registered names know their own")
    else:
        raise ConfigError("receptive_field takes a registered model name or a flax.linen "
                          f"Module, got {type(name_or_model).__name__}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(n, Integral) and n > 0 for n in shape):
        raise InputShapeError(
            f"receptive_field: input_shape must be (H, W, C), got {input_shape!r}")
    return model, tuple(int(n) for n in shape)


def receptive_field(name_or_model: str | nn.Module,
                    input_shape: Sequence[int] | None = None) -> list[LayerField]:
    """The convolutions and poolings of a model, each with its receptive field and jump.

    Args:
      name_or_model: a name from :func:`jaxcnn.models.list_models`, or a Flax module called
        as ``module.apply(variables, x[, train=False])`` on NHWC images.
      input_shape: ``(H, W, C)`` of one image; defaults to the registered model's.

    Returns:
      One :class:`LayerField` per convolution or pooling, in execution order. Operations that
      only see one pixel (1x1 windows, LRN over channels) and global pooling are not listed.

    Example (LeNet-5 on 28x28, conv1 padded by 2)::

        >>> [r.receptive_field[0] for r in receptive_field("lenet5")]
        [5, 6, 14, 16]
    """
    model, shape = _model_and_shape(name_or_model, input_shape)
    kwargs = {"train": False} if "train" in inspect.signature(model.__call__).parameters else {}
    x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
    key = jax.random.key(0)
    variables = jax.eval_shape(
        lambda x: model.init({"params": key, "dropout": key}, x, **kwargs), x)
    from jaxcnn.models.conv import plain_lax_layers

    with plain_lax_layers():  # one plain convolution per layer, no CPU/GPU switch to follow
        closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, **kwargs))(variables, x)
    walker = _Walker()
    fields: list[_Field | None] = [None] * len(closed.jaxpr.invars)
    fields[-1] = _Field(axes=(1, 2), size=shape[:2], ndim=4, rf=(1, 1), jump=(1, 1),
                        start=(0.0, 0.0))
    walker.walk(closed.jaxpr, fields, "")
    return walker.rows


def format_receptive_field(rows: Sequence[LayerField]) -> str:
    """A text table of :func:`receptive_field` rows; square pairs print as one number."""
    def show(pair) -> str:
        return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"

    def show_pad(padding) -> str:
        flat = {p for side in padding for p in side}
        return str(flat.pop()) if len(flat) == 1 else "/".join(f"{a},{b}" for a, b in padding)

    header = ("layer", "kind", "kernel", "stride", "pad", "output", "RF", "jump", "module")
    def show_kernel(r) -> str:
        dilated = r.dilation != (1, 1)
        return show(r.kernel) + (f" (dilation {show(r.dilation)})" if dilated else "")

    table = [header] + [
        (r.name, r.kind, show_kernel(r), show(r.stride), show_pad(r.padding),
         show(r.output_size), show(r.receptive_field), show(r.jump), r.path) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in table)
