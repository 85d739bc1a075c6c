"""Experiment 2, LeNet-5 on MNIST against LeCun, Bottou, Bengio and Haffner, "Gradient-based
learning applied to document recognition", Proc. IEEE 1998: 0.95% test error without
distortions (20 passes over the 60,000 training images, stochastic diagonal Levenberg-Marquardt).

``lenet5`` is the modern form (ReLU, max pooling), ``lenet5_1998`` the network as published
(scaled tanh, trainable subsampling, Table I's partial C3; dense output instead of the RBF
units). Both train with Adam and a cosine schedule, batch 64: ``lenet5`` for 5 epochs,
``lenet5_1998`` (tanh units learn slower) for 10, half the paper's 20 passes. ``lenet5_1998``
sees its inputs as the paper normalised them, mean 0 and variance 1 (``per_channel``), padded
to 32x32 with the background's value (the paper: background -0.1, foreground 1.175).

    python -m experiments.run lenet5
"""
from experiments.spec import Experiment, base_config

# An MNIST background pixel (0) after per-channel standardisation: -mean / std.
BACKGROUND = -0.1307 / 0.3081


def get_config():
    return base_config(model="lenet5", dataset="mnist", optimizer="adam", lr=1e-3,
                       schedule="cosine", batch_size=64, epochs=5)


def get_experiment():
    return Experiment(
        title="LeNet-5 on MNIST: modern and 1998 forms",
        claim="LeNet-5 reaches about 1% test error on MNIST",
        published="LeCun et al. 1998: 0.95% test error (no distortions, 20 epochs)",
        base=get_config(),
        arms={"lenet5": {},
              "lenet5_1998": {"model": "lenet5_1998", "epochs": 10, "preprocess": "per_channel",
                              "model_kwargs": {"pad_value": BACKGROUND}}},
        quick={"train_split": "train[:1024]", "eval_split": "test[:1000]", "epochs": 1},
        analysis="lenet5", figure="",
        budget="all 60,000 training images, batch 64, Adam with cosine decay: lenet5 5 "
               "epochs, lenet5_1998 10 epochs")
