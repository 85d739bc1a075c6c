"""Converting torchvision state dicts into Flax variables.

``from_torch(name, state_dict)`` turns the weights of a torchvision model into the
``{"params": ..., "batch_stats": ...}`` of the jaxcnn model of the same name, so ImageNet
weights can be brought in for transfer learning. Each family registers its converter with
:func:`register_converter`; the helpers below do the per-layer layout changes (PyTorch keeps
convolution kernels as OIHW and linear weights as (out, in); Flax wants HWIO and (in, out)).

PyTorch itself is not needed: a state dict may hold ``torch.Tensor`` or NumPy arrays.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from jaxcnn.errors import JaxCNNError, unknown
from jaxcnn.models.registry import model_info

StateDict = Mapping[str, Any]
Converter = Callable[..., dict]

_CONVERTERS: dict[str, Converter] = {}


def register_converter(*names: str) -> Callable[[Converter], Converter]:
    """Decorator: ``converter(state_dict, **model_kwargs) -> variables`` for these models."""

    def wrap(fn: Converter) -> Converter:
        for name in names:
            _CONVERTERS[name] = fn
        return fn

    return wrap


def from_torch(name: str, state_dict: StateDict, **kwargs: Any) -> dict:
    """Returns Flax variables for ``get_model(name, **kwargs)`` from a torchvision state dict."""
    model_info(name)  # imports every family, so their converters are registered
    if name not in _CONVERTERS:
        raise unknown("torchvision-convertible model", name, _CONVERTERS)
    return _CONVERTERS[name](TorchWeights(state_dict), **kwargs)


class TorchWeights:
    """Read access to a state dict with the layout changes Flax needs; tracks unused keys."""

    def __init__(self, state_dict: StateDict):
        self._arrays = {k: _to_numpy(v) for k, v in state_dict.items()}
        self._unused = {k for k in self._arrays if not k.endswith("num_batches_tracked")}

    def raw(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            raise JaxCNNError(f"the state dict has no {key!r}; is it from the right model?")
        self._unused.discard(key)
        return self._arrays[key]

    def conv(self, prefix: str, bias: bool = True) -> dict:
        """A Conv layer: OIHW kernel to HWIO (grouped kernels keep I = in/groups)."""
        out = {"kernel": self.raw(f"{prefix}.weight").transpose(2, 3, 1, 0)}
        if bias:
            out["bias"] = self.raw(f"{prefix}.bias")
        return out

    def dense(self, prefix: str, bias: bool = True) -> dict:
        """A Linear layer: (out, in) to (in, out)."""
        out = {"kernel": self.raw(f"{prefix}.weight").T}
        if bias:
            out["bias"] = self.raw(f"{prefix}.bias")
        return out

    def batchnorm(self, prefix: str) -> tuple[dict, dict]:
        """A BatchNorm layer: ``(params, batch_stats)``."""
        params = {"scale": self.raw(f"{prefix}.weight"), "bias": self.raw(f"{prefix}.bias")}
        stats = {"mean": self.raw(f"{prefix}.running_mean"),
                 "var": self.raw(f"{prefix}.running_var")}
        return params, stats

    def check_all_used(self) -> None:
        """Raises if a weight of the state dict found no place in the Flax model."""
        if self._unused:
            raise JaxCNNError(
                f"{len(self._unused)} state dict entries were not converted, e.g. "
                f"{sorted(self._unused)[:5]}; is the state dict from the right model?"
            )


def flatten_for_torch(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Flattens nested Flax variables to ``"a/b/c"`` keys, for debugging conversions."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_for_torch(value, path + "/"))
        else:
            flat[path] = np.asarray(value)
    return flat


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32) if np.asarray(value).dtype.kind == "f" \
        else np.asarray(value)
