"""jaxcnn: classic convolutional networks in JAX and Flax, and the machinery to train them.

    from jaxcnn.models import get_model, list_models
    from jaxcnn.train import create_train_state, train_step, eval_step
"""
__version__ = "0.1.0"
