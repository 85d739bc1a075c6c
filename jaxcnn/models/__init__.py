"""Classic CNNs as pure-function Flax Linen modules, and the registry that names them.

Every model has the call ``model.apply(variables, x, train=False)`` on NHWC images and returns
logits. ``get_model(name, num_classes=...)`` builds one, ``list_models()`` names them all and
``model_info(name)`` gives the paper, default input shape and published parameter count.
"""
from jaxcnn.models.registry import (ModelInfo, get_model, get_model_for, list_models,
                                    model_info, register)

__all__ = ["ModelInfo", "from_torch", "get_model", "get_model_for", "list_models", "model_info",
           "register", "summarize"]


def __getattr__(name):  # the converter and the summary load on first use
    if name == "from_torch":
        from jaxcnn.models.torch_convert import from_torch
        return from_torch
    if name == "summarize":
        from jaxcnn.models.summary import summarize
        return summarize
    raise AttributeError(name)
