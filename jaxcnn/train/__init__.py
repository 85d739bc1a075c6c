"""Training: the train state, pure steps, optimizers, checkpoints and the fit loop."""
from jaxcnn.train.averaging import ema_update
from jaxcnn.train.optim import make_optimizer
from jaxcnn.train.state import TrainState, create_train_state, variables_of
from jaxcnn.train.steps import cross_entropy, eval_step, metric_sums, summarize, train_step

__all__ = ["TrainState", "create_train_state", "cross_entropy", "ema_update", "eval_step",
           "make_optimizer", "metric_sums", "summarize", "train_step", "variables_of"]
