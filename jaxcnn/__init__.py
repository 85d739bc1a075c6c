"""jaxcnn: classic convolutional networks in JAX and Flax, and the machinery to train them.

    from jaxcnn.models import get_model, list_models
    from jaxcnn.train import create_train_state, train_step, eval_step
"""
__version__ = "0.1.0"

from jaxcnn.allocator import malloc_tuning, tune_malloc

# Before JAX starts its threads: see jaxcnn.allocator (JAXCNN_MALLOC_TUNING=0 turns it off).
tune_malloc()


def load(workdir, best: bool = True):
    """``(model, variables, spec)`` of a finished run (its best checkpoint, else the newest)."""
    from jaxcnn.train.inference import load as _load

    return _load(workdir, best=best)
