"""jaxcnn: classic convolutional networks in JAX and Flax, and the machinery to train them.

    from jaxcnn.models import get_model, list_models
    from jaxcnn.train import create_train_state, train_step, eval_step
"""
__version__ = "0.1.0"


def load(workdir, best: bool = True):
    """``(model, variables, spec)`` of a finished run (its best checkpoint, else the newest)."""
    from jaxcnn.train.inference import load as _load

    return _load(workdir, best=best)
